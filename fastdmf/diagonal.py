"""Deep diagonal networks for sparse regression: the problem, the parameter layout, the
NumPy reference and the record values.

The model (Woodworth et al. 2020, "Kernel and rich regimes in overparametrized models"): a
depth-N diagonal network predicts ``x -> w . x`` with

    w = u^N - v^N    (elementwise powers),    u(0) = v(0) = alpha * 1,

trained on the mean squared loss ``L = (1/n) ||X w - y||^2`` (the paper's convention for the
matrix kinds: mean, no 1/2). With ``g = (2/n) X^T (X w - y)`` the gradient of L in w,

    dL/du = N u^(N-1) * g,    dL/dv = -N v^(N-1) * g.

It is the simplest deep factorization (each coordinate a product of N scalars), and its
gradient flow has an exact limit (:mod:`fastdmf.diagonal_theory`): small alpha tends to basis
pursuit (min ||w||_1), large alpha to the minimum-l2 interpolant.

The parameters live in one flat vector ``theta = [u; v]`` (2 d entries, u first), so the
optimisers and step loops of the matrix kinds run on it unchanged; :class:`DiagonalLayout`
plays the part of :class:`fastdmf.factors.FactorLayout`. The compiled kernels are in
:mod:`fastdmf.kernels.diagonal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .problem import _test_pick
from .result import FitResult
from .trajectory import Trajectory

__all__ = [
    "SparseRegressionProblem",
    "sparse_regression",
    "synthetic_sparse_regression",
    "DiagonalLayout",
    "DiagonalParams",
    "DiagonalResult",
    "initialize",
    "coef",
    "reference_loss_and_grad",
    "record_values",
    "check_fit",
    "layout",
    "measure",
    "SUPPORT_RTOL",
]

#: A coordinate of w is in the support when ``|w_i| > SUPPORT_RTOL * max_j |w_j|``. Relative,
#: so the count does not depend on the scale of y; 1e-3 sits far above float32 rounding
#: (~1e-7 relative) and above the leak ``~alpha^N`` of the off-support coordinates of a
#: small-alpha fit, and far below the smallest nonzero of the synthetic ground truths (all of
#: magnitude 1, so 1e-3 of the largest).
SUPPORT_RTOL = 1e-3


# --------------------------------------------------------------------------- the problem


@dataclass(frozen=True, eq=False)
class SparseRegressionProblem:
    """Linear regression data ``y ~ X w*`` with n samples and d features (n < d allowed).

    Build it with :func:`sparse_regression` or :func:`synthetic_sparse_regression`; the
    constructor checks its arguments (and raises ``TypeError`` or ``ValueError`` saying what
    is wrong) but converts nothing, since the kernels read ``X`` and ``y`` as they are.

    Attributes
    ----------
    X : ndarray of float64, shape (n, d)
        The design, C-contiguous (the kernels stream its rows), finite.
    y : ndarray of float64, shape (n,)
        The targets, finite.
    ground_truth : ndarray of float64, shape (d,), or None
        ``w*`` when known (synthetic problems): the test error is measured against it.
    meta : dict
        How the problem was made (the generator's arguments), for records.

    ``n_observed`` is n, so code written for the matrix kinds, which divides by the number of
    observations, reads the number of samples here.
    """

    X: np.ndarray
    y: np.ndarray
    ground_truth: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_canonical(self)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, d)``: samples, features."""
        return (int(self.X.shape[0]), int(self.X.shape[1]))

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_observed(self) -> int:
        """The number of samples n (the loss is a mean over them)."""
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        n, d = self.shape
        gt = ""
        if self.ground_truth is not None:
            gt = f", {int(np.count_nonzero(self.ground_truth))}-sparse ground truth"
        return f"SparseRegressionProblem({n} samples x {d} features{gt})"

    def split(self, test_fraction: float = 0.1, seed=None):
        """Split the samples at random into ``(train, test)`` problems (held-out samples;
        both keep the ground truth and the meta)."""
        pick = _test_pick(self.n_samples, test_fraction, seed, "sample", "samples")
        return self._subset(~pick), self._subset(pick)

    def held_out_error(self, params, offsets=None) -> float:
        """The mean squared error ``mean((X w - y)^2)`` of a fit on these samples (held-out
        ones: ``fit(train, test=test)`` records it as the test error when the training
        problem has no ground truth).

        ``params`` is a :class:`DiagonalParams` (``[u, v]`` with its depth) or the
        coefficients ``w`` themselves (d,). ``offsets`` must be None: a diagonal network
        fits no offsets."""
        if offsets is not None:
            raise ValueError("a sparse-regression fit has no offsets; pass offsets=None")
        w = (
            params.coef
            if isinstance(params, DiagonalParams)
            else np.asarray(params, dtype=np.float64)
        )
        if w.shape != (self.n_features,):
            raise ValueError(
                f"coefficients of shape {w.shape} for a problem with "
                f"{self.n_features} features; pass [u, v] as DiagonalParams "
                "(layout.unpack(theta)) or w itself"
            )
        r = self.X @ w - self.y
        return float(r @ r / self.n_samples)

    def _subset(self, mask):
        return SparseRegressionProblem(
            np.ascontiguousarray(self.X[mask]),
            self.y[mask].copy(),
            self.ground_truth,
            dict(self.meta),
        )

    def to_arrays(self) -> dict:
        """The arrays a checkpoint stores (``ground_truth`` only when known); the inverse of
        :meth:`from_arrays`. ``meta`` is not included (it may hold any Python object)."""
        out = {"X": self.X, "y": self.y}
        if self.ground_truth is not None:
            out["ground_truth"] = self.ground_truth
        return out

    @classmethod
    def from_arrays(cls, arrays, meta=None) -> SparseRegressionProblem:
        """The problem back from :meth:`to_arrays`'s dict (validated again)."""
        return sparse_regression(arrays["X"], arrays["y"], arrays.get("ground_truth"), meta=meta)


def _check_canonical(p) -> None:
    """What the kernels rely on: float64 arrays of matching, non-empty shapes, finite."""
    for name in ("X", "y"):
        arr = getattr(p, name)
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float64:
            got = type(arr).__name__ + (f" of {arr.dtype}" if hasattr(arr, "dtype") else "")
            raise TypeError(
                f"SparseRegressionProblem {name} must be a numpy array of float64, got {got}; "
                "build the problem with fastdmf.sparse_regression(X, y), which converts"
            )
    X, y = p.X, p.y
    if X.ndim != 2:
        raise ValueError(
            f"X must be two-dimensional (n samples x d features), got shape {X.shape}; "
            "reshape a single sample to (1, d) or a single feature to (n, 1)"
        )
    if y.ndim != 1:
        raise ValueError(
            f"y must be one-dimensional (one target per sample), got shape {y.shape}; "
            "for a column vector pass y.ravel()"
        )
    n, d = X.shape
    if n == 0 or d == 0:
        raise ValueError(
            f"X has shape {X.shape}: a sparse-regression problem needs at least one sample "
            "and one feature"
        )
    if y.shape[0] != n:
        raise ValueError(
            f"X has {n} rows (samples) but y has {y.shape[0]} entries: they must have one "
            "target per sample (is X transposed?)"
        )
    if not X.flags.c_contiguous:
        raise ValueError(
            "SparseRegressionProblem X must be C-contiguous; build the problem "
            "with fastdmf.sparse_regression(X, y), which copies it"
        )
    for name, arr in (("X", X), ("y", y)):
        bad = ~np.isfinite(arr)
        if bad.any():
            at = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} must be finite; {name}{list(at)} is {arr[at]}: drop or impute the "
                "samples with missing values first"
            )
    truth = p.ground_truth
    if truth is not None:
        if not isinstance(truth, np.ndarray) or truth.shape != (d,):
            raise ValueError(
                f"ground_truth has shape {np.shape(truth)}, expected ({d},): one "
                "coefficient per feature"
            )
        if not np.all(np.isfinite(truth)):
            raise ValueError("ground_truth must be finite")


