"""Sweeps: every grid point once, each equal to its own serial fit, whatever the executor
(local process pool, dask.distributed) or task grouping; a sweep whose worker dies resumes and
completes without losing or repeating a finished task."""

import concurrent.futures as cf
import functools
import json
import os

import numpy as np
import pytest

import fastdmf
from fastdmf.experiments import sweep as sweep_mod

SPEC = dict(kind="completion", shape=(20, 20), rank=2, n_observed=150, seed=4)
GRID = {"depth": [1, 2], "init_scale": [1e-2, 1e-3], "repeat": 2}
FIT = dict(lr=1e-2, max_steps=300, record=100, tol=1e-8)
METRICS = ("status", "steps", "train_loss", "test_error", "nuclear_norm", "effective_rank")


def serial_fit(row):
    """The fit a table row stands for, run here with the row's own settings and seed."""
    problem = fastdmf.synthetic_completion(
        shape=tuple(row["shape"]),
        rank=row["rank"],
        n_observed=row["n_observed"],
        seed=row["problem_seed"],
    )
    kw = {k: row[k] for k in ("depth", "init_scale") if k in row}
    return fastdmf.fit(problem, seed=row["seed"], parallel=False, **FIT, **kw)


def assert_rows_equal_serial_fits(table, n):
    assert table.complete and [r["index"] for r in table] == list(range(n))
    for k, row in enumerate(table):
        ref = serial_fit(row)
        for got, want in zip(table.factors(k), ref.factors, strict=True):
            np.testing.assert_array_equal(got, want)
        traj = ref.trajectory
        want = dict(
            status=ref.status,
            steps=ref.n_steps,
            train_loss=traj.train_loss[-1],
            test_error=traj.test_error[-1],
            nuclear_norm=traj.nuclear_norm[-1],
            effective_rank=traj.effective_rank[-1],
        )
        assert {m: row[m] for m in METRICS} == want
        np.testing.assert_array_equal(table.trajectory(k).singular_values, traj.singular_values)


def test_grid_points_and_seeds():
    points = sweep_mod.grid_points(GRID)
    assert len(points) == 8 and points[0] == {"depth": 1, "init_scale": 1e-2, "repeat": 0}
    assert points[-1] == {"depth": 2, "init_scale": 1e-3, "repeat": 1}
    children = np.random.SeedSequence(7).spawn(8)
    for i, child in enumerate(children):
        want = int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))
        assert sweep_mod.point_seed(7, i) == want


@pytest.fixture(scope="module")
def pool_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    return fastdmf.sweep(GRID, out=out, problem=SPEC, workers=2, fits_per_task=3, **FIT)


def test_pool_sweep_equals_serial_fits(pool_table):
    assert_rows_equal_serial_fits(pool_table, 8)
    assert [r["task"] for r in pool_table] == [0, 0, 0, 1, 1, 1, 2, 2]  # 3 fits per task
    cols = pool_table.columns()
    np.testing.assert_array_equal(cols["depth"], [1, 1, 1, 1, 2, 2, 2, 2])
    assert pool_table.to_pandas().shape[0] == 8


def test_dask_cluster_gives_the_same_results(pool_table, tmp_path):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        table = fastdmf.sweep(
            GRID, out=tmp_path, problem=SPEC, executor=client, fits_per_task=2, **FIT
        )
    assert len(table) == 8
    for k, (a, b) in enumerate(zip(table, pool_table, strict=True)):
        assert a["seed"] == b["seed"] and {m: a[m] for m in METRICS} == {m: b[m] for m in METRICS}
        for wa, wb in zip(table.factors(k), pool_table.factors(k), strict=True):
            np.testing.assert_array_equal(wa, wb)


