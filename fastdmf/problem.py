"""Observed entries of a matrix: validated, canonical, ready for the kernels.

A completion problem is the set Omega = {(i_k, j_k, y_k)} of observed entries of an m x n
matrix. :func:`completion` builds one from a dense array with NaN for missing entries (or a
masked array), from a scipy.sparse array (every stored entry is observed, a stored zero is a
real zero; DIA is the exception, see :func:`completion`) or from ``(rows, cols, values)``
triplets with an explicit shape. :func:`synthetic_completion` draws the paper's problem
(Arora, Cohen, Hu & Luo 2019, section 5).

Entries are stored sorted by (row, col); that order is the order of every sum in the kernels,
so a problem always gives the same floating-point results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp

__all__ = [
    "CompletionProblem",
    "SensingProblem",
    "completion",
    "sensing",
    "synthetic_completion",
    "synthetic_sensing",
    "from_ratings",
]


@dataclass(frozen=True, eq=False)
class CompletionProblem:
    """Observed entries ``values[k] = M[rows[k], cols[k]]`` of an m x n matrix ``M``.

    Build it with :func:`completion` or :func:`synthetic_completion`, which accept any input
    (sorting the entries, converting the types). The constructor converts nothing; it checks
    (in O(|Omega|)) that its arrays already are what the kernels read, since unsorted rows give
    a wrong loss silently and an index out of range reads out of bounds, and raises
    ``TypeError`` or ``ValueError`` otherwise.

    Attributes
    ----------
    shape : (int, int)
        ``(m, n)``.
    rows, cols : ndarray of int64, shape (|Omega|,)
        Observed positions, sorted by row then column, no duplicates.
    values : ndarray of float64, shape (|Omega|,)
        Observed values, finite.
    ground_truth : ndarray, shape (m, n), or None
        The full matrix when known and small enough to hold (synthetic problems); used for
        the reconstruction error.
    truth_factors : (ndarray (m, r), ndarray (n, r)) or None
        ``(U, V)`` with ground truth ``U V^T``, when known in factored form (synthetic
        problems, any size); the reconstruction error then never forms an m x n matrix.
    """

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    ground_truth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    truth_factors: tuple | None = None

    def __post_init__(self):
        _check_canonical(self)

    @property
    def n_observed(self) -> int:
        """Number of observed entries |Omega|."""
        return int(self.rows.shape[0])

    def __repr__(self) -> str:
        m, n = self.shape
        known = self.ground_truth is not None or self.truth_factors is not None
        gt = ", with ground truth" if known else ""
        return f"CompletionProblem({m}x{n}, {self.n_observed} observed{gt})"

    @cached_property
    def index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rowptr, colptr, col_order)``: CSR row pointers, CSC column pointers, and the
        permutation that lists the entries column by column."""
        m, n = self.shape
        rowptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.rows, minlength=m), out=rowptr[1:])
        col_order = np.lexsort((self.rows, self.cols)).astype(np.int64)
        colptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.cols, minlength=n), out=colptr[1:])
        return rowptr, colptr, col_order

    def to_arrays(self) -> dict:
        """The arrays a checkpoint stores: ``rows``, ``cols``, ``values``, ``shape``, and
        ``ground_truth``, ``truth_u``, ``truth_v`` when known; the inverse of
        :meth:`from_arrays`. ``meta`` is not included (it may hold any Python object)."""
        out = {"rows": self.rows, "cols": self.cols, "values": self.values}
        return _with_truth(self, out)

    @classmethod
    def from_arrays(cls, arrays, meta=None) -> CompletionProblem:
        """The problem back from :meth:`to_arrays`'s dict (checked again)."""
        shape, truth, factors = _truth_from(arrays)
        return cls(
            shape,
            arrays["rows"],
            arrays["cols"],
            arrays["values"],
            truth,
            dict(meta or {}),
            factors,
        )

    def split(self, test_fraction: float = 0.1, seed=None):
        """Split the observed entries at random into ``(train, test)`` problems.

        Both keep the ground truth. ``seed`` is anything :func:`numpy.random.default_rng`
        accepts.
        """
        pick = _test_pick(self.n_observed, test_fraction, seed, "entry", "entries")
        return self.subset(~pick), self.subset(pick)

    def subset(self, mask) -> CompletionProblem:
        """The problem of the entries where ``mask`` (a boolean array over the entries) is
        true; shape, ground truth and meta kept."""
        return CompletionProblem(
            self.shape,
            self.rows[mask],
            self.cols[mask],
            self.values[mask],
            self.ground_truth,
            dict(self.meta),
            self.truth_factors,
        )


