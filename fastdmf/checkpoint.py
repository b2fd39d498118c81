"""Checkpoints of a running fit, and :func:`resume`.

``fit(..., checkpoint=path)`` writes, at chunk boundaries, one ``.npz`` file holding everything
needed to continue: the settings, the engine's full state (parameters, optimiser state, step
counter, running average, time, integrator state), the trajectory so far, the last good
record a diverging fit returns to, and the problem's arrays (with a SHA-256 of them, checked
on load). :func:`resume` rebuilds the fit from it and runs the remaining chunks; the result
(factors, trajectory, status, steps) is bit for bit that of the uninterrupted fit on the same
machine (another CPU or BLAS kernel rounds differently: docs/kernels.md, "Same bits").

Why this is exact: a discrete optimiser's compiled call evaluates the loss and gradient afresh
at every step, so where a run is cut into compiled calls does not change its arithmetic; the
record points (where the fit measures, tests ``tol`` and the divergence cap) depend only on
the settings. A checkpoint is a copy of the state at such a boundary, and the chunks after it
are the same whether the fit went on or was resumed. The kernel family (serial or parallel)
is kept, and the parallel kernels do not depend on the thread count.

Writes are atomic: a temporary file in the same directory, flushed and fsync'ed, then
``os.replace``; a fit killed at any moment leaves the previous checkpoint intact (and perhaps
a stray ``*.tmp`` file, which is ignored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time as _time
import zipfile
from dataclasses import dataclass

import numpy as np

from ._kinds import by_name, kind_of
from ._plan import FitData, Plan, threads
from .drive import Watch, run
from .engine import make_engine
from .offsets import Offsets
from .optim import get_optimizer
from .trajectory import Grid

__all__ = ["resume", "restore", "Restored", "read_checkpoint", "atomic_savez", "DEFAULT_EVERY"]

log = logging.getLogger("fastdmf")

FORMAT = 1
# what every checkpoint holds (newer optional keys are read with defaults)
STATE_KEYS = (
    "status",
    "settings",
    "optimizer",
    "parallel",
    "dims",
    "dtype",
    "end",
    "budget",
    "tol",
    "top_k",
    "loss",
    "cap",
    "good_step",
    "traj_depth",
    "traj_meta",
    "n_steps",
    "problem_kind",
    "problem_meta",
    "problem_sha256",
)
ARRAY_KEYS = (
    "theta",
    "grad",
    "ostate",
    "scalars",
    "hyper",
    "schedule",
    "good_params",
    "good_scalars",
    "traj_step",
)
DEFAULT_EVERY = 60.0  # seconds between checkpoints when checkpoint_every is not given
SAFE_OVERRIDES = ("callback", "progress", "checkpoint", "checkpoint_every", "n_threads")


def atomic_savez(path, arrays: dict) -> None:
    """``np.savez`` to ``path`` atomically: temp file in the same folder, fsync, os.replace."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platform dependent
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def parse_every(every):
    """``checkpoint_every``: an int is a number of steps, a float a number of seconds."""
    if every is None:
        return None, DEFAULT_EVERY
    if isinstance(every, bool):
        raise TypeError("checkpoint_every takes an int (steps) or a float (seconds), not a bool")
    if isinstance(every, (int, np.integer)):
        if every < 1:
            raise ValueError(f"checkpoint_every={every}: a number of steps must be >= 1")
        return int(every), None
    if isinstance(every, (float, np.floating)):
        if not (np.isfinite(every) and every >= 0):
            raise ValueError(f"checkpoint_every={every}: seconds must be finite and >= 0")
        return None, float(every)
    raise TypeError(f"checkpoint_every takes an int (steps) or a float (seconds), got {every!r}")


def check_path(path) -> str:
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"checkpoint must be a file path, got {path!r}") from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"checkpoint={path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(
            f"checkpoint={path!r} is a folder; give a file path inside it, "
            f"e.g. {os.path.join(path, 'fit.ckpt')!r}"
        )
    return path


