"""Real-data fits: the validation split, early stopping, offsets and the defaults that choose
them for observations without a ground truth."""

import numpy as np
import pytest

import fastdmf
from fastdmf.offsets import Offsets, check_validation, fit_offsets, validation_split


def noisy_table(m=60, n=25, rank=2, noise=0.3, missing=0.3, seed=0):
    """A rank-``rank`` table with offsets (a mean, row and column effects) and noise, and
    the same table with ``missing`` of its entries NaN."""
    rng = np.random.default_rng(seed)
    clean = (
        rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
        + 4.0
        + rng.standard_normal((m, 1))
        + 2.0 * rng.standard_normal((1, n))
    )
    noisy = clean + noise * rng.standard_normal((m, n))
    table = noisy.copy()
    table[rng.random((m, n)) < missing] = np.nan
    return clean, table


@pytest.fixture(scope="module")
def problem():
    _, table = noisy_table()
    return fastdmf.completion(table)


# --- the validation split ---------------------------------------------------------------


def test_split_is_a_reproducible_partition_that_keeps_every_row_and_column(problem):
    train, val = validation_split(problem, 0.2, seed=3)
    again_train, again_val = validation_split(problem, 0.2, seed=3)
    np.testing.assert_array_equal(val.rows, again_val.rows)
    np.testing.assert_array_equal(val.cols, again_val.cols)
    other = validation_split(problem, 0.2, seed=4)[1]
    assert not (np.array_equal(val.rows, other.rows) and np.array_equal(val.cols, other.cols))
    m, n = problem.shape
    keys = lambda p: set((p.rows * n + p.cols).tolist())  # noqa: E731
    assert keys(train).isdisjoint(keys(val))
    assert keys(train) | keys(val) == keys(problem)
    assert val.n_observed == round(0.2 * problem.n_observed)
    # every row and column with an observation keeps one to train on
    for idx, size in ((problem.rows, m), (problem.cols, n)):
        had = np.bincount(idx, minlength=size) > 0
        kept = np.bincount(train.rows if idx is problem.rows else train.cols, minlength=size)
        assert np.all(kept[had] >= 1)
    check_validation(train, val)  # the split passes its own checks


def test_split_never_takes_the_last_entry_of_a_row():
    # row 0 and column 0 have a single entry each: it must stay in training
    rows = np.array([0, 1, 1, 2, 2, 3, 3])
    cols = np.array([0, 1, 2, 1, 2, 1, 2])
    p = fastdmf.completion(rows, cols, np.arange(7.0), shape=(4, 3))
    for seed in range(20):
        train, val = validation_split(p, 0.5, seed=seed)
        assert (0, 0) in set(zip(train.rows.tolist(), train.cols.tolist(), strict=True))
        assert 0 not in val.rows


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.1, 1.5, True, "0.1"])
def test_split_fraction_outside_0_1_is_refused(problem, bad):
    with pytest.raises((ValueError, TypeError), match="validation"):
        fastdmf.fit(problem, validation=bad, max_steps=1)


def test_validation_entries_overlapping_training_entries_are_refused(problem):
    overlap = (problem.rows[:5], problem.cols[:5], problem.values[:5])
    with pytest.raises(ValueError, match="also training entries"):
        fastdmf.fit(problem, validation=overlap, max_steps=1)


def test_validation_entries_outside_the_shape_are_refused(problem):
    m, n = problem.shape
    with pytest.raises(ValueError, match="rows"):
        fastdmf.fit(
            problem, validation=(np.array([m]), np.array([0]), np.array([1.0])), max_steps=1
        )


