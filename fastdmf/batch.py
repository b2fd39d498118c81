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
from .api import (
    _DTYPES,
    FitResult,
    _plan,
    _resolve_seed,
    _settings,
    _threads,
    _validation_arg,
    as_problem,
    prepare_observations,
)
from .batch_flow import per_trial_options
from .drive import Watch
from .engine import Engine, resolve_backend
from .factors import initialize
from .kernels import cpu
from .kernels.batch import run_batch, run_batch_sensing
from .kernels.blas import blas_threads
from .optim import get_optimizer
from .problem import SensingProblem
from .trajectory import Trajectory

__all__ = ["fit_batch"]


def fit_batch(
    observed,
    depth: int | None = None,
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

    Example
    -------
    >>> import fastdmf
    >>> p = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=150, seed=0)
    >>> results = fastdmf.fit_batch(p, depth=2, seeds=[0, 1, 2], lr=1e-2, max_steps=200)
    >>> [r.n_steps for r in results]
    [200, 200, 200]
    """
    source = as_problem(observed, shape)
    auto, problem, val, patience, fitted = prepare_observations(
        source, {"depth": depth, "lr": lr, "record": record, "widths": widths, "init": init,
                 "validation": validation, "offsets": offsets, "patience": patience},
        validation_seed)
    depth, lr, record, widths = auto["depth"], auto["lr"], auto["record"], auto["widths"]
    seeds = [_resolve_seed(s) for s in np.atleast_1d(np.asarray(seeds, dtype=object))]
    n = len(seeds)
    if n == 0:
        raise ValueError("seeds is empty: fit_batch runs one trial per seed, give at least one")
    scales = _per_trial(init_scale, n, "init_scale")
    rates = _per_trial(lr, n, "lr")
    if get_optimizer(optimizer).code < 0:  # the flow: fastdmf.batch_flow
        from .batch_flow import fit_batch_flow

        return fit_batch_flow(problem, (auto, val, patience, fitted), (seeds, scales, rates), {
            "init": init, "optimizer": optimizer, "optimizer_options": optimizer_options,
            "max_steps": max_steps, "max_time": max_time, "tol": tol, "top_k": top_k,
            "dtype": dtype, "n_threads": n_threads, "backend": backend,
            "validation_seed": validation_seed, "checkpoint": checkpoint,
            "checkpoint_every": checkpoint_every})
    if checkpoint is not None:
        raise ValueError("fit_batch writes checkpoints for the flow optimisers ('flow', "
                         "'flow_dopri5'); for the others checkpoint each trial with "
                         "fastdmf.fit(..., checkpoint=...)")
    options = per_trial_options(optimizer_options, n)
    # fit's checks (the first trial's lr and init_scale; each trial's hyper checks the rest)
    init, dtype, spec, _, layout, schedule, _ = _plan(
        problem.shape, depth, widths, init, scales[0], optimizer, rates[0], options[0],
        max_steps, max_time, tol, record, top_k, dtype, False)
    where = resolve_backend(backend, spec.code, problem)
    if where == "cuda":
        from .kernels.cuda import max_trials

        most = max_trials(problem.shape[0], depth)
        if n > most:  # more trials than one launch holds: consecutive batches (same bits)
            kw = dict(depth=depth, shape=shape, widths=widths, init=init, optimizer=optimizer,
                      max_steps=max_steps, tol=tol,
                      record=record, top_k=top_k, dtype=dtype, n_threads=n_threads,
                      backend=backend, validation=validation, patience=patience,
                      validation_seed=validation_seed, offsets=offsets)
            # each launch splits the observations and fits the offsets the same way
            return [res for lo in range(0, n, most)
                    for res in fit_batch(source, seeds=seeds[lo:lo + most],
                                         init_scale=scales[lo:lo + most],
                                         lr=rates[lo:lo + most],
                                         optimizer_options=_slice(options, lo, lo + most),
                                         **kw)]
    engines = []
    for seed, scale, rate, opts in zip(seeds, scales, rates, options, strict=True):
        factors = initialize(layout, init, scale, np.random.default_rng(seed))
        hyper = spec.hyper(rate, opts)
        theta = layout.pack(factors, dtype=_DTYPES[dtype])
        engines.append(Engine(problem, layout, theta, spec, hyper, parallel=False))
        engines[-1].obs = engines[0].obs  # one copy of the observations (or operator)
    stacked = _stack(engines)
    if where == "cuda":
        from .kernels.cuda import DeviceBatch

        stacked["device"] = DeviceBatch(problem, engines[0].dims, stacked["theta"],
                                        stacked["codes"], stacked["hyper"], stacked["ostate"],
                                        stacked["scalars"])
    with _threads(n_threads):
        trajs, statuses = _drive_batch(engines, stacked, problem, schedule, max_steps, tol,
                                       top_k, depth, val, patience)
    common = {"depth": depth, "widths": widths, "init": init, "optimizer": optimizer,
              "max_steps": max_steps, "tol": tol,
              "record": record, "top_k": top_k, "dtype": dtype, "parallel": False,
              "backend": backend, "validation": _validation_arg(auto["validation"]),
              "patience": patience, "validation_seed": validation_seed,
              "offsets": fitted.kind if fitted is not None else None}
    results = []
    for eng, traj, status, seed, scale, rate, opts in zip(engines, trajs, statuses, seeds,
                                                          scales, rates, options, strict=True):
        args = {**common, "seed": seed, "init_scale": scale, "lr": rate,
                "optimizer_options": opts or None}
        settings = _settings(args, seed, problem,
                             "cuda (batched)" if where == "cuda" else "serial (batched)")
        if fitted is not None:
            settings["offsets"] = fitted.describe()
        if val is not None:
            settings["validation_entries"] = val.n_observed
        results.append(FitResult([np.array(w) for w in eng.factors()], traj, status,
                                 settings, eng.n_steps, fitted))
    return results


def _slice(options, lo, hi):
    """Trials lo..hi-1 of per-trial options, as one options dict with per-trial lists."""
    return {key: [o[key] for o in options[lo:hi]] for key in options[0]}


def _per_trial(value, n, name):
    raw = np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number or one per seed, got {value!r}")
    vals = np.broadcast_to(raw.astype(np.float64), (n,)) if raw.ndim == 0 \
        else raw.astype(np.float64)
    if vals.shape != (n,):
        raise ValueError(f"{name} must be a scalar or one value per seed ({n}), got {value!r}")
    return [float(v) for v in vals]


def _stack(engines):
    """Stack the trials' buffers (trial axis first) and make each engine view its row."""
    names = ("theta", "grad", "work", "rowloss", "ostate", "scalars", "hyper")
    stacked = {name: np.stack([getattr(e, name) for e in engines]) for name in names}
    for b, eng in enumerate(engines):
        for name in names:
            setattr(eng, name, stacked[name][b])
    stacked["codes"] = np.full(len(engines), engines[0].spec.code, dtype=np.int64)
    return stacked


