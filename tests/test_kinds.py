"""The table of problem kinds (fastdmf._kinds): lookups, and each entry's pieces against
independent values."""

import dataclasses

import numpy as np
import pytest

import fastdmf
from fastdmf import _kinds
from fastdmf.factors import end_to_end


@pytest.fixture(scope="module")
def problems():
    comp = fastdmf.synthetic_completion(shape=(6, 5), rank=2, n_observed=20, seed=0)
    sens = fastdmf.synthetic_sensing(shape=(4, 3), rank=1, n_measurements=9, seed=0)
    return comp, sens


def test_lookups(problems):
    comp, sens = problems
    assert _kinds.kind_of(comp) is _kinds.COMPLETION
    assert _kinds.kind_of(sens) is _kinds.SENSING
    assert _kinds.by_name("sensing") is _kinds.SENSING
    assert _kinds.same_kind(comp, comp) and not _kinds.same_kind(comp, sens)
    assert _kinds.is_problem(sens) and not _kinds.is_problem(np.zeros((2, 2)))
    assert _kinds.find_kind((1, 2, 3)) is None
    with pytest.raises(TypeError, match="CompletionProblem, SensingProblem"):
        _kinds.kind_of(np.zeros(3))
    with pytest.raises(ValueError, match="unknown problem kind 'x'"):
        _kinds.by_name("x")
    names = [k.name for k in _kinds.KINDS]
    assert len(set(names)) == len(names)


def test_entries_and_real_data(problems):
    comp, sens = problems
    assert _kinds.COMPLETION.entries and not _kinds.SENSING.entries
    assert not _kinds.COMPLETION.is_real_data(comp)  # synthetic: has a ground truth
    real = fastdmf.completion(comp.rows, comp.cols, comp.values, shape=comp.shape)
    assert _kinds.COMPLETION.is_real_data(real)
    assert not _kinds.SENSING.is_real_data(sens)
    assert _kinds.SENSING.cuda is None and "sensing" in _kinds.SENSING.cpu_only


def test_scores_against_numpy(problems):
    comp, sens = problems
    rng = np.random.default_rng(1)
    for problem in problems:
        m, n = problem.shape
        factors = [rng.standard_normal((2, n)), rng.standard_normal((m, 2))]
        w = factors[1] @ factors[0]
        kind = _kinds.kind_of(problem)
        if kind is _kinds.COMPLETION:
            want = np.mean((w[comp.rows, comp.cols] - comp.values) ** 2)
        else:
            want = np.mean((np.einsum("kij,ij->k", sens.A, w) - sens.y) ** 2)
        assert kind.score(factors, problem) == pytest.approx(want, rel=1e-12)
        assert np.isnan(kind.score(factors, None))
        np.testing.assert_allclose(end_to_end(factors), w, rtol=1e-12)


def test_arrays_round_trip(problems):
    for problem in problems:
        kind = _kinds.kind_of(problem)
        arrays = problem.to_arrays()
        back = kind.problem_type.from_arrays(arrays, problem.meta)
        assert back.shape == problem.shape and back.meta == problem.meta
        for name, arr in arrays.items():
            np.testing.assert_array_equal(back.to_arrays()[name], arr)


def test_prepare_matches_the_loss(problems):
    """Each kind's kernels, as prepared, give the loss computed in NumPy."""
    rng = np.random.default_rng(2)
    for problem in problems:
        kind = _kinds.kind_of(problem)
        layout = kind.layout(problem.shape, 2, [3])
        factors = kind.initialize(layout, "gaussian", 0.5, rng)
        theta = layout.pack(factors)
        kernels, nblk, obs, work, rowloss = kind.prepare(problem, layout, np.float64, False)
        grad = np.zeros_like(theta)
        dims = np.asarray(layout.dims, dtype=np.int64)
        loss = kernels.loss_and_grad(
            theta, grad, work, dims, layout.offsets, obs, rowloss, 2.0 / problem.n_observed, nblk
        )
        w = end_to_end(factors)
        if kind is _kinds.COMPLETION:
            want = np.mean((w[problem.rows, problem.cols] - problem.values) ** 2)
        else:
            want = np.mean((np.einsum("kij,ij->k", problem.A, w) - problem.y) ** 2)
        assert loss == pytest.approx(want, rel=1e-12)
        assert kind.from_dims(layout.dims, 2) == layout
        assert kind.param_count(3) == 3


# --------------------------------------------------------------------------- the plan


