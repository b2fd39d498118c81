"""The outcome of a fit: :class:`FitResult`, one type for every solver (``fit``,
``fit_batch``, ``resume``, the baselines, :class:`fastdmf.Objective`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import config
from .factors import end_to_end, predict_entries
from .offsets import Offsets
from .problem import check_index
from .trajectory import Trajectory

__all__ = ["FitResult"]


@dataclass(eq=False)
class FitResult:
    """The outcome of a fit (one type for every solver).

    Attributes
    ----------
    factors : list of ndarray
        ``[W_1, ..., W_N]``; ``W_j`` is ``d_j x d_{j-1}``.
    trajectory : Trajectory
        Records taken during the fit (see :mod:`fastdmf.trajectory`).
    status : str
        ``"converged"`` (train loss <= tol), ``"max_steps"``, ``"max_time"`` (the flow
        reached ``max_time``), ``"diverged"`` (factors and
        trajectory are those of the last good record), ``"stopped"`` (by the callback), and
        with validation entries ``"early_stopped"`` (factors, steps and trajectory are those
        of the record with the lowest validation error, a later one than the first) or
        ``"no_improvement"`` (no record improved on the initial state, which is returned).
    settings : dict
        Everything needed to rerun the fit: arguments, seed, library versions.
    n_steps : int
        Optimiser steps taken (for a diverged fit: up to the last good record).
    offsets : Offsets or None
        The offsets ``mu + b_i + c_j`` fitted before the factorization (``fit(offsets=...)``;
        see :mod:`fastdmf.offsets`); :meth:`matrix` and :meth:`predict` include them. The
        factors and the trajectory's losses are those of the residuals.
    """

    factors: list
    trajectory: Trajectory
    status: str
    settings: dict = field(repr=False)
    n_steps: int = 0
    offsets: Offsets | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.factors[-1].shape[0], self.factors[0].shape[1])

    @property
    def train_loss(self) -> float:
        """Train loss at the final state."""
        return float(self.trajectory.train_loss[-1])

    def matrix(self) -> np.ndarray:
        """The dense fitted matrix W = W_N ... W_1 (m x n), plus the offsets if any."""
        w = end_to_end(self.factors)
        return w if self.offsets is None else self.offsets.predict_matrix(w)

    def predict(self, rows, cols) -> np.ndarray:
        """Entries ``W[rows[k], cols[k]]`` (plus their offsets, if any), computed from the
        factors without forming W."""
        m, n = self.shape
        rows = check_index(rows, "rows", m)
        cols = check_index(cols, "cols", n)
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols differ in length: {rows.size} and {cols.size}")
        pred = predict_entries(self.factors, rows, cols, config.PREDICT_BLOCK)
        return pred if self.offsets is None else self.offsets.predict(pred, rows, cols)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.shape))
        return (
            f"FitResult(depth={len(self.factors)}, shape={shape}, status={self.status!r}, "
            f"steps={self.n_steps}, train_loss={self.train_loss:.3g})"
        )
