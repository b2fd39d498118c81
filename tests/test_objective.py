"""fastdmf.Objective and its PyTorch / JAX adapters: gradients against loss_and_grad, finite
differences and dense autograd; result() against a fit's records; bad input refused before
any kernel runs; scipy's L-BFGS-B end to end."""

import numpy as np
import pytest
import scipy.optimize

import fastdmf
from fastdmf import reference
from fastdmf.factors import end_to_end

from .conftest import random_factors


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b)))


@pytest.fixture(scope="module")
def sensed():
    return fastdmf.synthetic_sensing(shape=(6, 5), rank=1, n_measurements=25, seed=1)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_loss_and_grad_equal_the_building_block(square, depth):
    dims = (12, 9, 8, 7)[:depth] + (12,)
    factors = random_factors(dims, np.random.default_rng(depth))
    obj = fastdmf.Objective(square, depth, widths=[w.shape[0] for w in factors[:-1]])
    loss, grad = obj(obj.pack(factors))
    ref_loss, ref_grads = fastdmf.loss_and_grad(factors, square)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    for got, want in zip(obj.unpack(grad), ref_grads):
        assert _rel(got, want) <= 1e-13
    # and the plain NumPy oracle
    oracle_loss, oracle_grads = reference.loss_and_grad(
        factors, square.rows, square.cols, square.values
    )
    assert loss == pytest.approx(oracle_loss, rel=1e-12)
    for got, want in zip(obj.unpack(grad), oracle_grads):
        assert _rel(got, want) <= 1e-12


def test_sensing_grad_equals_the_building_block(sensed):
    factors = random_factors((5, 4, 6), np.random.default_rng(2))
    obj = fastdmf.Objective(sensed, 2, widths=[4])
    loss, grad = obj(obj.pack(factors))
    ref_loss, ref_grads = fastdmf.loss_and_grad(factors, sensed)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    for got, want in zip(obj.unpack(grad), ref_grads):
        assert _rel(got, want) <= 1e-13


def test_grad_matches_central_differences(tall):
    obj = fastdmf.Objective(tall, 3, widths=[4, 3])
    x = obj.pack(random_factors((9, 4, 3, 17), np.random.default_rng(7)))
    _, grad = obj(x)
    h = 1e-6
    fd = np.empty_like(x)
    for k in range(x.size):
        e = np.zeros_like(x)
        e[k] = h
        fd[k] = (obj.loss(x + e) - obj.loss(x - e)) / (2 * h)
    assert _rel(grad, fd) <= 1e-7


def test_out_buffer_is_overwritten_and_never_aliases_x(square):
    obj = fastdmf.Objective(square, 3, widths=4)
    x = obj.x0(init_scale=1.0, seed=3)
    _, fresh = obj(x)
    out = np.full(obj.size, np.nan)
    _, got = obj.loss_and_grad(x, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fresh)
    with pytest.raises(ValueError, match="overlap"):
        obj.loss_and_grad(x, out=x)
    with pytest.raises(ValueError, match="out= must be"):
        obj.loss_and_grad(x, out=np.zeros(obj.size, np.float32))


def test_read_only_and_strided_vectors(square):
    obj = fastdmf.Objective(square, 2, widths=4)
    x = obj.x0(init_scale=1.0, seed=8)
    loss, grad = obj(x)
    frozen = x.copy()
    frozen.flags.writeable = False
    strided = np.repeat(x, 2)[::2]
    for other in (frozen, strided, list(x)):
        got_loss, got_grad = obj(other)
        assert got_loss == loss
        np.testing.assert_array_equal(got_grad, grad)


def test_x0_pack_unpack_are_fits_layout(square):
    obj = fastdmf.Objective(square, 3)
    start = fastdmf.fit(square, depth=3, max_steps=0, record=None, seed=11)
    x = obj.x0(init="gaussian", init_scale=1e-3, seed=11)
    for got, want in zip(obj.unpack(x), start.factors):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(obj.pack(start.factors), x)


def test_float32_objective(square):
    factors = random_factors((12, 5, 12), np.random.default_rng(4), dtype=np.float32)
    obj = fastdmf.Objective(square, 2, widths=[5], dtype="float32")
    loss, grad = obj(obj.pack(factors))
    assert grad.dtype == np.float32
    ref_loss, ref_grads = fastdmf.loss_and_grad(factors, square)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for got, want in zip(obj.unpack(grad), ref_grads):
        assert _rel(got, want) <= 1e-6
    loss64, _ = obj(obj.pack(factors).astype(np.float64))  # converted to float32
    assert loss64 == loss