def test_killed_worker_then_rerun_completes_without_loss_or_repeats(tmp_path, monkeypatch):
    # the spawned workers import the callback's module by name, from this folder
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    from _worker_callbacks import die_once

    out = tmp_path / "sweep"
    grid = {"depth": [1, 2], "repeat": 3}
    kw = dict(FIT, callback=functools.partial(die_once, str(tmp_path / "marker")))
    with pytest.raises(RuntimeError, match="run the same sweep again"):
        fastdmf.sweep(grid, out=out, problem=SPEC, workers=2, **kw)
    done = {f: os.stat(out / "tasks" / f).st_mtime_ns for f in os.listdir(out / "tasks")}
    assert 0 < len(done) < 6  # the depth-1 tasks finished, the killed one did not
    table = fastdmf.sweep(grid, out=out, problem=SPEC, workers=2, **kw)
    for f, mtime in done.items():  # finished tasks were skipped, not rerun
        assert os.stat(out / "tasks" / f).st_mtime_ns == mtime
    assert_rows_equal_serial_fits(table, 6)
    assert not [f for f in os.listdir(out / "tasks") if not f.endswith(".npz")]


def test_batched_tasks_equal_single_fits():
    fits = [
        (i, p, sweep_mod.point_seed(0, i))
        for i, p in enumerate(
            sweep_mod.grid_points({"depth": 2, "init_scale": [1e-2, 1e-3], "repeat": 2})
        )
    ]
    spec = {**SPEC, "shape": list(SPEC["shape"])}
    one = sweep_mod.run_task((0, fits, spec, FIT, False, True))
    together = sweep_mod.run_task((0, fits, spec, FIT, True, True))
    for name in one:
        if name != "__meta__":
            np.testing.assert_array_equal(one[name], together[name], err_msg=name)


def test_sweep_errors(tmp_path):
    with pytest.raises(TypeError, match="not sweepable"):
        fastdmf.sweep({"depth": [1]}, out=tmp_path, problem=SPEC, bogus=1)
    with pytest.raises(ValueError, match="unknown problem kind"):
        fastdmf.sweep({"depth": [1]}, out=tmp_path, problem=dict(kind="tensor"))
    with pytest.raises(ValueError, match="unknown key"):
        fastdmf.sweep({"depth": [1]}, out=tmp_path, problem=dict(size=3))
    with pytest.raises(ValueError, match="n_observed"):
        fastdmf.sweep({"n_observed": [10**6]}, out=tmp_path, problem=SPEC)
    with pytest.raises(TypeError, match="both as a grid axis"):
        fastdmf.sweep({"lr": [1e-2]}, out=tmp_path, problem=SPEC, lr=1e-3)
    fastdmf.sweep({"depth": [1]}, out=tmp_path, problem=SPEC, max_steps=5, workers=1)
    with pytest.raises(ValueError, match="holds another sweep"):
        fastdmf.sweep({"depth": [2]}, out=tmp_path, problem=SPEC, max_steps=5)
    with pytest.raises(FileNotFoundError, match="not a sweep folder"):
        fastdmf.load_sweep(tmp_path / "nothing")