def _drive_batch(engines, st, problem, schedule, max_steps, tol, top_k, depth, val=None,
                 patience=None):
    """The batched counterpart of ``drive.drive``: one :class:`~fastdmf.drive.Watch` per trial
    (records, statuses, divergence), all trials advanced by one compiled call per chunk."""
    n = len(engines)
    trajs = [Trajectory(depth, top_k, {"shape": list(problem.shape)}) for _ in range(n)]
    watches = [Watch(e, problem, None, t, top_k, val, patience)
               for e, t in zip(engines, trajs, strict=True)]
    statuses: list = ["converged" if w.loss <= tol else None for w in watches]
    if max_steps == 0:
        return trajs, [w.finish(s or "max_steps") for w, s in zip(watches, statuses,
                                                                    strict=True)]
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
            _run_cpu(st, eng0, problem, chunk, tol, caps, active, status)
        step += chunk
        for b in np.flatnonzero(active):
            code = int(status[b])
            at_record = step == target or code == cpu.CONVERGED or step >= max_steps
            statuses[b] = watches[b].settle(code, at_record, tol)
            if statuses[b] is None and step >= max_steps:
                statuses[b] = "max_steps"
    return trajs, [w.finish(s) for w, s in zip(watches, statuses, strict=True)]


def _run_cpu(st, eng0, problem, chunk, tol, caps, active, status):
    """One compiled call advancing every active trial on the CPU, one trial per task."""
    kernel = run_batch_sensing if isinstance(problem, SensingProblem) else run_batch
    with blas_threads(1):
        old = numba.get_parallel_chunksize()
        numba.set_parallel_chunksize(1)
        try:
            kernel((st["theta"], st["grad"], st["work"], st["rowloss"]), eng0.dims,
                      eng0.offs, eng0.obs, (st["codes"], st["hyper"], st["ostate"],
                                            st["scalars"]),
                      chunk, tol, caps, active, status)
        finally:
            numba.set_parallel_chunksize(old)
