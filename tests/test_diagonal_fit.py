"""The diagonal network as a problem kind: its records, held-out error and result against
NumPy; fit with every optimiser against NumPy loops and the exact limits; batch, checkpoint
and argument checks."""

import numpy as np
import pytest

import fastdmf
from fastdmf import diagonal as D
from fastdmf.diagonal_theory import potential
from fastdmf.optim import get_optimizer

from .test_diagonal import numpy_run


def _q(z):
    return 2 - np.sqrt(4 + z**2) + z * np.arcsinh(z / 2)


@pytest.fixture(scope="module")
def small():
    return D.synthetic_sparse_regression(12, 30, 3, seed=4)


# --------------------------------------------------------------------------- no fit needed


def test_layout_dims_round_trip_and_params():
    lay = D.DiagonalLayout(5, 4)
    assert lay.dims == (5, 4)
    assert D.DiagonalLayout.from_dims(np.asarray(lay.dims, np.int64)) == lay
    theta = np.arange(10, dtype=np.float64) / 10
    params = lay.unpack(theta)
    assert isinstance(params, list) and len(params) == 2 and params.depth == 4
    np.testing.assert_array_equal(params.coef, theta[:5] ** 4 - theta[5:] ** 4)
    params[1][0] = 7.0
    assert theta[5] == 7.0  # views into theta


def test_measure_against_numpy(small):
    rng = np.random.default_rng(0)
    depth, alpha = 3, 0.4
    lay = D.layout(small.shape, depth)
    theta = rng.uniform(0.1, 1.0, lay.size)
    grad = rng.standard_normal(lay.size)
    rec = D.measure(lay.unpack(theta), lay.unpack(grad), 0.25, 7, 0.5, 9, small, init_scale=alpha)
    u, v = theta[:30], theta[30:]
    w = u**3 - v**3
    truth = small.ground_truth
    assert rec["step"] == 7 and rec["time"] == 0.5 and rec["n_evals"] == 9
    assert rec["train_loss"] == 0.25 and np.isnan(rec["val_error"])
    assert rec["l1"] == pytest.approx(np.abs(w).sum(), rel=1e-14)
    assert rec["l2"] == pytest.approx(np.sqrt((w**2).sum()), rel=1e-14)
    assert rec["test_error"] == pytest.approx(
        ((w - truth) ** 2).sum() / (truth**2).sum(), rel=1e-13
    )
    assert rec["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-14)
    assert rec["param_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-14)
    big = np.abs(w).max()
    assert rec["support"] == int(np.sum(np.abs(w) > D.SUPPORT_RTOL * big))
    assert rec["potential"] == pytest.approx(potential(w, alpha, 3), rel=1e-12)


def test_measure_potential_depth2_is_woodworths_q(small):
    lay = D.layout(small.shape, 2)
    theta = np.random.default_rng(1).uniform(0.0, 0.8, lay.size)
    rec = D.measure(lay.unpack(theta), lay.unpack(theta), 1.0, 0, 0.0, 0, small, init_scale=0.3)
    w = theta[:30] ** 2 - theta[30:] ** 2
    assert rec["potential"] == pytest.approx(0.09 * _q(w / 0.09).sum(), rel=1e-10)


def test_held_out_error_and_measure_on_samples(small):
    train, test = D.sparse_regression(small.X, small.y).split(0.25, seed=3)
    assert train.ground_truth is None and test.n_samples == 3
    lay = D.layout(train.shape, 2)
    theta = np.random.default_rng(2).uniform(0.0, 1.0, lay.size)
    params = lay.unpack(theta)
    w = theta[:30] ** 2 - theta[30:] ** 2
    want = float(np.mean((test.X @ w - test.y) ** 2))
    assert test.held_out_error(params) == pytest.approx(want, rel=1e-14)
    assert test.held_out_error(w) == pytest.approx(want, rel=1e-14)
    rec = D.measure(params, params, 1.0, 0, 0.0, 0, train, test, init_scale=0.5)
    assert rec["test_error"] == pytest.approx(want, rel=1e-14)
    assert np.isnan(D.measure(params, params, 1.0, 0, 0.0, 0, train, init_scale=0.5)["test_error"])
    with pytest.raises(ValueError, match="offsets"):
        test.held_out_error(params, offsets=object())
    with pytest.raises(ValueError, match="features"):
        test.held_out_error(np.zeros(4))


def test_result_coef_matrix_predict(small):
    from fastdmf.trajectory import Trajectory

    lay = D.layout(small.shape, 3)
    theta = np.random.default_rng(5).uniform(0.0, 1.0, lay.size)
    res = D.DiagonalResult(lay.unpack(theta), Trajectory(3), "max_steps", {}, 0)
    w = theta[:30] ** 3 - theta[30:] ** 3
    assert res.depth == 3 and res.shape == (1, 30)
    np.testing.assert_array_equal(res.coef, w)
    np.testing.assert_array_equal(res.matrix(), w[None, :])
    np.testing.assert_allclose(res.predict(small.X), small.X @ w, rtol=1e-13)
    assert res.predict(small.X[0]) == pytest.approx(small.X[0] @ w, rel=1e-13)
    with pytest.raises(ValueError, match="30 features"):
        res.predict(np.zeros((2, 29)))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"widths": [3]}, ValueError, "hidden widths"),
        ({"validation": 0.1}, ValueError, "validation"),
        ({"offsets": "biases"}, ValueError, "offsets"),
        ({"init": "identity"}, ValueError, "constant"),
        ({"init": [np.ones(30), np.ones(30)]}, TypeError, "init"),
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"init_scale": -1.0}, ValueError, "init_scale"),
        ({"depth": 0}, ValueError, "depth"),
    ],
)
def test_check_fit_refuses(small, kwargs, err, match):
    args = {"depth": 2, "init": "constant", "init_scale": 0.1, **kwargs}
    with pytest.raises(err, match=match):
        D.check_fit(small, args)