class Checkpointer:
    """Writes a fit's checkpoints between compiled chunks (see the module docstring).

    ``plan`` (a :class:`fastdmf._plan.Plan`), ``data`` (its :class:`~fastdmf._plan.FitData`)
    and ``settings`` hold what the engine does not: the record schedule, end position, step
    budget, tol, top_k and patience; the problem, test and validation entries and offsets;
    the settings a result keeps."""

    def __init__(self, path, every, plan, data, settings):
        self.path = check_path(path)
        self.every_steps, self.every_seconds = parse_every(every)
        self.plan, self.data, self.settings = plan, data, settings
        self.last_step, self.last_time = 0, _time.monotonic()
        self.count = 0

    def attach(self, engine, watch, traj) -> None:
        """The fit's state to save from now on."""
        self.engine, self.watch, self.traj = engine, watch, traj
        self.last_step, self.last_time = engine.n_steps, _time.monotonic()

    def started(self, engine, watch, traj) -> None:
        """Attach and write the first checkpoint (after the initial record)."""
        self.attach(engine, watch, traj)
        self.write()

    def chunk_done(self) -> None:
        """After a chunk the fit goes on from: write when due."""
        if self.every_steps is not None:
            due = self.engine.n_steps - self.last_step >= self.every_steps
        else:
            due = _time.monotonic() - self.last_time >= self.every_seconds
        if due:
            self.write()

    def finish(self, status) -> None:
        """Write the final checkpoint, holding the fit's status."""
        self.write(status)

    def write(self, status=None) -> None:
        engine, watch, traj = self.engine, self.watch, self.traj
        plan, data = self.plan, self.data
        state = {
            "format": FORMAT,
            "status": status,
            "settings": self.settings,
            "optimizer": engine.spec.name,
            "parallel": bool(engine.kernels.parallel),
            "backend": engine.backend,
            "dims": [int(d) for d in engine.layout.dims],
            "dtype": np.dtype(engine.theta.dtype).name,
            "end": plan.end,
            "budget": int(plan.budget),
            "tol": float(plan.tol),
            "top_k": plan.top_k,
            "loss": float(watch.loss),
            "cap": float(watch.cap),
            "good_step": int(watch.good_step),
            "traj_depth": traj.depth,
            "traj_meta": traj.meta,
            "n_steps": engine.n_steps,
            "schedule_grid": _grid_state(plan.schedule),
        }
        arrays = dict(engine.state())
        arrays.update(
            schedule=_schedule_array(plan.schedule),
            good_params=watch.good[0],
            good_scalars=watch.good[1],
        )
        arrays.update({f"traj_{k}": v for k, v in traj.to_arrays().items()})
        problem_arrays, kind, pmeta = problem_to_arrays(data.problem, "problem")
        arrays.update(problem_arrays)
        state.update(problem_kind=kind, problem_meta=pmeta, problem_sha256=digest(problem_arrays))
        if data.test is not None:
            test_arrays, _, _ = problem_to_arrays(data.test, "test")
            arrays.update(test_arrays)
        if data.val is not None:  # early stopping: the entries and the best record
            val_arrays, _, _ = problem_to_arrays(data.val, "val")
            arrays.update(val_arrays)
            best = watch.best
            state["patience"] = int(plan.patience)
            state["best"] = {k: best[k] for k in ("val", "ref", "index", "since")}
            arrays["best_params"], arrays["best_scalars"] = best["snap"]
        if data.offsets is not None:
            state["offsets_kind"] = data.offsets.kind
            arrays.update(data.offsets.to_arrays())
        arrays["__state__"] = np.array(json.dumps(state, default=json_default))
        atomic_savez(self.path, arrays)
        self.last_step, self.last_time = engine.n_steps, _time.monotonic()
        self.count += 1
        log.info(
            "checkpoint %s at step %d%s",
            self.path,
            engine.n_steps,
            f" (final, {status})" if status else "",
        )


def _grid_state(schedule):
    """[step, count] of a :class:`Grid` schedule (kept as its two numbers), else None."""
    return [schedule.step, schedule.count] if isinstance(schedule, Grid) else None


def _schedule_array(schedule):
    """The schedule's steps as an array; a Grid is kept in the state as its two numbers."""
    return np.zeros(0) if isinstance(schedule, Grid) else np.asarray(schedule)


def _schedule_from(state, raw):
    grid = state.get("schedule_grid")
    return Grid(*grid) if grid else raw["schedule"]


