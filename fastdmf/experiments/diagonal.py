"""``fastdmf reproduce diagonal``: the kernel-to-rich transition of deep diagonal networks.

A depth-N diagonal network ``w = u^N - v^N`` trained by gradient flow from ``u = v = alpha``
on noiseless sparse regression (n < d) interpolates; which interpolant it reaches depends on
alpha and N (Woodworth et al. 2020; docs/diagonal.md). Two experiments:

1. **Transition.** For each depth and alpha, the flow's limit (``fit(optimizer="flow")`` to a
   train loss of :data:`TOL`): its test error ``||w - w*||^2 / ||w*||^2``, ``||w||_1``,
   ``||w||_2``, support size, and its distance to the exact limit
   :func:`fastdmf.theory.diagonal_limit` (computed independently, by Newton on the dual).
   Small alpha gives basis pursuit (``min ||w||_1``, the rich regime: exact recovery), large
   alpha the minimum-l2 interpolant (the kernel regime: no recovery); both are computed
   alongside (:func:`fastdmf.baselines.basis_pursuit`, ``min_norm_interpolant``).
2. **Recovery.** At a few alphas (``rec_alphas``), the fraction of seeds whose flow
   recovers ``w*`` (test error <= :data:`RECOVERED`) against the number of samples n, for
   each depth, beside basis pursuit and the minimum-l2 interpolant.

The default setting is the issue's (n = 100, d = 1000, 5-sparse, 3 seeds, depths 2, 3, 4);
``quick=True`` runs a small problem in seconds. Outputs: ``transition.csv``,
``recovery.csv``, ``diagonal.md`` (tables), and with matplotlib ``transition.png``,
``recovery.png``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..api import fit
from ..baselines import basis_pursuit, min_norm_interpolant
from ..diagonal import synthetic_sparse_regression
from ..diagonal_theory import diagonal_limit
from ._report import ensure_dir, markdown_table, mean_std, pyplot, say, write_csv, write_md

__all__ = ["run", "transition", "recovery", "FULL", "QUICK", "TOL", "RECOVERED"]

FULL = dict(
    n_samples=100,
    n_features=1000,
    sparsity=5,
    seeds=(0, 1, 2),
    depths=(2, 3, 4),
    alphas=(1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0),
    rec_samples=(10, 20, 30, 40, 50, 60, 80, 100),
    rec_alphas=(0.01, 0.1),
    rec_seeds=(0, 1, 2),
)
QUICK = dict(
    n_samples=20,
    n_features=60,
    sparsity=2,
    seeds=(0,),
    depths=(2, 3),
    alphas=(1e-2, 0.1, 1.0, 10.0),
    rec_samples=(6, 12, 20),
    rec_alphas=(0.1,),
    rec_seeds=(0, 1),
)

#: The flow stops at this train loss (``fit(tol=...)``). Below about 1e-11 the loss of a
#: small-alpha flow decays very slowly (the last residual directions are served by the
#: off-support coordinates, of size ~alpha^N, which barely move) while w no longer changes
#: visibly: the "vs limit" column measures what stopping here leaves.
TOL = 1e-10
#: Gradient evaluations one flow may spend (``fit(max_steps=...)``).
BUDGET = 1_000_000
#: A fit recovers ``w*`` when its test error ``||w - w*||^2 / ||w*||^2`` is at most this.
RECOVERED = 1e-2
FLOW_OPTIONS = {"rtol": 1e-8, "atol": 1e-12}
#: The figure draws test errors below this (exact recovery) at this value.
FLOOR = 1e-14


def flow_limit(problem, depth, alpha):
    """``(result, seconds)``: gradient flow from ``u = v = alpha`` run to :data:`TOL`."""
    t0 = time.perf_counter()
    res = fit(
        problem,
        depth=depth,
        init_scale=alpha,
        optimizer="flow",
        max_time=1e12,
        tol=TOL,
        max_steps=BUDGET,
        record=None,
        optimizer_options=FLOW_OPTIONS,
        seed=0,
        progress=False,
    )
    return res, time.perf_counter() - t0


def _error(w, truth) -> float:
    return float(np.sum((w - truth) ** 2) / np.sum(truth**2))


def _norms(w, truth) -> dict:
    return {
        "test_error": _error(w, truth),
        "l1": float(np.abs(w).sum()),
        "l2": float(np.linalg.norm(w)),
    }


def transition(cfg, progress=False) -> list[dict]:
    """Rows of the transition experiment: one per (method, depth, alpha, seed); the
    references (``method`` "basis_pursuit", "min_l2") one per seed."""
    tell = say(progress)
    rows = []
    for seed in cfg["seeds"]:
        problem = synthetic_sparse_regression(
            cfg["n_samples"], cfg["n_features"], cfg["sparsity"], seed=seed
        )
        truth = problem.ground_truth
        for name, solve in (("basis_pursuit", basis_pursuit), ("min_l2", min_norm_interpolant)):
            w = solve(problem).settings["coef"]
            rows.append(
                {
                    "method": name,
                    "depth": None,
                    "alpha": None,
                    "seed": seed,
                    **_norms(w, truth),
                    "support": None,
                    "limit_gap": None,
                    "status": "converged",
                    "n_evals": None,
                    "seconds": None,
                }
            )
        for depth in cfg["depths"]:
            for alpha in cfg["alphas"]:
                res, secs = flow_limit(problem, depth, alpha)
                w = res.coef
                limit = diagonal_limit(problem, alpha, depth).settings["coef"]
                gap = float(np.linalg.norm(w - limit) / np.linalg.norm(limit))
                rows.append(
                    {
                        "method": "flow",
                        "depth": depth,
                        "alpha": alpha,
                        "seed": seed,
                        **_norms(w, truth),
                        "support": int(res.trajectory.support[-1]),
                        "limit_gap": gap,
                        "status": res.status,
                        "n_evals": int(res.trajectory.n_evals[-1]),
                        "seconds": round(secs, 3),
                    }
                )
                tell(
                    f"  seed {seed} depth {depth} alpha {alpha:g}: test error "
                    f"{rows[-1]['test_error']:.3g}, l1 {rows[-1]['l1']:.4g}, "
                    f"vs limit {gap:.1e} ({res.status}, {secs:.1f} s)"
                )
    return rows


def recovery(cfg, progress=False) -> list[dict]:
    """Rows of the recovery experiment: one per (method, depth, alpha, n, seed); the
    references have no depth and no alpha."""
    tell = say(progress)
    rows = []
    for n in cfg["rec_samples"]:
        for seed in cfg["rec_seeds"]:
            problem = synthetic_sparse_regression(
                n, cfg["n_features"], cfg["sparsity"], seed=1000 + seed
            )
            truth = problem.ground_truth
            fits = [
                ("basis_pursuit", None, None, basis_pursuit(problem).settings["coef"], None),
                ("min_l2", None, None, min_norm_interpolant(problem).settings["coef"], None),
            ]
            for alpha in cfg["rec_alphas"]:
                for depth in cfg["depths"]:
                    res, _ = flow_limit(problem, depth, alpha)
                    fits.append(("flow", depth, alpha, res.coef, res.status))
            for method, depth, alpha, w, status in fits:
                err = _error(w, truth)
                rows.append(
                    {
                        "method": method,
                        "depth": depth,
                        "alpha": alpha,
                        "n_samples": n,
                        "seed": seed,
                        "test_error": err,
                        "recovered": int(err <= RECOVERED),
                        "status": status,
                    }
                )
        at_n = [r for r in rows if r["n_samples"] == n]
        labels = dict.fromkeys(_label(r) for r in at_n)
        tell(
            f"  n = {n}: recovered "
            + ", ".join(
                f"{lab} {sum(r['recovered'] for r in at_n if _label(r) == lab)}/"
                f"{len(cfg['rec_seeds'])}"
                for lab in labels
            )
        )
    return rows


def _label(row) -> str:
    if row["method"] == "flow":
        return f"depth {row['depth']} alpha {row['alpha']:g}"
    return row["method"]


def run(out, quick: bool = False, progress: bool = True) -> dict:
    """Run both experiments and write their tables (and figures) into ``out``; returns
    ``{"transition": rows, "recovery": rows, "setting": cfg, "seconds": wall time}``."""
    cfg = QUICK if quick else FULL
    out = ensure_dir(out)
    tell = say(progress)
    t0 = time.perf_counter()
    tell(
        f"diagonal: n = {cfg['n_samples']}, d = {cfg['n_features']}, "
        f"{cfg['sparsity']}-sparse, depths {list(cfg['depths'])}, seeds "
        f"{list(cfg['seeds'])}"
    )
    trans = transition(cfg, progress)
    tell(f"recovery at alpha in {list(cfg['rec_alphas'])}, n in {list(cfg['rec_samples'])}")
    rec = recovery(cfg, progress)
    seconds = time.perf_counter() - t0
    write_csv(os.path.join(out, "transition.csv"), trans)
    write_csv(os.path.join(out, "recovery.csv"), rec)
    write_md(os.path.join(out, "diagonal.md"), report(cfg, trans, rec, seconds))
    _figures(out, cfg, trans, rec)
    tell(f"wrote {out}/diagonal.md ({seconds:.0f} s)")
    return {"transition": trans, "recovery": rec, "setting": cfg, "seconds": seconds}


def _mean(rows, key) -> tuple[float, float]:
    return mean_std([r[key] for r in rows])


def transition_summary(cfg, rows) -> dict:
    """``{(depth, alpha): {key: mean over seeds}}`` of the flow rows, and ``{method: {key:
    mean}}`` of the references."""
    out = {}
    for depth in cfg["depths"]:
        for alpha in cfg["alphas"]:
            sel = [
                r
                for r in rows
                if r["method"] == "flow" and r["depth"] == depth and r["alpha"] == alpha
            ]
            out[depth, alpha] = {
                k: _mean(sel, k)[0] for k in ("test_error", "l1", "l2", "support", "limit_gap")
            }
            out[depth, alpha]["converged"] = sum(r["status"] == "converged" for r in sel)
    for name in ("basis_pursuit", "min_l2"):
        sel = [r for r in rows if r["method"] == name]
        out[name] = {k: _mean(sel, k)[0] for k in ("test_error", "l1", "l2")}
    return out


def report(cfg, trans, rec, seconds) -> list[str]:
    """The markdown report (lines)."""
    summ = transition_summary(cfg, trans)
    seeds = len(cfg["seeds"])
    lines = [
        "# Deep diagonal networks: the kernel-to-rich transition",
        "",
        f"Noiseless sparse regression, n = {cfg['n_samples']} samples, d = "
        f"{cfg['n_features']} features, {cfg['sparsity']}-sparse w* (entries +-1), Gaussian "
        f'X; gradient flow (`fit(optimizer="flow")`, rtol {FLOW_OPTIONS["rtol"]:g}) from '
        f"u = v = alpha to train loss {TOL:g}. Means over {seeds} seed(s). Test error = "
        "||w - w*||^2 / ||w*||^2; 'vs limit' = ||w - w_alpha|| / ||w_alpha|| with w_alpha "
        "= `fastdmf.theory.diagonal_limit` (the exact limit, computed independently). "
        f"Wall time {seconds:.0f} s.",
        "",
        "References: basis pursuit (min ||w||_1) test error "
        f"{summ['basis_pursuit']['test_error']:.3g}, ||w||_1 {summ['basis_pursuit']['l1']:.4g}"
        f", ||w||_2 {summ['basis_pursuit']['l2']:.4g}; minimum-l2 interpolant test error "
        f"{summ['min_l2']['test_error']:.3g}, ||w||_1 {summ['min_l2']['l1']:.4g}, ||w||_2 "
        f"{summ['min_l2']['l2']:.4g}.",
    ]
    for depth in cfg["depths"]:
        body = []
        for alpha in cfg["alphas"]:
            s = summ[depth, alpha]
            body.append(
                [
                    f"{alpha:g}",
                    f"{s['test_error']:.3g}",
                    f"{s['l1']:.4g}",
                    f"{s['l2']:.4g}",
                    f"{s['support']:.3g}",
                    f"{s['limit_gap']:.1e}",
                    f"{s['converged']}/{seeds}",
                ]
            )
        lines += ["", f"## Depth {depth}", ""]
        lines += markdown_table(
            ["alpha", "test error", "‖w‖₁", "‖w‖₂", "support", "vs limit", "converged"], body
        )
    lines += [
        "",
        "## Recovery rate against n",
        "",
        f"Fraction of {len(cfg['rec_seeds'])} seeds (problems drawn afresh, seeds "
        f"1000+) with test error <= {RECOVERED:g}.",
        "",
    ]
    methods = _rec_methods(cfg)
    header = ["n"] + [_rec_label(m, d, a) for m, d, a in methods]
    body = []
    for n in cfg["rec_samples"]:
        body.append([str(n)] + [f"{_rate(rec, n, *key):.2f}" for key in methods])
    lines += markdown_table(header, body)
    return lines


def _rec_methods(cfg) -> list[tuple]:
    return [("flow", d, a) for a in cfg["rec_alphas"] for d in cfg["depths"]] + [
        ("basis_pursuit", None, None),
        ("min_l2", None, None),
    ]


def _rec_label(method, depth, alpha) -> str:
    return f"depth {depth}, α = {alpha:g}" if method == "flow" else method


def _rate(rec, n, method, depth, alpha) -> float:
    return float(
        np.mean(
            [
                r["recovered"]
                for r in rec
                if r["n_samples"] == n
                and r["method"] == method
                and r["depth"] == depth
                and r["alpha"] == alpha
            ]
        )
    )


def _figures(out, cfg, trans, rec) -> None:
    plt = pyplot()
    if plt is None:
        return
    summ = transition_summary(cfg, trans)
    alphas = np.asarray(cfg["alphas"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(
        axes, ("test_error", "l1", "l2"), ("test error", "‖w‖₁", "‖w‖₂"), strict=True
    ):
        for depth in cfg["depths"]:
            ax.plot(
                alphas,
                [max(summ[depth, a][key], FLOOR) for a in alphas],
                "o-",
                label=f"depth {depth}",
            )
        ax.axhline(
            max(summ["basis_pursuit"][key], FLOOR), color="k", ls="--", lw=1, label="basis pursuit"
        )
        ax.axhline(summ["min_l2"][key], color="gray", ls=":", lw=1, label="min ℓ2")
        ax.set_xscale("log")
        if key == "test_error":  # exact recovery (1e-30) drawn at the floor
            ax.set_yscale("log")
            ax.set_ylim(FLOOR / 3, 3)
        ax.set_xlabel("init scale α")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "transition.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = cfg["rec_samples"]
    for key in _rec_methods(cfg):
        ax.plot(
            ns,
            [_rate(rec, n, *key) for n in ns],
            "o-" if key[0] == "flow" else "--",
            label=_rec_label(*key),
        )
    ax.set_xlabel("samples n")
    ax.set_ylabel("recovery rate")
    ax.set_title(f"d = {cfg['n_features']}, {cfg['sparsity']}-sparse")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "recovery.png"), dpi=120)
    plt.close(fig)
