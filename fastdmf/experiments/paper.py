"""The experiments of Arora, Cohen, Hu & Luo (NeurIPS 2019), re-run from one call each.

``reproduce_table``
    Completion and sensing of a 100 x 100 rank-5 matrix from 2000 and 5000 observations:
    depth-1..4 factorizations against nuclear-norm minimisation; reconstruction error
    ``||W - W*||_F^2 / ||W*||_F^2``, nuclear norm and effective rank, mean ± std over seeds,
    beside the paper's published numbers.
``reproduce_init_scale``
    Figure 2: the same three quantities against the init scale, one line per depth, the
    nuclear-norm minimiser as a horizontal line.
``reproduce_dynamics`` and ``reproduce_razin_cohen``
    Figure 3 (singular values against step) and the 2 x 2 example of Razin & Cohen (2020);
    see :mod:`fastdmf.experiments.dynamics`.

An experiment is a grid of *problems* (kind x number of observations) times *methods*. A
method maps a problem and a list of trials (seed, init scale, learning rate) to one metrics
row per trial: ``"depth1"`` .. ``"depth4"`` fit the factorization (all trials of one problem
and depth in one :func:`fastdmf.fit_batch` for completion), ``"nuclear"`` is the
deterministic baseline (one row per problem). Every trial row lands in ``runs.csv``, so any
table or figure can be rebuilt from it (``runs=`` of the reproduce functions).

Seeds vary the initialisation; the problem of each (kind, observations) cell is drawn once
from ``problem_seed``, as all trials of a :func:`~fastdmf.fit_batch` share their problem.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np

from .._kinds import kind_of
from ..optim import get_optimizer
from ..problem import synthetic_completion, synthetic_sensing
from ..reference import effective_rank
from . import _report
from .dynamics import reproduce_dynamics, reproduce_razin_cohen
from .paper_tables import (
    KINDS,
    METHOD_NAMES,
    PUBLISHED,
    grid_lines,
    init_scale_figure,
    init_scale_table,
    pending_lines,
    summarize,
    table_md,
)

__all__ = [
    "Grid",
    "QUICK",
    "FULL",
    "PUBLISHED",
    "METHODS",
    "make_problem",
    "run_grid",
    "reproduce_table",
    "reproduce_init_scale",
    "reproduce_dynamics",
    "reproduce_razin_cohen",
]


@dataclass(frozen=True)
class Grid:
    """The settings of one experiment: problems x methods x trials.

    Every combination of ``init_scales`` x ``lrs`` x ``seeds`` is one trial of each depth
    method on each problem (``kinds`` x ``n_observed``); a flow grid (:attr:`is_flow`) has
    no lr axis: one trial per init scale and seed (see :meth:`trials`).
    ``sensing_init_scales`` and ``sensing_seeds`` replace ``init_scales`` and ``seeds`` for
    sensing problems (the paper goes down to 1e-7 there; a sensing step forms W and costs far
    more than a completion step).
    ``optimizer`` "flow" or "flow_dopri5" integrates the gradient flow instead (see
    :attr:`is_flow`); ``optimizer_options`` go to every fit (e.g. the flow's ``rtol``).
    ``sensing_problem`` (optional) runs sensing on a smaller stand-in problem:
    ``{"size": s, "rank": r, "n_observed": {column: measurements}}``; its rows keep the
    column's observation count in ``n_observed`` (the table's column) and the real count in
    ``measurements``.
    """

    kinds: tuple = KINDS
    n_observed: tuple = (2000, 5000)
    methods: tuple = ("nuclear", "depth1", "depth2", "depth3", "depth4")
    init_scales: tuple = (1e-3,)
    sensing_init_scales: tuple | None = None
    lrs: tuple = (1e-3,)
    seeds: tuple = (0, 1)
    sensing_seeds: tuple | None = None
    sensing_problem: dict | None = None
    size: int = 100
    rank: int = 5
    problem_seed: int = 0
    init: str = "gaussian"
    optimizer: str = "grouprmsprop"
    tol: float = 1e-6
    max_steps: int = 1_000_000
    max_time: float = 1e7
    optimizer_options: dict | None = None

    @property
    def is_flow(self) -> bool:
        """Whether the factorizations integrate the gradient flow (``optimizer`` "flow" or
        "flow_dopri5"): they then run to flow time ``max_time`` (the paper's fits reach
        train loss 1e-6 near t = 1e5; ``tol`` ends them there) with at most ``max_steps``
        gradient evaluations. A flow has no learning rate, so the lr axis collapses: one
        flow per (problem, depth, init scale, seed) stands for every lr of ``lrs``, and
        the first of ``lrs`` is only its integrator's first trial step (:meth:`trials`)."""
        return get_optimizer(self.optimizer).is_flow

    def trials(self, kind: str) -> list[dict]:
        """The trials of each depth method on a problem of ``kind``: ``{"seed",
        "init_scale", "lr"}`` for every init scale x lr x seed, in that nesting.

        A flow grid (:attr:`is_flow`) integrates the same flow for every lr from the same
        seed and init scale (the lrs would differ only within the integration tolerance),
        so it runs one trial per init scale x seed with ``"lr": None`` (an empty lr in
        runs.csv and the tables: the cell covers every lr) and ``"first_step"``, the
        first of ``lrs``, given to the integrator as its first trial step.
        """
        sensing = kind == "sensing"
        scales = (
            self.sensing_init_scales if sensing and self.sensing_init_scales else self.init_scales
        )
        seeds = self.sensing_seeds if sensing and self.sensing_seeds else self.seeds
        if self.is_flow:
            if not self.lrs:
                raise ValueError(
                    "Grid.lrs is empty: a flow grid takes the first lr as its "
                    "integrator's first trial step; give one, e.g. lrs=(1e-3,)"
                )
            step = float(self.lrs[0])
            return [
                {"seed": int(s), "init_scale": float(a), "lr": None, "first_step": step}
                for a in scales
                for s in seeds
            ]
        return [
            {"seed": int(s), "init_scale": float(a), "lr": float(r)}
            for a in scales
            for r in self.lrs
            for s in seeds
        ]


