"""Soft-Impute: nuclear-norm regularised completion, its lambda chosen on held-out entries."""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl

from .._kinds import find_kind
from ._operator import Observations
from ._result import Recorder, check_common, pack
from ._svt import Thresholder
from ._threads import blas_threads

__all__ = ["soft_impute"]

_SPARE = 10  # singular vectors kept beyond the thresholded rank for the warm-started SVT


def soft_impute(
    problem,
    lam: float | None = None,
    *,
    validation: float = 0.1,
    seed=0,
    n_lambdas: int = 20,
    lam_ratio: float = 1e-3,
    patience: int | None = 3,
    tol: float = 1e-3,
    max_iter: int = 100,
    n_threads: int | None = None,
    progress: bool = False,
):
    r"""Nuclear-norm regularised completion by Soft-Impute (Mazumder, Hastie & Tibshirani 2010).

    Solves the convex problem (their eq. 2, sum over the observed entries Omega)::

        min_Z  (1/2) sum_{(i,j) in Omega} (Z[i, j] - y_ij)^2  +  lam ||Z||_*

    by their Algorithm 1: ``Z <- SVT_lam(P_Omega(Y) + P_Omega^perp(Z))`` (fill the missing
    entries from the current ``Z``, shrink every singular value by ``lam``) until the relative
    change ``||Z_new - Z||_F / ||Z||_F`` is at most ``tol``, along a decreasing path of
    ``lam`` with warm starts (section 3). A fixed point satisfies the optimality condition
    ``P_Omega(Y - Z) in lam d||Z||_*``. Unlike :func:`nuclear_norm` it does not interpolate
    the observations: ``lam`` trades fit for rank, which is what noisy real data needs.

    The path is ``n_lambdas`` values spaced geometrically from ``lam_max = sigma_1(P_Omega(Y))``
    (where ``Z = 0`` is the solution) down to ``lam_ratio * lam_max``. With ``lam=None`` a
    fraction ``validation`` of the observed entries (drawn with ``seed``, as
    ``problem.split(validation, seed=seed)`` draws them) is held out, the path is fitted on the
    rest, and the ``lam`` with the smallest held-out RMSE is kept (the path stops early once
    ``patience`` values in a row have not improved it). The final fit uses all observed
    entries, along the same path down to the chosen value scaled by
    ``|Omega| / |Omega_train|``: the loss is a sum over entries, so this keeps the balance of
    fit and penalty per entry that was chosen.

    The SVT needs only the singular triplets above ``lam``; once their number has settled, they
    are tracked by one warm-started step of subspace iteration per iteration (see
    :func:`nuclear_norm`), and convergence at the returned ``lam`` is confirmed by a full
    SVD at the last value of the final path. ``Z`` is dense: fine for tables and for a
    MovieLens-100k matrix (671 x 9066), too large for much larger ones.

    Parameters
    ----------
    problem : CompletionProblem
        The observed entries (``fastdmf.completion``, ``from_ratings``, ``synthetic_completion``).
        Centre (and scale) the data first when it has offsets: the penalty shrinks toward 0.
    lam : float, optional
        The regularisation weight; None chooses it on a validation split as above.
    validation : float
        Fraction of the observed entries held out to choose ``lam``, in (0, 1).
    seed : int or None
        Seed of the validation split.
    n_lambdas : int
        Number of values on the path (>= 1).
    lam_ratio : float
        Smallest value on the path over the largest, in (0, 1).
    patience : int or None
        Stop the validation path after this many values without a better held-out RMSE;
        None runs the whole path.
    tol : float
        Relative change of ``Z`` that ends the iterations at one ``lam``, in (0, 1); the
        default 1e-3 is about the reference implementation's (R ``softImpute``,
        ``thresh = 1e-5`` on the squared change).
    max_iter : int
        Most iterations at one ``lam`` (R ``softImpute``'s ``maxit``); status
        ``"max_steps"`` when they run out at any value.
    n_threads : int, optional
        BLAS threads (see :func:`nuclear_norm`).
    progress : bool
        Show the iteration on stderr.

    Returns
    -------
    FitResult
        ``factors = [Z]``; one trajectory record at the end of each ``lam`` of the final path
        (``step`` counts iterations); ``settings`` holds ``solver``, ``lam`` (of the returned
        ``Z``), ``lam_path`` (the final path, ending at ``lam``), ``iterations``, ``svds``,
        and, when ``lam`` was chosen, ``lam_validation`` (the chosen value on the training
        part), ``validation_path`` (its path) and ``validation_rmse`` (held-out RMSE per value;
        NaN where the path stopped early).

    Raises
    ------
    TypeError
        ``problem`` is not a completion problem.
    ValueError
        Bad ``lam``, ``validation``, ``n_lambdas``, ``lam_ratio``, ``patience``, ``tol`` or
        ``max_iter``; a validation split that leaves either side empty.

    Example
    -------
    >>> import fastdmf
    >>> problem = fastdmf.synthetic_completion(shape=(40, 30), rank=2, n_observed=600, seed=0)
    >>> result = fastdmf.baselines.soft_impute(problem, lam=1.0, tol=1e-10)
    >>> z = result.matrix()
    >>> g = np.zeros(z.shape)
    >>> g[problem.rows, problem.cols] = problem.values - z[problem.rows, problem.cols]
    >>> u, s, vt = np.linalg.svd(z + g, full_matrices=False)  # fixed point: Z = SVT(Z + G)
    >>> bool(np.allclose(z, (u * np.maximum(s - 1.0, 0.0)) @ vt, atol=1e-8))
    True
    """
    kind = find_kind(problem)
    if kind is not None and kind.name == "sensing":
        raise TypeError(
            "soft_impute fits completion problems; for sensing measurements use "
            "nuclear_norm (exact constraints) instead"
        )
    obs = Observations(problem)  # raises the baselines' TypeError for anything else
    _check(lam, validation, n_lambdas, lam_ratio, patience)
    check_common(tol, max_iter, None)
    opts = {"tol": float(tol), "max_iter": int(max_iter), "progress": progress}
    settings = {
        "solver": "soft_impute",
        "method": "soft-impute (Mazumder et al. 2010)",
        "tol": float(tol),
        "max_iter": int(max_iter),
        "n_lambdas": int(n_lambdas),
        "lam_ratio": float(lam_ratio),
    }
    with blas_threads(n_threads, obs.shape):
        if lam is None:
            train, val = problem.split(validation, seed=seed)
            grid = _grid(Observations(train), n_lambdas, lam_ratio)
            rmse = _validate(Observations(train), val, grid, patience, opts)
            best = int(np.nanargmin(rmse))
            scale = problem.n_observed / train.n_observed
            path = grid[: best + 1] * scale
            settings.update(
                lam_validation=float(grid[best]),
                validation_path=grid,
                validation_rmse=rmse,
                validation=float(validation),
                seed=seed,
                patience=patience,
            )
        else:
            grid = _grid(obs, n_lambdas, lam_ratio)
            path = np.append(grid[grid > lam], float(lam))
        rec = Recorder(obs, np.array([0]), progress, "soft_impute")
        try:
            z, _, it, n_svd, ok = _run_path(obs, path, opts, rec)
        finally:
            rec.close()
    settings.update(lam=float(path[-1]), lam_path=path, iterations=it, svds=n_svd)
    return pack(z, rec.traj, "converged" if ok else "max_steps", settings, it, problem)


