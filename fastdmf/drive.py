"""The loop between compiled chunks, shared by ``fit``, ``fit_batch`` and ``resume``.

:class:`Watch` keeps one fit's records, divergence cap and last good state; :func:`drive`
alternates :meth:`~fastdmf.engine.Engine.advance` calls and records up to the end of a fit.
Python runs here between chunks only: records, progress, callbacks, checkpoints.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import numpy as np

from . import config
from ._progress import fit_progress
from .kernels.blas import blas_threads
from .kernels.codes import CONVERGED, DIVERGED, RUNNING

__all__ = ["Watch", "drive", "run"]

log = logging.getLogger("fastdmf")


class Watch:
    """One fit's bookkeeping between compiled chunks: its records, the divergence cap, and
    the last good state a diverged fit returns to. Shared by ``fit`` and ``fit_batch``."""

    def __init__(self, engine, data, plan, traj):
        self.engine, self.data, self.plan, self.traj = engine, data, plan, traj
        self.val, self.patience = data.val, plan.patience
        self.loss = self.record()
        if not np.isfinite(self.loss):
            raise ValueError("the initial loss is not finite; check the initial factors")
        self.cap = config.DIVERGENCE_FACTOR * max(self.loss, np.finfo(np.float64).tiny)
        self.good, self.good_step = engine.snapshot(), 0
        if self.val is not None:
            first = float(traj.last()["val_error"])
            self.best = {"val": first, "ref": first, "index": 0, "since": 0, "snap": self.good}

    @classmethod
    def resumed(cls, engine, data, plan, traj, loss, cap, good, good_step, best=None):
        """A watch continuing from a checkpoint (its records are already in ``traj``)."""
        watch = cls.__new__(cls)
        watch.engine, watch.data, watch.plan, watch.traj = engine, data, plan, traj
        watch.val, watch.patience = data.val, plan.patience
        watch.loss, watch.cap, watch.good, watch.good_step = loss, cap, good, good_step
        watch.best = best
        return watch

    def record(self) -> float:
        """Evaluate the current state and append the problem kind's record of it to the
        trajectory (finite losses only)."""
        eng = self.engine
        loss = eng.evaluate()
        if np.isfinite(loss):
            # one BLAS thread: no pool left spinning beside the next chunk's kernels (see
            # fastdmf.kernels.blas)
            with blas_threads(1):
                rec = self.plan.kind.measure(
                    eng.factors(),
                    eng.grads(),
                    loss,
                    (eng.n_steps, eng.time, eng.n_evals),
                    self.data,
                    self.plan,
                )
            self.traj.append(rec)
        return loss

    def settle(self, code: int, at_record: bool, tol: float):
        """After a chunk that ended with kernel status ``code``: record when at a record
        point, then return "diverged" (state restored to the last good record),
        "converged", or None to go on (a record point becomes the new good state)."""
        loss = self.loss
        if code != DIVERGED and at_record:
            loss = self.record()
            if not loss <= self.cap:
                if np.isfinite(loss):  # record() keeps only finite losses
                    self.traj.truncate(len(self.traj) - 1)
                code = DIVERGED
        if code == DIVERGED:
            _warn_diverged(self.engine.n_steps, self.engine, self.good_step)
            self.engine.restore(self.good)
            return "diverged"
        snap = self.engine.snapshot() if at_record else None
        # every kept record counts for the best validation record, the last one included
        stalled = at_record and self.val is not None and self._no_longer_improving(snap)
        if code == CONVERGED or (at_record and loss <= tol):
            return "converged"
        if at_record:
            self.loss = loss
            self.good, self.good_step = snap, self.engine.n_steps
        return "early_stopped" if stalled else None

    def _no_longer_improving(self, snap) -> bool:
        """Track the best validation record (its state is the fit's result, see
        :meth:`finish`); true once ``patience`` records in a row have not lowered the
        validation error by a relative ``config.MIN_IMPROVEMENT`` below the last record that
        did. ``snap`` is the state of the record just taken (one copy, shared with the last
        good state; snapshots are never written to)."""
        best, val = self.best, float(self.traj.last()["val_error"])
        if val < best["val"]:
            best.update(val=val, index=len(self.traj) - 1, snap=snap)
        if val < best["ref"] * (1.0 - config.MIN_IMPROVEMENT):
            best.update(ref=val, since=0)
        else:
            best["since"] += 1
        return best["since"] >= self.patience

    def finish(self, status: str) -> str:
        """The fit's status once it has ended with ``status``; with validation entries the
        state and records go back to the best validation record: ``"early_stopped"`` when
        that is a later record than the first but not the last, ``"no_improvement"`` when
        no record improved on the initial state. A diverged or stopped fit keeps its state."""
        if self.val is None or status in ("diverged", "stopped"):
            return status
        best = self.best
        if best["index"] == len(self.traj) - 1:
            return status
        self.engine.restore(best["snap"])
        self.traj.truncate(best["index"] + 1)
        self.loss = float(self.traj.last()["train_loss"])
        return "no_improvement" if best["index"] == 0 else "early_stopped"


def drive(engine, data, plan, traj, callback=None, progress=None, saver=None, watch=None):
    """Alternate compiled chunks and records; returns the status.

    Positions are steps (discrete optimisers) or flow times (the flow); ``plan.end`` is the
    last position, ``plan.budget`` the most steps (gradient evaluations for the flow).
    ``saver`` (a :class:`fastdmf.checkpoint.Checkpointer`) writes checkpoints between chunks;
    ``watch`` is given when resuming from one. Validation entries (``data.val``) and
    ``plan.patience`` turn on early stopping (see :meth:`Watch.finish`); ``data.offsets``
    map the factors' predictions to the data's units for ``data.test``."""
    fresh = watch is None
    if watch is None:
        watch = Watch(engine, data, plan, traj)
    return watch.finish(
        _loop(
            engine,
            traj,
            plan.schedule,
            plan.end,
            plan.budget,
            plan.tol,
            callback,
            progress,
            saver,
            watch,
            fresh,
        )
    )


def run(
    engine, data, plan, traj, settings, *, callback=None, progress=None, saver=None, watch=None
):
    """:func:`drive` a fit to its end under a progress bar, write its final checkpoint, and
    return the kind's result (``fit`` and ``resume`` both end here)."""
    bar = fit_progress(plan.end, "time" if plan.is_flow else "step", progress)
    try:
        status = drive(engine, data, plan, traj, callback, bar, saver=saver, watch=watch)
    finally:
        if bar is not None:
            bar.close()
    if saver is not None:
        saver.finish(status)
    params = [np.array(w) for w in engine.factors()]
    return plan.kind.result(params, traj, status, settings, engine.n_steps, data.offsets)


