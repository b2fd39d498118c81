"""DMFImputer: a scikit-learn transformer that passes the estimator checks and fills NaN
entries with the deep factorization's completion."""

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf.sklearn import DMFImputer  # noqa: E402


# every check passes: no expected_failed_checks to list
@parametrize_with_checks([DMFImputer(max_steps=300, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def low_rank(m=30, n=20, rank=2, missing=0.3, seed=0):
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal((m, rank)), rng.standard_normal((rank, n))
    X = 5.0 * (u @ v)
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < missing] = np.nan
    return X, X_missing, v


def standardise(Xm):
    """Column means and standard deviations of the observed entries (the oracle of
    DMFImputer's standardisation)."""
    return np.nanmean(Xm, axis=0), np.nanstd(Xm, axis=0)


# every observed entry, no offsets, the paper's learning rate
PLAIN = dict(validation=None, offsets=None, lr=1e-3)


def test_fills_with_the_fitted_factorization():
    X, Xm, _ = low_rank()
    imp = DMFImputer(depth=3, max_steps=20_000, random_state=0, **PLAIN)
    filled = imp.fit_transform(Xm)
    obs = ~np.isnan(Xm)
    np.testing.assert_array_equal(filled[obs], Xm[obs])  # observed entries kept
    mean, std = standardise(Xm)
    np.testing.assert_allclose(imp.mean_, mean, rtol=1e-13)
    np.testing.assert_allclose(imp.scale_, std, rtol=1e-13)
    # the oracle: fastdmf.fit on the standardised observed entries
    rows, cols = np.nonzero(obs)
    z = (Xm[obs] - mean[cols]) / std[cols]
    ref = fastdmf.fit(
        (rows, cols, z),
        shape=Xm.shape,
        depth=3,
        max_steps=20_000,
        seed=imp.result_.settings["seed"],
        progress=False,
        **PLAIN,
    )
    want = ref.matrix() * std + mean
    np.testing.assert_allclose(filled[~obs], want[~obs], rtol=1e-10, atol=1e-10)
    assert imp.status_ == ref.status == "converged" and imp.n_steps_ == ref.n_steps
    err = np.linalg.norm(filled - X) / np.linalg.norm(X)
    assert err < 1e-2  # depth 3 recovers the rank-2 matrix from 70% of its entries
    # rows seen in fit, in any order or subset, get the same fills
    idx = np.array([7, 3, 29, 0])
    np.testing.assert_array_equal(imp.transform(Xm[idx]), filled[idx])


def test_new_rows_are_projected_on_the_learned_columns():
    X, Xm, v = low_rank()
    imp = DMFImputer(depth=3, max_steps=20_000, random_state=1, **PLAIN).fit(Xm)
    rng = np.random.default_rng(9)
    new = rng.standard_normal((4, 2)) @ v * 5.0  # new samples from the same row space
    centred = (new - imp.mean_) / imp.scale_
    # the fitted W's row space holds the rank-2 standardised truth and the centring
    # direction only approximately; project the oracle the same way: least squares on C
    comp = imp.components_ / imp.scale_
    new_missing = new.copy()
    new_missing[:, ::3] = np.nan
    out = imp.transform(new_missing)
    keep = ~np.isnan(new_missing[0])
    for r in range(4):
        u, *_ = np.linalg.lstsq(comp[:, keep].T, centred[r, keep], rcond=1e-3)
        np.testing.assert_allclose(
            out[r, ~keep], (u @ comp * imp.scale_ + imp.mean_)[~keep], rtol=1e-9, atol=1e-9
        )
    # a row with nothing observed: each column's mean (0 in standardised units)
    np.testing.assert_allclose(imp.transform(np.full((1, 20), np.nan))[0], imp.mean_)


def test_new_rows_with_offsets_are_projected_with_their_own_row_offset():
    X, Xm, _ = low_rank(m=40, n=12)
    Xm = Xm + np.arange(12.0) + np.linspace(0.0, 3.0, 40)[:, None]  # column and row effects
    imp = DMFImputer(random_state=0).fit(Xm)
    off = imp.offsets_
    assert off is not None and off.kind == "biases"
    rng = np.random.default_rng(2)
    sample = Xm[~np.isnan(Xm).any(axis=1)][0] + 0.3 * rng.standard_normal(12)  # unseen
    sample[[1, 4, 8]] = np.nan
    out = imp.transform(sample[None])[0]
    obs = ~np.isnan(sample)
    np.testing.assert_array_equal(out[obs], sample[obs])
    # the oracle: the minimum-norm least-squares coefficients on [C; 1] (pseudo-inverse with
    # the same cut-off) of the standardised sample minus the column offsets
    comp = imp.components_ / imp.scale_
    basis = np.vstack([comp, np.ones((1, 12))])
    z = (sample - imp.mean_) / imp.scale_
    base = off.mean + off.col
    coef = np.linalg.pinv(basis[:, obs].T, rcond=1e-3) @ (z[obs] - base[obs])
    want = (base + coef @ basis) * imp.scale_ + imp.mean_
    np.testing.assert_allclose(out[~obs], want[~obs], rtol=1e-9, atol=1e-9)


def test_depth_one_fills_new_rows_with_offsets():
    _, Xm, _ = low_rank(m=8, n=6)
    imp = DMFImputer(depth=1, max_steps=2000, random_state=0).fit(Xm)
    row = np.array([[1.0, np.nan, 2.0, np.nan, 3.0, 4.0]])
    off = imp.offsets_
    z = (row[0] - imp.mean_) / imp.scale_
    obs = ~np.isnan(row[0])
    base = off.mean + off.col
    b = np.mean(z[obs] - base[obs])  # the new row's own offset, by least squares
    want = row[0].copy()
    want[~obs] = ((base + b) * imp.scale_ + imp.mean_)[~obs]
    np.testing.assert_allclose(imp.transform(row)[0], want, rtol=1e-12)


def test_errors_and_lazy_import(same_fastdmf):
    with pytest.raises(ValueError, match="no observed entries"):
        DMFImputer().fit(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="infinity"):
        DMFImputer().fit(np.array([[1.0, np.inf], [np.nan, 2.0]]))
    assert fastdmf.DMFImputer is DMFImputer
    with pytest.raises(AttributeError, match="no attribute"):
        fastdmf.NoSuchThing  # noqa: B018
    import subprocess
    import sys

    code = "import sys, fastdmf; print('sklearn' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, **same_fastdmf
    )
    assert out.stdout.strip() == "False"


def test_feature_names_out_and_pandas_output():
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer

    _, Xm, _ = low_rank(m=12, n=5)
    cols = [f"c{i}" for i in range(5)]
    df = pd.DataFrame(Xm, columns=cols)
    imp = DMFImputer(depth=2, max_steps=300, random_state=0).fit(df)
    assert imp.n_features_in_ == 5
    assert list(imp.feature_names_in_) == cols
    assert list(imp.get_feature_names_out()) == cols
    filled = imp.transform(df)
    out = imp.set_output(transform="pandas").transform(df)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == cols and list(out.index) == list(df.index)
    np.testing.assert_array_equal(out.to_numpy(), filled)
    # unnamed input: x0, x1, ...
    imp_np = DMFImputer(depth=2, max_steps=300, random_state=0).fit(Xm)
    assert not hasattr(imp_np, "feature_names_in_")
    assert list(imp_np.get_feature_names_out()) == [f"x{i}" for i in range(5)]
    # inside a ColumnTransformer with pandas output
    ct = ColumnTransformer(
        [("imp", DMFImputer(depth=2, max_steps=300, random_state=0), cols[:3])],
        remainder="passthrough",
    )
    res = ct.set_output(transform="pandas").fit_transform(df)
    assert isinstance(res, pd.DataFrame)
    assert list(res.columns) == ["imp__c0", "imp__c1", "imp__c2", "remainder__c3", "remainder__c4"]
    assert not res[["imp__c0", "imp__c1", "imp__c2"]].isna().any().any()


@pytest.mark.parametrize("depth", [1, 3])
def test_rows_with_nothing_observed_get_the_column_offsets(depth):
    _, Xm, _ = low_rank()
    Xm[[5, 11]] = np.nan  # two samples with nothing observed
    imp = DMFImputer(depth=depth, max_steps=2000, random_state=0)
    filled = imp.fit_transform(Xm)
    off = imp.offsets_
    col_fill = (off.mean + off.col) * imp.scale_ + imp.mean_
    np.testing.assert_allclose(filled[[5, 11]], np.tile(col_fill, (2, 1)), rtol=1e-12)
    # the other rows are still filled from their rows of the fitted model
    obs = ~np.isnan(Xm)
    keep = np.setdiff1d(np.arange(len(Xm)), [5, 11])
    full = imp.result_.matrix() * imp.scale_ + imp.mean_
    np.testing.assert_allclose(
        filled[keep][~obs[keep]], full[keep][~obs[keep]], rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(filled[obs], Xm[obs])
    np.testing.assert_array_equal(imp.transform(Xm), filled)
    # an all-NaN row in a later transform gets the same, not the leftovers of a training row
    np.testing.assert_allclose(
        imp.transform(np.full((2, 20), np.nan)), np.tile(col_fill, (2, 1)), rtol=1e-12
    )
    np.testing.assert_array_equal(imp.transform(Xm[[11, 0]]), filled[[11, 0]])


def test_defaults_beat_column_means_on_noisy_data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 3)) @ rng.standard_normal((3, 15)) * 2.0 + 10.0
    noisy = X + 0.5 * rng.standard_normal(X.shape)
    Xm = noisy.copy()
    Xm[rng.random(X.shape) < 0.3] = np.nan
    imp = DMFImputer(random_state=0)
    filled = imp.fit_transform(Xm)
    gap = np.isnan(Xm)
    err = np.sqrt(np.mean((filled[gap] - X[gap]) ** 2))
    base = np.sqrt(np.mean((np.nanmean(Xm, axis=0)[np.nonzero(gap)[1]] - X[gap]) ** 2))
    assert err < 0.4 * base
    assert imp.result_.settings["refit"]["chosen_status"] == imp.status_
    assert imp.status_ in ("early_stopped", "no_improvement")


def test_without_scikit_learn_the_imputer_says_what_to_install(same_fastdmf):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import fastdmf\n"
        "try:\n    fastdmf.DMFImputer\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, **same_fastdmf
    )
    assert 'pip install "fastdmf[sklearn]"' in out.stdout