def test_validation_entries_of_a_row_with_nothing_to_train_are_refused():
    rows, cols = np.array([0, 0, 1]), np.array([0, 1, 0])
    p = fastdmf.completion(rows, cols, np.ones(3), shape=(3, 2))
    with pytest.raises(ValueError, match="nothing to train on.*row 2"):
        fastdmf.fit(p, validation=(np.array([2]), np.array([1]), np.array([1.0])), max_steps=1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_patience_must_be_a_positive_count(problem, bad):
    with pytest.raises(ValueError, match="patience"):
        fastdmf.fit(problem, patience=bad, max_steps=1)


def test_sensing_refuses_validation_and_offsets():
    sensed = fastdmf.synthetic_sensing(shape=(4, 4), rank=1, n_measurements=10, seed=0)
    with pytest.raises(TypeError, match="sensing"):
        fastdmf.fit(sensed, validation=0.2, max_steps=1)


# --- offsets ------------------------------------------------------------------------------


def ridge_reference(p, lam):
    """The ridge biases by a direct solve: least squares of the mean-centred values on row
    and column indicators, with lam on both blocks (lam > 0: a unique solution)."""
    m, n = p.shape
    A = np.zeros((p.n_observed, m + n))
    A[np.arange(p.n_observed), p.rows] = 1.0
    A[np.arange(p.n_observed), m + p.cols] = 1.0
    y = p.values - p.values.mean()
    x = np.linalg.solve(A.T @ A + lam * np.eye(m + n), A.T @ y)
    return x[:m], x[m:]


def ridge_objective(p, mean, row, col, lam):
    r = p.values - mean - row[p.rows] - col[p.cols]
    return np.sum(r**2) + lam * (np.sum(row**2) + np.sum(col**2))


@pytest.mark.parametrize("lam", [0.5, 10.0])
def test_biases_equal_the_direct_ridge_solution(problem, lam):
    off = fit_offsets(problem, "biases", lam=lam)
    row, col = ridge_reference(problem, lam)
    assert off.mean == pytest.approx(problem.values.mean(), rel=1e-15)
    np.testing.assert_allclose(off.row, row, atol=1e-10)
    np.testing.assert_allclose(off.col, col, atol=1e-10)


def test_biases_are_a_stationary_point_by_finite_differences(problem):
    lam = 3.0
    off = fit_offsets(problem, "biases", lam=lam)
    h = 1e-5
    for vec in ("row", "col"):
        base = getattr(off, vec)
        for i in (0, 7, len(base) - 1):
            up, down = base.copy(), base.copy()
            up[i] += h
            down[i] -= h
            args_up = {"row": off.row, "col": off.col, vec: up}
            args_down = {"row": off.row, "col": off.col, vec: down}
            fd = (
                ridge_objective(problem, off.mean, args_up["row"], args_up["col"], lam)
                - ridge_objective(problem, off.mean, args_down["row"], args_down["col"], lam)
            ) / (2 * h)
            # the analytic gradient at any point, checked against the same differences
            r = problem.values - off.mean - off.row[problem.rows] - off.col[problem.cols]
            idx = problem.rows if vec == "row" else problem.cols
            grad = -2 * np.bincount(idx, r, len(base))[i] + 2 * lam * base[i]
            assert fd == pytest.approx(grad, abs=1e-6)
            assert abs(fd) < 1e-6  # stationary


def test_lam_is_chosen_on_the_validation_entries(problem):
    train, val = validation_split(problem, 0.2, seed=0)
    chosen = fit_offsets(train, "biases", validation=val)
    errs = {}
    for lam in fastdmf.offsets.RIDGE_GRID:
        o = fit_offsets(train, "biases", lam=lam)
        errs[lam] = np.mean((val.values - o.at(val.rows, val.cols)) ** 2)
    assert chosen.lam == min(errs, key=errs.get)


def test_mean_offsets_and_bad_kinds(problem):
    off = fit_offsets(problem, "mean")
    assert off.mean == pytest.approx(problem.values.mean(), rel=1e-15)
    assert not off.row.any() and not off.col.any()
    with pytest.raises(ValueError, match="offsets must be one of"):
        fit_offsets(problem, "median")
    with pytest.raises(ValueError, match="ridge strength"):
        fit_offsets(problem, "biases", lam=-1.0)


def test_result_predicts_offsets_plus_factors(problem):
    res = fastdmf.fit(problem, seed=0, max_steps=300, progress=False)
    off = res.offsets
    assert isinstance(off, Offsets) and off.kind == "biases"
    rows, cols = np.array([0, 5, 59]), np.array([3, 0, 24])
    left = fastdmf.factors.end_to_end(res.factors)
    want = left[rows, cols] + off.mean + off.row[rows] + off.col[cols]
    np.testing.assert_allclose(res.predict(rows, cols), want, rtol=1e-12)
    np.testing.assert_allclose(res.matrix()[rows, cols], want, rtol=1e-12)


def test_offsets_refused_with_a_ground_truth():
    p = fastdmf.synthetic_completion(shape=(10, 10), rank=1, n_observed=50, seed=0)
    with pytest.raises(ValueError, match="ground truth"):
        fastdmf.fit(p, offsets="biases", max_steps=1)


# --- early stopping -----------------------------------------------------------------------


def test_early_stopping_returns_exactly_the_best_record(problem):
    train, val = validation_split(problem, 0.15, seed=1)
    kw = dict(depth=2, lr=3e-2, record=10, offsets=None, seed=0, progress=False)
    res = fastdmf.fit(train, validation=val, patience=5, max_steps=5000, **kw)
    assert res.status == "early_stopped"
    traj = res.trajectory
    # the records end at the best one, and the state is that record's
    assert np.argmin(traj.val_error) == len(traj) - 1
    assert traj.step[-1] == res.n_steps
    # the same fit without early stopping, stopped at that step: the same bits
    plain = fastdmf.fit(train, validation=None, test=val, max_steps=res.n_steps, **kw)
    for a, b in zip(res.factors, plain.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(traj.val_error, plain.trajectory.test_error)
    # and run on past the stop: patience records, none better than the best
    on = fastdmf.fit(train, validation=None, test=val, max_steps=res.n_steps + 10 * 5, **kw)
    after = on.trajectory.test_error[len(traj) :]
    assert len(after) == 5 and np.all(after > traj.val_error[-1] * (1 - 1e-4))
    # the validation error is the MSE of the returned model on the validation entries
    pred = fastdmf.factors.predict_entries(res.factors, val.rows, val.cols)
    assert traj.val_error[-1] == pytest.approx(np.mean((pred - val.values) ** 2), rel=1e-12)


def test_a_fit_that_never_improves_returns_its_initial_state(problem):
    train, val = validation_split(problem, 0.15, seed=1)
    # validation values opposite to the data: fitting the data only moves away from them
    flipped = fastdmf.completion(val.rows, val.cols, -val.values, shape=val.shape)
    kw = dict(depth=2, lr=1e-2, record=10, offsets=None, seed=0, progress=False)
    res = fastdmf.fit(train, validation=flipped, patience=3, max_steps=2000, **kw)
    start = fastdmf.fit(train, validation=None, max_steps=0, **kw)
    assert res.status == "no_improvement" and res.n_steps == 0 and len(res.trajectory) == 1
    for a, b in zip(res.factors, start.factors, strict=True):
        np.testing.assert_array_equal(a, b)


def test_early_stopped_fit_resumes_bit_for_bit(problem, tmp_path):
    path = tmp_path / "fit.ckpt"
    kw = dict(seed=0, progress=False, record=10, lr=3e-2, max_steps=5000)
    whole = fastdmf.fit(problem, **kw)
    assert whole.status == "early_stopped"

    calls = []

    def interrupt(rec):
        calls.append(rec["step"])
        if len(calls) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fastdmf.fit(problem, checkpoint=path, checkpoint_every=1, callback=interrupt, **kw)
    resumed = fastdmf.resume(path)
    assert resumed.status == whole.status and resumed.n_steps == whole.n_steps
    for a, b in zip(resumed.factors, whole.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed.trajectory.val_error, whole.trajectory.val_error)
    assert resumed.offsets.lam == whole.offsets.lam
    np.testing.assert_array_equal(resumed.offsets.row, whole.offsets.row)
    np.testing.assert_array_equal(resumed.predict([1, 2], [3, 4]), whole.predict([1, 2], [3, 4]))
    # the finished checkpoint gives the result again
    again = fastdmf.resume(path)
    np.testing.assert_array_equal(again.factors[0], whole.factors[0])


@pytest.mark.parametrize("optimizer", ["gd", "adam", "flow"])
def test_early_stopping_with_every_optimiser(problem, optimizer):
    kw = {"flow": dict(max_time=2000.0, record=5.0), "gd": dict(lr=0.3), "adam": dict(lr=1e-2)}[
        optimizer
    ]
    res = fastdmf.fit(
        problem, optimizer=optimizer, seed=0, progress=False, patience=5, max_steps=20_000, **kw
    )
    traj = res.trajectory
    assert res.status in ("early_stopped", "no_improvement", "max_steps", "max_time")
    assert np.argmin(traj.val_error) == len(traj) - 1
    assert traj.val_error[-1] < traj.val_error[0]


# --- the defaults -------------------------------------------------------------------------


def test_paper_problems_keep_the_paper_setup():
    p = fastdmf.synthetic_completion(shape=(12, 12), rank=1, n_observed=60, seed=0)
    res = fastdmf.fit(p, max_steps=5, seed=0)
    args = res.settings["arguments"]
    assert (args["depth"], args["lr"], args["record"], args["widths"]) == (3, 1e-3, 1000, None)
    assert args["validation"] is None and args["offsets"] is None and res.offsets is None
    assert res.factors[0].shape == (12, 12)
    assert np.all(np.isnan(res.trajectory.val_error))


def test_real_data_defaults_and_explicit_arguments_win(problem):
    res = fastdmf.fit(problem, seed=0, max_steps=5, progress=False)
    args = res.settings["arguments"]
    assert (args["depth"], args["lr"], args["record"], args["widths"]) == (2, 3e-2, 25, 25)
    assert args["validation"] == 0.1 and args["offsets"] == "auto"
    assert res.settings["offsets"]["kind"] == "biases"  # one unit: no column scales
    assert res.settings["validation_entries"] == round(0.1 * problem.n_observed)
    res = fastdmf.fit(
        problem,
        3,
        lr=1e-3,
        validation=None,
        offsets=None,
        seed=0,
        max_steps=5,
        record=1000,
        progress=False,
    )
    args = res.settings["arguments"]
    assert (args["depth"], args["lr"], args["record"]) == (3, 1e-3, 1000)
    assert res.offsets is None and "validation_entries" not in res.settings


def test_defaults_beat_column_means_on_a_noisy_table():
    clean, table = noisy_table(m=80, n=30, noise=0.5, seed=2)
    res = fastdmf.fit(table, seed=0, progress=False)
    gap = np.isnan(table)
    rows, cols = np.nonzero(gap)
    err = np.sqrt(np.mean((res.predict(rows, cols) - clean[rows, cols]) ** 2))
    col_means = np.nanmean(table, axis=0)[cols]
    base = np.sqrt(np.mean((col_means - clean[rows, cols]) ** 2))
    assert res.status in ("early_stopped", "no_improvement")
    assert err < 0.5 * base


def test_fit_batch_trials_equal_their_serial_fits_with_validation(problem):
    kw = dict(max_steps=3000, progress=False)
    results = fastdmf.fit_batch(problem, seeds=[0, 1], init_scale=[1e-3, 1e-2], max_steps=3000)
    for res, seed, scale in zip(results, [0, 1], [1e-3, 1e-2], strict=True):
        one = fastdmf.fit(problem, seed=seed, init_scale=scale, parallel=False, **kw)
        assert res.status == one.status and res.n_steps == one.n_steps
        assert res.status in ("early_stopped", "no_improvement")
        for a, b in zip(res.factors, one.factors, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(res.trajectory.val_error, one.trajectory.val_error)
        np.testing.assert_array_equal(res.offsets.row, one.offsets.row)
        assert res.settings["arguments"]["validation"] == 0.1


def mixed_units_table(seed=0):
    """A rank-2 table whose columns are in very different units, with NaN."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((90, 2)) @ rng.standard_normal((2, 6))
    z += 0.3 * rng.standard_normal(z.shape)
    units = np.array([1e-2, 1.0, 50.0, 3e3, 0.5, 10.0])
    clean = z * units + 10.0 * units
    table = clean.copy()
    table[rng.random(clean.shape) < 0.25] = np.nan
    return clean, table, units


def test_column_scale_against_its_formula():
    _, table, _ = mixed_units_table()
    p = fastdmf.completion(table)
    got = fastdmf.offsets.column_scale(p)
    dof, logv = [], []
    for j in range(6):
        col = table[:, j][~np.isnan(table[:, j])]
        dof.append(len(col) - 1)
        logv.append(np.log(np.var(col, ddof=1)))
    dof, logv = np.array(dof, float), np.array(logv)
    typical = np.sum(dof * logv) / np.sum(dof)
    k = fastdmf.offsets.SCALE_PRIOR
    np.testing.assert_allclose(
        got, np.exp(0.5 * (dof * logv + k * typical) / (dof + k)), rtol=1e-12
    )


def test_scaled_offsets_predict_in_the_data_units():
    _, table, units = mixed_units_table()
    p = fastdmf.completion(table)
    off = fit_offsets(p, "auto")
    assert off.kind == "scaled"  # columns span 3e5 in scale
    assert fit_offsets(fastdmf.completion(table / units), "auto").kind == "biases"
    # the residual problem is y / s_j - offsets; the model maps back
    resid = off.remove(p)
    s = off.scale[p.cols]
    np.testing.assert_allclose(
        resid.values, p.values / s - off.mean - off.row[p.rows] - off.col[p.cols], rtol=1e-13
    )
    np.testing.assert_allclose(off.predict(resid.values, p.rows, p.cols), p.values, rtol=1e-12)
    # the biases are the ridge solution on the standardised values (each column minus its
    # mean, over its scale); the column means go into the column offsets
    off = fit_offsets(p, "scaled", lam=3.0)
    colmean = np.nanmean(table, axis=0)
    z = (p.values - colmean[p.cols]) / off.scale[p.cols]
    row, col = ridge_reference(fastdmf.completion(p.rows, p.cols, z, shape=p.shape), 3.0)
    np.testing.assert_allclose(off.row, row, atol=1e-9)
    np.testing.assert_allclose(off.col, col + colmean / off.scale, atol=1e-9)


def test_defaults_beat_column_means_on_a_table_in_mixed_units():
    clean, table, units = mixed_units_table(seed=1)
    res = fastdmf.fit(table, seed=0, progress=False)
    assert res.offsets.kind == "scaled"
    rows, cols = np.nonzero(np.isnan(table))
    std = np.nanstd(table, axis=0)[cols]
    err = np.sqrt(np.mean(((res.predict(rows, cols) - clean[rows, cols]) / std) ** 2))
    base = np.sqrt(np.mean(((np.nanmean(table, axis=0)[cols] - clean[rows, cols]) / std) ** 2))
    assert err < 0.5 * base
    # test_error is in the data's units, whatever units the factors train in
    held = fastdmf.completion(rows, cols, clean[rows, cols], shape=table.shape)
    res = fastdmf.fit(table, seed=0, progress=False, test=held, max_steps=100)
    mse = np.mean((res.predict(rows, cols) - clean[rows, cols]) ** 2)
    assert res.trajectory.test_error[-1] == pytest.approx(mse, rel=1e-10)


def test_refit_trains_on_every_entry_for_the_scaled_length(problem, tmp_path):
    kw = dict(seed=0, progress=False, record=10, max_steps=4000)
    chosen = fastdmf.fit(problem, **kw)
    res = fastdmf.fit(problem, refit=True, **kw)
    info = res.settings["refit"]
    assert info["chosen_step"] == chosen.n_steps and res.status == chosen.status
    ratio = problem.n_observed / (problem.n_observed - chosen.settings["validation_entries"])
    assert info["ratio"] == pytest.approx(ratio, rel=1e-12)
    assert res.n_steps == round(chosen.n_steps * ratio)
    # the second fit: every entry, offsets refitted at the chosen ridge, no validation
    again = fastdmf.fit(
        problem,
        validation=None,
        offsets=fit_offsets(problem, chosen.offsets.kind, lam=chosen.offsets.lam),
        **{**kw, "max_steps": res.n_steps},
    )
    for a, b in zip(res.factors, again.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="refit"):
        fastdmf.fit(problem, refit=True, checkpoint=tmp_path / "c.ckpt", **kw)


def test_a_fit_that_converges_at_its_best_record_keeps_it(problem):
    # a tolerance reached while the validation error still falls: the converged state is
    # the best record, and the fit ends "converged" there
    train, val = validation_split(problem, 0.15, seed=1)
    kw = dict(depth=2, lr=3e-2, record=10, offsets=None, seed=0, progress=False)
    free = fastdmf.fit(train, validation=None, test=val, max_steps=400, **kw)
    falling = np.flatnonzero(np.diff(free.trajectory.test_error) < 0)
    k = int(falling[len(falling) // 2]) + 1  # a record whose validation error fell
    tol = float(free.trajectory.train_loss[k]) * (1 + 1e-12)
    res = fastdmf.fit(train, validation=val, patience=50, max_steps=400, tol=tol, **kw)
    assert res.status == "converged"
    assert res.trajectory.val_error[-1] == np.min(res.trajectory.val_error)
