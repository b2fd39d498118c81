"""Records and results of the baselines: the same Trajectory fields and FitResult as ``fit``."""

from __future__ import annotations

import time as _time

import numpy as np

from .._plan import versions
from ..reference import effective_rank
from ..result import FitResult
from ..trajectory import Grid, Trajectory, record_schedule, record_test_error


def check_common(tol, max_iter, record):
    """Validate the arguments every iterative baseline shares; return the record schedule."""
    if isinstance(tol, bool) or not (isinstance(tol, (int, float, np.floating)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), e.g. 1e-6; got {tol!r}")
    if isinstance(max_iter, bool) or not (
        isinstance(max_iter, (int, np.integer)) and max_iter >= 1
    ):
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    return record_schedule(record, int(max_iter))


def record_row(obs, w, sv, iteration, n_evals) -> dict:
    """A trajectory record of the depth-1 state ``w`` with singular values ``sv`` (descending;
    the missing ones are zeros): the fields of :func:`fastdmf.trajectory.measure`, ``step``
    and ``time`` both counting iterations."""
    full = np.zeros(min(obs.shape))
    k = min(len(sv), len(full))
    full[:k] = sv[:k]
    loss, grad_norm = obs.loss_grad_norm(w)
    test_error = record_test_error([w], obs.problem)
    return {
        "step": int(iteration),
        "time": float(iteration),
        "n_evals": int(n_evals),
        "train_loss": loss,
        "test_error": test_error,
        "val_error": np.nan,
        "nuclear_norm": float(full.sum()),
        "effective_rank": effective_rank(full),
        "schatten": float(np.sum(full**2)),
        "grad_norm": grad_norm,
        "param_norm": float(np.sqrt(np.sum(full**2))),
        "singular_values": full,
        "balancedness": np.zeros(0),
    }


class Recorder:
    """The trajectory of an iterative baseline and its progress line."""

    def __init__(self, obs, schedule, progress, name):
        self.obs, self.schedule = obs, schedule
        self._due = schedule if isinstance(schedule, Grid) else {int(s) for s in schedule}
        self.traj = Trajectory(1, None, {"shape": list(obs.shape), "solver": name})
        self.progress, self.name = progress, name
        self.start = self.last = _time.perf_counter()

    def due(self, iteration) -> bool:
        return iteration in self._due

    def add(self, w, sv, iteration, n_evals, note=""):
        if len(self.traj) and self.traj.last()["step"] == iteration:
            return
        self.traj.append(record_row(self.obs, w, sv, iteration, n_evals))
        if self.progress:
            import sys

            now = _time.perf_counter()
            if now - self.last >= 0.5:
                self.last = now
                sys.stderr.write(f"\rfastdmf {self.name}: iteration {iteration}  {note} ")
                sys.stderr.flush()

    def close(self):
        if self.progress:
            import sys

            sys.stderr.write("\n")
            sys.stderr.flush()


def pack(w, traj, status, settings, n_iter, problem) -> FitResult:
    """A FitResult of depth 1 (``factors = [W]``)."""
    settings = {
        **settings,
        "problem": repr(problem),
        "problem_meta": dict(problem.meta),
        "versions": versions(),
    }
    return FitResult([np.ascontiguousarray(w)], traj, status, settings, int(n_iter))
