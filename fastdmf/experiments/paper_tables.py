"""Tables and figures of :mod:`fastdmf.experiments.paper`: the trial rows summarised over
seeds, the paper's table beside its published numbers, and Figure 2."""

from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np

from . import _report

METHOD_NAMES = ("nuclear", "depth1", "depth2", "depth3", "depth4")
KINDS = ("completion", "sensing")

# DESIGN.md section 3 (the paper's section 5 and appendix): completion, 100 x 100, rank 5.
# 5000 observations: every method recovers W* (no single number published).
PUBLISHED = {
    ("completion", 2000): {
        "nuclear": 1.06e-1,
        "depth1": 8.19e-1,
        "depth2": 5.92e-2,
        "depth3": 2.58e-5,
    },
    ("completion", 5000): {
        "nuclear": "recovers",
        "depth2": "recovers",
        "depth3": "recovers",
        "depth4": "recovers",
    },
}


_GROUP = ("kind", "n_observed", "method", "init_scale", "lr")
_METRICS = ("recon_error", "nuclear_norm", "effective_rank")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of each metric, per (kind, observations, method, init, lr)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in _GROUP), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(_GROUP, key, strict=True))
        row["n_seeds"] = len(members)
        row["converged"] = sum(m["status"] == "converged" for m in members)
        row["steps_mean"] = float(np.mean([m["steps"] for m in members]))
        # gradient evaluations (a discrete step is one; runs.csv files from before the
        # column have steps only)
        row["evals_mean"] = float(np.mean([m.get("evals", m["steps"]) for m in members]))
        for name in _METRICS:
            row[f"{name}_mean"], row[f"{name}_std"] = _report.mean_std(m[name] for m in members)
        out.append(row)
    return out


def _metric_cells(s):
    """Mean ± std cells of the metrics (the nuclear norm to 5 digits: its changes with the
    init scale are small against its size)."""
    return [
        _report.fmt_mean_std(
            s[f"{m}_mean"], s[f"{m}_std"], s["n_seeds"], 5 if m == "nuclear_norm" else 3
        )
        for m in _METRICS
    ]


def _best(summary, kind, n_obs, method):
    """The (init, lr) group with the smallest mean reconstruction error for one cell."""
    cands = [
        s for s in summary if (s["kind"], s["n_observed"], s["method"]) == (kind, n_obs, method)
    ]
    return min(cands, key=lambda s: s["recon_error_mean"]) if cands else None


#: The lr cell of a flow's trial or table row: a flow has no learning rate, so one flow per
#: init scale and seed stands for every lr of the grid (its row's lr is empty in the CSVs).
FLOW_LR = "every (flow)"


def _lr_cell(s, none=""):
    """The lr of a row as a table shows it: the number, :data:`FLOW_LR` for a flow's row
    (no lr, an init scale), ``none`` for the nuclear norm's (neither)."""
    if s["lr"] is not None:
        return f"{s['lr']:g}"
    return none if s["init_scale"] is None else FLOW_LR


def _setting(s):
    if s["init_scale"] is None:
        return ""
    if s["lr"] is None:
        return f"init {s['init_scale']:g}, every lr (flow)"
    return f"init {s['init_scale']:g}, lr {s['lr']:g}"


def _published(kind, n_obs, method):
    pub = PUBLISHED.get((kind, n_obs), {}).get(method)
    if pub is None:
        return "not published" if kind == "sensing" else "-"
    return pub if isinstance(pub, str) else f"{pub:.3g}"


def grid_lines(grid, wall):
    if wall is None:
        return [
            "Rows read from an earlier run (runs=); the settings of each trial are in runs.csv."
        ]
    g = asdict(grid)
    sub = grid.sensing_problem if "sensing" in grid.kinds else None
    return [
        f"Problems: {g['size']}x{g['size']}, rank {g['rank']}, problem seed "
        f"{g['problem_seed']}; kinds {', '.join(grid.kinds)}; observations "
        f"{', '.join(map(str, grid.n_observed))}.",
        *(
            [
                f"Sensing runs on a {sub['size']}x{sub['size']} rank-{sub['rank']} stand-in with "
                + ", ".join(
                    f"{v} measurements in the {k} column" for k, v in sub["n_observed"].items()
                )
                + " (the paper's ratio of measurements to degrees of freedom; `--full` runs the "
                "paper's 100x100 problems)."
            ]
            if sub
            else []
        ),
        f"Factorizations: {grid.init} init, scales {', '.join(f'{a:g}' for a in grid.init_scales)}"
        + (
            f" (sensing: {', '.join(f'{a:g}' for a in grid.sensing_init_scales)})"
            if grid.sensing_init_scales and "sensing" in grid.kinds
            else ""
        )
        + (
            "; no lr: one flow per init and seed covers every lr"
            + (f" ({', '.join(f'{r:g}' for r in grid.lrs)})" if grid.lrs else "")
            + ", the integrator's first trial step "
            + (f"{grid.lrs[0]:g}" if grid.lrs else "none")
            if grid.is_flow
            else f"; {grid.optimizer} lr {', '.join(f'{r:g}' for r in grid.lrs)}"
        )
        + "; seeds "
        f"{', '.join(map(str, grid.seeds))}"
        + (
            f" (sensing: {', '.join(map(str, grid.sensing_seeds))})"
            if grid.sensing_seeds and "sensing" in grid.kinds
            else ""
        )
        + " (vary the initialisation); "
        + _stop_rule(grid),
        f"Wall time of the fits: {wall:.1f} s.",
    ]


