"""Norm-minimisation baselines, checked by their optimality conditions.

The nuclear-norm solution is proven optimal (to tolerance) by its dual certificate: for
W = U S V^T feasible and Y = A^*(lam) with Y = U V^T + R, U^T R = 0, R V = 0, ||R||_op <= 1,
weak duality gives ||W'||_* >= <Y, W'> / ||Y||_op = <y, lam> / ||Y||_op for every feasible W',
so <y, lam> ~= ||W||_* means W is a minimiser. The tests recompute every quantity from the
returned matrix and multiplier.
"""

import numpy as np
import pytest

import fastdmf
from fastdmf import baselines
from fastdmf.trajectory import SCALARS, measure


def operator(problem):
    """``(A as a (p, m n) matrix, y)`` for either problem kind, built independently."""
    m, n = problem.shape
    if isinstance(problem, fastdmf.SensingProblem):
        return problem.A.reshape(problem.n_observed, m * n), problem.y
    mat = np.zeros((problem.n_observed, m * n))
    mat[np.arange(problem.n_observed), problem.rows * n + problem.cols] = 1.0
    return mat, problem.values


def assert_certified(problem, result, feas=1e-6, gap_tol=1e-5):
    """Primal feasibility, the subgradient structure of Y and the duality gap."""
    mat, y = operator(problem)
    w = result.matrix()
    lam = result.settings["certificate"]["multiplier"]
    assert np.linalg.norm(mat @ w.ravel() - y) <= feas * np.linalg.norm(y)
    u, s, vt = np.linalg.svd(w)
    r = int(np.sum(s > 1e-9 * s[0]))
    u, v = u[:, :r], vt[:r].T
    ymat = (mat.T @ lam).reshape(w.shape)
    rest = ymat - u @ v.T
    assert np.linalg.norm(u.T @ rest, 2) <= 1e-5
    assert np.linalg.norm(rest @ v, 2) <= 1e-5
    dual_norm = np.linalg.norm(ymat, 2)
    assert np.linalg.norm(rest, 2) <= 1 + 1e-5
    assert dual_norm <= 1 + 1e-5
    nuc = s.sum()
    assert abs(lam @ y - nuc) / nuc <= gap_tol
    lower = lam @ y / max(1.0, dual_norm)  # weak duality: a bound on the optimum
    assert (nuc - lower) / nuc <= 2 * gap_tol
    return nuc, lower


@pytest.fixture(scope="module")
def small():
    """30 x 30, rank 3, too few entries for exact recovery: a nuclear-norm solution of
    higher rank than the truth, so the certificate is not trivial."""
    return fastdmf.synthetic_completion(shape=(30, 30), rank=3, n_observed=250, seed=4)


@pytest.fixture(scope="module")
def small_sensing():
    return fastdmf.synthetic_sensing(shape=(12, 10), rank=2, n_measurements=70, seed=2)


# ----------------------------------------------------------------------- nuclear norm


def test_nuclear_certificate_completion(small):
    result = baselines.nuclear_norm(small)
    assert result.status == "converged"
    assert result.factors[0].shape == small.shape and len(result.factors) == 1
    nuc, _ = assert_certified(small, result)
    cert = result.settings["certificate"]
    assert cert["nuclear_norm"] == pytest.approx(nuc, rel=1e-10)
    assert result.settings["solver"] == "nuclear_norm"


def test_nuclear_certificate_tall(tall):
    """Non-square, rows and columns without observations, full-rank data."""
    result = baselines.nuclear_norm(tall)
    assert result.status == "converged"
    assert_certified(tall, result)


def test_nuclear_certificate_sensing(small_sensing):
    result = baselines.nuclear_norm(small_sensing)
    assert result.status == "converged"
    assert_certified(small_sensing, result)


def test_nuclear_paper_problem(paper):
    """The paper's 100 x 100, rank 5, 2000 entries: no exact recovery, certified optimum."""
    result = baselines.nuclear_norm(paper)
    assert result.status == "converged"
    assert_certified(paper, result)
    w = result.matrix()
    err = np.sum((w - paper.ground_truth) ** 2) / np.sum(paper.ground_truth**2)
    assert err == pytest.approx(result.trajectory.test_error[-1], rel=1e-9)
    assert 1e-3 < err < 0.5  # far from recovery, far better than depth 1 (~0.8)