_FIX = "; fastdmf.completion(rows, cols, values, shape=(m, n)) builds a valid problem from them"


def _check_canonical(p) -> None:
    """Refuse a :class:`CompletionProblem` whose arrays the kernels cannot read as they are."""
    shape = p.shape
    if not (
        isinstance(shape, tuple)
        and len(shape) == 2
        and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape
        )
    ):
        raise ValueError(
            f"CompletionProblem shape must be a tuple of two positive ints, got {shape!r}{_FIX}"
        )
    m, n = shape
    for name, kind in (("rows", np.int64), ("cols", np.int64), ("values", np.float64)):
        arr = getattr(p, name)
        if not (isinstance(arr, np.ndarray) and arr.dtype == kind):
            what = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise TypeError(
                f"CompletionProblem {name} must be a numpy array of "
                f"{np.dtype(kind)}, got {what}{_FIX}"
            )
        if arr.ndim != 1:
            raise ValueError(
                f"CompletionProblem {name} must be one-dimensional, got shape {arr.shape}{_FIX}"
            )
    k = p.rows.shape[0]
    if not k == p.cols.shape[0] == p.values.shape[0]:
        raise ValueError(
            f"CompletionProblem rows, cols and values must have the same length; "
            f"got {k}, {p.cols.shape[0]} and {p.values.shape[0]}{_FIX}"
        )
    if k == 0:
        raise ValueError("CompletionProblem has no observed entries: it needs at least one")
    for name, arr, bound in (("rows", p.rows, m), ("cols", p.cols, n)):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= bound:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"CompletionProblem {name} has index {bad} out of range for a "
                f"dimension of size {bound}{_FIX}"
            )
    # sorted by (row, col), no repeat: each step raises the row, or keeps it and raises the col
    dr = np.diff(p.rows)
    bad = np.flatnonzero((dr < 0) | ((dr == 0) & (np.diff(p.cols) <= 0)))
    if bad.size:
        at = int(bad[0]) + 1
        same = p.rows[at] == p.rows[at - 1] and p.cols[at] == p.cols[at - 1]
        what = "repeats the position before it" if same else "comes before the one before it"
        raise ValueError(
            f"CompletionProblem entries must be sorted by row then column, each "
            f"position once; entry {at} (row {int(p.rows[at])}, col "
            f"{int(p.cols[at])}) {what}{_FIX} (sorting, and refusing repeats)"
        )
    if not np.isfinite(p.values).all():
        at = int(np.flatnonzero(~np.isfinite(p.values))[0])
        raise ValueError(
            f"CompletionProblem values must be finite; entry {at} is {p.values[at]}{_FIX}"
        )
    if p.ground_truth is not None and np.shape(p.ground_truth) != (m, n):
        raise ValueError(
            f"CompletionProblem ground_truth has shape {np.shape(p.ground_truth)}, "
            f"the problem has shape {shape}"
        )


