"""float32 against float64: throughput of a training step and accuracy of a whole fit.

1. Step throughput (plain GD, median of repeats, one compiled call per repeat) for the
   paper's cell (100x100, width 100, 2000 observed, depth 3, serial kernels) and a larger
   problem (2000x2000, width 100, 200,000 observed, depth 3, parallel kernels).
2. Accuracy: the paper's default fit (depth 3, GroupRMSprop lr 1e-3, init 1e-3, to loss 1e-6)
   in both dtypes: steps, final reconstruction error, top-5 singular values, and the largest
   relative gap between the two trajectories' top singular value over common record steps.

Usage: ``PYTHONPATH=. python benchmarks/bench_float32.py``
"""

from __future__ import annotations

import subprocess
import time

import numpy as np

import fastdmf
from fastdmf.engine import Engine
from fastdmf.factors import FactorLayout, initialize


def step_time(problem, dtype, parallel, k, repeats=7):
    layout = FactorLayout.build(problem.shape, 3, 100)
    theta = layout.pack(initialize(layout, "gaussian", 1e-3, np.random.default_rng(0)),
                        dtype=dtype)
    eng = Engine(problem, layout, theta, "gd", np.array([1e-3, 0, 0, 0]), parallel=parallel)
    eng.run(2, 0.0, 1e300)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.run(k, 0.0, 1e300)
        times.append((time.perf_counter() - t) / k)
    return float(np.median(times))


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# float32 vs float64, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
          f"commit {commit}")
    print()
    print("| problem | kernels | float64 ms/step | float32 ms/step | float32 speed-up |")
    print("|---|---|---|---|---|")
    paper = fastdmf.synthetic_completion(seed=0)
    big = fastdmf.synthetic_completion(shape=(2000, 2000), rank=5, n_observed=200_000, seed=0)
    for name, prob, par, k in (("100x100, 2000 obs", paper, False, 500),
                               ("2000x2000, 200k obs", big, True, 10)):
        t64 = step_time(prob, np.float64, par, k)
        t32 = step_time(prob, np.float32, par, k)
        print(f"| {name} | {'parallel' if par else 'serial'} | {1e3 * t64:.3f} | "
              f"{1e3 * t32:.3f} | {t64 / t32:.2f}x |")
    print()
    fits = {dt: fastdmf.fit(paper, depth=3, seed=0, record=500, dtype=dt)
            for dt in ("float64", "float32")}
    a, b = fits["float64"].trajectory, fits["float32"].trajectory
    n = min(len(a), len(b))
    gap = np.max(np.abs(b.singular_values[:n, 0] - a.singular_values[:n, 0])
                 / a.singular_values[:n, 0])
    print("| dtype | status | steps | reconstruction error | top-5 singular values |")
    print("|---|---|---|---|---|")
    for dt, res in fits.items():
        tr = res.trajectory
        print(f"| {dt} | {res.status} | {res.n_steps} | {tr.test_error[-1]:.3e} | "
              f"{np.array2string(tr.singular_values[-1][:5], precision=4)} |")
    print()
    print(f"largest relative gap of sigma_1 over the {n} common records: {gap:.2e}")


if __name__ == "__main__":
    main()