def _real_array(a, name) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64, order="C")  # a copy: the caller keeps theirs


def sparse_regression(X, y, ground_truth=None, meta=None) -> SparseRegressionProblem:
    """A validated sparse-regression problem from a design ``X`` (n x d) and targets ``y``.

    The arrays are copied (float64, C order), so later changes to the caller's arrays do not
    reach the problem. Raises ``ValueError`` for mismatched lengths, NaN or inf, an empty
    ``X`` or wrong dimensions, ``TypeError`` for non-numeric input.

    Example
    -------
    >>> import numpy as np
    >>> p = sparse_regression(np.eye(2, 3), [1.0, 2.0])
    >>> p.shape, p.n_observed
    ((2, 3), 2)
    """
    X = _real_array(X, "X")
    y = _real_array(y, "y")
    if ground_truth is not None:
        ground_truth = _real_array(ground_truth, "ground_truth")
    return SparseRegressionProblem(X, y, ground_truth, dict(meta or {}))


def synthetic_sparse_regression(
    n_samples, n_features, sparsity, noise=0.0, seed=0
) -> SparseRegressionProblem:
    """Gaussian design, sparse ground truth: ``y = X w* + noise * e``.

    ``X`` has i.i.d. N(0, 1) entries; ``w*`` has ``sparsity`` nonzeros on a support drawn
    uniformly without replacement, each ``+1`` or ``-1`` with a fair random sign (so every
    nonzero has magnitude 1 and the support is unambiguous); ``e`` has i.i.d. N(0, 1) entries.
    ``sparsity = 0`` gives ``w* = 0``. One ``numpy.random.default_rng(seed)`` draws X, then
    the support, the signs and the noise, in that order.
    """
    for name, v, low in (("n_samples", n_samples, 1), ("n_features", n_features, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if (
        not isinstance(sparsity, (int, np.integer))
        or isinstance(sparsity, bool)
        or not 0 <= sparsity <= n_features
    ):
        raise ValueError(
            f"sparsity must be an integer in [0, n_features = {n_features}] (the number of "
            f"nonzeros of w*), got {sparsity!r}"
        )
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(
            f"noise must be a finite number >= 0 (a standard deviation), got {noise!r}"
        )
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    truth = np.zeros(n_features)
    support = rng.choice(n_features, size=int(sparsity), replace=False)
    truth[support] = rng.choice([-1.0, 1.0], size=int(sparsity))
    y = X @ truth
    if noise > 0:
        y = y + noise * rng.standard_normal(n_samples)
    meta = {
        "generator": "synthetic_sparse_regression",
        "n_samples": int(n_samples),
        "n_features": int(n_features),
        "sparsity": int(sparsity),
        "noise": float(noise),
        "seed": seed,
    }
    return SparseRegressionProblem(X, y, truth, meta)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DiagonalLayout:
    """The flat parameters ``theta = [u; v]`` of a depth-``depth`` diagonal network with
    ``n_features`` coordinates: the interface of :class:`fastdmf.factors.FactorLayout`
    (``dims``, ``offsets``, ``size``, ``pack``, ``unpack``) with the two "factors" u and v.

    ``dims = (d, depth)``: the length of u and of v, and N (what the kernels read, and what
    a checkpoint stores to rebuild the layout with :meth:`from_dims`)."""

    n_features: int
    depth: int

    def __post_init__(self):
        d, N = self.n_features, self.depth
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
            raise ValueError(f"n_features must be a positive integer, got {d!r}")
        if not isinstance(N, (int, np.integer)) or isinstance(N, bool) or N < 1:
            raise ValueError(f"depth must be an integer >= 1, got {N!r}")

    @classmethod
    def from_dims(cls, dims, depth=None) -> DiagonalLayout:
        """The layout back from its :attr:`dims` ``(d, depth)`` (they carry the depth, so
        ``depth`` is unused)."""
        d, depth = (int(x) for x in dims)
        return cls(d, depth)

    @property
    def dims(self) -> tuple[int, int]:
        return (int(self.n_features), int(self.depth))

    @property
    def offsets(self) -> np.ndarray:
        """``[0, d, 2d]``: u is ``theta[0:d]``, v is ``theta[d:2d]``."""
        d = int(self.n_features)
        return np.array([0, d, 2 * d], dtype=np.int64)

    @property
    def size(self) -> int:
        return 2 * int(self.n_features)

    def pack(self, params, dtype=np.float64) -> np.ndarray:
        """Flatten ``[u, v]`` into ``theta``, checking shapes and values."""
        params = list(params)
        if len(params) != 2:
            raise ValueError(
                f"a diagonal network has two parameter vectors [u, v], got {len(params)}"
            )
        theta = np.empty(self.size, dtype=dtype)
        for k, (name, p) in enumerate(zip("uv", params, strict=True)):
            p = np.asarray(p)
            if p.shape != (self.n_features,):
                raise ValueError(f"{name} has shape {p.shape}, expected ({self.n_features},)")
            if p.dtype.kind not in "iuf" or not np.all(np.isfinite(p)):
                raise ValueError(f"{name} must hold finite real numbers")
            theta[k * self.n_features : (k + 1) * self.n_features] = p
        return theta

    def unpack(self, theta) -> DiagonalParams:
        """Views ``[u, v]`` into ``theta``, as a :class:`DiagonalParams` that knows the
        depth."""
        d = int(self.n_features)
        return DiagonalParams([theta[:d], theta[d : 2 * d]], int(self.depth))


class DiagonalParams(list):
    """``[u, v]`` of a depth-``depth`` diagonal network (a list, so code written for a list
    of factors takes it), with the coefficients ``coef = u^N - v^N`` on request."""

    def __init__(self, params, depth: int):
        super().__init__(params)
        self.depth = int(depth)

    @property
    def coef(self) -> np.ndarray:
        """``w = u^N - v^N`` in float64."""
        return coef(self, self.depth)


def initialize(layout: DiagonalLayout, init_scale: float) -> list[np.ndarray]:
    """``[u, v]`` with ``u = v = alpha * 1`` (so ``w(0) = 0``), ``alpha = init_scale > 0``.

    alpha must be positive: at alpha = 0 every gradient vanishes (each is a multiple of
    ``u^(N-1)`` or ``v^(N-1)``) and training never starts for N >= 2."""
    alpha = init_scale
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float, np.integer, np.floating))
        or not (np.isfinite(alpha) and alpha > 0)
    ):
        raise ValueError(
            f"init_scale (alpha) must be a positive finite number, got {alpha!r}: u = v = "
            "alpha at the start, and alpha = 0 is a stationary point"
        )
    d = layout.n_features
    return [np.full(d, float(alpha)), np.full(d, float(alpha))]


