r"""The exact limit of gradient flow on a deep diagonal network, and its potential.

Plain NumPy/SciPy in float64, no kernels: the oracle that a diagonal fit is checked against.

The model (Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry & Srebro 2020): a
depth-D diagonal network writes the coefficients of a linear regression as::

    w = u^D - v^D  (entrywise),   u(0) = v(0) = alpha 1,   L(w) = (1/n) ||X w - y||^2

and gradient flow runs on ``(u, v)``. Its limit among all interpolants ``Xw = y`` is::

    w_alpha = argmin_w  Q_D(w)   subject to   X w = y,
    Q_D(w) = alpha^D sum_i q_D(w_i / alpha^D)

with ``q_D`` below: basis pursuit as ``alpha -> 0``, the minimum-l2 interpolant as
``alpha -> inf``.

Derivation (any real D >= 2; it assumes, as the paper does, that the flow converges to an
interpolant). With ``g = grad_w L = (2/n) X^T (Xw - y)``, the chain rule gives::

    du/dt = -D u^{D-1} g,    dv/dt = +D v^{D-1} g.

Let ``s(t) = -int_0^t g``, so ``ds/dt = -g`` and ``s`` stays in ``range(X^T)`` for all t.

- D = 2: ``d(log u)/dt = 2 ds/dt``, hence ``u = alpha exp(2 s)``, ``v = alpha exp(-2 s)`` and
  ``w = alpha^2 (exp(4 s) - exp(-4 s)) = alpha^2 h_2(z)`` with ``z = 4 s`` and
  ``h_2(z) = 2 sinh z``.
- D > 2: ``d(u^{2-D})/dt = (2-D) u^{1-D} du/dt = -D (D-2) ds/dt``, hence
  ``u^{2-D} = alpha^{2-D} - D (D-2) s``, i.e.
  ``u = alpha (1 - z)^{-1/(D-2)}`` and likewise ``v = alpha (1 + z)^{-1/(D-2)}`` with
  ``z = D (D-2) alpha^{D-2} s``; so ``w = alpha^D h_D(z)`` with::

      h_D(z) = (1 - z)^{-p} - (1 + z)^{-p},   p = D / (D - 2),   -1 < z < 1

  (u and v stay finite and positive exactly while ``|z| < 1``).

In both cases ``w(t) = alpha^D h_D(z(t))`` with ``z(t)`` in ``range(X^T)``: at the limit,
``w = alpha^D h_D(X^T mu)`` for some ``mu`` and ``Xw = y``. That is precisely the KKT system
of ``min Q_D(w) s.t. Xw = y`` whenever ``q_D' = h_D^{-1}``, i.e. when ``q_D`` is the Legendre
transform of ``H_D`` (``H_D' = h_D``, ``H_D(0) = 0``; ``H_D`` is strictly convex since
``h_D`` increases)::

    H_2(z) = 2 cosh z - 2 = 4 sinh^2(z / 2)
    H_D(z) = (D-2)/2 [(1 - z)^{-2/(D-2)} + (1 + z)^{-2/(D-2)}] - (D - 2)     (D > 2)
    q_D(x) = x h_D^{-1}(x) - H_D(h_D^{-1}(x))

For D = 2, ``h_2^{-1}(x) = asinh(x/2)`` and ``q_2(x) = 2 - sqrt(4 + x^2) + x asinh(x/2)``:
Woodworth et al.'s Theorem 1. Q_D is strictly convex, so the interpolant is unique; near 0,
``q_D(x) ~ x^2 / (2 h_D'(0))`` with ``h_D'(0) = 2p`` (p = 1 for D = 2): the l2 regime.

The limit is computed from the smooth convex dual (:func:`diagonal_limit`)::

    min_mu  F(mu) = alpha^D sum_i H_D((X^T mu)_i) - y^T mu,
    grad F = alpha^D X h_D(X^T mu) - y,   hess F = alpha^D X diag(h_D'(X^T mu)) X^T

whose minimiser gives ``w = alpha^D h_D(X^T mu)``. The map ``z -> w`` is ``h_D``, the
"mirror map" of a mirror descent with potential Q_D (the flow is mirror flow on w).

Numerics. ``h_D``, ``H_D`` and ``q_D`` are evaluated in forms without cancellation
(``h_D(z) = 2 (1 - z^2)^{-p/2} sinh(p atanh z)``, ``H_D`` as a sum of non-negative terms), so
they keep their relative accuracy from ``z ~ 1e-300`` (alpha large: the kernel regime) up to
the boundary. The dual is solved in the orthonormal coordinates of ``range(X^T)`` with the
targets scaled by ``alpha^-D``, so no quantity grows like ``alpha^-D``. What float64 cannot
hold is a z closer to 1 than its spacing: for D > 2 and tiny alpha the support of w has
``1 - |z| ~ (|w| / alpha^D)^{-(D-2)/D}``, and ``w`` inherits a relative error of about
``eps / (1 - |z|)``. See :func:`diagonal_limit` for the supported range of alpha.

References
----------
B. Woodworth, S. Gunasekar, J. D. Lee, E. Moroshko, P. Savarese, I. Golan, D. Soudry,
N. Srebro. Kernel and rich regimes in overparametrized models. COLT 2020, arXiv:2002.09277,
Theorem 1 (D = 2). The paper also treats depth D > 2; the potential here is derived
independently (above) and checked against the integrated flow (tests/test_diagonal_theory.py).
"""