def completion(*args, shape=None, ground_truth=None) -> CompletionProblem:
    """Build a validated completion problem.

    Accepted forms::

        completion(M)                              # dense array, NaN = missing
        completion(np.ma.masked_array(M, mask))    # masked entries missing (and NaN)
        completion(S)                              # scipy.sparse: stored entries observed
        completion(rows, cols, values, shape=(m, n))
        completion(problem)                        # returned as it is

    In a dense array a NaN entry is missing and every other entry observed; in a masked
    array the masked entries are missing too. In a scipy.sparse matrix every stored entry is
    observed and a stored zero is an observed zero, except in the DIA format: a DIA matrix
    stores whole diagonals, so it cannot tell a zero that was meant from one that only fills
    its diagonal, and zeros on its diagonals are not observations. To observe zeros there,
    build the matrix in COO or CSR form (scipy's conversion from DIA drops the zeros too).
    BSR stores whole blocks: every entry of a stored block is observed, zeros included.

    Parameters
    ----------
    *args
        One of the forms above.
    shape : (int, int), optional
        Required with triplets; checked against the array's shape otherwise.
    ground_truth : array_like, shape (m, n), optional
        The full matrix, when known; enables the reconstruction error in trajectories.

    Raises
    ------
    ValueError, TypeError
        With a message naming the offending input: indices out of range or negative,
        duplicate positions, NaN or inf values, no observations, shape mismatches,
        non-numeric data.
    """
    if len(args) == 1 and isinstance(args[0], CompletionProblem):
        if ground_truth is not None or shape is not None:
            raise TypeError("completion(problem) takes no shape= or ground_truth=")
        return args[0]
    if len(args) == 1:
        rows, cols, values, shape = _from_matrix(args[0], shape)
    elif len(args) == 3:
        if shape is None:
            raise TypeError(
                "completion(rows, cols, values) needs shape=(m, n): the matrix size cannot be "
                "inferred from the observed positions"
            )
        rows, cols, values = args
    else:
        raise TypeError(
            f"completion() takes a matrix or (rows, cols, values); got {len(args)} positional "
            "arguments"
        )
    shape = _check_shape(shape)
    rows = check_index(rows, "rows", shape[0])
    cols = check_index(cols, "cols", shape[1])
    values = _check_values(values, "values")
    if not rows.shape == cols.shape == values.shape:
        raise ValueError(
            f"rows, cols and values must have the same length; got {rows.shape[0]}, "
            f"{cols.shape[0]} and {values.shape[0]}"
        )
    if rows.shape[0] == 0:
        raise ValueError("no observed entries: a completion problem needs at least one")
    order = np.lexsort((cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    dup = np.flatnonzero((rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1]))
    if dup.size:
        i, j = int(rows[dup[0]]), int(cols[dup[0]])
        raise ValueError(
            f"{dup.size} duplicate position(s), first at (row {i}, col {j}); each entry may "
            "be observed once (average or drop the repeats first)"
        )
    if ground_truth is not None:
        ground_truth = _check_values(ground_truth, "ground_truth", ndim=2)
        if ground_truth.shape != shape:
            raise ValueError(
                f"ground_truth has shape {ground_truth.shape}, the problem has shape {shape}"
            )
    return CompletionProblem(shape, rows, cols, values, ground_truth)


def synthetic_completion(
    shape=(100, 100), rank: int = 5, n_observed: int = 2000, seed=0, dense_truth=None
) -> CompletionProblem:
    """The paper's synthetic completion problem (Arora et al. 2019, section 5).

    ``W* = U V^T`` with ``U`` (m x rank) and ``V`` (n x rank) of i.i.d. N(0, 1) entries,
    rescaled so that ``||W*||_F = sqrt(m n)`` (RMS entry 1); ``n_observed`` positions drawn
    uniformly without replacement. The problem keeps ``truth_factors = (U, V)`` (rescaled),
    and the dense ``ground_truth`` when ``dense_truth`` is true (default: when m n is at most
    ``config.DENSE_TRUTH_MAX``), so large problems never hold an m x n array.

    Example
    -------
    >>> p = synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
    >>> p.n_observed, round(float(np.linalg.norm(p.ground_truth)), 6)
    (2000, 100.0)
    """
    from . import config

    m, n = _check_shape(shape)
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= min(m, n)):
        raise ValueError(f"rank must be an integer in [1, {min(m, n)}], got {rank!r}")
    if not (isinstance(n_observed, (int, np.integer)) and 1 <= n_observed <= m * n):
        raise ValueError(f"n_observed must be an integer in [1, {m * n}], got {n_observed!r}")
    if dense_truth is None:
        dense_truth = m * n <= config.DENSE_TRUTH_MAX
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((m, rank))
    v = rng.standard_normal((n, rank))
    # ||U V^T||_F^2 = sum((U^T U) * (V^T V)), without the product
    u *= np.sqrt(m * n) / np.sqrt(np.sum((u.T @ u) * (v.T @ v)))
    flat = rng.choice(m * n, size=int(n_observed), replace=False)
    rows, cols = np.divmod(flat, n)
    truth = u @ v.T if dense_truth else None
    values = truth[rows, cols] if dense_truth else np.einsum("kr,kr->k", u[rows], v[cols])
    p = completion(rows, cols, values, shape=(m, n), ground_truth=truth)
    p = CompletionProblem(p.shape, p.rows, p.cols, p.values, truth, {}, (u, v))
    p.meta.update(kind="synthetic_completion", rank=int(rank), seed=_seed_repr(seed))
    return p