def test_plan_resolves_fits_arguments(problems):
    from fastdmf._plan import plan
    from fastdmf.trajectory import Grid

    comp, _ = problems
    p = plan(
        _kinds.COMPLETION,
        comp.shape,
        depth=3,
        widths=[4, 2],
        init="gaussian",
        init_scale=1e-2,
        optimizer="adam",
        lr=0.05,
        optimizer_options={"beta1": 0.5},
        max_steps=250,
        tol=1e-7,
        record=100,
        top_k=2,
        dtype=np.float32,
        parallel=False,
    )
    assert p.kind is _kinds.COMPLETION and p.shape == (6, 5) and p.depth == 3
    assert p.layout.dims == (5, 4, 2, 6)
    assert p.dtype == "float32" and p.np_dtype is np.float32
    assert p.spec.name == "adam" and not p.is_flow
    np.testing.assert_array_equal(p.hyper, [0.05, 0.5, 0.999, 1e-8])
    assert list(p.schedule) == list(range(0, 251, 100)) and p.end == p.budget == 250
    assert (p.tol, p.top_k, p.seed) == (1e-7, 2, None)
    flow = plan(
        _kinds.COMPLETION,
        comp.shape,
        depth=2,
        optimizer="flow",
        lr=1e-3,
        max_steps=50,
        max_time=2.0,
        record=0.5,
    )
    assert flow.is_flow and flow.end == 2.0 and flow.budget == 50
    assert isinstance(flow.schedule, Grid) and list(flow.schedule) == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="max_time"):
        plan(_kinds.COMPLETION, comp.shape, depth=2, optimizer="flow", lr=1e-3)
    with pytest.raises(ValueError, match="max_time= applies"):
        plan(_kinds.COMPLETION, comp.shape, depth=2, max_time=1.0)
    trial = p.trial(7, 0.5, 0.01)
    assert (trial.seed, trial.init_scale, trial.lr) == (7, 0.5, 0.01)
    np.testing.assert_array_equal(trial.hyper, [0.01, 0.9, 0.999, 1e-8])
    assert trial.layout is p.layout and p.seed is None  # the base plan is left alone


def test_threads_restores_the_count():
    import numba

    from fastdmf._plan import threads

    before = numba.get_num_threads()
    with threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="n_threads"):
        with threads(0):
            pass


def test_measure_receives_each_trials_plan(problems, monkeypatch):
    """A kind's records see the fit's resolved arguments: one plan per trial in fit_batch,
    with that trial's init scale and rate; fit's plan carries its seed."""
    comp, sens = problems
    seen = []
    base = _kinds.COMPLETION.measure

    def spy(params, grads, loss, counts, data, plan):
        seen.append((plan.seed, plan.init_scale, plan.lr, counts[0]))
        return base(params, grads, loss, counts, data, plan)

    spying = dataclasses.replace(_kinds.COMPLETION, measure=spy)
    monkeypatch.setattr(_kinds, "KINDS", (spying, _kinds.SENSING))
    fastdmf.fit_batch(
        comp, depth=2, seeds=[3, 4], init_scale=[0.1, 0.2], lr=[0.01, 0.02], max_steps=4, record=2
    )
    assert sorted(set(seen)) == [(3, 0.1, 0.01, s) for s in (0, 2, 4)] + [
        (4, 0.2, 0.02, s) for s in (0, 2, 4)
    ]
    seen.clear()
    fastdmf.fit(comp, depth=2, seed=5, init_scale=0.3, lr=0.03, max_steps=2, record=None)
    assert seen == [(5, 0.3, 0.03, 0), (5, 0.3, 0.03, 2)]


def test_optimizer_capabilities():
    from fastdmf.kernels import codes, flow
    from fastdmf.optim import OPTIMIZERS, OptimizerSpec

    steps = {n for n, s in OPTIMIZERS.items() if not s.is_flow}
    assert steps == set(codes.OPTIMIZER_CODES) == {"gd", "grouprmsprop", "adam"}
    for name in steps:
        spec = OPTIMIZERS[name]
        assert spec.kind == "step" and spec.batched and spec.cuda
        assert spec.code == codes.OPTIMIZER_CODES[name] and spec.flow_method is None
    assert OPTIMIZERS["flow"].flow_method == flow.RKC2
    assert OPTIMIZERS["flow_dopri5"].flow_method == flow.DOPRI5
    for name in ("flow", "flow_dopri5"):
        spec = OPTIMIZERS[name]
        assert spec.is_flow and spec.code == codes.NO_STEP and not spec.cuda
    with pytest.raises(ValueError, match="'step' or 'flow'"):
        OptimizerSpec("x", 0, {}, (None, None, None), 0, kind="leap")
    with pytest.raises(ValueError, match="flow_method"):
        OptimizerSpec("x", -1, {}, (None, None, None), 0, kind="flow")


