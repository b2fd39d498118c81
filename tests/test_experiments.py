"""fastdmf reproduce theory: factorized flow = end-to-end flow, and the singular-value
dynamics of Arora et al. (2019) hold along the trajectory."""

import csv

from fastdmf.cli import main


def test_reproduce_theory_quick(tmp_path, capsys):
    out = tmp_path / "theory"
    assert main(["reproduce", "theory", "--out", str(out)]) == 0
    with open(out / "theory.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 26
    assert max(float(r["factorized_vs_e2e"]) for r in rows) < 1e-6
    assert max(float(r["sv_rate_gap"]) for r in rows) < 1e-3
    # gradient descent with a finite step is visibly off the flow while W moves fast
    assert max(float(r["gd_vs_e2e"]) for r in rows) > 1e-4
    assert "factorized vs e2e" in (out / "theory.md").read_text()
    assert "max ||W_factorized - W_e2e||" in capsys.readouterr().out


# ---------------------------------------------------------------- the paper's experiments

import os  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf.experiments import paper  # noqa: E402
from fastdmf.experiments.dynamics import half_rise_steps  # noqa: E402

TINY = paper.Grid(
    kinds=("completion",),
    n_observed=(150,),
    methods=("depth1", "depth2", "depth3"),
    size=20,
    rank=2,
    init_scales=(1e-2, 1e-3),
    lrs=(1e-2,),
    seeds=(0, 1),
    max_steps=400,
)


def _direct(problem, grid, depth, trial):
    return fastdmf.fit(
        problem,
        depth,
        seed=trial["seed"],
        init_scale=trial["init_scale"],
        lr=trial["lr"],
        init=grid.init,
        optimizer=grid.optimizer,
        tol=grid.tol,
        max_steps=grid.max_steps,
        record=None,
        parallel=False,
    )


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    return out, paper.reproduce_table(out, grid=TINY, progress=False)


def test_reproduce_table_rows_are_the_direct_fits(tiny_table):
    out, res = tiny_table
    problem = paper.make_problem("completion", 150, size=20, rank=2, seed=TINY.problem_seed)
    rows = res["runs"]
    assert len(rows) == 3 * 2 * 2
    for row in rows:
        direct = _direct(problem, TINY, int(row["method"][-1]), row)
        traj = direct.trajectory
        assert row["steps"] == direct.n_steps and row["status"] == direct.status
        assert row["recon_error"] == traj.test_error[-1]
        assert row["nuclear_norm"] == traj.nuclear_norm[-1]
        assert row["effective_rank"] == traj.effective_rank[-1]
        # the trajectory's error is computed from the factors: check it against the dense W
        w = direct.matrix()
        truth = problem.ground_truth
        assert row["recon_error"] == pytest.approx(
            np.sum((w - truth) ** 2) / np.sum(truth**2), rel=1e-10
        )
        assert row["nuclear_norm"] == pytest.approx(
            np.linalg.svd(w, compute_uv=False).sum(), rel=1e-10
        )


def test_reproduce_table_summary_is_mean_and_std_over_seeds(tiny_table):
    out, res = tiny_table
    for s in res["summary"]:
        vals = [
            r["recon_error"]
            for r in res["runs"]
            if (r["method"], r["init_scale"], r["lr"]) == (s["method"], s["init_scale"], s["lr"])
        ]
        assert len(vals) == s["n_seeds"] == 2
        assert s["recon_error_mean"] == pytest.approx(np.mean(vals), rel=1e-12)
        assert s["recon_error_std"] == pytest.approx(np.std(vals), rel=1e-12, abs=1e-300)
    for name in ("runs.csv", "table.csv", "table.md"):
        assert (out / name).exists()
    md = (out / "table.md").read_text()
    assert "**Pending**: sensing was not run" in md
    assert "nuclear: pending" in md
    # the side-by-side cell shows the setting with the smallest mean error
    best = min(
        (s for s in res["summary"] if s["method"] == "depth2"), key=lambda s: s["recon_error_mean"]
    )
    assert f"| depth2 | {best['recon_error_mean']:.3g} ± " in md
    # read back from CSV: same rows
    again = paper._report.read_csv(out / "runs.csv")
    assert [r["recon_error"] for r in again] == [r["recon_error"] for r in res["runs"]]


def test_reproduce_table_cli_from_runs(tiny_table, tmp_path):
    out, res = tiny_table
    dest = tmp_path / "again"
    assert (
        main(
            [
                "reproduce",
                "table",
                "--runs",
                str(out / "runs.csv"),
                "--kinds",
                "completion",
                "--methods",
                "depth2,depth3",
                "--out",
                str(dest),
            ]
        )
        == 0
    )
    with open(dest / "table.csv") as fh:
        got = list(csv.DictReader(fh))
    want = [s for s in res["summary"] if s["method"] in ("depth2", "depth3")]
    assert [float(r["recon_error_mean"]) for r in got] == [s["recon_error_mean"] for s in want]


def test_reproduce_init_scale_files(tiny_table, tmp_path):
    out, res = tiny_table
    got = paper.reproduce_init_scale(tmp_path, grid=TINY, runs=out / "runs.csv", progress=False)
    assert sorted({s["init_scale"] for s in got["summary"]}) == [1e-3, 1e-2]
    assert "| depth3 | 0.01 | 0.01 | 2 |" in (tmp_path / "init_scale.md").read_text()
    assert (tmp_path / "init_scale_completion_150.png").stat().st_size > 1000


def test_unknown_method_and_kind_are_named():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['depth9'\]; choose from"):
        paper.run_grid(paper.Grid(methods=("depth9",)), progress=False)
    with pytest.raises(ValueError, match="unknown problem kind"):
        paper.make_problem("tensor", 10)


def test_half_rise_steps_interpolates():
    steps = [0, 10, 20, 30]
    values = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 1.0], [4.0, 8.0]])
    # column 0 reaches 2 between steps 10 and 20 (1 -> 3); column 1 reaches 4 between 20, 30
    assert half_rise_steps(steps, values, k=2) == [15.0, 20 + 10 * 3 / 7]
    assert np.isnan(half_rise_steps(steps, np.zeros((4, 1)), k=1)[0])


