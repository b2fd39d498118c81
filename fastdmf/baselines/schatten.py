"""Minimum Schatten-p quasi-norm subject to the observations, by reweighted least squares."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl

from ._operator import Observations
from ._result import Recorder, check_common, pack
from ._threads import blas_threads

__all__ = ["schatten_p"]


def schatten_p(
    problem,
    p: float = 0.5,
    *,
    tol: float = 1e-6,
    max_iter: int = 500,
    eps_decay: float = 1.1,
    record=10,
    n_threads: int | None = None,
    progress: bool = False,
):
    r"""Approximately minimise the Schatten-p quasi-norm subject to the observations (IRLS-p).

    The target is ``min_W sum_i sigma_i(W)^p  s.t.  A(W) = y`` with ``0 < p <= 1`` (p = 1 is
    the nuclear norm; p < 1 is non-convex, so the answer is a stationary point). Iteratively
    reweighted least squares (Mohan & Fazel 2012, "Iterative reweighted algorithms for matrix
    rank minimization", JMLR 13, section 3; Fornasier, Rauhut & Ward 2011) minimises the
    smoothed objective ``f_eps(W) = tr((W W^T + eps I)^{p/2})`` by majorisation:

        H_k = (W_k W_k^T + eps_k I)^{p/2 - 1}
        W_{k+1} = argmin_{A(W) = y} tr(W^T H_k W) = G_k A^*(mu),  G_k = H_k^{-1}

    with ``mu`` solving ``A(G_k A^*(mu)) = y`` (completion: one small system per column,
    ``w_j = G[:, O_j] G[O_j, O_j]^{-1} y_j`` over the observed rows ``O_j``; sensing: a p x p
    system). Since ``t -> t^{p/2}`` is concave the step never increases ``f_eps``, and
    ``eps_{k+1} = max(eps_k / eps_decay, eps_min)`` only lowers it, so ``f_{eps_k}(W_k)`` is
    non-increasing (kept in ``settings["objective"]``). ``eps_0`` is the top eigenvalue of
    ``W_0 W_0^T`` (``W_0`` the least-norm solution). Every iterate matches the observations.

    Parameters
    ----------
    problem : CompletionProblem or SensingProblem
    p : float
        The exponent, in (0, 1].
    tol : float
        Stop when ``||W_{k+1} - W_k||_F <= tol ||W_k||_F`` once ``eps`` has reached its floor
        ``(tol sigma_1(W_0))^2`` (the floor bounds the condition number of the weighted
        systems, solved by least squares).
    max_iter : int
        Most reweighting steps (status ``"max_steps"`` when they run out).
    eps_decay : float
        Factor (> 1) by which eps shrinks each step; a slow decrease (the default) lets the
        iterates settle before the weights sharpen, which recovers low-rank matrices that
        a fast one (2 and more) can miss.
    record, n_threads, progress
        As in :func:`nuclear_norm`.

    Returns
    -------
    FitResult
        ``factors = [W]``; ``settings`` holds ``solver``, ``p``, ``iterations``,
        ``objective`` (``f_eps_k(W_k)`` per iteration) and ``eps`` (per iteration).

    Raises
    ------
    TypeError
        ``problem`` is not a completion or sensing problem.
    ValueError
        ``p`` outside (0, 1], bad ``tol``, ``max_iter`` or ``eps_decay``.

    Example
    -------
    >>> import fastdmf
    >>> problem = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=200, seed=1)
    >>> result = fastdmf.baselines.schatten_p(problem, p=0.5)
    >>> bool(result.trajectory.test_error[-1] < 1e-4)
    True
    """
    obs = Observations(problem)
    if isinstance(p, bool) or not (isinstance(p, (int, float, np.floating)) and 0 < p <= 1):
        raise ValueError(
            f"p must lie in (0, 1] (Schatten-p quasi-norm; p = 1 is the nuclear norm), got {p!r}"
        )
    schedule = check_common(tol, max_iter, record)
    if not (np.isfinite(eps_decay) and eps_decay > 1):
        raise ValueError(f"eps_decay must be a number > 1, got {eps_decay!r}")
    solve = _column_solver(obs) if obs.kind == "completion" else _sensing_solver(obs)
    w = obs.least_norm()
    top = float(sl.svdvals(w, check_finite=False)[0])
    eps = top**2 if top > 0 else 1.0
    eps_min = (tol * top) ** 2
    rec = Recorder(obs, schedule, progress, "schatten_p")
    if top == 0:  # every observation is 0: W = 0 is feasible, with quasi-norm 0, the minimum
        status, it, objective, eps_hist = "converged", 0, [0.0], []
    else:
        with blas_threads(n_threads, obs.shape):
            try:
                status, it, w, objective, eps_hist = _irls(
                    obs, solve, w, p, eps, eps_min, tol, eps_decay, int(max_iter), rec
                )
            finally:
                rec.close()
    rec.add(w, sl.svdvals(w, check_finite=False), it, it)
    settings = {
        "solver": "schatten_p",
        "p": float(p),
        "tol": tol,
        "max_iter": int(max_iter),
        "eps_decay": float(eps_decay),
        "iterations": it,
        "objective": np.array(objective),
        "eps": np.array(eps_hist),
    }
    return pack(w, rec.traj, status, settings, it, problem)


def _irls(obs, solve, w, p, eps, eps_min, tol, eps_decay, max_iter, rec):
    """The reweighting loop; returns ``(status, iterations, W, objective, eps)``."""
    objective, eps_hist = [], []
    status, it = "max_steps", max_iter
    for k in range(max_iter + 1):
        vals, vecs = sl.eigh(w @ w.T, check_finite=False)
        vals = np.maximum(vals, 0.0)
        objective.append(float(np.sum((vals + eps) ** (p / 2))))
        eps_hist.append(eps)
        if rec.due(k):
            rec.add(w, np.sqrt(vals[::-1]), k, k)
        if k == max_iter:
            break
        gmat = (vecs * (vals + eps) ** (1.0 - p / 2)) @ vecs.T
        w_new = solve(gmat)
        change = np.linalg.norm(w_new - w) / max(np.linalg.norm(w), 1e-300)
        w = w_new
        eps = max(eps / eps_decay, eps_min)
        if change <= tol and eps <= eps_min:
            it, status = k + 1, "converged"
            break
    return status, it, w, objective, eps_hist


def _column_solver(obs):
    """Completion: ``W = argmin tr(W^T G^{-1} W)`` s.t. the observed entries, column by
    column (columns are independent because the weight acts on the left)."""
    m, n = obs.shape
    colptr = np.zeros(n + 1, dtype=np.int64)
    order = np.lexsort((obs.rows, obs.cols))
    np.cumsum(np.bincount(obs.cols, minlength=n), out=colptr[1:])
    rows_by_col = obs.rows[order]
    vals_by_col = obs.y[order]

    def solve(gmat):
        w = np.zeros((m, n))
        for j in range(n):
            lo, hi = colptr[j], colptr[j + 1]
            if lo == hi:
                continue
            idx = rows_by_col[lo:hi]
            mu = sl.lstsq(gmat[np.ix_(idx, idx)], vals_by_col[lo:hi], check_finite=False)[0]
            w[:, j] = gmat[:, idx] @ mu
        return w

    return solve


def _sensing_solver(obs):
    """Sensing: ``W = G A^*(mu)`` with ``A(G A^*(mu)) = y`` (a p x p system)."""
    m, n = obs.shape
    mats = obs.mat.reshape(obs.p, m, n)

    def solve(gmat):
        vals, vecs = sl.eigh(gmat, check_finite=False)
        half = vecs * np.sqrt(np.maximum(vals, 0.0))  # G = half half^T
        b = np.einsum("im,kin->kmn", half, mats).reshape(obs.p, -1)
        mu = sl.lstsq(b @ b.T, obs.y, check_finite=False)[0]
        return gmat @ obs.adjoint(mu)

    return solve