def from_ratings(users, items, ratings) -> CompletionProblem:
    """A completion problem from rating triplets ``(user, item, rating)`` with arbitrary ids.

    Users become rows and items columns. The ids are kept as the objects they are, so
    distinct ids stay distinct (``1`` and ``"1"`` are two users; ids equal in Python, such as
    ``1`` and ``1.0``, are one); a NaN id raises. Rows and columns are numbered in sorted id order
    when the ids can be sorted together (all numbers, or all strings), else in the order of
    first appearance. The ids are kept in ``meta["user_ids"]`` and ``meta["item_ids"]`` (row
    i is user ``user_ids[i]``; an object array when the ids mix types). A user and item pair
    may appear once (duplicates raise, naming the pair); split with
    :meth:`CompletionProblem.split`.

    Example
    -------
    >>> p = from_ratings(["ann", "bob", "ann"], [10, 10, 30], [4.0, 3.5, 5.0])
    >>> p.shape, p.meta["user_ids"].tolist(), p.meta["item_ids"].tolist()
    ((2, 2), ['ann', 'bob'], [10, 30])
    >>> from_ratings([2, "b", 1], ["x", "x", "x"], [1.0, 2.0, 3.0]).meta["user_ids"].tolist()
    [2, 'b', 1]
    """
    users, items = _id_array(users, "users"), _id_array(items, "items")
    ratings = _check_values(ratings, "ratings")
    if not len(users) == len(items) == len(ratings):
        raise ValueError(
            f"users, items and ratings must have the same length; got {len(users)}, "
            f"{len(items)} and {len(ratings)}"
        )
    if len(users) == 0:
        raise ValueError("no ratings: a completion problem needs at least one")
    user_ids, rows = _number_ids(users, "users")
    item_ids, cols = _number_ids(items, "items")
    order = np.lexsort((cols, rows))
    dup = np.flatnonzero(
        (rows[order][1:] == rows[order][:-1]) & (cols[order][1:] == cols[order][:-1])
    )
    if dup.size:
        k = order[dup[0]]
        raise ValueError(
            f"{dup.size} duplicate (user, item) pair(s), first (user {_plain(users[k])!r}, "
            f"item {_plain(items[k])!r}); each pair may be rated once (average or drop the "
            "repeats first)"
        )
    p = completion(rows, cols, ratings, shape=(len(user_ids), len(item_ids)))
    p.meta.update(kind="ratings", user_ids=user_ids, item_ids=item_ids)
    return p


def _plain(x):
    """A numpy scalar as the Python object it holds (for messages)."""
    return x.item() if isinstance(x, np.generic) else x


