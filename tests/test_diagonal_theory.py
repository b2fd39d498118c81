"""The oracles of deep diagonal networks against independent values: closed forms against
numerical Legendre transforms and direct formulas, the limit against its KKT conditions, random
feasible competitors, basis pursuit, the minimum-l2 interpolant, and the gradient flow itself
integrated by SciPy."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import minimize_scalar

from fastdmf.baselines.basis_pursuit import basis_pursuit, min_norm_interpolant
from fastdmf.diagonal_theory import (
    diagonal_limit,
    link,
    link_derivative,
    link_inverse,
    link_potential,
    potential,
    unit_potential,
)

DEPTHS = [2, 3, 4]


def naive_link(z, depth):
    """h_D straight from its definition."""
    if depth == 2:
        return np.exp(z) - np.exp(-z)
    p = depth / (depth - 2)
    return (1 - z) ** -p - (1 + z) ** -p


def naive_link_potential(z, depth):
    """H_D straight from its definition."""
    if depth == 2:
        return 2 * np.cosh(z) - 2
    a = 2 / (depth - 2)
    return (depth - 2) / 2 * ((1 - z) ** -a + (1 + z) ** -a) - (depth - 2)


def woodworth_q(z):
    """q of Woodworth et al. 2020, Theorem 1, as printed."""
    return 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)


def sparse_instance(seed=0, n=40, d=100, k=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    truth = np.zeros(d)
    truth[rng.choice(d, k, replace=False)] = rng.choice([-1, 1], k) * (1 + rng.random(k))
    return X, X @ truth, truth


def small_instance(seed=7, n=5, d=12):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    truth = np.zeros(d)
    truth[[1, 6]] = [1.0, -0.7]
    return X, X @ truth + 0.1 * rng.standard_normal(n)


# --- the link h_D, its integral H_D, its inverse, and q_D --------------------------------


@pytest.mark.parametrize("depth", [*DEPTHS, 5.5])
def test_link_functions_match_their_definitions(depth):
    z = np.linspace(-0.95, 0.95, 21) if depth > 2 else np.linspace(-8, 8, 21)
    np.testing.assert_allclose(link(z, depth), naive_link(z, depth), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        link_potential(z, depth), naive_link_potential(z, depth), rtol=1e-11, atol=1e-14
    )
    h = 1e-6
    fd_link = (naive_link(z + h, depth) - naive_link(z - h, depth)) / (2 * h)
    np.testing.assert_allclose(link_derivative(z, depth), fd_link, rtol=1e-7)
    fd_pot = (naive_link_potential(z + h, depth) - naive_link_potential(z - h, depth)) / (2 * h)
    np.testing.assert_allclose(link(z, depth), fd_pot, rtol=1e-7, atol=1e-8)
    x = naive_link(z, depth)
    np.testing.assert_allclose(link_inverse(x, depth), z, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("depth", DEPTHS)
def test_link_keeps_relative_accuracy_near_zero(depth):
    """Large alpha means tiny z: h_D and H_D must not cancel there (their series:
    h_D = 2p z + O(z^3), H_D = p z^2 + O(z^4), p = 1 for D = 2)."""
    p = 1.0 if depth == 2 else depth / (depth - 2)
    z = np.array([1e-300, -1e-200, 1e-12, -3e-9])
    np.testing.assert_allclose(link(z, depth), 2 * p * z, rtol=1e-14)
    np.testing.assert_allclose(link_potential(z[2:], depth), p * z[2:] ** 2, rtol=1e-14)
    np.testing.assert_allclose(link_inverse(2 * p * z, depth), z, rtol=1e-14)


@pytest.mark.parametrize("depth", [*DEPTHS, 5.5])
def test_unit_potential_is_the_numerical_legendre_transform(depth):
    """q_D(x) = sup_z (x z - H_D(z)), maximised numerically over z with the naive H_D."""
    xs = np.array([-40.0, -3.0, -0.2, 0.0, 1e-3, 0.7, 5.0, 200.0])
    lo, hi = (-12.0, 12.0) if depth == 2 else (-1 + 1e-9, 1 - 1e-9)
    expected = []
    for x in xs:
        res = minimize_scalar(
            lambda z, x=x: naive_link_potential(z, depth) - x * z,
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-13, "maxiter": 2000},
        )
        expected.append(-res.fun)
    np.testing.assert_allclose(unit_potential(xs, depth), expected, rtol=1e-9, atol=1e-14)


def test_depth2_potential_is_woodworths_q():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(30) * np.logspace(-6, 2, 30)
    for alpha in (1e-2, 0.3, 1.0, 3.0):
        expected = alpha**2 * np.sum(woodworth_q(w / alpha**2))
        assert potential(w, alpha, 2) == pytest.approx(expected, rel=1e-12)
    x = np.linspace(-50, 50, 101)
    np.testing.assert_allclose(unit_potential(x, 2), woodworth_q(x), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("depth", DEPTHS)
def test_potential_is_quadratic_for_large_alpha(depth):
    """Q_D(w) -> ||w||^2 / (2 h_D'(0) alpha^D), h_D'(0) = 2p: the kernel regime."""
    w = np.random.default_rng(2).standard_normal(10)
    p = 1.0 if depth == 2 else depth / (depth - 2)
    alpha = 1e3
    assert potential(w, alpha, depth) == pytest.approx(w @ w / (4 * p * alpha**depth), rel=1e-8)


# --- the limit ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("alpha", [1e-2, 0.1, 1.0, 3.0])
def test_limit_satisfies_kkt_and_beats_feasible_competitors(depth, alpha):
    X, y = small_instance()
    result = diagonal_limit((X, y), alpha, depth)
    cert = result.settings["certificate"]
    w = result.settings["coef"]
    assert result.status == "converged"
    assert np.linalg.norm(X @ w - y) <= 1e-10 * np.linalg.norm(y)
    # stationarity from the multiplier, with the naive link: w = alpha^D h_D(X^T mu)
    np.testing.assert_allclose(
        w,
        alpha**depth * naive_link(X.T @ cert["multiplier"], depth),
        rtol=1e-9,
        atol=1e-12 * np.abs(w).max(),
    )
    assert cert["kkt_residual"] < 1e-9
    np.testing.assert_allclose(result.matrix().ravel(), w)
    # every other interpolant has a larger Q_D (strict convexity): w + null-space directions
    _, _, vt = np.linalg.svd(X)
    null = vt[X.shape[0] :].T
    q_best = potential(w, alpha, depth)
    assert cert["potential"] == pytest.approx(q_best, rel=1e-12)
    rng = np.random.default_rng(3)
    for size in (1e-4, 1e-2, 1.0):
        for _ in range(20):
            other = w + null @ rng.standard_normal(null.shape[1]) * size * np.abs(w).max()
            assert potential(other, alpha, depth) > q_best


@pytest.mark.parametrize(("depth", "alpha"), [(2, 1e-3), (3, 1e-2), (4, 1e-2)])
def test_small_alpha_approaches_basis_pursuit(depth, alpha):
    X, y, truth = sparse_instance()
    bp = basis_pursuit((X, y))
    np.testing.assert_allclose(bp.settings["coef"], truth, atol=1e-10)  # exact recovery
    cert = diagonal_limit((X, y), alpha, depth).settings["certificate"]
    l1_bp = bp.settings["certificate"]["l1_norm"]
    assert abs(cert["l1_norm"] - l1_bp) <= 1e-3 * l1_bp


@pytest.mark.parametrize("depth", DEPTHS)
def test_large_alpha_approaches_the_minimum_l2_interpolant(depth):
    X, y, _ = sparse_instance(seed=4)
    w_l2 = np.linalg.pinv(X) @ y
    for alpha, rtol in ((10.0, 1e-2), (100.0, 1e-6)):
        w = diagonal_limit((X, y), alpha, depth).settings["coef"]
        assert np.linalg.norm(w - w_l2) <= rtol * np.linalg.norm(w_l2)


@pytest.mark.parametrize(
    ("depth", "alpha"), [(2, 1e-20), (2, 1e-60), (2, 1e70), (3, 1e-6), (3, 1e40), (5, 3e-3)]
)
def test_limit_at_extreme_scales(depth, alpha):
    """Far outside the flow's reach: still an interpolant of the KKT form, and the scaling
    law (c y, c^(1/D) alpha) -> c w holds."""
    X, y = small_instance()
    cert = diagonal_limit((X, y), alpha, depth).settings["certificate"]
    assert cert["residual"] < 1e-7
    assert cert["kkt_residual"] < 1e-12
    c = 7.0
    w = diagonal_limit((X, y), alpha, depth).settings["coef"]
    w_c = diagonal_limit((X, c * y), c ** (1 / depth) * alpha, depth).settings["coef"]
    np.testing.assert_allclose(w_c, c * w, rtol=1e-6, atol=1e-9 * np.abs(w).max())


def test_limit_handles_dependent_samples_and_zero_targets():
    X, y = small_instance()
    X2, y2 = np.vstack([X, X[:2] + X[2:4]]), np.concatenate([y, y[:2] + y[2:4]])
    w = diagonal_limit((X, y), 0.1, 3).settings["coef"]
    w2 = diagonal_limit((X2, y2), 0.1, 3).settings["coef"]
    np.testing.assert_allclose(w2, w, rtol=1e-10, atol=1e-13)
    assert not np.any(diagonal_limit((X, np.zeros(5)), 0.1, 2).settings["coef"])


# --- the gradient flow itself, integrated independently ---------------------------------


def integrate_flow(X, y, alpha, depth, t_end):
    """Gradient flow on (u, v) for L = (1/n)||X (u^D - v^D) - y||^2, from u = v = alpha,
    by Radau with the exact Jacobian."""
    n, d = X.shape
    gram, xty = 2.0 / n * X.T @ X, 2.0 / n * X.T @ y
    D = depth

    def rhs(t, s):
        u, v = s[:d], s[d:]
        g = gram @ (u**D - v**D) - xty
        return np.concatenate([-D * u ** (D - 1) * g, D * v ** (D - 1) * g])

    def jac(t, s):
        u, v = s[:d], s[d:]
        g = gram @ (u**D - v**D) - xty
        du, dv = D * u ** (D - 1), D * v ** (D - 1)
        return np.block(
            [
                [
                    -np.diag(D * (D - 1) * u ** (D - 2) * g) - du[:, None] * gram * du,
                    du[:, None] * gram * dv,
                ],
                [
                    dv[:, None] * gram * du,
                    np.diag(D * (D - 1) * v ** (D - 2) * g) - dv[:, None] * gram * dv,
                ],
            ]
        )

    sol = solve_ivp(
        rhs,
        (0.0, t_end),
        np.full(2 * d, alpha),
        method="Radau",
        jac=jac,
        rtol=1e-9,
        atol=1e-14 * alpha,
    )
    assert sol.success, sol.message
    u, v = sol.y[:d, -1], sol.y[d:, -1]
    return u**D - v**D


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("alpha", [1e-2, 0.1, 1.0, 3.0])
def test_gradient_flow_converges_to_the_limit(depth, alpha):
    X, y = small_instance(seed=10 + depth)
    # small alpha leaves the saddle at 0 after a time ~ alpha^-(D-2): integrate past it
    t_end = 1e3 * (alpha ** -(depth - 2) if depth > 2 else 1.0)
    w_flow = integrate_flow(X, y, alpha, depth, t_end)
    assert np.linalg.norm(X @ w_flow - y) <= 1e-7 * np.linalg.norm(y)  # converged
    w = diagonal_limit((X, y), alpha, depth).settings["coef"]
    # the target is 1e-4; the flow meets the limit to 1e-9 or better (Radau at rtol 1e-9),
    # and 2e-8 still tells depth D from depth D + 0.1 at every alpha here
    assert np.linalg.norm(w_flow - w) <= 2e-8 * np.linalg.norm(w)


# --- basis pursuit and the minimum-l2 interpolant ---------------------------------------


@pytest.mark.parametrize("sparse", [True, False])
def test_basis_pursuit_certificate(sparse):
    if sparse:
        X, y, _ = sparse_instance(seed=5)
    else:
        rng = np.random.default_rng(6)
        X, y = rng.standard_normal((20, 50)), rng.standard_normal(20)
    result = basis_pursuit((X, y))
    w, cert = result.settings["coef"], result.settings["certificate"]
    lam = cert["multiplier"]
    assert result.status == "converged"
    assert np.linalg.norm(X @ w - y) <= 1e-10 * np.linalg.norm(y)  # primal feasible
    assert np.max(np.abs(X.T @ lam)) <= 1 + 1e-10  # dual feasible
    assert abs(np.abs(w).sum() - y @ lam) <= 1e-10 * np.abs(w).sum()  # no gap
    assert cert["l1_norm"] == pytest.approx(np.abs(w).sum(), rel=1e-14)
    assert cert["dual_norm"] == pytest.approx(np.max(np.abs(X.T @ lam)), rel=1e-14)
    np.testing.assert_allclose(result.matrix().ravel(), w)


def test_basis_pursuit_agrees_with_cvxpy():
    cp = pytest.importorskip("cvxpy")
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((15, 40)), rng.standard_normal(15)
    var = cp.Variable(40)
    prob = cp.Problem(cp.Minimize(cp.norm1(var)), [X @ var == y])
    prob.solve(solver=cp.CLARABEL)
    cert = basis_pursuit((X, y)).settings["certificate"]
    assert cert["l1_norm"] == pytest.approx(prob.value, rel=1e-6)


def test_min_norm_interpolant_is_the_pseudo_inverse_solution():
    rng = np.random.default_rng(9)
    X, y = rng.standard_normal((8, 20)), rng.standard_normal(8)
    result = min_norm_interpolant((X, y))
    w = result.settings["coef"]
    np.testing.assert_allclose(w, np.linalg.pinv(X) @ y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(X.T @ result.settings["multiplier"], w, atol=1e-13)
    assert result.settings["residual"] < 1e-13


class Problem:
    """Anything with .X and .y (and .ground_truth) is a problem."""

    def __init__(self, X, y, truth=None):
        self.X, self.y, self.ground_truth = X, y, truth


def test_problem_objects_and_test_error():
    X, y, truth = sparse_instance(seed=5)
    result = basis_pursuit(Problem(X, y, truth))
    assert result.trajectory.test_error[-1] < 1e-20
    assert result.trajectory.train_loss[-1] == pytest.approx(
        np.mean((X @ result.settings["coef"] - y) ** 2), abs=1e-30
    )


# --- bad input ---------------------------------------------------------------------------


def test_clear_errors():
    X, y = small_instance()
    rng = np.random.default_rng(0)
    tall_X, noisy_y = rng.standard_normal((30, 10)), rng.standard_normal(30)
    for solver in (basis_pursuit, min_norm_interpolant, lambda p: diagonal_limit(p, 0.1, 3)):
        with pytest.raises(ValueError, match="outside the range of X"):
            solver((tall_X, noisy_y))
        with pytest.raises(ValueError, match="rows .* but y has"):
            solver((X, y[:3]))
        with pytest.raises(ValueError, match="finite"):
            solver((X, np.where(np.arange(5) == 2, np.nan, y)))
        with pytest.raises(TypeError, match=r"\(X, y\)"):
            solver([X, y])
    for alpha in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="init_scale"):
            diagonal_limit((X, y), alpha, 2)
    with pytest.raises(ValueError, match="depth must be >= 2"):
        diagonal_limit((X, y), 0.1, 1)
    with pytest.raises(ValueError, match=r"outside \[1e-150, 1e\+150\]"):
        diagonal_limit((X, y), 1e-80, 2)
    with pytest.raises(ValueError, match=r"outside \[1e-150, 1e\+150\]"):
        diagonal_limit((X, y), 1e60, 3)
    with pytest.raises(ValueError, match="too small for depth 4"):
        diagonal_limit((X, 1e3 * y), 1e-4, 4)
    with pytest.raises(ValueError, match="init_scale"):
        potential(np.ones(3), 0.0)
