"""The diagonal network as a problem kind: its records, held-out error and result against
NumPy; fit with every optimiser against NumPy loops and the exact limits; batch, checkpoint
and argument checks."""

import numpy as np
import pytest

from fastdmf import diagonal as D
from fastdmf.diagonal_theory import potential


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
    rec = D.measure(lay.unpack(theta), lay.unpack(grad), 0.25, 7, 0.5, 9, small,
                    init_scale=alpha)
    u, v = theta[:30], theta[30:]
    w = u**3 - v**3
    truth = small.ground_truth
    assert rec["step"] == 7 and rec["time"] == 0.5 and rec["n_evals"] == 9
    assert rec["train_loss"] == 0.25 and np.isnan(rec["val_error"])
    assert rec["l1"] == pytest.approx(np.abs(w).sum(), rel=1e-14)
    assert rec["l2"] == pytest.approx(np.sqrt((w**2).sum()), rel=1e-14)
    assert rec["test_error"] == pytest.approx(((w - truth) ** 2).sum() / (truth**2).sum(),
                                              rel=1e-13)
    assert rec["grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-14)
    assert rec["param_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-14)
    big = np.abs(w).max()
    assert rec["support"] == int(np.sum(np.abs(w) > D.SUPPORT_RTOL * big))
    assert rec["potential"] == pytest.approx(potential(w, alpha, 3), rel=1e-12)


def test_measure_potential_depth2_is_woodworths_q(small):
    lay = D.layout(small.shape, 2)
    theta = np.random.default_rng(1).uniform(0.0, 0.8, lay.size)
    rec = D.measure(lay.unpack(theta), lay.unpack(theta), 1.0, 0, 0.0, 0, small,
                    init_scale=0.3)
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
    assert np.isnan(D.measure(params, params, 1.0, 0, 0.0, 0, train,
                              init_scale=0.5)["test_error"])
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


@pytest.mark.parametrize("kwargs, err, match", [
    ({"widths": [3]}, ValueError, "hidden widths"),
    ({"validation": 0.1}, ValueError, "validation"),
    ({"offsets": "biases"}, ValueError, "offsets"),
    ({"init": "identity"}, ValueError, "constant"),
    ({"init": [np.ones(30), np.ones(30)]}, TypeError, "init"),
    ({"init_scale": 0.0}, ValueError, "init_scale"),
    ({"init_scale": -1.0}, ValueError, "init_scale"),
    ({"depth": 0}, ValueError, "depth"),
])
def test_check_fit_refuses(small, kwargs, err, match):
    args = {"depth": 2, "init": "constant", "init_scale": 0.1, **kwargs}
    with pytest.raises(err, match=match):
        D.check_fit(small, args)


def test_check_fit_accepts_defaults(small):
    D.check_fit(small, {"depth": 3, "init": "gaussian", "init_scale": 1e-3,
                        "validation": "auto", "offsets": "auto", "widths": None})
    D.check_fit(small, {"depth": 2, "init": "constant", "init_scale": 2.0})
