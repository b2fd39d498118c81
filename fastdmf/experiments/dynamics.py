"""Singular-value dynamics: the paper's Figure 3 and the 2 x 2 example of Razin & Cohen.

``reproduce_dynamics``
    Plain gradient descent from an identity init on the paper's completion problem, depths
    1, 2, 3: the top singular values of W against the step. Deeper factorizations hold the
    small singular values near zero and move the large ones one after another (Arora et al.
    2019, section 3 and Figure 3). The stagger is tabulated as the step at which each of the
    top five singular values first reaches half its final value.
``reproduce_razin_cohen``
    Completion of [[?, 1], [1, 0]] by a depth-3 factorization (Razin & Cohen, NeurIPS 2020,
    section 3): as the loss falls, the unobserved entry grows without bound, and with it
    every norm of W, while the distance to rank 1 (the smallest singular value) falls - an
    implicit bias no norm explains.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ..api import fit
from ..factors import end_to_end
from ..problem import completion, synthetic_completion
from . import _report

__all__ = ["reproduce_dynamics", "reproduce_razin_cohen", "half_rise_steps"]

QUICK_DYNAMICS = dict(
    size=100,
    rank=5,
    n_observed=2000,
    depths=(1, 2, 3),
    init_scale=1e-3,
    lr=0.01,
    max_steps=200_000,
    record=1000,
    top_k=10,
)
FULL_DYNAMICS = dict(QUICK_DYNAMICS, max_steps=400_000, record=500)

QUICK_RC = dict(tol=1e-3, max_steps=2_000_000, std=8e-3, lr=3e-3, seed=0, records=50)
FULL_RC = dict(QUICK_RC, tol=1e-4, max_steps=20_000_000, records=80)


def half_rise_steps(steps, values, k: int = 5) -> list[float]:
    """For each of the top ``k`` columns of ``values`` (records x singular values), the step
    at which it first reaches half its final value, linearly interpolated between records
    (NaN if it never does, or if its final value is not positive).

    Example
    -------
    >>> half_rise_steps([0, 10, 20], [[0.0], [1.0], [6.0]], k=1)
    [14.0]
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    out = []
    for i in range(min(k, values.shape[1])):
        col = values[:, i]
        half = 0.5 * col[-1]
        hit = np.flatnonzero(col >= half)
        if col[-1] <= 0 or hit.size == 0:
            out.append(float("nan"))
            continue
        j = int(hit[0])
        if j == 0:
            out.append(float(steps[0]))
            continue
        frac = (half - col[j - 1]) / (col[j] - col[j - 1])
        out.append(float(steps[j - 1] + frac * (steps[j] - steps[j - 1])))
    return out


