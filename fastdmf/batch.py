"""``fit_batch``: many independent fits of one problem, advanced together on all cores.

Trials differ by seed, init scale and learning rate (same problem, depth, widths and
optimiser). Their buffers are stacked with a leading trial axis and one compiled call
(:func:`fastdmf.kernels.batch.run_batch`) advances every running trial to the next record
point, one trial per task; Python records each trial between calls. Every trial runs the
serial kernels, so its result is the serial ``fit`` of the same settings on the same
machine, bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from . import config
from ._kinds import kind_of
from ._plan import (
    FitData,
    per_trial,
    per_trial_options,
    plan,
    resolve_seed,
    settings,
    threads,
    validation_arg,
)
from .api import as_problem, prepare_observations
from .batch_flow import fit_batch_flow
from .drive import Watch
from .engine import Engine, resolve_backend, stack
from .kernels.blas import blas_threads
from .kernels.codes import CONVERGED
from .optim import get_optimizer
from .result import FitResult

__all__ = ["fit_batch"]


def fit_batch(
    observed,
    depth=None,
    *,
    seeds,
    init_scale=1e-3,
    lr=None,
    shape=None,
    widths=None,
    init: str = "gaussian",
    optimizer: str = "grouprmsprop",
    optimizer_options: dict | None = None,
    max_steps: int = 1_000_000,
    max_time=None,
    tol: float = 1e-6,
    record="auto",
    top_k: int | None = None,
    validation="auto",
    patience="auto",
    validation_seed: int = 0,
    offsets="auto",
    dtype: str = "float64",
    n_threads: int | None = None,
    backend: str = "cpu",
    checkpoint=None,
    checkpoint_every=None,
    lockstep: bool = False,
) -> list[FitResult]:
    """Fit one trial per seed, all together; ``init_scale`` and ``lr`` are scalars or one
    value per trial, and so is each value of ``optimizer_options`` (a list holds one per
    trial: ``{"rtol": [1e-4, 1e-6]}``). Other arguments as in :func:`fastdmf.fit`, the
    defaults that depend on the observations included (held-out test entries, callbacks and
    ``refit`` are not batched). The trials share one validation split and one set of
    offsets; each stops early on its own. Returns one :class:`FitResult` per trial, in the
    order of ``seeds``; each equals ``fit(observed, depth, seed=s, init_scale=..., lr=...,
    parallel=False, ...)`` exactly.

    The flow optimisers (``"flow"``, ``"flow_dopri5"``; :mod:`fastdmf.batch_flow`) take
    ``max_time``, a flow time or one per trial; each trial keeps its own integrator state
    and record times, and stops alone (converged, diverged, out of its evaluation budget
    ``max_steps``, or at its ``max_time``). With ``checkpoint`` (a path ``p``: trial b
    writes ``p.b``; or a list of one path per seed) and ``checkpoint_every`` as in
    :func:`fastdmf.fit`, each trial writes its own checkpoint, which
    :func:`fastdmf.resume` continues bit for bit. ``backend="cuda"`` refuses the flow (it
    runs on the CPU only). ``backend="cuda"`` advances all trials on the GPU
    (:mod:`fastdmf.kernels.cuda`); each trial then equals ``fit(..., backend="cuda")`` of the
    same settings exactly (and the CPU fit within rounding).

    With a flow optimiser ``depth`` may also be one depth per trial (``depth=[2, 3, 4]``,
    widths ``None`` or one width for all): the trials of each depth are stacked together,
    and with ``lockstep=True`` the trials of every depth advance in the same rounds (the
    operator read once per round for all of them).

    ``lockstep=True`` (sensing problems, flow optimisers; :mod:`fastdmf.lockstep`) advances
    all running trials one gradient evaluation per round and evaluates them together: the
    measurement operator, which each evaluation otherwise streams from memory twice, is
    read for all trials at once by two matrix-matrix products. Each trial then equals its
    serial flow ``fit`` within rounding (the products sum in another order; the integrator
    is the same), not bit for bit; its settings' ``kernels`` say "lockstep (batched)".

    Example
    -------
    >>> import fastdmf
    >>> p = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=150, seed=0)
    >>> results = fastdmf.fit_batch(p, depth=2, seeds=[0, 1, 2], lr=1e-2, max_steps=200)
    >>> [r.n_steps for r in results]
    [200, 200, 200]
    """
    source = as_problem(observed, shape)
    depths, depth = _depths(depth)
    auto, problem, val, patience, fitted = prepare_observations(
        source,
        {
            "depth": depth,
            "lr": lr,
            "record": record,
            "widths": widths,
            "init": init,
            "validation": validation,
            "offsets": offsets,
            "patience": patience,
        },
        validation_seed,
    )
    depth, lr, record, widths = auto["depth"], auto["lr"], auto["record"], auto["widths"]
    seeds = [resolve_seed(s) for s in np.atleast_1d(np.asarray(seeds, dtype=object))]
    n = len(seeds)
    if n == 0:
        raise ValueError("seeds is empty: fit_batch runs one trial per seed, give at least one")
    scales = per_trial(init_scale, n, "init_scale")
    rates = per_trial(lr, n, "lr")
    options = per_trial_options(optimizer_options, n)
    spec = get_optimizer(optimizer)
    if depths is not None:
        _check_depths(depths, n, spec, widths)
    if not (spec.batched or spec.is_flow):
        raise ValueError(f"optimizer {optimizer!r} is not batched; use fastdmf.fit per trial")
    if lockstep and not spec.is_flow:
        raise ValueError(
            f"lockstep=True advances gradient flows together; optimizer {optimizer!r} is "
            "not a flow: use optimizer='flow' or 'flow_dopri5', or leave lockstep=False"
        )
    if checkpoint is not None and not spec.is_flow:
        raise ValueError(
            "fit_batch writes checkpoints for the flow optimisers ('flow', "
            "'flow_dopri5'); for the others checkpoint each trial with "
            "fastdmf.fit(..., checkpoint=...)"
        )
    times = [max_time] * n
    if spec.is_flow and max_time is not None:
        times = per_trial(max_time, n, "max_time")
    kind = kind_of(problem)
    # fit's checks (the first trial's lr, init_scale, options and max_time; each trial's
    # plan or hyper checks the rest)
    base = plan(
        kind,
        problem.shape,
        depth=depth,
        widths=widths,
        init=init,
        init_scale=scales[0],
        optimizer=optimizer,
        lr=rates[0],
        optimizer_options=options[0],
        max_steps=max_steps,
        max_time=times[0],
        tol=tol,
        record=record,
        top_k=top_k,
        dtype=dtype,
        parallel=False,
    )
    base = base.replace(patience=patience)
    init, dtype, layout = base.init, base.dtype, base.layout
    common = {
        "depth": depth,
        "widths": widths,
        "init": init,
        "optimizer": optimizer,
        "max_steps": max_steps,
        "tol": tol,
        "record": record,
        "top_k": top_k,
        "dtype": dtype,
        "parallel": False,
        "backend": backend,
        "validation": validation_arg(auto["validation"]),
        "patience": patience,
        "validation_seed": validation_seed,
        "offsets": fitted.kind if fitted is not None else None,
    }
    for d in sorted(set(depths or [depth])):
        kind.check_fit(
            problem,
            {
                **common,
                "depth": d,
                "init_scale": scales[0],
                "lr": rates[0],
                "optimizer_options": options[0],
            },
        )
    where = resolve_backend(backend, spec, problem)
    data = FitData(problem, None, val, fitted)
    if spec.is_flow:  # each trial its own end time: its own plan (fastdmf.batch_flow)
        plans = [
            base
            if b == 0
            else plan(
                kind,
                problem.shape,
                depth=depth if depths is None else depths[b],
                widths=widths,
                init=init,
                init_scale=scales[b],
                optimizer=optimizer,
                lr=rates[b],
                optimizer_options=options[b],
                max_steps=max_steps,
                max_time=times[b],
                tol=tol,
                record=record,
                top_k=top_k,
                dtype=dtype,
                parallel=False,
            ).replace(patience=patience)
            for b in range(n)
        ]
        plans = [
            p.trial(seed, scale, rate, opts)
            for p, seed, scale, rate, opts in zip(plans, seeds, scales, rates, options, strict=True)
        ]
        args = [
            {
                **common,
                "depth": d,
                "seed": seed,
                "init_scale": scale,
                "lr": rate,
                "max_time": t,
                "optimizer_options": opts or None,
                "checkpoint_every": checkpoint_every,
            }
            for d, seed, scale, rate, t, opts in zip(
                depths or [depth] * n, seeds, scales, rates, times, options, strict=True
            )
        ]
        return fit_batch_flow(
            data, plans, args, checkpoint, checkpoint_every, n_threads, lockstep=lockstep
        )
    if where == "cuda":
        most = kind.cuda().max_trials(problem.shape[0], depth)
        if n > most:  # more trials than one launch holds: consecutive batches (same bits)
            kw = dict(
                depth=depth,
                shape=shape,
                widths=widths,
                init=init,
                optimizer=optimizer,
                max_steps=max_steps,
                tol=tol,
                record=record,
                top_k=top_k,
                dtype=dtype,
                n_threads=n_threads,
                backend=backend,
                validation=validation,
                patience=patience,
                validation_seed=validation_seed,
                offsets=offsets,
            )
            source = observed if shape is None else source
            return [
                res
                for lo in range(0, n, most)
                for res in fit_batch(
                    source,
                    seeds=seeds[lo : lo + most],
                    init_scale=scales[lo : lo + most],
                    lr=rates[lo : lo + most],
                    optimizer_options=_slice(options, lo, lo + most),
                    **kw,
                )
            ]
    plans = [
        base.trial(seed, scale, rate, opts)
        for seed, scale, rate, opts in zip(seeds, scales, rates, options, strict=True)
    ]
    engines = []
    for trial in plans:
        params = kind.initialize(layout, init, trial.init_scale, np.random.default_rng(trial.seed))
        theta = layout.pack(params, dtype=trial.np_dtype)
        engines.append(Engine(problem, layout, theta, spec, trial.hyper, parallel=False))
        engines[-1].obs = engines[0].obs  # one copy of the observations (or operator)
    stacked = stack(engines)
    if where == "cuda":
        stacked["device"] = kind.cuda().DeviceBatch(
            problem,
            engines[0].dims,
            stacked["theta"],
            stacked["codes"],
            stacked["hyper"],
            stacked["ostate"],
            stacked["scalars"],
        )
    with threads(n_threads):
        trajs, statuses = _drive_batch(engines, stacked, data, plans)
    results = []
    for eng, traj, status, trial, opts in zip(
        engines, trajs, statuses, plans, options, strict=True
    ):
        args = {
            **common,
            "seed": trial.seed,
            "init_scale": trial.init_scale,
            "lr": trial.lr,
            "optimizer_options": opts or None,
        }
        trial_settings = settings(
            args, trial.seed, problem, "cuda (batched)" if where == "cuda" else "serial (batched)"
        )
        if fitted is not None:
            trial_settings["offsets"] = fitted.describe()
        if val is not None:
            trial_settings["validation_entries"] = val.n_observed
        results.append(
            kind.result(
                [np.array(w) for w in eng.factors()],
                traj,
                status,
                trial_settings,
                eng.n_steps,
                fitted,
            )
        )
    return results


def _slice(options, lo, hi):
    """Trials lo..hi-1 of per-trial options, as one options dict with per-trial lists."""
    return {key: [o[key] for o in options[lo:hi]] for key in options[0]}


def _drive_batch(engines, st, data, plans):
    """The batched counterpart of ``drive.drive``: one :class:`~fastdmf.drive.Watch` per trial
    (records, statuses, divergence), all trials advanced by one compiled call per chunk."""
    n = len(engines)
    base = plans[0]
    schedule, max_steps, tol = base.schedule, base.budget, base.tol
    trajs = [p.kind.trajectory(p, data.problem) for p in plans]
    watches = [Watch(e, data, p, t) for e, p, t in zip(engines, plans, trajs, strict=True)]
    statuses: list = ["converged" if w.loss <= tol else None for w in watches]
    if max_steps == 0:
        return trajs, [w.finish(s or "max_steps") for w, s in zip(watches, statuses, strict=True)]
    caps = np.array([w.cap for w in watches])
    status = np.zeros(n, np.int64)
    eng0, step, nxt = engines[0], 0, 1
    while any(s is None for s in statuses):
        while nxt < len(schedule) and schedule[nxt] <= step:
            nxt += 1
        target = schedule[nxt] if nxt < len(schedule) else max_steps
        chunk = min(target - step, config.MAX_CHUNK_STEPS)
        active = np.array([s is None for s in statuses])
        if "device" in st:
            st["device"].run(chunk, tol, caps, active, status)
        else:
            _run_cpu(st, eng0, chunk, tol, caps, active, status)
        step += chunk
        for b in np.flatnonzero(active):
            code = int(status[b])
            at_record = step == target or code == CONVERGED or step >= max_steps
            statuses[b] = watches[b].settle(code, at_record, tol)
            if statuses[b] is None and step >= max_steps:
                statuses[b] = "max_steps"
    return trajs, [w.finish(s) for w, s in zip(watches, statuses, strict=True)]


def _run_cpu(st, eng0, chunk, tol, caps, active, status):
    """One compiled call advancing every active trial on the CPU, one trial per task."""
    kernel = eng0.kind.batch_run
    with blas_threads(1):
        old = numba.get_parallel_chunksize()
        numba.set_parallel_chunksize(1)
        try:
            kernel(
                (st["theta"], st["grad"], st["work"], st["rowloss"]),
                eng0.dims,
                eng0.offs,
                eng0.obs,
                (st["codes"], st["hyper"], st["ostate"], st["scalars"]),
                chunk,
                tol,
                caps,
                active,
                status,
            )
        finally:
            numba.set_parallel_chunksize(old)


def _depths(depth):
    """``(one depth per trial or None, the first trial's depth)`` from ``fit_batch``'s
    ``depth``: an int (or None: the default) shared by the trials, or a sequence of them."""
    if depth is None or isinstance(depth, (int, np.integer)) or np.ndim(depth) == 0:
        return None, depth
    raw = list(np.asarray(depth, dtype=object).ravel()) if np.ndim(depth) == 1 else []
    if not raw or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in raw
    ):
        raise TypeError(f"depth must be an int or one int per seed, got {depth!r}")
    depths = [int(d) for d in raw]
    return depths, depths[0]


def _check_depths(depths, n, spec, widths) -> None:
    """One depth per trial: as many as seeds; mixed depths only for the flow optimisers
    (their trials are grouped by depth) and with widths that fit every depth."""
    if len(depths) != n:
        raise ValueError(f"depth must be an int or one depth per seed ({n}), got {len(depths)}")
    if len(set(depths)) == 1:
        return
    if not spec.is_flow:
        raise ValueError(
            f"one depth per trial needs a flow optimiser ('flow', 'flow_dopri5'); "
            f"{spec.name!r} runs one depth per batch: call fit_batch once per depth"
        )
    if widths is not None and np.ndim(widths) != 0:
        raise ValueError(
            "with one depth per trial, widths must be None or one width for every hidden "
            f"layer (an int), got {widths!r}"
        )
