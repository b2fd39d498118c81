"""fit_batch with the flow optimisers: each trial integrated together with the others equals
its serial flow fit bit for bit, with its own end time, tolerances and status; checkpoints of
a batched flow resume bit for bit."""

import types
from pathlib import Path

import numpy as np
import pytest

import fastdmf
from fastdmf import batch_flow
from fastdmf.checkpoint import read_checkpoint


def assert_same_fit(a, b):
    assert a.status == b.status and a.n_steps == b.n_steps
    for wa, wb in zip(a.factors, b.factors, strict=True):
        np.testing.assert_array_equal(wa, wb)
    da, db = a.trajectory.as_dict(), b.trajectory.as_dict()
    assert set(da) == set(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)


def serial(problem, trial, **kw):
    """The serial flow fit of one trial (trial: per-trial keyword arguments)."""
    return fastdmf.fit(problem, parallel=False, progress=False, **kw, **trial)


TRIALS = [  # seed, init scale, first step, end time, tolerances: all per trial
    dict(seed=0, init_scale=1e-2, lr=1e-3, max_time=40.0, optimizer_options={"rtol": 1e-6}),
    dict(seed=1, init_scale=1e-3, lr=1e-2, max_time=70.0, optimizer_options={"rtol": 1e-5}),
    dict(
        seed=2,
        init_scale=1e-2,
        lr=1e-3,
        max_time=25.0,
        optimizer_options={"rtol": 1e-4, "atol": 1e-7},
    ),
]


def batched(problem, trials, **kw):
    col = {k: [t[k] for t in trials] for k in ("seed", "init_scale", "lr", "max_time")}
    opts = {
        k: [t["optimizer_options"].get(k, d) for t in trials]
        for k, d in (("rtol", 1e-6), ("atol", 1e-9))
    }
    return fastdmf.fit_batch(
        problem,
        seeds=col["seed"],
        init_scale=col["init_scale"],
        lr=col["lr"],
        max_time=col["max_time"],
        optimizer_options=opts,
        **kw,
    )


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_batched_flow_equals_serial_flow_fits(square, method):
    kw = dict(depth=3, optimizer=method, tol=1e-6, record=5.0, max_steps=20_000)
    res = batched(square, TRIALS, n_threads=2, **kw)
    for got, trial in zip(res, TRIALS, strict=True):
        ref = serial(
            square,
            {**trial, "optimizer_options": {"atol": 1e-9, **trial["optimizer_options"]}},
            **kw,
        )
        assert_same_fit(got, ref)
        # the records sit on the trial's own flow times, up to its own end
        assert got.trajectory.time[-1] == trial["max_time"] and got.status == "max_time"
        args = got.settings["arguments"]
        assert args["max_time"] == trial["max_time"] and args["seed"] == trial["seed"]
        assert args["optimizer_options"]["rtol"] == trial["optimizer_options"]["rtol"]
    # the tolerances steer each trial: the loosest spends the fewest evaluations per time
    per_time = [r.trajectory.n_evals[-1] / t["max_time"] for r, t in zip(res, TRIALS)]
    assert per_time[2] < per_time[0]


def test_a_trial_out_of_budget_stops_alone(square):
    """A tight tolerance exhausts the evaluation budget; the loose trial goes on to converge."""
    kw = dict(depth=2, optimizer="flow", tol=1e-6, record=None, max_steps=400, max_time=1e5)
    res = fastdmf.fit_batch(
        square, seeds=[0, 0], optimizer_options={"rtol": [1e-3, 1e-11], "atol": [1e-6, 1e-14]}, **kw
    )
    assert [r.status for r in res] == ["converged", "max_steps"]
    assert res[1].trajectory.n_evals[-1] <= 400
    for got, rtol, atol in zip(res, [1e-3, 1e-11], [1e-6, 1e-14]):
        assert_same_fit(
            got,
            serial(square, {"seed": 0, "optimizer_options": {"rtol": rtol, "atol": atol}}, **kw),
        )


