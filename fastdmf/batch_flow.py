"""``fit_batch`` for the flow optimisers: many gradient flows integrated together.

Each trial keeps its own integrator state (time, step size, evaluations, RKC's stage count and
stiffness estimate, tolerances), its own plan (record times and end time ``max_time``) and
its own :class:`~fastdmf.drive.Watch`. One compiled call (the problem kind's ``batch_flow``,
e.g. :func:`fastdmf.kernels.flow_batch.run_batch_flow`) integrates every running trial up to
its next record time, the threads taking the trials from a work queue in
:func:`launch_order` (the longest first); Python then records each trial, as
:func:`fastdmf.drive.drive` does for one fit. Every trial runs the serial kernels and asks
for the same integration targets in the same order as a serial flow ``fit``, so its result
is that fit's, bit for bit; a trial that converges, diverges, or spends its evaluation
budget stops alone with its own status while the others go on.

Checkpoints: one file per trial, in the format of ``fit(..., checkpoint=...)``; each is
resumed by :func:`fastdmf.resume` (one trial, serially) or, all together, by
:func:`resume_batch`, bit for bit.
"""

from __future__ import annotations

import os

import numba
import numpy as np

from ._plan import settings, threads
from .checkpoint import Checkpointer, check_path, parse_every, restore
from .drive import Watch
from .engine import Engine, FlowEngine, stack
from .kernels.blas import blas_threads
from .kernels.codes import CONVERGED, RUNNING
from .lockstep import run_lockstep_groups
from .result import FitResult

__all__ = ["fit_batch_flow", "resume_batch", "checkpoint_paths", "run_batch_flow", "launch_order"]