def coef(params, depth: int) -> np.ndarray:
    """``w = u^N - v^N`` from the flat ``theta = [u; v]`` (or the pair ``[u, v]``), in
    float64."""
    if isinstance(params, np.ndarray) and params.ndim == 1:
        d = params.shape[0] // 2
        u, v = params[:d], params[d:]
    else:
        u, v = params
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    return u**depth - v**depth


# --------------------------------------------------------------------------- reference


def reference_loss_and_grad(u, v, X, y, depth):
    """``(loss, du, dv)`` in plain NumPy (float64): the oracle of the kernels.

    ``loss = mean((X w - y)^2)``, ``g = (2/n) X^T (X w - y)``, ``du = N u^(N-1) g``,
    ``dv = -N v^(N-1) g``, with ``w = u^N - v^N``."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = u**depth - v**depth
    r = X @ w - y
    n = X.shape[0]
    g = (2.0 / n) * (X.T @ r)
    return float(r @ r / n), depth * u ** (depth - 1) * g, -depth * v ** (depth - 1) * g


def record_values(w, init_scale, depth, ground_truth=None) -> dict:
    """The values a trajectory record holds for the coefficients ``w``.

    ``l1``, ``l2``: ``||w||_1``, ``||w||_2``; ``support``: the number of ``|w_i| >
    SUPPORT_RTOL * max|w|``; ``potential``: ``Q_alpha(w)`` from
    :func:`fastdmf.diagonal_theory.potential` (NaN for depth 1, where no potential is
    defined, or when that module is unavailable); ``test_error``: ``||w - w*||^2 /
    ||w*||^2`` when a nonzero ground truth is given, else NaN."""
    w = np.asarray(w, dtype=np.float64)
    big = float(np.max(np.abs(w))) if w.size else 0.0
    out = {
        "l1": float(np.sum(np.abs(w))),
        "l2": float(np.linalg.norm(w)),
        "support": int(np.count_nonzero(np.abs(w) > SUPPORT_RTOL * big)) if big > 0 else 0,
        "potential": np.nan,
        "test_error": np.nan,
    }
    if depth >= 2:
        try:
            from .diagonal_theory import potential
        except ImportError:  # pragma: no cover  (the oracle module lands separately)
            potential = None
        if potential is not None:
            out["potential"] = float(potential(w, init_scale, depth))
    if ground_truth is not None and np.any(ground_truth):
        truth = np.asarray(ground_truth, dtype=np.float64)
        out["test_error"] = float(np.sum((w - truth) ** 2) / np.sum(truth**2))
    return out


# --------------------------------------------------------------------------- fitting

#: The ``init=`` names a diagonal network accepts: both start from ``u = v = alpha * 1``
#: ("gaussian" is fit's default name; the diagonal network's start is not random).
INITS = ("constant", "gaussian")


def check_fit(problem, args) -> None:
    """Refuse what ``fit`` takes for the matrix kinds but a diagonal network has no use for,
    each with what to do instead: hidden widths, validation entries, offsets, initial
    factors or init schemes other than :data:`INITS`, and ``init_scale <= 0``. ``args``:
    fit's arguments by name (``depth``, ``init``, ``init_scale``, ``widths``,
    ``validation``, ``offsets``; the missing ones are not checked)."""
    widths, init = args.get("widths"), args.get("init", "constant")
    validation, offsets = args.get("validation"), args.get("offsets")
    if widths is not None:
        raise ValueError(
            "widths= sets the hidden widths of a matrix factorization; a "
            "diagonal network has none (pass widths=None)"
        )
    if validation is not None and not (isinstance(validation, str) and validation == "auto"):
        raise ValueError(
            "validation= (early stopping on held-out entries) is for completion problems; "
            "for a sparse-regression problem pass validation=None, and hold samples out "
            "with problem.split() and test="
        )
    if offsets is not None and not (isinstance(offsets, str) and offsets == "auto"):
        raise ValueError(
            "offsets= applies to completion problems; a diagonal network fits "
            "no offsets (pass offsets=None; center X and y yourself)"
        )
    if not isinstance(init, str):
        raise TypeError(
            "a diagonal network starts from u = v = init_scale * 1; init= takes one of "
            f"{list(INITS)}, not initial arrays"
        )
    if init not in INITS:
        raise ValueError(
            f"init={init!r}: a diagonal network starts from u = v = init_scale "
            f"* 1; use one of {list(INITS)}"
        )
    if "depth" in args:
        DiagonalLayout(problem.n_features, args["depth"])  # checks depth
    if "init_scale" in args:
        initialize(DiagonalLayout(1, 1), args["init_scale"])  # checks init_scale


def layout(shape, depth, widths=None) -> DiagonalLayout:
    """The layout of a depth-``depth`` network on a problem of shape ``(n, d)``. ``widths``
    is not read (a diagonal network has none; :func:`check_fit` refuses them in ``fit``)."""
    return DiagonalLayout(int(shape[1]), depth)


def param_layout(problem, params) -> DiagonalLayout:
    """The layout of given parameters: a :class:`DiagonalParams` (it knows its depth)."""
    if not isinstance(params, DiagonalParams):
        raise TypeError(
            "the parameters of a diagonal network are DiagonalParams([u, v], "
            "depth): the depth is not readable off u and v"
        )
    return DiagonalLayout(problem.n_features, params.depth)


def start(layout, init, init_scale, rng=None) -> DiagonalParams:
    """The initial ``[u, v]`` of a fit: ``u = v = init_scale * 1`` (``init`` one of
    :data:`INITS`; ``rng`` unused: the start is not random)."""
    check_fit(None, {"init": init})
    return DiagonalParams(initialize(layout, init_scale), layout.depth)


def check_held_out(test, problem, what) -> None:
    """Held-out samples must have the problem's features; any number of samples."""
    if test.n_features != problem.n_features:
        raise ValueError(f"test= has {test.n_features} features, {what} {problem.n_features}")


