"""Linear-regression data ``(X, y)`` as the sparse-recovery oracles read it, and their result.

The oracles (:mod:`fastdmf.baselines.basis_pursuit`, :mod:`fastdmf.diagonal_theory`) take a
sparse-regression problem (anything with ``.X`` and ``.y``, and optionally ``.ground_truth``)
or a plain ``(X, y)`` tuple. They all need the same three things, kept here once: validated
float64 arrays, an orthonormal basis of the row space of ``X`` (every interpolant differs from
another by a vector of ``null(X)``, and every optimality condition lives in ``range(X^T)``), and
a :class:`~fastdmf.FitResult` whose single factor is the 1 x d row ``w`` (the linear predictor
``x -> w . x``, a depth-1 "matrix" like the matrix baselines' ``[W]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``y`` counts as in the range of ``X`` when its part outside is at most this fraction of it
CONSISTENCY_RTOL = 1e-8


@dataclass(frozen=True)
class RegressionData:
    """Validated ``X`` (n x d), ``y`` (n,), ``ground_truth`` (d,) or None, and the source."""

    X: np.ndarray
    y: np.ndarray
    ground_truth: np.ndarray | None
    source: object

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape


def as_regression(problem) -> RegressionData:
    """Validate ``problem`` (an object with ``.X`` and ``.y``, or a tuple ``(X, y)``)."""
    if isinstance(problem, tuple):
        if len(problem) != 2:
            raise TypeError(f"a tuple problem must be (X, y), got {len(problem)} items")
        X, y = problem
        truth = None
    elif hasattr(problem, "X") and hasattr(problem, "y"):
        X, y = problem.X, problem.y
        truth = getattr(problem, "ground_truth", None)
    else:
        raise TypeError(
            "expected a sparse-regression problem (an object with .X and .y) or a tuple "
            f"(X, y), got {type(problem).__name__}"
        )
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d array (n samples x d features), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must be a 1-d array of n targets, got shape {y.shape}")
    n, d = X.shape
    if n == 0 or d == 0:
        raise ValueError(f"X has shape {X.shape}: need at least one sample and one feature")
    if y.shape[0] != n:
        raise ValueError(f"X has {n} rows (samples) but y has {y.shape[0]} entries")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
        raise ValueError("X and y must be finite (found NaN or inf)")
    if truth is not None:
        truth = np.asarray(truth, dtype=np.float64)
        if truth.shape != (d,):
            raise ValueError(f"ground_truth has shape {truth.shape}, expected ({d},)")
    return RegressionData(X, y, truth, problem)


@dataclass(frozen=True)
class RowSpace:
    """Thin SVD ``X = U diag(s) Vt`` cut to the numerical rank ``r``: ``Vt`` (r x d) has
    orthonormal rows spanning ``range(X^T)``, ``U`` (n x r) spans ``range(X)``."""

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray

    @classmethod
    def of(cls, X) -> RowSpace:
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        cut = max(X.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
        r = int(np.sum(s > cut))
        return cls(U[:, :r], s[:r], Vt[:r])

    def reduced_targets(self, y) -> np.ndarray:
        """``b`` with ``Xw = y  <=>  Vt w = b``; raises when ``y`` is outside ``range(X)``."""
        coef = self.U.T @ y
        outside = float(np.linalg.norm(y - self.U @ coef))
        scale = float(np.linalg.norm(y))
        if outside > CONSISTENCY_RTOL * max(scale, 1e-300) and outside > 0.0:
            raise ValueError(
                f"no w interpolates the data: y has a part of norm {outside:.3g} (of "
                f"||y|| = {scale:.3g}) outside the range of X (rank {self.s.size} of "
                f"{self.U.shape[0]} samples). This happens with more samples than features "
                "and noise; fit with fastdmf.fit (least squares) or drop samples."
            )
        return coef / self.s

    def multiplier(self, c) -> np.ndarray:
        """``lam`` (n,) with ``X^T lam = Vt^T c``."""
        return self.U @ (c / self.s)


def record(data: RegressionData, w, n_evals=0) -> dict:
    """The one trajectory record of an oracle's answer ``w``."""
    n = data.X.shape[0]
    resid = data.X @ w - data.y
    test = np.nan
    if data.ground_truth is not None and np.any(data.ground_truth):
        truth = data.ground_truth
        test = float(np.sum((w - truth) ** 2) / np.sum(truth**2))
    norm2 = float(np.linalg.norm(w))
    return {
        "step": 0,
        "time": 0.0,
        "n_evals": int(n_evals),
        "train_loss": float(resid @ resid / n),
        "test_error": test,
        "val_error": np.nan,
        "nuclear_norm": norm2,
        "effective_rank": 1.0 if norm2 else 0.0,
        "schatten": norm2**2,
        "grad_norm": float(np.linalg.norm(2.0 / n * data.X.T @ resid)),
        "param_norm": norm2,
        "singular_values": np.array([norm2]),
        "balancedness": np.zeros(0),
    }


def pack(data: RegressionData, w, status, settings, n_iter, n_evals=0):
    """A depth-1 :class:`~fastdmf.FitResult` with ``factors = [w[None, :]]`` (the 1 x d
    predictor), a one-record trajectory (``test_error``: ``||w - w*||^2 / ||w*||^2`` when the
    problem has a ground truth) and ``settings["coef"] = w``."""
    from ._plan import versions
    from .result import FitResult
    from .trajectory import Trajectory

    w = np.ascontiguousarray(w, dtype=np.float64)
    traj = Trajectory(1, None, {"shape": [1, w.size], "solver": settings["solver"]})
    traj.append(record(data, w, n_evals))
    meta = getattr(data.source, "meta", None)
    settings = {
        **settings,
        "coef": w,
        "problem": repr(data.source)
        if meta is not None
        else f"(X {data.shape[0]}x{data.shape[1]}, y)",
        "problem_meta": dict(meta) if meta is not None else {},
        "versions": versions(),
    }
    return FitResult([w[None, :].copy()], traj, status, settings, int(n_iter))
