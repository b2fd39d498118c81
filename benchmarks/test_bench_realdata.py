"""The data-independent parts of bench_realdata.py, on tiny synthetic tables (no download).

Run it explicitly (``testpaths = ["tests"]`` keeps benchmarks/ out of the main suite)::

    PYTHONPATH=. python -m pytest benchmarks/test_bench_realdata.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from bench_realdata import column_stats, geomean, hold_out, impute_table, std_rmse, table_summary


@pytest.fixture
def table():
    """30 x 4 with real NaN in two columns."""
    x = np.random.default_rng(0).normal(5.0, 2.0, (30, 4))
    x[[1, 4, 9], 0] = np.nan
    x[[0, 2], 3] = np.nan
    return x


def test_hold_out_hides_a_fifth_of_each_observed_column(table):
    x_train, rows, cols, truth = hold_out(table, 0.2, seed=3)
    for j in range(table.shape[1]):
        seen = int(np.sum(~np.isnan(table[:, j])))
        assert np.sum(cols == j) == round(0.2 * seen)
    assert not np.any(np.isnan(truth))  # only observed entries are held out
    np.testing.assert_array_equal(truth, table[rows, cols])
    assert np.all(np.isnan(x_train[rows, cols]))
    keep = np.ones(table.shape, dtype=bool)
    keep[rows, cols] = False
    np.testing.assert_array_equal(x_train[keep], table[keep])  # NaN compare equal here
    assert list(zip(rows, cols, strict=True)) == sorted(zip(rows, cols, strict=True))
    again = hold_out(table, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], rows)
    np.testing.assert_array_equal(again[2], cols)
    other = hold_out(table, 0.2, seed=4)
    assert not (np.array_equal(other[1], rows) and np.array_equal(other[2], cols))


def test_hold_out_refuses_to_empty_a_column():
    x = np.array([[1.0, 2.0], [np.nan, 3.0], [4.0, 5.0]])
    with pytest.raises(ValueError, match="column 0 has 2 observed entries"):
        hold_out(x, 0.5, seed=0)


def test_std_rmse_in_column_units(table):
    x_train, rows, cols, truth = hold_out(table, 0.2, seed=1)
    mean, std = column_stats(x_train)
    for j in range(table.shape[1]):
        vals = [v for v in x_train[:, j] if not math.isnan(v)]
        mu = sum(vals) / len(vals)
        assert mean[j] == pytest.approx(mu, rel=1e-12)
        assert std[j] == pytest.approx(
            math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals)), rel=1e-12
        )
    pred = truth + np.random.default_rng(2).standard_normal(truth.size)
    total = sum(((p - t) / std[c]) ** 2 for p, t, c in zip(pred, truth, cols, strict=True))
    assert std_rmse(pred, truth, cols, std) == pytest.approx(math.sqrt(total / truth.size))
    # predicting the training mean of each column: about one standard deviation
    assert 0.5 < std_rmse(mean[cols], truth, cols, std) < 1.5


def test_constant_column_keeps_raw_units():
    x = np.array([[1.0, 2.0], [1.0, 4.0], [np.nan, 6.0]])
    mean, std = column_stats(x)
    np.testing.assert_array_equal(std, [1.0, 2.0 * math.sqrt(2.0 / 3.0)])
    np.testing.assert_array_equal(mean, [1.0, 4.0])


def test_mean_imputer_predicts_training_means(table):
    x_train, rows, cols, _ = hold_out(table, 0.2, seed=0)
    got = impute_table("mean", x_train, rows, cols, 0, {})
    np.testing.assert_allclose(got, np.nanmean(x_train, axis=0)[cols], rtol=1e-12)


def test_summary_counts_and_geometric_mean():
    res = {
        "a": {"dmf_imputer": ([0.5], [1.0]), "iterative": ([1.0], [0.1]), "mean": ([1.0], [0.0])},
        "b": {"dmf_imputer": ([2.0], [3.0]), "iterative": ([1.0], [0.1]), "mean": ([1.5], [0.0])},
    }
    lines = table_summary(res, ["mean", "iterative", "dmf_imputer"])
    assert geomean([0.5, 2.0]) == pytest.approx(1.0)
    assert "geometric-mean RMSE ratio to iterative: 1.000" in lines[0]
    assert "beats mean on 1 of 2 tables (worst ratio 1.333)" in lines[1]
    assert "longest mean time per table 3.00 s" in lines[2]