def test_result_reads_like_the_fit(square):
    fit = fastdmf.fit(
        square, depth=3, optimizer="gd", lr=0.05, init_scale=0.5, max_steps=40, record=None, seed=2
    )
    obj = fastdmf.Objective(square, 3)
    res = obj.result(obj.pack(fit.factors), n_steps=fit.n_steps, status=fit.status)
    assert isinstance(res, fastdmf.FitResult) and res.n_steps == fit.n_steps
    got, want = res.trajectory.last(), fit.trajectory.last()
    for name in (
        "train_loss",
        "test_error",
        "nuclear_norm",
        "effective_rank",
        "schatten",
        "grad_norm",
        "param_norm",
    ):
        assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-300), name
    np.testing.assert_allclose(got["singular_values"], want["singular_values"], rtol=1e-12)
    np.testing.assert_allclose(got["balancedness"], want["balancedness"], rtol=1e-12)
    np.testing.assert_allclose(res.matrix(), fit.matrix(), rtol=0, atol=0)
    assert set(res.settings) == set(fit.settings)


def test_result_with_held_out_entries_and_history(tall):
    train, test = (
        tall,
        fastdmf.completion(
            np.array([0, 3, 16]), np.array([1, 8, 0]), np.array([0.5, -1.0, 2.0]), shape=(17, 9)
        ),
    )
    obj = fastdmf.Objective(train, 2, widths=3)
    xs = [obj.x0(init_scale=1.0, seed=s) for s in range(3)]
    res = obj.result(xs[-1], test=test, history=xs[:-1], top_k=2)
    traj = res.trajectory
    np.testing.assert_array_equal(traj.step, [0, 1, 2])
    for k, x in enumerate(xs):
        factors = obj.unpack(x)
        pred = end_to_end(factors)[test.rows, test.cols]
        assert traj.test_error[k] == pytest.approx(np.mean((pred - test.values) ** 2), rel=1e-12)
        assert traj.train_loss[k] == pytest.approx(obj.loss(x), rel=1e-14)
    assert traj.singular_values.shape == (3, 2)
    assert res.status == "stopped"  # loss far above tol


def test_scipy_lbfgsb_end_to_end():
    problem = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=200, seed=0)
    obj = fastdmf.Objective(problem, depth=2)
    seen = []
    res = scipy.optimize.minimize(
        obj,
        obj.x0(init_scale=1e-2),
        jac=True,
        method="L-BFGS-B",
        callback=lambda xk: seen.append(xk.copy()),
        options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-12},
    )
    out = obj.result(res.x, n_steps=res.nit, history=seen[:-1])
    assert out.train_loss == pytest.approx(res.fun, rel=1e-12)
    assert out.train_loss < 1e-8
    assert out.status == "converged"
    assert len(out.trajectory) == len(seen)
    assert obj.n_calls == res.nfev
    truth = problem.ground_truth
    err = np.sum((out.matrix() - truth) ** 2) / np.sum(truth**2)
    assert out.trajectory.test_error[-1] == pytest.approx(err, rel=1e-9)


# --------------------------------------------------------------------------- bad input


