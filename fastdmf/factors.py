"""Factor shapes, initialisations and whole-matrix quantities of W = W_N ... W_1.

Shapes: ``dims = (d_0, d_1, ..., d_N)`` with ``d_0 = n`` and ``d_N = m``; factor ``W_j``
(1-based) is ``d_j x d_{j-1}``. The factors live in one flat parameter vector ``theta``
(factor 1 first), so optimisers and kernels see a single array. ``W_2 .. W_N`` are stored in
C order; ``W_1`` is stored transposed (``W_1^T``, n x d_1, C order), because the kernels read
its columns as contiguous rows (:meth:`FactorLayout.unpack` returns the ``d_1 x n`` view).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FactorLayout",
    "INITS",
    "register_init",
    "initialize",
    "end_to_end",
    "balancedness",
    "split_product",
    "singular_values",
    "predict_entries",
]


@dataclass(frozen=True)
class FactorLayout:
    """Shapes and flat offsets of the N factors of an m x n product."""

    dims: tuple[int, ...]

    @classmethod
    def build(cls, shape, depth, widths=None) -> FactorLayout:
        """Layout for ``depth`` factors of an ``shape = (m, n)`` product.

        ``widths`` lists the N-1 hidden widths d_1..d_{N-1}; by default every hidden width is
        min(m, n) ("full-dimensional", the paper's setting), so depth does not limit rank.
        """
        m, n = shape
        if not isinstance(depth, (int, np.integer)) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if widths is None:
            widths = [min(m, n)] * (depth - 1)
        elif isinstance(widths, (int, np.integer)):
            widths = [int(widths)] * (depth - 1)
        widths = list(widths)
        if len(widths) != depth - 1:
            raise ValueError(
                f"depth {depth} needs {depth - 1} hidden width(s) d_1..d_{depth - 1}, "
                f"got {len(widths)}: {widths}"
            )
        for w in widths:
            if not isinstance(w, (int, np.integer)) or w < 1:
                raise ValueError(f"hidden widths must be positive integers, got {widths}")
        return cls((int(n), *(int(w) for w in widths), int(m)))

    @property
    def depth(self) -> int:
        return len(self.dims) - 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dims[-1], self.dims[0])

    def factor_shape(self, j: int) -> tuple[int, int]:
        """Shape of W_j, 1-based."""
        return (self.dims[j], self.dims[j - 1])

    @property
    def offsets(self) -> np.ndarray:
        """Start of each factor in ``theta``; ``offsets[N]`` is the total size."""
        sizes = [self.dims[j] * self.dims[j - 1] for j in range(1, self.depth + 1)]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def size(self) -> int:
        return int(self.offsets[-1])

    def pack(self, factors, dtype=np.float64) -> np.ndarray:
        """Flatten ``[W_1, ..., W_N]`` into ``theta``, checking every shape."""
        factors = list(factors)
        if len(factors) != self.depth:
            raise ValueError(f"expected {self.depth} factors W_1..W_N, got {len(factors)}")
        theta = np.empty(self.size, dtype=dtype)
        off = self.offsets
        for j, w in enumerate(factors, start=1):
            w = np.asarray(w)
            if w.shape != self.factor_shape(j):
                raise ValueError(
                    f"factor W_{j} has shape {w.shape}, expected {self.factor_shape(j)} "
                    f"(W_j is d_j x d_(j-1) with dims d_0..d_N = {list(self.dims)})"
                )
            if w.dtype.kind not in "iuf" or not np.all(np.isfinite(w)):
                raise ValueError(f"factor W_{j} must hold finite real numbers")
            theta[off[j - 1] : off[j]] = (w.T if j == 1 else w).ravel()
        return theta

    def unpack(self, theta) -> list[np.ndarray]:
        """Views ``[W_1, ..., W_N]`` into ``theta`` (``W_1`` is Fortran-ordered)."""
        off = self.offsets
        views = [theta[off[0] : off[1]].reshape(self.factor_shape(1)[::-1]).T]
        views += [
            theta[off[j - 1] : off[j]].reshape(self.factor_shape(j))
            for j in range(2, self.depth + 1)
        ]
        return views


# --------------------------------------------------------------------------- initialisations

INITS: dict = {}


def register_init(name):
    """Register ``fn(layout, init_scale, rng) -> [W_1, ..., W_N]`` under ``name``."""

    def deco(fn):
        INITS[name] = fn
        return fn

    return deco


def initialize(layout: FactorLayout, init, init_scale: float, rng) -> list[np.ndarray]:
    """Initial factors from a registered name or from user-given arrays (copied)."""
    if isinstance(init, str):
        try:
            fn = INITS[init]
        except KeyError:
            raise ValueError(
                f"unknown init {init!r}; valid names: {sorted(INITS)} (or a list of arrays)"
            ) from None
        if not (np.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale!r}")
        return fn(layout, float(init_scale), rng)
    return [np.array(w, dtype=np.float64) for w in layout.unpack(layout.pack(init))]


@register_init("gaussian")
def _init_gaussian(layout, scale, rng):
    """i.i.d. N(0, s^2/d_{j-1}) with s = scale^(1/N): E||W(0)||_F^2 = scale^2 m."""
    s = scale ** (1.0 / layout.depth)
    return [
        rng.standard_normal(layout.factor_shape(j)) * (s / np.sqrt(layout.dims[j - 1]))
        for j in range(1, layout.depth + 1)
    ]


@register_init("identity")
def _init_identity(layout, scale, rng):
    """Each factor scale^(1/N) times the (rectangular) identity."""
    s = scale ** (1.0 / layout.depth)
    return [s * np.eye(*layout.factor_shape(j)) for j in range(1, layout.depth + 1)]


@register_init("orthogonal")
def _init_orthogonal(layout, scale, rng):
    """Each factor scale^(1/N) times a random matrix with orthonormal rows or columns
    (Haar); balanced when the widths are equal."""
    s = scale ** (1.0 / layout.depth)
    return [s * _haar(layout.factor_shape(j), rng) for j in range(1, layout.depth + 1)]


@register_init("balanced")
def _init_balanced(layout, scale, rng):
    """Exactly balanced factors (W_{j+1}^T W_{j+1} = W_j W_j^T) of a random end-to-end
    matrix A of i.i.d. N(0, scale^2/n) entries, truncated to rank r = min(dims):
    A_r = U S V^T, W_1 = O_1 S^(1/N) V^T, W_j = O_j S^(1/N) O_{j-1}^T, W_N = U S^(1/N) O_{N-1}^T,
    with O_j random d_j x r orthonormal columns."""
    m, n = layout.shape
    r = min(layout.dims)
    a = rng.standard_normal((m, n)) * (scale / np.sqrt(n))
    u, sv, vt = np.linalg.svd(a, full_matrices=False)
    root = sv[:r] ** (1.0 / layout.depth)
    bases = [vt[:r].T] + [_haar((d, r), rng) for d in layout.dims[1:-1]] + [u[:, :r]]
    return [(bases[j] * root) @ bases[j - 1].T for j in range(1, layout.depth + 1)]


def _haar(shape, rng):
    rows, cols = shape
    big, small = max(rows, cols), min(rows, cols)
    q, r = np.linalg.qr(rng.standard_normal((big, small)))
    q *= np.sign(np.diag(r))
    return q if rows >= cols else q.T


# --------------------------------------------------------------------------- whole-matrix views


def end_to_end(factors) -> np.ndarray:
    """The dense product W = W_N ... W_1 (m x n)."""
    w = factors[0]
    for f in factors[1:]:
        w = f @ w
    return w


def balancedness(factors) -> np.ndarray:
    """``||W_{j+1}^T W_{j+1} - W_j W_j^T||_F`` for j = 1..N-1 (empty for depth 1)."""
    return np.array(
        [
            np.linalg.norm(factors[j].T @ factors[j] - factors[j - 1] @ factors[j - 1].T)
            for j in range(1, len(factors))
        ]
    )


def split_product(factors):
    """``(left, right_t)`` with ``W = left @ right_t.T``, split at the narrowest hidden width:
    ``left = W_N ... W_{j+1}`` (m x d_j), ``right_t = (W_j ... W_1)^T`` (n x d_j).

    Depth 1 has no hidden width: ``(W, None)``.
    """
    if len(factors) == 1:
        return factors[0], None
    j = 1 + int(np.argmin([f.shape[0] for f in factors[:-1]]))
    return end_to_end(factors[j:]), end_to_end(factors[:j]).T


def singular_values(factors) -> np.ndarray:
    """Singular values of W = W_N ... W_1, descending, without forming W when a hidden width
    d is below min(m, n): thin QR of both sides of the split, then the SVD of the d x d core
    (O((m+n) d^2 + d^3))."""
    left, right_t = split_product(factors)
    if right_t is None:
        return np.linalg.svd(left, compute_uv=False)
    if left.shape[1] >= min(left.shape[0], right_t.shape[0]):
        return np.linalg.svd(left @ right_t.T, compute_uv=False)
    ra = np.linalg.qr(left, mode="r")
    rb = np.linalg.qr(right_t, mode="r")
    return np.linalg.svd(ra @ rb.T, compute_uv=False)


def predict_entries(factors, rows, cols, block=65_536) -> np.ndarray:
    """Entries ``W[rows[k], cols[k]]`` from the factors, ``block`` entries at a time."""
    left, right_t = split_product(factors)
    if right_t is None:
        return left[rows, cols]
    out = np.empty(len(rows), dtype=left.dtype)
    for s in range(0, len(rows), block):
        e = s + block
        out[s:e] = np.einsum("kd,kd->k", left[rows[s:e]], right_t[cols[s:e]])
    return out
