"""Progress and logging: a tqdm bar on a terminal, the status line without tqdm, nothing
when silenced; sweep tasks and checkpoints logged on the "fastdmf" logger."""

import io
import logging

import pytest

import fastdmf
from fastdmf import _progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def use_terminal(monkeypatch):
    """stderr becomes a terminal (patched in the test body: pytest's capture replaces
    sys.stderr again after fixtures run)."""
    stream = Terminal()
    monkeypatch.setattr("sys.stderr", stream)
    monkeypatch.setattr(_progress, "BAR_DELAY", 0.0)
    return stream


def test_tqdm_bar_on_a_terminal(square, monkeypatch):
    pytest.importorskip("tqdm")
    terminal = use_terminal(monkeypatch)
    res = fastdmf.fit(square, depth=2, max_steps=300, record=100, seed=0)
    text = terminal.getvalue()
    assert "fastdmf" in text and "300/300" in text
    assert f"train loss {res.trajectory.train_loss[-1]:.3e}" in text  # the last record


def test_status_line_without_tqdm(square, monkeypatch):
    terminal = use_terminal(monkeypatch)
    monkeypatch.setattr(_progress, "_tqdm", lambda: None)
    fastdmf.fit(square, depth=2, max_steps=300, record=100, seed=0)
    assert terminal.getvalue() == ""  # auto mode shows only the bar
    res = fastdmf.fit(square, depth=2, max_steps=300, record=100, seed=0, progress=True)
    assert f"step 300/300  train loss {res.trajectory.train_loss[-1]:.3e}" in terminal.getvalue()


def test_silenced_and_not_a_terminal(square, monkeypatch):
    terminal = use_terminal(monkeypatch)
    fastdmf.fit(square, depth=2, max_steps=100, seed=0, progress=False)
    assert terminal.getvalue() == ""
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert _progress.fit_progress(10, "step", None) is None
    assert isinstance(_progress.progress_bar(3, "tasks", None), _progress._Null)


def test_checkpoints_and_sweep_tasks_are_logged(square, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fastdmf")
    fastdmf.fit(
        square,
        depth=2,
        max_steps=100,
        record=50,
        seed=0,
        checkpoint=tmp_path / "c.ckpt",
        checkpoint_every=50,
    )
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint")]
    assert [m.split(" at step ")[1] for m in steps] == ["0", "50", "100 (final, max_steps)"]
    caplog.clear()
    fastdmf.sweep(
        {"depth": [1]},
        out=tmp_path / "s",
        workers=1,
        max_steps=5,
        problem=dict(shape=(6, 6), rank=1, n_observed=20),
    )
    messages = [r.getMessage() for r in caplog.records]
    assert "sweep task 0 submitted" in messages and "sweep task 0 finished" in messages