class _NoKernel:
    """Stands in for the engine: any kernel call fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a kernel ran ({name}) on bad input")


@pytest.fixture
def guarded(square):
    obj = fastdmf.Objective(square, 2, widths=3)
    good = obj.x0(init_scale=1.0)
    obj._engine = _NoKernel()
    return obj, good


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x: x[:-1], ValueError, "flat vector of 72"),
        (lambda x: np.concatenate([x, x]), ValueError, "flat vector of 72"),
        (lambda x: x.reshape(8, 9), ValueError, r"shape \(8, 9\)"),
        (lambda x: x.astype(np.int64), TypeError, "float64 or float32"),
        (lambda x: x.astype(np.complex128), TypeError, "float64 or float32"),
        (lambda x: x.astype(np.float16), TypeError, "float64 or float32"),
        (lambda x: np.where(np.arange(x.size) == 5, np.nan, x), ValueError, r"x\[5\] = nan"),
        (lambda x: np.where(np.arange(x.size) == 0, np.inf, x), ValueError, "non-finite"),
        (lambda x: "abc", TypeError, "flat NumPy vector"),
    ],
)
def test_bad_vectors_are_refused_before_any_kernel(guarded, make, error, match):
    obj, good = guarded
    with pytest.raises(error, match=match):
        obj(make(good))
    with pytest.raises(error, match=match):
        obj.result(make(good))
    assert obj.n_calls == 0


def test_another_problems_shape_is_refused(guarded, tall):
    obj, good = guarded
    other = fastdmf.Objective(tall, 2, widths=3)
    with pytest.raises(ValueError, match="another problem shape"):
        obj(other.x0())
    with pytest.raises(ValueError, match="factor W_1 has shape"):
        obj.pack(other.unpack(other.x0()))
    with pytest.raises(ValueError, match="test= has shape"):
        obj.result(good, test=tall)
    with pytest.raises(ValueError, match="the problem has shape"):
        fastdmf.Objective(tall, 2, shape=(12, 12))
    with pytest.raises(ValueError, match="dtype must be one of"):
        fastdmf.Objective(tall, 2, dtype="float16")
    with pytest.raises(ValueError, match="depth must be"):
        fastdmf.Objective(tall, 0)


# --------------------------------------------------------------------------- adapters


def _dense_loss_torch(torch, theta, obj, problem):
    from fastdmf.objective_torch import unpack

    factors = unpack(theta, obj)
    w = factors[0]
    for f in factors[1:]:
        w = f @ w
    rows, cols = torch.from_numpy(problem.rows), torch.from_numpy(problem.cols)
    return ((w[rows, cols] - torch.from_numpy(problem.values)) ** 2).mean()


def test_torch_gradients_equal_dense_autograd(tall):
    torch = pytest.importorskip("torch")
    from fastdmf.objective_torch import FactorizationLoss, factors_loss, objective_loss

    obj = fastdmf.Objective(tall, 3, widths=[5, 4])
    x = obj.x0(init_scale=1.0, seed=5)
    fused = torch.tensor(x, requires_grad=True)
    (3.0 * objective_loss(fused, obj)).backward()  # the incoming gradient scales
    dense = torch.tensor(x, requires_grad=True)
    (3.0 * _dense_loss_torch(torch, dense, obj, tall)).backward()
    assert _rel(fused.grad.numpy(), dense.grad.numpy()) <= 1e-12
    assert objective_loss(fused, obj).item() == pytest.approx(obj.loss(x), rel=1e-15)
    # factor tensors from an upstream computation
    leaves = [torch.tensor(np.array(w), requires_grad=True) for w in obj.unpack(x)]
    factors_loss(leaves, obj).backward()
    for leaf, want in zip(leaves, obj.unpack(obj.grad(x))):
        assert _rel(leaf.grad.numpy(), want) <= 1e-13
    layer = FactorizationLoss(obj, init_scale=1.0, seed=5)
    layer().backward()
    assert _rel(layer.theta.grad.numpy(), obj.grad(x)) <= 1e-13
    np.testing.assert_allclose(
        layer.matrix().detach().numpy(), end_to_end(obj.unpack(x)), rtol=1e-13
    )


def test_torch_zero_copy_and_bad_tensors(tall):
    torch = pytest.importorskip("torch")
    from fastdmf.objective_torch import ObjectiveFunction, objective_loss

    obj = fastdmf.Objective(tall, 2, widths=3)
    theta = torch.tensor(obj.x0(init_scale=1.0), requires_grad=True)
    seen = []
    original = obj.loss_and_grad
    obj.loss_and_grad = lambda x, out=None: (seen.append(x), original(x))[1]
    ObjectiveFunction.apply(theta, obj)
    assert np.shares_memory(seen[0], theta.detach().numpy())
    for bad, match in (
        (theta.detach()[:-1], "flat vector"),
        (theta.detach().reshape(1, -1), "flat vector"),
        (theta.detach().int(), "float64 or float32"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            objective_loss(bad, obj)
    assert len(seen) == 1


def test_jax_value_and_grad_under_jit(tall):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from fastdmf.objective_jax import jax_loss

    obj = fastdmf.Objective(tall, 3, widths=[5, 4])
    x = obj.x0(init_scale=1.0, seed=6)
    loss, grad = obj(x)
    with jax.enable_x64(True):
        fn = jax_loss(obj)
        value, g = jax.jit(jax.value_and_grad(fn))(jnp.asarray(x))
        assert float(value) == loss
        np.testing.assert_array_equal(np.asarray(g), grad)
        g2 = jax.grad(lambda t: 2.0 * fn(t))(jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(g2), 2.0 * grad, rtol=1e-15)
        calls = obj.n_calls
        with pytest.raises(ValueError, match="flat vector"):
            jax.jit(fn)(jnp.zeros(obj.size + 1))
        assert obj.n_calls == calls
