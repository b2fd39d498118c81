"""The parallel kernels' multi-block paths, on small problems through the ``block`` argument.

The deterministic reductions (the loss over rows or residuals, the squared gradient norm of
GroupRMSprop) and the parallel update work in fixed blocks of ``cpu._BLOCK`` = 16,384 rows or
parameters, so problems of the size a test can afford fit in one block and never reach the
loops over blocks. ``loss_and_grad``, ``update`` and ``run`` take the block size as a runtime
argument (default ``cpu._BLOCK``): here it is a few dozen, so the same compiled kernels run
with several blocks of rows and of parameters. The serial and the parallel build must then
agree bit for bit (same blocks, same order of the partial sums, whatever the thread count),
and both must agree with the NumPy reference.
"""

import numpy as np
import pytest

import fastdmf
from fastdmf import config
from fastdmf.kernels import cpu, sensing
from fastdmf.optim import get_optimizer
from fastdmf.reference import loss_and_grad as reference_loss_and_grad
from fastdmf.reference import sensing_loss_and_grad

from .conftest import engine_for, random_factors

BLOCK = 32  # rows / parameters per block: several blocks on the problems below
STEPS = 4


@pytest.fixture(scope="module")
def tall_completion():
    """150 x 40, 1200 observed entries: 5 blocks of rows (the loss), and at depths 2 and 3
    (width 6) 33 to 37 blocks of parameters; depth 1 has 188."""
    return fastdmf.synthetic_completion(shape=(150, 40), rank=3, n_observed=1200, seed=11)


@pytest.fixture(scope="module")
def small_sensing():
    """12 x 10 with 100 measurements: 4 blocks of residuals, 10 to 14 of parameters."""
    return fastdmf.synthetic_sensing(shape=(12, 10), rank=2, n_measurements=100, seed=12)


def _pair(problem, depth, optimizer, seed):
    """Two engines on the same factors, both with the parallel build's buffers (nblk =
    config.DENSE_BLOCKS, so the dense products also split in the same blocks)."""
    dims = [problem.shape[1]] + [6] * (depth - 1) + [problem.shape[0]]
    factors = random_factors(dims, np.random.default_rng(seed), scale=0.7)
    hyper = get_optimizer(optimizer).hyper(0.05, {})
    return [
        engine_for(problem, factors, parallel=True, optimizer=optimizer, hyper=hyper)
        for _ in range(2)
    ]


def _steps(engine, kernels, n_steps, block):
    opt = (engine.spec.code, engine.hyper, engine.ostate, engine.scalars)
    with engine._blas():
        return kernels.run(
            engine.theta,
            engine.grad,
            engine.work,
            engine.dims,
            engine.offs,
            engine.obs,
            engine.rowloss,
            opt,
            n_steps,
            0.0,
            1e300,
            engine.nblk,
            block,
        )


def _loss(engine, kernels, block):
    scale = 2.0 / engine.obs[0].shape[0]
    with engine._blas():
        return kernels.loss_and_grad(
            engine.theta,
            engine.grad,
            engine.work,
            engine.dims,
            engine.offs,
            engine.obs,
            engine.rowloss,
            scale,
            engine.nblk,
            block,
        )


def _assert_same_state(a, b):
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.grad, b.grad)
    np.testing.assert_array_equal(a.ostate, b.ostate)
    np.testing.assert_array_equal(a.scalars, b.scalars)


def _check_blocks(engine, block):
    """The problem really spans several blocks of rows (or residuals) and of parameters,
    and the parallel build's dense products several row blocks."""
    assert engine.rowloss.shape[0] >= 3 * block
    assert engine.theta.shape[0] >= 10 * block
    assert engine.dims[-1] // cpu._MIN_BLOCK_ROWS >= 2


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_completion_loss_blocks_match_reference(tall_completion, depth):
    p = tall_completion
    ser, par = _pair(p, depth, "gd", seed=depth)
    _check_blocks(ser, BLOCK)
    ref_loss, ref_grads = reference_loss_and_grad(ser.factors(), p.rows, p.cols, p.values)
    loss_s = _loss(ser, cpu.SERIAL, BLOCK)
    loss_p = _loss(par, cpu.PARALLEL, BLOCK)
    assert loss_s == loss_p
    np.testing.assert_array_equal(ser.grad, par.grad)
    assert loss_s == pytest.approx(ref_loss, rel=1e-12)
    for g, r in zip(ser.grads(), ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-14 * np.abs(r).max())
    # one block (the default) sums the same numbers in another grouping
    assert _loss(ser, cpu.SERIAL, cpu._BLOCK) == pytest.approx(loss_s, rel=1e-13)