def _check(lam, validation, n_lambdas, lam_ratio, patience):
    """Validate the arguments that only soft_impute takes."""
    if lam is not None and (
        isinstance(lam, bool)
        or not isinstance(lam, (int, float, np.number))
        or not (np.isfinite(lam) and lam > 0)
    ):
        raise ValueError(
            f"lam must be a positive number, or None to choose it on a "
            f"validation split; got {lam!r}"
        )
    if isinstance(validation, bool) or not (
        isinstance(validation, (int, float, np.floating)) and 0 < validation < 1
    ):
        raise ValueError(f"validation must be a fraction in (0, 1), e.g. 0.1; got {validation!r}")
    if isinstance(n_lambdas, bool) or not (
        isinstance(n_lambdas, (int, np.integer)) and n_lambdas >= 1
    ):
        raise ValueError(f"n_lambdas must be a positive integer, got {n_lambdas!r}")
    if isinstance(lam_ratio, bool) or not (
        isinstance(lam_ratio, (int, float, np.floating)) and 0 < lam_ratio < 1
    ):
        raise ValueError(f"lam_ratio must be a number in (0, 1), e.g. 1e-3; got {lam_ratio!r}")
    if patience is not None and (
        isinstance(patience, bool)
        or not (isinstance(patience, (int, np.integer)) and patience >= 1)
    ):
        raise ValueError(f"patience must be a positive integer or None, got {patience!r}")