def _id_array(ids, name):
    """The ids as a 1-d array that holds each id as it is: a typed array when numpy's
    conversion keeps every id, else an object array."""
    if isinstance(ids, (list, tuple)):
        # np.asarray would turn [1, "1"] into ["1", "1"], and [2**63 - 1, 2**63] into two
        # equal floats: convert a list only when its ids share one type numpy keeps exactly
        kinds = {type(x) for x in ids}
        kind = kinds.pop() if len(kinds) == 1 else None
        arr = None
        if kind is int:
            try:
                arr = np.array(ids, dtype=np.int64)
            except OverflowError:
                pass
        elif kind in (str, float, bool) or (kind is not None and issubclass(kind, np.generic)):
            arr = np.asarray(ids)
        if arr is None:
            if any(isinstance(x, (list, np.ndarray)) for x in ids):
                raise ValueError(f"{name} must be one-dimensional, got nested sequences")
            arr = np.empty(len(ids), dtype=object)
            for k, x in enumerate(ids):
                arr[k] = x
    else:
        arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _number_ids(ids, name):
    """``(distinct ids, index of each id)``: the ids sorted when they sort together, else in
    the order of first appearance."""
    if ids.dtype != object:
        uniq, where = np.unique(ids, return_inverse=True)
        where = where.reshape(-1)
    else:
        # one id per Python equality (a hash table), so ids that do not compare keep apart
        first = {}
        try:
            where = np.fromiter(
                (first.setdefault(x, len(first)) for x in ids), dtype=np.int64, count=len(ids)
            )
        except TypeError:
            raise TypeError(
                f"{name} holds an id that cannot be hashed; use numbers, strings or tuples"
            ) from None
        keys = list(first)
        try:
            keys = sorted(keys)
        except TypeError:  # 1 and "1": keep the order of first appearance
            pass
        rank = np.empty(len(keys), dtype=np.int64)
        rank[[first[x] for x in keys]] = np.arange(len(keys))
        where = rank[where]
        uniq = np.empty(len(keys), dtype=object)
        for k, x in enumerate(keys):
            uniq[k] = x
    if uniq.dtype.kind == "f" or uniq.dtype == object:
        if any(isinstance(x, (float, np.floating)) and x != x for x in uniq):
            raise ValueError(
                f"{name} holds a NaN id; drop the ratings without an id or give them one"
            )
    return uniq, where.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class SensingProblem:
    """Linear measurements ``y[k] = <A[k], M>`` of an m x n matrix ``M`` (matrix sensing).

    Build it with :func:`sensing` or :func:`synthetic_sensing`, which validate their input.

    Attributes
    ----------
    shape : (int, int)
        ``(m, n)``.
    A : ndarray of float64, shape (p, m, n)
        The measurement matrices, C-contiguous; ``A.reshape(p, m * n)`` is the operator as a
        matrix acting on ``vec(M)`` (row-major). :func:`sensing` copies the caller's array.
    y : ndarray of float64, shape (p,)
        The measurements, finite (a copy of the caller's).
    ground_truth, truth_factors, meta
        As in :class:`CompletionProblem`.

    The loss is the paper's mean ``(1/p) sum_k (<A[k], W> - y[k])^2``.
    """

    shape: tuple[int, int]
    A: np.ndarray
    y: np.ndarray
    ground_truth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    truth_factors: tuple | None = None

    @property
    def n_observed(self) -> int:
        """Number of measurements p."""
        return int(self.y.shape[0])

    @property
    def operator(self) -> np.ndarray:
        """The measurements as a ``(p, m * n)`` matrix (a view of ``A``)."""
        return self.A.reshape(self.n_observed, -1)

    def measure(self, w) -> np.ndarray:
        """``<A[k], w>`` for every k, for ``w`` of the problem's shape (m, n)."""
        w = np.asarray(w, dtype=np.float64)
        if w.shape != tuple(self.shape):
            # a transposed or flattened w would multiply without error and give other numbers
            raise ValueError(f"W has shape {w.shape}, the problem has shape {tuple(self.shape)}")
        return self.operator @ w.reshape(-1)

    def __repr__(self) -> str:
        m, n = self.shape
        known = self.ground_truth is not None or self.truth_factors is not None
        gt = ", with ground truth" if known else ""
        return f"SensingProblem({m}x{n}, {self.n_observed} measurements{gt})"

    def to_arrays(self) -> dict:
        """The arrays a checkpoint stores: ``A``, ``y``, ``shape``, and ``ground_truth``,
        ``truth_u``, ``truth_v`` when known; the inverse of :meth:`from_arrays`."""
        return _with_truth(self, {"A": self.A, "y": self.y})

    @classmethod
    def from_arrays(cls, arrays, meta=None) -> SensingProblem:
        """The problem back from :meth:`to_arrays`'s dict."""
        shape, truth, factors = _truth_from(arrays)
        return cls(shape, arrays["A"], arrays["y"], truth, dict(meta or {}), factors)

    def split(self, test_fraction: float = 0.1, seed=None):
        """Split the measurements at random into ``(train, test)`` problems."""
        pick = _test_pick(self.n_observed, test_fraction, seed, "measurement", "measurements")
        return self._subset(~pick), self._subset(pick)

    def _subset(self, mask):
        return SensingProblem(
            self.shape,
            np.ascontiguousarray(self.A[mask]),
            self.y[mask],
            self.ground_truth,
            dict(self.meta),
            self.truth_factors,
        )


