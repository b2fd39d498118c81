"""Deep diagonal networks: the kernel family against the NumPy reference, finite differences
and NumPy optimiser loops; serial, parallel and batched builds; the flow; the problem's
checks. Engine-free: the tests call ``prepare`` and the compiled family directly."""

import numba
import numpy as np
import pytest

from fastdmf import diagonal as D
from fastdmf.kernels import cpu
from fastdmf.kernels import diagonal as K
from fastdmf.kernels import flow as F

N_SAMPLES, N_FEATURES = 9, 14
DEPTHS = [1, 2, 3, 4]


@pytest.fixture(scope="module")
def problem():
    return D.synthetic_sparse_regression(N_SAMPLES, N_FEATURES, 3, noise=0.1, seed=5)


def params(depth, seed, d=N_FEATURES):
    """u, v away from zero (so u^(N-1) does not hide a wrong gradient) and unequal."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.3, 1.2, d), rng.uniform(0.3, 1.2, d)


def evaluate(problem, u, v, depth, dtype=np.float64, parallel=False):
    """(loss, grad, resid) from the family's loss_and_grad at theta = [u; v]."""
    lay = D.DiagonalLayout(problem.n_features, depth)
    kern, nblk, obs, work, resid = K.prepare(problem, lay, dtype, parallel)
    theta = lay.pack([u, v], dtype)
    grad = np.zeros_like(theta)
    scale = 2.0 / problem.n_observed
    loss = kern.loss_and_grad(
        theta, grad, work, np.asarray(lay.dims, np.int64), lay.offsets, obs, resid, scale, nblk
    )
    return loss, grad, resid


# --------------------------------------------------------------------------- loss and gradients


