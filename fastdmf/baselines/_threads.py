"""BLAS threads for the dense SVDs and solves of the baselines.

An SVD of a matrix a few hundred wide gains little from threads and, on a loaded machine,
loses a lot (OpenBLAS workers spin while they wait: a 100 x 100 SVD measured 5-30 times
slower with 2 threads on 2 busy cores than with 1). The baselines therefore run with one BLAS
thread below ``SMALL`` columns unless told otherwise. The bundled OpenBLAS of SciPy and of
NumPy are limited by :func:`fastdmf.kernels.blas.blas_threads`; ``threadpoolctl`` (installed
with scikit-learn), where present, also limits any other BLAS it knows (MKL, BLIS).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

SMALL = 300  # min(m, n) below which one BLAS thread is the default


@contextmanager
def blas_threads(n_threads, shape):
    """Limit BLAS to ``n_threads`` (None: 1 when ``min(shape) < SMALL``, else no limit);
    the previous setting is restored on exit."""
    if n_threads is not None and (
        isinstance(n_threads, bool)
        or not (isinstance(n_threads, (int, np.integer)) and n_threads >= 1)
    ):
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    limit = n_threads if n_threads is not None else (1 if min(shape) < SMALL else None)
    if limit is None:
        yield
        return
    from ..kernels.blas import blas_threads as bundled_blas_threads

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        with bundled_blas_threads(int(limit)):
            yield
        return
    with bundled_blas_threads(int(limit)), threadpool_limits(limits=int(limit), user_api="blas"):
        yield