# Quick sensing stand-in: a sensing step streams the whole p x (m n) operator (16 ms at
# 100 x 100, p = 2000, ~30,000 steps a fit), so the quick table runs sensing at 50 x 50, rank
# 2, with the measurement counts that keep the paper's ratio to the degrees of freedom
# r (2n - r): 2000 / 975 = 2.05 -> 400 / 196 = 2.04, 5000 / 975 = 5.13 -> 1000 / 196 = 5.10.
QUICK_SENSING = {"size": 50, "rank": 2, "n_observed": {2000: 400, 5000: 1000}}

# quick: one init scale and learning rate, two seeds (one for sensing, at the stand-in size);
# full: the paper's grid at the paper's sizes
QUICK = Grid(sensing_seeds=(0,), sensing_problem=QUICK_SENSING)
FULL = Grid(
    init_scales=(1e-3, 1e-4, 1e-5, 1e-6),
    sensing_init_scales=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7),
    lrs=(1e-3, 3e-4),
    seeds=(0, 1, 2),
)


def make_problem(kind: str, n_observed: int, size: int = 100, rank: int = 5, seed: int = 0):
    """The paper's synthetic problem: ``"completion"`` (observed entries) or ``"sensing"``
    (Gaussian measurements ``<A_k, W*>``), ``size x size`` of rank ``rank``.

    Example
    -------
    >>> make_problem("completion", 150, size=20, rank=2)
    CompletionProblem(20x20, 150 observed, with ground truth)
    """
    if kind == "completion":
        return synthetic_completion(shape=(size, size), rank=rank, n_observed=n_observed, seed=seed)
    if kind == "sensing":
        return synthetic_sensing(
            shape=(size, size), rank=rank, n_measurements=n_observed, seed=seed
        )
    raise ValueError(f"unknown problem kind {kind!r}; choose from {list(KINDS)}")


# ------------------------------------------------------------------------------- methods


