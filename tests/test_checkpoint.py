"""Checkpoints and resume: a fit killed (SIGKILL, Ctrl-C) and resumed from its last checkpoint
ends bit for bit where the uninterrupted fit ends."""

import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastdmf
from fastdmf.checkpoint import problem_from_arrays, problem_to_arrays, read_checkpoint

KW = dict(depth=3, lr=1e-2, max_steps=1200, record=100, seed=0, tol=1e-9)


def assert_same_fit(a, b):
    assert a.status == b.status and a.n_steps == b.n_steps
    for wa, wb in zip(a.factors, b.factors, strict=True):
        np.testing.assert_array_equal(wa, wb)
    da, db = a.trajectory.as_dict(), b.trajectory.as_dict()
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)


def _interrupt_at(step):
    def cb(record):
        if record["step"] >= step:
            raise KeyboardInterrupt

    return cb


CASES = {
    "grouprmsprop": dict(KW),
    "adam-depth1": dict(KW, depth=1, optimizer="adam", lr=1e-2),
    "record-none-chunks": dict(KW, record=None, max_steps=700),
    "flow": dict(
        depth=2, optimizer="flow", lr=1e-2, max_time=30.0, record=1.0, seed=1, max_steps=10_000
    ),
    "converges": dict(KW, tol=1e-3, max_steps=20_000),
    # a budget whose record steps are never listed (a Grid kept as two numbers)
    "huge-budget": dict(KW, tol=1e-3, max_steps=10**12),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_then_resume_is_bit_identical(square, tmp_path, case, monkeypatch):
    kw = CASES[case]
    if case == "record-none-chunks":  # no record points: checkpoints at chunk boundaries
        monkeypatch.setattr(fastdmf.config, "MAX_CHUNK_STEPS", 150)
    ref = fastdmf.fit(square, **kw)
    path = tmp_path / "fit.ckpt"
    every = 1 if case == "flow" else 200  # steps (accepted steps for the flow)
    cb = _interrupt_at(15.0 if case == "flow" else 500)  # Ctrl-C seen between chunks
    if case == "record-none-chunks":  # no records, no callbacks: interrupt at a chunk start
        real = fastdmf.engine.Engine.advance

        def advance(self, *args):
            if self.n_steps >= 450:
                raise KeyboardInterrupt
            return real(self, *args)

        monkeypatch.setattr(fastdmf.engine.Engine, "advance", advance)
        cb = None
    with pytest.raises(KeyboardInterrupt):
        fastdmf.fit(square, **kw, checkpoint=path, checkpoint_every=every, callback=cb)
    monkeypatch.undo()
    state, _ = read_checkpoint(path)
    assert state["status"] is None and 0 < state["n_steps"] < ref.n_steps
    res = fastdmf.resume(path)
    assert_same_fit(ref, res)
    assert read_checkpoint(path)[0]["status"] == ref.status
    assert [p.name for p in tmp_path.iterdir()] == ["fit.ckpt"]  # no stray temp files


def test_resume_after_sigkill_is_bit_identical(square, tmp_path, same_fastdmf):
    """A subprocess runs the fit with checkpoints and is SIGKILLed mid-run."""
    path = tmp_path / "fit.ckpt"
    script = textwrap.dedent(f"""
        import time, fastdmf
        p = fastdmf.synthetic_completion(shape=(12, 12), rank=2, n_observed=60, seed=3)
        fastdmf.fit(p, **{KW!r}, checkpoint={str(path)!r}, checkpoint_every=100,
                    callback=lambda r: time.sleep(0.1))   # slow, so the kill lands mid-run
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], **same_fastdmf)
    try:
        deadline = time.monotonic() + 120
        step = 0
        while step < 300:
            assert proc.poll() is None, "the fit ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
            if path.exists():
                step = read_checkpoint(path)[0]["n_steps"]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state, _ = read_checkpoint(path)
    assert state["status"] is None and 300 <= state["n_steps"] < KW["max_steps"]
    assert_same_fit(fastdmf.fit(square, **KW), fastdmf.resume(path))


def test_diverged_fit_resumes_to_the_same_last_good_state(square, tmp_path):
    """A divergence that is certain on any CPU: at depth 1, gradient descent maps every
    observed residual r to r (1 - 2 lr / |Omega|) = -1.5 r, so the loss is L_0 2.25^k and
    crosses the cap (1e8 L_0) between steps 22 and 23, a factor 2.25 away from any rounding.
    (A chaotic divergence, such as depth 2 at a large step, blows up at a step that moves
    with the last bits of every product, so it moves from one CPU to the next.)"""
    grow = 1.5
    lr = (1 + grow) * square.n_observed / 2
    kw = dict(depth=1, optimizer="gd", lr=lr, init_scale=1.0, max_steps=400, record=5, seed=0)
    with pytest.warns(RuntimeWarning, match="diverged near step 23"):
        ref = fastdmf.fit(square, **kw)
    assert ref.status == "diverged" and ref.n_steps == 20  # the last good record
    traj = ref.trajectory
    np.testing.assert_array_equal(traj.step, np.arange(0, 21, 5))
    np.testing.assert_allclose(
        traj.train_loss, traj.train_loss[0] * grow ** (2 * traj.step), rtol=1e-9
    )
    path = tmp_path / "d.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fastdmf.fit(square, **kw, checkpoint=path, checkpoint_every=1, callback=_interrupt_at(15))
    assert read_checkpoint(path)[0]["n_steps"] == 10  # written before the callback at 15
    with pytest.warns(RuntimeWarning, match="diverged near step 23"):
        res = fastdmf.resume(path)
    assert_same_fit(ref, res)


def test_finished_checkpoint_returns_the_result(square, tmp_path):
    path = tmp_path / "done.npz"
    a = fastdmf.fit(square, **KW, checkpoint=path, checkpoint_every=10_000.0)
    b = fastdmf.resume(path)
    assert_same_fit(a, b)
    assert b.settings["seed"] == 0 and b.settings["arguments"]["depth"] == 3


def test_held_out_entries_and_time_cadence(tall, tmp_path):
    train, test = tall.split(0.2, seed=0)
    kw = dict(depth=2, lr=1e-2, max_steps=600, record=100, seed=2, test=test)
    ref = fastdmf.fit(train, **kw)
    assert np.all(np.isfinite(ref.trajectory.test_error))
    path = tmp_path / "t.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fastdmf.fit(
            train,
            **kw,
            checkpoint=path,
            checkpoint_every=0.0,  # every chunk
            callback=_interrupt_at(300),
        )
    assert read_checkpoint(path)[0]["n_steps"] == 200  # written before the callback at 300
    assert_same_fit(ref, fastdmf.resume(path, progress=False))


def test_problem_round_trip_keeps_every_array(tmp_path):
    s = fastdmf.synthetic_sensing(shape=(5, 4), rank=1, n_measurements=7, seed=0)
    c = fastdmf.synthetic_completion(shape=(6, 5), rank=2, n_observed=9, seed=1)
    for p in (s, c):
        arrays, kind, meta = problem_to_arrays(p, "problem")
        np.savez(tmp_path / "p.npz", **arrays)
        with np.load(tmp_path / "p.npz") as data:
            q = problem_from_arrays(data, "problem", kind, meta)
        assert type(q) is type(p) and q.shape == p.shape and q.meta == p.meta
        for name in ("rows", "cols", "values", "A", "y", "ground_truth"):
            if hasattr(p, name):
                np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
        for a, b in zip(q.truth_factors, p.truth_factors):
            np.testing.assert_array_equal(a, b)


def test_checkpoint_errors(square, tmp_path):
    path = tmp_path / "e.ckpt"
    fastdmf.fit(square, **dict(KW, max_steps=100), checkpoint=path)
    with pytest.raises(TypeError, match="cannot change"):
        fastdmf.resume(path, lr=1.0)
    with pytest.raises(ValueError, match="does not exist"):
        fastdmf.fit(square, max_steps=1, checkpoint=tmp_path / "nope" / "x.ckpt")
    with pytest.raises(TypeError, match="int .steps. or a float .seconds."):
        fastdmf.fit(square, max_steps=1, checkpoint=path, checkpoint_every="1h")
    with pytest.raises(ValueError, match=">= 1"):
        fastdmf.fit(square, max_steps=1, checkpoint=path, checkpoint_every=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fastdmf.resume(tmp_path / "missing.ckpt")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not a fastdmf checkpoint"):
        fastdmf.resume(tmp_path / "other.npz")
    state, arrays = read_checkpoint(path)
    arrays["problem_values"] = arrays["problem_values"] + 1.0
    arrays["__state__"] = np.array(__import__("json").dumps(state))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="SHA-256"):
        fastdmf.resume(tmp_path / "bad.npz")


def test_damaged_or_foreign_files_are_refused_with_a_valueerror(square, tmp_path):
    path = tmp_path / "good.ckpt"
    fastdmf.fit(square, **dict(KW, max_steps=20), checkpoint=path)
    raw = path.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    np.save(tmp_path / "single.npy", np.arange(3))
    np.savez(tmp_path / "notjson.npz", __state__=np.array("not json"))
    np.savez(tmp_path / "partial.npz", __state__=np.array('{"format": 1}'))
    cases = {
        "truncated.ckpt": "not a readable checkpoint",
        "empty.ckpt": "not a readable",
        "single.npy": "single array",
        "notjson.npz": "state is damaged",
        "partial.npz": "lacks .*problem_sha256",
    }
    for name, words in cases.items():
        with pytest.raises(ValueError, match=words):
            fastdmf.resume(tmp_path / name)
    with pytest.raises(ValueError, match="is a folder"):
        fastdmf.resume(tmp_path)
    with pytest.raises(ValueError, match="is a folder; give a file path"):
        fastdmf.fit(square, max_steps=1, checkpoint=tmp_path)


def test_log_schedule_survives_the_json_round_trip(square, tmp_path):
    path = tmp_path / "log.ckpt"
    first = fastdmf.fit(square, **dict(KW, max_steps=60, record=("log", 5)), checkpoint=path)
    back = fastdmf.resume(path)
    args = {
        k: v
        for k, v in back.settings["arguments"].items()
        if k not in ("checkpoint", "checkpoint_every")
    }
    assert args["record"] == ["log", 5]  # JSON keeps no tuples
    again = fastdmf.fit(square, **args)
    np.testing.assert_array_equal(again.trajectory.step, first.trajectory.step)
    for a, b in zip(again.factors, first.factors, strict=True):
        np.testing.assert_array_equal(a, b)
