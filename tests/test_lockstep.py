"""fit_batch(..., lockstep=True): sensing flows advanced one evaluation per round, all trials'
operator products as matrix-matrix products. The many-trial evaluation matches the serial
kernel; the integrators, fed the serial kernel's gradients, are the compiled ones bit for
bit; with the many-trial evaluation a trial equals its serial flow within rounding."""

import numpy as np
import pytest

import fastdmf
from fastdmf import batch_flow, lockstep
from fastdmf.factors import FactorLayout
from fastdmf.kernels import flow_batch, sensing

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


def _serial_groups(parts, scratch):
    """The serial kernel for every group of trials (``run_lockstep_groups``' evaluation)."""
    return [_serial_evaluate(*part, scratch) for part in parts]


FLOW_KW = dict(depth=2, max_time=60.0, record=4.0, tol=1e-9, max_steps=6_000)
SEEDS, SCALES = [0, 1, 2], [1e-2, 1e-3, 3e-1]


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_lockstep_integrators_equal_the_compiled_ones_bit_for_bit(small, method, monkeypatch):
    def run(evaluate, groups):
        return lockstep.run_lockstep_groups(_serial_groups, groups)

    opts = {"rtol": [1e-6, 1e-4, 1e-5]}
    kw = dict(FLOW_KW, optimizer=method, seeds=SEEDS, init_scale=SCALES, optimizer_options=opts)
    compiled = fastdmf.fit_batch(small, **kw)
    monkeypatch.setattr(batch_flow, "run_lockstep_groups", run)
    stepped = fastdmf.fit_batch(small, **kw, lockstep=True)
    for a, b in zip(compiled, stepped, strict=True):
        assert_same_fit(a, b)
    assert {r.status for r in stepped} == {"max_time"}
    assert min(r.n_steps for r in stepped) > 20


def test_lockstep_budget_and_divergence_stop_a_trial_alone(small, monkeypatch):
    """One trial's tolerance of 1e6 accepts any step (it diverges), one's 1e-11 exhausts the
    budget, one converges: each stops alone, with the compiled batch's result."""

    def run(evaluate, groups):
        return lockstep.run_lockstep_groups(_serial_groups, groups)

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
    monkeypatch.setattr(batch_flow, "run_lockstep_groups", run)
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


def test_single_group_runner_equals_the_group_runner(small):
    """run_lockstep_flow (one stack of trials, a one-group evaluation) is the group runner
    with one group: fed the serial kernel, the compiled batch bit for bit."""
    kw = dict(FLOW_KW, optimizer="flow", seeds=SEEDS, init_scale=SCALES)
    compiled = fastdmf.fit_batch(small, **kw)
    calls = []

    def run(evaluate, groups):
        (head,) = groups
        calls.append(len(groups))
        return lockstep.run_lockstep_flow(_serial_evaluate, *head)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch_flow, "run_lockstep_groups", run)
        stepped = fastdmf.fit_batch(small, **kw, lockstep=True)
    assert calls and set(calls) == {1}
    for a, b in zip(compiled, stepped, strict=True):
        assert_same_fit(a, b)


DEPTHS = [1, 3, 2, 3, 2]


@pytest.fixture(scope="module")
def mixed():
    """Per-trial depths: the flows batched per depth, the lock-step rounds shared by all."""
    kw = dict(
        {k: v for k, v in FLOW_KW.items() if k != "depth"},
        optimizer="flow",
        seeds=[0, 1, 2, 3, 4],
        init_scale=[1e-2, 1e-2, 3e-1, 1e-3, 1e-2],
    )
    problem = fastdmf.synthetic_sensing((7, 6), 2, 30, seed=3)
    each = {}
    for d in sorted(set(DEPTHS)):
        idx = [b for b, x in enumerate(DEPTHS) if x == d]
        sub = {**kw, "seeds": [kw["seeds"][b] for b in idx]}
        sub["init_scale"] = [kw["init_scale"][b] for b in idx]
        each[d] = (idx, sub)
    return problem, kw, each


def test_per_trial_depths_equal_one_batch_per_depth_bit_for_bit(mixed):
    """fit_batch(depth=[...]) with the flow: each trial is the one-depth batch's trial (the
    serial kernels, per depth), bit for bit, in the caller's order; settings keep its depth."""
    problem, kw, each = mixed
    together = fastdmf.fit_batch(problem, DEPTHS, **kw)
    for d, (idx, sub) in each.items():
        alone = fastdmf.fit_batch(problem, d, **{**kw, **sub})
        for b, a in zip(idx, alone, strict=True):
            assert_same_fit(a, together[b])
            assert together[b].settings["arguments"]["depth"] == d == len(together[b].factors)


def test_per_trial_depths_share_the_lockstep_rounds(mixed):
    """With lockstep=True every depth's trials are evaluated in the same rounds (one pair of
    operator products for all): each trial equals its one-depth lock-step batch within
    rounding (the products' sums change with the number of trials in a round)."""
    problem, kw, each = mixed
    sizes = []
    products = flow_batch.sensing_products_many

    def spy(amat, y, wt, *rest):
        sizes.append(wt.shape[0])
        return products(amat, y, wt, *rest)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flow_batch, "sensing_products_many", spy)
        together = fastdmf.fit_batch(problem, DEPTHS, **kw, lockstep=True)
    assert sizes[0] == len(DEPTHS)  # the first round: every trial of every depth at once
    for d, (idx, sub) in each.items():
        alone = fastdmf.fit_batch(problem, d, **{**kw, **sub}, lockstep=True)
        for b, a in zip(idx, alone, strict=True):
            got = together[b]
            assert got.status == a.status and got.settings["kernels"] == "lockstep (batched)"
            np.testing.assert_allclose(got.trajectory.time, a.trajectory.time, rtol=1e-12)
            np.testing.assert_allclose(
                got.matrix(), a.matrix(), rtol=0, atol=1e-7 * abs(a.matrix()).max()
            )


def test_per_trial_depth_errors(small):
    base = dict(seeds=[0, 1], max_steps=5)
    with pytest.raises(ValueError, match="needs a flow optimiser"):
        fastdmf.fit_batch(small, [2, 3], **base)
    with pytest.raises(ValueError, match=r"one depth per seed \(2\), got 3"):
        fastdmf.fit_batch(small, [2, 3, 2], **base, optimizer="flow", max_time=1.0)
    with pytest.raises(TypeError, match="one int per seed"):
        fastdmf.fit_batch(small, [2, 2.5], **base, optimizer="flow", max_time=1.0)
    with pytest.raises(ValueError, match="widths must be None or one width"):
        fastdmf.fit_batch(small, [2, 3], **base, widths=[4], optimizer="flow", max_time=1.0)
    # one depth given as a list is that depth, for every optimiser
    one = fastdmf.fit_batch(small, [2, 2], **base)
    assert [len(r.factors) for r in one] == [2, 2]