def test_a_diverging_flow_trial_stops_alone(square):
    """Tolerances of 1e6 accept any step: the second trial's loss leaves the divergence cap,
    it returns to its last good record with status "diverged" while the first goes on."""
    kw = dict(
        depth=2,
        optimizer="flow_dopri5",
        max_time=200.0,
        init_scale=0.5,
        record=20.0,
        tol=1e-8,
        max_steps=50_000,
    )
    opts = {"rtol": [1e-6, 1e6], "atol": [1e-9, 1e6]}
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = fastdmf.fit_batch(square, seeds=[0, 0], lr=[1e-3, 10.0], optimizer_options=opts, **kw)
    assert res[1].status == "diverged" and res[0].status in ("converged", "max_time")
    assert np.all(np.isfinite(res[1].factors[0]))
    assert res[0].trajectory.time[-1] > res[1].trajectory.time[-1]
    assert_same_fit(res[0], serial(square, {"seed": 0, "lr": 1e-3}, **kw))
    with pytest.warns(RuntimeWarning, match="diverged"):
        alone = serial(
            square, {"seed": 0, "lr": 10.0, "optimizer_options": {"rtol": 1e6, "atol": 1e6}}, **kw
        )
    assert_same_fit(res[1], alone)


def test_batched_sensing_flow_equals_serial():
    s = fastdmf.synthetic_sensing((6, 5), 1, 24, seed=1)
    kw = dict(depth=2, optimizer="flow", max_time=30.0, record=3.0, tol=1e-8, max_steps=20_000)
    res = fastdmf.fit_batch(s, seeds=[0, 1], init_scale=[1e-2, 1e-3], **kw)
    for got, seed, scale in zip(res, [0, 1], [1e-2, 1e-3]):
        assert_same_fit(got, serial(s, {"seed": seed, "init_scale": scale}, **kw))


def test_batched_flow_early_stopping_equals_serial():
    """Validation entries: each trial keeps its best record, as the serial fit does."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((15, 4)) @ rng.standard_normal((4, 12))
    x += 0.3 * rng.standard_normal(x.shape)
    x[rng.random(x.shape) < 0.4] = np.nan
    kw = dict(depth=2, optimizer="flow", max_time=400.0, record=10.0, patience=3, max_steps=50_000)
    res = fastdmf.fit_batch(x, seeds=[0, 1], init_scale=1e-2, **kw)
    for got, seed in zip(res, [0, 1]):
        ref = fastdmf.fit(x, seed=seed, init_scale=1e-2, parallel=False, progress=False, **kw)
        assert_same_fit(got, ref)
        np.testing.assert_array_equal(got.predict([0, 3], [1, 2]), ref.predict([0, 3], [1, 2]))


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_batched_flow_checkpoints_resume_bit_for_bit(square, tmp_path, monkeypatch, method):
    """Interrupted after a few compiled calls, every trial's checkpoint resumes (fastdmf.resume,
    serially) to exactly the uninterrupted batch's result; finished trials return theirs."""
    kw = dict(depth=3, optimizer=method, tol=1e-6, record=4.0, max_steps=20_000)
    ref = batched(square, TRIALS, **kw)
    real, calls = batch_flow.run_batch_flow, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) > 6:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(batch_flow, "run_batch_flow", interrupted)
    path = tmp_path / "batch.ckpt"
    with pytest.raises(KeyboardInterrupt):
        batched(square, TRIALS, checkpoint=path, checkpoint_every=1, **kw)
    monkeypatch.undo()
    files = [f"{path}.{b}" for b in range(len(TRIALS))]
    copies = [tmp_path / f"copy{b}" for b in range(len(TRIALS))]
    for f, c in zip(files, copies):
        c.write_bytes(Path(f).read_bytes())
    # all together: fastdmf.resume_batch, then each alone: fastdmf.resume
    for got, want in zip(fastdmf.resume_batch(copies, n_threads=2), ref, strict=True):
        assert_same_fit(got, want)
    for b, want in enumerate(ref):
        state, _ = read_checkpoint(files[b])
        assert state["status"] is None and 0 < state["n_steps"] < want.n_steps
        got = fastdmf.resume(files[b])
        assert_same_fit(got, want)
        assert read_checkpoint(f"{path}.{b}")[0]["status"] == want.status
    # a finished batch's checkpoints, one path per trial, hold the final results
    paths = [tmp_path / f"t{b}.npz" for b in range(len(TRIALS))]
    done = batched(square, TRIALS, checkpoint=paths, **kw)
    for p, want, got in zip(paths, ref, done, strict=True):
        assert_same_fit(got, want)
        assert_same_fit(fastdmf.resume(p), want)
    for got, want in zip(fastdmf.resume_batch(paths), ref, strict=True):
        assert_same_fit(got, want)
    with pytest.raises(ValueError, match="not a trial of the same batch"):
        other = tmp_path / "other.ckpt"
        fastdmf.fit(
            fastdmf.synthetic_completion((9, 8), 2, 40, seed=0),
            depth=3,
            optimizer=method,
            max_time=1.0,
            seed=0,
            checkpoint=other,
            progress=False,
        )
        fastdmf.resume_batch([paths[0], other])


