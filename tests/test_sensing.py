"""Matrix sensing: kernels against the NumPy reference, finite differences, the reference
optimisers and the closed-form depth-1 flow; recovery; the fit surface."""

import numpy as np
import pytest

import fastdmf
from fastdmf import reference
from fastdmf.factors import FactorLayout
from fastdmf.kernels import cpu

from .conftest import assert_parallel_invariant, engine_for, random_factors

# (shape, depth, hidden widths or None for full-dimensional)
CASES = [
    ((6, 4), 1, None),
    ((6, 4), 2, [3]),
    ((5, 8), 3, [7, 2]),
    ((6, 4), 4, [5, 3, 9]),
    ((5, 5), 3, None),
]


@pytest.fixture(scope="module")
def problems():
    """Gaussian sensing problems per shape, more measurements than unknowns not required."""
    return {
        shape: fastdmf.synthetic_sensing(shape, 2, 17, seed=sum(shape))
        for shape in {c[0] for c in CASES}
    }


def factors_for(problem, depth, widths, seed):
    dims = FactorLayout.build(problem.shape, depth, widths).dims
    return random_factors(dims, np.random.default_rng(seed))


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("shape, depth, widths", CASES)
def test_loss_and_grad_match_reference(problems, shape, depth, widths, parallel):
    problem = problems[shape]
    factors = factors_for(problem, depth, widths, depth)
    eng = engine_for(problem, factors, parallel=parallel)
    loss = eng.evaluate()
    ref_loss, ref_grads = reference.sensing_loss_and_grad(factors, problem.A, problem.y)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    assert loss == pytest.approx(reference.sensing_loss(factors, problem.A, problem.y), rel=1e-13)
    for got, want in zip(eng.grads(), ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13 * np.abs(want).max())


@pytest.mark.parametrize("shape, depth, widths", CASES)
def test_float32_matches_reference(problems, shape, depth, widths):
    problem = problems[shape]
    f32 = [w.astype(np.float32) for w in factors_for(problem, depth, widths, 10 + depth)]
    loss, grads = fastdmf.loss_and_grad(f32, problem)
    assert all(g.dtype == np.float32 for g in grads)
    ref_loss, ref_grads = reference.sensing_loss_and_grad(
        [w.astype(np.float64) for w in f32], problem.A, problem.y
    )
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("shape, depth, widths", CASES[:4])
def test_gradients_match_central_differences(problems, shape, depth, widths):
    """Every factor, 10 random coordinates each, central differences in float64."""
    problem = problems[shape]
    rng = np.random.default_rng(20 + depth)
    factors = factors_for(problem, depth, widths, 20 + depth)
    _, grads = fastdmf.loss_and_grad(factors, problem)
    h = 1e-6
    errors = []
    for j, w in enumerate(factors):
        for _ in range(10):
            a, b = rng.integers(w.shape[0]), rng.integers(w.shape[1])
            plus = [f.copy() for f in factors]
            minus = [f.copy() for f in factors]
            plus[j][a, b] += h
            minus[j][a, b] -= h
            fd = fastdmf.loss_and_grad(plus, problem)[0] - fastdmf.loss_and_grad(minus, problem)[0]
            fd /= 2 * h
            errors.append(abs(fd - grads[j][a, b]) / max(1e-3, np.abs(grads[j]).max()))
    assert max(errors) < 1e-6
    assert np.mean(errors) < 1e-7


def test_parallel_identical_for_any_thread_count(problems):
    """Fixed row blocks of the operator and block-ordered sums: the parallel build gives the
    same bits for 1 and 2 threads, and agrees with the serial build."""
    problem = problems[(5, 8)]
    factors = factors_for(problem, 3, [7, 2], 0)
    assert_parallel_invariant(problem, factors)


