"""What a quasi-Newton solver does to the implicit bias: scipy's L-BFGS-B on
``fastdmf.Objective`` against the gradient flow, on the paper's problem, in one run.

Problem: 100 x 100, rank 5, 2000 observed entries (``synthetic_completion(seed=0)``); depths
2 and 3; the same gaussian start of scale 1e-3 (seed 0) for both solvers; both stop at train
loss 1e-6 (L-BFGS-B through a callback that ends it there, or after 20,000 iterations).

- gradient flow: ``fit(problem, depth, optimizer="flow", max_time=1e7, tol=1e-6)``;
- L-BFGS-B: ``scipy.optimize.minimize(obj, obj.x0(), jac=True, method="L-BFGS-B")``, its
  answer read through ``obj.result`` (records computed as fit computes them); SciPy's
  OpenBLAS pinned to one thread around it (multithreaded, it made each iteration several
  times slower on a shared 2-core machine; see benchmarks/RESULTS_objective.md).

Reported per run: reconstruction error ||W - W*||_F^2 / ||W*||_F^2, effective rank, nuclear
norm, the 6th singular value over the 5th (what is left outside the true rank), gradient
evaluations, wall time (JIT compilation excluded: both solvers run on a tiny problem first).
Used by docs/embedding.md.

Usage::

    PYTHONPATH=. python benchmarks/lbfgsb_bias.py [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import scipy.optimize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import stamp  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf.kernels.blas import blas_threads  # noqa: E402

TOL = 1e-6
INIT_SCALE = 1e-3
MAXITER = 20_000


def run_flow(problem, depth):
    t0 = time.perf_counter()
    res = fastdmf.fit(
        problem,
        depth=depth,
        optimizer="flow",
        max_time=1e7,
        tol=TOL,
        init_scale=INIT_SCALE,
        seed=0,
        record=None,
        progress=False,
    )
    return res, res.trajectory.n_evals[-1], time.perf_counter() - t0


def run_lbfgsb(problem, depth):
    obj = fastdmf.Objective(problem, depth)
    x0 = obj.x0(init_scale=INIT_SCALE, seed=0)  # the start fit(..., seed=0) uses

    def stop_at_tol(intermediate_result):
        if intermediate_result.fun <= TOL:
            raise StopIteration

    t0 = time.perf_counter()
    with blas_threads(1):  # SciPy's own BLAS calls on one thread (see bench_objective.py)
        out = scipy.optimize.minimize(
            obj,
            x0,
            jac=True,
            method="L-BFGS-B",
            callback=stop_at_tol,
            options={"maxiter": MAXITER, "maxfun": 2 * MAXITER, "ftol": 0.0, "gtol": 0.0},
        )
    wall = time.perf_counter() - t0
    return obj.result(out.x, n_steps=out.nit, tol=TOL), out.nfev, wall


def row(name, depth, res, evals, wall):
    last = res.trajectory.last()
    sv = last["singular_values"]
    return (
        f"| {depth} | {name} | {res.status} | {last['train_loss']:.2e} | "
        f"{last['test_error']:.3e} | {last['effective_rank']:.3f} | "
        f"{last['nuclear_norm']:.2f} | {sv[5] / sv[4]:.2e} | {evals} | {wall:.2f} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    tiny = fastdmf.synthetic_completion(shape=(6, 5), rank=1, n_observed=15, seed=0)
    for depth in (2, 3):  # JIT compilation, kept out of the wall times
        run_flow(tiny, depth)
        run_lbfgsb(tiny, depth)
    problem = fastdmf.synthetic_completion(seed=0)
    lines = [
        "# L-BFGS-B (through fastdmf.Objective) against the gradient flow",
        "",
        "Produced by `PYTHONPATH=. python benchmarks/lbfgsb_bias.py --out "
        "benchmarks/RESULTS_lbfgsb.md` (the module docstring says what runs).",
        "",
        *stamp(None),
        f"- problem: {problem!r}; gaussian init scale {INIT_SCALE}, seed 0; stop at "
        f"train loss {TOL} (L-BFGS-B: or {MAXITER} iterations)",
        "",
        "| depth | solver | status | train loss | recon. error | effective rank | "
        "nuclear norm | σ6/σ5 | gradient evaluations | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for depth in (2, 3):
        lines.append(row("gradient flow (fit, optimizer='flow')", depth, *run_flow(problem, depth)))
        lines.append(row("scipy L-BFGS-B (Objective)", depth, *run_lbfgsb(problem, depth)))
        print("\n".join(lines[-2:]), flush=True)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