def test_check_fit_accepts_defaults(small):
    D.check_fit(
        small,
        {
            "depth": 3,
            "init": "gaussian",
            "init_scale": 1e-3,
            "validation": "auto",
            "offsets": "auto",
            "widths": None,
        },
    )
    D.check_fit(small, {"depth": 2, "init": "constant", "init_scale": 2.0})


# --------------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def noisy():
    return D.synthetic_sparse_regression(9, 14, 3, noise=0.1, seed=5)


def _same(a, b):
    """Two fits bit for bit: parameters, status, steps and every trajectory field."""
    assert (a.status, a.n_steps) == (b.status, b.n_steps)
    for pa, pb in zip(a.factors, b.factors, strict=True):
        np.testing.assert_array_equal(pa, pb)
    da, db = a.trajectory.as_dict(), b.trajectory.as_dict()
    assert sorted(da) == sorted(db)
    for name in da:
        np.testing.assert_array_equal(da[name], db[name], err_msg=name)


@pytest.mark.parametrize("optimizer, lr", [("gd", 0.02), ("grouprmsprop", 1e-2), ("adam", 1e-2)])
def test_fit_matches_numpy_loop_and_records(noisy, optimizer, lr):
    depth, alpha, steps = 3, 0.7, 40
    res = fastdmf.fit(
        noisy,
        depth=depth,
        init_scale=alpha,
        optimizer=optimizer,
        lr=lr,
        max_steps=steps,
        record=10,
        tol=0,
        seed=0,
        progress=False,
    )
    assert isinstance(res, D.DiagonalResult) and res.depth == depth
    spec = get_optimizer(optimizer)
    theta, losses = numpy_run(
        noisy, np.full(28, alpha), depth, spec.code, spec.hyper(lr, {}), steps
    )
    got = np.r_[res.factors[0], res.factors[1]]
    np.testing.assert_allclose(got, theta, rtol=1e-12, atol=1e-14)
    w = theta[:14] ** 3 - theta[14:] ** 3
    np.testing.assert_allclose(res.coef, w, rtol=1e-11, atol=1e-14)
    traj = res.trajectory
    np.testing.assert_array_equal(traj.step, [0, 10, 20, 30, 40])
    final = D.reference_loss_and_grad(theta[:14], theta[14:], noisy.X, noisy.y, depth)
    want = np.r_[losses[0:40:10], final[0]]
    np.testing.assert_allclose(traj.train_loss, want, rtol=1e-11)
    ref = D.record_values(w, alpha, depth, noisy.ground_truth)
    for name in ("l1", "l2", "potential", "test_error"):
        assert getattr(traj, name)[-1] == pytest.approx(ref[name], rel=1e-10), name
    assert traj.support[-1] == ref["support"]
    assert traj.grad_norm[-1] == pytest.approx(np.linalg.norm(np.r_[final[1], final[2]]), rel=1e-10)
    np.testing.assert_allclose(res.predict(noisy.X), noisy.X @ w, rtol=1e-10, atol=1e-13)
    assert traj.l1[0] == 0.0 and traj.potential[0] == 0.0  # w(0) = 0


