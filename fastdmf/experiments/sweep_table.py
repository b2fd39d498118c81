"""``fastdmf.load_sweep``: the results of a sweep folder as one table."""

from __future__ import annotations

import os

import numpy as np

from ..trajectory import Trajectory
from .sweep_store import CONFIG_NAME, config_digest, owned_tasks, read_config

__all__ = ["load_sweep", "SweepTable"]


class SweepTable:
    """One row per finished grid point, in grid order.

    A row is a dict: ``index`` (grid point), ``task``, the point's settings (and the
    resolved problem spec: ``kind``, ``shape``, ``rank``, ``n_observed``, ``problem_seed``),
    ``seed``, and the final ``status``, ``steps``, ``train_loss``, ``test_error`` (the
    reconstruction error ||W - W*||_F^2 / ||W*||_F^2 for problems with a ground truth),
    ``nuclear_norm``, ``effective_rank`` and ``wall_time`` (seconds; for fits run together
    by fit_batch, the group's time over its size).

    Attributes
    ----------
    rows : list of dict
    config : dict
        The sweep's settings (``sweep.json``).
    """

    def __init__(self, rows, trajectories, factor_files, config):
        self.rows = rows
        self.trajectories = trajectories
        self._factor_files = factor_files
        self.config = config

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k) -> dict:
        return self.rows[k]

    def __iter__(self):
        return iter(self.rows)

    def __repr__(self) -> str:
        return (
            f"SweepTable({len(self)} of {self.config.get('n_points')} fits, "
            f"columns {list(self.columns())})"
        )

    @property
    def complete(self) -> bool:
        """Every grid point has its row."""
        return len(self) == self.config.get("n_points")

    def columns(self) -> dict:
        """``{name: ndarray}``, one entry per row (object arrays for mixed or list values)."""
        names = list(dict.fromkeys(k for row in self.rows for k in row))
        out = {}
        for name in names:
            values = [row.get(name) for row in self.rows]
            try:
                arr = np.array(values)
            except ValueError:
                arr = None
            if arr is None or arr.ndim != 1 or any(v is None for v in values):
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
            out[name] = arr
        return out

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("SweepTable.to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows)

    def trajectory(self, k: int) -> Trajectory:
        """The trajectory of row ``k``."""
        return self.trajectories[k]

    def factors(self, k: int) -> list | None:
        """The final factors ``[W_1, ..., W_N]`` of row ``k`` (None if not saved)."""
        path, prefix = self._factor_files[k]
        with np.load(path, allow_pickle=False) as data:
            names = sorted(
                (f for f in data.files if f.startswith(prefix + "W")),
                key=lambda f: int(f[len(prefix) + 1 :]),
            )
            return [data[f] for f in names] or None


def load_sweep(path) -> SweepTable:
    """Read the results of a sweep folder (finished tasks only; see ``table.complete``).

    Example
    -------
    >>> table = fastdmf.load_sweep("sweep-out")                  # doctest: +SKIP
    >>> df = table.to_pandas()                                    # doctest: +SKIP
    >>> df.groupby(["depth", "n_observed"]).test_error.median()   # doctest: +SKIP
    """
    path = os.fspath(path)
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path!r} is not a sweep folder (no {CONFIG_NAME})")
    config = read_config(path)
    digest = config_digest(config)
    depth_default = config.get("fit", {}).get("depth", 3)
    found = []
    for file, meta in owned_tasks(path, digest):
        with np.load(file, allow_pickle=False) as data:
            for k, row in enumerate(meta["rows"]):
                arrays = {
                    name[len(f"f{k}_traj_") :]: data[name]
                    for name in data.files
                    if name.startswith(f"f{k}_traj_")
                }
                traj = Trajectory(
                    row.get("depth", depth_default), None, {"sweep_index": row["index"]}
                )
                traj._arrays = arrays
                found.append((row["index"], row, traj, (file, f"f{k}_")))
    found.sort(key=lambda item: item[0])
    indices = [item[0] for item in found]
    if len(set(indices)) != len(indices):  # pragma: no cover - tasks never overlap
        raise ValueError(f"{path!r}: a grid point appears in two task files")
    return SweepTable([f[1] for f in found], [f[2] for f in found], [f[3] for f in found], config)
