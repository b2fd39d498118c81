"""The gradient-flow theory (fastdmf.theory) against independent computations: SciPy's matrix
power, the literal sum of Arora, Cohen & Hazan (2018, Theorem 1), the velocity of the product
under factorized gradient flow (reference gradients), and an integration of the factors."""

import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

import fastdmf
from fastdmf import reference, theory
from fastdmf.factors import FactorLayout, end_to_end, initialize

POWERS = [0.0, 1 / 3, 1 / 2, 1.0]


@pytest.fixture(scope="module")
def small():
    """The 7 x 5 rank-2 problem with 20 observed entries."""
    return fastdmf.synthetic_completion(shape=(7, 5), rank=2, n_observed=20, seed=0)


def balanced_product(shape, depth, scale, seed):
    layout = FactorLayout.build(shape, depth)
    factors = initialize(layout, "balanced", scale, np.random.default_rng(seed))
    return layout, factors


def factorized_velocity(factors, problem):
    """d/dt (W_N ... W_1) under gradient flow on the factors:
    sum_j (W_N ... W_{j+1}) (-dL/dW_j) (W_{j-1} ... W_1)."""
    _, grads = reference.loss_and_grad(factors, problem.rows, problem.cols, problem.values)
    m, n = problem.shape
    vel = np.zeros((m, n))
    for j, g in enumerate(grads):
        left = end_to_end(factors[j + 1 :]) if j + 1 < len(factors) else np.eye(m)
        right = end_to_end(factors[:j]) if j > 0 else np.eye(n)
        vel -= left @ g @ right
    return vel


def literal_rhs(w, g, depth):
    """The paper's sum, term by term, with powers from psd_power (eigh of W W^T and W^T W)."""
    wwt, wtw = w @ w.T, w.T @ w
    return -sum(
        theory.psd_power(wwt, (j - 1) / depth) @ g @ theory.psd_power(wtw, (depth - j) / depth)
        for j in range(1, depth + 1)
    )


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# --------------------------------------------------------------------------- psd_power


@pytest.mark.parametrize("p", POWERS)
def test_psd_power_equals_scipy_on_full_rank(p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 9))
    a = x @ x.T
    want = np.eye(6) if p == 0 else np.real(scipy.linalg.fractional_matrix_power(a, p))
    np.testing.assert_allclose(
        theory.psd_power(a, p), want, rtol=0, atol=1e-12 * np.abs(want).max()
    )


@pytest.mark.parametrize("p", POWERS)
def test_psd_power_of_rank_deficient_matrix(p):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    lam = np.array([3.0, 1.5, 0.2, 0.0, 0.0, 0.0])
    a = (q * lam) @ q.T
    want = (q * np.power(lam, p)) @ q.T  # 0^0 = 1: p = 0 gives the identity
    got = theory.psd_power(a, p)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    if p == 0:
        np.testing.assert_allclose(got, np.eye(6), rtol=0, atol=1e-12)


def test_psd_power_zero_matrix_and_square_root():
    np.testing.assert_array_equal(theory.psd_power(np.zeros((3, 3)), 0.0), np.eye(3))
    np.testing.assert_array_equal(theory.psd_power(np.zeros((3, 3)), 0.5), np.zeros((3, 3)))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3))  # rank 3 of 5
    a = x @ x.T
    root = theory.psd_power(a, 0.5)
    np.testing.assert_allclose(root @ root, a, rtol=0, atol=1e-12 * np.abs(a).max())


def test_psd_power_rejects_bad_input():
    with pytest.raises(ValueError, match="symmetric"):
        theory.psd_power(np.array([[1.0, 2.0], [0.0, 1.0]]), 0.5)
    with pytest.raises(ValueError, match="positive semidefinite"):
        theory.psd_power(np.diag([1.0, -0.5]), 0.5)
    with pytest.raises(ValueError, match="p >= 0"):
        theory.psd_power(np.eye(2), -0.5)


# --------------------------------------------------------------------------- the vector field


def test_completion_grad_equals_reference(small):
    w = np.random.default_rng(3).standard_normal(small.shape)
    _, (want,) = reference.loss_and_grad([w], small.rows, small.cols, small.values)
    np.testing.assert_allclose(theory.completion_grad(w, small), want, rtol=1e-15, atol=0)


