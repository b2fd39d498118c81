"""The observation operator A of a problem, as the baselines use it.

Completion: ``A(W) = (W[i_k, j_k])_k`` and ``A^*(lam)`` puts ``lam_k`` at ``(i_k, j_k)``.
Sensing: ``A(W) = (<A_k, W>)_k`` and ``A^*(lam) = sum_k lam_k A_k``. Both also offer the exact
projection onto the affine set ``{W : A(W) = y}`` and the map from a matrix in the range of
``A^*`` back to its multiplier.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl

from .._kinds import find_kind


class Observations:
    """``A`` and its adjoint for a :class:`CompletionProblem` or :class:`SensingProblem`."""

    def __init__(self, problem):
        kind = find_kind(problem)
        self.kind = None if kind is None else kind.name
        if self.kind == "completion":
            self.rows, self.cols = problem.rows, problem.cols
            self.y = problem.values
        elif self.kind == "sensing":
            self.mat = problem.operator
            self.y = problem.y
            self._gram = None
        else:
            raise TypeError(
                "the baselines take a CompletionProblem or a SensingProblem (build one with "
                "fastdmf.completion(...) or fastdmf.sensing(...)), got "
                f"{type(problem).__name__}"
            )
        self.problem = problem
        self.shape = problem.shape
        self.p = int(self.y.shape[0])
        self.y_norm = float(np.linalg.norm(self.y))

    def __call__(self, w) -> np.ndarray:
        """``A(W)``."""
        if self.kind == "completion":
            return w[self.rows, self.cols]
        return self.mat @ w.reshape(-1)

    def adjoint(self, lam) -> np.ndarray:
        """``A^*(lam)``, dense m x n."""
        if self.kind == "completion":
            out = np.zeros(self.shape)
            out[self.rows, self.cols] = lam
            return out
        return (self.mat.T @ lam).reshape(self.shape)

    def gram_solve(self, r) -> np.ndarray:
        """``(A A^*)^+ r`` (sensing: cached Cholesky of ``A A^T``; completion: ``r``)."""
        if self.kind == "completion":
            return r
        if self._gram is None:
            self._gram = _factor_gram(self.mat)
        kind, fac = self._gram
        if kind == "chol":
            return sl.cho_solve(fac, r, check_finite=False)
        vecs, inv = fac
        return vecs @ (inv * (vecs.T @ r))

    def project(self, w) -> np.ndarray:
        """The nearest point of ``{X : A(X) = y}`` to ``w`` (Frobenius), in place when it can."""
        if self.kind == "completion":
            w[self.rows, self.cols] = self.y
            return w
        resid = self(w) - self.y
        w -= self.adjoint(self.gram_solve(resid))
        return w

    def multiplier(self, ymat) -> np.ndarray:
        """``lam`` with ``A^*(lam)`` the projection of ``ymat`` on the range of ``A^*``."""
        if self.kind == "completion":
            return ymat[self.rows, self.cols].copy()
        return self.gram_solve(self(ymat))

    def least_norm(self) -> np.ndarray:
        """``A^+ y``: the minimum Frobenius-norm matrix with ``A(W) = y``."""
        w = self.adjoint(self.gram_solve(self.y))
        if self.kind == "sensing":
            self.check_consistent(w)
        return w

    def check_consistent(self, w) -> None:
        """Raise when ``A(w) = y`` fails: the measurements contradict each other."""
        err = np.linalg.norm(self(w) - self.y)
        if err > 1e-8 * max(self.y_norm, 1e-300):
            raise ValueError(
                "no matrix matches these measurements: some measurement matrices A_k are "
                "linearly dependent while their y_k disagree (relative residual of the "
                f"least-squares solution {err / self.y_norm:.2e}); drop the dependent "
                "measurements or fit with a penalty instead"
            )

    def residual(self, w) -> float:
        """``||A(W) - y|| / ||y||``."""
        return float(np.linalg.norm(self(w) - self.y) / max(self.y_norm, 1e-300))

    def loss_grad_norm(self, w) -> tuple[float, float]:
        """The paper's mean loss ``(1/p) ||A(W) - y||^2`` and the norm of its gradient."""
        r = self(w) - self.y
        loss = float(r @ r / self.p)
        return loss, float(np.linalg.norm(self.adjoint(2.0 * r / self.p)))


def _factor_gram(mat):
    """Cholesky of ``A A^T``, or (for dependent measurements) its pseudo-inverse by eigh."""
    gram = mat @ mat.T
    try:
        return "chol", sl.cho_factor(gram, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        vals, vecs = sl.eigh(gram, check_finite=False)
        keep = vals > vals[-1] * gram.shape[0] * np.finfo(np.float64).eps
        inv = np.zeros_like(vals)
        inv[keep] = 1.0 / vals[keep]
        return "eig", (vecs, inv)