def problem_to_arrays(problem, prefix):
    """``({prefix_name: array}, kind name, meta)`` of a problem (see ``to_arrays``)."""
    kind = kind_of(problem)
    out = {f"{prefix}_{k}": np.asarray(v) for k, v in problem.to_arrays().items()}
    return out, kind.name, dict(problem.meta)


def problem_from_arrays(data, prefix, kind, meta=None):
    """The problem of kind name ``kind`` back from :func:`problem_to_arrays`'s arrays."""
    head = f"{prefix}_"
    arrays = {k[len(head) :]: data[k] for k in data.files if k.startswith(head)}
    return by_name(kind).problem_type.from_arrays(arrays, meta)


def digest(arrays) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return repr(obj)


def read_checkpoint(path) -> tuple[dict, dict]:
    """``(state, arrays)`` of a checkpoint file: its JSON state and every array, loaded.

    Raises ValueError when the file is not a fastdmf checkpoint or its problem arrays do not
    match their recorded hash."""
    name = os.fspath(path)
    try:
        loaded = np.load(name, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array (.npy), not the .npz a checkpoint is")
        with loaded as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {name!r}") from None
    except IsADirectoryError:
        raise ValueError(f"{name!r} is a folder; resume takes the checkpoint file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{name!r} is not a readable checkpoint (damaged, truncated or another "
            f"kind of file): {exc}"
        ) from None
    if "__state__" not in arrays:
        raise ValueError(f"{name!r} is an .npz file but not a fastdmf checkpoint")
    try:
        state = json.loads(str(arrays.pop("__state__")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name!r}: the checkpoint's state is damaged ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(
            f"checkpoint format {found!r} is not supported (this fastdmf reads format {FORMAT})"
        )
    missing = [key for key in STATE_KEYS if key not in state]
    missing += [key for key in ARRAY_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{name!r}: the checkpoint's state lacks {missing}; the file is damaged")
    problem_arrays = {k: v for k, v in arrays.items() if k.startswith("problem_")}
    if digest(problem_arrays) != state["problem_sha256"]:
        raise ValueError(
            f"checkpoint {os.fspath(path)!r}: the problem's arrays do not match "
            "their recorded SHA-256; the file is damaged"
        )
    return state, arrays


class _Arrays:
    """dict of arrays with the ``.files`` / ``[]`` interface of an NpzFile."""

    def __init__(self, arrays):
        self._a = arrays
        self.files = list(arrays)

    def __getitem__(self, key):
        return self._a[key]


def resume(path, **overrides):
    """Continue the fit saved in checkpoint ``path``; returns its :class:`FitResult`.

    The result (factors, trajectory, status, steps) is bit for bit that of the same fit run
    without interruption on the same machine. A checkpoint of a finished fit returns its
    result at once. The run keeps writing checkpoints to ``path`` at the same cadence.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``fit(..., checkpoint=path)``.
    **overrides
        Only settings that cannot change the result: ``callback``, ``progress``,
        ``checkpoint`` (another path to write to, or None for none), ``checkpoint_every``
        and ``n_threads``. The others are fixed by the checkpoint.

    Example
    -------
    >>> import fastdmf, os, tempfile
    >>> p = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=150, seed=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "fit.ckpt")
    >>> a = fastdmf.fit(p, depth=2, lr=1e-2, max_steps=300, record=100, seed=0,
    ...                 checkpoint=path, checkpoint_every=100)
    >>> b = fastdmf.resume(path)          # the run was finished: its result again
    >>> bool((a.factors[0] == b.factors[0]).all()), b.n_steps
    (True, 300)
    """
    unknown = set(overrides) - set(SAFE_OVERRIDES)
    if unknown:
        raise TypeError(
            f"resume() cannot change {sorted(unknown)}: they would change the result. It "
            f"takes only {list(SAFE_OVERRIDES)}; start a new fit to change the others"
        )
    with threads(overrides.get("n_threads")):
        fit = restore(
            path, overrides.get("checkpoint", path), overrides.get("checkpoint_every", _NOT_GIVEN)
        )
        if fit.result is not None:  # a finished fit: its result again
            return fit.result
        log.info("resuming %s at step %d", os.fspath(path), fit.engine.n_steps)
        return run(
            fit.engine,
            fit.data,
            fit.plan,
            fit.traj,
            fit.settings,
            callback=overrides.get("callback"),
            progress=overrides.get("progress"),
            saver=fit.saver,
            watch=fit.watch,
        )


_NOT_GIVEN = object()


@dataclass(frozen=True, eq=False)
class Restored:
    """A fit rebuilt from its checkpoint (:func:`restore`): its JSON ``state``, plan, data,
    settings, trajectory and engine; for a finished fit its ``result``, else the ``watch``
    to continue with and the ``saver`` (or None) that keeps writing checkpoints."""

    state: dict
    plan: Plan
    data: FitData
    settings: dict
    traj: object
    engine: object
    watch: object = None
    saver: object = None
    result: object = None


def restore(path, target=_NOT_GIVEN, every=_NOT_GIVEN) -> Restored:
    """The fit saved in checkpoint ``path``, rebuilt to continue (``resume`` and
    ``fastdmf.resume_batch`` run it on). Checkpoints go on to ``target`` (default ``path``;
    None for none) every ``every`` (default: the fit's ``checkpoint_every``). Engines are
    built with the current Numba thread count."""
    state, raw = read_checkpoint(path)
    arrays = _Arrays(raw)
    settings = state["settings"]
    kind = by_name(state["problem_kind"])
    problem = problem_from_arrays(arrays, "problem", kind.name, state["problem_meta"])
    test = val = offsets = best = None
    if any(k.startswith("test_") for k in arrays.files):
        test = problem_from_arrays(arrays, "test", kind.name)
    if any(k.startswith("val_") for k in arrays.files):
        val = problem_from_arrays(arrays, "val", kind.name)
        best = dict(state["best"], snap=(raw["best_params"].copy(), raw["best_scalars"].copy()))
    if "offsets_kind" in state:
        offsets = Offsets.from_arrays(state["offsets_kind"], arrays)
    data = FitData(problem, test, val, offsets)
    layout = kind.from_dims(state["dims"], state["traj_depth"])
    spec = get_optimizer(state["optimizer"])
    args = settings["arguments"]
    plan = Plan(
        kind=kind,
        shape=tuple(problem.shape),
        depth=layout.depth,
        layout=layout,
        widths=args.get("widths"),
        init=args.get("init"),
        init_scale=args.get("init_scale"),
        spec=spec,
        lr=args.get("lr"),
        hyper=raw["hyper"].copy(),
        schedule=_schedule_from(state, raw),
        end=state["end"],
        budget=state["budget"],
        tol=state["tol"],
        top_k=state["top_k"],
        dtype=state["dtype"],
        parallel=state["parallel"],
        seed=settings.get("seed"),
        patience=state.get("patience"),
    )
    traj = kind.trajectory(plan, problem)  # the kind's fields, the records saved so far
    traj.depth, traj.meta = state["traj_depth"], state["traj_meta"]
    traj.append_arrays({k[len("traj_") :]: raw[k] for k in raw if k.startswith("traj_")})
    engine = make_engine(
        problem,
        layout,
        raw["theta"].copy(),
        spec,
        plan.hyper,
        state["parallel"],
        state.get("backend", "cpu"),
    )
    engine.load_state(raw)
    if state["status"] is not None:
        result = kind.result(
            [np.array(w) for w in engine.factors()],
            traj,
            state["status"],
            settings,
            engine.n_steps,
            offsets,
        )
        return Restored(state, plan, data, settings, traj, engine, result=result)
    watch = Watch.resumed(
        engine,
        data,
        plan,
        traj,
        state["loss"],
        state["cap"],
        (raw["good_params"].copy(), raw["good_scalars"].copy()),
        state["good_step"],
        best,
    )
    every = args.get("checkpoint_every") if every is _NOT_GIVEN else every
    target = path if target is _NOT_GIVEN else target
    saver = None if target is None else Checkpointer(target, every, plan, data, settings)
    if saver is not None:
        saver.attach(engine, watch, traj)
    return Restored(state, plan, data, settings, traj, engine, watch, saver)