def test_nuclear_recovers_with_enough_entries():
    problem = fastdmf.synthetic_completion(shape=(30, 30), rank=2, n_observed=700, seed=1)
    w = baselines.nuclear_norm(problem).matrix()
    err = np.sum((w - problem.ground_truth) ** 2) / np.sum(problem.ground_truth**2)
    assert err < 1e-10


def test_nuclear_trajectory_matches_measure(small):
    """The records carry the fields of fit's trajectory, with the same values measure()
    gives for the returned matrix."""
    result = baselines.nuclear_norm(small, record=5)
    traj = result.trajectory
    assert len(traj) >= 3 and np.all(np.diff(traj.step) > 0)
    assert traj.step[-1] == result.n_steps
    w = result.matrix()
    mat, y = operator(small)
    resid = mat @ w.ravel() - y
    grad = (2.0 / len(y) * mat.T @ resid).reshape(w.shape)
    ref = measure(
        [w],
        [grad],
        float(resid @ resid / len(y)),
        result.n_steps,
        result.n_steps,
        traj.n_evals[-1],
        small,
        None,
        None,
    )
    last = traj.last()
    assert set(last) == set(ref)
    for name in SCALARS:
        assert last[name] == pytest.approx(ref[name], rel=1e-7, abs=1e-12, nan_ok=True), name
    assert np.isnan(last["val_error"])  # a baseline has no validation entries
    np.testing.assert_allclose(last["singular_values"], ref["singular_values"], atol=1e-9)


def test_nuclear_matches_cvxpy(square):
    cp = pytest.importorskip("cvxpy")
    m, n = square.shape
    x = cp.Variable((m, n))
    cons = [x[square.rows[k], square.cols[k]] == square.values[k] for k in range(square.n_observed)]
    solver = cp.CLARABEL if "CLARABEL" in cp.installed_solvers() else cp.SCS
    best = cp.Problem(cp.Minimize(cp.normNuc(x)), cons).solve(solver=solver)
    result = baselines.nuclear_norm(square)
    nuc, lower = assert_certified(square, result)
    assert nuc == pytest.approx(best, rel=1e-5)
    assert lower <= best * (1 + 1e-6)  # the certified bound never exceeds a solver's value


def test_nuclear_max_iter_and_zero_data(small):
    result = baselines.nuclear_norm(small, max_iter=3)
    assert result.status == "max_steps" and result.n_steps == 3
    assert "certificate" in result.settings
    zero = fastdmf.completion([0, 1], [1, 0], [0.0, 0.0], shape=(3, 3))
    result = baselines.nuclear_norm(zero)
    assert result.status == "converged" and not result.matrix().any()
    for solve in (baselines.schatten_p, baselines.min_frobenius):
        result = solve(zero)
        assert result.status == "converged" and result.n_steps == 0
        assert not result.matrix().any()


def test_nuclear_without_acceleration(square):
    result = baselines.nuclear_norm(square, memory=0, tau=1.0)
    assert result.status == "converged"
    assert_certified(square, result)


