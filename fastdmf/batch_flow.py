"""``fit_batch`` for the flow optimisers: many gradient flows integrated together.

Each trial keeps its own integrator state (time, step size, evaluations, RKC's stage count and
stiffness estimate, tolerances) and its own record times and end time ``max_time``. One
compiled call (:func:`fastdmf.kernels.flow_batch.run_batch_flow`) integrates every running
trial up to its next record time, one trial per task; Python then records each trial, as
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

from .api import (
    _DTYPES,
    FitResult,
    _plan,
    _settings,
    _threads,
    _validation_arg,
)
from .drive import Watch
from .engine import Engine, resolve_backend
from .factors import initialize
from .kernels import cpu
from .kernels.blas import blas_threads
from .kernels.flow_batch import run_batch_flow, run_batch_flow_sensing
from .problem import SensingProblem
from .trajectory import Trajectory

__all__ = ["fit_batch_flow", "resume_batch", "per_trial_options", "checkpoint_paths"]

_FLOW_NAMES = ("flow_y", "flow_ks", "flow_fs")


def per_trial_options(options, n: int) -> list[dict]:
    """One options dict per trial from ``optimizer_options``: a value given as a list, tuple
    or 1-D array holds one value per trial (e.g. ``{"rtol": [1e-4, 1e-6]}``), any other
    value is shared by every trial."""
    if options is None:
        return [{} for _ in range(n)]
    if not isinstance(options, dict):
        raise TypeError(f"optimizer_options must be a dict or None, got {options!r}")
    out = [{} for _ in range(n)]
    for key, value in options.items():
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (list, tuple, np.ndarray)):
            vals = list(np.asarray(value, dtype=object).ravel()) \
                if np.ndim(value) == 1 else None
            if vals is None or len(vals) != n:
                raise ValueError(f"optimizer option {key} must be a scalar or one value per "
                                 f"seed ({n}), got {value!r}")
            for b in range(n):
                out[b][key] = vals[b].item() if isinstance(vals[b], np.generic) else vals[b]
        else:
            for b in range(n):
                out[b][key] = value
    return out


def checkpoint_paths(checkpoint, n: int) -> list | None:
    """The trials' checkpoint files: a list of one path per trial as it is, or one path
    ``p`` standing for ``p.0``, ``p.1``, ... (trial b writes ``f"{p}.{b}"``)."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, (list, tuple)):
        if len(checkpoint) != n:
            raise ValueError(f"checkpoint= lists {len(checkpoint)} path(s) for {n} trial(s): "
                             "give one per seed, or one path p (trial b writes p.b)")
        paths = [os.fspath(p) for p in checkpoint]
        if len(set(paths)) != n:
            raise ValueError("checkpoint= lists a path twice: each trial needs its own file")
        return paths
    try:
        base = os.fspath(checkpoint)
    except TypeError:
        raise TypeError(f"checkpoint must be a file path or a list of them, got "
                        f"{checkpoint!r}") from None
    return [f"{base}.{b}" for b in range(n)]


