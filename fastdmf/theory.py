"""Gradient-flow theory that a trajectory of W = W_N ... W_1 can be checked against.

Plain NumPy/SciPy in float64, no kernels. Under gradient flow on the factors from a
*balanced* initialisation (``W_{j+1}^T W_{j+1} = W_j W_j^T`` for j = 1..N-1, e.g.
``fastdmf.factors.initialize(layout, "balanced", scale, rng)``), the end-to-end matrix moves by
a closed vector field of W alone (Arora, Cohen & Hazan 2018, Theorem 1)::

    dW/dt = - sum_{j=1..N} [W W^T]^{(j-1)/N}  grad L(W)  [W^T W]^{(N-j)/N}

and each singular value sigma_r of W (with singular vectors u_r, v_r) by (Arora, Cohen, Hu &
Luo 2019, Theorem 3)::

    d sigma_r/dt = - N (sigma_r^2)^{1 - 1/N} <grad L(W), u_r v_r^T>

Gradient descent with step eta is forward Euler on the same flow, "time" t = sum of eta.
:func:`integrate_end_to_end` integrates the first equation ("depth without factors"), so a
fitted trajectory, the factorized flow and the end-to-end flow can be compared point by point.

Depth is a real number N >= 1. For integer N the equations are the theorems; for other N the
end-to-end field is extended through the closed form of its spectral kernel (see
:func:`end_to_end_rhs`), which agrees with the sum at every integer N: a "depth without
factors" that interpolates between depths, a definition rather than a theorem.

For the vector case, a deep diagonal network ``w = u^N - v^N``, the limit of the flow is
known exactly: :func:`diagonal_limit` (from :mod:`fastdmf.diagonal_theory`, see
docs/diagonal.md).

References
----------
S. Arora, N. Cohen, E. Hazan. On the optimization of deep networks: implicit acceleration by
overparameterization. ICML 2018, arXiv:1802.06509, Theorem 1.

S. Arora, N. Cohen, W. Hu, Y. Luo. Implicit regularization in deep matrix factorization.
NeurIPS 2019, arXiv:1905.13655, Theorem 3.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from ._kinds import COMPLETION, find_kind
from .diagonal_theory import diagonal_limit
from .problem import CompletionProblem

__all__ = [
    "psd_power",
    "end_to_end_rhs",
    "completion_grad",
    "integrate_end_to_end",
    "singular_value_rates",
    "measured_singular_value_rates",
    "diagonal_limit",
]

_METHODS = ("DOP853", "RK45")


def psd_power(a, p: float) -> np.ndarray:
    """Fractional power ``A^p`` of a symmetric positive semidefinite matrix.

    With the eigendecomposition ``A = Q diag(lam) Q^T`` (:func:`numpy.linalg.eigh`)::

        A^p = Q diag(lam^p) Q^T,      0^0 = 1,  so  A^0 = I  for every A (singular or not).

    Eigenvalues at or below ``tol = k eps max|lam|`` (k = size of A) are rounding noise of the
    decomposition; they are set to exactly 0 before the power is taken, so a rank-deficient A
    does not pick up spurious ``(eps max|lam|)^p`` terms (large for small p > 0).

    Parameters
    ----------
    a : array_like, shape (k, k)
        Symmetric PSD matrix (symmetric to ``sqrt(eps)`` relative; only its lower triangle is
        read).
    p : float
        Exponent, ``p >= 0`` (the theory uses p in [0, 1]).

    Returns
    -------
    ndarray of float64, shape (k, k)
        ``A^p``, symmetric.

    Raises
    ------
    ValueError
        If A is not square, not symmetric, has an eigenvalue below ``-sqrt(eps) max|lam|``
        (not PSD), or ``p < 0``.

    Example
    -------
    >>> a = np.array([[4.0, 0.0], [0.0, 0.0]])
    >>> psd_power(a, 0.5).tolist(), psd_power(a, 0.0).tolist()
    ([[2.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"psd_power needs a square matrix, got shape {a.shape}")
    if not (np.isfinite(p) and p >= 0):
        raise ValueError(f"psd_power needs a finite exponent p >= 0, got {p!r}")
    scale = np.abs(a).max() if a.size else 0.0
    eps = np.finfo(np.float64).eps
    if np.abs(a - a.T).max(initial=0.0) > np.sqrt(eps) * scale:
        raise ValueError("psd_power needs a symmetric matrix")
    lam, q = np.linalg.eigh(a)
    return (q * _clipped_power(lam, p, a.shape[0])) @ q.T


def _clipped_power(lam, p, k):
    """``lam^p`` with rounding-level eigenvalues set to 0 first (and 0^0 = 1)."""
    eps = np.finfo(np.float64).eps
    top = np.abs(lam).max(initial=0.0)
    if lam.size and lam.min() < -np.sqrt(eps) * top:
        raise ValueError(
            f"matrix is not positive semidefinite: eigenvalue {lam.min():.3e} against a largest "
            f"|eigenvalue| of {top:.3e}"
        )
    lam = np.where(lam > k * eps * top, lam, 0.0)
    return np.power(lam, p)  # numpy: 0.0 ** 0.0 == 1.0


def end_to_end_rhs(w, grad_w, depth: float) -> np.ndarray:
    """The end-to-end gradient-flow vector field of a balanced depth-N factorization.

    Arora, Cohen & Hazan (2018), Theorem 1: under gradient flow on ``W_1..W_N`` from a
    balanced initialisation, ``W = W_N ... W_1`` obeys::

        dW/dt = - sum_{j=1..N} [W W^T]^{(j-1)/N}  G  [W^T W]^{(N-j)/N},     G = grad L(W)

    with ``[.]^0 = I`` (depth 1 gives plain gradient flow, ``dW/dt = -G``).

    Computed from one full SVD ``W = U S V^T`` (U m x m, V n x n), which holds the
    eigendecompositions ``W W^T = U diag(lam) U^T`` and ``W^T W = V diag(mu) V^T``
    (``lam``, ``mu`` = sigma^2 padded with zeros to m and n). Each term is then
    ``U diag(lam^{(j-1)/N}) (U^T G V) diag(mu^{(N-j)/N}) V^T``, so the sum is a Hadamard product
    in the singular basis::

        dW/dt = - U (K o (U^T G V)) V^T,     K[a, b] = sum_{j=1..N} lam_a^{(j-1)/N} mu_b^{(N-j)/N}

    (0^0 = 1). K depends only on the eigenvalues, so repeated singular values give the same
    result whatever basis the SVD picks. The SVD resolves sigma to ``eps sigma_1`` where an
    eigendecomposition of ``W W^T`` would resolve only ``sqrt(eps) sigma_1``; singular values
    at or below ``max(m, n) eps sigma_1`` (the rank tolerance of
    :func:`numpy.linalg.matrix_rank`) are set to 0, since ``lam^{1/N}`` would magnify their
    rounding noise (``(1e-16)^{2/5} ~ 4e-7`` at N = 5). Cost O((m + n)^3 + N m n).

    Parameters
    ----------
    w : array_like, shape (m, n)
        The end-to-end matrix W.
    grad_w : array_like, shape (m, n)
        ``grad L(W)``, e.g. from :func:`completion_grad`.
    depth : int or float
        N >= 1, any real number. For integer N the sum above, which is Theorem 1; for other N
        its closed form in the singular basis, ``K[a, b] = (lam_a - mu_b) / (lam_a^{1/N} -
        mu_b^{1/N})`` (``N lam_a^{(N-1)/N}`` where they are equal), which equals the sum at
        every integer N and extends the field to real depth ("depth without factors"). For
        non-integer N that field is a definition, not a theorem of the papers: there are no
        factors whose flow it describes.

    Returns
    -------
    ndarray of float64, shape (m, n)
        dW/dt.

    Example
    -------
    >>> w = np.array([[2.0, 0.0], [0.0, 1.0]]); g = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> float(end_to_end_rhs(w, g, 2)[0, 1])  # -K[0, 1] = -(4^0 1^(1/2) + 4^(1/2) 1^0)
    -3.0
    """
    w, g = _check_pair(w, grad_w)
    n_layers = _check_depth(depth)
    m, n = w.shape
    u, s, vt = np.linalg.svd(w, full_matrices=True)
    s = np.where(s > max(m, n) * np.finfo(np.float64).eps * s.max(initial=0.0), s, 0.0)
    lam = np.zeros(m)
    lam[: s.size] = s**2
    mu = np.zeros(n)
    mu[: s.size] = s**2
    if float(n_layers).is_integer():
        n_int = int(n_layers)
        j = np.arange(n_int)  # j - 1 for j = 1..N
        left = np.power(lam[None, :], (j / n_int)[:, None])  # N x m, row j-1: lam^{(j-1)/N}
        right = np.power(mu[None, :], ((n_int - 1 - j) / n_int)[:, None])  # mu^{(N-j)/N}
        kernel = left.T @ right  # m x n
    else:
        kernel = _divided_power(
            lam[:, None] ** (1 / n_layers), mu[None, :] ** (1 / n_layers), n_layers
        )
    return -(u @ (kernel * (u.T @ g @ vt.T)) @ vt)


def _divided_power(x, y, n_layers):
    """(x^N - y^N) / (x - y) for x, y >= 0 (N x^{N-1} where x = y, 0 where both are 0),
    evaluated as hi^{N-1} expm1(N log r) / expm1(log r), r = lo / hi, stable as r -> 1."""
    hi, lo = np.maximum(x, y), np.minimum(x, y)
    out = np.zeros(np.broadcast(x, y).shape)
    pos = hi > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        logr = np.log(np.where(pos, lo, 1.0) / np.where(pos, hi, 1.0))
        ratio = np.where(
            np.abs(logr) < 1e-12, float(n_layers), np.expm1(n_layers * logr) / np.expm1(logr)
        )
    out[pos] = (np.power(hi, n_layers - 1) * ratio)[pos]
    return out


def completion_grad(w, problem: CompletionProblem) -> np.ndarray:
    """Dense gradient of the completion loss at an end-to-end matrix W.

    ``L(W) = (1/|Omega|) sum_k (W[i_k, j_k] - y_k)^2`` (a mean, no 1/2), so ``grad L(W) = G``
    with ``G[i_k, j_k] = 2 r_k / |Omega|``, ``r_k = W[i_k, j_k] - y_k``, and 0 elsewhere
    (``fastdmf.reference.loss_and_grad`` with a single factor gives the same G).

    Parameters
    ----------
    w : array_like, shape (m, n)
    problem : CompletionProblem

    Returns
    -------
    ndarray of float64, shape (m, n)
    """
    if find_kind(problem) is not COMPLETION:
        raise TypeError(
            f"problem must be a CompletionProblem (see fastdmf.completion), got "
            f"{type(problem).__name__}"
        )
    w = np.asarray(w, dtype=np.float64)
    if w.shape != tuple(problem.shape):
        raise ValueError(f"W has shape {w.shape}, the problem has shape {problem.shape}")
    resid = w[problem.rows, problem.cols] - problem.values
    g = np.zeros(w.shape)
    g[problem.rows, problem.cols] = 2.0 * resid / problem.n_observed
    return g


def integrate_end_to_end(
    problem: CompletionProblem,
    w0,
    depth: int,
    t_eval,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    method: str = "DOP853",
) -> tuple[np.ndarray, int]:
    """Integrate the end-to-end flow of the completion loss: depth without factors.

    Solves ``dW/dt = end_to_end_rhs(W, completion_grad(W, problem), depth)``, ``W(0) = w0``,
    with :func:`scipy.integrate.solve_ivp`. From ``w0 = W_N(0) ... W_1(0)`` with balanced
    factors this is the trajectory of the product under gradient flow on the factors
    (Arora, Cohen & Hazan 2018, Theorem 1); gradient descent with a small step eta follows it
    at times t = (steps) * eta.

    The field is not Lipschitz where a singular value of W is 0 (``lam^{1/N}`` for N >= 2);
    start from a full-rank ``w0`` (a balanced init of random factors is one) for clean steps.

    Parameters
    ----------
    problem : CompletionProblem
    w0 : array_like, shape (m, n)
        W(0).
    depth : int
        N >= 1.
    t_eval : array_like of float, shape (T,)
        Non-decreasing times >= 0 at which to return W; a repeated time gives identical
        rows.
    rtol, atol : float
        Tolerances of the integrator (``atol`` is absolute, per entry of W).
    method : {"DOP853", "RK45"}
        Explicit Runge-Kutta pair of :func:`~scipy.integrate.solve_ivp`.

    Returns
    -------
    ws : ndarray of float64, shape (T, m, n)
        W(t) at each time of ``t_eval``.
    nfev : int
        Number of vector-field evaluations.

    Raises
    ------
    RuntimeError
        If the integrator fails (its message is included).
    """
    n_layers = _check_depth(depth)
    w0 = np.array(w0, dtype=np.float64)
    if w0.shape != tuple(problem.shape):
        raise ValueError(f"w0 has shape {w0.shape}, the problem has shape {problem.shape}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, got {method!r}")
    t_eval = np.asarray(t_eval, dtype=np.float64)
    if t_eval.ndim != 1 or t_eval.size == 0:
        raise ValueError(f"t_eval must be a non-empty 1-d array, got shape {t_eval.shape}")
    if not (np.all(np.isfinite(t_eval)) and t_eval[0] >= 0 and np.all(np.diff(t_eval) >= 0)):
        raise ValueError("t_eval must hold finite, non-negative, non-decreasing times")
    shape = w0.shape
    if t_eval[-1] == 0:
        return np.broadcast_to(w0, (t_eval.size, *shape)).copy(), 0

    def field(_t, y):
        w = y.reshape(shape)
        return end_to_end_rhs(w, completion_grad(w, problem), n_layers).ravel()

    # solve_ivp wants strictly increasing times: solve at the distinct ones, repeat the rows
    times, where = np.unique(t_eval, return_inverse=True)
    sol = solve_ivp(
        field, (0.0, times[-1]), w0.ravel(), method=method, t_eval=times, rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"end-to-end integration failed: {sol.message}")
    return sol.y.T[where].reshape(t_eval.size, *shape), int(sol.nfev)


def singular_value_rates(w, grad_w, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Predicted speed of each singular value of W under the end-to-end flow.

    Arora, Cohen, Hu & Luo (2019), Theorem 3, for a balanced initialisation::

        d sigma_r/dt = - N (sigma_r^2)^{1 - 1/N} <grad L(W), u_r v_r^T>

    from the SVD ``W = sum_r sigma_r u_r v_r^T``. It is ``u_r^T (dW/dt) v_r`` with dW/dt from
    :func:`end_to_end_rhs`: the rate of a simple, non-zero singular value. At a repeated or
    zero singular value the SVD here (non-negative, sorted) is not the paper's analytic one and
    the measured rate of the sorted values can differ.

    Parameters
    ----------
    w, grad_w : array_like, shape (m, n)
    depth : int
        N >= 1.

    Returns
    -------
    sigma : ndarray, shape (min(m, n),)
        Singular values of W, descending.
    rates : ndarray, shape (min(m, n),)
        d sigma_r/dt for each.
    """
    w, g = _check_pair(w, grad_w)
    n_layers = _check_depth(depth)
    u, sigma, vt = np.linalg.svd(w, full_matrices=False)
    proj = np.einsum("ir,ij,rj->r", u, g, vt)  # <G, u_r v_r^T> = u_r^T G v_r
    rates = -n_layers * np.power(sigma**2, 1.0 - 1.0 / n_layers) * proj
    return sigma, rates


def measured_singular_value_rates(times, svals) -> np.ndarray:
    """Finite-difference speeds of recorded singular values, to compare with
    :func:`singular_value_rates` along a trajectory.

    Central differences of second order on a possibly non-uniform grid
    (:func:`numpy.gradient`): at interior time t_i with ``h1 = t_i - t_{i-1}``,
    ``h2 = t_{i+1} - t_i``::

        s'(t_i) ~ (h1^2 s_{i+1} - h2^2 s_{i-1} + (h2^2 - h1^2) s_i) / (h1 h2 (h1 + h2))

    and one-sided second-order differences at the two ends. Error O(h^2 s''').
    Singular values recorded sorted change order where two of them cross; rates there are
    meaningless.

    Parameters
    ----------
    times : array_like, shape (T,)
        Strictly increasing, T >= 3.
    svals : array_like, shape (T, r)
        Singular values recorded at each time (e.g. ``Trajectory.singular_values``).

    Returns
    -------
    ndarray of float64, shape (T, r)
    """
    times = np.asarray(times, dtype=np.float64)
    svals = np.asarray(svals, dtype=np.float64)
    if times.ndim != 1 or times.size < 3:
        raise ValueError(f"times must be 1-d with at least 3 points, got shape {times.shape}")
    if not np.all(np.diff(times) > 0):
        raise ValueError("times must be strictly increasing")
    if svals.ndim != 2 or svals.shape[0] != times.size:
        raise ValueError(
            f"svals must have shape (len(times), r) = ({times.size}, r), got {svals.shape}"
        )
    return np.gradient(svals, times, axis=0, edge_order=2)


# --------------------------------------------------------------------------- validation


def _check_pair(w, grad_w):
    w = np.asarray(w, dtype=np.float64)
    g = np.asarray(grad_w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {w.shape}")
    if g.shape != w.shape:
        raise ValueError(f"grad_w has shape {g.shape}, W has shape {w.shape}")
    return w, g


def _check_depth(depth):
    if (
        isinstance(depth, (bool, np.bool_))
        or not isinstance(depth, (int, float, np.integer, np.floating))
        or not (np.isfinite(depth) and depth >= 1)
    ):
        raise ValueError(f"depth must be a real number N >= 1, got {depth!r}")
    return int(depth) if float(depth).is_integer() else float(depth)
