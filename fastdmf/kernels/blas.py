"""Thread control for the BLAS that Numba's ``np.dot`` calls (SciPy's OpenBLAS).

The parallel kernels run their own threads (Numba's threading layer) and split each dense
product into blocks, one BLAS call per task; if SciPy's OpenBLAS also starts its threads, the
two pools spin against each other on the same cores and a step becomes many times slower
(and multithreaded BLAS on 100 x 100 products collapses whenever another process is busy).
Around every kernel call :func:`blas_threads` pins that BLAS to one thread, then restores it:
the serial build runs on exactly one core. Where SciPy's bundled OpenBLAS cannot be found
(another BLAS vendor), it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from functools import lru_cache

__all__ = ["blas_threads"]


@lru_cache(maxsize=1)
def _openblas():
    import scipy

    pattern = os.path.join(os.path.dirname(scipy.__file__), os.pardir, "scipy.libs", "*openblas*")
    for path in sorted(glob.glob(pattern)):
        try:
            lib = ctypes.CDLL(path)
            get, set_ = lib.scipy_openblas_get_num_threads, lib.scipy_openblas_set_num_threads
        except (OSError, AttributeError):
            continue
        get.restype = ctypes.c_int
        set_.argtypes = [ctypes.c_int]
        return get, set_
    return None


@contextmanager
def blas_threads(n: int):
    """Run the block with SciPy's OpenBLAS limited to ``n`` threads (no-op if not found)."""
    funcs = _openblas()
    if funcs is None:
        yield
        return
    get, set_ = funcs
    old = get()
    set_(n)
    try:
        yield
    finally:
        set_(old)
