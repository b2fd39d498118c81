"""Edge cases of the public API: record schedules that are never listed, float32 records in
float64, fit_batch's checks and widths, the statuses and warnings users read."""

import json
import warnings

import numpy as np
import pytest

import fastdmf
from fastdmf.trajectory import Grid, record_schedule, time_schedule

P = fastdmf.synthetic_completion(shape=(20, 15), rank=2, n_observed=200, seed=0)


@pytest.mark.parametrize("every, top", [(25, 100), (7, 100), (1, 0), (3, 2), (4, 4)])
def test_step_grid_is_the_arange_it_stands_for(every, top):
    grid = record_schedule(every, top)
    ref = np.arange(0, top + 1, every)
    np.testing.assert_array_equal(np.asarray(grid), ref)
    assert len(grid) == len(ref) and grid[-1] == ref[-1] and list(grid) == list(ref)
    for value in range(-2, top + 3):
        assert (value in grid) == (value in set(ref.tolist()))


@pytest.mark.parametrize(
    "dt, top", [(0.25, 1.0), (0.1, 1.0), (0.3, 1.0), (1.0, 0.0), (0.1, 0.3), (0.7, 10.0)]
)
def test_time_grid_holds_the_multiples_up_to_max_time(dt, top):
    ref = np.unique(np.concatenate([[0.0], np.arange(0.0, top * (1 + 1e-12), dt)]))
    ref = ref[ref <= top]  # what the schedule was as an array: always 0, then i dt <= top
    np.testing.assert_allclose(np.asarray(time_schedule(dt, top)), ref, rtol=1e-15, atol=0)


def test_a_huge_budget_keeps_no_list_of_record_steps():
    grid = record_schedule(1000, 10**13)
    assert isinstance(grid, Grid) and len(grid) == 10**10 + 1 and grid[-1] == 10**13
    assert len(time_schedule(1e-3, 1e12)) == 10**15 + 1
    res = fastdmf.fit(P, depth=2, lr=1e-2, max_steps=10**13, record=1000, seed=0, progress=False)
    assert res.status == "converged" and res.n_steps < 10**4
    assert len(res.trajectory) == res.n_steps // 1000 + 2  # the grid points and the last step


def test_float32_records_are_computed_in_float64():
    u, v = P.truth_factors
    rng = np.random.default_rng(0)
    init = [v.T + 1e-4 * rng.standard_normal(v.T.shape), u]
    res = fastdmf.fit(P, depth=2, init=init, dtype="float32", max_steps=0, progress=False)
    w1, w2 = (w.astype(np.float64) for w in res.factors)
    truth = u @ v.T
    exact = np.sum((w2 @ w1 - truth) ** 2) / np.sum(truth**2)
    assert res.trajectory.test_error[0] == pytest.approx(exact, rel=1e-5)
    sv = np.linalg.svd(w2 @ w1, compute_uv=False)
    np.testing.assert_allclose(res.trajectory.singular_values[0], sv[:2], rtol=1e-10)


def test_fit_batch_reads_widths_from_initial_factors():
    init = [0.1 * np.ones((3, 15)), 0.1 * np.ones((20, 3))]
    (batch,) = fastdmf.fit_batch(P, depth=2, seeds=[0], init=init, lr=1e-2, max_steps=20)
    alone = fastdmf.fit(
        P, depth=2, init=init, lr=1e-2, max_steps=20, progress=False, parallel=False
    )
    assert batch.factors[0].shape == (3, 15)
    for a, b in zip(batch.factors, alone.factors, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kw, error, words",
    [
        ({"top_k": -1}, ValueError, "top_k"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": 2.5}, ValueError, "top_k"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"tol": float("nan")}, ValueError, "tol"),
        ({"tol": "1e-6"}, TypeError, "tol"),
        ({"lr": "1e-3"}, TypeError, "lr"),
        ({"init_scale": [1e-3, "x"]}, TypeError, "init_scale"),
        ({"seeds": []}, ValueError, "seeds"),
        ({"dtype": "float16"}, ValueError, "dtype"),
        ({"max_steps": True}, ValueError, "max_steps"),
    ],
)
def test_fit_batch_checks_its_arguments_as_fit_does(kw, error, words):
    args = {"depth": 2, "seeds": [0, 1], "max_steps": 5, **kw}
    with pytest.raises(error, match=words):
        fastdmf.fit_batch(P, **args)


def test_dtype_spellings_and_refusals():
    f = [np.full((4, 15), 0.1, np.float32), np.full((20, 4), 0.1, np.float32)]
    ref = fastdmf.loss_and_grad(f, P, dtype="float32")
    for spelling in (np.float32, "f4", np.dtype("float32")):
        loss, grads = fastdmf.loss_and_grad(f, P, dtype=spelling)
        assert loss == ref[0] and all(g.dtype == np.float32 for g in grads)
    with pytest.raises(ValueError, match="dtype must be one of"):
        fastdmf.loss_and_grad(f, P, dtype="float16")
    res = fastdmf.fit(P, depth=2, max_steps=2, dtype=np.float32, progress=False)
    assert res.factors[0].dtype == np.float32 and res.settings["arguments"]["dtype"] == "float32"


def test_results_compare_by_identity():
    a = fastdmf.fit(P, depth=2, max_steps=2, progress=False)
    b = fastdmf.fit(P, depth=2, max_steps=2, progress=False)
    assert a == a and a != b and a.trajectory == a.trajectory and a.trajectory != b.trajectory


def test_flow_with_no_time_ends_at_max_time():
    res = fastdmf.fit(P, depth=2, optimizer="flow", max_time=0.0, progress=False)
    assert res.status == "max_time" and res.n_steps == 0


def test_settings_are_json_with_numpy_arguments():
    res = fastdmf.fit(
        P,
        depth=3,
        widths=[np.int64(3), np.int64(4)],
        seed=np.int64(2),
        max_steps=3,
        record=range(0, 3),
        progress=False,
    )
    back = json.loads(json.dumps(res.settings))
    assert back["arguments"]["widths"] == [3, 4] and back["arguments"]["record"] == [0, 1, 2]
    assert back["seed"] == 2


def test_divergence_warning_points_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fastdmf.fit(
            P,
            depth=2,
            lr=1e3,
            optimizer="gd",
            max_steps=200,
            record=10,
            init_scale=1.0,
            progress=False,
        )
        (batch,) = fastdmf.fit_batch(
            P, depth=2, lr=1e3, optimizer="gd", seeds=[0], max_steps=200, record=10, init_scale=1.0
        )
    assert res.status == batch.status == "diverged"
    diverged = [w for w in caught if "diverged" in str(w.message)]
    assert len(diverged) == 2 and all(w.filename == __file__ for w in diverged)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: fastdmf.fit(P, depth=2, record=2.0), TypeError, "integer"),
        (lambda: fastdmf.fit(P, depth=2, optimizer_options={"alpha": "0.9"}), TypeError, "alpha"),
        (lambda: fastdmf.fit(P, depth=2, shape=(3, 3)), ValueError, "shape"),
        (lambda: fastdmf.fit(P, depth=2, optimizer="flow", max_time="1"), ValueError, "max_time"),
        (
            lambda: fastdmf.completion(
                np.array([2**63 + 3], np.uint64), np.array([0]), np.array([1.0]), shape=(3, 3)
            ),
            ValueError,
            "out of range",
        ),
    ],
)
def test_plausible_mistakes_get_clear_errors(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_an_empty_record_list_records_first_and_last():
    res = fastdmf.fit(P, depth=2, max_steps=3, record=[], progress=False)
    np.testing.assert_array_equal(res.trajectory.step, [0, 3])