def score(params, test, offsets=None) -> float:
    """The MSE on held-out samples ``test`` (NaN for None)."""
    return np.nan if test is None else test.held_out_error(params, offsets)


#: The fields of a diagonal network's trajectory records (see :func:`measure`).
SCALARS = (
    "step",
    "time",
    "n_evals",
    "train_loss",
    "test_error",
    "val_error",
    "grad_norm",
    "param_norm",
    "l1",
    "l2",
    "support",
    "potential",
)


def trajectory(plan, problem) -> Trajectory:
    """The empty trajectory of a fit: :data:`SCALARS`, no matrix fields."""
    return Trajectory(
        plan.depth, None, {"shape": list(problem.shape)}, scalars=SCALARS, matrices=()
    )


def record(params, grads, loss, counts, data, plan) -> dict:
    """:func:`measure` in the table's form (``counts = (step, time, n_evals)``, the fit's
    held-out data ``data`` and ``plan``, whose ``init_scale`` sets ``Q_alpha``)."""
    step, time, n_evals = counts
    if not isinstance(params, DiagonalParams):
        params = DiagonalParams(params, plan.depth)
    return measure(
        params,
        grads,
        loss,
        step,
        time,
        n_evals,
        data.problem,
        data.test,
        init_scale=plan.init_scale,
    )


