"""fit_batch(..., lockstep=True): sensing flows advanced one evaluation per round, all trials'
operator products as matrix-matrix products. The many-trial evaluation matches the serial
kernel; the integrators, fed the serial kernel's gradients, are the compiled ones bit for
bit; with the many-trial evaluation a trial equals its serial flow within rounding."""

import numpy as np
import pytest

import fastdmf
from fastdmf import batch_flow, lockstep
from fastdmf.factors import FactorLayout
from fastdmf.kernels import sensing

from .test_batch_flow import assert_same_fit


@pytest.fixture(scope="module")
def small():
    return fastdmf.synthetic_sensing((7, 6), 2, 30, seed=3)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_many_trial_evaluation_matches_the_serial_kernel(small, depth, dtype):
    lay = FactorLayout.build(small.shape, depth, widths=[5] * (depth - 1))
    kernels, nblk, obs, work, resid = sensing.prepare(small, lay, np.dtype(dtype))
    dims, offs = np.array(lay.dims), lay.offsets
    rng = np.random.default_rng(depth)
    thetas = rng.normal(size=(4, lay.size)).astype(dtype)
    grads = np.full_like(thetas, np.nan)
    works = np.zeros((4, work.size), dtype=dtype)
    idx = np.array([3, 0, 2])  # trial 1 is not evaluated: its row must stay as it was
    scratch = {}  # buffers sized for all four trials first, then reused for three
    every = np.arange(4)
    lockstep.sensing_losses_and_grads(
        thetas, np.empty_like(thetas), works, dims, offs, obs, every, scratch
    )
    losses = lockstep.sensing_losses_and_grads(thetas, grads, works, dims, offs, obs, idx, scratch)
    assert np.all(np.isnan(grads[1]))
    rtol = 1e-12 if dtype == "float64" else 2e-5
    for t, b in enumerate(idx):
        ref = np.zeros(lay.size, dtype=dtype)
        loss = kernels.loss_and_grad(
            thetas[b].copy(), ref, work, dims, offs, obs, resid, 2.0 / small.n_observed, nblk
        )
        # and the loss from its definition, mean((<A_k, W> - y_k)^2)
        w = np.eye(small.shape[1])
        for f in lay.unpack(thetas[b].astype(np.float64)):
            w = f @ w
        direct = np.mean((small.operator @ w.ravel() - small.y) ** 2)
        np.testing.assert_allclose(losses[t], loss, rtol=rtol)
        np.testing.assert_allclose(losses[t], direct, rtol=rtol if dtype == "float64" else 1e-5)
        np.testing.assert_allclose(grads[b], ref, rtol=0, atol=rtol * np.abs(ref).max())


def _serial_evaluate(thetas, grads, works, dims, offs, obs, idx, scratch):
    """The serial kernel, trial by trial: the evaluations of fit_batch without lockstep."""
    resid = np.empty(obs[0].shape[0], dtype=thetas.dtype)
    scale = 2.0 / obs[0].shape[0]
    return np.array(
        [
            sensing.SERIAL.loss_and_grad(
                thetas[b], grads[b], works[b], dims, offs, obs, resid, scale, 1
            )
            for b in idx
        ]
    )


FLOW_KW = dict(depth=2, max_time=60.0, record=4.0, tol=1e-9, max_steps=6_000)
SEEDS, SCALES = [0, 1, 2], [1e-2, 1e-3, 3e-1]


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_lockstep_integrators_equal_the_compiled_ones_bit_for_bit(small, method, monkeypatch):
    def run(evaluate, *call):
        return lockstep.run_lockstep_flow(_serial_evaluate, *call)

    opts = {"rtol": [1e-6, 1e-4, 1e-5]}
    kw = dict(FLOW_KW, optimizer=method, seeds=SEEDS, init_scale=SCALES, optimizer_options=opts)
    compiled = fastdmf.fit_batch(small, **kw)
    monkeypatch.setattr(batch_flow, "run_lockstep_flow", run)
    stepped = fastdmf.fit_batch(small, **kw, lockstep=True)
    for a, b in zip(compiled, stepped, strict=True):
        assert_same_fit(a, b)
    assert {r.status for r in stepped} == {"max_time"}
    assert min(r.n_steps for r in stepped) > 20


def test_lockstep_budget_and_divergence_stop_a_trial_alone(small, monkeypatch):
    """One trial's tolerance of 1e6 accepts any step (it diverges), one's 1e-11 exhausts the
    budget, one converges: each stops alone, with the compiled batch's result."""

    def run(evaluate, *call):
        return lockstep.run_lockstep_flow(_serial_evaluate, *call)

    kw = dict(
        depth=2,
        optimizer="flow_dopri5",
        seeds=[0, 0, 0],
        init_scale=0.5,
        lr=[1e-3, 10.0, 1e-3],
        max_time=1e4,
        record=20.0,
        tol=1e-6,
        max_steps=3_000,
        optimizer_options={"rtol": [1e-5, 1e6, 1e-11], "atol": [1e-8, 1e6, 1e-14]},
    )
    with pytest.warns(RuntimeWarning, match="diverged"):
        compiled = fastdmf.fit_batch(small, **kw)
    monkeypatch.setattr(batch_flow, "run_lockstep_flow", run)
    with pytest.warns(RuntimeWarning, match="diverged"):
        stepped = fastdmf.fit_batch(small, **kw, lockstep=True)
    assert [r.status for r in stepped] == ["converged", "diverged", "max_steps"]
    for a, b in zip(compiled, stepped, strict=True):
        assert_same_fit(a, b)


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_lockstep_fit_batch_equals_serial_flows_within_rounding(small, method):
    kw = dict(FLOW_KW, optimizer=method, seeds=SEEDS, init_scale=SCALES)
    serial = fastdmf.fit_batch(small, **kw)
    together = fastdmf.fit_batch(small, **kw, lockstep=True)
    for a, b in zip(serial, together, strict=True):
        assert b.status == a.status == "max_time"
        assert (a.settings["kernels"], b.settings["kernels"]) == (
            "serial (batched)",
            "lockstep (batched)",
        )
        np.testing.assert_allclose(b.trajectory.time, a.trajectory.time, rtol=1e-12)
        np.testing.assert_allclose(
            b.matrix(), a.matrix(), rtol=0, atol=1e-7 * abs(a.matrix()).max()
        )
        np.testing.assert_allclose(
            b.trajectory.train_loss, a.trajectory.train_loss, rtol=1e-6, atol=1e-14
        )
        assert (
            abs(b.trajectory.n_evals[-1] - a.trajectory.n_evals[-1])
            <= 0.02 * a.trajectory.n_evals[-1]
        )


def test_lockstep_argument_errors(small):
    with pytest.raises(ValueError, match="not a flow"):
        fastdmf.fit_batch(small, depth=2, seeds=[0, 1], max_steps=5, lockstep=True)
    square = fastdmf.synthetic_completion((8, 8), 2, 30, seed=0)
    with pytest.raises(ValueError, match="no such evaluation: leave lockstep=False"):
        fastdmf.fit_batch(
            square, depth=2, seeds=[0, 1], optimizer="flow", max_time=1.0, lockstep=True
        )