def reproduce_dynamics(
    out="fastdmf-dynamics",
    full: bool = False,
    depths=None,
    seed: int = 0,
    config: dict | None = None,
    progress: bool = True,
) -> dict:
    """Figure 3: top-10 singular values of W against the step, plain GD (lr 0.01) from an
    identity init (scale 1e-3), depths 1, 2, 3, on the paper's completion problem (100 x 100,
    rank 5, 2000 observed entries).

    Writes ``dynamics.csv`` (step, depth, train loss, singular values), ``stagger.csv`` and
    ``dynamics.md`` (the step at which each of the top five singular values reaches half its
    final value, per depth) and ``dynamics.png`` into ``out``. Quick: 200,000 steps (depth 3
    moves its singular values between about 80,000 and 160,000); full: 400,000.

    Returns
    -------
    dict: depth -> {"step", "train_loss", "singular_values", "half_rise", "status"}.

    Example
    -------
    >>> cfg = dict(size=20, rank=2, n_observed=150, init_scale=1e-2, lr=0.5, max_steps=200,
    ...            record=50, top_k=4)
    >>> res = reproduce_dynamics("/tmp/fastdmf-doc-dyn", depths=(2,), config=cfg,
    ...                          progress=False)
    >>> res[2]["step"].tolist()
    [0, 50, 100, 150, 200]
    """
    cfg = {**(FULL_DYNAMICS if full else QUICK_DYNAMICS), **(config or {})}
    depths = tuple(depths or cfg["depths"])
    say = _report.say(progress)
    # the paper's completion problem (experiments.paper.make_problem("completion", ...))
    problem = synthetic_completion(
        shape=(cfg["size"], cfg["size"]), rank=cfg["rank"], n_observed=cfg["n_observed"], seed=seed
    )
    say(
        f"dynamics: {problem}, plain GD lr {cfg['lr']:g}, identity init {cfg['init_scale']:g}, "
        f"{cfg['max_steps']:,} steps"
    )
    results, rows, table = {}, [], []
    for depth in depths:
        t0 = time.perf_counter()
        res = fit(
            problem,
            depth,
            init="identity",
            init_scale=cfg["init_scale"],
            optimizer="gd",
            lr=cfg["lr"],
            max_steps=cfg["max_steps"],
            tol=0,
            record=cfg["record"],
            top_k=cfg["top_k"],
            seed=seed,
        )
        traj = res.trajectory
        half = half_rise_steps(traj.step, traj.singular_values, 5)
        say(
            f"  depth {depth}: {res.n_steps:,} steps in {time.perf_counter() - t0:.1f} s, "
            f"train loss {res.train_loss:.2e}, half-rise steps "
            + ", ".join(f"{h:,.0f}" for h in half)
        )
        results[depth] = {
            "step": traj.step,
            "train_loss": traj.train_loss,
            "singular_values": traj.singular_values,
            "half_rise": half,
            "status": res.status,
        }
        for k in range(len(traj)):
            rows.append(
                {
                    "depth": depth,
                    "step": int(traj.step[k]),
                    "train_loss": float(traj.train_loss[k]),
                    **{f"sigma_{i + 1}": float(s) for i, s in enumerate(traj.singular_values[k])},
                }
            )
        final = traj.singular_values[-1]
        table.append(
            {
                "depth": depth,
                "train_loss": res.train_loss,
                **{f"half_rise_{i + 1}": h for i, h in enumerate(half)},
                "sigma_6_over_sigma_5": float(final[5] / final[4])
                if final.size > 5
                else float("nan"),
            }
        )
    out = _report.ensure_dir(out)
    _report.write_csv(os.path.join(out, "dynamics.csv"), rows)
    _report.write_csv(os.path.join(out, "stagger.csv"), table)
    _report.write_md(os.path.join(out, "dynamics.md"), _dynamics_md(problem, cfg, table))
    _dynamics_figure(out, results)
    say(f"  tables and figure in {out}")
    return results


def _dynamics_md(problem, cfg, table):
    lines = [
        "# Singular values of W against the step (Figure 3)",
        "",
        f"{problem}; plain GD lr {cfg['lr']:g}, identity init of scale "
        f"{cfg['init_scale']:g}, {cfg['max_steps']:,} steps, a record every "
        f"{cfg['record']:,}.",
        "",
        "Step at which each of the top five singular values first reaches half its final "
        "value (interpolated between records); sigma_6 / sigma_5 at the end shows how far "
        "the rest stay below.",
        "",
    ]
    body = [
        [
            t["depth"],
            f"{t['train_loss']:.2e}",
            *(f"{t.get(f'half_rise_{i}', float('nan')):,.0f}" for i in range(1, 6)),
            f"{t['sigma_6_over_sigma_5']:.2e}",
        ]
        for t in table
    ]
    return lines + _report.markdown_table(
        ["depth", "final loss", *(f"sigma_{i}" for i in range(1, 6)), "sigma_6/sigma_5"], body
    )


def _dynamics_figure(out, results):
    plt = _report.pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.8), squeeze=False)
    for ax, (depth, r) in zip(axes[0], results.items(), strict=True):
        ax.plot(r["step"], r["singular_values"])
        ax.set(xlabel="step", ylabel="singular values of W", title=f"depth {depth}")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dynamics.png"), dpi=100)
    plt.close(fig)


