"""The ``fastdmf`` command line.

``fastdmf demo``
    Fit depths 1, 2, 3 on the paper's problem (100 x 100, rank 5, 2000 observed entries) with
    the paper's settings and print reconstruction error, effective rank and time per step.
``fastdmf reproduce theory``
    Factorized gradient flow, end-to-end flow and small-step GD from a balanced init, side by
    side, with the singular-value rates of Arora et al. (2019) checked along the way.
``fastdmf reproduce table | init-scale | dynamics | razin-cohen``
    The paper's experiments (Arora et al. 2019): the table against nuclear-norm minimisation,
    Figure 2 (init scale), Figure 3 (singular-value dynamics), and the 2 x 2 example of Razin
    & Cohen (2020); tables (markdown, CSV) and figures (PNG) in ``--out``.
``fastdmf reproduce diagonal [--quick]``
    Deep diagonal networks on sparse regression: test error, ||w||_1 and ||w||_2 of the
    flow's limit against the init scale for depths 2, 3, 4, and the recovery rate against
    the number of samples (see docs/diagonal.md).
``fastdmf info``
    Library versions and the Numba thread count.
``fastdmf sweep config.toml``
    Run the grid of fits a TOML file describes on all cores or a dask cluster, resumable
    (see docs/scale.md).
"""

from __future__ import annotations

import argparse
import sys
import time

import numba

from ._version import __version__
from .api import fit, versions, warmup
from .engine import select_kernels
from .factors import FactorLayout
from .problem import synthetic_completion


def _demo(args) -> int:
    problem = synthetic_completion(
        shape=(args.size, args.size), rank=args.rank, n_observed=args.observed, seed=args.seed
    )
    m, n = problem.shape
    print(
        f"fastdmf {__version__} demo: {m}x{n} rank-{args.rank} matrix, "
        f"{problem.n_observed} observed entries (seed {args.seed})"
    )
    print("settings: gaussian init scale 1e-3, GroupRMSprop lr 1e-3, stop at train loss 1e-6")
    print("compiling kernels ...", end=" ", flush=True)
    t0 = time.perf_counter()
    layout = FactorLayout.build(problem.shape, max(args.depths))
    warmup(parallel=(select_kernels(problem.n_observed, layout).parallel,))
    print(f"{time.perf_counter() - t0:.1f} s")
    print()
    header = (
        f"{'depth':>5}  {'status':>9}  {'steps':>7}  {'recon. error':>12}  "
        f"{'eff. rank':>9}  {'us/step':>8}"
    )
    print(header)
    print("-" * len(header))
    for depth in args.depths:
        t0 = time.perf_counter()
        res = fit(problem, depth=depth, seed=args.seed, max_steps=args.max_steps, record=None)
        elapsed = time.perf_counter() - t0
        traj = res.trajectory
        per_step = 1e6 * elapsed / max(res.n_steps, 1)
        print(
            f"{depth:>5}  {res.status:>9}  {res.n_steps:>7}  {traj.test_error[-1]:>12.3e}  "
            f"{traj.effective_rank[-1]:>9.2f}  {per_step:>8.1f}"
        )
    print()
    print(
        "reconstruction error = ||W - W*||_F^2 / ||W*||_F^2; depth 1 can only fill the "
        f"observed entries: about 1 - |Omega|/mn = {1 - problem.n_observed / (m * n):.2f}"
    )
    return 0


def _reproduce(args) -> int:
    out = args.out or f"fastdmf-{args.experiment}"
    if args.experiment == "theory":
        from .experiments import theory as theory_experiment

        theory_experiment.run(out, full=args.full, seed=args.seed)
        return 0
    if args.experiment == "diagonal":
        from .experiments import diagonal

        diagonal.run(out, quick=args.quick)
        return 0
    from .experiments import paper

    if args.experiment in ("table", "init-scale"):
        run = paper.reproduce_table if args.experiment == "table" else paper.reproduce_init_scale
        try:
            run(
                out,
                full=args.full,
                kinds=_names(args.kinds),
                methods=_names(args.methods),
                runs=args.runs,
                optimizer=args.optimizer,
            )
        except (ImportError, ValueError) as exc:  # a method or kind this build lacks, bad names
            print(f"fastdmf reproduce {args.experiment}: {exc}", file=sys.stderr)
            return 2
    elif args.experiment == "dynamics":
        paper.reproduce_dynamics(out, full=args.full, seed=args.seed)
    else:
        paper.reproduce_razin_cohen(out, full=args.full)
    return 0


