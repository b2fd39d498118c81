"""What the CUDA kernel modules (``cuda``, ``cuda_dense``) share: ``numba.cuda`` itself (None
when it fails to import, with the reason in ``IMPORT_ERROR``), whether it is the simulator,
and the launch shapes both use."""

from __future__ import annotations

try:  # a module global of each kernel module: the simulator swaps it for its own inside kernels
    from numba import cuda
except Exception as _exc:  # noqa: BLE001  (numba.cuda broken or absent)
    cuda = None
    IMPORT_ERROR = _exc
else:
    IMPORT_ERROR = None

# Default launch shapes on a real GPU (the simulator tests pass small ones).
TILE = 16
THREADS = 128
# Entries per block of the residual pass: it fixes the partition of the loss reduction, so
# it depends on the shape only.
RESID_PER_BLOCK = 1024


def simulated() -> bool:
    """True when numba.cuda is the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    import numba

    return bool(numba.config.ENABLE_CUDASIM)
