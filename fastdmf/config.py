"""Library-wide knobs, read at call time so tests and users can patch them.

Example
-------
>>> from fastdmf import config
>>> config.PARALLEL_MIN_WORK = 0      # force the parallel kernels
>>> config.reset()                    # back to the defaults
"""

from __future__ import annotations

_DEFAULTS = {
    # Use the parallel (prange) sparse kernels when |Omega| * width reaches this; below it
    # the threading overhead costs more than it saves.
    "PARALLEL_MIN_WORK": 2_000_000,
    # Blocks the parallel kernels split each dense product into (fixed, so results do not
    # depend on the thread count; the middle gradients keep one partial product per block).
    "DENSE_BLOCKS": 8,
    # Longest compiled call between two returns to Python (Ctrl-C is seen between calls;
    # progress and callbacks run at record points).
    "MAX_CHUNK_STEPS": 20_000,
    # A loss larger than this factor times the initial loss counts as divergence.
    "DIVERGENCE_FACTOR": 1e8,
    # synthetic_completion keeps a dense ground truth up to this many entries (m n).
    "DENSE_TRUTH_MAX": 10_000_000,
    # Early stopping: a validation record counts as an improvement when it lowers the best
    # validation error so far by at least this fraction.
    "MIN_IMPROVEMENT": 1e-4,
    # Entries evaluated at once by FitResult.predict and held-out errors (bounds memory).
    "PREDICT_BLOCK": 65_536,
}

PARALLEL_MIN_WORK: int = _DEFAULTS["PARALLEL_MIN_WORK"]
DENSE_BLOCKS: int = _DEFAULTS["DENSE_BLOCKS"]
MAX_CHUNK_STEPS: int = _DEFAULTS["MAX_CHUNK_STEPS"]
DIVERGENCE_FACTOR: float = _DEFAULTS["DIVERGENCE_FACTOR"]
PREDICT_BLOCK: int = _DEFAULTS["PREDICT_BLOCK"]
MIN_IMPROVEMENT: float = _DEFAULTS["MIN_IMPROVEMENT"]
DENSE_TRUTH_MAX: int = _DEFAULTS["DENSE_TRUTH_MAX"]


def reset() -> None:
    """Restore every knob to its default value."""
    globals().update(_DEFAULTS)
