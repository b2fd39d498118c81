"""A large sparse problem: training-step time and peak memory, each in a fresh process.

m = n = 100,000, width 64, depth 3, 5,000,000 observed entries of a rank-5 synthetic matrix
(ground truth kept as factors only). For the serial and the parallel kernels: time per plain
GD step (median of repeats of k steps in one compiled call), one full record (singular values
by thin QR, reconstruction error from the factors), and the process's peak resident memory.
The dense approaches cannot run at all: one m x n float64 array is 80 GB.

Usage: ``PYTHONPATH=. python benchmarks/bench_large.py [--quick] [--out FILE]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

M = N = 100_000
WIDTH, DEPTH, K, RANK = 64, 3, 5_000_000, 5


def child(parallel: bool, repeats: int, k: int) -> dict:
    import numpy as np

    import fastdmf
    from fastdmf.engine import Engine
    from fastdmf.factors import FactorLayout, initialize
    from fastdmf.trajectory import measure

    t0 = time.perf_counter()
    problem = fastdmf.synthetic_completion(shape=(M, N), rank=RANK, n_observed=K, seed=0)
    build = time.perf_counter() - t0
    layout = FactorLayout.build((M, N), DEPTH, WIDTH)
    theta = layout.pack(initialize(layout, "gaussian", 1e-3, np.random.default_rng(0)))
    eng = Engine(problem, layout, theta, "gd", np.array([1e-2, 0, 0, 0]), parallel=parallel)
    eng.run(1, 0.0, 1e300)  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.run(k, 0.0, 1e300)
        times.append((time.perf_counter() - t) / k)
    t = time.perf_counter()
    loss = eng.evaluate()
    rec = measure(eng.factors(), eng.grads(), loss, 0, 0.0, 0, problem, None, 10)
    record = time.perf_counter() - t
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024
    return {
        "kernels": "parallel" if parallel else "serial",
        "step_s_median": float(np.median(times)),
        "step_s_best": float(np.min(times)),
        "record_s": record,
        "build_problem_s": build,
        "peak_rss_mib": peak,
        "test_error": rec["test_error"],
        "buffers_mib": (
            eng.theta.nbytes + eng.grad.nbytes + eng.work.nbytes + sum(a.nbytes for a in eng.obs)
        )
        / 2**20,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--child", choices=["serial", "parallel"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats, k = (2, 2) if args.quick else (5, 3)
    if args.child:
        print(json.dumps(child(args.child == "parallel", repeats, k)))
        return

    rows = []
    for which in ("serial", "parallel"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", which] + (["--quick"] if args.quick else []),
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from _harness import stamp  # the common stamp (this folder is on sys.path)

    lines = [
        "# Large sparse problem",
        *stamp(None),
        f"- m = n = {M:,}, width {WIDTH}, depth {DEPTH}, {K:,} observed (rank {RANK}), float64 "
        f"plain GD; {repeats} repeats of {k} steps per compiled call; fresh process per row",
        f"- dense approaches: one m x n float64 array is {M * N * 8 / 1e9:.0f} GB: they cannot "
        "run on this machine (24 GiB)",
        "",
        "| kernels | s/step (median) | s/step (best) | one record (s) | peak RSS (MiB) | "
        "step buffers (MiB) | building the problem (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['kernels']} | {r['step_s_median']:.3f} | {r['step_s_best']:.3f} | "
        f"{r['record_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['buffers_mib']:.0f} | "
        f"{r['build_problem_s']:.1f} |"
        for r in rows
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
