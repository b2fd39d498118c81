"""One batch of the paper's flow grid three ways: the trials' launch order and schedule.

The batch: the collapsed flow grid's 5000-observation, depth-4 cell (100 x 100, rank 5,
problem seed 0; init 1e-3, 1e-4, 1e-5, 1e-6 x seeds 0, 1, 2: 12 trials; RKC, rtol 1e-6, to
train loss 1e-6), in one ``fit_batch`` as ``fastdmf reproduce table --optimizer flow`` runs
it. Timed in the same run, one after another:

- ``static, grid order``: the kernel before the work queue, a ``prange`` over the trials in
  the caller's order (init 1e-3 first, the longest last); Numba's OpenMP layer splits it into
  contiguous blocks, one per thread;
- ``queue, grid order``: the work queue (each thread takes the next trial as it frees up),
  the trials started in the caller's order;
- ``queue, longest first``: the work queue started by ``launch_order`` (the smallest init
  first): what ``fit_batch`` does now.

Besides wall and process CPU time, each variant reports the CPU time of its busiest thread
(from ``/proc/self/task``, Linux): on a shared machine the wall time is what the other jobs
leave, while the busiest thread's CPU seconds are the batch's critical path whatever the
load, which on two idle cores is its wall time. Every variant's trials are checked bit for
bit against the first's. A warm-up on a small
problem compiles every kernel first; the load average is printed before and after.

Usage: ``PYTHONPATH=. python benchmarks/flow_batch_order.py [--obs 5000] [--depth 4]
[--reverse]`` (``--reverse``: the variants timed in the reverse order, to see the drift of
the load).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
from numba import prange

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_step import stamp  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf import batch_flow  # noqa: E402
from fastdmf.experiments import paper  # noqa: E402
from fastdmf.kernels.cpu import SERIAL  # noqa: E402

_serial_run_flow = SERIAL.run_flow


@numba.njit(parallel=True)
def static_batch_flow(bufs, dims, offs, obs, flows, t_ends, max_evals, tol, caps, active, status):
    """The batched flow before the work queue: a prange over the trials."""
    thetas, grads, works, rowlosses = bufs
    ys, kss, fss = flows
    for b in prange(thetas.shape[0]):
        if active[b]:
            status[b] = _serial_run_flow(
                thetas[b],
                grads[b],
                works[b],
                dims,
                offs,
                obs,
                rowlosses[b],
                (ys[b], kss[b], fss[b]),
                t_ends[b],
                max_evals,
                tol,
                caps[b],
                1,
            )[1]


def _static(kind, *args):
    *head, order, status = args
    active = np.zeros(len(status), np.bool_)
    active[order] = True
    static_batch_flow(*head, active, status)


def _grid_order(runs, active):
    return np.flatnonzero(active)


VARIANTS = {
    "static, grid order": (_static, _grid_order),
    "queue, grid order": (batch_flow.run_batch_flow, _grid_order),
    "queue, longest first": (batch_flow.run_batch_flow, batch_flow.launch_order),
}


def thread_cpu() -> dict:
    """``{thread id: CPU seconds}`` of this process's threads (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def run(problem, trials, depth, variant, grid):
    runner, order = VARIANTS[variant]
    real_run, real_order = batch_flow.run_batch_flow, batch_flow.launch_order
    batch_flow.run_batch_flow, batch_flow.launch_order = runner, order
    try:
        t0, c0, th0 = time.perf_counter(), time.process_time(), thread_cpu()
        res = fastdmf.fit_batch(
            problem,
            depth,
            seeds=[t["seed"] for t in trials],
            init_scale=[t["init_scale"] for t in trials],
            lr=[t["first_step"] for t in trials],
            init=grid.init,
            optimizer=grid.optimizer,
            tol=grid.tol,
            max_steps=grid.max_steps,
            max_time=grid.max_time,
            record=None,
        )
        wall, cpu, th1 = time.perf_counter() - t0, time.process_time() - c0, thread_cpu()
        busiest = max(th1[t] - th0.get(t, 0.0) for t in th1)
        return res, wall, cpu, busiest
    finally:
        batch_flow.run_batch_flow, batch_flow.launch_order = real_run, real_order


def queue_makespan(work, threads):
    """The busiest thread's work when each takes the next item of ``work`` as it frees up."""
    busy = [0] * threads
    for w in work:
        busy[busy.index(min(busy))] += w
    return max(busy)


def load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", type=int, default=5000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument(
        "--reverse", action="store_true", help="time the variants in the reverse order"
    )
    args = parser.parse_args(argv)
    grid = replace(paper.FULL, optimizer="flow")
    trials = grid.trials("completion")
    problem = paper.make_problem("completion", args.obs, grid.size, grid.rank, grid.problem_seed)
    small = paper.make_problem("completion", 150, 20, 2, 0)
    for variant in VARIANTS:  # compile everything on a small problem
        run(small, trials[:3], args.depth, variant, replace(grid, max_time=1.0))
    print("\n".join(stamp(torch_threads=None)))
    print(
        f"- batch: {args.obs} obs, depth {args.depth}, {len(trials)} trials (init x seed, "
        "grid order: init 1e-3 first), flow to train loss 1e-6"
    )
    print(f"- {load()} before")
    rows, ref = [], None
    for variant in list(VARIANTS)[:: -1 if args.reverse else 1]:
        res, wall, cpu, busiest = run(problem, trials, args.depth, variant, grid)
        evals = [int(r.trajectory.n_evals[-1]) for r in res]
        if ref is None:
            ref = res
            print(f"- gradient evaluations per trial, grid order: {evals} (total {sum(evals):,})")
        for a, b in zip(res, ref, strict=True):
            assert a.status == b.status and a.n_steps == b.n_steps
            for wa, wb in zip(a.factors, b.factors, strict=True):
                np.testing.assert_array_equal(wa, wb)
        rows.append((variant, wall, cpu, busiest))
        print(
            f"  {variant}: {wall:.2f} s wall, {cpu:.2f} s CPU, busiest thread {busiest:.2f} "
            f"s CPU ({load()})",
            flush=True,
        )
    print(f"- {load()} after; every variant's trials equal the first's bit for bit")
    print()
    print(
        "| schedule | wall s | CPU s | cores' worth | busiest thread, CPU s | wall / static | "
        "busiest thread / static |"
    )
    print("|---|---|---|---|---|---|---|")
    static = {r[0]: r for r in rows}["static, grid order"]
    for variant, wall, cpu, busiest in sorted(rows, key=lambda r: list(VARIANTS).index(r[0])):
        print(
            f"| {variant} | {wall:.2f} | {cpu:.2f} | {cpu / wall:.2f} | {busiest:.2f} | "
            f"{wall / static[1]:.3f} | {busiest / static[3]:.3f} |"
        )
    evals = [int(r.trajectory.n_evals[-1]) for r in ref]
    scales = [t["init_scale"] for t in trials]
    longest = sorted(range(len(evals)), key=lambda b: (scales[b], b))
    half = (len(evals) + 1) // 2  # Numba's static blocks: the first half to thread 0
    print()
    print(
        "Evaluations on the busiest of 2 threads, every evaluation taken as equal (the "
        f"schedule alone, free of the load; {sum(evals):,} in all, {sum(evals) / 2:,.0f} "
        "the even split):"
    )
    for variant, got in (
        ("static, grid order", max(sum(evals[:half]), sum(evals[half:]))),
        ("queue, grid order", queue_makespan(evals, 2)),
        ("queue, longest first", queue_makespan([evals[b] for b in longest], 2)),
    ):
        print(f"- {variant}: {got:,}")


if __name__ == "__main__":
    main()