def test_batched_flow_argument_errors(square, tmp_path):
    with pytest.raises(ValueError, match="give max_time="):
        fastdmf.fit_batch(square, seeds=[0, 1], optimizer="flow")
    with pytest.raises(ValueError, match="one value per seed"):
        fastdmf.fit_batch(square, seeds=[0, 1], optimizer="flow", max_time=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="give max_time="):
        fastdmf.fit_batch(square, seeds=[0, 1], optimizer="flow", max_time=[1.0, np.inf])
    with pytest.raises(ValueError, match="optimizer option rtol must be a scalar or one"):
        fastdmf.fit_batch(
            square, seeds=[0, 1], optimizer="flow", max_time=1.0, optimizer_options={"rtol": [1e-6]}
        )
    with pytest.raises(ValueError, match="rtol must be > 0"):
        fastdmf.fit_batch(
            square,
            seeds=[0, 1],
            optimizer="flow",
            max_time=1.0,
            optimizer_options={"rtol": [1e-6, 0.0]},
        )
    with pytest.raises(ValueError, match="run on the CPU only"):
        fastdmf.fit_batch(square, seeds=[0, 1], optimizer="flow", max_time=1.0, backend="cuda")
    with pytest.raises(ValueError, match="max_time= applies to optimizer='flow'"):
        fastdmf.fit_batch(square, seeds=[0], max_time=1.0)
    with pytest.raises(ValueError, match="checkpoints for the flow optimisers"):
        fastdmf.fit_batch(square, seeds=[0], checkpoint=tmp_path / "x")
    with pytest.raises(ValueError, match="one per seed"):
        fastdmf.fit_batch(
            square, seeds=[0, 1], optimizer="flow", max_time=1.0, checkpoint=[tmp_path / "a"]
        )
    with pytest.raises(ValueError, match="does not exist"):
        fastdmf.fit_batch(
            square, seeds=[0], optimizer="flow", max_time=1.0, checkpoint=tmp_path / "no" / "x"
        )


def test_per_trial_options_of_the_discrete_optimisers(square):
    """Options given per trial reach each trial of the discrete optimisers too."""
    kw = dict(depth=2, optimizer="grouprmsprop", lr=1e-2, max_steps=300, record=100)
    res = fastdmf.fit_batch(square, seeds=[0, 0], optimizer_options={"alpha": [0.9, 0.99]}, **kw)
    for got, alpha in zip(res, [0.9, 0.99]):
        assert_same_fit(
            got,
            fastdmf.fit(
                square,
                seed=0,
                parallel=False,
                progress=False,
                optimizer_options={"alpha": alpha},
                **kw,
            ),
        )
    assert not np.array_equal(res[0].factors[0], res[1].factors[0])