def _fit_row(result) -> dict:
    """The metrics of a factorization at the end of its fit (its last trajectory record)."""
    traj = result.trajectory
    return {
        "status": result.status,
        "steps": int(result.n_steps),
        "evals": int(traj.n_evals[-1]),
        "train_loss": float(traj.train_loss[-1]),
        "recon_error": float(traj.test_error[-1]),
        "nuclear_norm": float(traj.nuclear_norm[-1]),
        "effective_rank": float(traj.effective_rank[-1]),
    }


def matrix_metrics(w: np.ndarray, problem) -> dict:
    """Train loss, reconstruction error, nuclear norm and effective rank of a dense matrix
    ``w`` on ``problem`` (a completion or sensing problem with a known ground truth)."""
    w = np.asarray(w, dtype=np.float64)
    resid = kind_of(problem).residuals(problem, w)
    truth = problem.ground_truth
    if truth is None:
        u, v = problem.truth_factors
        truth = u @ v.T
    sv = np.linalg.svd(w, compute_uv=False)
    return {
        "train_loss": float(np.mean(resid**2)),
        "recon_error": float(np.sum((w - truth) ** 2) / np.sum(truth**2)),
        "nuclear_norm": float(sv.sum()),
        "effective_rank": effective_rank(sv),
    }


def depth_method(depth: int):
    """The method "depth-N factorization": ``method(problem, trials, grid) -> rows``."""

    def run(problem, trials, grid):
        return fit_depths(problem, trials, grid, [depth])[f"depth{depth}"]

    run.__name__ = f"depth{depth}"
    return run