def sensing(A, y=None, shape=None, ground_truth=None) -> SensingProblem:
    """Build a validated sensing problem from measurement matrices and measurements.

    Accepted forms::

        sensing(A, y)                    # A of shape (p, m, n)
        sensing(A, y, shape=(m, n))      # A of shape (p, m * n), rows act on row-major vec(M)
        sensing(problem)                 # returned as it is

    ``A`` is a dense array: the kernels hold the operator dense. A scipy.sparse ``A`` raises
    ``TypeError``; pass ``A.toarray()``. ``A`` and ``y`` are copied (as :func:`completion`
    copies its input), so later changes to the caller's arrays do not reach the validated
    problem; the copy of ``A`` takes p * m * n float64 numbers.

    Raises
    ------
    ValueError, TypeError
        With a message naming the offending input: wrong dimensions, a shape that does not
        match ``A``, NaN or inf in ``A`` or ``y``, no measurements, a length mismatch, a
        scipy.sparse ``A``.

    Example
    -------
    >>> A = np.zeros((2, 2, 3)); A[0, 0, 0] = A[1, 1, 2] = 1.0
    >>> sensing(A, [1.0, 2.0])
    SensingProblem(2x3, 2 measurements)
    """
    if isinstance(A, SensingProblem):
        if y is not None or shape is not None or ground_truth is not None:
            raise TypeError("sensing(problem) takes no y=, shape= or ground_truth=")
        return A
    if y is None:
        raise TypeError("sensing(A, y) needs the measurements y")
    if sp.issparse(A):
        raise TypeError(
            f"A is a scipy.sparse {A.format.upper()} matrix; sensing takes dense operators only "
            "(the kernels hold A dense): pass A.toarray()"
        )
    arr = np.asarray(A)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"A must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim == 3:
        mshape = _check_shape(arr.shape[1:])
        if shape is not None and _check_shape(shape) != mshape:
            raise ValueError(f"shape={tuple(shape)} disagrees with A's matrices of shape {mshape}")
    elif arr.ndim == 2:
        if shape is None:
            raise TypeError(
                "A of shape (p, m * n) needs shape=(m, n): the matrix shape cannot be inferred"
            )
        mshape = _check_shape(shape)
        if arr.shape[1] != mshape[0] * mshape[1]:
            raise ValueError(
                f"A has {arr.shape[1]} columns; shape={mshape} needs m * n = "
                f"{mshape[0] * mshape[1]}"
            )
        arr = arr.reshape(arr.shape[0], *mshape)
    else:
        raise ValueError(
            f"A must be (p, m, n) or (p, m * n) with shape=, got an array of shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError("no measurements: a sensing problem needs at least one")
    y = _check_values(y, "y")
    if y.shape[0] != arr.shape[0]:
        raise ValueError(f"A holds {arr.shape[0]} measurement matrices but y has {y.shape[0]}")
    # a copy, never a view: the caller's later edits must not reach a validated problem
    arr = np.array(arr, dtype=np.float64, order="C", copy=True)
    if not np.isfinite(arr).all():
        raise ValueError("A holds NaN or infinite values")
    if ground_truth is not None:
        ground_truth = _check_values(ground_truth, "ground_truth", ndim=2)
        if ground_truth.shape != mshape:
            raise ValueError(
                f"ground_truth has shape {ground_truth.shape}, the problem has shape {mshape}"
            )
    return SensingProblem(mshape, arr, y, ground_truth)


def synthetic_sensing(
    shape=(100, 100), rank: int = 5, n_measurements: int = 2000, seed=0
) -> SensingProblem:
    """The paper's synthetic sensing problem (Arora et al. 2019, section 5).

    Ground truth as in :func:`synthetic_completion` (rank ``rank``, ``||W*||_F = sqrt(m n)``);
    ``A[k]`` with i.i.d. N(0, 1) / n entries, ``n`` the number of columns, so that the
    measurements ``y[k] = <A[k], W*>`` have unit variance for square problems.

    Example
    -------
    >>> p = synthetic_sensing(shape=(20, 20), rank=2, n_measurements=300, seed=0)
    >>> p.A.shape, bool(np.allclose(p.measure(p.ground_truth), p.y))
    ((300, 20, 20), True)
    """
    m, n = _check_shape(shape)
    if not (isinstance(rank, (int, np.integer)) and 1 <= rank <= min(m, n)):
        raise ValueError(f"rank must be an integer in [1, {min(m, n)}], got {rank!r}")
    if not (isinstance(n_measurements, (int, np.integer)) and n_measurements >= 1):
        raise ValueError(f"n_measurements must be a positive integer, got {n_measurements!r}")
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((m, rank))
    v = rng.standard_normal((n, rank))
    u *= np.sqrt(m * n) / np.linalg.norm(u @ v.T)
    truth = u @ v.T
    A = rng.standard_normal((int(n_measurements), m, n)) / n
    y = A.reshape(A.shape[0], -1) @ truth.reshape(-1)
    p = SensingProblem((m, n), A, y, truth, {}, (u, v))
    p.meta.update(kind="synthetic_sensing", rank=int(rank), seed=_seed_repr(seed))
    return p


# --------------------------------------------------------------------------- validation


def _with_truth(problem, arrays) -> dict:
    """``arrays`` plus the shape and the ground truth (dense and factored) when known."""
    arrays["shape"] = np.asarray(problem.shape, dtype=np.int64)
    if problem.ground_truth is not None:
        arrays["ground_truth"] = problem.ground_truth
    if problem.truth_factors is not None:
        arrays["truth_u"], arrays["truth_v"] = problem.truth_factors
    return {k: np.asarray(v) for k, v in arrays.items()}


def _truth_from(arrays):
    """``(shape, ground_truth, truth_factors)`` of a :func:`_with_truth` dict."""
    shape = tuple(int(s) for s in arrays["shape"])
    u = arrays.get("truth_u")
    return shape, arrays.get("ground_truth"), (None if u is None else (u, arrays["truth_v"]))


def _test_pick(k, test_fraction, seed, one, many):
    """A random boolean mask choosing ``round(test_fraction * k)`` of ``k`` items."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n_test = int(round(test_fraction * k))
    if n_test == 0 or n_test == k:
        raise ValueError(
            f"test_fraction={test_fraction} of {k} {many} leaves an empty split; "
            f"choose a fraction that keeps at least one {one} on each side"
        )
    pick = np.zeros(k, dtype=bool)
    pick[np.random.default_rng(seed).choice(k, n_test, replace=False)] = True
    return pick


def _seed_repr(seed):
    return seed if seed is None or isinstance(seed, (int, np.integer)) else repr(seed)


def _check_shape(shape):
    try:
        m, n = (int(s) for s in shape)
        ok = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a pair of integers (m, n), got {shape!r}") from None
    if not ok or m < 1 or n < 1:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    return (m, n)


def check_index(idx, name, bound):
    arr = np.asarray(idx)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise TypeError(f"{name} must hold integers; it holds non-integral floats")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind in "uf" and arr.max() >= bound:  # before int64 wraps it
        raise ValueError(
            f"{name} has index {arr.max()} out of range for a dimension of size {bound}"
        )
    arr = arr.astype(np.int64)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0:
            raise ValueError(f"{name} has a negative index ({lo}); indices start at 0")
        if hi >= bound:
            raise ValueError(f"{name} has index {hi} out of range for a dimension of size {bound}")
    return arr


def _check_values(values, name, ndim=1):
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s), first at index {where}; "
            "mark missing entries by leaving them out (or NaN in a dense matrix)"
        )
    return arr


def _from_matrix(mat, shape):
    if sp.issparse(mat):
        coo = sp.coo_matrix(mat)
        if mat.format == "dia":
            # a DIA matrix stores whole diagonals: its zeros fill them, they are not data
            # (scipy's own conversion drops them; say so here rather than rely on it)
            coo.eliminate_zeros()
        rows, cols, values = coo.row, coo.col, coo.data
        mshape = coo.shape
    else:
        # np.asarray drops a masked array's mask: read the mask first, then the data
        masked = np.ma.getmaskarray(mat) if isinstance(mat, np.ma.MaskedArray) else None
        arr = np.asarray(mat.data if masked is not None else mat)
        if arr.dtype.kind not in "iuf":
            raise TypeError(
                f"the matrix must hold real numbers (NaN for missing), got dtype {arr.dtype}"
            )
        if arr.ndim != 2:
            raise ValueError(f"the matrix must be two-dimensional, got shape {arr.shape}")
        arr = arr.astype(np.float64)
        if masked is not None:
            arr[masked] = np.nan  # a masked entry is missing, whatever value lies under it
        if np.isinf(arr).any():
            raise ValueError(
                "the matrix holds infinite values; mark missing entries with NaN, not inf"
            )
        rows, cols = np.nonzero(~np.isnan(arr))
        values = arr[rows, cols]
        mshape = arr.shape
    if shape is not None and tuple(shape) != tuple(mshape):
        raise ValueError(f"shape={tuple(shape)} disagrees with the matrix's shape {mshape}")
    return rows, cols, values, mshape