@pytest.mark.parametrize(
    ("depth", "optimizer"), [(1, "grouprmsprop"), (2, "adam"), (3, "grouprmsprop"), (3, "gd")]
)
def test_completion_run_serial_equals_parallel(tall_completion, depth, optimizer):
    ser, par = _pair(tall_completion, depth, optimizer, seed=10 + depth)
    _check_blocks(ser, BLOCK)
    start = ser.theta.copy()
    out_s = _steps(ser, cpu.SERIAL, STEPS, BLOCK)
    out_p = _steps(par, cpu.PARALLEL, STEPS, BLOCK)
    assert out_s == out_p
    assert out_s[:2] == (STEPS, cpu.RUNNING)
    _assert_same_state(ser, par)
    # the update reached every block of parameters
    moved = (ser.theta != start).reshape(-1)
    assert all(moved[k : k + BLOCK].any() for k in range(0, moved.size, BLOCK))


def test_update_blocks_match_one_block(tall_completion):
    """A GroupRMSprop step over 37 blocks of parameters equals the single-block step to
    rounding (the squared gradient norm is summed in another grouping) and, serial against
    parallel, bit for bit."""
    a, b = _pair(tall_completion, 3, "grouprmsprop", seed=5)
    c, _ = _pair(tall_completion, 3, "grouprmsprop", seed=5)
    for e in (a, b, c):
        _loss(e, cpu.SERIAL, BLOCK)
    cpu.SERIAL.update(a.theta, a.grad, a.spec.code, a.hyper, a.ostate, a.scalars, BLOCK)
    cpu.PARALLEL.update(b.theta, b.grad, b.spec.code, b.hyper, b.ostate, b.scalars, BLOCK)
    _assert_same_state(a, b)
    # the default block size, given as the library gives it (an omitted argument would
    # compile update once more, for this call alone)
    cpu.SERIAL.update(c.theta, c.grad, c.spec.code, c.hyper, c.ostate, c.scalars, cpu._BLOCK)
    np.testing.assert_allclose(a.theta, c.theta, rtol=1e-13, atol=0)
    assert a.scalars[1] == pytest.approx(np.sum(a.grad**2) * (1 - a.hyper[1]), rel=1e-13)


@pytest.mark.parametrize(("depth", "optimizer"), [(1, "adam"), (2, "grouprmsprop"), (3, "gd")])
def test_sensing_serial_equals_parallel(small_sensing, depth, optimizer):
    p = small_sensing
    ser, par = _pair(p, depth, optimizer, seed=20 + depth)
    assert ser.kernels is sensing.PARALLEL and ser.nblk == config.DENSE_BLOCKS > 1
    assert ser.rowloss.shape[0] >= 3 * BLOCK and ser.theta.shape[0] >= 3 * BLOCK
    loss_s = _loss(ser, sensing.SERIAL, BLOCK)
    loss_p = _loss(par, sensing.PARALLEL, BLOCK)
    assert loss_s == loss_p
    np.testing.assert_array_equal(ser.grad, par.grad)
    amat = p.operator.reshape((-1, *p.shape))
    ref_loss, ref_grads = sensing_loss_and_grad(ser.factors(), amat, p.y)
    assert loss_s == pytest.approx(ref_loss, rel=1e-12)
    for g, r in zip(ser.grads(), ref_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-14 * np.abs(r).max())
    out_s = _steps(ser, sensing.SERIAL, STEPS, BLOCK)
    out_p = _steps(par, sensing.PARALLEL, STEPS, BLOCK)
    assert out_s == out_p and out_s[:2] == (STEPS, cpu.RUNNING)
    _assert_same_state(ser, par)