def _grid(obs, n_lambdas, lam_ratio) -> np.ndarray:
    """``n_lambdas`` values from ``sigma_1(P_Omega(Y))`` down to ``lam_ratio`` times it."""
    top = float(sl.svdvals(obs.adjoint(obs.y), check_finite=False)[0])
    if top == 0.0:  # all observations zero: Z = 0 for every lam
        top = 1.0
    return np.geomspace(top, top * lam_ratio, int(n_lambdas))


def _validate(obs, val, grid, patience, opts) -> np.ndarray:
    """Held-out RMSE at each value of ``grid`` (NaN after an early stop)."""
    rmse = np.full(len(grid), np.nan)
    thr = Thresholder(obs.shape, _SPARE)
    z = np.zeros(obs.shape)
    since = 0
    for k, lam in enumerate(grid):
        z, _, _, _ = _solve(obs, z, lam, thr, opts)
        rmse[k] = np.sqrt(np.mean((z[val.rows, val.cols] - val.values) ** 2))
        since = 0 if rmse[k] <= np.nanmin(rmse[: k + 1]) else since + 1
        if patience is not None and since >= patience:
            break
    return rmse


def _run_path(obs, path, opts, rec):
    """Warm-started fits along ``path``; ``(Z, sigma(Z), iterations, svds, all converged)``."""
    thr = Thresholder(obs.shape, _SPARE)
    z, s = np.zeros(obs.shape), np.zeros(0)
    total, ok = 0, True
    for k, lam in enumerate(path):
        z, s, it, conv = _solve(obs, z, lam, thr, opts, confirm=k == len(path) - 1)
        total += it
        ok &= conv
        rec.add(z, s, total, thr.n_full + thr.n_fast, f"lam {lam:.3g}")
    return z, s, total, {"full": thr.n_full, "subspace": thr.n_fast}, ok


def _solve(obs, z, lam, thr, opts, confirm=False):
    """Soft-Impute at one ``lam`` from ``z``: ``(Z, sigma(Z), iterations, converged)``.

    With ``confirm``, a step taken with the subspace SVT that meets the tolerance is redone
    with a full SVD, so convergence is judged on an exact threshold (done at the last value
    of the final path only: a full SVD of a wide ratings matrix costs as much as hundreds of
    subspace steps)."""
    tol, exact = opts["tol"], False
    s = np.zeros(0)
    for it in range(1, opts["max_iter"] + 1):
        a = z.copy()
        a[obs.rows, obs.cols] = obs.y
        full = thr.n_full
        new, s = thr.exact(a, lam) if exact else thr(a, lam)
        done = np.linalg.norm(new - z) <= tol * max(np.linalg.norm(z), 1e-300)
        z = new
        if done and (thr.n_full > full or not confirm):
            return z, s, it, True
        exact = done  # a fast step met the tolerance: confirm with a full SVD
    return z, s, opts["max_iter"], False
