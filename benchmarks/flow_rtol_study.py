"""Which tolerance the flow needs on the paper's grid: rtol against an rtol-1e-8 reference.

Every cell of the paper's completion table (100 x 100, rank 5, problem seed 0; 2000 and
5000 observations x depth 2, 3, 4 x init scale 1e-3 ... 1e-6), one trial per cell (seed 0,
lr 1e-3 as the first trial step), integrated by ``optimizer="flow"`` (RKC, atol 1e-9) to
train loss 1e-6 at each rtol of ``--rtols``; the trials of one (observations, depth) run as
one ``fit_batch`` with one rtol per trial. Reported per cell: the reconstruction error
against the rtol-1e-8 reference's, and the gradient evaluations; the largest rtol whose
every cell is within ``--within`` (5%) of the reference.

Where the evaluations go: a second pass at a few rtols records 100 flow times on a log grid
and splits each fit's evaluations by its train loss L (L0 the initial loss): the plateau
(L > 0.9 L0: no component learned yet), the learning phase (the components jump in), and
the stiff end (L < 1e-4, down to the tol 1e-6: every component learned, the rate set by the
smallest curvature and the step by the largest). Records land on their times, so these fits
differ a little from the record-free ones of the first table; only the split is read from
them.

Usage: ``PYTHONPATH=. python benchmarks/flow_rtol_study.py [--quick] [--out FILE]``
(``--quick``: 2000 observations, depths 2 and 3, init 1e-3 and 1e-6, rtols 1e-8, 1e-6, 1e-4).
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

REF = 1e-8
END = 1e-4  # train loss below which a fit is in its stiff end
PLATEAU = 0.9  # train loss above this fraction of the initial one: still on the plateau


def load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def run_cells(problems, depths, scales, rtols, record=None):
    """{(obs, depth, init, rtol): FitResult}: one fit_batch per (obs, depth)."""
    out = {}
    for n_obs, problem in problems.items():
        for depth in depths:
            trials = [(s, r) for s in scales for r in rtols]
            res = fastdmf.fit_batch(
                problem,
                depth,
                seeds=[0] * len(trials),
                init_scale=[s for s, _ in trials],
                lr=1e-3,
                optimizer="flow",
                max_time=1e7,
                tol=1e-6,
                record=record,
                optimizer_options={"rtol": [r for _, r in trials]},
                n_threads=2,
            )
            for (s, r), fit in zip(trials, res, strict=True):
                out[n_obs, depth, s, r] = fit
    return out


def run_matched(problems, depths, scales, rtols, refs):
    """{(obs, depth, init, rtol): FitResult}: every rtol integrated to the flow time at
    which the reference (``refs``, the rtol-1e-8 fits to tol) stopped, without a tol: the
    same point of the exact flow, so what differs is the integration error alone."""
    out = {}
    for n_obs, problem in problems.items():
        for depth in depths:
            trials = [(s, r) for s in scales for r in rtols]
            ends = [float(refs[n_obs, depth, s, REF].trajectory.time[-1]) for s, _ in trials]
            res = fastdmf.fit_batch(
                problem,
                depth,
                seeds=[0] * len(trials),
                init_scale=[s for s, _ in trials],
                lr=1e-3,
                optimizer="flow",
                max_time=ends,
                tol=0.0,
                record=None,
                optimizer_options={"rtol": [r for _, r in trials]},
                n_threads=2,
            )
            for (s, r), fit in zip(trials, res, strict=True):
                out[n_obs, depth, s, r] = fit
    return out


def matched_report(refs, fits, obs, depths, scales, rtols, within):
    """The error at the reference's stopping time, against the reference's there."""
    loose = [r for r in rtols if r != REF]
    lines = [
        "## At the same flow time: the integration error alone",
        "",
        "Every rtol integrated, without a tol, to the flow time T at which the rtol-1e-8 "
        "fit reached train loss 1e-6; per cell the reference's error at T and, per rtol, "
        "error / reference error at T.",
        "",
    ]
    header = ["obs", "depth", "init", "T", "ref. error at T", *[f"rtol {r:g}" for r in loose]]
    body, worst = [], {r: 0.0 for r in loose}
    for n_obs in obs:
        for depth in depths:
            for s in scales:
                ref = fits[n_obs, depth, s, REF]
                e_ref = ref.trajectory.test_error[-1]
                row = [n_obs, depth, f"{s:g}", f"{ref.trajectory.time[-1]:.4g}", f"{e_ref:.4g}"]
                for r in loose:
                    ratio = fits[n_obs, depth, s, r].trajectory.test_error[-1] / e_ref
                    worst[r] = max(worst[r], abs(ratio - 1.0))
                    row.append(f"{ratio:.4f}")
                body.append(row)
    lines += _table(header, body)
    safe = [r for r in loose if all(worst[q] <= within for q in loose if q <= r)]
    lines += [
        "",
        "| rtol | largest deviation at T |",
        "|---|---|",
        *[f"| {r:g} | {100 * worst[r]:.3f}% |" for r in loose],
        "",
        f"The largest rtol with every cell within {100 * within:g}% at T (at it and "
        f"every smaller rtol): {max(safe) if safe else None}.",
    ]
    return lines


def phases(fit) -> tuple[int, int, int]:
    """Evaluations spent on the plateau, in the learning phase and in the stiff end."""
    traj = fit.trajectory
    loss, evals = np.asarray(traj.train_loss), np.asarray(traj.n_evals, dtype=float)
    first_drop = (
        np.argmax(loss <= PLATEAU * loss[0]) if np.any(loss <= PLATEAU * loss[0]) else len(loss) - 1
    )
    end = np.argmax(loss <= END) if np.any(loss <= END) else len(loss) - 1
    plateau, learned, total = evals[first_drop], evals[end], evals[-1]
    return int(plateau), int(learned - plateau), int(total - learned)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rtols", default="1e-8,1e-7,1e-6,1e-5,1e-4,1e-3")
    parser.add_argument("--split-rtols", default="1e-8,1e-6,1e-4")
    parser.add_argument("--within", type=float, default=0.05)
    parser.add_argument("--out", default=None, help="also write the report here")
    parser.add_argument(
        "--matched-only",
        action="store_true",
        help="only the same-flow-time comparison (the reference fits to "
        "tol, then every rtol to their stopping times), on --scales",
    )
    parser.add_argument("--scales", default=None, help="init scales (default: all four)")
    args = parser.parse_args(argv)
    obs, depths, scales = (2000, 5000), (2, 3, 4), (1e-3, 1e-4, 1e-5, 1e-6)
    rtols = sorted({float(x) for x in args.rtols.split(",")} | {REF})
    split = sorted({float(x) for x in args.split_rtols.split(",")})
    if args.quick:
        obs, depths, scales, rtols, split = (
            (2000,),
            (2, 3),
            (1e-3, 1e-6),
            [1e-8, 1e-6, 1e-4],
            [1e-8, 1e-4],
        )
    if args.scales:
        scales = tuple(float(x) for x in args.scales.split(","))
    problems = {n: fastdmf.synthetic_completion(seed=0, n_observed=n) for n in obs}
    fastdmf.fit_batch(problems[obs[0]], 2, seeds=[0, 1], optimizer="flow", max_time=1.0)
    before, t0, c0 = load(), time.perf_counter(), time.process_time()
    if args.matched_only:
        refs = run_cells(problems, depths, scales, [REF])
        matched = run_matched(problems, depths, scales, rtols, refs)
        wall = time.perf_counter() - t0
        head = [
            "# The flow's tolerance on the paper's grid: at the same flow time",
            "",
            *stamp(torch_threads=None),
            f"- cells: {len(obs) * len(depths) * len(scales)} "
            f"({', '.join(map(str, obs))} obs x depth {', '.join(map(str, depths))} x "
            f"init {', '.join(f'{s:g}' for s in scales)}), seed 0, lr 1e-3, RKC, atol "
            f"1e-9; rtols {', '.join(f'{r:g}' for r in rtols)}",
            f"- {wall:.1f} s wall, {time.process_time() - c0:.1f} s CPU (fit_batch, 2 "
            f"threads); {before} before, {load()} after",
            f"- command: python benchmarks/flow_rtol_study.py {' '.join(argv or sys.argv[1:])}",
            "",
        ]
        text = (
            "\n".join(head + matched_report(refs, matched, obs, depths, scales, rtols, args.within))
            + "\n"
        )
        print(text)
        if args.out:
            Path(args.out).write_text(text)
        return
    fits = run_cells(problems, depths, scales, rtols)
    wall1, cpu1 = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    logged = run_cells(problems, depths, scales, split, record=("log", 100))
    wall2 = time.perf_counter() - t1
    lines = report(fits, logged, obs, depths, scales, rtols, split, args.within)
    head = [
        "# The flow's tolerance on the paper's grid",
        "",
        *stamp(torch_threads=None),
        f"- cells: {len(obs) * len(depths) * len(scales)} ({', '.join(map(str, obs))} obs x "
        f"depth {', '.join(map(str, depths))} x init "
        f"{', '.join(f'{s:g}' for s in scales)}), seed 0, lr 1e-3, RKC, atol 1e-9, "
        f"tol 1e-6; rtols {', '.join(f'{r:g}' for r in rtols)}"
        + (" (--quick)" if args.quick else ""),
        f"- first table: {wall1:.1f} s wall, {cpu1:.1f} s CPU (fit_batch, 2 threads); "
        f"the split pass: {wall2:.1f} s wall; {before} before, {load()} after",
        f"- command: python benchmarks/flow_rtol_study.py {' '.join(argv or sys.argv[1:])}",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def report(fits, logged, obs, depths, scales, rtols, split, within):
    loose = [r for r in rtols if r != REF]
    lines = [
        "## Reconstruction error against the rtol-1e-8 reference, and evaluations",
        "",
        "Per cell: the reference's error and evaluations, then for each rtol the ratio "
        "error / reference error and the evaluations.",
        "",
    ]
    header = ["obs", "depth", "init", "ref. error", "ref. evals"]
    header += [f"rtol {r:g}: ratio, evals" for r in loose]
    body, worst = [], {r: 0.0 for r in loose}
    statuses = {f.status for f in fits.values()}
    for n_obs in obs:
        for depth in depths:
            for s in scales:
                ref = fits[n_obs, depth, s, REF]
                e_ref = ref.trajectory.test_error[-1]
                row = [
                    n_obs,
                    depth,
                    f"{s:g}",
                    f"{e_ref:.4g}",
                    f"{int(ref.trajectory.n_evals[-1]):,}",
                ]
                for r in loose:
                    fit = fits[n_obs, depth, s, r]
                    ratio = fit.trajectory.test_error[-1] / e_ref
                    worst[r] = max(worst[r], abs(ratio - 1.0))
                    row.append(f"{ratio:.3f}, {int(fit.trajectory.n_evals[-1]):,}")
                body.append(row)
    lines += _table(header, body)
    safe = [r for r in loose if worst[r] <= within]
    largest = max(
        (r for r in loose if all(worst[q] <= within for q in loose if q <= r)), default=None
    )
    total = {r: sum(int(fits[k].trajectory.n_evals[-1]) for k in fits if k[3] == r) for r in rtols}
    lines += [
        "",
        f"Statuses: {sorted(statuses)}.",
        "",
        "| rtol | largest deviation from the reference | total evaluations | vs rtol 1e-8 |",
        "|---|---|---|---|",
    ]
    for r in rtols:
        dev = "reference" if r == REF else f"{100 * worst[r]:.2f}%"
        lines.append(f"| {r:g} | {dev} | {total[r]:,} | {total[r] / total[REF]:.3f}x |")
    names = ", ".join(f"{r:g}" for r in safe) or "none"
    lines += [
        "",
        f"Within {100 * within:g}% in every cell: rtol {names}; "
        f"the largest rtol with every cell within {100 * within:g}% at it and at every "
        f"smaller rtol: {largest if largest is None else f'{largest:g}'}.",
        "",
        "## Where the evaluations go",
        "",
        f"Per depth, summed over the cells: evaluations on the plateau (L > {PLATEAU} "
        f"L0), while learning, and in the stiff end (L < {END:g}), from fits with 100 "
        "log-spaced records.",
        "",
    ]
    header = ["obs", "depth", "rtol", "plateau", "learning", "stiff end", "total"]
    body = []
    for n_obs in obs:
        for depth in depths:
            for r in split:
                parts = np.sum([phases(logged[n_obs, depth, s, r]) for s in scales], axis=0)
                tot = int(parts.sum())
                body.append(
                    [
                        n_obs,
                        depth,
                        f"{r:g}",
                        *[f"{int(p):,} ({100 * p / tot:.0f}%)" for p in parts],
                        f"{tot:,}",
                    ]
                )
    lines += _table(header, body)
    return lines


def _table(header, body):
    return [
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(map(str, row)) + " |" for row in body],
    ]


if __name__ == "__main__":
    main()