def test_cli_sweep_from_toml(tmp_path, capsys):
    from fastdmf.cli import main

    config = tmp_path / "sweep.toml"
    config.write_text(
        "base_seed = 0\n"
        "[problem]\nshape = [20, 20]\nrank = 2\nn_observed = 150\nseed = 4\n"
        "[grid]\ndepth = [1, 2]\nrepeat = 1\n"
        "[fit]\nlr = 1e-2\nmax_steps = 300\nrecord = 100\ntol = 1e-8\n"
    )
    assert main(["sweep", str(config), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    table = fastdmf.load_sweep(tmp_path / "out")
    assert_rows_equal_serial_fits(table, 2)
    lines = [line.split() for line in text.splitlines()]
    assert lines[0][:2] == ["depth", "fits"]
    assert float(lines[2][3]) == float(f"{table[1]['test_error']:.3e}")


def test_grid_axes_are_lists_of_values():
    points = sweep_mod.grid_points({"widths": [None, [4, 3]], "record": [("log", 5), 50]})
    assert points == [
        {"widths": None, "record": ["log", 5]},
        {"widths": None, "record": 50},
        {"widths": [4, 3], "record": ["log", 5]},
        {"widths": [4, 3], "record": 50},
    ]
    assert sweep_mod.grid_points({"widths": [2, [4, 3]]}) == [{"widths": 2}, {"widths": [4, 3]}]
    assert sweep_mod.grid_points({"shape": [20, 30], "record": ("log", 5)}) == [
        {"shape": [20, 30], "record": ["log", 5]}
    ]


def test_sweep_of_record_schedules_and_widths(tmp_path):
    grid = {"record": [("log", 5), ("log", 8), 50], "widths": [None, [4, 3]]}
    fit = dict(lr=1e-2, max_steps=100)
    with cf.ThreadPoolExecutor(1) as ex:
        table = fastdmf.sweep(grid, out=tmp_path, problem=SPEC, executor=ex, **fit)
    assert table.complete and len(table) == 6
    assert [r["record"] for r in table] == [["log", 5]] * 2 + [["log", 8]] * 2 + [50] * 2
    assert [r["widths"] for r in table] == [None, [4, 3]] * 3
    problem = fastdmf.synthetic_completion(**{k: v for k, v in SPEC.items() if k != "kind"})
    for k, row in enumerate(table):
        record = tuple(row["record"]) if isinstance(row["record"], list) else row["record"]
        ref = fastdmf.fit(
            problem, seed=row["seed"], parallel=False, record=record, widths=row["widths"], **fit
        )
        np.testing.assert_array_equal(table.trajectory(k).step, ref.trajectory.step)
        assert [w.shape for w in table.factors(k)] == [w.shape for w in ref.factors]
        for got, want in zip(table.factors(k), ref.factors, strict=True):
            np.testing.assert_array_equal(got, want)


def test_rerun_with_the_axes_in_another_order_is_refused(tmp_path):
    fit = dict(lr=1e-2, max_steps=20, record=None)
    with cf.ThreadPoolExecutor(1) as ex:
        first = fastdmf.sweep(
            {"depth": [1, 2], "repeat": 2}, out=tmp_path, problem=SPEC, executor=ex, **fit
        )
        os.remove(tmp_path / "tasks" / "task-000001.npz")  # as if interrupted
        with pytest.raises(ValueError, match=r"axes in the order \['depth', 'repeat'\]"):
            fastdmf.sweep(
                {"repeat": 2, "depth": [1, 2]}, out=tmp_path, problem=SPEC, executor=ex, **fit
            )
        assert sorted(os.listdir(tmp_path / "tasks")) == [
            "task-000000.npz",
            "task-000002.npz",
            "task-000003.npz",
        ]  # nothing run
        again = fastdmf.sweep(
            {"depth": [1, 2], "repeat": 2}, out=tmp_path, problem=SPEC, executor=ex, **fit
        )
    assert again.complete
    assert [(r["depth"], r["repeat"], r["seed"]) for r in again] == [
        (r["depth"], r["repeat"], r["seed"]) for r in first
    ]


def test_task_files_of_another_sweep_are_refused(tmp_path):
    fit = dict(lr=1e-2, max_steps=20, record=None)
    a, b = tmp_path / "a", tmp_path / "b"
    with cf.ThreadPoolExecutor(1) as ex:
        fastdmf.sweep({"depth": [1, 2]}, out=a, problem=SPEC, executor=ex, **fit)
        fastdmf.sweep({"depth": [3, 4]}, out=b, problem=SPEC, executor=ex, **fit)
        # a task file of sweep b among sweep a's: refused by a rerun and by load_sweep
        os.replace(b / "tasks" / "task-000001.npz", a / "tasks" / "task-000001.npz")
        for call in (
            lambda: fastdmf.sweep({"depth": [1, 2]}, out=a, problem=SPEC, executor=ex, **fit),
            lambda: fastdmf.load_sweep(a),
        ):
            with pytest.raises(
                ValueError,
                match=r"task-000001\.npz is not a result of the "
                r"sweep.*another sweep identity",
            ):
                call()
        # tasks without sweep.json: a new sweep there is refused, the files are kept
        os.remove(b / "sweep.json")
        with pytest.raises(ValueError, match="holds files but .* has no sweep.json"):
            fastdmf.sweep({"depth": [5, 6]}, out=b, problem=SPEC, executor=ex, **fit)
        assert os.listdir(b / "tasks") == ["task-000000.npz"] and not (b / "sweep.json").exists()
    # a task file that names no sweep
    src = a / "tasks" / "task-000000.npz"
    with np.load(src) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["__meta__"]))
    del meta["sweep"]
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(src, **arrays)
    with pytest.raises(ValueError, match=r"task-000000\.npz .* holds no sweep identity"):
        fastdmf.load_sweep(a)