@pytest.mark.parametrize("depth", DEPTHS)
def test_loss_and_grad_match_reference(problem, depth):
    u, v = params(depth, depth)
    loss, grad, resid = evaluate(problem, u, v, depth)
    ref_loss, du, dv = D.reference_loss_and_grad(u, v, problem.X, problem.y, depth)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(
        grad, np.r_[du, dv], rtol=1e-12, atol=1e-13 * np.abs(np.r_[du, dv]).max()
    )
    w = D.coef(np.r_[u, v], depth)
    scale = 2.0 / problem.n_observed
    np.testing.assert_allclose(resid, scale * (problem.X @ w - problem.y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("depth", DEPTHS)
def test_float32_matches_reference(problem, depth):
    u, v = params(depth, 10 + depth)
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    loss, grad, _ = evaluate(problem, u32, v32, depth, np.float32)
    assert grad.dtype == np.float32
    # the reference at the float32 data and parameters, in float64
    ref_loss, du, dv = D.reference_loss_and_grad(
        u32, v32, problem.X.astype(np.float32), problem.y.astype(np.float32), depth
    )
    want = np.r_[du, dv]
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(grad, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("depth", DEPTHS)
def test_gradients_match_central_differences(problem, depth):
    """Every coordinate of u and v, central differences of the kernel's own loss, float64."""
    u, v = params(depth, 20 + depth)
    theta = np.r_[u, v]
    d = problem.n_features
    _, grad, _ = evaluate(problem, u, v, depth)
    h = 1e-6
    fd = np.empty_like(theta)
    for i in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        lp = evaluate(problem, tp[:d], tp[d:], depth)[0]
        lm = evaluate(problem, tm[:d], tm[d:], depth)[0]
        fd[i] = (lp - lm) / (2 * h)
    err = np.abs(fd - grad)
    scale = np.abs(grad).max()
    assert err.max() <= 1e-6 * scale
    assert err.mean() <= 1e-7 * scale


# --------------------------------------------------------------------------- optimiser steps


def numpy_run(problem, theta, depth, code, hyper, n_steps):
    """The same update as ``cpu.update`` (``fastdmf.reference``'s step rules), in NumPy."""
    from fastdmf import reference as R

    d = problem.n_features
    lr, a, b, eps = hyper
    state = {0: None, 1: (0, 0.0), 2: (0, np.zeros_like(theta), np.zeros_like(theta))}[code]
    losses = []
    for _ in range(n_steps):
        loss, du, dv = D.reference_loss_and_grad(theta[:d], theta[d:], problem.X, problem.y, depth)
        losses.append(loss)
        g = np.r_[du, dv]
        if code == 0:
            theta, state = R.gd_step(theta, g, state, lr)
        elif code == 1:
            theta, state = R.grouprmsprop_step(theta, g, state, lr, a, eps)
        else:
            theta, state = R.adam_step(theta, g, state, lr, a, b, eps)
    return theta, losses


def kernel_run(kern, problem, theta, depth, code, hyper, n_steps, nblk=1, parallel=False):
    lay = D.DiagonalLayout(problem.n_features, depth)
    _, nblk, obs, work, resid = K.prepare(problem, lay, theta.dtype, parallel)
    theta = theta.copy()
    grad = np.zeros_like(theta)
    opt = (
        code,
        np.asarray(hyper, dtype=np.float64),
        np.zeros(2 * theta.size, theta.dtype),
        np.zeros(3),
    )
    done, status, loss = kern.run(
        theta,
        grad,
        work,
        np.asarray(lay.dims, np.int64),
        lay.offsets,
        obs,
        resid,
        opt,
        n_steps,
        0.0,
        np.inf,
        nblk,
    )
    return theta, done, status, loss


HYPERS = {
    "gd": (0, (0.02, 0.0, 0.0, 0.0)),
    "grouprmsprop": (1, (1e-2, 0.99, 0.0, 1e-4)),
    "adam": (2, (1e-2, 0.9, 0.999, 1e-8)),
}


@pytest.mark.parametrize("name", sorted(HYPERS))
@pytest.mark.parametrize("depth", [1, 3])
def test_run_matches_numpy_loop(problem, name, depth):
    code, hyper = HYPERS[name]
    theta0 = D.DiagonalLayout(problem.n_features, depth).pack(
        D.initialize(D.DiagonalLayout(problem.n_features, depth), 0.5)
    )
    want, losses = numpy_run(problem, theta0.copy(), depth, code, hyper, 6)
    got, done, status, loss = kernel_run(K.SERIAL, problem, theta0, depth, code, hyper, 6)
    assert (done, status) == (6, cpu.RUNNING)
    assert loss == pytest.approx(losses[-1], rel=1e-12)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)
    assert losses[-1] < losses[0]  # the steps do train (else a no-op would pass)


# --------------------------------------------------------------------------- builds


def test_parallel_build_matches_serial_and_any_thread_count(problem):
    """The parallel build splits X in config.DENSE_BLOCKS fixed row blocks: it agrees with the
    serial build to rounding and is bit-identical for 1 and 2 threads."""
    u, v = params(3, 30)
    ls, gs, rs = evaluate(problem, u, v, 3)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            results.append(evaluate(problem, u, v, 3, parallel=True))
    finally:
        numba.set_num_threads(before)
    (l1, g1, r1), (l2, g2, r2) = results
    assert l1 == pytest.approx(ls, rel=1e-13)
    np.testing.assert_allclose(g1, gs, rtol=1e-12, atol=1e-14 * np.abs(gs).max())
    np.testing.assert_allclose(r1, rs, rtol=1e-13, atol=1e-15)
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)
    np.testing.assert_array_equal(r1, r2)


def test_batched_trials_match_serial_runs_bit_for_bit(problem):
    depth, n_steps = 2, 25
    lay = D.DiagonalLayout(problem.n_features, depth)
    scales = [0.3, 0.6, 1.0]
    code, hyper = HYPERS["grouprmsprop"]
    _, nblk, obs, work, resid = K.prepare(problem, lay, np.float64)
    B = len(scales)
    thetas = np.stack([lay.pack(D.initialize(lay, s)) for s in scales])
    grads = np.zeros_like(thetas)
    works = np.zeros((B, work.size))
    rowlosses = np.zeros((B, resid.size))
    codes = np.full(B, code, dtype=np.int64)
    hypers = np.tile(np.asarray(hyper), (B, 1))
    ostates = np.zeros((B, 2 * lay.size))
    scalars = np.zeros((B, 3))
    caps = np.full(B, np.inf)
    active = np.ones(B, dtype=np.bool_)
    status = np.full(B, -1, dtype=np.int64)
    dims = np.asarray(lay.dims, np.int64)
    K.run_batch(
        (thetas, grads, works, rowlosses),
        dims,
        lay.offsets,
        obs,
        (codes, hypers, ostates, scalars),
        n_steps,
        0.0,
        caps,
        active,
        status,
    )
    for b, s in enumerate(scales):
        got, done, st, _ = kernel_run(
            K.SERIAL, problem, lay.pack(D.initialize(lay, s)), depth, code, hyper, n_steps
        )
        assert status[b] == st == cpu.RUNNING
        np.testing.assert_array_equal(thetas[b], got)
    assert not np.array_equal(thetas[0], thetas[1])


@pytest.mark.parametrize("depth, alpha", [(2, 0.1), (3, 0.5)])
def test_flow_reaches_the_interpolant_of_least_potential(depth, alpha):
    """Noiseless, n < d: DOPRI5 drives the loss to ~0, and its limit is the minimiser of
    Q_alpha over the interpolants (fastdmf.diagonal_theory, computed by Newton on the dual,
    independently of the flow; measured agreement 2e-8 relative)."""
    prob = D.synthetic_sparse_regression(5, 10, 2, seed=3)
    lay = D.DiagonalLayout(prob.n_features, depth)
    kern, nblk, obs, work, resid = K.prepare(prob, lay, np.float64)
    theta = lay.pack(D.initialize(lay, alpha))
    fs = np.zeros(F.FLOW_STATE_SIZE)
    fs[F.H], fs[F.RTOL], fs[F.ATOL], fs[F.METHOD] = 1e-3, 1e-10, 1e-13, F.DOPRI5
    flow = (theta.copy(), np.zeros((7, theta.size)), fs)
    steps, status, loss = kern.run_flow(
        theta,
        np.zeros_like(theta),
        work,
        np.asarray(lay.dims, np.int64),
        lay.offsets,
        obs,
        resid,
        flow,
        1e6,
        100000,
        1e-16,
        np.inf,
        nblk,
    )
    assert status == cpu.CONVERGED and loss <= 1e-16
    w = D.coef(theta, depth)
    np.testing.assert_allclose(prob.X @ w, prob.y, atol=1e-7)
    theory = pytest.importorskip("fastdmf.diagonal_theory")
    limit = theory.diagonal_limit(prob, alpha, depth).settings["coef"]
    np.testing.assert_allclose(w, limit, rtol=0, atol=1e-6 * np.abs(limit).max())


# --------------------------------------------------------------------------- problem and records


def test_synthetic_problem_is_what_its_docstring_says():
    p = D.synthetic_sparse_regression(20, 30, 4, noise=0.0, seed=1)
    nz = np.flatnonzero(p.ground_truth)
    assert nz.size == 4 and set(np.abs(p.ground_truth[nz])) == {1.0}
    np.testing.assert_allclose(p.y, p.X @ p.ground_truth, rtol=0, atol=1e-12)
    noisy = D.synthetic_sparse_regression(20, 30, 4, noise=0.5, seed=1)
    np.testing.assert_array_equal(noisy.X, p.X)
    assert 0.1 < np.std(noisy.y - p.y) < 1.5
    assert p.shape == (20, 30) and p.n_samples == p.n_observed == 20 and p.n_features == 30
    assert repr(p) == "SparseRegressionProblem(20 samples x 30 features, 4-sparse ground truth)"
    assert p.X.flags.c_contiguous and p.X.dtype == np.float64


def test_split_and_arrays_round_trip(problem):
    train, test = problem.split(1 / 3, seed=2)
    assert (train.n_samples, test.n_samples) == (6, 3)
    rows = np.vstack([train.X, test.X])
    order = np.lexsort(rows.T)
    np.testing.assert_array_equal(rows[order], problem.X[np.lexsort(problem.X.T)])
    for part in (train, test):  # each sample keeps its own target
        for x, t in zip(part.X, part.y):
            k = int(np.flatnonzero((problem.X == x).all(axis=1))[0])
            assert problem.y[k] == t
    back = D.SparseRegressionProblem.from_arrays(problem.to_arrays(), meta=problem.meta)
    for name in ("X", "y", "ground_truth"):
        np.testing.assert_array_equal(getattr(back, name), getattr(problem, name))
    assert back.meta == problem.meta


def test_record_values():
    w = np.array([2.0, -1e-4, 0.0, -3.0, 0.5])
    truth = np.array([2.0, 0.0, 0.0, -3.0, 0.0])
    rec = D.record_values(w, 0.1, 2, truth)
    assert rec["l1"] == pytest.approx(5.5001)
    assert rec["l2"] == pytest.approx(np.sqrt(4 + 1e-8 + 9 + 0.25))
    assert rec["support"] == 3  # 1e-4 < 1e-3 * 3
    assert rec["test_error"] == pytest.approx((1e-8 + 0.25) / 13)
    q = lambda z: 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)  # noqa: E731
    if not np.isnan(rec["potential"]):  # Woodworth et al.'s Q_alpha, depth 2
        assert rec["potential"] == pytest.approx(0.01 * q(w / 0.01).sum(), rel=1e-10)
    assert np.isnan(D.record_values(w, 0.1, 1)["potential"])
    assert D.record_values(np.zeros(3), 0.1, 2)["support"] == 0


