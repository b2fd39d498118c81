"""``fastdmf.sweep``: a grid of fits on a process pool or a dask cluster, resumable.

A grid is the Cartesian product of its axes (the first axis slowest): fit settings (depth,
init_scale, lr, ...), problem settings (n_observed, rank, shape, problem_seed) and ``repeat``
(repetitions with different seeds). Grid point ``i`` gets the seed
``SeedSequence(base_seed).spawn(n)[i]`` whatever the executor or grouping, so a fit is
reproducible from its row alone. Consecutive points are grouped into tasks of
``fits_per_task``; a task builds its problem inside the worker from a small spec (nothing big
is pickled), runs its fits with one Numba thread and the serial kernels, and returns its
results; the caller writes one file per task, atomically, named by task index and marked with
the sweep's identity (:mod:`fastdmf.experiments.sweep_store`). A sweep run again with the
same settings (the grid's axes in the same order) skips the tasks that have a file: an
interrupted sweep resumes where it stopped and never loses nor repeats a finished task.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import json
import logging
import multiprocessing
import os
import time as _time

import numba
import numpy as np

from .._kinds import KINDS, by_name, find_kind, kind_of
from .._plan import threads
from ..checkpoint import json_default
from .sweep_store import (
    FORMAT,
    config_digest,
    make_config,
    owned_tasks,
    save_task,
    settle_config,
    task_path,
)

__all__ = ["sweep", "grid_points", "point_seed", "PROBLEM_KINDS"]

log = logging.getLogger("fastdmf")

# problem spec kinds: name -> (builder, default spec); builders take the spec's other keys
PROBLEM_KINDS = {kind.name: kind.sweep_spec for kind in KINDS if kind.sweep_spec is not None}
PROBLEM_AXES = ("kind", "shape", "rank", "n_observed", "problem_seed")
BATCH_VARYING = ("seed", "init_scale", "lr")  # what fit_batch lets differ between trials
NOT_IN_SWEEPS = (
    "observed",
    "shape",
    "checkpoint",
    "checkpoint_every",
    "progress",
    "seed",
    "n_threads",
)


def grid_points(grid: dict) -> list[dict]:
    """The points of ``grid`` in order (the first axis slowest). An axis's list (or tuple,
    range, array) holds its values, whatever they are (``widths: [None, [4, 3]]`` is two
    values); ``repeat: k`` is short for ``repeat: [0, ..., k-1]``; anything else is a
    one-value axis, and so are a ``shape`` of numbers (``shape: [20, 20]``) and a
    ``record: ("log", k)`` tuple.

    Example
    -------
    >>> grid_points({"depth": [1, 2], "repeat": 2})
    [{'depth': 1, 'repeat': 0}, {'depth': 1, 'repeat': 1}, {'depth': 2, 'repeat': 0}, \
{'depth': 2, 'repeat': 1}]
    """
    if not isinstance(grid, dict) or not grid:
        raise TypeError(f"grid must be a non-empty dict of axis -> values, got {grid!r}")
    axes = {}
    for key, values in grid.items():
        if key == "repeat" and isinstance(values, (int, np.integer)):
            if values < 1:
                raise ValueError(f"grid repeat={values}: give a positive number of repetitions")
            values = list(range(int(values)))
        elif (
            not _is_sequence(values)
            or (key == "shape" and not any(_is_sequence(v) for v in values))
            or (key == "record" and isinstance(values, tuple) and values[:1] == ("log",))
        ):
            values = [values]
        values = [_plain(v) for v in values]  # lists of values stay lists: never np.asarray
        if not values:
            raise ValueError(f"grid axis {key!r} has no values")
        axes[key] = values
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _is_sequence(v) -> bool:
    return isinstance(v, (list, tuple, range, np.ndarray))


def point_seed(base_seed: int, index: int) -> int:
    """The fit seed of grid point ``index``: from ``SeedSequence(base_seed).spawn(n)[index]``
    (the same child, computed without spawning the others)."""
    child = np.random.SeedSequence(base_seed, spawn_key=(index,))
    return int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))


def sweep(
    grid: dict,
    *,
    out,
    problem=None,
    executor=None,
    workers: int | None = None,
    fits_per_task: int | None = None,
    base_seed: int = 0,
    batch: bool = False,
    save_factors: bool = True,
    progress: bool | None = None,
    **fit_kwargs,
):
    """Run every fit of ``grid`` and save the results under ``out``; returns
    :func:`load_sweep` of it.

    Parameters
    ----------
    grid : dict
        Axis name -> list of values. Axes: any :func:`fastdmf.fit` setting (``depth``,
        ``init_scale``, ``lr``, ``optimizer``, ``init``, ``widths``, ``max_steps``, ``tol``,
        ...), problem settings (``n_observed``, ``rank``, ``shape``, ``problem_seed``,
        ``kind``) and ``repeat`` (an int k: k seeds per setting).
    out : str or os.PathLike
        Output folder: ``sweep.json`` (the settings) and ``tasks/task-NNNNNN.npz``.
    problem : dict, CompletionProblem or None
        A spec such as ``dict(kind="completion", shape=(100, 100), rank=5, n_observed=2000,
        seed=0)`` (the default; grid axes override its keys, ``problem_seed`` its seed),
        built inside each worker; or a problem (pickled to every task, no problem axes).
    executor : concurrent.futures.Executor, dask.distributed.Client or None
        Anything with ``submit(fn, *args)`` returning ``concurrent.futures`` futures; a dask
        ``Client`` is used through ``client.get_executor()``. None: a local process pool of
        ``workers`` processes (default: all cores), one Numba thread each.
    fits_per_task : int, optional
        Consecutive grid points per task and result file (default 1; a rerun keeps the
        value of the first run).
    base_seed : int
        Root of the per-fit seeds (see :func:`point_seed`).
    batch : bool
        Run a task's consecutive fits that differ only by seed, init_scale and lr together
        with :func:`fastdmf.fit_batch` (the same results, bit for bit, as one fit each). Off
        by default: with one Numba thread per worker it saves little, and the batch kernel
        (a parallel function, never cached) compiles anew in every worker process.
    save_factors : bool
        Keep each fit's final factors in its task file.
    progress : bool, optional
        A progress bar over tasks (default: when stderr is a terminal).
    **fit_kwargs
        Settings of every fit (not varied), e.g. ``max_steps=10**5, record="log"``.

    Returns
    -------
    SweepTable
        One row per grid point: settings, seed, final metrics, wall time; trajectories.

    Raises
    ------
    TypeError, ValueError
        Settings that fit refuses, for any setting of the grid (checked before anything is
        written or run); an ``out`` folder that holds another sweep (other settings, the
        same axes in another order, or task files that are not this sweep's).
    RuntimeError
        When tasks failed (e.g. a worker died); the finished ones are saved, and running the
        same sweep again runs only the rest.

    Example
    -------
    >>> import fastdmf, tempfile
    >>> table = fastdmf.sweep({"depth": [1, 2], "repeat": 2}, out=tempfile.mkdtemp(),
    ...                       problem=dict(shape=(20, 20), rank=2, n_observed=150),
    ...                       lr=1e-2, max_steps=200, workers=1)     # doctest: +SKIP
    >>> table.columns()["depth"]                                     # doctest: +SKIP
    array([1, 1, 2, 2])
    """
    from .sweep_table import load_sweep

    points = grid_points(grid)
    fit_kwargs = _check_fit_kwargs(fit_kwargs, grid)
    spec = _problem_spec(problem, grid)
    _check_fit_settings(grid, spec, fit_kwargs)
    out = os.fspath(out)
    config = make_config(grid, spec, fit_kwargs, base_seed, fits_per_task, len(points), batch)
    fits_per_task = settle_config(out, config)
    digest = config_digest(config)
    for _ in owned_tasks(out, digest):  # refuse another sweep's task files before running
        pass
    n_tasks = -(-len(points) // fits_per_task)
    tasks = []
    for t in range(n_tasks):
        if os.path.exists(task_path(out, t)):
            continue
        idx = range(t * fits_per_task, min((t + 1) * fits_per_task, len(points)))
        fits = [(i, points[i], point_seed(base_seed, i)) for i in idx]
        tasks.append((t, (t, fits, spec, fit_kwargs, batch, save_factors)))
    log.info("sweep %s: %d points, %d tasks, %d to run", out, len(points), n_tasks, len(tasks))
    if tasks:
        _run_tasks(tasks, out, executor, workers, progress, digest)
    return load_sweep(out)


def _run_tasks(tasks, out, executor, workers, progress, digest):
    from .._progress import progress_bar

    own = executor is None
    if own:
        workers = workers or os.cpu_count() or 1
        executor = cf.ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)),
            initializer=init_worker,
            mp_context=multiprocessing.get_context("spawn"),
        )
    elif hasattr(executor, "get_executor"):  # a dask.distributed Client
        executor = executor.get_executor()
    failed = []
    bar = progress_bar(len(tasks), "tasks", progress)
    futures = {}
    try:
        for t, payload in tasks:
            futures[executor.submit(run_task, payload)] = t
            log.info("sweep task %d submitted", t)
        for fut in cf.as_completed(futures):
            t = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # a worker died or a fit raised: keep going, report
                log.error("sweep task %d failed: %r", t, exc)
                failed.append((t, exc))
            else:
                save_task(out, t, result, digest)
                log.info("sweep task %d finished", t)
            bar.update(1)
    finally:
        bar.close()
        for fut in futures:
            fut.cancel()
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    if failed:
        t, exc = failed[0]
        raise RuntimeError(
            f"{len(failed)} of {len(tasks)} sweep task(s) failed (first: task {t}: {exc!r}); "
            f"the finished ones are saved in {out!r}: run the same sweep again to run the "
            "rest"
        ) from exc


def init_worker() -> None:
    """Process-pool initializer: one Numba thread per worker (cores come from processes)."""
    numba.set_num_threads(1)


def run_task(payload) -> dict:
    """Run one task's fits (in a worker); returns the arrays of its result file."""
    t, fits, spec, fit_kwargs, batch, save_factors = payload
    with threads(1):
        rows, arrays = [], {}
        for group in _groups(fits, spec, fit_kwargs, batch):
            for (i, point, seed), res, wall in _run_group(group, spec, fit_kwargs, batch):
                k = len(rows)
                rows.append(_row(t, i, point, seed, spec, res, wall))
                for name, arr in res.trajectory.as_dict().items():
                    arrays[f"f{k}_traj_{name}"] = arr
                if save_factors:
                    for j, w in enumerate(res.factors, start=1):
                        arrays[f"f{k}_W{j}"] = w
    meta = {"format": FORMAT, "task": t, "rows": rows}
    arrays["__meta__"] = np.array(json.dumps(meta, default=json_default))
    return arrays


def _groups(fits, spec, fit_kwargs, batch):
    """Consecutive fits that fit_batch can run together (same problem, settings other than
    seed, init_scale and lr); singletons otherwise."""
    if (
        not batch
        or {"callback", "test", "max_time"} & set(fit_kwargs)
        or fit_kwargs.get("parallel")
    ):
        return [[f] for f in fits]
    groups, keys = [], []
    for f in fits:
        point = f[1]
        key = json.dumps(
            {k: v for k, v in point.items() if k not in BATCH_VARYING + ("repeat",)},
            sort_keys=True,
            default=json_default,
        )
        if keys and keys[-1] == key:
            groups[-1].append(f)
        else:
            groups.append([f])
            keys.append(key)
    return groups


def _run_group(group, spec, fit_kwargs, batch):
    from ..api import fit
    from ..batch import fit_batch
    from ..optim import get_optimizer

    point = group[0][1]
    problem = _build_problem(spec, point)
    settings = _fit_settings(fit_kwargs, point)
    if len(group) > 1 and get_optimizer(settings.get("optimizer", "grouprmsprop")).batched:
        start = _time.perf_counter()
        results = fit_batch(
            problem,
            seeds=[s for _, _, s in group],
            init_scale=[p.get("init_scale", settings.get("init_scale", 1e-3)) for _, p, _ in group],
            lr=[p.get("lr", settings.get("lr", 1e-3)) for _, p, _ in group],
            **{k: v for k, v in settings.items() if k not in ("init_scale", "lr", "parallel")},
        )
        wall = (_time.perf_counter() - start) / len(group)
        return [(f, r, wall) for f, r in zip(group, results, strict=True)]
    out = []
    for f in group:
        i, point, seed = f
        kw = _fit_settings(fit_kwargs, point)
        kw.setdefault("parallel", False)
        kw["progress"] = False  # workers share the caller's terminal: one bar, over tasks
        start = _time.perf_counter()
        res = fit(_build_problem(spec, point), seed=seed, **kw)
        out.append((f, res, _time.perf_counter() - start))
    return out


_NOT_SUMMARIES = ("step", "time", "n_evals", "val_error", "schatten", "grad_norm", "param_norm")


def _row(t, i, point, seed, spec, res, wall) -> dict:
    traj = res.trajectory
    row = {"index": i, "task": t}
    if isinstance(spec, dict):
        resolved = _resolved_spec(spec, point)
        row.update({k: resolved[k] for k in resolved if k != "seed"}, problem_seed=resolved["seed"])
    row.update(point)
    row.update(seed=seed, status=res.status, steps=res.n_steps)
    # the final record's summary values: train_loss, test_error, then the kind's own
    # (nuclear_norm, effective_rank for the matrix kinds; l1, l2, support, potential for a
    # diagonal network)
    row.update(
        {
            name: float(getattr(traj, name)[-1])
            for name in traj.scalars
            if name not in _NOT_SUMMARIES
        }
    )
    row["wall_time"] = wall
    return json.loads(json.dumps(row, default=json_default))


# --------------------------------------------------------------------------- problems


def _resolved_spec(spec, point) -> dict:
    resolved = dict(spec)
    for k in PROBLEM_AXES:
        if k in point:
            resolved["seed" if k == "problem_seed" else k] = point[k]
    return resolved


def _build_problem(spec, point):
    if not isinstance(spec, dict):
        return spec
    resolved = _resolved_spec(spec, point)
    return _cached_problem(json.dumps(resolved, sort_keys=True, default=json_default))


@functools.lru_cache(maxsize=8)
def _cached_problem(key: str):
    spec = json.loads(key)
    builder, _ = PROBLEM_KINDS[spec.pop("kind")]
    if "shape" in spec:
        spec["shape"] = tuple(spec["shape"])
    return builder(**spec)


def _problem_spec(problem, grid):
    if find_kind(problem) is not None:  # a problem object
        axes = [k for k in grid if k in PROBLEM_AXES]
        if axes:
            raise ValueError(
                f"grid axes {axes} vary the problem; with problem= given as a "
                "problem object, pass a spec dict instead"
            )
        return problem
    if problem is None:
        problem = {}
    if not isinstance(problem, dict):
        raise TypeError(
            "problem= takes a spec dict (e.g. dict(kind='completion', "
            "shape=(100, 100), rank=5, n_observed=2000, seed=0)), a "
            f"CompletionProblem or None; got {type(problem).__name__}"
        )
    kind = problem.get("kind", "completion")
    kinds = {grid["kind"]} if isinstance(grid.get("kind"), str) else set(grid.get("kind", []))
    for k in kinds | {kind}:
        if k not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {k!r}; known kinds: {sorted(PROBLEM_KINDS)}")
    _, defaults = PROBLEM_KINDS[kind]
    unknown = set(problem) - set(defaults) - {"kind"}
    if unknown:
        raise ValueError(
            f"problem spec has unknown key(s) {sorted(unknown)}; a "
            f"{kind!r} spec takes {sorted(defaults)}"
        )
    spec = {"kind": kind, **defaults, **problem}
    spec["shape"] = [int(s) for s in spec["shape"]]
    # build a problem for every setting of the problem axes but the seed now, so that a bad
    # spec fails here, before anything is written, not in every worker
    axes = {k: v for k, v in grid.items() if k in PROBLEM_AXES and k != "problem_seed"}
    for point in grid_points(axes) if axes else [{}]:
        try:
            _build_problem(spec, point)
        except (TypeError, ValueError) as exc:
            raise _refused(exc, "the problem of", point) from exc
    return spec


def _check_fit_kwargs(fit_kwargs, grid):
    import inspect

    from ..api import fit

    allowed = set(inspect.signature(fit).parameters) - set(NOT_IN_SWEEPS)
    for where, keys in (("keyword", fit_kwargs), ("grid axis", grid)):
        bad = [
            k
            for k in keys
            if k not in allowed
            and not (where == "grid axis" and (k in PROBLEM_AXES or k == "repeat"))
        ]
        if bad:
            raise TypeError(
                f"sweep() {where}(s) {bad} unknown or not sweepable; fit settings: "
                f"{sorted(allowed)}, problem axes: {list(PROBLEM_AXES)}, and 'repeat'"
            )
    both = set(fit_kwargs) & set(grid)
    if both:
        raise TypeError(f"{sorted(both)} given both as a grid axis and as a keyword")
    return {k: _fit_value(k, v) for k, v in fit_kwargs.items()}


def _check_fit_settings(grid, spec, fit_kwargs) -> None:
    """``fit``'s argument checks, without fitting, for every setting of the grid's fit axes
    (and problem shape): a bad value fails here, before ``sweep.json`` is written, rather
    than in every task."""
    import inspect

    from .._defaults import is_real_data
    from .._defaults import resolve as resolve_defaults
    from .._plan import plan
    from ..api import fit
    from ..engine import resolve_backend

    defaults = {
        k: p.default
        for k, p in inspect.signature(fit).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    axes = {
        k: v for k, v in grid.items() if k == "shape" or (k not in PROBLEM_AXES and k != "repeat")
    }
    for point in grid_points(axes) if axes else [{}]:
        kw = {**defaults, **_fit_settings(fit_kwargs, point)}
        if isinstance(spec, dict):
            resolved = _resolved_spec(spec, point)
            kind, shape = by_name(resolved["kind"]), tuple(resolved["shape"])
        else:
            kind, shape = kind_of(spec), spec.shape
        # the defaults that depend on the observations (a spec dict is a synthetic problem)
        kw = resolve_defaults(kw, not isinstance(spec, dict) and is_real_data(spec), shape)
        try:
            the = plan(
                kind,
                shape,
                **{
                    k: kw[k]
                    for k in (
                        "depth",
                        "widths",
                        "init",
                        "init_scale",
                        "optimizer",
                        "lr",
                        "optimizer_options",
                        "max_steps",
                        "max_time",
                        "tol",
                        "record",
                        "top_k",
                        "dtype",
                        "parallel",
                    )
                },
            )
            if isinstance(the.init, str):  # the scheme's checks, on 1 x 1 factors
                tiny = kind.layout((1, 1), kw["depth"], [1] * (kw["depth"] - 1))
                kind.initialize(tiny, the.init, kw["init_scale"], np.random.default_rng(0))
            else:
                the.layout.pack(the.init)
            if kw["backend"] != "auto":  # "auto" is decided where the fit runs
                resolve_backend(kw["backend"], the.spec)
        except (TypeError, ValueError) as exc:
            raise _refused(exc, "fit refuses the settings of", point) from exc


def _refused(exc, what, point):
    """The TypeError or ValueError that says which grid points a check refused, and why."""
    where = f"the grid points with {point}" if point else "the fits"
    kind = TypeError if isinstance(exc, TypeError) else ValueError
    return kind(f"sweep: {what} {where}: {exc} (nothing was run or written)")


def _fit_settings(fit_kwargs, point) -> dict:
    """The keywords of ``fit`` for a grid point: the sweep's and the point's fit settings."""
    return {
        **fit_kwargs,
        **{
            k: _fit_value(k, v) for k, v in point.items() if k not in PROBLEM_AXES and k != "repeat"
        },
    }


def _fit_value(key, value):
    """A setting as ``fit`` takes it: grid values are plain lists (JSON has no tuples), so a
    ``["log", k]`` record becomes the tuple ``("log", k)`` again."""
    if key == "record" and isinstance(value, list) and value[:1] == ["log"]:
        return tuple(value)
    return value


def _plain(v):
    """Grid values as plain Python (JSON-able, hashable where possible)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    return v
