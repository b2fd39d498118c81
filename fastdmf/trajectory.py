"""What happened during a fit: the record schedule and the Trajectory arrays.

A record is taken at the steps of the schedule (always step 0 and the final step). Each holds

==================  ==========================================================================
``step``            optimiser steps taken
``time``            t = sum of step sizes (gradient-flow time; see fastdmf.optim)
``n_evals``         gradient evaluations spent by the optimiser (= steps, except for "flow")
``train_loss``      (1/|Omega|) sum_k (W[i_k, j_k] - y_k)^2; sensing: (1/p) sum_k (<A_k, W> - y_k)^2
``test_error``      ||W - W*||_F^2 / ||W*||_F^2 with a known ground truth W*, else the MSE on
                    held-out entries in the data's units (offsets included; sensing:
                    held-out measurements <A_k, W>), else NaN
``val_error``       MSE on the validation entries (``fit(validation=...)``), in the units the
                    factors train on (after the offsets; standardised for "scaled" ones),
                    else NaN
``singular_values`` top-k singular values of W (records x k)
``nuclear_norm``    sum sigma
``effective_rank``  exp(entropy of sigma / sum sigma) (Roy & Vetterli 2007)
``schatten``        sum sigma^(2/N), the quantity the end-to-end dynamics tie to depth
``grad_norm``       ||(dL/dW_1, ..., dL/dW_N)||_2
``param_norm``      ||(W_1, ..., W_N)||_2
``balancedness``    ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F, j = 1..N-1 (records x (N-1))
==================  ==========================================================================
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import config
from .factors import (
    balancedness,
    end_to_end,
    predict_entries,
    singular_values,
    split_product,
)
from .reference import effective_rank

__all__ = ["Trajectory", "Grid", "record_schedule", "time_schedule", "load_trajectory"]

SCALARS = (
    "step",
    "time",
    "n_evals",
    "train_loss",
    "test_error",
    "val_error",
    "nuclear_norm",
    "effective_rank",
    "schatten",
    "grad_norm",
    "param_norm",
)
MATRICES = ("singular_values", "balancedness")


def _is_log(record) -> bool:
    """``"log"`` or ``("log", count)``; also ``["log", count]``, the tuple after a trip
    through JSON (checkpoints, sweep files, settings saved by users)."""
    if isinstance(record, str):
        return record == "log"
    return (
        isinstance(record, (tuple, list))
        and len(record) > 0
        and isinstance(record[0], str)
        and record[0] == "log"
    )


def _log_count(record, default: int) -> int:
    """The count of a ``"log"`` / ``("log", count)`` schedule."""
    if isinstance(record, str):
        return default
    if len(record) != 2 or not isinstance(record[1], (int, np.integer)) or record[1] < 1:
        raise ValueError(f"record={record!r}: use ('log', count) with a positive count")
    return int(record[1])


class Grid(Sequence):
    """The record points 0, step, 2 step, ..., (count - 1) step, each computed when asked for:
    a fit with a step budget of 10^12 and a record interval keeps no list of its record
    steps. Indexing, ``len``, ``in`` and iteration work as on the array it stands for;
    ``np.asarray(grid)`` builds that array."""

    def __init__(self, step, count: int):
        self.step, self.count = step, int(count)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        if isinstance(i, slice):
            return np.asarray(self)[i]
        i = operator.index(i)
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"record point {i} of {self.count}")
        return self.step * i

    def __contains__(self, value) -> bool:
        if self.step == 0 or value < 0:
            return value == 0 and self.count > 0
        i = value / self.step if isinstance(self.step, float) else value // self.step
        i = int(i)
        return i < self.count and self.step * i == value

    def __array__(self, dtype=None, copy=None):
        kind = np.float64 if isinstance(self.step, float) else np.int64
        out = np.arange(self.count, dtype=kind) * self.step
        return out if dtype is None else out.astype(dtype)

    def __eq__(self, other):
        return isinstance(other, Grid) and (self.step, self.count) == (other.step, other.count)

    def __hash__(self):
        return hash((self.step, self.count))

    def __repr__(self) -> str:
        return f"Grid(step={self.step!r}, count={self.count})"


def record_schedule(record, max_steps: int):
    """Sorted steps (within [0, max_steps]) at which to record; always includes 0.

    ``record`` is an int k (every k steps: a :class:`Grid`, which holds no list of the
    steps), a sequence of steps, ``"log"`` (about 20 log-spaced steps per decade),
    ``("log", count)``, or None (first and last state only; the last is always added by the
    fit).
    """
    if isinstance(record, bool):
        raise TypeError("record= takes an int, a list of steps, 'log', ('log', count) or None")
    if record is None:
        steps = np.array([0])
    elif _is_log(record):
        top = max(max_steps, 1)
        count = _log_count(record, int(20 * np.log10(top) + 1))
        steps = np.unique(np.round(np.logspace(0, np.log10(top), count)).astype(np.int64))
    elif isinstance(record, str):
        raise ValueError(f"record={record!r}: use an int, a list of steps, 'log' or None")
    elif isinstance(record, (float, np.floating)):
        raise TypeError(
            f"record={record!r}: a step interval is an integer (e.g. "
            f"record={max(1, int(record))}); flow times apply to the flow optimisers"
        )
    elif isinstance(record, (int, np.integer)):
        if record < 1:
            raise ValueError(f"record={record}: the interval must be a positive number of steps")
        return Grid(int(record), max(max_steps, 0) // int(record) + 1)
    else:
        steps = np.asarray(record)
        if steps.size == 0:
            steps = np.zeros(0, np.int64)
        if steps.ndim != 1 or steps.dtype.kind not in "iu" or (steps.size and steps.min() < 0):
            raise ValueError("record= as a list must hold non-negative integer steps")
    steps = np.unique(np.concatenate([[0], steps.astype(np.int64)]))
    return steps[steps <= max_steps]


def time_schedule(record, max_time: float):
    """Sorted flow times (within [0, max_time]) at which to record; always includes 0.

    ``record`` is a float dt (every dt: a :class:`Grid`), a sequence of times, ``"log"`` (60
    times spaced geometrically from max_time * 1e-6 to max_time), ``("log", count)``, or None.
    """
    if isinstance(record, bool):
        raise TypeError("record= takes a time interval, a list of times, 'log' or None")
    if record is None:
        times = np.array([0.0])
    elif _is_log(record):
        count = _log_count(record, 60)
        times = np.geomspace(max_time * 1e-6, max_time, count) if max_time > 0 else []
    elif isinstance(record, str):
        raise ValueError(f"record={record!r}: use a time interval, times, 'log' or ('log', count)")
    elif np.isscalar(record):
        if not (np.isfinite(record) and record > 0):
            raise ValueError(f"record={record!r}: the time interval must be positive")
        dt = float(record)
        if not max_time >= 0:
            return Grid(dt, 0)
        count = int(max_time // dt) + 1  # the multiples i dt <= max_time, i >= 0
        while count > 1 and dt * (count - 1) > max_time:
            count -= 1
        while dt * count <= max_time:
            count += 1
        return Grid(dt, count)
    else:
        times = np.asarray(record, dtype=np.float64)
        if times.ndim != 1 or not np.all(np.isfinite(times)) or np.any(times < 0):
            raise ValueError("record= as a list must hold finite times >= 0")
    times = np.unique(np.concatenate([[0.0], np.asarray(times, dtype=np.float64)]))
    return times[times <= max_time]


@dataclass(eq=False)
class Trajectory:
    """Records of a fit, as arrays (one row per record). See the module docstring.

    ``scalars`` and ``matrices`` name the fields (one number, or one row of numbers, per
    record): by default those of the matrix kinds (``SCALARS``, ``MATRICES``); a problem kind
    whose records hold other values names its own (see ``fastdmf._kinds``). Every field
    reads as an attribute (``traj.train_loss``)."""

    depth: int
    top_k: int | None = None
    meta: dict = field(default_factory=dict)
    _rows: list = field(default_factory=list, repr=False)
    _arrays: dict = field(default_factory=dict, repr=False)
    scalars: tuple = field(default=SCALARS, repr=False)
    matrices: tuple = field(default=MATRICES, repr=False)

    def __len__(self) -> int:
        return len(self._arrays.get("step", ())) + len(self._rows)

    def __getattr__(self, name):
        if name.startswith("_") or name in ("scalars", "matrices"):
            raise AttributeError(name)  # not set yet (copy, unpickling): no field lookup
        if name in self.scalars or name in self.matrices:
            return self._array(name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        n = len(self)
        last = f", last step {int(self.step[-1])}, loss {self.train_loss[-1]:.3g}" if n else ""
        return f"Trajectory(depth={self.depth}, {n} records{last})"

    def _array(self, name):
        if self._rows:
            self._freeze()
        if name not in self._arrays:
            return np.empty(0)
        return self._arrays[name]

    def _freeze(self):
        """Move the appended rows into the arrays (after any rows frozen before)."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        old = self._arrays
        for name in self.scalars + self.matrices:
            # a row without a scalar field (a record written before it existed) holds NaN
            new = np.array([r.get(name, np.nan) if name in self.scalars else r[name] for r in rows])
            # an earlier block counts by its rows, whatever their width: depth 1 records
            # balancedness as rows of width 0
            if name in old and len(old[name]):
                new = np.concatenate([old[name], new])
            self._arrays[name] = new

    def last(self) -> dict:
        """The latest record, as a dict of its values."""
        if self._rows:
            return dict(self._rows[-1])
        return {name: values[-1] for name, values in self.as_dict().items()}

    def append(self, row: dict) -> None:
        self._rows.append(row)

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` records."""
        self._freeze()
        for name in self._arrays:
            self._arrays[name] = self._arrays[name][:n]

    def as_dict(self) -> dict:
        """Every field as an array."""
        return {name: self._array(name) for name in self.scalars + self.matrices}

    def to_arrays(self) -> dict:
        """Every field as an array, like :meth:`as_dict`, but leaving this trajectory as it
        is (a running fit keeps appending rows to it); :meth:`from_arrays` is the inverse."""
        copy = Trajectory(
            self.depth,
            self.top_k,
            self.meta,
            list(self._rows),
            dict(self._arrays),
            self.scalars,
            self.matrices,
        )
        return copy.as_dict()

    @classmethod
    def from_arrays(
        cls,
        arrays,
        depth: int,
        top_k: int | None = None,
        meta: dict | None = None,
        scalars=SCALARS,
        matrices=MATRICES,
    ) -> Trajectory:
        """A trajectory holding the records of ``arrays`` (field name -> array, one row per
        record, as :meth:`to_arrays` gives; a scalar field left out reads NaN), to which more
        records can be appended."""
        traj = cls(depth, top_k, dict(meta or {}), scalars=tuple(scalars), matrices=tuple(matrices))
        traj.append_arrays(arrays)
        return traj

    def append_arrays(self, arrays) -> None:
        """Append the records of ``arrays`` (field name -> array, one row per record), as
        rows."""
        for i in range(len(arrays["step"])):
            row = {name: arrays[name][i] for name in self.scalars + self.matrices if name in arrays}
            for name in self.scalars:
                if name in row:
                    row[name] = row[name].item()
            self.append(row)

    def save(self, path) -> None:
        """Write the arrays and metadata to an ``.npz`` file."""
        head = {"depth": self.depth, "top_k": self.top_k, "meta": self.meta}
        if (self.scalars, self.matrices) != (SCALARS, MATRICES):
            head.update(scalars=list(self.scalars), matrices=list(self.matrices))
        meta = json.dumps(head)
        np.savez(path, __meta__=np.array(meta), **self.as_dict())

    def plot(self, ax=None, k: int = 10, x: str = "step"):
        """Top-``k`` singular values against ``x`` ("step" or "time"). Needs matplotlib."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Trajectory.plot needs matplotlib: pip install 'fastdmf[plot]'"
            ) from None
        if ax is None:
            _, ax = plt.subplots()
        sv = self.singular_values
        ax.plot(self._array(x), sv[:, :k])
        ax.set_xlabel(x)
        ax.set_ylabel("singular values of W")
        ax.set_title(
            f"top {min(k, sv.shape[1] if sv.ndim == 2 else 0)} singular values, depth {self.depth}"
        )
        return ax


def load_trajectory(path) -> Trajectory:
    """Read a trajectory written by :meth:`Trajectory.save`."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
        traj = Trajectory(
            meta["depth"],
            meta["top_k"],
            meta["meta"],
            scalars=tuple(meta.get("scalars", SCALARS)),
            matrices=tuple(meta.get("matrices", MATRICES)),
        )
        traj._arrays = {k: data[k] for k in data.files if k != "__meta__"}
    return traj


def factored_error(factors, u, v) -> float:
    """||W - U V^T||_F^2 / ||U V^T||_F^2 without forming either matrix: with W = L R^T split
    at the narrowest width, ||W||^2 = sum((L^T L) * (R^T R)), <W, U V^T> = sum((L^T U) *
    (R^T V)), ||U V^T||^2 = sum((U^T U) * (V^T V)); O((m + n) d (d + r))."""
    # in float64 whatever the fit's dtype: the three terms below cancel to the error
    left, right_t = split_product([np.asarray(w, dtype=np.float64) for w in factors])
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if right_t is None:  # depth 1: W itself
        ww, wt = np.sum(left**2), np.sum((left @ v) * u)
    else:
        ww = np.sum((left.T @ left) * (right_t.T @ right_t))
        wt = np.sum((left.T @ u) * (right_t.T @ v))
    tt = np.sum((u.T @ u) * (v.T @ v))
    return float(max(ww - 2.0 * wt + tt, 0.0) / tt)


def record_test_error(factors, problem, test=None, offsets=None, held_out=None) -> float:
    """The record's ``test_error`` of the float64 ``factors``: the relative reconstruction
    error against the problem's ground truth (from its factors when it has them), else
    ``held_out(factors, test, offsets)``, the MSE on held-out data (default
    :func:`held_out_mse`: held-out entries, in the data's units: the factors' predictions
    through ``offsets`` when the fit has them; the problem kind's scorer otherwise, see
    ``fastdmf._kinds``), else NaN."""
    if problem.truth_factors is not None:
        return factored_error(factors, *problem.truth_factors)
    if problem.ground_truth is not None:
        truth = problem.ground_truth
        return float(np.sum((end_to_end(factors) - truth) ** 2) / np.sum(truth**2))
    return (held_out or held_out_mse)(factors, test, offsets)


def held_out_mse(factors, entries, offsets=None) -> float:
    """MSE of the float64 ``factors`` (mapped through ``offsets``, if any) on the entries of a
    completion problem, or NaN for None."""
    if entries is None:
        return np.nan
    pred = predict_entries(factors, entries.rows, entries.cols, config.PREDICT_BLOCK)
    if offsets is not None:
        pred = offsets.predict(pred, entries.rows, entries.cols)
    return float(np.mean((pred - entries.values) ** 2))


def measure(
    factors,
    grad_factors,
    loss,
    step,
    time,
    n_evals,
    problem,
    test,
    top_k,
    val=None,
    offsets=None,
    held_out=None,
):
    """One record's values at the current state (called between compiled chunks), computed
    in float64 from the factors whatever the fit's dtype; ``val`` holds the validation
    entries in the units the factors train on (residuals), ``test`` held-out data in the
    data's units, predicted through ``offsets`` and scored by ``held_out`` (see
    :func:`record_test_error`)."""
    factors = [np.asarray(w, dtype=np.float64) for w in factors]
    depth = len(factors)
    sv = singular_values(factors)
    total = float(sv.sum())
    test_error = record_test_error(factors, problem, test, offsets, held_out)
    return {
        "step": int(step),
        "time": float(time),
        "n_evals": int(n_evals),
        "train_loss": float(loss),
        "test_error": test_error,
        "val_error": held_out_mse(factors, val),
        "nuclear_norm": total,
        "effective_rank": effective_rank(sv),
        "schatten": float(np.sum(sv ** (2.0 / depth))),
        "grad_norm": float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grad_factors))),
        "param_norm": float(np.sqrt(sum(np.sum(w.astype(np.float64) ** 2) for w in factors))),
        "singular_values": sv[:top_k] if top_k else sv,
        "balancedness": balancedness(factors),
    }
