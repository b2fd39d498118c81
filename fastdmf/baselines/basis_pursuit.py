"""Basis pursuit and the minimum-l2 interpolant: the two ends of a diagonal network's bias.

A depth-N diagonal network ``w = u^N - v^N`` trained from ``u = v = alpha`` interpolates the
data; as ``alpha -> 0`` its limit tends to the least-l1 interpolant (basis pursuit, the vector
analogue of nuclear-norm minimisation), as ``alpha -> inf`` to the least-l2 one (the analogue
of the minimum-Frobenius matrix). See :mod:`fastdmf.diagonal_theory` for every alpha between,
and docs/diagonal.md.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import linprog

from .._regression import RowSpace, as_regression, pack

__all__ = ["basis_pursuit", "min_norm_interpolant"]


def basis_pursuit(problem, *, tol: float = 1e-9, polish: bool = True):
    r"""The interpolant of least l1 norm, with its LP dual certificate.

    Solves::

        min_w ||w||_1   subject to   X w = y

    as the linear program ``min 1^T (p + m)  s.t.  X (p - m) = y,  p, m >= 0`` (``w = p - m``)
    with HiGHS (:func:`scipy.optimize.linprog`). Its dual is::

        max_lam  y^T lam   subject to   ||X^T lam||_inf <= 1

    and the multiplier ``lam`` comes from the equality constraints' marginals. A pair
    ``(w, lam)`` with ``Xw = y``, ``||X^T lam||_inf <= 1`` and ``||w||_1 = y^T lam`` proves
    ``w`` optimal (weak duality: ``y^T lam = w'^T X^T lam <= ||w'||_1`` for every interpolant
    ``w'``). With ``polish`` the LP's answer (accurate to HiGHS's feasibility tolerance, about
    ``tol``) is refined on its support ``S``: ``w_S`` by least squares on ``X_S``, ``lam`` by
    the least change that makes ``X_S^T lam = sign(w_S)`` exact; the refined pair replaces the
    LP's when it keeps the signs and its certificate is no worse, which brings the gap and
    the residual to rounding level.

    Parameters
    ----------
    problem : SparseRegressionProblem or tuple (X, y)
        ``X`` (n x d) and ``y`` (n,); ``y`` must lie in the range of ``X``.
    tol : float
        HiGHS's primal and dual feasibility tolerances, and the bar for status
        ``"converged"``: relative residual, relative gap and dual violation all ``<= tol``
        (checked with a factor 100 of slack for the rounding of ``||X^T lam||``).
    polish : bool
        Refine the LP's answer on its support (see above).

    Returns
    -------
    FitResult
        ``factors = [w[None, :]]`` (the 1 x d predictor; ``settings["coef"]`` is ``w``), a
        one-record trajectory, status ``"converged"`` (or ``"max_steps"`` with a warning when
        the certificate misses ``tol``), and ``settings["certificate"]``: ``multiplier``
        (``lam``, shape (n,)), ``dual_objective`` (``y^T lam``), ``dual_norm``
        (``||X^T lam||_inf``), ``dual_violation`` (``max(0, dual_norm - 1)``),
        ``lower_bound`` (``y^T lam / max(1, dual_norm)``: a bound on the optimal value),
        ``l1_norm``, ``gap_abs`` (``||w||_1 - y^T lam``), ``gap`` (``|gap_abs| / ||w||_1``),
        ``residual`` (``||Xw - y|| / ||y||``) and ``polished``.

    Raises
    ------
    TypeError
        ``problem`` is neither an object with ``.X``, ``.y`` nor an ``(X, y)`` tuple.
    ValueError
        Bad ``tol``; ``y`` outside the range of ``X`` (no interpolant, e.g. noisy data with
        more samples than features).

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((20, 50)); w_true = np.zeros(50); w_true[[3, 17]] = [1.0, -2.0]
    >>> result = basis_pursuit((X, X @ w_true))
    >>> cert = result.settings["certificate"]
    >>> bool(np.allclose(result.settings["coef"], w_true)), bool(cert["gap"] < 1e-12)
    (True, True)
    """
    data = as_regression(problem)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), e.g. 1e-9; got {tol!r}")
    X, y = data.X, data.y
    n, d = X.shape
    RowSpace.of(X).reduced_targets(y)  # a clear error before the LP reports "infeasible"
    res = linprog(
        np.ones(2 * d),
        A_eq=np.hstack([X, -X]),
        b_eq=y,
        bounds=(0, None),
        method="highs",
        options={"primal_feasibility_tolerance": tol, "dual_feasibility_tolerance": tol},
    )
    if res.status == 2:
        raise ValueError(
            "no w interpolates the data (the LP is infeasible): y is outside the range of X"
        )
    if res.status not in (0, 1):
        raise RuntimeError(f"HiGHS failed on the basis-pursuit LP: {res.message}")
    w = res.x[:d] - res.x[d:]
    lam = np.asarray(res.eqlin.marginals, dtype=np.float64)
    cert = certificate(X, y, w, lam, polished=False)
    if polish:
        refined = _polish(X, y, w, lam)
        if refined is not None:
            cand = certificate(X, y, *refined, polished=True)
            if (
                cand["dual_violation"] <= max(cert["dual_violation"], tol)
                and cand["residual"] <= max(cert["residual"], tol)
                and cand["gap"] <= max(cert["gap"], tol)
            ):
                w, lam, cert = refined[0], refined[1], cand
    ok = (
        cert["residual"] <= 100 * tol
        and cert["gap"] <= 100 * tol
        and cert["dual_violation"] <= 100 * tol
    )
    if not ok:
        warnings.warn(
            f"basis_pursuit: the certificate misses tol={tol:g} (residual "
            f"{cert['residual']:.2e}, gap {cert['gap']:.2e}, dual violation "
            f"{cert['dual_violation']:.2e}); HiGHS said: {res.message}",
            RuntimeWarning,
            stacklevel=2,
        )
    settings = {
        "solver": "basis_pursuit",
        "method": "linprog-highs",
        "tol": tol,
        "polish": bool(polish),
        "iterations": int(res.nit),
        "certificate": cert,
    }
    return pack(data, w, "converged" if ok else "max_steps", settings, int(res.nit))


def certificate(X, y, w, lam, polished=False) -> dict:
    """The LP duality certificate of the interpolant ``w`` and the multiplier ``lam``."""
    l1 = float(np.sum(np.abs(w)))
    dual = float(y @ lam)
    dual_norm = float(np.max(np.abs(X.T @ lam))) if lam.size else 0.0
    y_norm = float(np.linalg.norm(y))
    return {
        "multiplier": lam,
        "dual_objective": dual,
        "dual_norm": dual_norm,
        "dual_violation": max(0.0, dual_norm - 1.0),
        "lower_bound": dual / max(1.0, dual_norm),
        "l1_norm": l1,
        "gap_abs": l1 - dual,
        "gap": abs(l1 - dual) / max(l1, 1e-300),
        "residual": float(np.linalg.norm(X @ w - y)) / max(y_norm, 1e-300),
        "polished": bool(polished),
    }


def _polish(X, y, w, lam):
    """``(w, lam)`` refined on the support of ``w``, or None when the support does not
    determine ``w`` (more nonzeros than independent columns) or the signs change."""
    scale = max(float(np.max(np.abs(w))), 1e-300)
    support = np.flatnonzero(np.abs(w) > 1e-9 * scale)
    if support.size == 0 or support.size > X.shape[0]:
        return None
    xs = X[:, support]
    ws, _, rank, _ = np.linalg.lstsq(xs, y, rcond=None)
    if rank < support.size or np.any(np.sign(ws) != np.sign(w[support])):
        return None
    w_new = np.zeros_like(w)
    w_new[support] = ws
    miss = np.sign(ws) - xs.T @ lam
    lam_new = lam + np.linalg.lstsq(xs.T, miss, rcond=None)[0]
    return w_new, lam_new


def min_norm_interpolant(problem):
    r"""The interpolant of least l2 norm, ``argmin ||w||_2  s.t.  X w = y``.

    Closed form ``w = X^+ y = X^T lam``, computed from the thin SVD of ``X`` cut to its
    numerical rank: ``w`` lies in ``range(X^T)`` (the optimality condition), which is also the
    limit of gradient descent on ``w`` itself from ``w = 0``, and of a diagonal network as
    its initial scale grows (the kernel regime).

    Parameters
    ----------
    problem : SparseRegressionProblem or tuple (X, y)

    Returns
    -------
    FitResult
        ``factors = [w[None, :]]``, ``settings["coef"] = w``, ``settings["multiplier"]``
        (``lam`` with ``w = X^T lam``), ``settings["residual"]`` (``||Xw - y|| / ||y||``).

    Raises
    ------
    ValueError
        ``y`` outside the range of ``X`` (no interpolant).

    Example
    -------
    >>> import numpy as np
    >>> X = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    >>> min_norm_interpolant((X, np.array([2.0, 2.0]))).settings["coef"].round(6)
    array([0.666667, 1.333333, 0.666667])
    """
    data = as_regression(problem)
    rows = RowSpace.of(data.X)
    b = rows.reduced_targets(data.y)
    w = rows.Vt.T @ b
    lam = rows.multiplier(b)
    y_norm = float(np.linalg.norm(data.y))
    residual = float(np.linalg.norm(data.X @ w - data.y)) / max(y_norm, 1e-300)
    settings = {"solver": "min_norm_interpolant", "multiplier": lam, "residual": residual}
    return pack(data, w, "converged", settings, 0)
