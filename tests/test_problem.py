"""Problems: every input form gives the same validated problem; every bad input a clear error."""

import numpy as np
import pytest
import scipy.sparse as sp

import fastdmf
from fastdmf import reference


def triplets():
    rows = np.array([2, 0, 1, 2])
    cols = np.array([1, 0, 3, 0])
    vals = np.array([1.5, -2.0, 0.0, 4.0])
    return rows, cols, vals


def test_triplets_sorted_by_row_then_col():
    p = fastdmf.completion(*triplets(), shape=(3, 4))
    np.testing.assert_array_equal(p.rows, [0, 1, 2, 2])
    np.testing.assert_array_equal(p.cols, [0, 3, 0, 1])
    np.testing.assert_array_equal(p.values, [-2.0, 0.0, 4.0, 1.5])
    assert p.shape == (3, 4) and p.n_observed == 4 and p.ground_truth is None


def test_dense_sparse_and_triplets_agree():
    rows, cols, vals = triplets()
    dense = np.full((3, 4), np.nan)
    dense[rows, cols] = vals
    sparse = sp.coo_array((vals, (rows, cols)), shape=(3, 4))
    ref = fastdmf.completion(rows, cols, vals, shape=(3, 4))
    for form in (dense, sparse, sparse.tocsr(), sp.csc_matrix(sparse)):
        p = fastdmf.completion(form)
        assert p.shape == ref.shape
        np.testing.assert_array_equal(p.rows, ref.rows)
        np.testing.assert_array_equal(p.cols, ref.cols)
        np.testing.assert_array_equal(p.values, ref.values)


def test_sparse_stored_zero_is_observed():
    s = sp.csr_array((np.array([0.0, 2.0]), (np.array([0, 1]), np.array([1, 0]))), shape=(2, 2))
    p = fastdmf.completion(s)
    assert p.n_observed == 2
    np.testing.assert_array_equal(p.values, [0.0, 2.0])


def test_masked_entries_are_missing():
    m = np.ma.masked_array([[1.0, -999.0, np.inf], [np.nan, 0.0, 3.0]], mask=[[0, 1, 1], [0, 0, 0]])
    p = fastdmf.completion(m)
    np.testing.assert_array_equal(p.rows, [0, 1, 1])
    np.testing.assert_array_equal(p.cols, [0, 1, 2])
    np.testing.assert_array_equal(p.values, [1.0, 0.0, 3.0])
    # an integer masked array; every entry masked leaves nothing observed
    q = fastdmf.completion(np.ma.masked_array([[1, 2]], mask=[[1, 0]]))
    assert (q.rows.tolist(), q.cols.tolist(), q.values.tolist()) == ([0], [1], [2.0])
    with pytest.raises(ValueError, match="no observed entries"):
        fastdmf.completion(np.ma.masked_array([[1.0, 2.0]], mask=[[1, 1]]))


def test_dia_zeros_are_not_observations():
    # DIA stores whole diagonals: its zeros are not observed, unlike COO/CSR stored zeros
    dia = sp.dia_matrix((np.array([[1.0, 0.0, 3.0]]), [0]), shape=(3, 3))
    p = fastdmf.completion(dia)
    assert p.n_observed == 2
    np.testing.assert_array_equal(p.rows, [0, 2])
    np.testing.assert_array_equal(p.values, [1.0, 3.0])
    kept = fastdmf.completion(sp.coo_array(([1.0, 0.0, 3.0], ([0, 1, 2], [0, 1, 2])), shape=(3, 3)))
    np.testing.assert_array_equal(kept.values, [1.0, 0.0, 3.0])
    # BSR stores whole blocks: their zeros are observed
    bsr = sp.bsr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]]), blocksize=(2, 2))
    np.testing.assert_array_equal(fastdmf.completion(bsr).values, [1.0, 0.0, 0.0, 2.0])


def test_index_structures_match_entries(tall):
    rowptr, colptr, order = tall.index
    m, n = tall.shape
    np.testing.assert_array_equal(np.diff(rowptr), np.bincount(tall.rows, minlength=m))
    np.testing.assert_array_equal(np.diff(colptr), np.bincount(tall.cols, minlength=n))
    assert np.all(np.diff(tall.cols[order]) >= 0)
    assert sorted(order.tolist()) == list(range(tall.n_observed))


