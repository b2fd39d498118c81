"""optimizer="flow" (RKC) and "flow_dopri5": adaptive integration of the gradient flow."""

import numpy as np
import pytest

import fastdmf
from fastdmf.trajectory import time_schedule

FLOW = dict(depth=3, init_scale=0.5, seed=0, tol=0)


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_flow_is_the_small_step_limit_of_gd(square, method):
    """GD with step h is forward Euler: its error is O(h), so the Richardson extrapolation
    2 GD(h) - GD(2h) is O(h^2) from the flow. The integrated flow must match it."""
    T, h = 20.0, 1e-3
    gd = [
        fastdmf.fit(square, optimizer="gd", lr=lr, max_steps=round(T / lr), record=None, **FLOW)
        for lr in (h, 2 * h)
    ]
    extrap = 2 * gd[0].matrix() - gd[1].matrix()
    flow = fastdmf.fit(
        square,
        optimizer=method,
        lr=1e-3,
        max_time=T,
        record=None,
        optimizer_options={"rtol": 1e-9, "atol": 1e-12},
        **FLOW,
    )
    assert flow.status == "max_time"
    assert flow.trajectory.time[-1] == T
    rel = np.linalg.norm(flow.matrix() - extrap) / np.linalg.norm(extrap)
    gd_rel = np.linalg.norm(gd[0].matrix() - extrap) / np.linalg.norm(extrap)
    assert rel < 1e-6 < gd_rel
    # at rtol 1e-9 the fifth-order pair is far cheaper than second-order RKC
    assert flow.trajectory.n_evals[-1] < {"flow": 0.4, "flow_dopri5": 0.05}[method] * T / h


def test_records_land_on_the_requested_times(square):
    res = fastdmf.fit(
        square, optimizer="flow_dopri5", lr=1e-3, max_time=8.0, record=[0.5, 2.0, 3.0], **FLOW
    )
    np.testing.assert_array_equal(res.trajectory.time, [0.0, 0.5, 2.0, 3.0, 8.0])
    steps, evals = res.trajectory.step, res.trajectory.n_evals
    assert np.all(np.diff(steps) > 0) and np.all(np.diff(evals) >= 6)
    # one evaluation to start, six per attempted step (accepted or rejected)
    assert (evals[-1] - 1) % 6 == 0 and evals[-1] >= 1 + 6 * steps[-1]


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_tolerance_controls_the_error(square, method):
    ref = fastdmf.fit(
        square,
        optimizer="flow_dopri5",
        lr=1e-3,
        max_time=10.0,
        record=None,
        optimizer_options={"rtol": 1e-11, "atol": 1e-14},
        **FLOW,
    )
    errs, evals = [], []
    for rtol in (1e-4, 1e-7):
        res = fastdmf.fit(
            square,
            optimizer=method,
            lr=1e-3,
            max_time=10.0,
            record=None,
            optimizer_options={"rtol": rtol, "atol": rtol * 1e-3},
            **FLOW,
        )
        errs.append(np.linalg.norm(res.matrix() - ref.matrix()) / np.linalg.norm(ref.matrix()))
        evals.append(res.trajectory.n_evals[-1])
    # local error control: the global error at rtol 1e-7 stays within a small multiple
    assert errs[1] < errs[0] and errs[1] < {"flow": 1e-5, "flow_dopri5": 1e-6}[method]
    assert evals[1] > evals[0]


def test_flow_converges_to_tol_and_counts_budget(square):
    res = fastdmf.fit(
        square,
        optimizer="flow",
        lr=1e-3,
        max_time=1e6,
        record=None,
        depth=2,
        init_scale=0.5,
        seed=0,
        tol=1e-8,
    )
    assert res.status == "converged" and res.train_loss <= 1e-8
    short = fastdmf.fit(
        square,
        optimizer="flow",
        lr=1e-3,
        max_time=1e6,
        record=None,
        depth=2,
        init_scale=0.5,
        seed=0,
        tol=1e-8,
        max_steps=61,
    )
    assert short.status == "max_steps" and short.trajectory.n_evals[-1] <= 61


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_flow_parallel_matches_serial(square, method):
    kw = dict(optimizer=method, lr=1e-3, max_time=5.0, record=None, **FLOW)
    a = fastdmf.fit(square, parallel=False, **kw)
    b = fastdmf.fit(square, parallel=True, **kw)
    np.testing.assert_allclose(a.matrix(), b.matrix(), rtol=1e-9, atol=1e-12)


def test_flow_argument_errors(square):
    with pytest.raises(ValueError, match="give max_time"):
        fastdmf.fit(square, optimizer="flow", max_steps=10)
    with pytest.raises(ValueError, match="applies to optimizer='flow'"):
        fastdmf.fit(square, optimizer="gd", max_time=1.0)
    with pytest.raises(ValueError, match="interval must be positive"):
        fastdmf.fit(square, optimizer="flow", max_time=1.0, record=-0.5)
    with pytest.raises(ValueError, match="rtol"):
        fastdmf.fit(square, optimizer="flow", max_time=1.0, optimizer_options={"rtol": 0.0})


