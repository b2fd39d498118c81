"""Per-call time of ``fastdmf.Objective`` against one step inside ``fit`` and against
``fastdmf.loss_and_grad``, in one run.

What each row times (float64, N=3, the paper's gaussian init of scale 1e-3, seed 0):

fit step (gd)
    ``Engine.run(k)``: k plain-GD steps in one compiled call, as ``fit`` runs them between
    records: fused loss + every factor's gradient + the update, no Python per step.
Engine.evaluate()
    One Python call of the fused loss-and-gradient kernel on the engine's own buffers, no
    update: the floor of any per-call interface.
Objective call
    ``obj(x)``: the input checks (length, dtype, finiteness), a new gradient array, the same
    kernel call; no update.
Objective + GD update
    ``loss, g = obj(x); g *= -lr; x += g`` in a Python loop: the same work as a fit step
    (like with like), done by an outside solver (its update is two NumPy passes where the
    fit's is one fused loop).
scipy L-BFGS-B iteration
    ``scipy.optimize.minimize(obj, x, jac=True, method="L-BFGS-B")`` (at least 50
    iterations), wall time over its function evaluations (k: their number): the objective
    plus scipy's own work per evaluation (its setup, the two-loop recursion, line search);
    once with SciPy's OpenBLAS on its default threads (what a user gets), once pinned to one
    thread around ``minimize`` (``fastdmf.kernels.blas.blas_threads(1)``).
loss_and_grad
    ``fastdmf.loss_and_grad(factors, problem)``: packs the factors and builds an engine on
    every call.

Before timing, ``obj(x)``'s gradient must equal ``loss_and_grad``'s to 1e-13 relative, and one
step of "Objective + GD update" must equal one ``Engine.run(1)`` step to 1e-13. Repeats are
interleaved across rows (round robin), so a slow phase of the shared machine hits every row
alike; the first calls (JIT compilation) are excluded. "× fit step" is the median over the
rounds of the row's time over the fit step's time in the same round (paired ratios: a slow
phase of a shared machine cancels), in the same run.

Usage::

    PYTHONPATH=. python benchmarks/bench_objective.py [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import scipy.optimize

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import contention, cpu_snapshot, stamp  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf import config  # noqa: E402
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.kernels.blas import blas_threads  # noqa: E402
from fastdmf.optim import get_optimizer  # noqa: E402

LR = 1e-3
DEPTH = 3
CONFIGS = [  # label, shape, width, observed entries, least L-BFGS-B iterations a repeat
    # bench_step's configs (a) and (b)
    ("(a) paper: 100x100, d=100, 2000 obs", (100, 100), 100, 2000, 50),
    ("(b) 2000x2000, d=100, 200000 obs", (2000, 2000), 100, 200_000, 10),
    ("(b) serial kernels", (2000, 2000), 100, 200_000, 10),
]
# the limits on Objective over the fit step, by the label's first three characters
TARGETS = {"(a)": 1.15, "(b)": 1.05}


def make_rows(problem, obj, x0, least_iters, parallel):
    """Name -> callable(k) running k calls/steps of that row from the same start."""
    spec = get_optimizer("gd")
    engine = Engine(problem, obj.layout, x0.copy(), spec, spec.hyper(LR, {}), parallel)
    plain = Engine(problem, obj.layout, x0.copy(), parallel=parallel)
    factors = [np.array(w) for w in obj.unpack(x0)]
    state = {"x": x0.copy()}

    def fit_step(k):
        engine.theta[:] = x0
        engine.run(k, 0.0, np.inf)

    def evaluate(k):
        for _ in range(k):
            plain.evaluate()

    def objective(k):
        x = state["x"]
        for _ in range(k):
            obj(x)

    def objective_gd(k):
        x = x0.copy()
        for _ in range(k):
            _, g = obj(x)
            g *= -LR  # in place, as the fit's update: no temporary
            x += g

    def lbfgsb(k, one_thread=False):
        # at least least_iters iterations: minimize's setup is spread over many evaluations
        before = obj.n_calls
        iters = max(k, least_iters)
        t0 = time.perf_counter()
        with blas_threads(1) if one_thread else nullcontext():
            scipy.optimize.minimize(
                obj,
                x0,
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": iters, "maxfun": iters, "ftol": 0.0, "gtol": 0.0},
            )
        run = lbfgsb_1 if one_thread else lbfgsb
        run.evals = obj.n_calls - before
        run.per_eval = (time.perf_counter() - t0) / max(run.evals, 1)

    def lbfgsb_1(k):
        lbfgsb(k, one_thread=True)

    def building_block(k):
        for _ in range(k):
            fastdmf.loss_and_grad(factors, problem)

    return {
        "fit step (gd)": fit_step,
        "Engine.evaluate()": evaluate,
        "Objective call": objective,
        "Objective + GD update": objective_gd,
        "scipy L-BFGS-B, per evaluation": lbfgsb,
        "scipy L-BFGS-B, per evaluation, BLAS 1 thread": lbfgsb_1,
        "loss_and_grad": building_block,
    }


def check_agreement(problem, obj, x0, parallel) -> tuple[float, float]:
    """(gradient vs loss_and_grad, one GD step vs Engine.run(1)), max relative differences;
    raises past 1e-13."""
    loss, grad = obj(x0)
    ref_loss, ref_grads = fastdmf.loss_and_grad(obj.unpack(x0), problem)
    g_rel = max(
        np.max(np.abs(a - b)) / np.max(np.abs(b))
        for a, b in zip(obj.unpack(grad), ref_grads, strict=True)
    )
    spec = get_optimizer("gd")
    engine = Engine(problem, obj.layout, x0.copy(), spec, spec.hyper(LR, {}), parallel)
    engine.run(1, 0.0, np.inf)
    x = x0 - LR * grad
    s_rel = float(np.max(np.abs(x - engine.theta)) / np.max(np.abs(engine.theta)))
    if not (g_rel <= 1e-13 and s_rel <= 1e-13 and abs(loss - ref_loss) <= 1e-13 * ref_loss):
        raise SystemExit(f"disagreement: gradients {g_rel:.2e}, step {s_rel:.2e}")
    return float(g_rel), s_rel


def time_rows(rows, repeats, target_s):
    """Seconds per call, ``{name: (median, best, k, median ratio)}``; repeats interleaved
    round robin. The ratio is to the fit step of the same round (paired: a slow phase of
    the machine that hits both cancels), its median over the rounds."""
    ks, samples = {}, {name: [] for name in rows}
    for name, run in rows.items():
        run(2)  # warm-up: compilation, first calls
        t0 = time.perf_counter()
        run(3)
        once = (time.perf_counter() - t0) / 3
        ks[name] = int(np.clip(np.ceil(target_s / max(once, 1e-7)), 3, 20_000))
    for _ in range(repeats):
        for name, run in rows.items():
            k = ks[name]
            t0 = time.perf_counter()
            run(k)
            per = (time.perf_counter() - t0) / k
            if name.startswith("scipy"):
                per, ks[name] = run.per_eval, run.evals
            samples[name].append(per)
    base = np.array(samples["fit step (gd)"])
    return {
        n: (float(np.median(s)), float(np.min(s)), ks[n], float(np.median(np.array(s) / base)))
        for n, s in samples.items()
    }


def run_config(label, shape, width, n_obs, least_iters, repeats, target_s):
    problem = fastdmf.synthetic_completion(shape=shape, rank=5, n_observed=n_obs, seed=0)
    # kernels chosen by size for every row (fit, Objective, loss_and_grad alike); the
    # "serial" config raises the size threshold so that all of them take the serial build
    config.PARALLEL_MIN_WORK = (
        10**18 if "serial" in label else config._DEFAULTS["PARALLEL_MIN_WORK"]
    )
    try:
        obj = fastdmf.Objective(problem, DEPTH, widths=width)
        x0 = obj.x0(init_scale=1e-3, seed=0)
        agree = check_agreement(problem, obj, x0, None)
        before = cpu_snapshot()
        times = time_rows(make_rows(problem, obj, x0, least_iters, None), repeats, target_s)
        return obj, agree, times, contention(before, cpu_snapshot())
    finally:
        config.reset()


def build_report(args) -> list[str]:
    repeats, target = (5, 0.1) if args.quick else (15, 0.3)
    lines = [
        "# Objective: per-call time against the in-fit step and loss_and_grad",
        "",
        "Produced by `PYTHONPATH=. python benchmarks/bench_objective.py"
        f"{' --quick' if args.quick else ''} --out benchmarks/RESULTS_objective.md` "
        "(the module docstring says what each row times).",
        "",
        *stamp(None),
        f"- setup: float64, depth {DEPTH}, gaussian init scale 1e-3, seed 0, GD lr {LR}; "
        f"{repeats} repeats interleaved across rows, each of k calls (about {target} s)",
        "",
    ]
    table = [
        "| config | row | ms/call (median) | ms/call (best) | k | × fit step (paired) |",
        "|---|---|---|---|---|---|",
    ]
    verdicts, notes = [], []
    for label, shape, width, n_obs, least_iters in CONFIGS:
        obj, (g_rel, s_rel), times, (others, steal) = run_config(
            label, shape, width, n_obs, least_iters, repeats, target
        )
        for name, (med, best, k, ratio) in times.items():
            table.append(
                f"| {label} | {name} | {med * 1e3:.4f} | {best * 1e3:.4f} | {k} | {ratio:.3f} |"
            )
        key = label[:3]
        for name in ("Objective call", "Objective + GD update"):
            ratio = times[name][3]
            ok = "within" if ratio <= TARGETS[key] else "OVER"
            verdicts.append(
                f"- {label}: {name} / fit step = {ratio:.3f} ({ok} the target {TARGETS[key]:.2f})"
            )
        verdicts.append(
            f"- {label}: loss_and_grad / Objective call = "
            f"{times['loss_and_grad'][3] / times['Objective call'][3]:.2f}"
        )
        notes.append(
            f"- {label}: {obj!r}; gradients vs loss_and_grad {g_rel:.1e}, one GD "
            f"step vs Engine.run(1) {s_rel:.1e}; other processes took {others:.0f}% "
            f"of all cores (steal {steal:.0f}%)"
        )
    lines += [
        "## Time per call",
        "",
        *table,
        "",
        "## Against the targets",
        "",
        *verdicts,
        "",
        "## Agreement and load",
        "",
        *notes,
        "",
    ]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    report = "\n".join(build_report(args))
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
