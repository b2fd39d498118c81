"""Tables and figures the experiments write: CSV, markdown, PNG (with matplotlib), progress."""

from __future__ import annotations

import csv
import os
import sys

import numpy as np


def say(progress: bool):
    """A printer to stderr (or a no-op)."""
    if not progress:
        return lambda *a, **k: None

    def _say(*args):
        print(*args, file=sys.stderr, flush=True)

    return _say


def write_csv(path, rows: list[dict]) -> None:
    """Rows (dicts with the same keys) as CSV; None is written as an empty field."""
    fields = list(rows[0]) if rows else []
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)


def read_csv(path) -> list[dict]:
    """Rows written by :func:`write_csv`, numbers parsed back (empty fields become None)."""
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _parse(text):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def markdown_table(header: list[str], body: list[list]) -> list[str]:
    """A markdown table as lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return lines


def mean_std(values) -> tuple[float, float]:
    """Mean and (population) standard deviation of the finite values; NaN when none."""
    vals = np.asarray([v for v in values if v is not None], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(vals.mean()), float(vals.std())


def fmt_mean_std(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``1.23e-04 ± 4.5e-06`` (just the mean when there is one value)."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}g}" if n <= 1 else f"{mean:.{digits}g} ± {std:.2g}"


def write_md(path, lines: list[str]) -> None:
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed
    (``pip install 'fastdmf[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def ensure_dir(out) -> str:
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    return out
