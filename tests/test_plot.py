"""Figures: what Trajectory.plot and the experiments' PNGs draw is the recorded data.

Drawn on matplotlib's Agg backend (no display). The experiments close their figures after
saving, so ``savefig`` is wrapped to keep each figure for inspection.
"""

import sys
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf.experiments import dynamics, paper_tables  # noqa: E402
from fastdmf.experiments import theory as theory_experiment  # noqa: E402


@pytest.fixture
def saved(monkeypatch):
    """The figures saved while the test runs, in order (each is still written to disk)."""
    figures = []
    real = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    yield figures
    for fig in figures:
        plt.close(fig)


def _data(line):
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


def test_trajectory_plot_draws_the_recorded_singular_values(square):
    res = fastdmf.fit(square, depth=3, max_steps=40, record=10, seed=0, lr=1e-2)
    traj = res.trajectory
    sv = traj.singular_values
    # singular values of the product, computed here from the final factors
    w = res.factors[2] @ res.factors[1] @ res.factors[0]
    np.testing.assert_allclose(sv[-1][:4], np.linalg.svd(w, compute_uv=False)[:4], rtol=1e-10)
    ax = traj.plot(k=4)
    try:
        assert len(ax.lines) == 4
        for i, line in enumerate(ax.lines):
            x, y = _data(line)
            np.testing.assert_array_equal(x, [0, 10, 20, 30, 40])
            np.testing.assert_array_equal(y, sv[:, i])
        assert ax.get_xlabel() == "step" and ax.get_title() == "top 4 singular values, depth 3"
    finally:
        plt.close(ax.figure)


def test_trajectory_plot_on_a_given_axis_against_flow_time(square):
    res = fastdmf.fit(
        square,
        depth=2,
        optimizer="flow",
        max_time=2.0,
        record=[0.5, 1.0, 2.0],
        seed=0,
        init_scale=0.3,
    )
    traj = res.trajectory
    n_sv = traj.singular_values.shape[1]
    fig, axes = plt.subplots(1, 2)
    try:
        got = traj.plot(ax=axes[1], k=n_sv + 5, x="time")
        assert got is axes[1] and not axes[0].lines
        assert len(got.lines) == n_sv  # k beyond what was recorded draws what there is
        for i, line in enumerate(got.lines):
            x, y = _data(line)
            np.testing.assert_allclose(x, [0.0, 0.5, 1.0, 2.0], rtol=1e-12)
            np.testing.assert_array_equal(y, traj.singular_values[:, i])
        assert got.get_xlabel() == "time"
    finally:
        plt.close(fig)


def test_dynamics_figure_draws_each_depths_singular_values(tmp_path, saved):
    cfg = dict(
        size=12, rank=2, n_observed=60, init_scale=1e-2, lr=0.5, max_steps=60, record=20, top_k=3
    )
    res = dynamics.reproduce_dynamics(tmp_path, depths=(1, 2), config=cfg, progress=False)
    assert (tmp_path / "dynamics.png").stat().st_size > 1000
    (fig,) = saved
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["depth 1", "depth 2"]
    for ax, depth in zip(axes, (1, 2), strict=True):
        r = res[depth]
        assert len(ax.lines) == 3
        for i, line in enumerate(ax.lines):
            x, y = _data(line)
            np.testing.assert_array_equal(x, [0, 20, 40, 60])
            np.testing.assert_array_equal(y, r["singular_values"][:, i])


def test_razin_cohen_figure_draws_the_table(tmp_path, saved):
    rows = dynamics.reproduce_razin_cohen(tmp_path, config={"tol": 0.1}, progress=False)
    assert (tmp_path / "razin_cohen.png").stat().st_size > 1000
    (fig,) = saved
    loss_ax, norm_ax, rank_ax = fig.axes
    steps = [max(r["step"], 1) for r in rows]  # step 0 drawn at 1 on the log axis

    def col(key, f=float):
        return [f(r[key]) for r in rows]

    for ax, want in (
        (loss_ax, [col("train_loss")]),
        (norm_ax, [col("unobserved", abs), col("frobenius"), col("nuclear")]),
        (rank_ax, [col("sigma_min"), col("sigma_ratio")]),
    ):
        assert len(ax.lines) == len(want)
        for line, ys in zip(ax.lines, want, strict=True):
            x, y = _data(line)
            np.testing.assert_array_equal(x, steps)
            np.testing.assert_array_equal(y, ys)
    assert loss_ax.get_xscale() == loss_ax.get_yscale() == "log"
    assert norm_ax.get_yscale() == "linear"