@pytest.mark.parametrize(
    "rows, cols, vals, shape, err, match",
    [
        ([0, 3], [0, 1], [1.0, 2.0], (3, 2), ValueError, "rows has index 3 out of range"),
        ([0, 1], [0, 2], [1.0, 2.0], (3, 2), ValueError, "cols has index 2 out of range"),
        ([0, -1], [0, 1], [1.0, 2.0], (3, 2), ValueError, "negative index"),
        ([0, 0], [1, 1], [1.0, 2.0], (3, 2), ValueError, "duplicate position.*row 0, col 1"),
        ([0, 1], [0, 1], [1.0, np.nan], (3, 2), ValueError, "NaN or infinite"),
        ([0, 1], [0, 1], [np.inf, 1.0], (3, 2), ValueError, "NaN or infinite"),
        ([], [], [], (3, 2), ValueError, "no observed entries"),
        ([0, 1], [0], [1.0, 2.0], (3, 2), ValueError, "same length"),
        ([0, 1], [0, 1], ["a", "b"], (3, 2), TypeError, "real numbers"),
        ([0.5, 1], [0, 1], [1.0, 2.0], (3, 2), TypeError, "integers"),
        ([True, False], [0, 1], [1.0, 2.0], (3, 2), TypeError, "integers"),
        ([0, 1], [0, 1], [1.0, 2.0], (0, 2), ValueError, "positive integers"),
        ([0, 1], [0, 1], [1.0, 2.0], "ab", TypeError, "pair of integers"),
    ],
)
def test_bad_triplets_raise_clear_errors(rows, cols, vals, shape, err, match):
    with pytest.raises(err, match=match):
        fastdmf.completion(np.array(rows), np.array(cols), np.array(vals), shape=shape)


def test_integral_float_indices_are_accepted():
    p = fastdmf.completion(np.array([0.0, 1.0]), np.array([1.0, 0.0]), [3.0, 4.0], shape=(2, 2))
    np.testing.assert_array_equal(p.rows, [0, 1])


def test_triplets_need_shape():
    with pytest.raises(TypeError, match="needs shape"):
        fastdmf.completion(*triplets())


def _hand(shape=(3, 4), rows=(0, 1, 2, 2), cols=(0, 3, 0, 1), vals=(-2.0, 0.0, 4.0, 1.5)):
    return (
        shape,
        np.array(rows, dtype=np.int64),
        np.array(cols, dtype=np.int64),
        np.array(vals, dtype=np.float64),
    )


def test_hand_built_valid_problem_equals_completions():
    p = fastdmf.CompletionProblem(*_hand())
    ref = fastdmf.completion(*triplets(), shape=(3, 4))
    assert p.shape == ref.shape
    for name in ("rows", "cols", "values"):
        np.testing.assert_array_equal(getattr(p, name), getattr(ref, name))
    for a, b in zip(p.index, ref.index):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hand_built_problem_gives_the_numpy_loss(depth):
    """The kernels read a valid hand-built problem as it is: loss and gradients equal the
    NumPy reference on the same arrays, at depth 1 (W itself) and deeper (the factored
    passes over the entries)."""
    shape, rows, cols, vals = _hand()
    p = fastdmf.CompletionProblem(shape, rows, cols, vals)
    rng = np.random.default_rng(depth)
    dims = [4, *([3] * (depth - 1)), 3]
    factors = [rng.standard_normal((dims[j + 1], dims[j])) for j in range(depth)]
    loss, grads = fastdmf.loss_and_grad(factors, p)
    w = factors[0]
    for f in factors[1:]:
        w = f @ w
    assert loss == pytest.approx(np.mean((w[rows, cols] - vals) ** 2), rel=1e-13)
    _, want = reference.loss_and_grad(factors, rows, cols, vals)
    for g, r in zip(grads, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "args, err, match",
    [
        (_hand(rows=(0, 2, 1, 2)), ValueError, r"sorted by row then column.*entry 2"),
        (_hand(cols=(0, 3, 1, 0)), ValueError, r"entry 3 \(row 2, col 0\) comes before"),
        (_hand(cols=(0, 3, 1, 1)), ValueError, r"entry 3 \(row 2, col 1\) repeats"),
        (_hand(rows=(0, 1, 2, 3)), ValueError, r"rows has index 3 out of range.*size 3"),
        (_hand(cols=(-1, 3, 0, 1)), ValueError, r"cols has index -1 out of range"),
        (_hand(vals=(1.0, np.nan, 0.0, 1.0)), ValueError, r"values must be finite; entry 1"),
        (_hand(vals=(1.0, 2.0, np.inf, 1.0)), ValueError, r"values must be finite; entry 2"),
        (_hand(vals=(1.0, 2.0, 3.0)), ValueError, r"same length; got 4, 4 and 3"),
        (_hand(shape=(3, 0)), ValueError, r"shape must be a tuple of two positive ints"),
        (_hand(shape=[3, 4]), ValueError, r"shape must be a tuple"),
        (_hand(shape=(3.0, 4)), ValueError, r"shape must be a tuple"),
        (_hand(rows=(), cols=(), vals=()), ValueError, r"no observed entries"),
        (
            (((3, 4), np.array([0, 1, 2, 2], dtype=np.int32)) + _hand()[2:]),
            TypeError,
            r"rows must be a numpy array of int64, got dtype int32",
        ),
        ((((3, 4), [0, 1, 2, 2]) + _hand()[2:]), TypeError, r"rows must be a numpy array"),
        (_hand()[:3] + (np.array([1, 2, 3, 4]),), TypeError, r"values .* float64"),
        (
            _hand()[:1] + (np.zeros((4, 1), dtype=np.int64),) + _hand()[2:],
            ValueError,
            r"rows must be one-dimensional",
        ),
    ],
)
def test_hand_built_problem_is_checked_where_it_is_made(args, err, match):
    # the constructor raises, so no such problem can reach fit or a kernel
    with pytest.raises(err, match=match) as info:
        fastdmf.CompletionProblem(*args)
    if "no observed" not in match:
        assert "fastdmf.completion(" in str(info.value)