def checkpoint_paths(checkpoint, n: int) -> list | None:
    """The trials' checkpoint files: a list of one path per trial as it is, or one path
    ``p`` standing for ``p.0``, ``p.1``, ... (trial b writes ``f"{p}.{b}"``)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, (list, tuple)):
        if len(checkpoint) != n:
            raise ValueError(
                f"checkpoint= lists {len(checkpoint)} path(s) for {n} trial(s): "
                "give one per seed, or one path p (trial b writes p.b)"
            )
        paths = [os.fspath(p) for p in checkpoint]
        if len(set(paths)) != n:
            raise ValueError("checkpoint= lists a path twice: each trial needs its own file")
        return paths
    try:
        base = os.fspath(checkpoint)
    except TypeError:
        raise TypeError(
            f"checkpoint must be a file path or a list of them, got {checkpoint!r}"
        ) from None
    return [f"{base}.{b}" for b in range(n)]


def run_batch_flow(kind, *args) -> None:
    """One compiled call of ``kind``'s batched flow (:attr:`fastdmf._kinds.Kind.batch_flow`,
    the contract of :func:`fastdmf.kernels.flow_batch.run_batch_flow`)."""
    if kind.batch_flow is None:
        raise ValueError(
            f"fit_batch has no batched flow for a {kind.title}; run "
            "fastdmf.fit(..., optimizer='flow') per trial"
        )
    kind.batch_flow(*args)


def fit_batch_flow(
    data, plans, args, checkpoint=None, every=None, n_threads=None, lockstep=False
) -> list[FitResult]:
    """``fit_batch`` for ``optimizer="flow"`` or ``"flow_dopri5"``: ``data`` the trials'
    shared :class:`~fastdmf._plan.FitData`, ``plans`` one :class:`~fastdmf._plan.Plan` per
    trial (seed, init scale, hyper-parameters, record times and end time its own), ``args``
    each trial's arguments as its settings keep them; ``checkpoint`` one path (trial b
    writes ``p.b``) or one per trial, every ``every`` as in ``fit``; ``lockstep`` advances
    the trials one evaluation per round together (:mod:`fastdmf.lockstep`)."""
    problem, fitted, val = data.problem, data.offsets, data.val
    kind = plans[0].kind
    if lockstep and kind.batch_eval is None:
        raise ValueError(
            f"lockstep=True evaluates the trials of a sensing problem together; a "
            f"{kind.title} has no such evaluation: leave lockstep=False"
        )
    if kind.batch_flow is None:
        run_batch_flow(kind)  # refuses it, saying what to do instead
    n = len(plans)
    paths = checkpoint_paths(checkpoint, n)
    if paths is not None:
        parse_every(every)
        paths = [check_path(p) for p in paths]
    engines, first = [], {}
    for trial in plans:
        params = kind.initialize(
            trial.layout, trial.init, trial.init_scale, np.random.default_rng(trial.seed)
        )
        theta = trial.layout.pack(params, dtype=trial.np_dtype)
        engines.append(
            Engine(problem, trial.layout, theta, trial.spec, trial.hyper, parallel=False)
        )
        # one copy of the observations (or operator) for the trials of one layout
        engines[-1].obs = first.setdefault(tuple(trial.layout.dims), engines[-1]).obs
    groups = [
        [b for b, trial in enumerate(plans) if tuple(trial.layout.dims) == dims] for dims in first
    ]
    stacked = [stack([engines[b] for b in group]) for group in groups]
    runs = []
    for b, (eng, trial) in enumerate(zip(engines, plans, strict=True)):
        trial_args = {**args[b], "checkpoint": None if paths is None else paths[b]}
        mode = "lockstep (batched)" if lockstep else "serial (batched)"
        s = settings(trial_args, trial.seed, problem, mode)
        if fitted is not None:
            s["offsets"] = fitted.describe()
        if val is not None:
            s["validation_entries"] = val.n_observed
        traj = kind.trajectory(trial, problem)
        watch = Watch(eng, data, trial, traj)
        saver = None if paths is None else Checkpointer(paths[b], every, trial, data, s)
        runs.append(FlowTrial(eng, watch, trial, s, saver))
    with threads(n_threads):
        done = drive_groups(
            [([runs[b] for b in group], st) for group, st in zip(groups, stacked, strict=True)],
            lockstep=lockstep,
        )
    statuses = [None] * n
    for group, got in zip(groups, done, strict=True):
        for b, status in zip(group, got, strict=True):
            statuses[b] = status
    return [r.result(status) for r, status in zip(runs, statuses, strict=True)]


class FlowTrial:
    """One trial's place in the loop of :func:`fastdmf.drive.drive`, taken apart so that
    all trials' integrations run in one compiled call: :meth:`start` (the checks before the
    first chunk), :meth:`target` (the next record time, before a call) and :meth:`settle`
    (records, stopping and checkpoints, after it)."""

    def __init__(self, engine, watch, plan, settings, saver=None):
        self.engine, self.watch, self.plan, self.settings, self.saver = (
            engine,
            watch,
            plan,
            settings,
            saver,
        )
        self.nxt, self.status, self.goal, self.before = 1, None, plan.end, None

    def start(self) -> None:
        eng, plan = self.engine, self.plan
        if self.saver is not None:
            self.saver.started(eng, self.watch, self.watch.traj)
        if self.watch.loss <= plan.tol:
            self.status = "converged"
        elif plan.end <= 0:
            self.status = eng.END_STATUS
        elif eng.out_of_budget(plan.budget):
            self.status = "max_steps"

    def target(self) -> float:
        eng, sched = self.engine, self.plan.schedule
        while self.nxt < len(sched) and sched[self.nxt] <= eng.position:
            self.nxt += 1
        self.goal = sched[self.nxt] if self.nxt < len(sched) else self.plan.end
        self.before = (eng.position, eng.n_evals)
        return self.goal

    def settle(self, code: int) -> None:
        eng, plan = self.engine, self.plan
        # a call that moved nothing (an RKC step needs more evaluations than are left)
        stalled = code == RUNNING and (eng.position, eng.n_evals) == self.before
        done = eng.position >= plan.end or eng.out_of_budget(plan.budget) or stalled
        at_record = eng.position >= self.goal or code == CONVERGED or done
        status = self.watch.settle(code, at_record, plan.tol)
        if status is None and done:
            status = eng.END_STATUS if eng.position >= plan.end else "max_steps"
        if status is None and self.saver is not None:
            self.saver.chunk_done()
        self.status = status

    def result(self, status) -> FitResult:
        eng = self.engine
        return self.plan.kind.result(
            [np.array(w) for w in eng.factors()],
            self.watch.traj,
            status,
            self.settings,
            eng.n_steps,
            self.watch.data.offsets,
        )


def launch_order(runs, active) -> np.ndarray:
    """The indices of the active trials (``active[b]``) in the order the compiled call
    starts them: the smallest init scale first (the longest flow: a smaller init sits
    longer on the plateau before the fit moves; within one batch the depth is the same),
    ties in the caller's order. Started longest first, the trials' work queue does not end
    with one long trial running alone on one thread while the others wait."""
    idx = np.flatnonzero(active)
    scales = [runs[b].plan.init_scale for b in idx]
    if any(a is None for a in scales):
        return idx
    return idx[np.argsort(np.asarray(scales, dtype=np.float64), kind="stable")]


def drive_flows(runs, stacked, fresh=True, lockstep=False) -> list[str]:
    """Integrate every trial of ``runs`` (:class:`FlowTrial`, engines bound to the rows of
    ``stacked``) to its end; their statuses after :meth:`~fastdmf.drive.Watch.finish`,
    final checkpoints written: :func:`drive_groups` of one group."""
    return drive_groups([(runs, stacked)], fresh, lockstep)[0]


def drive_groups(groups, fresh=True, lockstep=False) -> list[list[str]]:
    """Integrate every trial of every group ``(runs, stacked)`` (:class:`FlowTrial`, engines
    bound to the rows of that group's ``stacked``; the groups differ in layout, e.g. depth)
    to its end; one list of statuses per group, after :meth:`~fastdmf.drive.Watch.finish`,
    final checkpoints written. The trials share one problem, evaluation budget and tol.
    Between records, ``lockstep``: one evaluation of every running trial of every group per
    round (:func:`fastdmf.lockstep.run_lockstep_groups`), else one compiled call of the
    kind's batched flow per group."""
    every = [r for runs, _ in groups for r in runs]
    if fresh:
        for r in every:
            r.start()
    plan0 = every[0].plan
    budget, tol = int(plan0.budget), float(plan0.tol)
    state = []  # per group: its runs, the kernels' arguments before t_ends, t_ends, status
    for runs, stacked in groups:
        eng0 = runs[0].engine
        bufs = (stacked["theta"], stacked["grad"], stacked["work"], stacked["rowloss"])
        flows = tuple(stacked[name] for name in FlowEngine.FLOW)
        caps = np.array([r.watch.cap for r in runs])
        fixed = (bufs, eng0.dims, eng0.offs, eng0.obs, flows)
        state.append((runs, fixed, caps, np.zeros(len(runs)), np.zeros(len(runs), np.int64)))
    while True:
        actives = [np.array([r.status is None for r in runs]) for runs, _ in groups]
        if not any(active.any() for active in actives):
            break
        calls = []
        for (runs, fixed, caps, t_ends, status), active in zip(state, actives, strict=True):
            for b in np.flatnonzero(active):
                t_ends[b] = runs[b].target()
            calls.append((runs, (*fixed, t_ends, budget, tol, caps), active, status))
        with blas_threads(1):
            if lockstep:
                groups_args = [(*args, active, status) for _, args, active, status in calls]
                run_lockstep_groups(plan0.kind.batch_eval, groups_args)
            else:
                old = numba.get_parallel_chunksize()
                numba.set_parallel_chunksize(1)  # one task per thread (the kernel's work queue)
                try:
                    for runs, args, active, status in calls:
                        if active.any():
                            order = launch_order(runs, active)
                            run_batch_flow(plan0.kind, *args, order, status)
                finally:
                    numba.set_parallel_chunksize(old)
        for runs, _, active, status in calls:
            for b in np.flatnonzero(active):
                runs[b].settle(int(status[b]))
    out = []
    for runs, _ in groups:
        statuses = [r.watch.finish(r.status) for r in runs]
        for r, s in zip(runs, statuses, strict=True):
            if r.saver is not None:
                r.saver.finish(s)
        out.append(statuses)
    return out


def resume_batch(paths, n_threads=None) -> list[FitResult]:
    """Continue the trials of a batched flow from their checkpoint files, all together; one
    :class:`FitResult` per path, each bit for bit the uninterrupted trial's (and the result
    :func:`fastdmf.resume` gives for that file alone). The files are those
    ``fit_batch(..., optimizer="flow", checkpoint=...)`` wrote: trials of one problem (its
    arrays must match), one optimiser and one evaluation budget. A finished trial's file
    returns its result; the others keep writing their checkpoints at their cadence."""
    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise ValueError("resume_batch needs at least one checkpoint file")
    with threads(n_threads):
        fits = [restore(p) for p in paths]
        first = fits[0].state
        for p, fit in zip(paths, fits, strict=True):
            for key in ("problem_sha256", "optimizer", "dims", "dtype", "budget", "tol"):
                if fit.state[key] != first[key]:
                    raise ValueError(
                        f"{p!r} is not a trial of the same batch as "
                        f"{paths[0]!r}: its {key} differs; resume it with "
                        "fastdmf.resume"
                    )
            if not fit.plan.is_flow or fit.state["parallel"]:
                raise ValueError(
                    f"{p!r} holds a {fit.state['optimizer']!r} fit, not a "
                    "trial of a batched flow; resume_batch continues batched "
                    "flows, fastdmf.resume any single fit"
                )
        results = [fit.result for fit in fits]
        live = [b for b, fit in enumerate(fits) if fit.result is None]
        if live:
            engines = [fits[b].engine for b in live]
            for eng in engines[1:]:
                eng.obs = engines[0].obs  # one copy of the observations (or operator)
            stacked = stack(engines)
            runs = [
                FlowTrial(
                    fits[b].engine, fits[b].watch, fits[b].plan, fits[b].settings, fits[b].saver
                )
                for b in live
            ]
            statuses = drive_flows(runs, stacked, fresh=False)
            for b, r, status in zip(live, runs, statuses, strict=True):
                results[b] = r.result(status)
    return results