from __future__ import annotations

import numpy as np

from ._regression import RowSpace, as_regression, pack

__all__ = [
    "link",
    "link_derivative",
    "link_potential",
    "link_inverse",
    "unit_potential",
    "potential",
    "diagonal_limit",
]

_EPS = np.finfo(np.float64).eps
#: the least ``1 - |z|`` :func:`diagonal_limit` accepts for D > 2 (``w`` then carries a
#: relative rounding error near ``eps / (1 - |z|)``, about 1e-8)
MIN_BOUNDARY_DISTANCE = 1e-8
_ARMIJO = 1e-4
_MAX_MOVE = 20.0  # most a D = 2 Newton step may move one z_i
#: scaled targets ``|y| / alpha^D`` (in the row basis) must lie within these bounds: beyond,
#: ``H_D`` under- or overflows
_TARGET_RANGE = (1e-150, 1e150)


def _check_depth(depth) -> float:
    if isinstance(depth, bool) or not isinstance(depth, (int, float, np.integer, np.floating)):
        raise TypeError(f"depth must be a number >= 2, got {depth!r}")
    if not (np.isfinite(depth) and depth >= 2):
        raise ValueError(
            f"depth must be >= 2 (depth 1, w = u - v, is plain gradient descent on w: its "
            f"limit is the minimum-l2 interpolant), got {depth!r}"
        )
    return float(depth)