def _stop_rule(grid) -> str:
    if grid.is_flow:
        rtol = (grid.optimizer_options or {}).get("rtol")
        return (
            f"the gradient flow itself ({grid.optimizer}"
            + (f", rtol {rtol:g}" if rtol is not None else ", default tolerances")
            + "), integrated until train loss "
            f"{grid.tol:g}, flow time {grid.max_time:g} or {grid.max_steps:,} gradient "
            "evaluations."
        )
    return f"stop at train loss {grid.tol:g} or {grid.max_steps:,} steps."


def pending_lines(grid):
    """Lines naming the kinds and methods of the paper's table this run left out."""
    lines = []
    for kind in KINDS:
        if kind not in grid.kinds:
            lines.append(f"- **{kind}: pending** (not run: `--kinds` left it out).")
    for name in METHOD_NAMES:
        if name not in grid.methods:
            lines.append(f"- **{name}: pending** (not run: `--methods` left it out).")
    return lines


def table_md(grid, summary, wall):
    lines = [
        "# Deep matrix factorization against nuclear-norm minimisation",
        "",
        *grid_lines(grid, wall),
        "",
        "Reconstruction error ||W - W*||_F^2 / ||W*||_F^2 at the end of each fit, mean ± "
        "std over seeds; for each cell the (init scale, lr) with the smallest mean error "
        "(all settings in the second table). Published: DESIGN.md section 3 (the paper's "
        "section 5).",
    ]
    for kind in KINDS:
        lines += ["", f"## {kind}", ""]
        if kind not in grid.kinds:
            lines.append(f"**Pending**: {kind} was not run (`--kinds`).")
            continue
        header = ["method"]
        for n_obs in grid.n_observed:
            header += [f"{n_obs} obs: fastdmf", "setting", "published"]
        body = []
        for name in METHOD_NAMES:
            row = [name]
            for n_obs in grid.n_observed:
                best = _best(summary, kind, n_obs, name) if name in grid.methods else None
                if best is None:
                    row += ["pending (not run)", "", _published(kind, n_obs, name)]
                    continue
                row += [
                    _report.fmt_mean_std(
                        best["recon_error_mean"], best["recon_error_std"], best["n_seeds"]
                    ),
                    _setting(best),
                    _published(kind, n_obs, name),
                ]
            body.append(row)
        lines += _report.markdown_table(header, body)
    lines += ["", "## Every setting", ""]
    body = [
        [
            s["kind"],
            s["n_observed"],
            s["method"],
            "" if s["init_scale"] is None else f"{s['init_scale']:g}",
            _lr_cell(s),
            f"{s['converged']}/{s['n_seeds']}",
            f"{s['steps_mean']:,.0f}",
            f"{s['evals_mean']:,.0f}",
            *_metric_cells(s),
        ]
        for s in summary
    ]
    lines += _report.markdown_table(
        [
            "kind",
            "obs",
            "method",
            "init",
            "lr",
            "converged",
            "steps",
            "evals",
            "recon. error",
            "nuclear norm",
            "eff. rank",
        ],
        body,
    )
    pending = pending_lines(grid)
    if pending:
        lines += ["", "## Pending", "", *pending]
    return lines


def init_scale_table(cell):
    header = ["method", "init", "lr", "seeds", "recon. error", "nuclear norm", "eff. rank"]
    body = []
    for s in sorted(cell, key=lambda s: (s["method"], -(s["init_scale"] or 0), s["lr"] or 0)):
        body.append(
            [
                s["method"],
                "-" if s["init_scale"] is None else f"{s['init_scale']:g}",
                _lr_cell(s, "-"),
                s["n_seeds"],
                *_metric_cells(s),
            ]
        )
    return _report.markdown_table(header, body)


def init_scale_figure(out, kind, n_obs, cell):
    plt = _report.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    titles = {
        "recon_error": "reconstruction error",
        "nuclear_norm": "nuclear norm",
        "effective_rank": "effective rank",
    }
    styles = ["-", "--", ":", "-."]
    # one line per lr; a flow's rows (lr None) are one line for every lr
    lrs = sorted(
        {s["lr"] for s in cell if s["init_scale"] is not None},
        key=lambda r: -np.inf if r is None else -r,
    )
    for ax, metric in zip(axes, _METRICS, strict=True):
        for name in METHOD_NAMES:
            pts = sorted(
                (s for s in cell if s["method"] == name), key=lambda s: s["init_scale"] or 0
            )
            if not pts:
                continue
            if name == "nuclear":
                ax.axhline(pts[0][f"{metric}_mean"], color="k", lw=1, label="nuclear norm min.")
                continue
            for k, lr in enumerate(lrs):
                sel = [s for s in pts if s["lr"] == lr]
                ax.errorbar(
                    [s["init_scale"] for s in sel],
                    [s[f"{metric}_mean"] for s in sel],
                    yerr=[s[f"{metric}_std"] for s in sel],
                    marker="o",
                    ls=styles[k % len(styles)],
                    color=f"C{int(name[-1])}",
                    label=f"{name}, flow" if lr is None else f"{name}, lr {lr:g}",
                )
        ax.set_xscale("log")
        if metric == "recon_error":
            ax.set_yscale("log")
        ax.set(xlabel="init scale", title=titles[metric])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{kind}, {n_obs} observations")
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"init_scale_{kind}_{n_obs}.png"), dpi=100)
    plt.close(fig)