def test_hand_built_ground_truth_must_match_the_shape():
    with pytest.raises(ValueError, match=r"ground_truth has shape \(4, 3\)"):
        fastdmf.CompletionProblem(*_hand(), np.zeros((4, 3)))


def test_matrix_errors():
    with pytest.raises(ValueError, match="infinite values"):
        fastdmf.completion(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="no observed entries"):
        fastdmf.completion(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="disagrees"):
        fastdmf.completion(np.ones((2, 3)), shape=(3, 2))
    with pytest.raises(TypeError, match="real numbers"):
        fastdmf.completion(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="two-dimensional"):
        fastdmf.completion(np.ones(3))
    dup = sp.coo_matrix((np.ones(2), (np.array([0, 0]), np.array([1, 1]))), shape=(2, 2))
    with pytest.raises(ValueError, match="duplicate"):
        fastdmf.completion(dup)
    with pytest.raises(ValueError, match="ground_truth has shape"):
        fastdmf.completion(*triplets(), shape=(3, 4), ground_truth=np.zeros((4, 3)))


def test_synthetic_follows_the_papers_recipe():
    p = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    truth = p.ground_truth
    assert np.isclose(np.linalg.norm(truth), 100.0, rtol=1e-12)
    sv = np.linalg.svd(truth, compute_uv=False)
    assert sv[4] > 1e-6 * sv[0] and sv[5] < 1e-10 * sv[0]
    assert p.n_observed == 2000
    assert len(set(zip(p.rows.tolist(), p.cols.tolist()))) == 2000
    np.testing.assert_array_equal(p.values, truth[p.rows, p.cols])
    again = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    np.testing.assert_array_equal(again.ground_truth, truth)
    other = fastdmf.synthetic_completion(seed=1)
    assert not np.array_equal(other.rows, p.rows)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank must be"),
        ({"rank": 11, "shape": (10, 20)}, "rank must be"),
        ({"n_observed": 0}, "n_observed must be"),
        ({"n_observed": 101, "shape": (10, 10)}, "n_observed must be"),
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastdmf.synthetic_completion(**kwargs)


def test_split_partitions_entries(square):
    train, test = square.split(0.25, seed=0)
    assert train.n_observed + test.n_observed == square.n_observed
    assert test.n_observed == 15
    both = set(zip(train.rows.tolist(), train.cols.tolist())) | set(
        zip(test.rows.tolist(), test.cols.tolist())
    )
    assert len(both) == square.n_observed
    assert train.ground_truth is square.ground_truth
    with pytest.raises(ValueError, match="test_fraction"):
        square.split(1.5)