def _loop(engine, traj, schedule, end, budget, tol, callback, progress, saver, watch, fresh):
    """drive's chunks and records; returns the status before :meth:`Watch.finish`."""
    if fresh:
        if saver is not None:
            saver.started(engine, watch, traj)
        if watch.loss <= tol:
            return "converged"
        if end <= 0:
            return engine.END_STATUS
        if engine.out_of_budget(budget):
            return "max_steps"
    nxt = 1
    while True:
        while nxt < len(schedule) and schedule[nxt] <= engine.position:
            nxt += 1
        target = schedule[nxt] if nxt < len(schedule) else end
        before = (engine.position, engine.n_evals)
        code = engine.advance(target, tol, watch.cap, budget)
        # a call that moved nothing (an RKC step needs more evaluations than are left) ends
        # the fit as out of budget instead of asking again
        stalled = code == RUNNING and (engine.position, engine.n_evals) == before
        done = engine.position >= end or engine.out_of_budget(budget) or stalled
        at_record = engine.position >= target or code == CONVERGED or done
        status = watch.settle(code, at_record, tol)
        if status is not None:
            return status
        if progress is not None:
            progress.update(engine.position, watch.loss if at_record else None)
        if at_record:
            log.debug(
                "step %d  time %.4g  train loss %.3e", engine.n_steps, engine.time, watch.loss
            )
            if callback is not None and callback(
                {**traj.last(), "factors": [np.array(w) for w in engine.factors()]}
            ):
                return "stopped"
        if done:
            return engine.END_STATUS if engine.position >= end else "max_steps"
        if saver is not None:
            saver.chunk_done()


def _warn_diverged(step, engine, good_step):
    advice = engine.divergence_advice()
    warnings.warn(
        f"fit diverged near step {step} (loss not finite or above "
        f"{config.DIVERGENCE_FACTOR:g} x its initial value); returning the state of the last "
        f"good record (step {good_step}). {advice}",
        RuntimeWarning,
        stacklevel=_outside_level(),
    )


def _outside_level() -> int:
    """The ``stacklevel`` that points a warning raised in the caller at the first frame
    outside fastdmf: the user's call of fit, fit_batch or resume."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2  # the function that called warnings.warn is level 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
