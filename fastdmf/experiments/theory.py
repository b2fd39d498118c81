"""``fastdmf reproduce theory``: factorized flow, end-to-end flow and small-step GD, side by side.

From a balanced initialisation, three computations of W(t) on one completion problem:

- the factorized gradient flow, ``fit(optimizer="flow_dopri5")`` (rtol 1e-10);
- the end-to-end flow of Arora, Cohen & Hazan (2018) on W alone,
  :func:`fastdmf.theory.integrate_end_to_end` ("depth without factors");
- plain gradient descent with a small step (forward Euler on the factorized flow).

At each record time the table gives ||W_x - W_e2e||_F / ||W_e2e||_F for the other two, and the
largest relative gap between the singular-value rates predicted by Arora et al. (2019,
Theorem 3) at the factorized flow's state and those measured by finite differences of its
recorded singular values (over singular values above 1% of the largest).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from .. import theory
from ..api import fit
from ..factors import FactorLayout, end_to_end, initialize
from ..problem import synthetic_completion

QUICK = dict(
    size=20, rank=2, n_observed=160, depth=3, init_scale=1e-2, t_max=300.0, n_records=25, gd_lr=5e-3
)
FULL = dict(
    size=100,
    rank=5,
    n_observed=2000,
    depth=3,
    init_scale=1e-2,
    t_max=2000.0,
    n_records=40,
    gd_lr=2e-2,
)


def run(out_dir: str, full: bool = False, seed: int = 0, progress: bool = True) -> list[dict]:
    """Run the comparison, write ``theory.csv``, ``theory.md`` (and ``theory.png`` with
    matplotlib) into ``out_dir``; return the table rows."""
    cfg = FULL if full else QUICK
    say = print if progress else (lambda *a, **k: None)
    m = n = cfg["size"]
    problem = synthetic_completion(
        shape=(m, n), rank=cfg["rank"], n_observed=cfg["n_observed"], seed=seed
    )
    depth = cfg["depth"]
    layout = FactorLayout.build((m, n), depth)
    init = initialize(layout, "balanced", cfg["init_scale"], np.random.default_rng(seed))
    times = np.linspace(0.0, cfg["t_max"], cfg["n_records"] + 1)
    say(
        f"theory: {m}x{n} rank {cfg['rank']}, {cfg['n_observed']} observed, depth {depth}, "
        f"balanced init {cfg['init_scale']:g}, t in [0, {cfg['t_max']:g}]"
    )
    dt = 1e-4 * cfg["t_max"]
    probe = np.unique(np.concatenate([times, times[1:] - dt, times + dt, [2 * dt]]))
    say("  factorized flow (Dormand-Prince, rtol 1e-10) ...")
    flow, flow_w = _run_collect(
        problem,
        depth,
        init,
        probe,
        optimizer="flow_dopri5",
        lr=1e-3,
        max_time=probe[-1],
        record=probe,
        tol=0,
        optimizer_options={"rtol": 1e-10, "atol": 1e-14},
    )
    say("  end-to-end flow (DOP853, rtol 1e-10) ...")
    e2e_w, nfev = theory.integrate_end_to_end(
        problem, end_to_end(init), depth, times, rtol=1e-10, atol=1e-14
    )
    say(f"  gradient descent, step {cfg['gd_lr']:g} ...")
    steps = np.round(times / cfg["gd_lr"]).astype(np.int64)
    _, gd_w = _run_collect(
        problem,
        depth,
        init,
        steps,
        optimizer="gd",
        lr=cfg["gd_lr"],
        max_steps=int(steps[-1]),
        record=steps,
        tol=0,
    )
    rates_gap = [_rate_gap(problem, depth, flow_w, probe, t, dt) for t in times]
    rows = []
    for k, t in enumerate(times):
        ref = np.linalg.norm(e2e_w[k])
        rows.append(
            {
                "time": float(t),
                "sigma_1": float(np.linalg.svd(e2e_w[k], compute_uv=False)[0]),
                "factorized_vs_e2e": float(np.linalg.norm(flow_w[_at(probe, t)] - e2e_w[k]) / ref),
                "gd_vs_e2e": float(np.linalg.norm(gd_w[k] - e2e_w[k]) / ref),
                "sv_rate_gap": rates_gap[k],
            }
        )
    _write(out_dir, rows, cfg, flow, nfev, times, e2e_w)
    worst = max(r["factorized_vs_e2e"] for r in rows)
    say(f"  max ||W_factorized - W_e2e|| / ||W_e2e|| = {worst:.2e}; tables in {out_dir}")
    return rows


def _run_collect(problem, depth, init, positions, **kw):
    """One fit; W at each record position (the record at 0 is the initial product)."""
    mats = [end_to_end(init)]

    def keep(record):
        mats.append(end_to_end(record["factors"]))

    res = fit(problem, depth, init=init, callback=keep, **kw)
    if len(mats) != len(positions):
        raise RuntimeError(f"expected {len(positions)} records, got {len(mats)}")
    return res, mats


def _at(positions, t):
    return int(np.argmin(np.abs(positions - t)))


def _rate_gap(problem, depth, mats, probe, t, dt):
    """Largest gap between predicted and measured d sigma/dt at time t (central differences
    of the factorized flow's singular values at t -+ dt; one-sided at t = 0), relative to the
    largest predicted rate, over singular values above 1% of the largest."""
    idx = (
        [_at(probe, t - dt), _at(probe, t), _at(probe, t + dt)]
        if t > 0
        else [_at(probe, 0.0), _at(probe, dt), _at(probe, 2 * dt)]
    )
    svs = np.array([np.linalg.svd(mats[i], compute_uv=False) for i in idx])
    measured = theory.measured_singular_value_rates(probe[idx], svs)[1 if t > 0 else 0]
    w = mats[idx[1] if t > 0 else idx[0]]
    sigma, predicted = theory.singular_value_rates(w, theory.completion_grad(w, problem), depth)
    big = sigma > 1e-2 * sigma[0]
    return float(np.max(np.abs(measured[big] - predicted[big])) / np.abs(predicted[big]).max())


def _write(out_dir, rows, cfg, flow, nfev, times, e2e_w):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "theory.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Factorized flow vs end-to-end flow vs gradient descent",
        "",
        f"Problem {cfg['size']}x{cfg['size']}, rank {cfg['rank']}, {cfg['n_observed']} observed; "
        f"depth {cfg['depth']}, balanced init of scale {cfg['init_scale']:g}. Factorized flow: "
        f"{int(flow.trajectory.n_evals[-1])} gradient evaluations (Dormand-Prince, rtol 1e-10); "
        "end-to-end "
        f"flow: {nfev} field evaluations (DOP853, rtol 1e-10); GD step {cfg['gd_lr']:g}.",
        "",
        "| t | sigma_1 | factorized vs e2e | GD vs e2e | sv-rate gap |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['time']:.4g} | {r['sigma_1']:.4g} | {r['factorized_vs_e2e']:.2e} | "
        f"{r['gd_vs_e2e']:.2e} | {r['sv_rate_gap']:.2e} |"
        for r in rows
    ]
    with open(os.path.join(out_dir, "theory.md"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    svs = np.array([np.linalg.svd(w, compute_uv=False)[:6] for w in e2e_w])
    ax[0].plot(times, svs)
    ax[0].set(xlabel="t", ylabel="singular values of W (end-to-end flow)")
    ax[1].semilogy(times[1:], [r["factorized_vs_e2e"] for r in rows[1:]], label="factorized")
    ax[1].semilogy(times[1:], [r["gd_vs_e2e"] for r in rows[1:]], label="GD")
    ax[1].set(xlabel="t", ylabel="relative distance to end-to-end W(t)")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "theory.png"), dpi=100)
    plt.close(fig)
