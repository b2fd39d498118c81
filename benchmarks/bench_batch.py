"""Batch throughput: many trials of the paper's grid cell, in one run.

100 x 100, rank 5, 2000 observed (seed 0), depth 3, width 100, GroupRMSprop lr 1e-3, seeds
0..B-1 with init scales cycling through 1e-3 ... 1e-6 (the paper's grid), a fixed number of
steps (tol 0) and no intermediate records. Trial-steps per second of ``fit_batch`` with 1
and 2 Numba threads, and of a loop of serial ``fit`` calls (one trial after another), plus
PyTorch CPU per trial (dense product, mask, autograd, SGD; float64, 2 threads) when it is
installed. Compilation is excluded (a warm-up batch runs first).

Usage: ``PYTHONPATH=. python benchmarks/bench_batch.py [--trials 64] [--steps 300]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import stamp  # noqa: E402

import fastdmf  # noqa: E402

SCALES = (1e-3, 1e-4, 1e-5, 1e-6)
SERIAL_TRIALS = 8  # the loop of serial fits times at most this many trials
TORCH_THREADS = 2


def torch_steps_per_second(problem, steps):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(TORCH_THREADS)
    m, n = problem.shape
    rng = np.random.default_rng(0)
    ws = [
        torch.nn.Parameter(
            torch.tensor(rng.standard_normal((m if j == 2 else n, n)) * 1e-1 / np.sqrt(n))
        )
        for j in range(3)
    ]
    rows = torch.tensor(problem.rows)
    cols = torch.tensor(problem.cols)
    y = torch.tensor(problem.values)
    opt = torch.optim.SGD(ws, lr=1e-3)

    def step():
        opt.zero_grad()
        w = ws[2] @ (ws[1] @ ws[0])
        loss = ((w[rows, cols] - y) ** 2).mean()
        loss.backward()
        opt.step()

    for _ in range(20):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    problem = fastdmf.synthetic_completion(seed=0)
    seeds = list(range(args.trials))
    scales = [SCALES[i % 4] for i in seeds]
    kw = dict(depth=3, tol=0, record=None)
    fastdmf.fit_batch(problem, seeds=[0, 1], max_steps=5, **kw)  # compile
    rows = []
    for threads in (1, 2):
        t = time.perf_counter()
        fastdmf.fit_batch(
            problem, seeds=seeds, init_scale=scales, max_steps=args.steps, n_threads=threads, **kw
        )
        rows.append(
            (
                f"fit_batch, {threads} thread(s)",
                args.trials * args.steps / (time.perf_counter() - t),
            )
        )
    n_serial = min(SERIAL_TRIALS, args.trials)
    t = time.perf_counter()
    for s, sc in zip(seeds[:n_serial], scales[:n_serial], strict=True):
        fastdmf.fit(problem, seed=s, init_scale=sc, max_steps=args.steps, parallel=False, **kw)
    rows.append(
        (
            f"fit per trial, serial ({n_serial} trials)",
            n_serial * args.steps / (time.perf_counter() - t),
        )
    )
    torch_rate = torch_steps_per_second(problem, args.steps)
    if torch_rate is not None:
        rows.append(("PyTorch per trial (dense, autograd, SGD)", torch_rate))
    print("# Batch throughput")
    print("\n".join(stamp(torch_threads=TORCH_THREADS)))
    print(
        f"- paper grid cell (100x100, 2000 obs, depth 3, width 100), {args.trials} trials x "
        f"{args.steps} steps, float64"
    )
    print()
    print("| runner | trial-steps/s | vs 1-thread batch | vs PyTorch |")
    print("|---|---|---|---|")
    base = rows[0][1]
    for name, rate in rows:
        vs_torch = f"{rate / torch_rate:.1f}x" if torch_rate else "n/a"
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {vs_torch} |")


if __name__ == "__main__":
    main()
