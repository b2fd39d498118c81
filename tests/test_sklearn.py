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


def test_fills_with_the_fitted_factorization():
    X, Xm, _ = low_rank()
    imp = DMFImputer(depth=3, max_steps=20_000, random_state=0)
    filled = imp.fit_transform(Xm)
    obs = ~np.isnan(Xm)
    np.testing.assert_array_equal(filled[obs], Xm[obs])  # observed entries kept
    # the oracle: fastdmf.fit on the observed entries, scaled to unit RMS
    rows, cols = np.nonzero(obs)
    scale = np.sqrt(np.mean(Xm[obs] ** 2))
    assert imp.scale_ == scale
    ref = fastdmf.fit((rows, cols, Xm[obs] / scale), shape=Xm.shape, depth=3, lr=1e-3,
                      init_scale=1e-3, max_steps=20_000, record=None, seed=imp.result_.settings
                      ["seed"])
    np.testing.assert_allclose(filled[~obs], scale * ref.matrix()[~obs], rtol=1e-12,
                               atol=1e-12)
    assert imp.status_ == ref.status == "converged" and imp.n_steps_ == ref.n_steps
    err = np.linalg.norm(filled - X) / np.linalg.norm(X)
    assert err < 1e-2  # depth 3 recovers the rank-2 matrix from 70% of its entries
    # rows seen in fit, in any order or subset, get the same fills
    idx = np.array([7, 3, 29, 0])
    np.testing.assert_array_equal(imp.transform(Xm[idx]), filled[idx])


def test_new_rows_are_projected_on_the_learned_columns():
    X, Xm, v = low_rank()
    imp = DMFImputer(depth=3, max_steps=20_000, random_state=1).fit(Xm)
    rng = np.random.default_rng(9)
    new = rng.standard_normal((4, 2)) @ v * 5.0  # new samples from the same row space
    new_missing = new.copy()
    new_missing[:, ::3] = np.nan
    out = imp.transform(new_missing)
    # the rank-2 truth lies in the learned row space: the projection recovers it
    np.testing.assert_allclose(out, new, rtol=0, atol=1e-2 * np.abs(new).max())
    assert np.all(imp.transform(np.full((1, 20), np.nan)) == 0.0)


def test_depth_one_leaves_unseen_entries_at_zero():
    _, Xm, _ = low_rank(m=8, n=6)
    imp = DMFImputer(depth=1, max_steps=2000, random_state=0).fit(Xm)
    row = np.array([[1.0, np.nan, 2.0, np.nan, 3.0, 4.0]])
    np.testing.assert_array_equal(imp.transform(row), [[1.0, 0.0, 2.0, 0.0, 3.0, 4.0]])


def test_errors_and_lazy_import():
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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
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
    ct = ColumnTransformer([("imp", DMFImputer(depth=2, max_steps=300, random_state=0),
                             cols[:3])], remainder="passthrough")
    res = ct.set_output(transform="pandas").fit_transform(df)
    assert isinstance(res, pd.DataFrame)
    assert list(res.columns) == ["imp__c0", "imp__c1", "imp__c2", "remainder__c3",
                                 "remainder__c4"]
    assert not res[["imp__c0", "imp__c1", "imp__c2"]].isna().any().any()


@pytest.mark.parametrize("depth", [1, 3])
def test_rows_with_nothing_observed_are_zero(depth):
    _, Xm, _ = low_rank()
    Xm[[5, 11]] = np.nan  # two samples with nothing observed
    imp = DMFImputer(depth=depth, max_steps=2000, random_state=0)
    filled = imp.fit_transform(Xm)
    np.testing.assert_array_equal(filled[[5, 11]], 0.0)
    # the other rows are still filled from their rows of the fitted W
    obs = ~np.isnan(Xm)
    keep = np.setdiff1d(np.arange(len(Xm)), [5, 11])
    full = imp.scale_ * imp.result_.matrix()
    np.testing.assert_allclose(filled[keep][~obs[keep]], full[keep][~obs[keep]], rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(filled[obs], Xm[obs])
    np.testing.assert_array_equal(imp.transform(Xm), filled)
    # an all-NaN row in a later transform is 0, not the leftovers of a training row
    np.testing.assert_array_equal(imp.transform(np.full((2, 20), np.nan)), 0.0)
    np.testing.assert_array_equal(imp.transform(Xm[[11, 0]]), filled[[11, 0]])


def test_without_scikit_learn_the_imputer_says_what_to_install():
    import subprocess
    import sys

    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import fastdmf\n"
            "try:\n    fastdmf.DMFImputer\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert 'pip install "fastdmf[sklearn]"' in out.stdout
