"""The defaults of ``fit`` that depend on the observations.

A problem with a known ground truth (the paper's synthetic problems) gets the paper's setup
exactly: depth 3, full-dimensional widths, GroupRMSprop lr 1e-3, a record every 1000 steps, no
offsets, no validation. Observations without one (real tables and ratings) are noisy and
offset, and get what makes such a fit generalise, in seconds (docs/realdata.md): offsets
fitted first, 10% of the entries held out for early stopping on a record every 25 steps,
depth 2 with hidden width at most 32 and lr 3e-2. Arguments given explicitly always win.
"""

from __future__ import annotations

from ._kinds import find_kind

__all__ = ["AUTO", "PAPER", "REAL_DATA", "is_real_data", "resolve"]

AUTO = "auto"
PAPER = {
    "depth": 3,
    "lr": 1e-3,
    "record": 1000,
    "validation": None,
    "offsets": None,
    "patience": 20,
    "width_cap": None,
}
REAL_DATA = {
    "depth": 2,
    "lr": 3e-2,
    "record": 25,
    "validation": 0.1,
    "offsets": "auto",
    "patience": 20,
    "width_cap": 32,
}


def is_real_data(problem) -> bool:
    """Observed entries without a ground truth (the real-data defaults apply)."""
    kind = find_kind(problem)
    return kind is not None and kind.is_real_data(problem)


def resolve(kw: dict, real: bool, shape) -> dict:
    """``kw`` (fit's arguments) with every ``None``/``"auto"`` default that depends on the
    observations filled in: ``depth``, ``lr``, ``record`` (``"auto"``), ``validation``,
    ``offsets``, ``patience`` (``"auto"``) and, for real data, ``widths``."""
    base = REAL_DATA if real else PAPER
    out = dict(kw)
    for name in ("depth", "lr"):
        if out.get(name) is None:
            out[name] = base[name]
    for name in ("record", "validation", "offsets", "patience"):
        if _is_auto(out.get(name)):
            out[name] = base[name]
    # initial factors given as arrays carry their widths
    if (
        out.get("widths") is None
        and base["width_cap"] is not None
        and isinstance(out.get("init", "gaussian"), str)
    ):
        out["widths"] = min(shape[0], shape[1], base["width_cap"])
    return out


def _is_auto(value) -> bool:
    return isinstance(value, str) and value == AUTO