def test_layout_and_initialize():
    lay = D.DiagonalLayout(4, 3)
    assert lay.dims == (4, 3) and lay.size == 8 and list(lay.offsets) == [0, 4, 8]
    theta = lay.pack(D.initialize(lay, 0.25))
    np.testing.assert_array_equal(theta, np.full(8, 0.25))
    u, v = lay.unpack(theta)
    u[0] = 2.0
    assert theta[0] == 2.0  # views
    np.testing.assert_array_equal(D.coef(theta, 3), np.r_[8 - 0.25**3, 0, 0, 0])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.ones((3, 4)), np.ones(2), "3 rows .* y has 2"),
        (np.ones(4), np.ones(4), "two-dimensional"),
        (np.ones((3, 4)), np.ones((3, 1)), "one-dimensional"),
        (np.ones((0, 4)), np.ones(0), "at least one sample"),
        (np.ones((3, 0)), np.ones(3), "at least one sample and one feature"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2), r"X must be finite; X\[0, 1\] is nan"),
        (np.eye(2), np.array([1.0, np.inf]), r"y must be finite; y\[1\] is inf"),
    ],
)
def test_bad_problems_raise_clearly(X, y, match):
    with pytest.raises(ValueError, match=match):
        D.sparse_regression(X, y)


def test_bad_types_and_ground_truth():
    with pytest.raises(TypeError, match="real numbers"):
        D.sparse_regression([["a", "b"]], [1.0])
    with pytest.raises(TypeError, match="float64.*sparse_regression"):
        D.SparseRegressionProblem([[1.0]], np.ones(1))
    with pytest.raises(ValueError, match=r"ground_truth has shape \(3,\), expected \(2,\)"):
        D.sparse_regression(np.eye(2), np.ones(2), ground_truth=np.ones(3))
    with pytest.raises(ValueError, match="C-contiguous"):
        D.SparseRegressionProblem(np.asfortranarray(np.ones((3, 2))), np.ones(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=11), r"sparsity must be an integer in \[0, n_features = 10\]"),
        (dict(sparsity=-1), r"sparsity must be an integer in \[0, n_features = 10\]"),
        (dict(sparsity=2.5), "sparsity must be an integer"),
        (dict(sparsity=2, noise=-1.0), "noise must be"),
    ],
)
def test_bad_synthetic_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.synthetic_sparse_regression(5, 10, **kwargs)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        D.synthetic_sparse_regression(0, 10, 1)


@pytest.mark.parametrize("alpha", [0.0, -1.0, np.nan, np.inf])
def test_nonpositive_init_scale_raises(alpha):
    with pytest.raises(ValueError, match="init_scale .* positive finite"):
        D.initialize(D.DiagonalLayout(3, 2), alpha)


def test_bad_layout_and_pack():
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        D.DiagonalLayout(3, 0)
    lay = D.DiagonalLayout(3, 2)
    with pytest.raises(ValueError, match=r"v has shape \(2,\), expected \(3,\)"):
        lay.pack([np.ones(3), np.ones(2)])
    with pytest.raises(ValueError, match="two parameter vectors"):
        lay.pack([np.ones(3)])
    with pytest.raises(ValueError, match="test_fraction"):
        D.synthetic_sparse_regression(4, 3, 1).split(1.5)