def measure(params, grads, loss, step, time, n_evals, problem, test=None, *, init_scale) -> dict:
    """One trajectory record of a diagonal network, in float64 whatever the fit's dtype.

    ``step``, ``time``, ``n_evals``, ``train_loss`` (= ``loss``), ``grad_norm``
    (``||(du, dv)||_2``), ``param_norm`` (``||(u, v)||_2``), the values of
    :func:`record_values` (``l1``, ``l2``, ``support``, ``potential``), ``test_error``
    (``||w - w*||^2 / ||w*||^2`` against a nonzero ground truth, else the MSE on the held-out
    samples ``test``, else NaN) and ``val_error`` (NaN: no validation entries here)."""
    u, v = (np.asarray(p, dtype=np.float64) for p in params)
    depth = params.depth if isinstance(params, DiagonalParams) else None
    if depth is None:
        raise TypeError("measure takes the DiagonalParams of layout.unpack(theta)")
    w = u**depth - v**depth
    out = record_values(w, init_scale, depth, problem.ground_truth)
    if np.isnan(out["test_error"]) and test is not None:
        out["test_error"] = test.held_out_error(w)
    gsq = sum(float(np.sum(np.asarray(g, dtype=np.float64) ** 2)) for g in grads)
    return {
        "step": int(step),
        "time": float(time),
        "n_evals": int(n_evals),
        "train_loss": float(loss),
        "test_error": out["test_error"],
        "val_error": np.nan,
        "grad_norm": float(np.sqrt(gsq)),
        "param_norm": float(np.sqrt(np.sum(u**2) + np.sum(v**2))),
        "l1": out["l1"],
        "l2": out["l2"],
        "support": out["support"],
        "potential": out["potential"],
    }


