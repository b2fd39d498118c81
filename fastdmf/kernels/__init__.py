"""The compiled kernels (``cpu``, ``flow``, ``sensing``, ``batch``, ``cuda``) and whether
Numba can cache them on disk here (``CACHE``)."""

from __future__ import annotations

import warnings

import numba


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