def test_fit_records_the_error_on_held_out_samples(noisy):
    train, test = fastdmf.sparse_regression(noisy.X, noisy.y).split(0.3, seed=1)
    res = fastdmf.fit(
        train,
        depth=2,
        init_scale=0.5,
        optimizer="gd",
        lr=0.02,
        max_steps=30,
        record=10,
        tol=0,
        test=test,
        seed=0,
        progress=False,
    )
    assert res.trajectory.test_error[-1] == pytest.approx(
        np.mean((test.X @ res.coef - test.y) ** 2), rel=1e-12
    )
    assert np.all(np.isnan(res.trajectory.val_error))
    none = fastdmf.fit(
        train,
        depth=2,
        init_scale=0.5,
        optimizer="gd",
        lr=0.02,
        max_steps=30,
        record=10,
        tol=0,
        seed=0,
        progress=False,
    )
    assert np.all(np.isnan(none.trajectory.test_error))
    np.testing.assert_array_equal(none.coef, res.coef)  # held-out samples do not steer


FLOW = {
    "optimizer": "flow",
    "max_time": 1e12,
    "tol": 1e-14,
    "max_steps": 1_000_000,
    "record": None,
    "optimizer_options": {"rtol": 1e-10, "atol": 1e-14},
    "progress": False,
    "seed": 0,
}


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("alpha", [1e-2, 0.1, 1.0, 3.0])
def test_flow_limit_is_the_diagonal_limit(depth, alpha):
    """Fresh problems (seeds no other test uses); the limit from Newton on the dual."""
    seed = 700 + 10 * depth + int(np.log10(alpha) * 3 + 10)
    p = fastdmf.synthetic_sparse_regression(8, 20, 2, seed=seed)
    res = fastdmf.fit(p, depth=depth, init_scale=alpha, **FLOW)
    assert res.train_loss <= 1e-13
    limit = fastdmf.theory.diagonal_limit(p, alpha, depth).settings["coef"]
    assert np.linalg.norm(res.coef - limit) <= 1e-4 * np.linalg.norm(limit)
    assert res.trajectory.potential[-1] == pytest.approx(potential(limit, alpha, depth), rel=1e-4)


@pytest.mark.parametrize("depth, alpha", [(2, 1e-12), (3, 1e-3), (4, 1e-3)])
def test_small_alpha_reaches_basis_pursuit(depth, alpha):
    p = fastdmf.synthetic_sparse_regression(10, 30, 2, seed=12)
    res = fastdmf.fit(p, depth=depth, init_scale=alpha, **FLOW)
    bp = fastdmf.baselines.basis_pursuit(p).settings["coef"]
    l1_bp = np.abs(bp).sum()
    assert res.train_loss <= 1e-10  # the interpolant, to ~1e-5 relative in ||Xw - y||
    assert abs(res.trajectory.l1[-1] - l1_bp) <= 1e-3 * l1_bp
    assert res.trajectory.support[-1] == 2


@pytest.mark.parametrize("depth", [2, 3])
def test_large_alpha_approaches_the_minimum_l2_interpolant(depth):
    p = fastdmf.synthetic_sparse_regression(10, 30, 2, seed=12)
    mn = fastdmf.baselines.min_norm_interpolant(p).settings["coef"]
    gaps = []
    for alpha in (1.0, 3.0, 10.0):
        res = fastdmf.fit(p, depth=depth, init_scale=alpha, **FLOW)
        gaps.append(np.linalg.norm(res.coef - mn) / np.linalg.norm(mn))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] <= 1e-5


def test_fit_batch_equals_serial_fits_bit_for_bit(noisy):
    kw = dict(depth=3, optimizer="grouprmsprop", lr=1e-2, max_steps=60, record=20, tol=0)
    scales = [0.3, 0.6, 1.0]
    batch = fastdmf.fit_batch(noisy, seeds=[0, 1, 2], init_scale=scales, **kw)
    for seed, scale, got in zip([0, 1, 2], scales, batch, strict=True):
        assert isinstance(got, D.DiagonalResult)
        _same(got, fastdmf.fit(noisy, seed=seed, init_scale=scale, progress=False, **kw))
    # each trial's potential is Q at its own alpha
    assert batch[0].trajectory.potential[-1] == pytest.approx(
        potential(batch[0].coef, 0.3, 3), rel=1e-12
    )