def test_a_kind_without_a_batched_flow_is_refused(square):
    """A kind whose table entry names no batch_flow: fit_batch says to fit per trial."""
    import dataclasses

    from fastdmf import _kinds

    bare = dataclasses.replace(_kinds.COMPLETION, batch_flow=None)
    with pytest.raises(ValueError, match="no batched flow for a completion problem"):
        batch_flow.run_batch_flow(bare)
    plans = [
        fastdmf._plan.plan(bare, square.shape, depth=2, optimizer="flow", max_time=1.0).trial(
            0, 1e-3, 1e-3
        )
    ]
    data = fastdmf._plan.FitData(square)
    with pytest.raises(ValueError, match="fastdmf.fit\\(..., optimizer='flow'\\) per trial"):
        batch_flow.fit_batch_flow(data, plans, [{}])


def test_trials_start_longest_first_and_return_in_the_callers_order(square):
    """The compiled call starts the trials smallest init scale first (the longest flows),
    ties in the caller's order; the results stay in the caller's order, each its own serial
    fit (TRIALS start as 1, 0, 2)."""
    kw = dict(depth=3, optimizer="flow", tol=1e-6, record=None, max_steps=20_000)
    seen = []
    real = batch_flow.launch_order

    def spy(runs, active):
        got = real(runs, active)
        seen.append([(runs[b].plan.seed, runs[b].plan.init_scale) for b in got])
        return got

    scales = [1e-2, 1e-3, 1e-2, 1e-4, 1e-3]
    trials = [{**TRIALS[b % 3], "seed": b, "init_scale": a} for b, a in enumerate(scales)]
    want = sorted(range(5), key=lambda b: (scales[b], b))  # an independent stable sort
    assert want == [3, 1, 4, 0, 2]
    try:
        batch_flow.launch_order = spy
        res = batched(square, trials, n_threads=2, **kw)
    finally:
        batch_flow.launch_order = real
    assert seen[0] == [(b, scales[b]) for b in want]
    for got, trial in zip(res, trials, strict=True):
        ref = serial(
            square,
            {**trial, "optimizer_options": {"atol": 1e-9, **trial["optimizer_options"]}},
            **kw,
        )
        assert got.settings["arguments"]["seed"] == trial["seed"]
        assert_same_fit(got, ref)
    # only the active trials are started
    active = np.array([True, False, True, True, False])
    runs = [types.SimpleNamespace(plan=types.SimpleNamespace(init_scale=a)) for a in scales]
    np.testing.assert_array_equal(batch_flow.launch_order(runs, active), [3, 0, 2])


def test_the_work_queue_hands_out_every_ticket_once():
    """fetch_add, the trials' work queue: threads drawing tickets concurrently get each of
    0 .. n-1 exactly once, and the counter ends at n plus one failed draw per task."""
    import numba

    from fastdmf.kernels.flow_batch import fetch_add

    @numba.njit(parallel=True)
    def draw(n, taken, by, out):
        ticket = np.empty(1, np.int64)
        ticket[0] = 0
        tasks = min(numba.get_num_threads(), n)
        for w in numba.prange(tasks):
            i = fetch_add(ticket)
            while i < n:
                taken[i] += 1
                by[i] = w
                s = 0.0
                for j in range(50_000):  # some work, so that the tasks overlap
                    s += np.sqrt(j + i)
                out[i] = s
                i = fetch_add(ticket)
        return ticket[0], tasks

    n = 2000
    taken, by, out = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n)
    old = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        end, tasks = draw(n, taken, by, out)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(taken, 1)
    assert out[7] == pytest.approx(np.sqrt(np.arange(50_000) + 7.0).sum(), rel=1e-12)
    assert end == n + tasks
    if tasks == 2:  # both tasks drew tickets
        assert set(np.unique(by)) == {0, 1}
