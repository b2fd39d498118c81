"""Sensing flows in lock step against the batched flow, on the paper's sensing problem.

100 x 100, rank 5, p Gaussian measurements (seed 0), width 100, ``optimizer="flow"`` (RKC,
default tolerances); trials are the paper's grid cell: init scales 1e-3 ... 1e-7 x seeds.
Every trial runs to the same evaluation budget (``max_steps``; max_time 1e7, tol 0, so no
trial stops earlier), so both runners integrate the same steps. Timed in the same run:
``fit_batch`` (the serial kernel, one trial per task on 2 Numba threads, each trial
streaming the operator itself) and ``fit_batch(..., lockstep=True)`` (all trials' operator
products per round as two matrix-matrix products). The lock-step factors are compared with
the batched ones (within rounding, not bit for bit). Compilation is excluded; the host's
matmul rate and the other processes' share of the cores are printed.

Usage: ``PYTHONPATH=. python benchmarks/bench_lockstep.py [--measurements 2000]
[--depth 3] [--seeds 3] [--evals 300]`` (``--quick``: p = 500, 5 trials, 60 evaluations).
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

from _harness import contention, cpu_snapshot, matmul_rate, stamp  # noqa: E402

import fastdmf  # noqa: E402

SCALES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--evals", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="p = 500, 5 trials, 60 evals")
    args = parser.parse_args(argv)
    if args.quick:
        args.measurements, args.seeds, args.evals = 500, 1, 60
    problem = fastdmf.synthetic_sensing(
        shape=(100, 100), rank=5, n_measurements=args.measurements, seed=0
    )
    seeds = [s for s in range(args.seeds) for _ in SCALES]
    scales = [sc for _ in range(args.seeds) for sc in SCALES]
    kw = dict(
        depth=args.depth,
        optimizer="flow",
        max_time=1e7,
        tol=0.0,
        record=None,
        max_steps=args.evals,
        n_threads=2,
    )
    for lockstep in (False, True):  # compile
        fastdmf.fit_batch(problem, seeds=[0, 1], **{**kw, "max_steps": 5}, lockstep=lockstep)
    rate = matmul_rate()
    rows, results = [], {}
    for name, lockstep in (("fit_batch (one trial per task)", False), ("lockstep", True)):
        before = cpu_snapshot()
        t, c = time.perf_counter(), time.process_time()
        res = fastdmf.fit_batch(problem, seeds=seeds, init_scale=scales, **kw, lockstep=lockstep)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        others, steal = contention(before, cpu_snapshot())
        evals = sum(int(r.trajectory.n_evals[-1]) for r in res)
        rows.append((name, wall, cpu, evals, others, steal))
        results[lockstep] = res
    diff = max(
        float(np.max(np.abs(a.matrix() - b.matrix())) / np.max(np.abs(a.matrix())))
        for a, b in zip(results[False], results[True], strict=True)
    )
    steps = [(a.n_steps, b.n_steps) for a, b in zip(results[False], results[True], strict=True)]
    print("# Sensing flows in lock step")
    print("\n".join(stamp(torch_threads=None)))
    print(f"- host matmul rate (1000^2 float64, numpy): best {rate[0]:.1f} GFLOP/s")
    print(
        f"- paper sensing problem (100x100, rank 5, {args.measurements} Gaussian measurements),"
        f" depth {args.depth}, width 100; {len(seeds)} trials (init 1e-3..1e-7 x seeds "
        f"0..{args.seeds - 1}), flow (RKC, rtol 1e-6), {args.evals} evaluations each, "
        f"float64, 2 Numba threads"
    )
    print(
        f"- lock step against the batched flow: W within {diff:.1e} relative; accepted steps "
        f"equal in {sum(a == b for a, b in steps)}/{len(steps)} trials"
    )
    print(f"- load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print(
        "| runner | wall s | CPU s | evaluations | ms per trial-evaluation | others' CPU % "
        "| speed-up |"
    )
    print("|---|---|---|---|---|---|---|")
    base = rows[0][1] / rows[0][3]
    for name, wall, cpu, evals, others, _steal in rows:
        per = wall / evals
        print(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {evals:,} | {1e3 * per:.3f} | {others:.0f} "
            f"| {base / per:.2f}x |"
        )


if __name__ == "__main__":
    main()
