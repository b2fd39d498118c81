"""Minimum Frobenius-norm matrix subject to the observations (closed form)."""

from __future__ import annotations

import numpy as np

from ._operator import Observations
from ._result import Recorder, pack

__all__ = ["min_frobenius"]


def min_frobenius(problem):
    r"""The matrix of least Frobenius norm that matches the observations exactly.

    Solves ``min_W ||W||_F  s.t.  A(W) = y`` in closed form: ``W = A^*((A A^*)^{-1} y)``.
    For completion ``A A^*`` is the identity, so ``W`` holds the observed values and zeros
    elsewhere; for sensing it is the least-norm solution through a Cholesky factorisation of
    ``A A^T`` (its pseudo-inverse when measurements are dependent). ``W`` lies in the range of
    ``A^*`` (the optimality condition), which is also the limit of gradient descent on ``W``
    itself from ``W = 0`` (depth 1 of the paper).

    Parameters
    ----------
    problem : CompletionProblem or SensingProblem

    Returns
    -------
    FitResult
        ``factors = [W]``; a one-record trajectory; status ``"converged"``;
        ``settings["multiplier"]`` is ``(A A^*)^{-1} y``, the ``lam`` with ``W = A^*(lam)``.

    Raises
    ------
    TypeError
        ``problem`` is not a completion or sensing problem.
    ValueError
        Measurements that no matrix matches.

    Example
    -------
    >>> import fastdmf
    >>> problem = fastdmf.synthetic_completion(shape=(30, 30), rank=2, n_observed=400, seed=0)
    >>> w = fastdmf.baselines.min_frobenius(problem).matrix()
    >>> observed = w[problem.rows, problem.cols]
    >>> int(np.count_nonzero(w)) <= 400, bool(np.allclose(observed, problem.values))
    (True, True)
    """
    obs = Observations(problem)
    lam = obs.gram_solve(obs.y)
    w = obs.adjoint(lam)
    if obs.kind == "sensing":
        obs.check_consistent(w)
    rec = Recorder(obs, np.array([0]), False, "min_frobenius")
    rec.add(w, np.linalg.svd(w, compute_uv=False), 0, 0)
    settings = {"solver": "min_frobenius", "multiplier": lam}
    return pack(w, rec.traj, "converged", settings, 0, problem)