def test_engine_state_round_trip(problems):
    """state() names the buffers a checkpoint keeps; load_state puts them back, and the
    engine then runs on exactly as the one it was saved from."""
    from fastdmf.engine import Engine, FlowEngine

    comp, _ = problems
    layout = _kinds.COMPLETION.layout(comp.shape, 2, [3])
    theta = layout.pack(
        _kinds.COMPLETION.initialize(layout, "gaussian", 0.5, np.random.default_rng(0))
    )
    for name in ("adam", "flow"):
        spec = fastdmf.optim.get_optimizer(name)
        a = Engine(comp, layout, theta.copy(), spec, spec.hyper(1e-2, {}))
        assert isinstance(a, FlowEngine) == spec.is_flow
        a.advance(a.position + (3 if not spec.is_flow else 0.5), 0.0, np.inf, 10_000)
        saved = {k: v.copy() for k, v in a.state().items()}
        assert ("flow_fs" in saved) == spec.is_flow and "ostate" in saved
        b = Engine(comp, layout, theta.copy(), spec, spec.hyper(1e-2, {}))
        b.load_state(saved)
        assert (b.n_steps, b.time) == (a.n_steps, a.time)
        for eng in (a, b):
            eng.advance(eng.position + (2 if not spec.is_flow else 0.5), 0.0, np.inf, 10_000)
        np.testing.assert_array_equal(a.theta, b.theta)


def test_trajectory_arrays_round_trip(problems):
    from fastdmf.trajectory import Trajectory

    comp, _ = problems
    res = fastdmf.fit(comp, depth=2, seed=0, max_steps=6, record=2, lr=1e-2)
    arrays = res.trajectory.to_arrays()
    back = Trajectory.from_arrays(arrays, 2, None, {"shape": [6, 5]})
    assert len(back) == 4
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back.as_dict()[name], arr)


# --------------------------------------------------------------------------- structure


def test_no_import_cycles():
    """The package's import graph (module-level and function-level imports) is acyclic."""
    import ast
    import pathlib

    root = pathlib.Path(fastdmf.__file__).parent
    mods = {}
    for path in root.rglob("*.py"):
        name = ".".join(("fastdmf", *path.relative_to(root).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = path
    edges = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    target = target if target in mods else base
                    if target in mods and target != mod:
                        edges[mod].add(target)
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in edges[m]:
            if state.get(n) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, n])}")
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in sorted(mods):
        if m not in state:
            visit(m, [])


def test_trajectory_with_a_kinds_own_fields(tmp_path):
    """A kind whose records hold other fields: they read as attributes, survive to_arrays /
    from_arrays and save / load, and a record lacking a scalar reads NaN."""
    from fastdmf.trajectory import Trajectory, load_trajectory

    fields = ("step", "time", "train_loss", "l1")
    traj = Trajectory(2, None, {"n": 3}, scalars=fields, matrices=("w",))
    traj.append({"step": 0, "time": 0.0, "train_loss": 2.0, "l1": 0.5, "w": np.ones(3)})
    traj.append({"step": 5, "time": 0.5, "train_loss": 1.0, "w": np.zeros(3)})
    np.testing.assert_array_equal(traj.l1, [0.5, np.nan])
    np.testing.assert_array_equal(traj.w, [[1, 1, 1], [0, 0, 0]])
    assert set(traj.as_dict()) == set(fields) | {"w"}
    with pytest.raises(AttributeError):
        traj.singular_values  # noqa: B018  (not a field of this trajectory)
    back = Trajectory.from_arrays(
        traj.to_arrays(), 2, None, {"n": 3}, scalars=fields, matrices=("w",)
    )
    np.testing.assert_array_equal(back.train_loss, [2.0, 1.0])
    traj.save(tmp_path / "t.npz")
    loaded = load_trajectory(tmp_path / "t.npz")
    assert loaded.scalars == fields and loaded.matrices == ("w",)
    np.testing.assert_array_equal(loaded.w, traj.w)


def test_held_out_and_init_checks_go_through_the_kind(problems, monkeypatch):
    """fit's test= and init= checks ask the kind: its check_held_out and param_count."""
    comp, sens = problems
    with pytest.raises(ValueError, match=r"test= has shape \(4, 3\), the fitted problem"):
        fastdmf.fit(
            comp, depth=2, test=fastdmf.synthetic_completion((4, 3), 1, 5, seed=0), max_steps=1
        )
    with pytest.raises(TypeError, match="held-out measurements"):
        fastdmf.fit(comp, depth=2, test=sens, max_steps=1)
    calls = []

    def lenient(test, problem, what):
        calls.append((test.shape, problem.shape, what))

    kind = dataclasses.replace(
        _kinds.COMPLETION, check_held_out=lenient, param_count=lambda depth: depth + 1
    )
    monkeypatch.setattr(_kinds, "KINDS", (kind, _kinds.SENSING))
    other = fastdmf.synthetic_completion((4, 3), 1, 5, seed=0)
    assert fastdmf.api.as_test(other, comp) is other
    assert calls == [((4, 3), (6, 5), "the fitted problem")]
    with pytest.raises(ValueError, match="init lists 2 factor"):
        fastdmf.fit(comp, depth=2, init=[np.ones((5, 5)), np.ones((6, 5))], max_steps=1)
