"""float32 against float64: throughput of a training step and accuracy of a whole fit.

1. Step throughput (plain GD, median of repeats, one compiled call per repeat) for the
   paper's cell (100x100, width 100, 2000 observed, depth 3, serial kernels) and a larger
   problem (2000x2000, width 100, 200,000 observed, depth 3, parallel kernels).
2. Accuracy: the paper's default fit (depth 3, GroupRMSprop lr 1e-3, init 1e-3, to loss 1e-6)
   in both dtypes: steps, final reconstruction error, top-5 singular values, and the largest
   relative gap between the two trajectories' top singular value over common record steps.

``--quick``: 3 repeats instead of 7, a 1000x1000 problem with 50,000 observed in place of the
larger one, and fits capped at 5000 steps (their status then says so).

Usage: ``PYTHONPATH=. python benchmarks/bench_float32.py [--quick] [--out FILE]``
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
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.factors import FactorLayout, initialize  # noqa: E402


def step_time(problem, dtype, parallel, k, repeats=7):
    layout = FactorLayout.build(problem.shape, 3, 100)
    theta = layout.pack(initialize(layout, "gaussian", 1e-3, np.random.default_rng(0)), dtype=dtype)
    eng = Engine(problem, layout, theta, "gd", np.array([1e-3, 0, 0, 0]), parallel=parallel)
    eng.run(2, 0.0, 1e300)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        eng.run(k, 0.0, 1e300)
        times.append((time.perf_counter() - t) / k)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats, a smaller large problem, fits capped at 5000 steps",
    )
    parser.add_argument("--out", help="also write the report (markdown) to this file")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    lines: list[str] = []

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    say("# float32 vs float64" + (" (--quick)" if args.quick else ""))
    for line in stamp(torch_threads=None):
        say(line)
    say()
    say("| problem | kernels | float64 ms/step | float32 ms/step | float32 speed-up |")
    say("|---|---|---|---|---|")
    paper = fastdmf.synthetic_completion(seed=0)
    big_shape, big_obs = ((1000, 1000), 50_000) if args.quick else ((2000, 2000), 200_000)
    big = fastdmf.synthetic_completion(shape=big_shape, rank=5, n_observed=big_obs, seed=0)
    for name, prob, par, k in (
        ("100x100, 2000 obs", paper, False, 500),
        (f"{big_shape[0]}x{big_shape[1]}, {big_obs // 1000}k obs", big, True, 10),
    ):
        t64 = step_time(prob, np.float64, par, k, repeats)
        t32 = step_time(prob, np.float32, par, k, repeats)
        say(
            f"| {name} | {'parallel' if par else 'serial'} | {1e3 * t64:.3f} | "
            f"{1e3 * t32:.3f} | {t64 / t32:.2f}x |"
        )
    say()
    cap = {"max_steps": 5000} if args.quick else {}
    fits = {
        dt: fastdmf.fit(paper, depth=3, seed=0, record=500, dtype=dt, **cap)
        for dt in ("float64", "float32")
    }
    a, b = fits["float64"].trajectory, fits["float32"].trajectory
    n = min(len(a), len(b))
    gap = np.max(
        np.abs(b.singular_values[:n, 0] - a.singular_values[:n, 0]) / a.singular_values[:n, 0]
    )
    say("| dtype | status | steps | reconstruction error | top-5 singular values |")
    say("|---|---|---|---|---|")
    for dt, res in fits.items():
        tr = res.trajectory
        say(
            f"| {dt} | {res.status} | {res.n_steps} | {tr.test_error[-1]:.3e} | "
            f"{np.array2string(tr.singular_values[-1][:5], precision=4)} |"
        )
    say()
    say(f"largest relative gap of sigma_1 over the {n} common records: {gap:.2e}")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