def test_without_matplotlib_the_experiments_write_their_tables_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    rows = dynamics.reproduce_razin_cohen(tmp_path, config={"tol": 0.1}, progress=False)
    assert rows[-1]["train_loss"] <= 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["razin_cohen.csv", "razin_cohen.md"]


def test_init_scale_figure_draws_means_and_std_bars(tmp_path, saved):
    def summary(method, scale, lr, k):
        return {
            "method": method,
            "init_scale": scale,
            "lr": lr,
            "n_seeds": 2,
            **{f"{m}_mean": (j + 1) * k for j, m in enumerate(paper_tables._METRICS)},
            **{f"{m}_std": 0.1 * k for m in paper_tables._METRICS},
        }

    cell = [
        summary("depth2", 1e-3, 1e-2, 1.0),
        summary("depth2", 1e-2, 1e-2, 2.0),
        summary("depth3", 1e-2, 1e-2, 3.0),
        summary("depth3", 1e-3, 1e-2, 4.0),
        summary("nuclear", None, None, 5.0),
    ]
    paper_tables.init_scale_figure(str(tmp_path), "completion", 60, cell)
    assert (tmp_path / "init_scale_completion_60.png").stat().st_size > 1000
    (fig,) = saved
    assert fig._suptitle.get_text() == "completion, 60 observations"
    for j, ax in enumerate(fig.axes[:3]):
        # depth2 then depth3, points in increasing init scale; bars at mean -+ std
        bars = ax.containers
        assert len(bars) == 2
        for container, ks in zip(bars, ([1.0, 2.0], [4.0, 3.0]), strict=True):
            x, y = _data(container.lines[0])
            np.testing.assert_array_equal(x, [1e-3, 1e-2])
            np.testing.assert_allclose(y, [(j + 1) * k for k in ks], rtol=1e-15)
            segs = container.lines[2][0].get_segments()
            np.testing.assert_allclose(
                [s[:, 1] for s in segs],
                [[(j + 1) * k - 0.1 * k, (j + 1) * k + 0.1 * k] for k in ks],
                rtol=1e-12,
            )
        # the nuclear-norm minimiser: one horizontal line at its value
        (hline,) = [ln for ln in ax.lines if ln.get_label() == "nuclear norm min."]
        np.testing.assert_array_equal(hline.get_ydata(), [(j + 1) * 5.0] * 2)
        assert ax.get_xscale() == "log"
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"


def test_theory_figure_draws_the_flow_and_the_distances(tmp_path, saved):
    rng = np.random.default_rng(0)
    times = np.array([0.0, 1.0, 2.0])
    e2e_w = [rng.standard_normal((7, 7)) for _ in times]
    rows = [
        {
            "time": t,
            "sigma_1": 1.0,
            "factorized_vs_e2e": 1e-9 * (k + 1),
            "gd_vs_e2e": 1e-3 * (k + 1),
            "sv_rate_gap": 0.0,
        }
        for k, t in enumerate(times)
    ]
    cfg = dict(size=7, rank=2, n_observed=20, depth=3, init_scale=1e-2, gd_lr=1e-3)
    flow = types.SimpleNamespace(trajectory=types.SimpleNamespace(n_evals=[42]))
    theory_experiment._write(str(tmp_path), rows, cfg, flow, 17, times, e2e_w)
    assert (tmp_path / "theory.png").stat().st_size > 1000
    (fig,) = saved
    sv_ax, dist_ax = fig.axes
    assert len(sv_ax.lines) == 6  # the top six of seven singular values
    for i, line in enumerate(sv_ax.lines):
        x, y = _data(line)
        np.testing.assert_array_equal(x, times)
        np.testing.assert_allclose(
            y, [np.linalg.svd(w, compute_uv=False)[i] for w in e2e_w], rtol=1e-12
        )
    factorized, gd = dist_ax.lines  # t = 0 is left out: both distances are 0 there
    np.testing.assert_array_equal(_data(factorized)[0], [1.0, 2.0])
    np.testing.assert_array_equal(_data(factorized)[1], [r["factorized_vs_e2e"] for r in rows[1:]])
    np.testing.assert_array_equal(_data(gd)[1], [r["gd_vs_e2e"] for r in rows[1:]])
    assert dist_ax.get_yscale() == "log"