def test_from_ratings_maps_ids_to_rows_and_columns():
    users = np.array([42, 7, 42, 99, 7])
    items = np.array(["b", "a", "c", "a", "c"])
    ratings = np.array([4.0, 3.0, 5.0, 1.0, 2.5])
    p = fastdmf.from_ratings(users, items, ratings)
    assert p.shape == (3, 3)
    np.testing.assert_array_equal(p.meta["user_ids"], [7, 42, 99])
    np.testing.assert_array_equal(p.meta["item_ids"], ["a", "b", "c"])
    got = {
        (p.meta["user_ids"][i], p.meta["item_ids"][j]): v
        for i, j, v in zip(p.rows, p.cols, p.values)
    }
    assert got == {(42, "b"): 4.0, (7, "a"): 3.0, (42, "c"): 5.0, (99, "a"): 1.0, (7, "c"): 2.5}
    with pytest.raises(ValueError, match="duplicate"):
        fastdmf.from_ratings([1, 1], [2, 2], [3.0, 4.0])
    with pytest.raises(ValueError, match="same length"):
        fastdmf.from_ratings([1, 2], [2], [3.0, 4.0])


def test_from_ratings_keeps_ids_as_they_are():
    # 1 and "1" are two users; ids that do not sort together keep their first appearance
    p = fastdmf.from_ratings([1, "1", 1], [5, 5, 6], [1.0, 2.0, 3.0])
    assert p.shape == (2, 2) and p.meta["user_ids"].tolist() == [1, "1"]
    assert [type(x) for x in p.meta["user_ids"]] == [int, str]
    got = {
        (p.meta["user_ids"][i], p.meta["item_ids"][j]): v
        for i, j, v in zip(p.rows.tolist(), p.cols.tolist(), p.values.tolist())
    }
    assert got == {(1, 5): 1.0, ("1", 5): 2.0, (1, 6): 3.0}
    q = fastdmf.from_ratings([3, "b", 1.5, "a"], ["x"] * 4, [1.0, 2.0, 3.0, 4.0])
    assert q.meta["user_ids"].tolist() == [3, "b", 1.5, "a"]
    np.testing.assert_array_equal(q.rows, [0, 1, 2, 3])
    # ids that sort together are sorted, whatever their types; equal ids are one
    r = fastdmf.from_ratings([2, 1.0, 1, 0.5], [0, 0, 1, 0], [1.0, 2.0, 3.0, 4.0])
    assert r.meta["user_ids"].tolist() == [0.5, 1.0, 2] and r.shape == (3, 2)
    # ints beyond float64's precision stay distinct
    big = fastdmf.from_ratings([2**63 - 1, 2**63], [0, 0], [1.0, 2.0])
    assert big.meta["user_ids"].tolist() == [2**63 - 1, 2**63]
    # tuples are ids too
    t = fastdmf.from_ratings([(1, 2), (0, 1), (1, 2)], [1, 1, 2], [1.0, 2.0, 3.0])
    assert t.meta["user_ids"].tolist() == [(0, 1), (1, 2)]
    np.testing.assert_array_equal(t.rows, [0, 1, 1])


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (([], [], []), ValueError, r"^no ratings: a completion problem needs at least one$"),
        (
            (["a", "b"], [1, 2], [1.0]),
            ValueError,
            r"^users, items and ratings must have the same length; got 2, 2 and 1$",
        ),
        (
            ([1, 2, 3], [1, 2], [1.0, 2.0, 3.0]),
            ValueError,
            r"^users, items and ratings must have the same length; got 3, 2 and 3$",
        ),
        (
            (np.zeros((2, 2)), [1, 2], [1.0, 2.0]),
            ValueError,
            r"^users must be one-dimensional, got shape \(2, 2\)$",
        ),
        (
            ([1, 2], [[1], [2]], [1.0, 2.0]),
            ValueError,
            r"^items must be one-dimensional, got nested sequences$",
        ),
        (([np.nan, 1.0], [1, 2], [1.0, 2.0]), ValueError, r"^users holds a NaN id"),
        ((["a", float("nan")], [1, 2], [1.0, 2.0]), ValueError, r"^users holds a NaN id"),
        (
            ([1, 2], [{1}, {2}], [1.0, 2.0]),
            TypeError,
            r"^items holds an id that cannot be hashed; use numbers, strings or tuples$",
        ),
        (
            (["ann", "bob", "ann"], [10, 10, 10], [1.0, 2.0, 3.0]),
            ValueError,
            r"^1 duplicate \(user, item\) pair\(s\), first \(user 'ann', item 10\); each pair",
        ),
        (([1, 2], [1, 2], [1.0, np.inf]), ValueError, r"^ratings holds 1 NaN or infinite"),
        (([1, 2], [1, 2], ["a", "b"]), TypeError, r"^ratings must be real numbers"),
    ],
)
def test_from_ratings_errors_name_its_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        fastdmf.from_ratings(*args)


# --------------------------------------------------------------------------- sensing


