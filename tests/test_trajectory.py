"""Record schedules, trajectory fields against the reference, save/load; initialisations."""

import sys

import numpy as np
import pytest

import fastdmf
from fastdmf import reference
from fastdmf.factors import FactorLayout, balancedness, end_to_end, initialize, singular_values
from fastdmf.trajectory import MATRICES, SCALARS, Trajectory, record_schedule


def test_record_schedules():
    np.testing.assert_array_equal(record_schedule(25, 100), [0, 25, 50, 75, 100])
    np.testing.assert_array_equal(record_schedule([5, 3, 500], 100), [0, 3, 5])
    np.testing.assert_array_equal(record_schedule(None, 100), [0])
    log = record_schedule("log", 10_000)
    assert log[0] == 0 and log[1] == 1 and log[-1] == 10_000
    assert np.all(np.diff(log) > 0) and 60 <= len(log) <= 90
    assert len(record_schedule(("log", 5), 10_000)) == 6
    with pytest.raises(ValueError):
        record_schedule("every", 10)
    with pytest.raises(ValueError):
        record_schedule([-1, 2], 10)


def test_fields_match_reference(tall):
    # the plain fit on every entry (no validation split, no offsets) that the reference
    # computes
    res = fastdmf.fit(
        tall,
        depth=3,
        widths=[4, 6],
        max_steps=40,
        record=20,
        seed=0,
        lr=1e-2,
        init_scale=0.5,
        validation=None,
        offsets=None,
    )
    traj = res.trajectory
    assert len(traj) == 3
    factors = res.factors
    sv = reference.singular_values(factors)[:4]
    np.testing.assert_allclose(traj.singular_values[-1], sv, rtol=1e-10, atol=1e-13)
    assert traj.nuclear_norm[-1] == pytest.approx(sv.sum(), rel=1e-10)
    # exp of the entropy of sigma / sum(sigma), written out (Roy & Vetterli 2007)
    all_sv = np.linalg.svd(factors[2] @ factors[1] @ factors[0], compute_uv=False)
    p = all_sv[all_sv > 0] / all_sv.sum()
    assert traj.effective_rank[-1] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-10)
    assert traj.schatten[-1] == pytest.approx(np.sum(sv ** (2 / 3)), rel=1e-10)
    loss, grads = reference.loss_and_grad(factors, tall.rows, tall.cols, tall.values)
    assert traj.train_loss[-1] == pytest.approx(loss, rel=1e-12)
    gnorm = np.sqrt(sum(np.sum(g**2) for g in grads))
    assert traj.grad_norm[-1] == pytest.approx(gnorm, rel=1e-10)
    assert traj.param_norm[-1] == pytest.approx(
        np.sqrt(sum(np.sum(w**2) for w in factors)), rel=1e-12
    )
    w1, w2, w3 = factors  # ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F, written out
    np.testing.assert_allclose(
        traj.balancedness[-1],
        [np.linalg.norm(w2.T @ w2 - w1 @ w1.T), np.linalg.norm(w3.T @ w3 - w2 @ w2.T)],
        rtol=1e-10,
    )
    assert traj.balancedness.shape == (3, 2)
    assert np.all(np.isnan(traj.test_error))  # no ground truth, no held-out entries
    assert np.all(np.diff(traj.time) > 0)


def test_effective_rank_of_known_spectra():
    # p = sigma / sum(sigma); exp(entropy): k equal values give k, zeros add nothing
    assert reference.effective_rank([2.0, 2.0, 0.0]) == pytest.approx(2.0, rel=1e-15)
    assert reference.effective_rank([0.5] * 4) == pytest.approx(4.0, rel=1e-15)
    assert reference.effective_rank([5.0]) == 1.0
    assert reference.effective_rank([0.0, 0.0]) == 0.0
    # p = (3/4, 1/4): exp(ln 4 - (3/4) ln 3) = 4 / 3^(3/4)
    assert reference.effective_rank([3.0, 1.0]) == pytest.approx(4 / 3**0.75, rel=1e-14)


def test_reconstruction_error_and_held_out_mse(square):
    res = fastdmf.fit(square, depth=2, max_steps=30, record=30, seed=0, lr=1e-2)
    w = res.matrix()
    truth = square.ground_truth
    err = np.sum((w - truth) ** 2) / np.sum(truth**2)
    assert res.trajectory.test_error[-1] == pytest.approx(err, rel=1e-10)

    plain = fastdmf.completion(square.rows, square.cols, square.values, shape=square.shape)
    train, test = plain.split(0.2, seed=1)
    res = fastdmf.fit(train, depth=2, max_steps=30, record=30, seed=0, lr=1e-2, test=test)
    mse = np.mean((res.matrix()[test.rows, test.cols] - test.values) ** 2)
    assert res.trajectory.test_error[-1] == pytest.approx(mse, rel=1e-10)


def test_top_k_and_factored_singular_values():
    """Width 3 < min(m, n): singular values come from QR of the two sides, equal to the SVD
    of the dense product."""
    rng = np.random.default_rng(0)
    factors = [
        rng.standard_normal((3, 40)),
        rng.standard_normal((5, 3)),
        rng.standard_normal((30, 5)),
    ]
    dense = np.linalg.svd(end_to_end(factors), compute_uv=False)[:3]
    np.testing.assert_allclose(singular_values(factors), dense, rtol=1e-10)
    p = fastdmf.synthetic_completion(shape=(30, 40), rank=2, n_observed=300, seed=0)
    res = fastdmf.fit(p, depth=3, widths=[3, 5], top_k=2, max_steps=10, record=5, seed=0)
    assert res.trajectory.singular_values.shape == (3, 2)