@pytest.mark.parametrize("text", ["[]", '{"format": 1}', "not json"])
def test_a_sweep_json_that_is_not_a_sweeps_settings_is_refused(tmp_path, text):
    (tmp_path / "sweep.json").write_text(text)
    with pytest.raises(ValueError, match="does not hold a sweep's settings"):
        fastdmf.sweep({"depth": [1]}, out=tmp_path, problem=SPEC, max_steps=5, workers=1)
    with pytest.raises(ValueError, match="does not hold a sweep's settings"):
        fastdmf.load_sweep(tmp_path)
    assert os.listdir(tmp_path) == ["sweep.json"]


@pytest.mark.parametrize(
    "grid, kw, error, match",
    [
        (
            {"lr": [1e-2, "fast"]},
            {},
            TypeError,
            r"grid points with \{'lr': 'fast'\}: lr must be a real number, got 'fast'",
        ),
        (
            {"depth": [1, 2]},
            {"optimizer": "sgd"},
            ValueError,
            r"settings of the grid points with \{'depth': 1\}: unknown optimizer 'sgd'",
        ),
        (
            {"depth": [2, 3], "widths": [[4]]},
            {},
            ValueError,
            r"\{'depth': 3, 'widths': \[4\]\}: depth 3 needs 2 hidden width",
        ),
        (
            {"repeat": 2},
            {"optimizer": "flow"},
            ValueError,
            r"settings of the fits: optimizer='flow' integrates up to a flow time",
        ),
        (
            {"shape": [[20, 20], [15, 15]]},
            {"widths": 2, "depth": 2, "record": ["log", 0]},
            ValueError,
            r"\{'shape': \[20, 20\]\}: record=\('log', 0\)",
        ),
        (
            {"init": ["gaussian", "gauss"]},
            {},
            ValueError,
            r"\{'init': 'gauss'\}: unknown init 'gauss'",
        ),
        (
            {"depth": [2]},
            {"optimizer": "flow", "max_time": 1.0, "backend": "cuda"},
            ValueError,
            r"the flow optimisers .* run on the CPU only",
        ),
    ],
)
def test_bad_fit_settings_fail_before_anything_is_written(tmp_path, grid, kw, error, match):
    with pytest.raises(error, match=match):
        fastdmf.sweep(grid, out=tmp_path, problem=SPEC, max_steps=5, workers=1, **kw)
    assert os.listdir(tmp_path) == []


def test_a_typo_in_the_toml_fit_table_can_be_fixed_and_rerun(tmp_path):
    from fastdmf.experiments.sweep_cli import run_config

    config = tmp_path / "sweep.toml"
    text = (
        "[problem]\nshape = [20, 20]\nrank = 2\nn_observed = 150\nseed = 4\n"
        '[grid]\ndepth = [1, 2]\n[fit]\nlr = {lr}\nmax_steps = 20\nrecord = ["log", 5]\n'
    )
    config.write_text(text.format(lr='"fast"'))
    with pytest.raises(TypeError, match="lr must be a real number, got 'fast'"):
        run_config(config, out=tmp_path / "out", workers=1)
    assert not (tmp_path / "out" / "sweep.json").exists()
    config.write_text(text.format(lr="1e-2"))
    table = run_config(config, out=tmp_path / "out", workers=1)
    assert table.complete and [r["depth"] for r in table] == [1, 2]
    assert table.config["fit"]["lr"] == 1e-2


def test_a_bad_problem_at_any_grid_point_fails_before_anything_is_written(tmp_path):
    grid = {"n_observed": [30, 500], "repeat": 2}  # 500 > 20 x 20 entries
    with pytest.raises(ValueError, match=r"problem of the grid points with \{'n_observed': 500\}"):
        fastdmf.sweep(
            grid, out=tmp_path, problem=dict(shape=(20, 20), rank=2), max_steps=5, workers=1
        )
    assert os.listdir(tmp_path) == []