def fit_batch_flow(problem, prepared, trials, kw) -> list[FitResult]:
    """``fit_batch`` for ``optimizer="flow"`` or ``"flow_dopri5"``. ``prepared = (auto, val,
    patience, fitted)`` from ``prepare_observations``; ``trials = (seeds, init scales, lrs)``;
    ``kw`` fit_batch's other arguments (``max_time``, ``optimizer_options`` and
    ``checkpoint`` may be per trial)."""
    from .batch import _per_trial, _stack  # fastdmf.batch imports this module lazily

    auto, val, patience, fitted = prepared
    seeds, scales, rates = trials
    n = len(seeds)
    times = [None] * n if kw["max_time"] is None else _per_trial(kw["max_time"], n,
                                                                  "max_time")
    options = per_trial_options(kw["optimizer_options"], n)
    plans = [_plan(problem.shape, auto["depth"], auto["widths"], kw["init"], scale,
                   kw["optimizer"], rate, opts, kw["max_steps"], t, kw["tol"], auto["record"],
                   kw["top_k"], kw["dtype"], False)
             for scale, rate, opts, t in zip(scales, rates, options, times, strict=True)]
    init, dtype, spec, _, layout, _, _ = plans[0]
    resolve_backend(kw["backend"], spec.code, problem)  # refuses backend="cuda" clearly
    paths = checkpoint_paths(kw["checkpoint"], n)
    if paths is not None:
        from .checkpoint import check_path, parse_every

        parse_every(kw["checkpoint_every"])
        paths = [check_path(p) for p in paths]
    engines = []
    for seed, scale, plan in zip(seeds, scales, plans, strict=True):
        factors = initialize(layout, init, scale, np.random.default_rng(seed))
        theta = layout.pack(factors, dtype=_DTYPES[dtype])
        engines.append(Engine(problem, layout, theta, spec, plan[3], parallel=False))
        engines[-1].obs = engines[0].obs  # one copy of the observations (or operator)
    stacked = _stack(engines)
    stack_flow(engines, stacked)
    common = {"depth": auto["depth"], "widths": auto["widths"], "init": init,
              "optimizer": kw["optimizer"], "max_steps": kw["max_steps"], "tol": kw["tol"],
              "record": auto["record"], "top_k": kw["top_k"], "dtype": dtype,
              "parallel": False, "backend": kw["backend"],
              "validation": _validation_arg(auto["validation"]), "patience": patience,
              "validation_seed": kw["validation_seed"],
              "offsets": fitted.kind if fitted is not None else None,
              "checkpoint_every": kw["checkpoint_every"]}
    settings = []
    for b in range(n):
        args = {**common, "seed": seeds[b], "init_scale": scales[b], "lr": rates[b],
                "max_time": times[b], "optimizer_options": options[b] or None,
                "checkpoint": None if paths is None else paths[b]}
        s = _settings(args, seeds[b], problem, "serial (batched)")
        if fitted is not None:
            s["offsets"] = fitted.describe()
        if val is not None:
            s["validation_entries"] = val.n_observed
        settings.append(s)
    runs = []
    for b, eng in enumerate(engines):
        traj = Trajectory(auto["depth"], kw["top_k"], {"shape": list(problem.shape)})
        watch = Watch(eng, problem, None, traj, kw["top_k"], val, patience, fitted)
        saver = None
        if paths is not None:
            from .checkpoint import Checkpointer

            saver = Checkpointer(paths[b], kw["checkpoint_every"], {
                "settings": settings[b], "problem": problem, "test": None,
                "schedule": plans[b][5], "end": plans[b][6], "budget": kw["max_steps"],
                "tol": kw["tol"], "top_k": kw["top_k"], "val": val, "patience": patience,
                "offsets": fitted})
        runs.append(FlowTrial(eng, watch, plans[b][5], plans[b][6], saver))
    with _threads(kw["n_threads"]):
        statuses = drive_flows(runs, stacked, problem, kw["max_steps"], kw["tol"])
    return [FitResult([np.array(w) for w in r.engine.factors()], r.watch.traj, status,
                      s, r.engine.n_steps, fitted)
            for r, status, s in zip(runs, statuses, settings, strict=True)]


def stack_flow(engines, stacked) -> None:
    """Stack the trials' integrator states (``flow_y``, ``flow_ks``, ``flow_fs``, trial axis
    first) into ``stacked`` and make each engine's flow state view its row."""
    for i, name in enumerate(_FLOW_NAMES):
        stacked[name] = np.stack([e.flow[i] for e in engines])
    for b, eng in enumerate(engines):
        eng.flow = tuple(stacked[name][b] for name in _FLOW_NAMES)