def test_depth_one_is_plain_gradient_flow(small):
    w = np.random.default_rng(4).standard_normal(small.shape)
    g = theory.completion_grad(w, small)
    np.testing.assert_allclose(theory.end_to_end_rhs(w, g, 1), -g, rtol=0, atol=1e-14)


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
def test_end_to_end_equals_factorized_velocity_when_balanced(small, depth, scale):
    _, factors = balanced_product(small.shape, depth, scale, seed=depth)
    w = end_to_end(factors)
    got = theory.end_to_end_rhs(w, theory.completion_grad(w, small), depth)
    assert rel(got, factorized_velocity(factors, small)) < 1e-10


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
@pytest.mark.parametrize("depth", [1, 2, 3, 5])
@pytest.mark.parametrize("rank", [None, 2])
def test_end_to_end_equals_literal_sum(shape, depth, rank):
    """Any W, balanced or not (the field is a function of W), full rank or not."""
    rng = np.random.default_rng(depth)
    k = min(shape) if rank is None else rank
    w = rng.standard_normal((shape[0], k)) @ rng.standard_normal((k, shape[1]))
    g = rng.standard_normal(shape)
    assert rel(theory.end_to_end_rhs(w, g, depth), literal_rhs(w, g, depth)) < 1e-10


def test_unbalanced_factors_do_not_follow_the_end_to_end_field(small):
    """The balance condition matters: generic factors move W differently."""
    rng = np.random.default_rng(5)
    layout = FactorLayout.build(small.shape, 3)
    factors = initialize(layout, "gaussian", 1.0, rng)
    w = end_to_end(factors)
    got = theory.end_to_end_rhs(w, theory.completion_grad(w, small), 3)
    assert rel(got, factorized_velocity(factors, small)) > 1e-2