OPTIMIZERS = [
    ("gd", 0.05, {}, reference.gd_step, lambda n: None),
    (
        "grouprmsprop",
        1e-2,
        {"alpha": 0.99, "eps": 1e-4},
        reference.grouprmsprop_step,
        lambda n: (0, 0.0),
    ),
    (
        "adam",
        1e-2,
        {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        reference.adam_step,
        lambda n: (0, np.zeros(n), np.zeros(n)),
    ),
]


@pytest.mark.parametrize("name, lr, opts, step, state0", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("depth", [1, 3])
def test_run_matches_reference_steps(problems, name, lr, opts, step, state0, depth):
    """Ten steps of the compiled loop against the reference loss, gradient and update."""
    problem = problems[(6, 4)]
    widths = None if depth == 1 else [5, 3]
    factors = factors_for(problem, depth, widths, 30)
    spec = fastdmf.OPTIMIZERS[name]
    eng = engine_for(problem, factors, optimizer=spec, hyper=spec.hyper(lr, opts))
    done, status, loss = eng.run(10, 0.0, 1e300)
    assert (done, status) == (10, cpu.RUNNING)
    layout = eng.layout
    theta, state = layout.pack(factors), state0(layout.size)
    for _ in range(10):
        fs = layout.unpack(theta)
        ref_loss, grads = reference.sensing_loss_and_grad(fs, problem.A, problem.y)
        theta, state = step(theta, layout.pack(grads), state, lr, **opts)
    assert loss == pytest.approx(ref_loss, rel=1e-12)  # the loss before the 10th update
    np.testing.assert_allclose(eng.theta, theta, rtol=1e-11, atol=1e-14)


def test_run_stops_on_tol_and_divergence(problems):
    problem = problems[(6, 4)]
    factors = factors_for(problem, 2, [3], 1)
    eng = engine_for(problem, factors, hyper=np.array([1e-3, 0, 0, 0]))
    first = eng.evaluate()
    done, status, loss = eng.run(5, first * 2, 1e300)
    assert (done, status, loss) == (0, cpu.CONVERGED, first)
    eng = engine_for(problem, factors, hyper=np.array([1e3, 0, 0, 0]))
    done, status, loss = eng.run(50, 0.0, first * 10)
    assert status == cpu.DIVERGED and done < 50 and not loss <= first * 10


@pytest.mark.parametrize("method, atol", [("flow_dopri5", 1e-9), ("flow", 2e-7)])
def test_depth1_flow_matches_closed_form(problems, method, atol):
    """Depth 1 is a linear ODE dw/dt = -(H w - b), H = (2/p) A^T A, b = (2/p) A^T y:
    w(t) = w0 + V diag((exp(-lam t) - 1) / lam) V^T (H w0 - b)."""
    problem = problems[(6, 4)]
    a, y = problem.operator, problem.y
    hess = 2.0 * a.T @ a / len(y)
    b = 2.0 * a.T @ y / len(y)
    w0 = np.random.default_rng(0).standard_normal(problem.shape)
    t = 3.0
    lam, vec = np.linalg.eigh(hess)
    lam_safe = np.where(lam > 1e-12, lam, 1.0)
    coef = np.where(lam > 1e-12, np.expm1(-lam * t) / lam_safe, -t)
    want = w0.ravel() + vec @ (coef * (vec.T @ (hess @ w0.ravel() - b)))
    res = fastdmf.fit(
        problem,
        depth=1,
        init=[w0],
        optimizer=method,
        max_time=t,
        lr=1e-3,
        optimizer_options={"rtol": 1e-10, "atol": 1e-12},
        tol=0,
        record=None,
        max_steps=100_000,
    )
    assert res.status == "max_time"
    np.testing.assert_allclose(res.factors[0].ravel(), want, rtol=0, atol=atol)


def test_small_init_depth3_recovers():
    """20 x 20 rank 2 from 160 measurements (below m n = 400): depth 3 from a small init
    finds W* with GroupRMSprop (reconstruction error < 1e-3), depth 1 stays far from it."""
    problem = fastdmf.synthetic_sensing((20, 20), 2, 160, seed=1)
    deep = fastdmf.fit(
        problem, depth=3, init_scale=1e-3, lr=1e-2, max_steps=20_000, tol=1e-8, record=5000, seed=0
    )
    w = deep.matrix()
    err = np.sum((w - problem.ground_truth) ** 2) / np.sum(problem.ground_truth**2)
    assert err < 1e-3
    assert deep.trajectory.test_error[-1] == pytest.approx(err, rel=1e-6)
    assert deep.train_loss == pytest.approx(
        reference.sensing_loss(deep.factors, problem.A, problem.y), rel=1e-9
    )
    shallow = fastdmf.fit(
        problem,
        depth=1,
        init_scale=1e-3,
        optimizer="adam",
        lr=1e-2,
        max_steps=3000,
        tol=1e-8,
        record=None,
        seed=0,
    )
    assert shallow.trajectory.test_error[-1] > 0.5


def test_test_error_is_held_out_measurement_mse():
    """Without a ground truth the test error is the MSE of held-out measurements; predict
    reads entries of W from the factors."""
    truth = fastdmf.synthetic_sensing((6, 5), 1, 40, seed=2)
    problem = fastdmf.sensing(truth.A, truth.y)  # no ground truth
    train, test = problem.split(0.25, seed=0)
    res = fastdmf.fit(
        train, depth=2, test=test, optimizer="adam", lr=1e-2, max_steps=200, record=100, seed=0
    )
    w = res.matrix()
    assert res.trajectory.test_error[-1] == pytest.approx(
        np.mean((np.einsum("kij,ij->k", test.A, w) - test.y) ** 2), rel=1e-10
    )
    rows, cols = np.array([0, 5, 3]), np.array([4, 0, 2])
    np.testing.assert_allclose(res.predict(rows, cols), w[rows, cols], rtol=1e-12)


def test_float64_operator_is_not_copied(problems):
    problem = problems[(6, 4)]
    eng = engine_for(problem, factors_for(problem, 2, [3], 0))
    assert np.shares_memory(eng.obs[0], problem.A)
    eng32 = engine_for(problem, factors_for(problem, 2, [3], 0), dtype=np.float32)
    assert eng32.obs[0].dtype == np.float32


@pytest.mark.slow
def test_fit_batch_equals_serial_fits(problems):
    problem = problems[(5, 8)]
    results = fastdmf.fit_batch(problem, depth=3, seeds=[0, 1], lr=1e-2, max_steps=120, record=50)
    for seed, res in zip([0, 1], results):
        one = fastdmf.fit(
            problem, depth=3, seed=seed, lr=1e-2, max_steps=120, record=50, parallel=False
        )
        for a, b in zip(res.factors, one.factors):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(res.trajectory.train_loss, one.trajectory.train_loss)


def test_bad_input(problems):
    problem = problems[(6, 4)]
    completion = fastdmf.synthetic_completion((6, 4), 1, 10, seed=0)
    with pytest.raises(TypeError, match="held-out measurements"):
        fastdmf.fit(problem, depth=2, test=completion, max_steps=1)
    with pytest.raises(TypeError, match="held-out measurements"):
        fastdmf.fit(completion, depth=2, test=problem, max_steps=1)
    other = fastdmf.synthetic_sensing((4, 6), 1, 5, seed=0)
    with pytest.raises(ValueError, match="shape"):
        fastdmf.fit(problem, depth=2, test=other, max_steps=1)
    with pytest.raises(ValueError, match=r"W_1 has shape"):
        fastdmf.loss_and_grad([np.ones((3, 5)), np.ones((6, 3))], problem)
    with pytest.raises(ValueError, match="lr must be"):
        fastdmf.fit(problem, depth=2, lr=-1.0, max_steps=1)