@dataclass(eq=False, repr=False)
class DiagonalResult(FitResult):
    """The outcome of ``fit`` on a :class:`SparseRegressionProblem`: a
    :class:`~fastdmf.FitResult` whose ``factors`` are ``[u, v]`` (a :class:`DiagonalParams`)
    and whose ``coef`` is ``w = u^N - v^N``. ``matrix()`` is ``w`` as the 1 x d row of a
    linear predictor (the baselines' form), ``predict(X)`` is ``X w``. Given a plain
    ``[u, v]``, the depth is read from ``settings["arguments"]["depth"]``."""

    def __post_init__(self):
        if not isinstance(self.factors, DiagonalParams):
            depth = (self.settings or {}).get("arguments", {}).get("depth")
            if depth is None:
                raise ValueError(
                    "DiagonalResult needs the depth: pass DiagonalParams([u, v], "
                    "depth) or settings={'arguments': {'depth': N}}"
                )
            self.factors = DiagonalParams(self.factors, depth)

    @property
    def depth(self) -> int:
        return int(self.factors.depth)

    @property
    def coef(self) -> np.ndarray:
        """``w = u^N - v^N`` (float64, d entries)."""
        return self.factors.coef

    @property
    def shape(self) -> tuple[int, int]:
        return (1, int(np.shape(self.factors[0])[0]))

    def matrix(self) -> np.ndarray:
        """``w`` as a 1 x d row."""
        return self.coef[None, :]

    def predict(self, X) -> np.ndarray:
        """``X w`` for samples ``X`` (n x d, or one sample of d features)."""
        X = _real_array(X, "X")
        d = self.shape[1]
        if X.shape[-1:] != (d,) or X.ndim > 2:
            raise ValueError(
                f"X has shape {X.shape}; the fit has {d} features: pass an "
                f"(n, {d}) array or one sample of {d}"
            )
        return X @ self.coef

    def __repr__(self) -> str:
        return (
            f"DiagonalResult(depth={self.depth}, features={self.shape[1]}, "
            f"status={self.status!r}, steps={self.n_steps}, "
            f"train_loss={self.train_loss:.3g})"
        )