def test_reproduce_dynamics_records_are_the_direct_fit(tmp_path):
    cfg = dict(
        size=20, rank=2, n_observed=150, init_scale=1e-2, lr=0.5, max_steps=300, record=50, top_k=4
    )
    res = paper.reproduce_dynamics(tmp_path, depths=(2,), config=cfg, progress=False)
    problem = paper.make_problem("completion", 150, size=20, rank=2, seed=0)
    direct = fastdmf.fit(
        problem,
        2,
        init="identity",
        init_scale=1e-2,
        optimizer="gd",
        lr=0.5,
        max_steps=300,
        tol=0,
        record=50,
        top_k=4,
        seed=0,
    )
    np.testing.assert_array_equal(res[2]["singular_values"], direct.trajectory.singular_values)
    assert res[2]["half_rise"] == half_rise_steps(
        direct.trajectory.step, direct.trajectory.singular_values
    )
    assert (tmp_path / "stagger.csv").exists() and (tmp_path / "dynamics.md").exists()
    assert (tmp_path / "dynamics.png").stat().st_size > 1000


def test_razin_cohen_unobserved_entry_grows_while_rank_falls(tmp_path):
    """Razin & Cohen (2020): at loss 1e-3 the unobserved entry is already large (|W00| ~ 18;
    a rank-1 fit needs W11 = 1 / W00, so loss = W11^2 / 3 gives |W00| ~ sqrt(1/(3 loss)))
    while the smallest singular value is far below its starting value."""
    assert main(["reproduce", "razin-cohen", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "razin_cohen.csv") as fh:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    first, last = rows[0], rows[-1]
    assert last["train_loss"] <= 1e-3
    assert abs(last["unobserved"]) > 10
    assert abs(last["unobserved"]) == pytest.approx(np.sqrt(1 / (3 * last["train_loss"])), rel=0.05)
    assert last["frobenius"] > 10 and last["nuclear"] >= last["frobenius"]
    assert last["sigma_min"] < first["sigma_min"]
    assert last["sigma_ratio"] < 1e-8 < first["sigma_ratio"]
    assert os.path.exists(tmp_path / "razin_cohen.md")


def test_cli_names_an_unknown_method(capsys):
    assert main(["reproduce", "table", "--methods", "depth7", "--kinds", "completion"]) == 2
    assert "unknown method(s) ['depth7']; choose from" in capsys.readouterr().err


def test_matrix_metrics_agree_with_the_trajectory(tiny_table):
    """The dense metrics of a baseline's matrix are those a fit's trajectory records."""
    problem = paper.make_problem("completion", 150, size=20, rank=2, seed=0)
    res = _direct(problem, TINY, 3, {"seed": 0, "init_scale": 1e-2, "lr": 1e-2})
    got = paper.matrix_metrics(res.matrix(), problem)
    traj = res.trajectory
    assert got["train_loss"] == pytest.approx(traj.train_loss[-1], rel=1e-9)
    assert got["recon_error"] == pytest.approx(traj.test_error[-1], rel=1e-9)
    assert got["nuclear_norm"] == pytest.approx(traj.nuclear_norm[-1], rel=1e-9)
    assert got["effective_rank"] == pytest.approx(traj.effective_rank[-1], rel=1e-9)
    sensing = paper.make_problem("sensing", 30, size=5, rank=1, seed=0)
    exact = paper.matrix_metrics(sensing.ground_truth, sensing)
    assert exact["train_loss"] < 1e-28 and exact["recon_error"] == 0.0
    assert exact["effective_rank"] == pytest.approx(1.0)


TINY_FLOW = paper.Grid(
    kinds=("completion",),
    n_observed=(150,),
    methods=("depth2", "depth3"),
    size=20,
    rank=2,
    init_scales=(1e-2, 1e-3),
    lrs=(1e-3, 3e-4),
    seeds=(0, 1),
    optimizer="flow",
    max_time=1e6,
    max_steps=50_000,
    optimizer_options={"rtol": 1e-5},
)


def test_reproduce_table_by_the_flow_rows_are_the_direct_flow_fits(tmp_path):
    """--optimizer flow: each row is the serial flow fit of its trial, integrated to the
    grid's tol (the flow time is only an upper bound), with its gradient evaluations; one
    flow per (depth, init, seed) for both lrs, from the first lr as its first trial step."""
    res = paper.reproduce_table(tmp_path, grid=TINY_FLOW, progress=False)
    problem = paper.make_problem("completion", 150, size=20, rank=2, seed=0)
    assert len(res["runs"]) == 2 * 2 * 2  # depths x inits x seeds: no lr axis
    for row in res["runs"]:
        assert row["lr"] is None and row["first_step"] == 1e-3
        direct = fastdmf.fit(
            problem,
            int(row["method"][-1]),
            seed=row["seed"],
            init_scale=row["init_scale"],
            lr=1e-3,
            optimizer="flow",
            max_time=1e6,
            max_steps=50_000,
            optimizer_options={"rtol": 1e-5},
            record=None,
            parallel=False,
            progress=False,
        )
        assert row["status"] == direct.status == "converged"
        assert row["steps"] == direct.n_steps and row["evals"] == direct.trajectory.n_evals[-1]
        assert row["evals"] > row["steps"]  # RKC: several evaluations per step
        assert row["recon_error"] == direct.trajectory.test_error[-1]
    md = (tmp_path / "table.md").read_text()
    assert "the gradient flow itself (flow, rtol 1e-05" in md and "| evals |" in md
    assert "one flow per init and seed covers every lr (0.001, 0.0003)" in md
    assert "| completion | 150 | depth2 | 0.01 | every (flow) | 2/2 |" in md
    assert ", every lr (flow) |" in md  # the best setting of each cell
    # table.csv: one cell per (method, init), its lr empty, the mean over both seeds
    with open(tmp_path / "table.csv") as fh:
        cells = list(csv.DictReader(fh))
    assert sorted((c["method"], float(c["init_scale"])) for c in cells) == [
        ("depth2", 1e-3),
        ("depth2", 1e-2),
        ("depth3", 1e-3),
        ("depth3", 1e-2),
    ]
    for c in cells:
        assert c["lr"] == "" and c["n_seeds"] == "2"
        errs = [
            r["recon_error"]
            for r in res["runs"]
            if (r["method"], r["init_scale"]) == (c["method"], float(c["init_scale"]))
        ]
        assert float(c["recon_error_mean"]) == pytest.approx(np.mean(errs), rel=1e-12)
    # the init-scale table and figure of the same rows: one line per depth, lr "every"
    got = paper.reproduce_init_scale(
        tmp_path / "init", grid=TINY_FLOW, runs=tmp_path / "runs.csv", progress=False
    )
    assert len(got["summary"]) == 4
    md = (tmp_path / "init" / "init_scale.md").read_text()
    assert "| depth3 | 0.01 | every (flow) | 2 |" in md


def test_flow_grid_has_one_trial_per_init_and_seed():
    """The paper's full grid: GroupRMSprop keeps every init x lr x seed; the flow, which has
    no learning rate, one trial per init x seed (sensing: its own inits), first step lrs[0]."""
    from itertools import product

    full = paper.FULL
    want = [
        {"seed": s, "init_scale": a, "lr": r}
        for a, r, s in product(full.init_scales, full.lrs, full.seeds)
    ]
    assert full.trials("completion") == want and len(want) == 4 * 2 * 3
    assert not full.is_flow
    flow = replace(full, optimizer="flow")
    for kind, scales in (("completion", full.init_scales), ("sensing", full.sensing_init_scales)):
        got = flow.trials(kind)
        assert [(t["init_scale"], t["seed"]) for t in got] == list(product(scales, full.seeds))
        assert {t["lr"] for t in got} == {None}
        assert {t["first_step"] for t in got} == {full.lrs[0]}
    assert len(flow.trials("completion")) == 12 and len(flow.trials("sensing")) == 15
    assert len(replace(full, optimizer="flow_dopri5").trials("completion")) == 12
    with pytest.raises(ValueError, match="Grid.lrs is empty"):
        replace(flow, lrs=()).trials("completion")


def test_collapsed_flow_grid_equals_the_first_lr_of_the_uncollapsed_one(tmp_path):
    """The flow grid's trial of (init, seed) is the flow the grid ran before the lr axis
    collapsed for its first lr, bit for bit: the same fit from the same first step."""
    grid = replace(TINY_FLOW, methods=("depth2",), init_scales=(1e-2,))
    rows = paper.run_grid(grid, progress=False)
    problem = paper.make_problem("completion", 150, size=20, rank=2, seed=0)
    per_lr = fastdmf.fit_batch(
        problem,
        2,
        seeds=[0, 1, 0, 1],
        init_scale=1e-2,
        lr=[1e-3, 1e-3, 3e-4, 3e-4],
        optimizer="flow",
        max_time=1e6,
        max_steps=50_000,
        optimizer_options={"rtol": 1e-5},
        record=None,
    )
    assert [r["seed"] for r in rows] == [0, 1]
    for row, fit in zip(rows, per_lr[:2], strict=True):
        assert row["recon_error"] == fit.trajectory.test_error[-1]
        assert row["evals"] == fit.trajectory.n_evals[-1]
    # the other lr integrates the same flow: equal within the integration tolerance only
    for row, fit in zip(rows, per_lr[2:], strict=True):
        assert fit.trajectory.test_error[-1] == pytest.approx(row["recon_error"], rel=0.2)


def _compare_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "flow_grid_compare.py"
    spec = importlib.util.spec_from_file_location("flow_grid_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(obs, method, init, lr, err):
    return {
        "kind": "completion",
        "n_observed": obs,
        "method": method,
        "init_scale": init,
        "lr": lr,
        "n_seeds": 3,
        "steps_mean": 100.0,
        "evals_mean": 10.0,
        "recon_error_mean": err,
    }


def test_flow_grid_compare_joins_every_lr_to_the_flow_cell(tmp_path, capsys):
    """benchmarks/flow_grid_compare.py: each GroupRMSprop (obs, depth, init, lr) cell beside
    the flow cell of its (obs, depth, init); a flow table with one cell per lr (written before
    the lr axis collapsed) reads through its first-step cells."""
    cmp = _compare_script()
    grm, flow, old = tmp_path / "grm.csv", tmp_path / "flow.csv", tmp_path / "old.csv"
    grm_cells = [
        _cell(2000, "depth2", 1e-3, 1e-3, 4.0),
        _cell(2000, "depth2", 1e-3, 3e-4, 5.0),
        _cell(2000, "depth3", 1e-3, 1e-3, 2.0),
        _cell(2000, "depth3", 1e-3, 3e-4, 2.0),
        _cell(2000, "nuclear", None, None, 1.0),
    ]
    paper._report.write_csv(grm, grm_cells)
    paper._report.write_csv(
        flow,
        [_cell(2000, "depth2", 1e-3, None, 4.2), _cell(2000, "depth3", 1e-3, None, 1.5)],
    )
    paper._report.write_csv(
        old,
        [
            _cell(2000, "depth2", 1e-3, 1e-3, 4.2),
            _cell(2000, "depth2", 1e-3, 3e-4, 4.41),
            _cell(2000, "depth3", 1e-3, 1e-3, 1.5),
            _cell(2000, "depth3", 1e-3, 3e-4, 1.5),
        ],
    )
    for path, gap in ((flow, None), (old, 0.05)):
        cells, got_gap = cmp.read_flow(path)
        assert got_gap == (None if gap is None else pytest.approx(gap))
        lines = cmp.compare(cmp.read_grm(grm), cells, within=0.1)
        assert [(k, r) for k, _, _, r, _ in lines] == [
            ((2000, "depth2", 1e-3, 1e-3), pytest.approx(4.2 / 4.0)),
            ((2000, "depth2", 1e-3, 3e-4), pytest.approx(4.2 / 5.0)),
            ((2000, "depth3", 1e-3, 1e-3), pytest.approx(1.5 / 2.0)),
            ((2000, "depth3", 1e-3, 3e-4), pytest.approx(1.5 / 2.0)),
        ]
        assert [ok for *_, ok in lines] == [True, False, False, False]
        cmp.main([str(grm), str(path)])
        out = capsys.readouterr().out
        assert "1/4 cells within 10% of GroupRMSprop; outside: 2000 obs depth 2 init" in out
        assert ("up to 5.0%" in out) == (gap is not None)
    with pytest.raises(ValueError, match="no flow cell with an empty lr or lr 0.01"):
        cmp.read_flow(old, first_step=1e-2)


def test_reproduce_cli_takes_the_optimizer(tmp_path, capsys):
    out = tmp_path / "t"
    runs = tmp_path / "runs.csv"
    paper._report.write_csv(
        runs, paper.reproduce_table(tmp_path / "src", grid=TINY_FLOW, progress=False)["runs"]
    )
    assert (
        main(
            [
                "reproduce",
                "table",
                "--runs",
                str(runs),
                "--kinds",
                "completion",
                "--methods",
                "depth2,depth3",
                "--optimizer",
                "flow",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "reproduce",
                "table",
                "--optimizer",
                "sgd9",
                "--kinds",
                "completion",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "unknown optimizer 'sgd9'" in capsys.readouterr().err


def test_sensing_flow_grid_runs_its_depths_in_one_lockstep_batch():
    """A flow grid on a sensing problem fits all its depth methods in one fit_batch (one
    depth per trial, the lock-step rounds shared); the rows are those of one batch per depth
    within rounding, in the grid's method order. Other grids run one batch per method."""
    grid = replace(
        TINY_FLOW,
        kinds=("sensing",),
        methods=("depth3", "nuclear", "depth2"),
        sensing_problem={"size": 6, "rank": 1, "n_observed": {150: 30}},
        max_time=200.0,
    )
    sensing = paper.make_problem("sensing", 30, size=6, rank=1, seed=0)
    completion = paper.make_problem("completion", 150, size=20, rank=2, seed=0)
    assert paper._batches(grid, sensing) == [["depth3", "depth2"], ["nuclear"]]
    assert paper._batches(grid, completion) == [["depth3"], ["nuclear"], ["depth2"]]
    assert paper._batches(replace(grid, optimizer="grouprmsprop"), sensing) == [
        ["depth3"],
        ["nuclear"],
        ["depth2"],
    ]
    rows = paper.run_grid(replace(grid, methods=("depth3", "depth2")), progress=False)
    trials = grid.trials("sensing")
    assert [r["method"] for r in rows] == ["depth3"] * len(trials) + ["depth2"] * len(trials)
    for depth in (3, 2):
        alone = paper.depth_method(depth)(sensing, trials, grid)
        got = [r for r in rows if r["method"] == f"depth{depth}"]
        for a, b in zip(alone, got, strict=True):
            assert (a["seed"], a["init_scale"], a["status"]) == (
                b["seed"],
                b["init_scale"],
                b["status"],
            )
            assert b["recon_error"] == pytest.approx(a["recon_error"], rel=1e-5, abs=1e-12)
