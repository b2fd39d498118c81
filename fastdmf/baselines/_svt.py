"""Singular value thresholding ``SVT_tau(a) = U max(S - tau, 0) V^T``, shared by the
nuclear-norm baselines (``nuclear_norm``'s ADMM and ``soft_impute``).

Both iterate a matrix that changes little from one iteration to the next and need only its
singular triplets above the threshold, so after a first full SVD they track those by one
warm-started step of subspace iteration.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl

__all__ = ["Thresholder", "orthonormal", "MIN_SPARE"]

MIN_SPARE = 4  # fewest Ritz values below tau for a fast SVT step to stand


class Thresholder:
    """Singular value thresholding ``SVT_tau(a)``, by a full SVD or, once the rank of the
    iterates has settled, by one warm-started step of subspace iteration.

    The fast step keeps ``k`` vectors spanning the right singular vectors of the previous
    iterate above the threshold plus a buffer of ``spare``, multiplies once by ``a`` and once
    by ``a^T`` (``Q = orth(a V)``, ``B = Q^T a``) and takes the Ritz triplets of ``a`` on that
    subspace from the eigen-decomposition of the small Gram matrix ``B B^T``. The result is
    exact when the subspace holds every singular vector of ``a`` above ``tau``; ADMM iterates
    change slowly, so one step per iteration tracks them, and ``Z`` is always an exact SVD
    ``U diag(s) V^T`` (orthonormal ``U``, ``V``), so ``sum(s)`` is its nuclear norm. When
    fewer than ``MIN_SPARE`` Ritz values fall below ``tau`` (the subspace may miss one above
    it) the step is redone by a full SVD, which is also used while the thresholded rank plus
    buffer exceeds half the smaller side (a full SVD is then about as cheap).
    """

    def __init__(self, shape, spare):
        self.shape, self.spare = shape, spare
        self.v = None  # (n, k) warm start, or None: the next step is a full SVD
        self.n_full = self.n_fast = 0

    def exact(self, a, tau):
        """``(Z, singular values of Z)`` from a full SVD; refreshes the warm start."""
        u, s, vt = sl.svd(a, full_matrices=False, check_finite=False, lapack_driver="gesdd")
        self.n_full += 1
        k = int(np.count_nonzero(s > tau))
        keep = min(k + self.spare, len(s))
        self.v = vt[:keep].T if keep < 0.5 * min(self.shape) else None
        s = s[:k] - tau
        return (u[:, :k] * s) @ vt[:k], s

    def __call__(self, a, tau):
        if self.v is None:
            return self.exact(a, tau)
        q = orthonormal(a @ self.v)
        b = q.T @ a
        # Ritz values from the eigenvalues of the small Gram matrix b b^T: every one that
        # matters is at least ~tau, far above the rounding level of its square
        vals, vecs = np.linalg.eigh(b @ b.T)
        sb = np.sqrt(np.maximum(vals[::-1], 0.0))
        k = int(np.count_nonzero(sb > tau))
        if len(sb) - k < MIN_SPARE:  # the subspace may miss singular values above tau
            return self.exact(a, tau)
        self.n_fast += 1
        keep = min(k + self.spare, len(sb))
        vecs = vecs[:, ::-1][:, :keep]
        vt = (vecs[:, :k].T @ b) / sb[:k, None]  # right Ritz vectors above tau, rows
        self.v = b.T @ vecs[:, :keep]  # their span, plus the buffer (column scale is moot)
        s = sb[:k] - tau
        return ((q @ vecs[:, :k]) * s) @ vt, s


def orthonormal(y):
    """An orthonormal basis of the columns of ``y`` (Householder QR, LAPACK called directly:
    ``scipy.linalg.qr``'s checks cost as much as the factorisation at these sizes)."""
    geqrf, orgqr = sl.get_lapack_funcs(("geqrf", "orgqr"), (y,))
    qr, tau, _, info = geqrf(y, overwrite_a=True)
    if info == 0:
        q, _, info = orgqr(qr, tau, overwrite_a=True)
    if info != 0:  # pragma: no cover - LAPACK argument errors only
        raise np.linalg.LinAlgError(f"QR factorisation failed (LAPACK info {info})")
    return q
