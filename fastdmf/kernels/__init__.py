"""The compiled kernels (``cpu``, ``flow``, ``sensing``, ``batch``, ``cuda``), whether
Numba can cache them on disk here (``CACHE``), and the aligned buffers they run fastest on."""

from __future__ import annotations

import warnings

import numba
import numpy as np

#: bytes: one cache line, one AVX-512 vector
ALIGN = 64


def aligned_zeros(shape, dtype=np.float64) -> np.ndarray:
    """Zeros whose data start on an ``ALIGN``-byte boundary.

    NumPy's own buffers start on a 16-byte boundary only, at any of the four offsets within a
    cache line, and the kernels' 32-byte vector loads then split cache lines. At the paper's
    size (100 x 100, width 100, 2,000 entries) a step with the factors 16 or 48 bytes off
    took 64 us at depth 2 and 157 us at depth 3, against 52 and 135 us on a 32-byte boundary
    (one process, interleaved): a lottery of up to 24% between processes. The engines'
    parameters, gradient, optimiser state and workspace therefore live in such buffers."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` in an :func:`aligned_zeros` buffer."""
    out = aligned_zeros(a.shape, a.dtype)
    out[...] = a
    return out


def is_aligned(a: np.ndarray) -> bool:
    """Whether ``a``'s data start on an ``ALIGN``-byte boundary."""
    return a.ctypes.data % ALIGN == 0


def _probe():  # pragma: no cover  (never called: only its source location matters)
    return 0


def _cache_available() -> bool:
    """True when Numba finds a writable cache folder for this package's functions: beside
    the source, ``NUMBA_CACHE_DIR`` or the user's cache folder. Asking costs no compile."""
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return False
    return True


CACHE = _cache_available()
if not CACHE:
    warnings.warn(
        "fastdmf: Numba finds no writable folder to cache the compiled kernels in (none "
        "beside the installed package, no user cache folder, NUMBA_CACHE_DIR unset), so they "
        "compile anew in every process; set NUMBA_CACHE_DIR to a writable folder to keep them",
        RuntimeWarning,
        stacklevel=2,
    )
