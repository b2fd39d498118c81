"""``fastdmf sweep config.toml``: a sweep described by a TOML file, and its summary."""

from __future__ import annotations

import json

import numpy as np

from .sweep import sweep

__all__ = ["run_config", "summary"]


CONFIG_KEYS = ("out", "base_seed", "fits_per_task", "workers", "batch", "save_factors")


def run_config(path, out=None, workers=None, scheduler=None, progress=None):
    """``fastdmf sweep config.toml``: run the sweep a TOML file describes.

    Top-level keys: ``out``, ``base_seed``, ``fits_per_task``, ``workers``, ``batch``,
    ``save_factors``; tables ``[grid]`` (axes, required), ``[problem]`` (a spec) and ``[fit]``
    (settings of every fit). ``out``/``workers`` arguments override the file; ``scheduler``
    is a dask scheduler address (``tcp://host:8786``). Returns the table."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError(
                "reading TOML on Python 3.10 needs tomli: pip install tomli"
            ) from None
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    unknown = set(cfg) - set(CONFIG_KEYS) - {"grid", "problem", "fit"}
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {sorted(unknown)}; top-level keys are "
            f"{list(CONFIG_KEYS)} and the tables [grid], [problem], [fit]"
        )
    if "grid" not in cfg:
        raise ValueError(f"{path}: a sweep needs a [grid] table of axes")
    out = out or cfg.get("out")
    if out is None:
        raise ValueError(f"{path}: give the output folder as out = '...' or --out")
    kwargs = {k: cfg[k] for k in CONFIG_KEYS[1:] if k in cfg}
    if workers is not None:
        kwargs["workers"] = workers
    client = None
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError(
                "--scheduler needs dask.distributed: pip install 'fastdmf[distributed]'"
            ) from None
        client = Client(scheduler)
        kwargs["executor"] = client
    try:
        return sweep(
            cfg["grid"],
            out=out,
            problem=cfg.get("problem"),
            progress=progress,
            **kwargs,
            **cfg.get("fit", {}),
        )
    finally:
        if client is not None:
            client.close()


def summary(table) -> str:
    """Median final metrics per setting (grid axes other than ``repeat``), as text."""
    axes = [k for k in table.config["grid"] if k != "repeat"]
    groups: dict = {}
    for row in table:
        groups.setdefault(tuple(json.dumps(row.get(a)) for a in axes), []).append(row)
    head = [*axes, "fits", "converged", "test_error", "eff_rank", "steps"]
    lines = ["  ".join(f"{h:>12}" for h in head)]
    for key, rows in groups.items():
        med = {
            m: float(np.median([r[m] for r in rows]))
            for m in ("test_error", "effective_rank", "steps")
        }
        conv = sum(r["status"] == "converged" for r in rows)
        cells = [
            *(k[:12] for k in key),
            str(len(rows)),
            str(conv),
            f"{med['test_error']:.3e}",
            f"{med['effective_rank']:.2f}",
            f"{med['steps']:.0f}",
        ]
        lines.append("  ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)
