"""Soft-Impute, checked by its optimality condition and against a plain NumPy loop.

Z minimises (1/2) ||P_Omega(Z - Y)||_F^2 + lam ||Z||_* exactly when G = P_Omega(Y - Z)
satisfies G / lam = U V^T + R with U^T R = 0, R V = 0 and ||R||_op <= 1 (U, V: Z's singular
vectors); equivalently Z = SVT_lam(Z + G). The tests recompute both from the returned matrix.
"""

import numpy as np
import pytest

import fastdmf
from fastdmf.baselines import soft_impute


def svt(a, lam):
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    return (u * np.maximum(s - lam, 0.0)) @ vt


def reference(problem, lam, tol=1e-13, max_iter=20000):
    """Mazumder et al.'s Algorithm 1 at one lam from Z = 0, written out in NumPy."""
    mask = np.zeros(problem.shape, dtype=bool)
    mask[problem.rows, problem.cols] = True
    y = np.zeros(problem.shape)
    y[problem.rows, problem.cols] = problem.values
    z = np.zeros(problem.shape)
    for _ in range(max_iter):
        new = svt(np.where(mask, y, z), lam)
        if np.linalg.norm(new - z) <= tol * max(np.linalg.norm(z), 1e-300):
            return new
        z = new
    raise AssertionError("the reference did not converge")


def residual_matrix(problem, z):
    g = np.zeros(problem.shape)
    g[problem.rows, problem.cols] = problem.values - z[problem.rows, problem.cols]
    return g


@pytest.fixture(scope="module")
def noisy():
    """40 x 30, rank 3 plus noise, half the entries observed."""
    p = fastdmf.synthetic_completion(shape=(40, 30), rank=3, n_observed=600, seed=3)
    noise = 0.3 * np.random.default_rng(5).standard_normal(p.n_observed)
    return fastdmf.completion(p.rows, p.cols, p.values + noise, shape=p.shape)


@pytest.mark.parametrize("lam", [0.5, 3.0, 10.0])
def test_fixed_point_meets_the_optimality_condition(noisy, lam):
    res = soft_impute(noisy, lam=lam, tol=1e-11, max_iter=20000)
    assert res.status == "converged" and res.settings["lam"] == lam
    z = res.matrix()
    g = residual_matrix(noisy, z)
    np.testing.assert_allclose(svt(z + g, lam), z, atol=1e-8)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    r = int(np.sum(s > 1e-8 * max(s[0], 1e-300)))
    assert 0 < r < min(noisy.shape)  # a non-trivial subgradient: R is not empty
    u, v = u[:, :r], vt[:r].T
    rest = g / lam - u @ v.T
    assert np.linalg.norm(u.T @ rest, 2) <= 1e-6
    assert np.linalg.norm(rest @ v, 2) <= 1e-6
    assert np.linalg.norm(rest, 2) <= 1 + 1e-6


@pytest.mark.parametrize("lam", [0.7, 4.0])
def test_matches_a_numpy_loop(noisy, lam):
    res = soft_impute(noisy, lam=lam, tol=1e-12, max_iter=50000)
    np.testing.assert_allclose(res.matrix(), reference(noisy, lam), atol=1e-7)


def test_fully_observed_is_one_threshold():
    """With every entry observed the problem is the SVT itself: Z = SVT_lam(Y), and
    lam -> 0 returns Y."""
    y = np.random.default_rng(0).standard_normal((12, 9))
    p = fastdmf.completion(y)
    for lam in (2.0, 1e-9):
        z = soft_impute(p, lam=lam, tol=1e-12).matrix()
        np.testing.assert_allclose(z, svt(y, lam), atol=1e-10)
    np.testing.assert_allclose(z, y, atol=1e-8)


def test_lambda_above_the_top_singular_value_gives_zero(noisy):
    y = residual_matrix(noisy, np.zeros(noisy.shape))
    top = np.linalg.norm(y, 2)
    assert not np.any(soft_impute(noisy, lam=1.001 * top).matrix())
    assert np.any(soft_impute(noisy, lam=0.9 * top).matrix())


def test_validation_choice_reproduces_the_split(noisy):
    """The held-out RMSE of each lam on the path equals a fresh fit on
    ``problem.split(validation, seed)``'s training part, scored on its test part; the final
    lam is the best one scaled by |Omega| / |Omega_train|, and the seed fixes all of it."""
    kw = dict(
        validation=0.2,
        seed=7,
        n_lambdas=6,
        lam_ratio=1e-2,
        patience=None,
        tol=1e-11,
        max_iter=20000,
    )
    res = soft_impute(noisy, **kw)
    train, val = noisy.split(0.2, seed=7)
    path, rmse = res.settings["validation_path"], res.settings["validation_rmse"]
    for k in (1, 3, 5):
        z = soft_impute(train, lam=float(path[k]), tol=1e-11, max_iter=20000).matrix()
        got = np.sqrt(np.mean((z[val.rows, val.cols] - val.values) ** 2))
        np.testing.assert_allclose(rmse[k], got, rtol=1e-6)
    best = int(np.argmin(rmse))
    assert res.settings["lam_validation"] == path[best]
    scale = noisy.n_observed / train.n_observed
    np.testing.assert_allclose(res.settings["lam"], path[best] * scale)
    again = soft_impute(noisy, **kw)
    np.testing.assert_array_equal(again.matrix(), res.matrix())
    other = soft_impute(noisy, **{**kw, "seed": 8})
    assert not np.array_equal(other.settings["validation_rmse"], rmse)


def test_patience_stops_the_path_after_the_best():
    """Pure noise: the held-out error is best at Z = 0 (the largest lam) and the path stops
    `patience` values later."""
    y = np.random.default_rng(1).standard_normal((30, 20))
    y[np.random.default_rng(2).random(y.shape) < 0.3] = np.nan
    res = soft_impute(fastdmf.completion(y), n_lambdas=15, patience=2)
    rmse = res.settings["validation_rmse"]
    done = int(np.sum(np.isfinite(rmse)))
    assert done < 15 and np.argmin(rmse[:done]) == done - 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lam": -1.0}, "lam must be a positive number"),
        ({"lam": np.nan}, "lam must be a positive number"),
        ({"validation": 1.0}, "validation must be a fraction"),
        ({"n_lambdas": 0}, "n_lambdas must be a positive integer"),
        ({"lam_ratio": 2.0}, "lam_ratio must be a number in"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"tol": 0.0}, "tol must be a number in"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
    ],
)
def test_bad_arguments(noisy, kwargs, match):
    with pytest.raises(ValueError, match=match):
        soft_impute(noisy, **kwargs)


def test_rejects_sensing_and_other_inputs():
    sensing = fastdmf.synthetic_sensing(shape=(6, 5), rank=1, n_measurements=20, seed=0)
    with pytest.raises(TypeError, match="completion problems"):
        soft_impute(sensing)
    with pytest.raises(TypeError, match="CompletionProblem"):
        soft_impute(np.ones((3, 3)))