@pytest.mark.parametrize("method", ["flow", "flow_dopri5"])
def test_fit_batch_flow_equals_serial_flow_fits_bit_for_bit(noisy, tmp_path, method):
    """The kind's batched flow: each trial (its own scale, first step, end time and
    tolerance) equals its serial flow fit bit for bit, and so do its checkpoints resumed
    together by resume_batch."""
    kw = dict(depth=3, optimizer=method, max_steps=100_000, record=2.0, tol=0)
    scales, rates, times, rtols = (
        [0.3, 0.6, 1.0],
        [1e-2, 1e-3, 1e-2],
        [12.0, 8.0, 5.0],
        [1e-6, 1e-5, 1e-7],
    )
    paths = [tmp_path / f"t{b}.ckpt" for b in range(3)]
    batch = fastdmf.fit_batch(
        noisy,
        seeds=[0, 1, 2],
        init_scale=scales,
        lr=rates,
        max_time=times,
        optimizer_options={"rtol": rtols},
        checkpoint=paths,
        **kw,
    )
    for b, got in enumerate(batch):
        assert isinstance(got, D.DiagonalResult)
        ref = fastdmf.fit(
            noisy,
            seed=b,
            init_scale=scales[b],
            lr=rates[b],
            max_time=times[b],
            optimizer_options={"rtol": rtols[b]},
            progress=False,
            **kw,
        )
        assert ref.settings["kernels"] != got.settings["kernels"]  # serial vs batched
        _same(got, ref)
        assert got.trajectory.time[-1] == times[b] and got.status == "max_time"
    for got, want in zip(fastdmf.resume_batch(paths), batch, strict=True):
        _same(got, want)


@pytest.mark.parametrize("optimizer", ["adam", "flow"])
def test_checkpoint_resume_is_bit_identical(noisy, tmp_path, optimizer):
    if optimizer == "flow":
        kw = dict(
            depth=2,
            init_scale=0.3,
            optimizer="flow",
            lr=1e-2,
            max_time=40.0,
            record=2.0,
            max_steps=100_000,
            tol=0,
            seed=0,
        )
        every, stop = 1, 10.0
    else:
        kw = dict(
            depth=3,
            init_scale=0.5,
            optimizer="adam",
            lr=1e-2,
            max_steps=300,
            record=50,
            tol=0,
            seed=0,
        )
        every, stop = 50, 150

    def cb(record):
        if record["step" if optimizer != "flow" else "time"] >= stop:
            raise KeyboardInterrupt

    ref = fastdmf.fit(noisy, progress=False, **kw)
    path = tmp_path / "fit.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fastdmf.fit(
            noisy, checkpoint=path, checkpoint_every=every, callback=cb, progress=False, **kw
        )
    res = fastdmf.resume(path, progress=False)
    assert isinstance(res, D.DiagonalResult)
    _same(ref, res)
    assert "l1" in res.trajectory.as_dict()


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"init_scale": -0.1}, ValueError, "init_scale"),
        ({"widths": [4]}, ValueError, "hidden widths"),
        ({"validation": 0.2}, TypeError, "validation="),
        ({"offsets": "biases"}, TypeError, "offsets="),
        ({"init": "orthogonal"}, ValueError, "constant"),
        ({"depth": 0}, ValueError, "depth"),
        ({"backend": "cuda"}, ValueError, "CPU"),
    ],
)
def test_fit_refuses_bad_arguments(noisy, kwargs, err, match):
    args = {"depth": 2, "max_steps": 5, "progress": False, **kwargs}
    with pytest.raises(err, match=match):
        fastdmf.fit(noisy, **args)


def test_fit_refuses_test_data_of_another_kind(noisy):
    other = fastdmf.synthetic_completion(shape=(4, 4), rank=1, n_observed=8, seed=0)
    with pytest.raises(TypeError, match="held-out samples"):
        fastdmf.fit(noisy, depth=2, max_steps=5, test=other, progress=False)
    wrong = D.synthetic_sparse_regression(3, 10, 1, seed=0)
    with pytest.raises(ValueError, match="features|shape"):
        fastdmf.fit(noisy, depth=2, max_steps=5, test=wrong, progress=False)