def _names(text):
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _info(args) -> int:
    for name, version in versions().items():
        print(f"{name:>10}: {version}")
    print(f"{'threads':>10}: {numba.get_num_threads()} (numba)")
    return 0


def _sweep(args) -> int:
    from .experiments.sweep_cli import run_config, summary

    table = run_config(args.config, out=args.out, workers=args.workers, scheduler=args.scheduler)
    print(summary(table))
    print(
        f"{len(table)} fits in {table.config['n_points']} grid points; "
        "fastdmf.load_sweep() reads them"
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastdmf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastdmf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit depths 1-3 on the paper's synthetic problem")
    demo.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3])
    demo.add_argument("--size", type=int, default=100, help="matrix is size x size")
    demo.add_argument("--rank", type=int, default=5)
    demo.add_argument("--observed", type=int, default=2000)
    demo.add_argument("--max-steps", type=int, default=1_000_000)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    rep = sub.add_parser(
        "reproduce",
        help="re-run an experiment: the paper's table, "
        "init-scale, dynamics, razin-cohen, the theory checks, or the "
        "diagonal networks' transition",
    )
    rep.add_argument(
        "experiment",
        choices=["theory", "table", "init-scale", "dynamics", "razin-cohen", "diagonal"],
    )
    rep.add_argument("--out", default=None, help="output folder (default fastdmf-EXPERIMENT)")
    rep.add_argument(
        "--full",
        action="store_true",
        help="the full setting: the 100x100 problem (theory), the paper's whole "
        "grid (table, init-scale), longer runs (dynamics, razin-cohen)",
    )
    rep.add_argument(
        "--quick",
        action="store_true",
        help="diagonal: a small problem, in seconds (the default is the full "
        "setting: n = 100, d = 1000, 3 seeds)",
    )
    rep.add_argument("--seed", type=int, default=0, help="seed (theory, dynamics)")
    rep.add_argument(
        "--kinds", default=None, help="table, init-scale: problem kinds, e.g. completion,sensing"
    )
    rep.add_argument(
        "--methods",
        default=None,
        help="table, init-scale: e.g. nuclear,depth1,depth2,depth3,depth4",
    )
    rep.add_argument(
        "--runs",
        default=None,
        help="table, init-scale: tabulate the runs.csv of an earlier run instead of fitting",
    )
    rep.add_argument(
        "--optimizer",
        default=None,
        help="table, init-scale: the factorizations' optimiser instead of "
        "grouprmsprop, e.g. flow (the gradient flow itself, integrated by "
        "RKC: the same errors in far fewer gradient evaluations). A flow has no "
        "learning rate, so the grid's lr axis collapses: one flow per init scale and "
        "seed covers every lr (lr empty in runs.csv and table.csv, 'every (flow)' in "
        "the tables); the first lr is only its first trial step",
    )
    rep.set_defaults(func=_reproduce)
    info = sub.add_parser("info", help="versions and threads")
    info.set_defaults(func=_info)
    swp = sub.add_parser("sweep", help="run a grid of fits from a TOML file (resumable)")
    swp.add_argument("config", help="TOML file: [grid], [problem], [fit] tables")
    swp.add_argument("--out", help="output folder (overrides the file's out)")
    swp.add_argument("--workers", type=int, help="local worker processes (default: all cores)")
    swp.add_argument("--scheduler", help="dask scheduler address, e.g. tcp://host:8786")
    swp.set_defaults(func=_sweep)
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the whole traceback, not only its message",
    )
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        if args.traceback:
            raise
        # bad input (a config, a file, a name): its message, not a traceback
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(
            f"fastdmf {args.command}: error: {type(exc).__name__}: {text}\n"
            "(run with --traceback, before the command, for the whole traceback)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