class FlowTrial:
    """One trial's place in the loop of :func:`fastdmf.drive.drive`, taken apart so that
    all trials' integrations run in one compiled call: :meth:`start` (the checks before the
    first chunk), :meth:`target` (the next record time, before a call) and :meth:`settle`
    (records, stopping and checkpoints, after it)."""

    def __init__(self, engine, watch, schedule, end, saver=None, nxt=1):
        self.engine, self.watch, self.schedule, self.end, self.saver = (
            engine, watch, schedule, end, saver)
        self.nxt, self.status, self.goal, self.before = nxt, None, end, None

    def start(self, tol, budget) -> None:
        if self.saver is not None:
            self.saver.started(self.engine, self.watch, self.watch.traj)
        if self.watch.loss <= tol:
            self.status = "converged"
        elif self.end <= 0:
            self.status = "max_time"
        elif self.engine.out_of_budget(budget):
            self.status = "max_steps"

    def target(self) -> float:
        eng, sched = self.engine, self.schedule
        while self.nxt < len(sched) and sched[self.nxt] <= eng.position:
            self.nxt += 1
        self.goal = sched[self.nxt] if self.nxt < len(sched) else self.end
        self.before = (eng.position, eng.n_evals)
        return self.goal

    def settle(self, code: int, tol, budget) -> None:
        eng = self.engine
        # a call that moved nothing (an RKC step needs more evaluations than are left)
        stalled = code == cpu.RUNNING and (eng.position, eng.n_evals) == self.before
        done = eng.position >= self.end or eng.out_of_budget(budget) or stalled
        at_record = eng.position >= self.goal or code == cpu.CONVERGED or done
        status = self.watch.settle(code, at_record, tol)
        if status is None and done:
            status = "max_time" if eng.position >= self.end else "max_steps"
        if status is None and self.saver is not None:
            self.saver.chunk_done()
        self.status = status


def drive_flows(runs, stacked, problem, budget, tol, fresh=True) -> list[str]:
    """Integrate every trial of ``runs`` (:class:`FlowTrial`) to its end; their statuses
    after :meth:`~fastdmf.drive.Watch.finish`, final checkpoints written."""
    if fresh:
        for r in runs:
            r.start(tol, budget)
    n = len(runs)
    caps = np.array([r.watch.cap for r in runs])
    t_ends, status = np.zeros(n), np.zeros(n, np.int64)
    kernel = run_batch_flow_sensing if isinstance(problem, SensingProblem) else run_batch_flow
    eng0 = runs[0].engine
    while True:
        active = np.array([r.status is None for r in runs])
        if not active.any():
            break
        for b in np.flatnonzero(active):
            t_ends[b] = runs[b].target()
        with blas_threads(1):
            old = numba.get_parallel_chunksize()
            numba.set_parallel_chunksize(1)
            try:
                kernel((stacked["theta"], stacked["grad"], stacked["work"],
                        stacked["rowloss"]), eng0.dims, eng0.offs, eng0.obs,
                       tuple(stacked[name] for name in _FLOW_NAMES), t_ends, int(budget),
                       float(tol), caps, active, status)
            finally:
                numba.set_parallel_chunksize(old)
        for b in np.flatnonzero(active):
            runs[b].settle(int(status[b]), tol, budget)
    statuses = [r.watch.finish(r.status) for r in runs]
    for r, s in zip(runs, statuses, strict=True):
        if r.saver is not None:
            r.saver.finish(s)
    return statuses


