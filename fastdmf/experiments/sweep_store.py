"""A sweep's folder: its settings (``sweep.json``) and one file per finished task, each
marked with the sweep's identity (the SHA-256 of its settings, the grid's axis order
included), so that a folder never mixes the results of two sweeps."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import zipfile

import numpy as np

from ..checkpoint import atomic_savez, json_default, problem_to_arrays
from ..checkpoint import digest as arrays_digest

FORMAT = 1
CONFIG_NAME = "sweep.json"
TASK_DIR = "tasks"


def task_path(out, t: int) -> str:
    return os.path.join(out, TASK_DIR, f"task-{t:06d}.npz")


def save_task(out, t: int, result: dict, digest: str) -> None:
    """Write task ``t``'s arrays atomically, its ``__meta__`` marked with the sweep's
    identity ``digest``."""
    meta = json.loads(str(result["__meta__"]))
    meta["sweep"] = digest
    atomic_savez(task_path(out, t), {**result, "__meta__": np.array(json.dumps(meta))})


def owned_tasks(out, digest: str):
    """``(file, meta)`` of every task file in ``out``, in task order; raises ValueError at
    the first one that the sweep with identity ``digest`` did not write."""
    for file in sorted(glob.glob(os.path.join(out, TASK_DIR, "task-*.npz"))):
        meta = read_task_meta(file)
        check_task(file, meta, digest, out)
        yield file, meta


def make_config(grid, spec, fit_kwargs, base_seed, fits_per_task, n_points, batch) -> dict:
    if not (isinstance(base_seed, (int, np.integer)) and base_seed >= 0):
        raise TypeError(f"base_seed must be a non-negative int, got {base_seed!r}")
    if fits_per_task is not None and not (
        isinstance(fits_per_task, (int, np.integer)) and fits_per_task >= 1
    ):
        raise ValueError(f"fits_per_task must be a positive int, got {fits_per_task!r}")
    if isinstance(spec, dict):
        problem = spec
    else:
        problem = {"object": repr(spec), "sha256": arrays_digest(problem_to_arrays(spec, "p")[0])}
    fit_kwargs = {k: _describe(v) if callable(v) else v for k, v in fit_kwargs.items()}
    config = {
        "format": FORMAT,
        "grid": grid,
        "problem": problem,
        "fit": fit_kwargs,
        "base_seed": int(base_seed),
        "n_points": n_points,
        "fits_per_task": None if fits_per_task is None else int(fits_per_task),
        "batch": bool(batch),
    }
    return json.loads(json.dumps(config, default=json_default))


def read_config(out) -> dict:
    """The settings of the sweep in folder ``out`` (its ``sweep.json``)."""
    path = os.path.join(out, CONFIG_NAME)
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as exc:
            config = exc
    if not (isinstance(config, dict) and isinstance(config.get("grid"), dict)):
        raise ValueError(
            f"{path} does not hold a sweep's settings (a JSON object with a 'grid'): "
            f"{config if isinstance(config, Exception) else type(config).__name__}; move it "
            "away, or choose another out= folder"
        )
    return config


def config_digest(config: dict) -> str:
    """A sweep's identity, kept in each of its task files: the SHA-256 of its settings as
    canonical JSON, the grid's axis order (which numbers the points) included."""
    text = json.dumps(
        {"axes": list(config["grid"]), "config": config},
        sort_keys=True,
        separators=(",", ":"),
        default=json_default,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def read_task_meta(file) -> dict:
    """The ``__meta__`` record of a task file."""
    try:
        with np.load(file, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        meta = exc
    if not (isinstance(meta, dict) and isinstance(meta.get("rows"), list)):
        raise ValueError(
            f"{file} is not a sweep task file ({meta!r}); move it away or "
            "delete it (running the sweep again then runs its task again)"
        )
    return meta


def check_task(file, meta, digest, out) -> None:
    """Refuse a task file not written by the sweep whose identity is ``digest``."""
    if meta.get("sweep") != digest:
        raise ValueError(
            f"{file} is not a result of the sweep in {out!r}: it holds "
            f"{'no sweep identity' if 'sweep' not in meta else 'another sweep identity'} "
            f"(this sweep's is {digest[:12]}...), so another sweep, or a fastdmf that did not "
            "mark task files, wrote it; move it away or delete it (running the sweep again "
            "then runs its task again), or choose another out= folder"
        )


def settle_config(out, config) -> int:
    """Write ``sweep.json`` for a new sweep or check it matches the sweep in ``out``;
    returns fits_per_task."""
    path = os.path.join(out, CONFIG_NAME)
    if os.path.exists(path):
        old = read_config(out)
        if config["fits_per_task"] is None:
            config["fits_per_task"] = old.get("fits_per_task")
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ValueError(
                f"{out!r} holds another sweep (differs in {diff}); choose another out= "
                "folder, or delete this one to start over"
            )
        if list(old["grid"]) != list(config["grid"]):  # dict equality ignores the order
            raise ValueError(
                f"{out!r} holds a sweep with the grid axes in the order {list(old['grid'])}, "
                f"not {list(config['grid'])}: grid points, and with them tasks and seeds, are "
                "numbered in axis order; give the axes in the same order, or choose another "
                "out= folder"
            )
        return int(config["fits_per_task"])
    tasks = os.path.join(out, TASK_DIR)
    if os.path.isdir(tasks) and os.listdir(tasks):
        raise ValueError(
            f"{tasks!r} holds files but {out!r} has no {CONFIG_NAME}: they may be another "
            "sweep's results; choose another out= folder, or move them away to start this "
            "sweep there"
        )
    if config["fits_per_task"] is None:
        config["fits_per_task"] = 1
    os.makedirs(tasks, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return int(config["fits_per_task"])


def _describe(fn) -> str:
    """A callable by name (its repr holds a memory address, which differs between runs)."""
    inner = getattr(fn, "func", fn)  # functools.partial
    name = f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', '?')}"
    return f"<callable {name}>"