def fit_depths(problem, trials, grid, depths) -> dict:
    """The trials of the depth methods ``depths`` on ``problem``, in one ``fit_batch`` (one
    depth per trial: the flow's lock-step rounds then serve every depth at once):
    ``{"depthN": rows}``; each row's ``wall_s`` and ``cpu_s`` are the batch's over its
    trials."""
    common = dict(
        init=grid.init,
        optimizer=grid.optimizer,
        tol=grid.tol,
        max_steps=grid.max_steps,
        record=None,
        optimizer_options=grid.optimizer_options,
    )
    if grid.is_flow:
        common["max_time"] = grid.max_time
        # sensing: every trial's operator products in one pass per round
        common["lockstep"] = kind_of(problem).batch_eval is not None
    every = [(d, t) for d in depths for t in trials]
    t0, c0 = time.perf_counter(), time.process_time()
    from ..batch import fit_batch  # completion and sensing, all trials together

    results = fit_batch(
        problem,
        [d for d, _ in every] if len(depths) > 1 else depths[0],
        seeds=[t["seed"] for _, t in every],
        init_scale=[t["init_scale"] for _, t in every],
        lr=[t["first_step"] if t["lr"] is None else t["lr"] for _, t in every],
        **common,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = {f"depth{d}": [] for d in depths}
    for (d, t), r in zip(every, results, strict=True):
        rows[f"depth{d}"].append(
            {**t, **_fit_row(r), "wall_s": wall / len(every), "cpu_s": cpu / len(every)}
        )
    return rows


def _batches(grid, problem) -> list[list[str]]:
    """The grid's methods in the batches ``run_grid`` runs them: one method each, except the
    depth methods of a flow grid on a problem with lock-step rounds (sensing), which run as
    one batch (in the place of the first of them)."""
    depths = [m for m in grid.methods if m.startswith("depth")]
    joint = grid.is_flow and kind_of(problem).batch_eval is not None and len(depths) > 1
    out = []
    for m in grid.methods:
        if not (joint and m in depths):
            out.append([m])
        elif m == depths[0]:
            out.append(depths)
    return out


def nuclear_method(problem, trials, grid):
    """The method "minimum nuclear norm subject to the observations" (one row; no seed)."""
    # fastdmf.baselines.nuclear_norm(problem) -> FitResult, whose .matrix() is the minimiser,
    # for completion and sensing problems, plugs in here.
    from ..baselines import nuclear_norm

    t0, c0 = time.perf_counter(), time.process_time()
    result = nuclear_norm(problem)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return [
        {
            "seed": None,
            "init_scale": None,
            "lr": None,
            "status": result.status,
            "steps": int(result.n_steps),
            "evals": int(result.n_steps),  # solver iterations
            **matrix_metrics(result.matrix(), problem),
            "wall_s": wall,
            "cpu_s": cpu,
        }
    ]


METHODS = {"nuclear": nuclear_method, **{f"depth{n}": depth_method(n) for n in (1, 2, 3, 4)}}
assert tuple(METHODS) == METHOD_NAMES


def _check_names(names, valid, what):
    bad = [x for x in names if x not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; choose from {list(valid)}")


def _check_available(grid):
    """Fail before any fit when a requested method or kind is not in this build."""
    if "nuclear" in grid.methods:
        try:
            from ..baselines import nuclear_norm  # noqa: F401
        except ModuleNotFoundError as exc:
            if exc.name != "fastdmf.baselines":
                raise
            raise ImportError(
                "the nuclear-norm baseline (fastdmf.baselines) is not in this "
                "build; leave it out with --methods depth1,depth2,depth3,depth4 "
                "(methods= in Python)"
            ) from None
    if "sensing" in grid.kinds and any(m != "nuclear" for m in grid.methods):
        from ..api import fit

        tiny = synthetic_sensing(shape=(2, 2), rank=1, n_measurements=3, seed=0)
        try:
            fit(tiny, 1, max_steps=1, record=None, seed=0)
        except (TypeError, ValueError) as exc:
            raise ImportError(
                "fastdmf.fit does not take sensing problems in this build "
                f"({exc}); leave them out with --kinds completion (kinds= in "
                "Python)"
            ) from None


def run_grid(grid: Grid, progress: bool = True, save=None) -> list[dict]:
    """Every method on every problem of ``grid``: one row per trial (see :func:`_fit_row`)
    with the problem's kind and size; the fits of one problem and depth run together.
    ``wall_s`` and ``cpu_s`` are the batch's wall and process CPU time over its trials.
    With ``save`` (a path), the rows so far are written there as CSV after every batch, so
    an interrupted run keeps what it finished."""
    _check_names(grid.kinds, KINDS, "problem kind(s)")
    _check_names(grid.methods, METHODS, "method(s)")
    _check_available(grid)
    say = _report.say(progress)
    rows = []
    for kind in grid.kinds:
        trials = grid.trials(kind)
        for n_obs in grid.n_observed:
            size, rank, count = grid.size, grid.rank, n_obs
            if kind == "sensing" and grid.sensing_problem:
                sub = grid.sensing_problem
                size, rank, count = sub["size"], sub["rank"], sub["n_observed"][n_obs]
            problem = make_problem(kind, count, size, rank, grid.problem_seed)
            for batch in _batches(grid, problem):
                say(f"  {kind} {n_obs} obs, {', '.join(batch)}: {len(trials)} trial(s) each ...")
                t0 = time.perf_counter()
                if len(batch) == 1:
                    got = {batch[0]: METHODS[batch[0]](problem, trials, grid)}
                else:
                    got = fit_depths(problem, trials, grid, [int(m[5:]) for m in batch])
                for name in batch:
                    say(
                        f"    {name}: {time.perf_counter() - t0:.1f} s, reconstruction error "
                        + ", ".join(f"{r['recon_error']:.3g}" for r in got[name][:8])
                        + (" ..." if len(got[name]) > 8 else "")
                    )
                rows += [
                    {
                        "kind": kind,
                        "size": size,
                        "rank": rank,
                        "n_observed": n_obs,
                        "measurements": count,
                        "method": name,
                        **r,
                    }
                    for name in batch
                    for r in got[name]
                ]
                if save is not None:
                    _report.write_csv(save, rows)
    return rows


# ------------------------------------------------------------------------------ aggregation


def _rows_from(runs, grid):
    """Trial rows of an earlier run (a list or the path of its runs.csv) limited to the
    grid's kinds and methods, and the grid with the observation counts of those rows."""
    rows = _report.read_csv(runs) if isinstance(runs, (str, os.PathLike)) else list(runs)
    needed = ("kind", "method", "n_observed")
    lacking = sorted({c for r in rows for c in needed if c not in r})
    if lacking:
        raise ValueError(
            f"runs= rows lack the column(s) {lacking}: give the runs.csv that "
            "fastdmf reproduce table / init-scale wrote"
        )
    keep = [r for r in rows if r["kind"] in grid.kinds and r["method"] in grid.methods]
    if not keep:
        raise ValueError(
            f"runs= holds no rows of kinds {list(grid.kinds)} and methods {list(grid.methods)}"
        )
    return keep, replace(grid, n_observed=tuple(sorted({r["n_observed"] for r in keep})))


def _run_or_load(name, grid, full, out, runs, progress):
    """Run ``grid`` (or read the trial rows of an earlier run, ``runs``) into ``out``:
    ``(grid, rows, summary, wall_s or None, out, say)``, with ``out/runs.csv`` written."""
    say = _report.say(progress)
    say(
        f"{name}: {'full' if full else 'quick'} grid, kinds {','.join(grid.kinds)}, methods "
        f"{','.join(grid.methods)}"
    )
    t0 = time.perf_counter()
    out = _report.ensure_dir(out)
    if runs is None:
        rows = run_grid(grid, progress, save=os.path.join(out, "runs.csv"))
        wall = time.perf_counter() - t0
    else:
        (rows, grid), wall = _rows_from(runs, grid), None
    _report.write_csv(os.path.join(out, "runs.csv"), rows)
    return grid, rows, summarize(rows), wall, out, say


def _prepare(base, full_base, full, kinds, methods, grid, optimizer=None):
    grid = grid or (full_base if full else base)
    if optimizer is not None:
        grid = replace(grid, optimizer=optimizer)
        grid.is_flow  # noqa: B018  (an unknown name fails here, listing the valid ones)
    if kinds is not None:
        grid = replace(grid, kinds=tuple(kinds))
    if methods is not None:
        grid = replace(grid, methods=tuple(methods))
    _check_names(grid.kinds, KINDS, "problem kind(s)")
    _check_names(grid.methods, METHODS, "method(s)")
    return grid


def reproduce_table(
    out="fastdmf-table",
    full: bool = False,
    kinds=None,
    methods=None,
    grid: Grid | None = None,
    runs=None,
    progress: bool = True,
    optimizer: str | None = None,
) -> dict:
    """The paper's table: reconstruction error, nuclear norm and effective rank of depth-1..4
    factorizations and of nuclear-norm minimisation, for completion and sensing from 2000
    and 5000 observations, beside the published numbers.

    Writes ``runs.csv`` (one row per trial), ``table.csv`` (mean and std over seeds per
    kind, observations, method, init scale and lr) and ``table.md`` into ``out``. A flow
    grid's rows and cells have an empty lr: one flow covers every lr (:meth:`Grid.trials`).

    Parameters
    ----------
    out : path
        Output folder (created).
    full : bool
        The paper's grid (:data:`FULL`: 4 init scales (5 for sensing) x 2 lrs x 3 seeds;
        by the flow 4 (5) init scales x 3 seeds, every lr at once) instead of :data:`QUICK`
        (init 1e-3, lr 1e-3, 2 seeds; 1 for sensing).
    kinds, methods : list of str, optional
        Subsets of ``("completion", "sensing")`` and of :data:`METHODS`.
    grid : Grid, optional
        Explicit settings (overrides ``full``).
    runs : list of dict or path, optional
        Trial rows of an earlier run (its ``runs.csv``) to tabulate instead of fitting.
    optimizer : str, optional
        The factorizations' optimiser instead of the grid's (GroupRMSprop): ``"flow"`` or
        ``"flow_dopri5"`` integrate the gradient flow itself (:attr:`Grid.is_flow`), the
        paper's grid in a fraction of the gradient evaluations, one flow per init scale and
        seed for all lrs (a flow has no learning rate).

    Returns
    -------
    dict with ``"runs"`` (trial rows), ``"summary"`` (table rows) and ``"wall_s"``.

    Example
    -------
    >>> g = Grid(kinds=("completion",), n_observed=(150,), methods=("depth2",), size=20,
    ...          rank=2, seeds=(0,), lrs=(1e-2,), max_steps=100)
    >>> res = reproduce_table("/tmp/fastdmf-doc-table", grid=g, progress=False)
    >>> [r["method"] for r in res["summary"]]
    ['depth2']
    """
    grid = _prepare(QUICK, FULL, full, kinds, methods, grid, optimizer)
    grid, rows, summary, wall, out, say = _run_or_load("table", grid, full, out, runs, progress)
    _report.write_csv(os.path.join(out, "table.csv"), summary)
    _report.write_md(os.path.join(out, "table.md"), table_md(grid, summary, wall))
    say(f"  tables in {out}" + (f" ({wall:.1f} s)" if wall is not None else ""))
    return {"runs": rows, "summary": summary, "wall_s": wall}


def reproduce_init_scale(
    out="fastdmf-init-scale",
    full: bool = False,
    kinds=None,
    methods=None,
    grid: Grid | None = None,
    runs=None,
    progress: bool = True,
    optimizer: str | None = None,
) -> dict:
    """Figure 2 of the paper: reconstruction error, nuclear norm and effective rank against
    the init scale, one line per depth (and lr), the nuclear-norm minimiser's values as
    horizontal lines. With smaller init the factorizations' nuclear norm rises above the
    minimum while their effective rank falls toward the true rank.

    Writes ``runs.csv``, ``init_scale.csv``, ``init_scale.md`` and (with matplotlib)
    ``init_scale_<kind>_<obs>.png`` into ``out``. Arguments as in :func:`reproduce_table`;
    the quick grid is 2000 observations, init 1e-3 ... 1e-6, lr 1e-3, one seed, depths 2-4
    and the nuclear-norm baseline; the full one is :data:`FULL` without depth 1.

    Example
    -------
    >>> g = Grid(kinds=("completion",), n_observed=(150,), methods=("depth2",), size=20,
    ...          rank=2, seeds=(0,), init_scales=(1e-2, 1e-3), lrs=(1e-2,), max_steps=100)
    >>> res = reproduce_init_scale("/tmp/fastdmf-doc-init", grid=g, progress=False)
    >>> sorted(r["init_scale"] for r in res["summary"])
    [0.001, 0.01]
    """
    grid = _prepare(QUICK_INIT_SCALE, FULL_INIT_SCALE, full, kinds, methods, grid, optimizer)
    grid, rows, summary, wall, out, say = _run_or_load(
        "init-scale", grid, full, out, runs, progress
    )
    _report.write_csv(os.path.join(out, "init_scale.csv"), summary)
    lines = [
        "# Reconstruction error, nuclear norm and effective rank against init scale",
        "",
        *grid_lines(grid, wall),
        "",
    ]
    for kind in grid.kinds:
        for n_obs in grid.n_observed:
            cell = [s for s in summary if (s["kind"], s["n_observed"]) == (kind, n_obs)]
            lines += [f"## {kind}, {n_obs} observations", "", *init_scale_table(cell), ""]
            init_scale_figure(out, kind, n_obs, cell)
    pending = pending_lines(grid)
    if pending:
        lines += ["## Pending", "", *pending]
    _report.write_md(os.path.join(out, "init_scale.md"), lines)
    say(f"  tables and figures in {out}")
    return {"runs": rows, "summary": summary, "wall_s": wall}


FULL_INIT_SCALE = replace(FULL, methods=("nuclear", "depth2", "depth3", "depth4"))
QUICK_INIT_SCALE = Grid(
    n_observed=(2000,),
    methods=("nuclear", "depth2", "depth3", "depth4"),
    lrs=(1e-3,),
    init_scales=(1e-3, 1e-4, 1e-5, 1e-6),
    sensing_init_scales=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7),
    seeds=(0,),
    sensing_problem=QUICK_SENSING,
)