def test_depth_must_be_a_real_number_at_least_one(small):
    w = np.ones(small.shape)
    for bad in (0, 0.5, float("nan"), True, "3"):
        with pytest.raises(ValueError, match="real number N >= 1"):
            theory.end_to_end_rhs(w, w, bad)


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
def test_real_depth_kernel_agrees_with_the_sum(shape):
    """The closed form used for real N equals the integer-N sum (evaluated just off the
    integer, and exactly through the private helper at the integer), and varies smoothly."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal(shape)
    w[:, -1] = w[:, 0]  # rank deficient: zero singular values take the 0^0 path
    g = rng.standard_normal(shape)
    for n in (2, 3, 5):
        exact = theory.end_to_end_rhs(w, g, n)
        near = theory.end_to_end_rhs(w, g, n + 1e-9)
        assert rel(near, exact) < 1e-7
    a, b, c = (theory.end_to_end_rhs(w, g, x) for x in (2.4, 2.5, 2.6))
    assert rel(b, (a + c) / 2) < 1e-2
    x = np.array([0.0, 0.5, 2.0, 2.0, 0.0])
    y = np.array([0.0, 2.0, 0.5, 2.0, 3.0])
    for n in (2, 3, 4):
        want = np.where(x == y, n * x ** (n - 1), (x**n - y**n) / np.where(x == y, 1, x - y))
        np.testing.assert_allclose(theory._divided_power(x, y, n), want, rtol=1e-12)


# --------------------------------------------------------------------------- singular values


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_singular_value_rates_are_projections_of_the_field(depth):
    rng = np.random.default_rng(6)
    w, g = rng.standard_normal((7, 5)), rng.standard_normal((7, 5))
    sigma, rates = theory.singular_value_rates(w, g, depth)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(sigma, s, rtol=1e-14)
    proj = np.diag(u.T @ theory.end_to_end_rhs(w, g, depth) @ vt.T)  # u_r^T (dW/dt) v_r
    np.testing.assert_allclose(rates, proj, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_singular_value_rates_match_finite_differences(small, depth):
    """Theorem 3 of Arora et al. 2019 along an integrated trajectory: predicted rates against
    central differences of the recorded singular values (error O(h^2) = a few 1e-6 here)."""
    layout = FactorLayout.build(small.shape, depth)
    w0 = end_to_end(initialize(layout, "balanced", 0.3, np.random.default_rng(1)))
    times = np.linspace(0.0, 1.0, 401)
    ws, _ = theory.integrate_end_to_end(small, w0, depth, times, rtol=1e-12, atol=1e-14)
    measured = theory.measured_singular_value_rates(times, np.linalg.svd(ws, compute_uv=False))
    for k in range(1, len(times) - 1):
        sigma, rates = theory.singular_value_rates(
            ws[k], theory.completion_grad(ws[k], small), depth
        )
        big = sigma > 1e-3 * sigma[0]
        assert big.sum() == 5
        err = np.abs(measured[k] - rates)[big]
        assert err.max() <= 1e-4 * np.abs(rates[big]).max()


def test_measured_rates_are_exact_for_quadratics():
    times = np.array([0.0, 0.1, 0.25, 0.3, 0.7])  # non-uniform grid
    svals = np.stack([1 + 2 * times + 3 * times**2, 5 - times**2], axis=1)
    want = np.stack([2 + 6 * times, -2 * times], axis=1)
    np.testing.assert_allclose(
        theory.measured_singular_value_rates(times, svals), want, rtol=1e-12, atol=1e-12
    )


# --------------------------------------------------------------------------- integration


def test_depth_one_integration_matches_closed_form(small):
    """Depth 1 is linear: observed entries relax as y + (w0 - y) exp(-2 t / |Omega|), the
    others stay put."""
    w0 = np.random.default_rng(7).standard_normal(small.shape)
    times = np.array([0.0, 1.0, 5.0, 20.0])
    ws, nfev = theory.integrate_end_to_end(small, w0, 1, times, rtol=1e-10, atol=1e-13)
    assert nfev > 0
    rate = np.exp(-2.0 * times / small.n_observed)
    want = np.broadcast_to(w0, ws.shape).copy()
    r, c, y = small.rows, small.cols, small.values
    want[:, r, c] = y + (w0[r, c] - y) * rate[:, None]
    np.testing.assert_allclose(ws, want, rtol=0, atol=1e-9)


def test_end_to_end_integration_follows_the_factorized_flow():
    """Depth without factors: the m x n ODE reproduces W(t) of gradient flow on the three
    factors from a balanced init, while ||W|| grows ~50x and two singular values jump."""
    problem = fastdmf.synthetic_completion(shape=(6, 6), rank=2, n_observed=20, seed=1)
    layout, factors0 = balanced_product(problem.shape, 3, 0.05, seed=0)
    times = np.array([0.0, 5.0, 10.0, 20.0, 40.0, 80.0])
    ws, nfev = theory.integrate_end_to_end(
        problem, end_to_end(factors0), 3, times, rtol=1e-10, atol=1e-12
    )

    def factor_field(_t, theta):
        _, grads = reference.loss_and_grad(
            layout.unpack(theta), problem.rows, problem.cols, problem.values
        )
        return -layout.pack(grads)

    sol = solve_ivp(
        factor_field,
        (0.0, times[-1]),
        layout.pack(factors0),
        method="DOP853",
        t_eval=times,
        rtol=1e-10,
        atol=1e-12,
    )
    assert sol.success and nfev > 0
    np.testing.assert_array_equal(ws[0], end_to_end(factors0))
    for k in range(len(times)):
        w_fact = end_to_end(layout.unpack(sol.y[:, k].copy()))
        assert rel(ws[k], w_fact) < 1e-6, times[k]
    assert np.linalg.norm(ws[-1]) > 40 * np.linalg.norm(ws[0])
    sv = np.linalg.svd(ws[-1], compute_uv=False)
    assert sv[1] > 10 * sv[2]  # the rank-2 structure has been picked up


def test_integration_at_time_zero_only_and_bad_times(small):
    w0 = np.ones(small.shape)
    ws, nfev = theory.integrate_end_to_end(small, w0, 2, [0.0, 0.0])
    assert nfev == 0 and ws.shape == (2, *small.shape)
    np.testing.assert_array_equal(ws[1], w0)
    with pytest.raises(ValueError, match="non-decreasing"):
        theory.integrate_end_to_end(small, w0, 2, [1.0, 0.5])


def test_integration_at_repeated_times(small):
    """Repeated times (allowed: non-decreasing) give identical rows, the same numbers as the
    distinct times alone."""
    w0 = np.random.default_rng(3).standard_normal(small.shape)
    ws, nfev = theory.integrate_end_to_end(small, w0, 2, [0.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    once, nfev_once = theory.integrate_end_to_end(small, w0, 2, [0.0, 1.0, 2.0])
    assert ws.shape == (6, *small.shape) and nfev == nfev_once > 0
    np.testing.assert_array_equal(ws[0], w0)
    for k, j in enumerate([0, 1, 1, 2, 2, 2]):
        np.testing.assert_array_equal(ws[k], once[j])
    assert not np.array_equal(ws[1], ws[3])