def reproduce_razin_cohen(
    out="fastdmf-razin-cohen", full: bool = False, config: dict | None = None, progress: bool = True
) -> list[dict]:
    """Razin & Cohen (2020): complete [[?, 1], [1, 0]] with a depth-3 factorization.

    Each 2 x 2 factor starts i.i.d. N(0, 0.008^2); plain GD with lr 3e-3 runs until the train
    loss reaches 1e-3 (quick) or 1e-4 (full, as in the paper, a few million steps). Writes
    ``razin_cohen.csv``, ``razin_cohen.md`` and ``razin_cohen.png`` into ``out``.

    Returns
    -------
    list of dict, one per record (log-spaced steps): step, train loss, the unobserved entry
    W[0, 0], Frobenius and nuclear norms, the smallest singular value (the distance to the
    nearest rank-1 matrix, in spectral and Frobenius norm) and its ratio to the largest.

    Example
    -------
    >>> rows = reproduce_razin_cohen("/tmp/fastdmf-doc-rc", config={"tol": 0.1},
    ...                              progress=False)
    >>> rows[-1]["train_loss"] <= 0.1
    True
    """
    cfg = {**(FULL_RC if full else QUICK_RC), **(config or {})}
    say = _report.say(progress)
    problem = completion([0, 1, 1], [1, 0, 1], [1.0, 1.0, 0.0], shape=(2, 2))
    rng = np.random.default_rng(cfg["seed"])
    init = [rng.normal(0.0, cfg["std"], size=(2, 2)) for _ in range(3)]
    say(
        f"razin-cohen: [[?, 1], [1, 0]], depth 3, init N(0, {cfg['std']:g}^2), GD lr "
        f"{cfg['lr']:g}, until loss {cfg['tol']:g}"
    )
    mats = {0: end_to_end(init)}

    def keep(record):
        mats[int(record["step"])] = end_to_end(record["factors"])

    t0 = time.perf_counter()
    res = fit(
        problem,
        3,
        init=init,
        optimizer="gd",
        lr=cfg["lr"],
        tol=cfg["tol"],
        max_steps=cfg["max_steps"],
        record=("log", cfg["records"]),
        callback=keep,
        seed=cfg["seed"],
        validation=None,
        offsets=None,
    )  # the paper's plain fit
    mats[res.n_steps] = res.matrix()
    traj = res.trajectory
    rows = []
    for k in range(len(traj)):
        w = mats[int(traj.step[k])]
        sv = np.linalg.svd(w, compute_uv=False)
        rows.append(
            {
                "step": int(traj.step[k]),
                "train_loss": float(traj.train_loss[k]),
                "unobserved": float(w[0, 0]),
                "frobenius": float(np.linalg.norm(w)),
                "nuclear": float(sv.sum()),
                "sigma_min": float(sv[-1]),
                "sigma_ratio": float(sv[-1] / sv[0]),
            }
        )
    last = rows[-1]
    say(
        f"  {res.n_steps:,} steps in {time.perf_counter() - t0:.1f} s ({res.status}): "
        f"W[0,0] = {last['unobserved']:.2f}, sigma_min = {last['sigma_min']:.2e}"
    )
    out = _report.ensure_dir(out)
    _report.write_csv(os.path.join(out, "razin_cohen.csv"), rows)
    lines = [
        "# Razin & Cohen (2020): completing [[?, 1], [1, 0]] at depth 3",
        "",
        f"Init N(0, {cfg['std']:g}^2) per factor entry (seed {cfg['seed']}), plain GD lr "
        f"{cfg['lr']:g}, stop at train loss {cfg['tol']:g}: {res.status} after "
        f"{res.n_steps:,} steps. Published: |W[0,0]| about 60-70 at loss 1e-4 while the "
        "distance to rank 1 goes to 0.",
        "",
    ]
    body = [
        [
            f"{r['step']:,}",
            f"{r['train_loss']:.3e}",
            f"{r['unobserved']:.4g}",
            f"{r['frobenius']:.4g}",
            f"{r['nuclear']:.4g}",
            f"{r['sigma_min']:.3e}",
            f"{r['sigma_ratio']:.3e}",
        ]
        for r in rows
    ]
    lines += _report.markdown_table(
        [
            "step",
            "train loss",
            "W[0,0] (unobserved)",
            "Frobenius",
            "nuclear",
            "sigma_min",
            "sigma_min/sigma_max",
        ],
        body,
    )
    _report.write_md(os.path.join(out, "razin_cohen.md"), lines)
    _rc_figure(out, rows)
    return rows


def _rc_figure(out, rows):
    plt = _report.pyplot()
    if plt is None:
        return
    steps = np.array([max(r["step"], 1) for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].loglog(steps, [r["train_loss"] for r in rows])
    axes[0].set(xlabel="step", title="train loss")
    axes[1].semilogx(steps, [abs(r["unobserved"]) for r in rows], label="|W[0,0]|")
    axes[1].semilogx(steps, [r["frobenius"] for r in rows], label="Frobenius norm")
    axes[1].semilogx(steps, [r["nuclear"] for r in rows], label="nuclear norm")
    axes[1].set(xlabel="step", title="unobserved entry and norms")
    axes[1].legend()
    axes[2].loglog(steps, [r["sigma_min"] for r in rows], label="sigma_min")
    axes[2].loglog(steps, [r["sigma_ratio"] for r in rows], label="sigma_min / sigma_max")
    axes[2].set(xlabel="step", title="distance to rank 1")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "razin_cohen.png"), dpi=100)
    plt.close(fig)
