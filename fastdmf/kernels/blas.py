"""Thread control for the BLAS that Numba's ``np.dot`` calls (SciPy's OpenBLAS) and for
NumPy's own OpenBLAS.

The parallel kernels run their own threads (Numba's threading layer) and split each dense
product into blocks, one BLAS call per task; if SciPy's OpenBLAS also starts its threads, the
two pools spin against each other on the same cores and a step becomes many times slower
(and multithreaded BLAS on 100 x 100 products collapses whenever another process is busy).
Around every kernel call :func:`blas_threads` pins that BLAS to one thread, then restores it:
the serial build runs on exactly one core.

NumPy's OpenBLAS (``numpy.linalg``, ``@``) is a second library with a pool of its own, whose
workers busy-wait for a while (about 0.1 s) after each threaded call. A fit's records (QR and
SVD of the factors) woke them, and the parallel kernels of the chunk that followed shared
the cores with them: at 2000 x 2000, 200,000 entries, depth 2, recording every 10 steps made
a step 3.3 times slower (13.2 against 4.0 ms). :func:`blas_threads` therefore limits both
libraries; records run under it on one thread, so no worker is left spinning. Where neither
bundled OpenBLAS can be found (another BLAS vendor), it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from functools import lru_cache

__all__ = ["blas_threads"]


# the thread getter and setter of each bundled OpenBLAS, by its package's library folder
_SYMBOLS = {
    "scipy": [("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads")],
    "numpy": [
        ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
        ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
        ("openblas_get_num_threads", "openblas_set_num_threads"),
    ],
}


def _find(package: str):
    """``(get, set)`` of the OpenBLAS bundled in ``package``'s wheel, or None."""
    module = __import__(package)
    pattern = os.path.join(
        os.path.dirname(module.__file__), os.pardir, f"{package}.libs", "*openblas*"
    )
    for path in sorted(glob.glob(pattern)):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _SYMBOLS[package]:
            get, set_ = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                return get, set_
    return None


@lru_cache(maxsize=1)
def _openblas():
    """The ``(get, set)`` pairs found: SciPy's OpenBLAS, then NumPy's."""
    return tuple(funcs for funcs in (_find("scipy"), _find("numpy")) if funcs is not None)


@contextmanager
def blas_threads(n: int):
    """Run the block with SciPy's and NumPy's OpenBLAS limited to ``n`` threads each (those
    not found are left alone); the previous settings are restored on exit."""
    found = _openblas()
    old = [get() for get, _ in found]
    for _, set_ in found:
        set_(n)
    try:
        yield
    finally:
        for (_, set_), value in zip(found, old, strict=True):
            set_(value)