def reference_svt(a, tau):
    """``SVT_tau(a)`` and its singular values, from NumPy's full SVD."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    k = int(np.sum(s > tau))
    return (u[:, :k] * (s[:k] - tau)) @ vt[:k], s[:k] - tau


def spectrum_matrix(rng, m, n, values):
    u = np.linalg.qr(rng.standard_normal((m, len(values))))[0]
    v = np.linalg.qr(rng.standard_normal((n, len(values))))[0]
    return (u * values) @ v.T


def test_subspace_svt_matches_full_svd():
    """The warm-started subspace step equals the full-SVD threshold when its block spans the
    top singular vectors, and converges to it from a perturbed block."""
    from fastdmf.baselines._svt import Thresholder

    rng = np.random.default_rng(0)
    a = spectrum_matrix(rng, 50, 40, np.r_[np.linspace(9.0, 3.0, 5), np.linspace(1.5, 0.1, 35)])
    ref, ref_s = reference_svt(a, 2.0)
    thr = Thresholder(a.shape, spare=6)
    z, s = thr.exact(a, 2.0)  # full SVD; keeps 5 + 6 right singular vectors
    assert thr.v.shape == (40, 11) and (thr.n_full, thr.n_fast) == (1, 0)
    np.testing.assert_allclose(z, ref, atol=1e-12)
    z, s = thr(a, 2.0)
    assert (thr.n_full, thr.n_fast) == (1, 1)
    np.testing.assert_allclose(z, ref, atol=1e-11)
    np.testing.assert_allclose(s, ref_s, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(z, compute_uv=False)[:5], s, rtol=1e-12)
    # a block from a nearby matrix: subspace iteration converges to the exact threshold
    thr.exact(a + 0.05 * rng.standard_normal(a.shape), 2.0)
    errors = [np.linalg.norm(thr(a, 2.0)[0] - ref) for _ in range(30)]
    assert thr.n_fast == 31 and errors[0] < 0.1 and errors[-1] < 1e-10 * np.linalg.norm(ref)


def test_subspace_svt_falls_back_when_the_buffer_thins():
    """Fewer than MIN_SPARE Ritz values below tau: the block may miss a singular value above
    tau, so the step is a full SVD (and the thresholded rank grows past the old block)."""
    from fastdmf.baselines._svt import MIN_SPARE, Thresholder

    rng = np.random.default_rng(1)
    a = spectrum_matrix(rng, 60, 60, np.r_[np.arange(20.0, 8.0, -1.0), np.linspace(1.5, 0.1, 48)])
    thr = Thresholder(a.shape, spare=MIN_SPARE)
    thr.exact(a, 14.5)  # 6 values above 14.5: a block of 6 + MIN_SPARE vectors
    assert thr.v.shape[1] == 6 + MIN_SPARE
    z, s = thr(a, 5.0)  # 12 values above 5: more than the block holds
    assert (thr.n_full, thr.n_fast) == (2, 0)
    ref, ref_s = reference_svt(a, 5.0)
    np.testing.assert_allclose(z, ref, atol=1e-12)
    np.testing.assert_allclose(s, ref_s, rtol=1e-12)
    assert len(s) == 12 and thr.v.shape[1] == 12 + MIN_SPARE


@pytest.mark.parametrize(
    "kind, shape, rank, n_observed, seed, recovers",
    [
        ("completion", (60, 50), 2, 900, 1, True),  # enough entries: the truth is the minimiser
        ("completion", (60, 60), 3, 1200, 0, False),  # too few: the minimiser is not the truth
        ("sensing", (30, 25), 2, 300, 1, True),
    ],
)
def test_nuclear_subspace_path_certified(kind, shape, rank, n_observed, seed, recovers):
    """Problems whose thresholded rank stays far below their size run on the subspace step,
    yet end on a full-SVD iterate with the certificate."""
    if kind == "completion":
        problem = fastdmf.synthetic_completion(
            shape=shape, rank=rank, n_observed=n_observed, seed=seed
        )
    else:
        problem = fastdmf.synthetic_sensing(
            shape=shape, rank=rank, n_measurements=n_observed, seed=seed
        )
    result = baselines.nuclear_norm(problem)
    assert result.status == "converged"
    svds = result.settings["svds"]
    assert svds["subspace"] > 0.5 * result.n_steps and svds["full"] >= 2
    assert_certified(problem, result)
    err = np.sum((result.matrix() - problem.ground_truth) ** 2)
    assert (err < 1e-10 * np.sum(problem.ground_truth**2)) == recovers


# -------------------------------------------------------------------- min Frobenius


def test_min_frobenius_completion(small):
    result = baselines.min_frobenius(small)
    w = result.matrix()
    expect = np.zeros(small.shape)
    expect[small.rows, small.cols] = small.values
    np.testing.assert_array_equal(w, expect)
    assert result.status == "converged" and len(result.trajectory) == 1


def test_min_frobenius_sensing(small_sensing):
    """Feasible, and orthogonal to the null space of A: the optimality condition."""
    mat, y = operator(small_sensing)
    w = baselines.min_frobenius(small_sensing).matrix().ravel()
    np.testing.assert_allclose(mat @ w, y, rtol=0, atol=1e-10 * np.linalg.norm(y))
    null = np.linalg.svd(mat)[2][mat.shape[0] :]  # an orthonormal basis of null(A)
    assert np.abs(null @ w).max() <= 1e-10 * np.linalg.norm(w)
    np.testing.assert_allclose(w, np.linalg.lstsq(mat, y, rcond=None)[0], atol=1e-10)


def test_min_frobenius_inconsistent_measurements():
    a = np.zeros((2, 2, 2))
    a[0, 0, 0] = a[1, 0, 0] = 1.0
    problem = fastdmf.sensing(a, [1.0, 2.0])
    with pytest.raises(ValueError, match="no matrix matches"):
        baselines.min_frobenius(problem)
    with pytest.raises(ValueError, match="no matrix matches"):
        baselines.nuclear_norm(problem)


# ------------------------------------------------------------------------- Schatten-p


def test_schatten_recovers_low_rank():
    problem = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=200, seed=4)
    result = baselines.schatten_p(problem, p=0.5)
    w = result.matrix()
    assert result.status == "converged"
    np.testing.assert_allclose(w[problem.rows, problem.cols], problem.values, rtol=1e-8)
    err = np.sum((w - problem.ground_truth) ** 2) / np.sum(problem.ground_truth**2)
    assert err < 1e-4
    obj = result.settings["objective"]
    assert np.all(np.diff(obj) <= 1e-10 * obj[0])  # majorisation: never increases
    # the smoothed objective is tr((W W^T + eps I)^{p/2}), recomputed at the start
    w0 = baselines.min_frobenius(problem).matrix()
    s0 = np.linalg.svd(w0, compute_uv=False)
    eps0 = result.settings["eps"][0]
    assert obj[0] == pytest.approx(np.sum((s0**2 + eps0) ** 0.25), rel=1e-10)


def test_schatten_sensing(small_sensing):
    result = baselines.schatten_p(small_sensing, p=0.5)
    mat, y = operator(small_sensing)
    w = result.matrix()
    np.testing.assert_allclose(mat @ w.ravel(), y, atol=1e-8 * np.linalg.norm(y))
    assert np.all(np.diff(result.settings["objective"]) <= 1e-10 * result.settings["objective"][0])
    truth = small_sensing.ground_truth
    assert np.sum((w - truth) ** 2) / np.sum(truth**2) < 1e-4


def test_schatten_one_is_nuclear(square):
    """p = 1 approaches the certified nuclear-norm optimum from above."""
    best = baselines.nuclear_norm(square).settings["certificate"]["lower_bound"]
    w = baselines.schatten_p(square, p=1.0, max_iter=2000).matrix()
    nuc = np.linalg.svd(w, compute_uv=False).sum()
    assert best * (1 - 1e-6) <= nuc <= best * (1 + 1e-3)


@pytest.mark.parametrize("p", [0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_schatten_bad_p(square, p):
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\]"):
        baselines.schatten_p(square, p=p)


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "solver", [baselines.nuclear_norm, baselines.min_frobenius, baselines.schatten_p]
)
def test_wrong_problem_type(solver):
    with pytest.raises(TypeError, match="CompletionProblem or a SensingProblem"):
        solver(np.eye(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tol": 0}, "tol must be"),
        ({"tol": 1.5}, "tol must be"),
        ({"tol": float("nan")}, "tol"),
        ({"tol": "1e-6"}, "tol must be"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"tau": -1.0}, "tau must be"),
        ({"memory": -1}, "memory"),
        ({"record": 0}, "record"),
    ],
)
def test_nuclear_bad_arguments(square, kwargs, match):
    with pytest.raises(ValueError, match=match):
        baselines.nuclear_norm(square, **kwargs)


def test_schatten_bad_decay(square):
    with pytest.raises(ValueError, match="eps_decay"):
        baselines.schatten_p(square, eps_decay=1.0)


def test_registry():
    assert baselines.get_baseline("nuclear_norm") is baselines.nuclear_norm
    with pytest.raises(ValueError, match="choose one of"):
        baselines.get_baseline("trace")
    assert "baselines" in fastdmf.__all__


def test_bad_threads(square):
    with pytest.raises(ValueError, match="n_threads"):
        baselines.nuclear_norm(square, n_threads=0)