def test_time_schedules():
    np.testing.assert_allclose(time_schedule(0.25, 1.0), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(time_schedule([3.0, 0.5, 9.0], 5.0), [0.0, 0.5, 3.0])
    log = time_schedule("log", 100.0)
    assert log[0] == 0 and log[1] == pytest.approx(1e-4) and log[-1] == pytest.approx(100.0)
    assert len(time_schedule(("log", 5), 1.0)) == 6
    np.testing.assert_array_equal(time_schedule(None, 3.0), [0.0])


def test_rkc_records_and_spectral_radius(square):
    """RKC lands on the record times too, and its stiffness estimate is the Hessian's largest
    eigenvalue (checked against a dense finite-difference Hessian)."""
    res = fastdmf.fit(square, optimizer="flow", lr=1e-3, max_time=8.0, record=[0.5, 2.0], **FLOW)
    np.testing.assert_array_equal(res.trajectory.time, [0.0, 0.5, 2.0, 8.0])

    from fastdmf.engine import Engine
    from fastdmf.factors import FactorLayout
    from fastdmf.kernels import flow

    layout = FactorLayout.build(square.shape, 2, [3])
    rng = np.random.default_rng(0)
    theta = layout.pack([rng.standard_normal((3, 12)), rng.standard_normal((12, 3))])
    spec = fastdmf.optim.get_optimizer("flow")
    eng = Engine(square, layout, theta, spec, spec.hyper(1e-3, {}))
    y, ks, fs = eng.flow
    eng.evaluate()
    ks[0] = -eng.grad
    rho = eng.kernels.spectral_radius(
        eng.theta, eng.grad, eng.work, eng.dims, eng.offs, eng.obs, eng.rowloss, eng.flow, eng.nblk
    )
    size, h = theta.size, 1e-6
    hess = np.empty((size, size))
    for i in range(size):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        gp = layout.pack(fastdmf.loss_and_grad(layout.unpack(tp), square)[1])
        gm = layout.pack(fastdmf.loss_and_grad(layout.unpack(tm), square)[1])
        hess[:, i] = (gp - gm) / (2 * h)
    lam = np.max(np.abs(np.linalg.eigvalsh((hess + hess.T) / 2)))
    # power iteration approaches lambda_max from below; the 1.2 safety factor covers that
    assert lam <= rho <= 1.2 * lam * 1.001
    assert fs[flow.RHO] == rho


@pytest.mark.slow
def test_rkc_beats_dopri5_at_the_stiff_end(paper):
    """The paper's problem to train loss 1e-6: both reach it at nearly the same flow time,
    RKC with far fewer gradient evaluations (Dormand-Prince is capped by stability there)."""
    kw = dict(depth=3, lr=1e-3, max_time=1e6, tol=1e-6, record=None, seed=0, max_steps=10**7)
    rkc = fastdmf.fit(paper, optimizer="flow", **kw)
    dp = fastdmf.fit(paper, optimizer="flow_dopri5", **kw)
    assert rkc.status == dp.status == "converged"
    assert rkc.trajectory.n_evals[-1] < 0.6 * dp.trajectory.n_evals[-1]
    np.testing.assert_allclose(
        rkc.trajectory.singular_values[-1][:5], dp.trajectory.singular_values[-1][:5], rtol=1e-4
    )


def test_time_schedule_takes_a_tuple_of_times():
    np.testing.assert_array_equal(time_schedule((0.5, 2.0), 3.0), [0.0, 0.5, 2.0])
    with pytest.raises(ValueError, match="positive count"):
        time_schedule(("log", 0), 3.0)


def test_flow_stops_when_a_step_no_longer_fits_the_budget(square, monkeypatch):
    """An RKC step may need more evaluations than the budget has left while the generic
    budget check still sees room: the fit ends with "max_steps" instead of asking again."""
    from fastdmf.engine import FlowEngine

    real = FlowEngine.run_flow
    calls = []

    def run_flow(self, t_end, max_evals, tol, loss_cap):
        calls.append(self.n_evals)
        if self.n_evals >= 40:  # pretend the next step needs more than what is left
            return 0, 0, float("nan")
        return real(self, t_end, min(max_evals, 40), tol, loss_cap)

    monkeypatch.setattr(FlowEngine, "run_flow", run_flow)
    res = fastdmf.fit(
        square, depth=2, optimizer="flow", max_time=1e6, max_steps=1000, record=None, seed=0
    )
    assert res.status == "max_steps"
    assert 30 <= res.trajectory.n_evals[-1] <= 40 and len(calls) <= 4


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
@pytest.mark.parametrize("budget", [3, 7, 60, 200])
def test_evaluations_never_exceed_the_budget(method, budget):
    """max_steps caps gradient evaluations, the stiffness estimates of RKC included."""
    p = fastdmf.synthetic_completion((8, 7), 2, 30, seed=0)
    res = fastdmf.fit(
        p,
        depth=3,
        optimizer=method,
        max_time=1e4,
        init_scale=0.1,
        max_steps=budget,
        seed=0,
        progress=False,
    )
    assert res.status == "max_steps" and res.trajectory.n_evals[-1] <= budget


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_float32_flow_follows_the_float64_flow(method):
    """The RKC stiffness probe moves a float32 state by more than its rounding (a probe of
    1e-7 relative left it unchanged: zero curvature seen, then a division by zero)."""
    s = fastdmf.synthetic_sensing((4, 3), 1, 20, seed=2)
    for seed in range(3):
        kw = dict(depth=1, optimizer=method, max_time=5.0, seed=seed, progress=False)
        r32 = fastdmf.fit(s, dtype="float32", **kw)
        r64 = fastdmf.fit(s, dtype="float64", **kw)
        assert r32.status == r64.status == "max_time"
        w32, w64 = r32.factors[0].astype(np.float64), r64.factors[0]
        assert np.abs(w32 - w64).max() <= 1e-3 * np.abs(w64).max()


def test_flow_divergence_advice_names_the_tolerances(square):
    with pytest.warns(RuntimeWarning, match=r"smaller tolerances than optimizer_options rtol"):
        res = fastdmf.fit(
            square,
            depth=2,
            optimizer="flow_dopri5",
            max_time=1e4,
            lr=10.0,
            init_scale=0.5,
            optimizer_options={"rtol": 1e6, "atol": 1e6},
            seed=0,
            progress=False,
        )
    assert res.status == "diverged"
