"""The paper's 144-fit completion grid through ``fastdmf.sweep`` on the default process pool
and on a 2-worker ``dask.distributed.LocalCluster``: the same results per seed, bit for bit.

Grid: lr {1e-3, 3e-4} x depth {2, 3, 4} x init scale {1e-3, 1e-4, 1e-5, 1e-6} x {2000, 5000}
observations x 3 seeds, GroupRMSprop. Each fit is truncated at ``--max-steps`` (default
2,000) so the check runs in minutes on 2 cores; the paper's full fits (to loss 1e-6, 30k-180k
steps each) take about 30 minutes per executor here (docs/reproduction.md).

    python benchmarks/sweep_grid_check.py [--max-steps 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import fastdmf

GRID = {
    "lr": [1e-3, 3e-4],
    "depth": [2, 3, 4],
    "init_scale": [1e-3, 1e-4, 1e-5, 1e-6],
    "n_observed": [2000, 5000],
    "repeat": 3,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--out", default=None, help="folder for the two sweeps (default: a temp)")
    args = ap.parse_args(argv)
    from dask.distributed import Client, LocalCluster

    root = Path(args.out or tempfile.mkdtemp(prefix="fastdmf-sweep-check-"))
    kw = dict(max_steps=args.max_steps, record=None, fits_per_task=6, progress=False)
    t = time.perf_counter()
    pool = fastdmf.sweep(GRID, out=root / "pool", workers=2, **kw)
    t_pool = time.perf_counter() - t
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        t = time.perf_counter()
        dask = fastdmf.sweep(GRID, out=root / "dask", executor=client, **kw)
        t_dask = time.perf_counter() - t
    rows_p, rows_d = pool.rows, dask.rows
    same = len(rows_p) == len(rows_d) == 144
    for k in range(len(rows_p)):
        same &= rows_p[k]["seed"] == rows_d[k]["seed"]
        same &= all(
            np.array_equal(a, b) for a, b in zip(pool.factors(k), dask.factors(k), strict=True)
        )
    from _harness import stamp  # the common stamp (this folder is on sys.path)

    print("# 144-fit grid through fastdmf.sweep")
    print("\n".join(stamp(None)))
    print(
        f"- fits: {len(rows_p)} (pool) and {len(rows_d)} (LocalCluster, 2 workers x 1 thread),"
        f" each truncated at {args.max_steps} steps"
    )
    print(f"- wall: pool {t_pool:.1f} s, LocalCluster {t_dask:.1f} s")
    print(f"- final factors and seeds identical for every grid point: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
