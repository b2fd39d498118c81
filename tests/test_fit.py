"""fit(): statuses, stopping, reproducibility, optimisers against the reference, records."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import fastdmf
from fastdmf import reference

SMALL = dict(depth=3, lr=1e-2, seed=0, record=None)


def test_result_type_and_fields(square):
    res = fastdmf.fit(square, depth=3, max_steps=50, record=10, seed=1)
    assert isinstance(res, fastdmf.FitResult)
    assert res.status == "max_steps" and res.n_steps == 50
    assert [w.shape for w in res.factors] == [(12, 12)] * 3
    # W = W_3 W_2 W_1 written out, and it is the matrix the kernels trained: its mean squared
    # error on the observed entries is the loss recorded at the last step
    w = res.factors[2] @ res.factors[1] @ res.factors[0]
    np.testing.assert_allclose(res.matrix(), w, rtol=1e-12, atol=1e-15)
    mse = np.mean((w[square.rows, square.cols] - square.values) ** 2)
    assert res.trajectory.train_loss[-1] == pytest.approx(mse, rel=1e-10)
    traj = res.trajectory
    np.testing.assert_array_equal(traj.step, [0, 10, 20, 30, 40, 50])
    assert res.settings["seed"] == 1
    assert res.settings["arguments"]["depth"] == 3
    assert set(res.settings["versions"]) >= {"fastdmf", "numpy", "numba", "scipy"}
    assert "status='max_steps'" in repr(res)


@pytest.mark.parametrize("name", ["gd", "grouprmsprop", "adam"])
def test_compiled_loop_matches_reference_optimizer(square, name):
    """Ten steps of the compiled loop equal ten reference steps (loss and gradient from the
    NumPy oracle, update from reference.<name>_step)."""
    lr = {"gd": 0.05, "grouprmsprop": 1e-2, "adam": 1e-2}[name]
    res = fastdmf.fit(
        square,
        depth=3,
        optimizer=name,
        lr=lr,
        max_steps=10,
        tol=0,
        init="gaussian",
        init_scale=1.0,
        seed=4,
        record=None,
    )
    layout = fastdmf.factors.FactorLayout.build(square.shape, 3)
    factors = fastdmf.factors.initialize(layout, "gaussian", 1.0, np.random.default_rng(4))
    theta = layout.pack(factors)
    state = {
        "gd": None,
        "grouprmsprop": (0, 0.0),
        "adam": (0, np.zeros_like(theta), np.zeros_like(theta)),
    }[name]
    step_fn = getattr(reference, f"{name}_step")
    time = 0.0
    for _ in range(10):
        _, grads = reference.loss_and_grad(
            layout.unpack(theta), square.rows, square.cols, square.values
        )
        g = layout.pack(grads)
        new, state = step_fn(theta, g, state, lr)
        if name == "grouprmsprop":
            time += np.linalg.norm(new - theta) / np.linalg.norm(g)
        else:
            time += lr
        theta = new
    for got, want in zip(res.factors, layout.unpack(theta)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)
    assert res.trajectory.time[-1] == pytest.approx(time, rel=1e-10)


def test_converges_to_tolerance(square):
    res = fastdmf.fit(square, tol=1e-4, max_steps=200_000, **SMALL)
    assert res.status == "converged"
    assert res.train_loss <= 1e-4
    ref = reference.loss(res.factors, square.rows, square.cols, square.values)
    assert res.train_loss == pytest.approx(ref, rel=1e-10)
    # it stopped at the first step that reached tol: one step fewer is still above it
    short = fastdmf.fit(square, tol=1e-4, max_steps=res.n_steps - 1, **SMALL)
    assert short.status == "max_steps" and short.train_loss > 1e-4


def test_tol_zero_stops_only_at_an_exact_zero_loss():
    """tol=0 turns the threshold off except at a loss of exactly 0, which no step improves.
    Depth 1, GD with lr = |Omega| / 2 from W = 0 lands on the observed values in one step
    (W - lr (2 / |Omega|) (W - Y) = Y exactly); lr = |Omega| / 4 only halves the residual."""
    p = fastdmf.completion([0, 0, 1, 1], [0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0], shape=(2, 2))
    kw = dict(
        depth=1,
        init=[np.zeros((2, 2))],
        optimizer="gd",
        tol=0,
        max_steps=10,
        record=1,
        validation=None,
        offsets=None,
    )
    exact = fastdmf.fit(p, lr=2.0, **kw)
    assert exact.status == "converged" and exact.n_steps == 1
    np.testing.assert_array_equal(exact.factors[0], [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(exact.trajectory.train_loss, [7.5, 0.0])  # mean of y^2
    halving = fastdmf.fit(p, lr=1.0, **kw)
    assert halving.status == "max_steps" and halving.n_steps == 10
    np.testing.assert_allclose(
        halving.trajectory.train_loss, 7.5 * 0.25 ** np.arange(11), rtol=1e-14
    )


def test_tol_zero_runs_all_steps(square):
    res = fastdmf.fit(square, tol=0, max_steps=3000, **SMALL)
    assert res.status == "max_steps" and res.n_steps == 3000


def test_callback_stops(square):
    seen = []

    def cb(record):
        seen.append(record["step"])
        return record["step"] >= 30

    res = fastdmf.fit(square, depth=2, max_steps=1000, record=10, callback=cb, seed=0)
    assert res.status == "stopped" and res.n_steps == 30
    assert seen == [10, 20, 30]


def test_divergence_detected_and_last_good_state_kept(square):
    with pytest.warns(RuntimeWarning, match="smaller learning rate"):
        res = fastdmf.fit(
            square,
            depth=3,
            optimizer="gd",
            lr=50.0,
            init_scale=1.0,
            max_steps=500,
            record=1,
            seed=0,
        )
    assert res.status == "diverged"
    traj = res.trajectory
    assert np.all(np.isfinite(traj.train_loss))
    assert traj.step[-1] == res.n_steps
    assert all(np.all(np.isfinite(w)) for w in res.factors)
    ref = reference.loss(res.factors, square.rows, square.cols, square.values)
    assert ref == pytest.approx(traj.train_loss[-1], rel=1e-10)


def test_seeded_runs_repeat_exactly(square):
    a = fastdmf.fit(square, max_steps=500, **{**SMALL, "seed": 7})
    b = fastdmf.fit(square, max_steps=500, **{**SMALL, "seed": 7})
    c = fastdmf.fit(square, max_steps=500, **{**SMALL, "seed": 8})
    for x, y in zip(a.factors, b.factors):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.factors[0], c.factors[0])


def test_unseeded_run_records_a_seed_that_reproduces_it(square):
    a = fastdmf.fit(square, depth=2, max_steps=100, record=None)
    b = fastdmf.fit(square, depth=2, max_steps=100, record=None, seed=a.settings["seed"])
    np.testing.assert_array_equal(a.factors[1], b.factors[1])


def test_parallel_fit_matches_serial(square):
    a = fastdmf.fit(square, max_steps=200, parallel=False, **SMALL)
    b = fastdmf.fit(square, max_steps=200, parallel=True, n_threads=2, **SMALL)
    assert b.settings["kernels"] == "parallel"
    for x, y in zip(a.factors, b.factors):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-14)


def test_input_forms_give_the_same_fit(square):
    m, n = square.shape
    dense = np.full((m, n), np.nan)
    dense[square.rows, square.cols] = square.values
    coo = sp.coo_array((square.values, (square.rows, square.cols)), shape=(m, n))
    trip = (square.rows, square.cols, square.values)
    # the same observations without the ground truth (which would choose the paper's setup)
    ref = fastdmf.fit(fastdmf.completion(*trip, shape=(m, n)), max_steps=100, **SMALL)
    for obs, kw in ((dense, {}), (coo, {}), (trip, {"shape": (m, n)})):
        res = fastdmf.fit(obs, max_steps=100, **SMALL, **kw)
        np.testing.assert_array_equal(res.factors[0], ref.factors[0])


def test_float32_tracks_float64(square):
    a = fastdmf.fit(square, max_steps=2000, **SMALL)
    b = fastdmf.fit(square, max_steps=2000, dtype="float32", **SMALL)
    assert b.factors[0].dtype == np.float32
    # from a 1e-3 initialisation rounding is amplified while leaving the saddle: compare the
    # end-to-end matrices in relative Frobenius norm, and the losses
    diff = np.linalg.norm(b.matrix() - a.matrix()) / np.linalg.norm(a.matrix())
    assert diff < 1e-2
    assert abs(b.train_loss - a.train_loss) < 1e-4 * a.trajectory.train_loss[0]


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (
            {"optimizer": "sgd"},
            ValueError,
            r"valid names: \['adam', 'flow', 'flow_dopri5', 'gd', 'grouprmsprop'\]",
        ),
        ({"init": "zeros"}, ValueError, "valid names"),
        ({"optimizer_options": {"beta": 1}}, TypeError, "has no option"),
        ({"lr": -1.0}, ValueError, "lr must be"),
        ({"lr": float("nan")}, ValueError, "lr must be"),
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"depth": 0}, ValueError, "depth must be"),
        ({"widths": [3]}, ValueError, "needs 2 hidden width"),
        ({"dtype": "float16"}, ValueError, "dtype must be"),
        ({"max_steps": -1}, ValueError, "max_steps"),
        ({"tol": -1.0}, ValueError, "tol must be"),
        ({"record": 0}, ValueError, "interval"),
        ({"seed": "x"}, TypeError, "seed must be"),
        ({"n_threads": 0}, ValueError, "n_threads"),
    ],
)
def test_bad_arguments_raise_clear_errors(square, kwargs, err, match):
    with pytest.raises(err, match=match):
        fastdmf.fit(square, **{"max_steps": 1, **kwargs})


def test_user_given_factors(square, tall):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((4, 12)), rng.standard_normal((12, 4))]
    res = fastdmf.fit(square, depth=2, init=init, max_steps=0, record=None)
    np.testing.assert_array_equal(res.factors[0], init[0])
    assert res.settings["arguments"]["init"] == "<arrays>"
    with pytest.raises(ValueError, match=r"W_1 has shape"):
        fastdmf.fit(square, depth=2, init=[np.ones((4, 11)), np.ones((12, 4))], max_steps=0)


def test_loss_and_grad_building_block(tall):
    rng = np.random.default_rng(1)
    factors = [rng.standard_normal((5, 9)), rng.standard_normal((17, 5))]
    loss, grads = fastdmf.loss_and_grad(factors, tall)
    ref_loss, ref_grads = reference.loss_and_grad(factors, tall.rows, tall.cols, tall.values)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)


def test_predict_matches_dense_matrix(tall):
    res = fastdmf.fit(tall, depth=3, widths=[4, 6], max_steps=50, seed=0, lr=1e-2)
    rows = np.array([0, 16, 3, 3, 8])
    cols = np.array([0, 8, 2, 2, 5])
    np.testing.assert_allclose(res.predict(rows, cols), res.matrix()[rows, cols], rtol=1e-12)
    with pytest.raises(ValueError, match="out of range"):
        res.predict([17], [0])


def test_no_warnings_on_a_normal_fit(square):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastdmf.fit(square, max_steps=100, **SMALL)


def test_nan_at_a_record_keeps_earlier_records(square):
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = fastdmf.fit(square, depth=2, optimizer="gd", lr=1e300, record=1, max_steps=5, seed=0)
    assert res.status == "diverged" and res.n_steps == 0
    np.testing.assert_array_equal(res.trajectory.step, [0])
    assert "diverged" in repr(res)


def test_zero_steps_records_once(square):
    res = fastdmf.fit(square, depth=2, max_steps=0, seed=0)
    np.testing.assert_array_equal(res.trajectory.step, [0])
    assert res.status == "max_steps"


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"optimizer": "adam", "optimizer_options": {"beta1": 1.0}}, ValueError),
        ({"optimizer_options": {"alpha": 1.5}}, ValueError),
        ({"record": ("log",)}, ValueError),
        ({"record": ("log", 0)}, ValueError),
        ({"record": True}, TypeError),
    ],
)
def test_more_bad_arguments(square, kwargs, err):
    with pytest.raises(err):
        fastdmf.fit(square, max_steps=1, **kwargs)


@pytest.mark.parametrize("optimizer", ["grouprmsprop", "adam"])
@pytest.mark.parametrize("eps", [0, 0.0, -1e-8])
def test_eps_must_be_positive_where_it_divides(square, optimizer, eps):
    default = fastdmf.optim.get_optimizer(optimizer).defaults["eps"]
    with pytest.raises(ValueError, match=rf"option eps must be > 0 .*0 by 0.*default is {default}"):
        fastdmf.fit(square, optimizer=optimizer, max_steps=1, optimizer_options={"eps": eps})


def test_loss_and_grad_takes_triplets(tall):
    rng = np.random.default_rng(2)
    factors = [rng.standard_normal((3, 9)), rng.standard_normal((17, 3))]
    a = fastdmf.loss_and_grad(factors, tall)
    b = fastdmf.loss_and_grad(factors, (tall.rows, tall.cols, tall.values), shape=tall.shape)
    assert a[0] == b[0]


def test_progress_line(square, capsys):
    res = fastdmf.fit(square, depth=2, max_steps=300, record=100, seed=0, progress=True)
    err = capsys.readouterr().err
    assert f"step {res.n_steps:,}/300" in err and "train loss" in err
    assert err.endswith("\n")