def test_sweep_over_depth_and_alpha_records_the_kinds_values(noisy, tmp_path):
    kw = dict(optimizer="gd", lr=0.02, max_steps=30, record=10, tol=0)
    table = fastdmf.sweep(
        {"depth": [2, 3], "init_scale": [0.3, 1.0]},
        out=tmp_path / "sw",
        problem=noisy,
        workers=1,
        progress=False,
        **kw,
    )
    cols = table.columns()
    assert len(cols["l1"]) == 4
    for k in range(4):
        depth, alpha = int(cols["depth"][k]), float(cols["init_scale"][k])
        ref = fastdmf.fit(
            noisy, depth=depth, init_scale=alpha, seed=int(cols["seed"][k]), progress=False, **kw
        )
        for name in ("train_loss", "test_error", "l1", "l2", "potential"):
            assert cols[name][k] == getattr(ref.trajectory, name)[-1], name


# --------------------------------------------------------------------------- the experiment


def test_reproduce_diagonal_quick(tmp_path):
    """``fastdmf reproduce diagonal --quick`` through the command line: the tables it writes
    hold the kernel-to-rich transition."""
    from fastdmf.cli import main
    from fastdmf.experiments import diagonal as E
    from fastdmf.experiments._report import read_csv

    assert main(["reproduce", "diagonal", "--quick", "--out", str(tmp_path)]) == 0
    cfg = E.QUICK
    rows = read_csv(tmp_path / "transition.csv")
    assert len(rows) == len(cfg["seeds"]) * (2 + len(cfg["depths"]) * len(cfg["alphas"]))
    flows = [r for r in rows if r["method"] == "flow"]
    bp = {r["seed"]: r for r in rows if r["method"] == "basis_pursuit"}
    l2 = {r["seed"]: r for r in rows if r["method"] == "min_l2"}
    for r in flows:  # (the flow stops at train loss E.TOL, a residual ~1e-5 relative)
        assert r["limit_gap"] <= 1e-4  # the flow's limit is diagonal_limit
        assert r["l1"] >= bp[r["seed"]]["l1"] * (1 - 1e-5)  # basis pursuit is the least l1
        assert r["l2"] >= l2[r["seed"]]["l2"] * (1 - 1e-5)  # and min-l2 the least l2

    def at(depth, alpha):
        return next(r for r in flows if r["depth"] == depth and r["alpha"] == alpha)

    small, large = min(cfg["alphas"]), max(cfg["alphas"])
    rich = at(max(cfg["depths"]), small)
    assert rich["test_error"] <= 1e-6 and rich["support"] == cfg["sparsity"]
    for depth in cfg["depths"]:
        assert at(depth, large)["l1"] > at(depth, small)["l1"]
        assert at(depth, large)["l1"] == pytest.approx(l2[0]["l1"], rel=1e-3)  # kernel regime
        assert at(depth, large)["test_error"] > 0.5
    # deeper is sparser at the same alpha
    assert at(3, 0.1)["l1"] < at(2, 0.1)["l1"]
    rec = read_csv(tmp_path / "recovery.csv")
    n_max = max(cfg["rec_samples"])
    assert all(
        r["recovered"] == 1
        for r in rec
        if r["method"] == "basis_pursuit" and r["n_samples"] == n_max
    )
    assert all(r["recovered"] == 0 for r in rec if r["method"] == "min_l2")
    text = (tmp_path / "diagonal.md").read_text()
    assert "## Depth 3" in text and "Recovery rate" in text


def test_loss_and_grad_building_block(noisy):
    params = D.DiagonalParams([np.linspace(0.2, 1.0, 14), np.linspace(0.9, 0.1, 14)], 3)
    loss, (du, dv) = fastdmf.loss_and_grad(params, noisy)
    ref, rdu, rdv = D.reference_loss_and_grad(params[0], params[1], noisy.X, noisy.y, 3)
    assert loss == pytest.approx(ref, rel=1e-13)
    np.testing.assert_allclose(du, rdu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv, rdv, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="DiagonalParams"):
        fastdmf.loss_and_grad([params[0], params[1]], noisy)  # no depth


def test_dopri5_flow_reaches_the_limit_too():
    p = fastdmf.synthetic_sparse_regression(8, 20, 2, seed=801)
    res = fastdmf.fit(p, depth=3, init_scale=0.3, **{**FLOW, "optimizer": "flow_dopri5"})
    limit = fastdmf.theory.diagonal_limit(p, 0.3, 3).settings["coef"]
    assert res.train_loss <= 1e-13
    assert np.linalg.norm(res.coef - limit) <= 1e-4 * np.linalg.norm(limit)