def test_synthetic_sensing_matches_paper_recipe():
    p = fastdmf.synthetic_sensing(shape=(30, 20), rank=3, n_measurements=400, seed=4)
    assert p.A.shape == (400, 30, 20) and p.n_observed == 400
    assert np.linalg.norm(p.ground_truth) == pytest.approx(np.sqrt(600), rel=1e-12)
    assert np.linalg.matrix_rank(p.ground_truth) == 3
    # y_k = <A_k, W*> entry by entry, and A's entries have standard deviation 1/n
    k = 17
    assert p.y[k] == pytest.approx(float(np.sum(p.A[k] * p.ground_truth)), rel=1e-12)
    assert np.std(p.A) == pytest.approx(1 / 20, rel=0.02)
    u, v = p.truth_factors
    np.testing.assert_allclose(u @ v.T, p.ground_truth, rtol=1e-12, atol=1e-12)
    q = fastdmf.synthetic_sensing(shape=(30, 20), rank=3, n_measurements=400, seed=4)
    np.testing.assert_array_equal(p.A, q.A)


def test_sensing_forms_and_split():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((50, 4, 6))
    y = rng.standard_normal(50)
    p = fastdmf.sensing(A, y)
    q = fastdmf.sensing(A.reshape(50, 24), y, shape=(4, 6))
    np.testing.assert_array_equal(p.A, q.A)
    assert fastdmf.sensing(p) is p
    w = rng.standard_normal((4, 6))
    np.testing.assert_allclose(p.measure(w), np.einsum("kij,ij->k", A, w), rtol=1e-12)
    train, test = p.split(0.2, seed=3)
    assert train.n_observed == 40 and test.n_observed == 10
    joined = np.sort(np.concatenate([train.y, test.y]))
    np.testing.assert_array_equal(joined, np.sort(y))


def test_sensing_copies_its_input():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 2, 2))
    y = np.ones(3)
    p = fastdmf.sensing(A, y)
    flat = fastdmf.sensing(A.reshape(3, 4), y, shape=(2, 2))
    before = A.copy()
    A[0, 0, 0] = np.nan
    y[1] = 5.0
    for q in (p, flat):
        assert not np.shares_memory(q.A, A) and not np.shares_memory(q.y, y)
        np.testing.assert_array_equal(q.A, before)
        np.testing.assert_array_equal(q.y, [1.0, 1.0, 1.0])


def test_measure_checks_the_shape():
    p = fastdmf.synthetic_sensing(shape=(4, 3), rank=1, n_measurements=20, seed=2)
    np.testing.assert_allclose(p.measure(p.ground_truth), p.y, rtol=1e-12)
    with pytest.raises(ValueError, match=r"W has shape \(3, 4\), the problem has shape \(4, 3\)"):
        p.measure(p.ground_truth.T)
    with pytest.raises(ValueError, match=r"W has shape \(12,\), the problem has shape \(4, 3\)"):
        p.measure(p.ground_truth.ravel())
    with pytest.raises(ValueError, match=r"W has shape \(4, 4\), the problem has shape \(4, 3\)"):
        p.measure(np.zeros((4, 4)))


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        ((np.zeros((3, 2, 2)),), {}, TypeError, "needs the measurements"),
        ((np.zeros((3, 4)), np.zeros(3)), {}, TypeError, "needs shape"),
        ((np.zeros((3, 4)), np.zeros(3)), {"shape": (3, 3)}, ValueError, "m \\* n = 9"),
        ((np.zeros((3, 2, 2)), np.zeros(2)), {}, ValueError, "y has 2"),
        ((np.zeros((3, 2, 2)), [0, np.nan, 0]), {}, ValueError, "NaN"),
        ((np.full((3, 2, 2), np.inf), np.zeros(3)), {}, ValueError, "A holds NaN"),
        ((np.zeros((0, 2, 2)), np.zeros(0)), {}, ValueError, "no measurements"),
        ((np.zeros(5), np.zeros(5)), {}, ValueError, "must be \\(p, m, n\\)"),
        ((np.zeros((3, 2, 2)), np.zeros(3)), {"shape": (2, 3)}, ValueError, "disagrees"),
        ((np.array([[["a"]]]), np.zeros(1)), {}, TypeError, "real numbers"),
        (
            (sp.csr_matrix(np.eye(4)), np.ones(4)),
            {"shape": (2, 2)},
            TypeError,
            r"A is a scipy.sparse CSR matrix; sensing takes dense operators only .*"
            r"pass A.toarray\(\)",
        ),
    ],
)
def test_sensing_rejects_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fastdmf.sensing(*args, **kwargs)