def _check_scale(init_scale) -> float:
    if isinstance(init_scale, bool) or not isinstance(
        init_scale, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"init_scale must be a positive number, got {init_scale!r}")
    if not (np.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale (alpha) must be a positive finite number, got {init_scale!r}")
    return float(init_scale)


def link(z, depth=2) -> np.ndarray:
    """``h_D(z)``: ``2 sinh z`` for D = 2, ``(1-z)^{-p} - (1+z)^{-p}`` (p = D/(D-2), |z| < 1)
    for D > 2, evaluated as ``2 (1 - z^2)^{-p/2} sinh(p atanh z)`` (no cancellation)."""
    depth = _check_depth(depth)
    z = np.asarray(z, dtype=np.float64)
    if depth == 2:
        return 2.0 * np.sinh(z)
    p = depth / (depth - 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return 2.0 * np.exp(-0.5 * p * np.log1p(-z * z)) * np.sinh(p * np.arctanh(z))


def link_derivative(z, depth=2) -> np.ndarray:
    """``h_D'(z)``: ``2 cosh z`` for D = 2, ``p [(1-z)^{-p-1} + (1+z)^{-p-1}]`` for D > 2."""
    depth = _check_depth(depth)
    z = np.asarray(z, dtype=np.float64)
    if depth == 2:
        return 2.0 * np.cosh(z)
    p = depth / (depth - 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return p * ((1.0 - z) ** (-p - 1.0) + (1.0 + z) ** (-p - 1.0))


def link_potential(z, depth=2) -> np.ndarray:
    """``H_D(z)`` (``H_D' = h_D``, ``H_D(0) = 0``): ``4 sinh^2(z/2)`` for D = 2; for D > 2,
    with ``a = 2/(D-2)``, ``c = (1 - z^2)^{-a/2}`` and ``t = atanh z``,
    ``H_D = (D-2) [(c - 1) cosh(a t) + 2 sinh^2(a t / 2)]``: non-negative terms only."""
    depth = _check_depth(depth)
    z = np.asarray(z, dtype=np.float64)
    if depth == 2:
        return 4.0 * np.sinh(0.5 * z) ** 2
    a = 2.0 / (depth - 2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = np.arctanh(z)
        cm1 = np.expm1(-0.5 * a * np.log1p(-z * z))
        return (depth - 2) * (cm1 * np.cosh(a * t) + 2.0 * np.sinh(0.5 * a * t) ** 2)


def link_inverse(x, depth=2) -> np.ndarray:
    """``h_D^{-1}(x)``: ``asinh(x/2)`` for D = 2; for D > 2 a safeguarded Newton iteration per
    coordinate on ``h_D(z) = |x|``, ``z`` in [0, 1), from ``z0 = 1 - (1 + |x|)^{-1/p}``
    (where ``h_D(z0) >= |x|``). ``h_D`` is increasing and convex on [0, 1), so from above
    the iterates decrease monotonically to the root; a step that would leave the bracket is
    replaced by bisection."""
    depth = _check_depth(depth)
    x = np.asarray(x, dtype=np.float64)
    if depth == 2:
        return np.arcsinh(0.5 * x)
    if not np.all(np.isfinite(x)):
        raise ValueError("link_inverse: x must be finite")
    p = depth / (depth - 2)
    ax = np.abs(x).ravel()
    hi = -np.expm1(-np.log1p(ax) / p)  # h(hi) >= ax
    lo = np.zeros_like(ax)
    z = hi.copy()
    active = ax > 0
    for _ in range(200):
        if not np.any(active):
            break
        za = z[active]
        f = link(za, depth) - ax[active]
        step = f / link_derivative(za, depth)
        new = za - step
        # bracket update (f >= 0: za is an upper bound), bisection outside the bracket
        hi_a = np.where(f >= 0, za, hi[active])
        lo_a = np.where(f < 0, za, lo[active])
        bad = ~((new > lo_a) & (new < hi_a)) | ~np.isfinite(new)
        new = np.where(bad, 0.5 * (lo_a + hi_a), new)
        done = np.abs(new - za) <= 2.0 * _EPS * np.abs(za)
        z[active], hi[active], lo[active] = new, hi_a, lo_a
        idx = np.flatnonzero(active)
        active[idx[done]] = False
    z[ax == 0] = 0.0
    return (np.sign(x).ravel() * z).reshape(x.shape)


def unit_potential(x, depth=2) -> np.ndarray:
    """``q_D(x) = x h_D^{-1}(x) - H_D(h_D^{-1}(x))``, the Legendre transform of ``H_D``; for
    D = 2 Woodworth et al.'s ``q(x) = 2 - sqrt(4 + x^2) + x asinh(x/2)``, evaluated as
    ``x asinh(x/2) - x^2 / (2 + sqrt(4 + x^2))`` (no cancellation near 0)."""
    depth = _check_depth(depth)
    x = np.asarray(x, dtype=np.float64)
    if depth == 2:
        return x * np.arcsinh(0.5 * x) - x * x / (2.0 + np.sqrt(4.0 + x * x))
    z = link_inverse(x, depth)
    return x * z - link_potential(z, depth)


def potential(w, init_scale, depth=2) -> float:
    r"""``Q_D(w) = alpha^D sum_i q_D(w_i / alpha^D)``: the quantity that the limit of
    gradient flow on a depth-D diagonal network from ``u = v = alpha`` minimises among the
    interpolants (see the module docstring for ``q_D`` and its derivation).

    Parameters
    ----------
    w : array_like, shape (d,)
    init_scale : float
        ``alpha > 0``.
    depth : float
        ``D >= 2``.

    Example
    -------
    >>> import numpy as np
    >>> w = np.array([1.0, -0.5, 0.0])
    >>> q = lambda z: 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)
    >>> bool(np.isclose(potential(w, 0.3), 0.3**2 * q(w / 0.3**2).sum()))
    True
    """
    alpha, depth = _check_scale(init_scale), _check_depth(depth)
    w = np.asarray(w, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        scale = float(np.float64(alpha) ** depth)
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"init_scale**depth = {alpha}**{depth} is not a positive float64")
    return float(scale * np.sum(unit_potential(w / scale, depth)))


def diagonal_limit(problem, init_scale, depth=2, *, tol: float = 1e-12, max_iter: int = 500):
    r"""The limit of gradient flow on ``w = u^D - v^D`` from ``u = v = alpha``: the
    interpolant of least ``Q_D`` (module docstring)::

        w_alpha = argmin_w  Q_D(w)   subject to   X w = y

    Solved through its dual ``min_mu alpha^D sum H_D((X^T mu)_i) - y^T mu`` by damped Newton
    with backtracking (Armijo, and ``|X^T mu| < 1`` for D > 2), in the coordinates ``c`` of
    an orthonormal basis ``Vt`` of ``range(X^T)`` (``X^T mu = Vt^T c``; dependent samples
    are handled by the rank cut) with the targets scaled by ``alpha^-D``. Then
    ``w = alpha^D h_D(X^T mu)`` satisfies stationarity exactly, and Newton drives the
    relative primal residual ``||Xw - y|| / ||y||`` to ``tol``.

    Supported range. The limit for ``(c y, c^{1/D} alpha)`` is ``c`` times the limit for
    ``(y, alpha)``, so what matters is the size of ``y / alpha^D``, i.e. of
    ``|w| / alpha^D``:

    - it must lie within ``[1e-150, 1e150]`` (beyond, ``H_D`` under- or overflows): for
      ``|y| ~ 1`` that is ``1e-75 <= alpha <= 1e75`` at D = 2, ``1e-50 <= alpha <= 1e50`` at
      D = 3; outside it raises a ValueError;
    - for D > 2 the largest ``|z|`` must keep ``1 - |z| >= 1e-8`` (``MIN_BOUNDARY_DISTANCE``;
      ``w`` then carries a relative rounding error up to about 1e-8). As
      ``1 - |z| ~ (|w| / alpha^D)^{-(D-2)/D}``, that is ``|w|_max / alpha^D <= 1e{8 D/(D-2)}``:
      for ``|w| ~ 1``, alpha >= 1e-8 at D = 3, 1e-4 at D = 4, 3e-3 at D = 5, 1e-2 at D = 6;
      smaller alpha raises a ValueError (basis pursuit is then the answer to 8 digits).

    Checked (tests/test_diagonal_theory.py and the docs) for alpha from 1e-2 to 3 against the
    flow itself, and from 1e-60 (D = 2) or the limits above to 1e70 for convergence. The
    relative residual reaches ``tol`` (default 1e-12) except where rounding forbids it: then
    Newton stops at the rounding floor ``~ eps * max |z h_D'(z) / h_D(z)|`` (1e-13 at D = 2,
    up to ~1e-8 next to the boundary for D > 2) with status ``"converged"``, and the
    certificate's ``residual`` says what was reached.

    Parameters
    ----------
    problem : SparseRegressionProblem or tuple (X, y)
        ``X`` (n x d), ``y`` (n,) in the range of ``X``.
    init_scale : float
        ``alpha > 0``.
    depth : float
        ``D >= 2`` (real D allowed: the derivation holds for any D >= 2).
    tol : float
        Relative primal residual to reach, in (0, 1).
    max_iter : int
        Most Newton steps.

    Returns
    -------
    FitResult
        ``factors = [w[None, :]]``, ``settings["coef"] = w``, one record, status
        ``"converged"`` or ``"max_steps"``; ``settings["certificate"]``: ``multiplier``
        (``mu``, shape (n,)), ``z`` (``X^T mu``, shape (d,)), ``residual``
        (``||Xw - y|| / ||y||``), ``kkt_residual`` (the part of ``h_D^{-1}(w / alpha^D)``
        outside ``range(X^T)``, relative to its norm: stationarity recomputed from ``w``),
        ``potential`` (``Q_D(w)``), ``boundary_distance`` (``1 - max|z|``; D > 2),
        ``l1_norm``, ``l2_norm``.

    Raises
    ------
    ValueError
        ``init_scale <= 0``, ``depth < 2``, bad ``tol``/``max_iter``, ``y`` outside the range
        of ``X``, or ``alpha`` too small for float64 at this depth (see above).

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((5, 12)), rng.standard_normal(5)
    >>> result = diagonal_limit((X, y), init_scale=0.1, depth=3)
    >>> cert = result.settings["certificate"]
    >>> result.status, bool(cert["residual"] < 1e-11), bool(cert["kkt_residual"] < 1e-9)
    ('converged', True, True)
    """
    data = as_regression(problem)
    alpha, depth = _check_scale(init_scale), _check_depth(depth)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), e.g. 1e-12; got {tol!r}")
    if isinstance(max_iter, bool) or not (
        isinstance(max_iter, (int, np.integer)) and max_iter >= 1
    ):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    log_scale = depth * np.log(alpha)
    rows = RowSpace.of(data.X)
    reduced = rows.reduced_targets(data.y)
    size = float(np.max(np.abs(reduced), initial=0.0))
    if size > 0 and not (
        np.log(_TARGET_RANGE[0]) <= np.log(size) - log_scale <= np.log(_TARGET_RANGE[1])
    ):
        raise ValueError(
            f"init_scale = {alpha:g} at depth {depth:g} puts y / alpha^D at "
            f"{size:.1e} / {alpha:g}^{depth:g}, outside [{_TARGET_RANGE[0]:g}, "
            f"{_TARGET_RANGE[1]:g}] where float64 holds the potential. Choose alpha nearer "
            "|y|^(1/D), or rescale: the limit for (c y, c^(1/D) alpha) is c times the limit "
            "for (y, alpha)"
        )
    scale = float(np.exp(log_scale))
    if not (0 < scale < np.inf):
        raise ValueError(f"init_scale**depth = {alpha:g}**{depth:g} is outside float64")
    target = reduced / scale
    c, it, converged = _newton(rows.Vt, target, depth, tol, int(max_iter))
    z = rows.Vt.T @ c
    boundary = float(1.0 - np.max(np.abs(z))) if depth > 2 else np.inf
    if depth > 2 and boundary < MIN_BOUNDARY_DISTANCE:
        raise ValueError(
            f"init_scale = {alpha:g} is too small for depth {depth:g} in float64: the limit "
            f"needs |z| within {boundary:.1e} of 1 (w would lose more than 8 digits). Use "
            f"init_scale >= about (max|w| / {1 / MIN_BOUNDARY_DISTANCE:.0e})**(1/{depth:g}), "
            "or compare with basis_pursuit, its alpha -> 0 limit"
        )
    w = scale * link(z, depth)
    y_norm = float(np.linalg.norm(data.y))
    residual = float(np.linalg.norm(data.X @ w - data.y)) / max(y_norm, 1e-300)
    grad_q = link_inverse(w / scale, depth)
    outside = grad_q - rows.Vt.T @ (rows.Vt @ grad_q)
    kkt = float(np.linalg.norm(outside)) / max(float(np.linalg.norm(grad_q)), 1e-300)
    cert = {
        "multiplier": rows.multiplier(c),
        "z": z,
        "residual": residual,
        "kkt_residual": kkt,
        "potential": potential(w, alpha, depth),
        "boundary_distance": boundary,
        "l1_norm": float(np.sum(np.abs(w))),
        "l2_norm": float(np.linalg.norm(w)),
    }
    settings = {
        "solver": "diagonal_limit",
        "method": "dual-newton",
        "init_scale": alpha,
        "depth": depth,
        "tol": tol,
        "max_iter": int(max_iter),
        "iterations": it,
        "certificate": cert,
    }
    return pack(data, w, "converged" if converged else "max_steps", settings, it)


def _dual(vt, target, depth, c):
    """Scaled dual objective ``sum H_D(Vt^T c) - target^T c`` and ``z = Vt^T c`` (inf
    outside the domain)."""
    z = vt.T @ c
    if depth > 2 and np.max(np.abs(z), initial=0.0) >= 1.0:
        return np.inf, z
    with np.errstate(over="ignore"):
        val = float(np.sum(link_potential(z, depth)) - target @ c)
    return (val if np.isfinite(val) else np.inf), z


def _rounding_floor(z, depth) -> float:
    """The relative residual that rounding alone leaves: ``eps`` times the largest relative
    condition number ``|z h_D'(z) / h_D(z)|`` of ``w = alpha^D h_D(z)`` (``~|z|`` for D = 2,
    ``~p / (1 - |z|)`` for D > 2 near the boundary), times a small safety factor."""
    big = np.abs(z) > 1e-8
    if not np.any(big):
        return 16 * _EPS
    zb = z[big]
    cond = np.abs(zb * link_derivative(zb, depth) / link(zb, depth))
    return float(16 * _EPS * max(1.0, np.max(cond)))


def _first_step(z, dz, depth) -> float:
    """The first step length tried along ``dz``: 1, cut so that no ``|z_i|`` moves by more
    than ``_MAX_MOVE`` (D = 2: ``h_2`` grows like ``e^|z|``, and far from the optimum a full
    Newton step overflows it) or, for D > 2, so that ``z`` covers at most 99% of its distance
    to the boundary ``|z| = 1`` (the interior-point fraction-to-boundary rule)."""
    big = float(np.max(np.abs(dz), initial=0.0))
    if depth == 2:
        return min(1.0, _MAX_MOVE / big) if big > 0 else 1.0
    toward = dz != 0
    room = (1.0 - np.sign(dz[toward]) * z[toward]) / np.abs(dz[toward])
    return min(1.0, 0.99 * float(np.min(room, initial=np.inf)))


def _newton(vt, target, depth, tol, max_iter):
    """Damped Newton on the scaled dual; returns ``(c, iterations, converged)``. Stops at
    ``tol`` or, below ``tol``'s reach, once the residual is at the rounding floor and three
    steps in a row have not improved it."""
    r = vt.shape[0]
    c = np.zeros(r)
    t_norm = float(np.linalg.norm(target))
    if t_norm == 0.0:
        return c, 0, True
    f, z = _dual(vt, target, depth, c)
    best, stale = np.inf, 0
    for it in range(max_iter + 1):
        hz = link(z, depth)
        grad = vt @ hz - target
        g_rel = float(np.linalg.norm(grad)) / t_norm
        if g_rel <= tol:
            return c, it, True
        stale = stale + 1 if g_rel >= best else 0
        best = min(best, g_rel)
        if stale >= 3 and best <= _rounding_floor(z, depth):
            return c, it, True
        if it == max_iter:
            break
        hess = (vt * link_derivative(z, depth)) @ vt.T
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
        slope = float(grad @ step)
        # rounding allowance of the objective: near the optimum the decrease is below it
        noise = (
            64
            * _EPS
            * (float(np.sum(np.abs(link_potential(z, depth)))) + abs(float(target @ c)) + 1e-300)
        )
        t = _first_step(z, vt.T @ step, depth)
        for _ in range(80):
            f_new, z_new = _dual(vt, target, depth, c + t * step)
            if f_new <= f + _ARMIJO * t * slope + noise:
                break
            t *= 0.5
        else:
            break  # no step decreases the objective: at rounding level
        c, f, z = c + t * step, f_new, z_new
    return c, it, best <= _rounding_floor(z, depth)
