"""Batched gradient flow: trials of the paper's grid cell integrated together, in one run.

100 x 100, rank 5, 2000 observed (seed 0), width 100, ``optimizer="flow"`` (RKC, default
tolerances) to train loss 1e-6 (max_time 1e7: every trial converges first), init scales
cycling through 1e-3 ... 1e-6 (the paper's grid), seeds 0..B-1, no intermediate records.
The trials differ in length (their evaluation counts are printed), so the batch also shows
how one trial per task balances uneven trials. Timed in the same run: the loop of serial
``fit`` calls (one trial after another, the reference), ``fit_batch`` on 1 and on 2 Numba
threads; every batched trial is checked bit for bit against its serial fit. Compilation is
excluded (a warm-up runs first); the load average is printed before and after.

Usage: ``PYTHONPATH=. python benchmarks/bench_batch_flow.py [--trials 8] [--depth 3]``
(``--quick``: 4 trials at depth 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_step import stamp  # noqa: E402

import fastdmf  # noqa: E402

SCALES = (1e-3, 1e-4, 1e-5, 1e-6)


def load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 trials at depth 2")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.depth = 4, 2
    problem = fastdmf.synthetic_completion(seed=0)
    seeds = list(range(args.trials))
    scales = [SCALES[i % 4] for i in seeds]
    kw = dict(depth=args.depth, optimizer="flow", max_time=1e7, tol=1e-6, record=None)
    fastdmf.fit_batch(problem, seeds=[0, 1], **{**kw, "max_time": 1.0})  # compile
    fastdmf.fit(problem, seed=0, parallel=False, progress=False, **{**kw, "max_time": 1.0})
    before = load()
    t, c = time.perf_counter(), time.process_time()
    serial = [
        fastdmf.fit(problem, seed=s, init_scale=sc, parallel=False, progress=False, **kw)
        for s, sc in zip(seeds, scales, strict=True)
    ]
    rows = [
        ("serial fit, one trial after another", time.perf_counter() - t, time.process_time() - c)
    ]
    for threads in (1, 2):
        t, c = time.perf_counter(), time.process_time()
        batch = fastdmf.fit_batch(problem, seeds=seeds, init_scale=scales, n_threads=threads, **kw)
        rows.append(
            (f"fit_batch, {threads} thread(s)", time.perf_counter() - t, time.process_time() - c)
        )
        for a, b in zip(batch, serial, strict=True):
            assert a.status == b.status and a.n_steps == b.n_steps
            assert all(np.array_equal(x, y) for x, y in zip(a.factors, b.factors, strict=True))
    evals = [int(r.trajectory.n_evals[-1]) for r in serial]
    print("# Batched gradient flow")
    print("\n".join(stamp(torch_threads=None)))
    print(
        f"- paper grid cell (100x100, 2000 obs, depth {args.depth}, width 100), "
        f"{args.trials} trials (init {', '.join(f'{s:g}' for s in SCALES[: args.trials])} "
        f"cycling, seeds 0..{args.trials - 1}), flow (RKC, rtol 1e-6) to train loss 1e-6, "
        "float64"
    )
    print(f"- {before} before, {load()} after (2 cores shared with other work)")
    print(
        f"- statuses: {sorted({r.status for r in serial})}; gradient evaluations per "
        f"trial: {evals} (total {sum(evals):,}); every batched trial equals its serial "
        "fit bit for bit"
    )
    print()
    print("| runner | wall s | CPU s | cores' worth (CPU / wall) | speed-up vs serial |")
    print("|---|---|---|---|---|")
    base = rows[0][1]
    for name, wall, cpu in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {cpu / wall:.2f} | {base / wall:.2f}x |")


if __name__ == "__main__":
    main()