def resume_batch(paths, n_threads=None) -> list[FitResult]:
    """Continue the trials of a batched flow from their checkpoint files, all together; one
    :class:`FitResult` per path, each bit for bit the uninterrupted trial's (and the result
    :func:`fastdmf.resume` gives for that file alone). The files are those
    ``fit_batch(..., optimizer="flow", checkpoint=...)`` wrote: trials of one problem (its
    arrays must match), one optimiser and one evaluation budget. A finished trial's file
    returns its result; the others keep writing their checkpoints at their cadence."""
    from .batch import _stack
    from .checkpoint import (
        Checkpointer,
        _Arrays,
        _schedule_from,
        _trajectory_from,
        problem_from_arrays,
        read_checkpoint,
    )
    from .factors import FactorLayout
    from .offsets import Offsets
    from .optim import get_optimizer

    paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike))
                                    else paths)]
    if not paths:
        raise ValueError("resume_batch needs at least one checkpoint file")
    loaded = [read_checkpoint(p) for p in paths]
    first = loaded[0][0]
    for p, (state, _) in zip(paths, loaded, strict=True):
        for key in ("problem_sha256", "optimizer", "dims", "dtype", "budget", "tol"):
            if state[key] != first[key]:
                raise ValueError(f"{p!r} is not a trial of the same batch as {paths[0]!r}: "
                                 f"its {key} differs; resume it with fastdmf.resume")
        if state["optimizer"] not in ("flow", "flow_dopri5"):
            raise ValueError(f"{p!r} holds a {state['optimizer']!r} fit; resume_batch "
                             "continues batched flows, fastdmf.resume any single fit")
    data0 = _Arrays(loaded[0][1])
    problem = problem_from_arrays(data0, "problem", first["problem_kind"],
                                  first["problem_meta"])
    dims = first["dims"]
    layout = FactorLayout.build((dims[-1], dims[0]), len(dims) - 1, dims[1:-1])
    spec = get_optimizer(first["optimizer"])
    engines, runs, results = [], [], [None] * len(paths)
    for b, (state, raw) in enumerate(loaded):
        data = _Arrays(raw)
        val = best = offsets = None
        if "val_shape" in data.files:
            val = problem_from_arrays(data, "val", state["problem_kind"])
            best = dict(state["best"], snap=(raw["best_params"].copy(),
                                             raw["best_scalars"].copy()))
        if "offsets_kind" in state:
            offsets = Offsets.from_arrays(state["offsets_kind"], data)
        eng = Engine(problem, layout, raw["theta"].copy(), spec, raw["hyper"].copy(),
                     parallel=False)
        eng.obs = engines[0].obs if engines else eng.obs
        for name in ("grad", "ostate", "scalars"):
            getattr(eng, name)[:] = raw[name]
        for buf, name in zip(eng.flow, _FLOW_NAMES, strict=True):
            buf[:] = raw[name]
        engines.append(eng)
        traj = _trajectory_from(data, state)
        if state["status"] is not None:  # finished: the file holds the result
            results[b] = FitResult([np.array(w) for w in eng.factors()], traj,
                                   state["status"], state["settings"], eng.n_steps, offsets)
            continue
        watch = Watch.resumed(eng, problem, None, traj, state["top_k"], state["loss"],
                              state["cap"], (raw["good_params"].copy(),
                                             raw["good_scalars"].copy()),
                              state["good_step"], val, state.get("patience"), best, offsets)
        schedule = _schedule_from(state, raw)
        saver = Checkpointer(paths[b], state["settings"]["arguments"].get("checkpoint_every"),
                             {"settings": state["settings"], "problem": problem, "test": None,
                              "schedule": schedule, "end": state["end"],
                              "budget": state["budget"], "tol": state["tol"],
                              "top_k": state["top_k"], "val": val,
                              "patience": state.get("patience"), "offsets": offsets})
        saver.attach(eng, watch, traj)
        runs.append((b, FlowTrial(eng, watch, schedule, state["end"], saver)))
    if runs:
        stacked = _stack([r.engine for _, r in runs])
        stack_flow([r.engine for _, r in runs], stacked)
        with _threads(n_threads):
            statuses = drive_flows([r for _, r in runs], stacked, problem, first["budget"],
                                   first["tol"], fresh=False)
        for (b, r), status in zip(runs, statuses, strict=True):
            results[b] = FitResult([np.array(w) for w in r.engine.factors()], r.watch.traj,
                                   status, loaded[b][0]["settings"], r.engine.n_steps,
                                   r.watch.offsets)
    return results
