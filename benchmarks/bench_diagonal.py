"""Deep diagonal networks: one training step against two dense mat-vec products, and batched
trials against the same trials run one after another.

1. Step time on a d = 10^4, n = 10^3 problem (Gaussian X, 20-sparse ground truth, noiseless),
   depth 3, plain GD lr 1e-4 from u = v = 0.1:

   fastdmf serial / parallel
       ``run(k)`` of :mod:`fastdmf.kernels.diagonal` (k steps in one compiled call, divided by
       k): w = u^N - v^N, the fused pass over X (residuals and X^T r), the chain rule, the
       update. Serial: one fused sweep; parallel: ``config.DENSE_BLOCKS`` row blocks.
   numpy two mat-vecs
       ``r = X @ w - y`` and ``g = X.T @ r``: the two products a step cannot avoid, the floor
       the issue sets (target: a step <= 2x their time).

   Repeats are interleaved round robin; compilation and first calls are excluded; reported:
   ms/step (median, best), the ratio to the two mat-vecs, X's read rate (8 n d bytes per
   step over the median time).

2. Batched trials: B trials (init scales spread over [0.05, 0.5]) of k steps each, by
   ``run_batch`` (one trial per task, Numba threads as set) against the serial ``run`` of
   each trial in turn; the trials must agree bit for bit.

Usage::

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_diagonal.py \
        [--quick] [--out FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads its BLAS

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _harness import contention, cpu_snapshot, stamp  # noqa: E402

from fastdmf import diagonal as D  # noqa: E402
from fastdmf.kernels import diagonal as K  # noqa: E402

DEPTH, ALPHA, LR = 3, 0.1, 1e-4
GD = (0, np.array([LR, 0.0, 0.0, 0.0]))


def _setup(problem, scale, parallel=False):
    lay = D.DiagonalLayout(problem.n_features, DEPTH)
    kern, nblk, obs, work, resid = K.prepare(problem, lay, np.float64, parallel)
    theta = lay.pack(D.initialize(lay, scale))
    bufs = (theta, np.zeros_like(theta), work, resid)
    return kern, nblk, obs, bufs, lay


def _run(kern, nblk, obs, bufs, lay, k):
    theta, grad, work, resid = bufs
    opt = (GD[0], GD[1], np.zeros(0), np.zeros(3))
    return kern.run(
        theta,
        grad,
        work,
        np.asarray(lay.dims, np.int64),
        lay.offsets,
        obs,
        resid,
        opt,
        k,
        0.0,
        np.inf,
        nblk,
    )


def step_times(problem, k, repeats):
    X, y = problem.X, problem.y
    w = np.zeros(problem.n_features)
    r = np.empty(problem.n_samples)
    g = np.empty(problem.n_features)
    ser = _setup(problem, ALPHA)
    par = _setup(problem, ALPHA, parallel=True)

    def matvecs():
        for _ in range(k):
            np.dot(X, w, r)
            np.subtract(r, y, out=r)
            np.dot(X.T, r, g)

    impls = {
        "fastdmf serial": lambda: _run(*ser, k),
        "fastdmf parallel": lambda: _run(*par, k),
        "numpy two mat-vecs": matvecs,
    }
    for f in impls.values():  # compile, first touch
        f()
    times = {name: [] for name in impls}
    for _ in range(repeats):
        for name, f in impls.items():
            t0 = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t0) / k)
    return {name: np.array(t) for name, t in times.items()}


def batch_times(problem, n_trials, k, repeats):
    scales = np.geomspace(0.05, 0.5, n_trials)
    lay = D.DiagonalLayout(problem.n_features, DEPTH)
    _, nblk, obs, work, resid = K.prepare(problem, lay, np.float64)
    dims = np.asarray(lay.dims, np.int64)
    init = np.stack([lay.pack(D.initialize(lay, s)) for s in scales])

    def batched():
        thetas = init.copy()
        bufs = (
            thetas,
            np.zeros_like(thetas),
            np.zeros((n_trials, work.size)),
            np.zeros((n_trials, resid.size)),
        )
        opts = (
            np.zeros(n_trials, np.int64),
            np.tile(GD[1], (n_trials, 1)),
            np.zeros((n_trials, 0)),
            np.zeros((n_trials, 3)),
        )
        status = np.zeros(n_trials, np.int64)
        K.run_batch(
            bufs,
            dims,
            lay.offsets,
            obs,
            opts,
            k,
            0.0,
            np.full(n_trials, np.inf),
            np.ones(n_trials, np.bool_),
            status,
        )
        return thetas

    def serial():
        out = init.copy()
        for b in range(n_trials):
            bufs = (out[b], np.zeros(lay.size), work.copy(), resid.copy())
            _run(K.SERIAL, 1, obs, bufs, lay, k)
        return out

    same = np.array_equal(batched(), serial())
    tb, ts = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batched()
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        serial()
        ts.append(time.perf_counter() - t0)
    return np.array(tb), np.array(ts), same


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args(argv)
    n, d = 1000, 10_000
    repeats, k = (5, 5) if args.quick else (15, 10)
    problem = D.synthetic_sparse_regression(n, d, 20, seed=0)
    lines = [
        "# Deep diagonal networks: step and batch timings",
        "",
        *stamp(None),
        f"- OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
        f"Numba threads {numba.get_num_threads()}",
        "",
        f"## One step, n = {n}, d = {d}, depth {DEPTH}, GD (ms/step, {repeats} repeats "
        f"of {k} steps)",
        "",
        "| implementation | median | best | / two mat-vecs | X read GB/s |",
        "|---|---|---|---|---|",
    ]
    before = cpu_snapshot()
    times = step_times(problem, k, repeats)
    busy_step = contention(before, cpu_snapshot())
    floor = np.median(times["numpy two mat-vecs"])
    for name, t in times.items():
        med = np.median(t)
        lines.append(
            f"| {name} | {1e3 * med:.2f} | {1e3 * t.min():.2f} | {med / floor:.2f} | "
            f"{8 * n * d / med / 1e9:.1f} |"
        )
    n_trials, kb = 4, (5 if args.quick else 10)
    before = cpu_snapshot()
    tb, ts, same = batch_times(problem, n_trials, kb, max(3, repeats // 3))
    busy_batch = contention(before, cpu_snapshot())
    lines += [
        "",
        f"## {n_trials} trials x {kb} steps, run_batch ({numba.get_num_threads()} "
        "threads) vs serial runs in turn (s)",
        "",
        "| batched median | serial median | speed-up | bit-identical |",
        "|---|---|---|---|",
        f"| {np.median(tb):.3f} | {np.median(ts):.3f} | {np.median(ts) / np.median(tb):.2f}x"
        f" | {same} |",
    ]
    (other_s, steal_s), (other_b, steal_b) = busy_step, busy_batch
    lines += [
        "",
        f"Other processes used {other_s:.0f}% of all cores during the step timings "
        f"and {other_b:.0f}% during the batch timings (steal {steal_s:.0f}% / "
        f"{steal_b:.0f}%): parallel figures on a shared machine depend on it.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