def test_save_and_load_roundtrip(tmp_path, square):
    res = fastdmf.fit(square, depth=3, max_steps=30, record=10, seed=0)
    path = tmp_path / "traj.npz"
    res.trajectory.save(path)
    back = fastdmf.load_trajectory(path)
    assert back.depth == 3 and len(back) == len(res.trajectory)
    for name, arr in res.trajectory.as_dict().items():
        np.testing.assert_array_equal(getattr(back, name), arr)
    assert "4 records" in repr(back)


@pytest.mark.parametrize("depth", [1, 3])
def test_rows_appended_after_reading_keep_every_record(square, depth):
    """Reading a field freezes the rows into arrays; rows appended afterwards (a resumed or
    continued record) join them, for zero-width fields (depth-1 balancedness) too."""
    res = fastdmf.fit(square, depth=depth, max_steps=30, record=10, seed=0, progress=False)
    rows = [
        {name: getattr(res.trajectory, name)[i] for name in SCALARS + MATRICES}
        for i in range(len(res.trajectory))
    ]
    whole = Trajectory(depth)
    for row in rows + rows[1:]:
        whole.append(row)
    parts = Trajectory(depth)
    for row in rows:
        parts.append(row)
    assert len(parts.step) == 4  # frozen here
    for i, row in enumerate(rows[1:], start=5):
        parts.append(row)
        assert len(parts) == i
    assert len(parts) == len(whole) == 7
    for name in SCALARS + MATRICES:
        np.testing.assert_array_equal(getattr(parts, name), getattr(whole, name))
    assert parts.balancedness.shape == (7, depth - 1)
    assert parts.singular_values.shape[0] == 7


def test_plot_without_matplotlib_says_what_to_install(square, monkeypatch):
    # what it draws is checked in test_plot.py; here matplotlib cannot be imported
    res = fastdmf.fit(square, depth=2, max_steps=20, record=5, seed=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(
        ImportError,
        match=r"Trajectory.plot needs matplotlib: pip install "
        r"'fastdmf\[plot\]'",
    ):
        res.trajectory.plot()


@pytest.mark.parametrize("shape, depth", [((40, 40), 3), ((30, 50), 2), ((50, 30), 4)])
def test_gaussian_init_scale_convention(shape, depth):
    """E||W(0)||_F^2 = init_scale^2 m: averaged over seeds, within 15%."""
    layout = FactorLayout.build(shape, depth)
    norms = [
        np.linalg.norm(end_to_end(initialize(layout, "gaussian", 1e-2, np.random.default_rng(s))))
        ** 2
        for s in range(40)
    ]
    assert np.mean(norms) == pytest.approx(1e-4 * shape[0], rel=0.15)


@pytest.mark.parametrize("widths", [None, [5, 7]])
def test_balanced_and_identity_inits(widths):
    layout = FactorLayout.build((9, 6), 3, widths)
    rng = np.random.default_rng(0)
    bal = initialize(layout, "balanced", 0.3, rng)
    assert np.all(balancedness(bal) < 1e-12)
    assert np.linalg.norm(end_to_end(bal)) == pytest.approx(0.3 * 3, rel=0.5)
    ident = initialize(layout, "identity", 0.125, rng)
    assert np.allclose(ident[0], 0.5 * np.eye(*layout.factor_shape(1)))
    orth = initialize(FactorLayout.build((8, 8), 3), "orthogonal", 0.125, rng)
    assert np.all(balancedness(orth) < 1e-12)
    np.testing.assert_allclose(orth[1].T @ orth[1], 0.25 * np.eye(8), atol=1e-12)


@pytest.mark.parametrize("dims", [(9, 4, 7), (9, 3, 5, 7), (6, 11)])
def test_factored_reconstruction_error_equals_dense(dims):
    from fastdmf.trajectory import factored_error

    rng = np.random.default_rng(1)
    factors = [rng.standard_normal((dims[j], dims[j - 1])) for j in range(1, len(dims))]
    u, v = rng.standard_normal((dims[-1], 2)), rng.standard_normal((dims[0], 2))
    truth = u @ v.T
    dense = np.sum((end_to_end(factors) - truth) ** 2) / np.sum(truth**2)
    assert factored_error(factors, u, v) == pytest.approx(dense, rel=1e-10)


def test_large_synthetic_problem_keeps_no_dense_truth():
    """200 x 300 forced factored, and 20000 x 20000 by size: no m x n array anywhere, and the
    recorded error equals the dense one where that can be formed."""
    small = fastdmf.synthetic_completion(
        shape=(200, 300), rank=3, n_observed=5000, seed=2, dense_truth=False
    )
    assert small.ground_truth is None
    u, v = small.truth_factors
    np.testing.assert_allclose(small.values, (u @ v.T)[small.rows, small.cols], rtol=1e-12)
    assert np.linalg.norm(u @ v.T) == pytest.approx(np.sqrt(200 * 300), rel=1e-12)
    res = fastdmf.fit(small, depth=3, widths=8, max_steps=20, record=10, seed=0)
    dense = np.sum((res.matrix() - u @ v.T) ** 2) / np.sum((u @ v.T) ** 2)
    assert res.trajectory.test_error[-1] == pytest.approx(dense, rel=1e-9)

    big = fastdmf.synthetic_completion(shape=(20_000, 20_000), rank=2, n_observed=40_000, seed=0)
    assert big.ground_truth is None and "with ground truth" in repr(big)
    res = fastdmf.fit(big, depth=3, widths=4, max_steps=5, record=None, seed=0, lr=1e-2)
    assert 0.5 < res.trajectory.test_error[-1] <= 1.0 + 1e-9
    assert res.trajectory.singular_values.shape == (2, 4)
