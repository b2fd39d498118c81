"""The math of fastdmf in plain NumPy: the oracle every kernel is tested against.

Nothing here is fast; everything here is obviously right. Read this file first.

Completion loss (the paper's convention: a mean, no 1/2)::

    L(W) = (1/|Omega|) sum_k (W[i_k, j_k] - y_k)^2,     W = W_N ... W_1

Its gradient in W is the sparse matrix G with G[i_k, j_k] = 2 r_k / |Omega|, r = residual,
and by the chain rule::

    dL/dW_j = (W_N ... W_{j+1})^T  G  (W_{j-1} ... W_1)^T

Sensing loss, measurements ``y_k = <A_k, W*>`` (same convention)::

    L(W) = (1/p) sum_k (<A_k, W> - y_k)^2,     G = (2/p) sum_k r_k A_k

with the same chain rule for the factor gradients.
"""

from __future__ import annotations

import numpy as np

from .factors import end_to_end

__all__ = [
    "loss",
    "loss_and_grad",
    "sensing_loss",
    "sensing_loss_and_grad",
    "factor_grads",
    "gd_step",
    "grouprmsprop_step",
    "adam_step",
    "singular_values",
    "effective_rank",
]


def loss(factors, rows, cols, values) -> float:
    """Mean squared error of W = W_N ... W_1 on the observed entries."""
    resid = end_to_end(factors)[rows, cols] - values
    return float(np.mean(resid**2))


def loss_and_grad(factors, rows, cols, values):
    """``(L, [dL/dW_1, ..., dL/dW_N])`` from the dense product and a dense G."""
    w = end_to_end(factors)
    resid = w[rows, cols] - values
    g = np.zeros_like(w)
    g[rows, cols] = 2.0 * resid / len(values)
    return float(np.mean(resid**2)), factor_grads(factors, g)


def sensing_loss(factors, A, y) -> float:
    """Mean squared error of the measurements ``<A[k], W>`` against ``y``; A is (p, m, n)."""
    resid = np.einsum("kij,ij->k", A, end_to_end(factors)) - y
    return float(np.mean(resid**2))


def sensing_loss_and_grad(factors, A, y):
    """``(L, [dL/dW_1, ..., dL/dW_N])`` of the sensing loss: G = (2/p) sum_k r_k A[k]."""
    w = end_to_end(factors)
    resid = np.einsum("kij,ij->k", A, w) - y
    g = np.einsum("k,kij->ij", 2.0 * resid / len(y), A)
    return float(np.mean(resid**2)), factor_grads(factors, g)


def factor_grads(factors, g):
    """``[dL/dW_1, ..., dL/dW_N]`` from G = dL/dW by the chain rule."""
    grads = []
    for j in range(len(factors)):
        left = _chain(factors[j + 1 :], g.shape[0])  # W_N ... W_{j+1}
        right = _chain(factors[:j], g.shape[1])  # W_{j-1} ... W_1
        grads.append(left.T @ g @ right.T)
    return grads


def _chain(factors, size):
    """Product of ``factors`` (first applied first), the identity of ``size`` if none."""
    if not factors:
        return np.eye(size)
    return end_to_end(factors)


def gd_step(theta, grad, state, lr):
    """Plain gradient descent: theta <- theta - lr * grad.  ``state`` is unused."""
    return theta - lr * grad, state


def grouprmsprop_step(theta, grad, state, lr, alpha=0.99, eps=1e-4):
    """The paper's GroupRMSprop: one global step size for all factors.

    ``v <- alpha v + (1 - alpha) ||grad||^2`` (all factors together), bias-corrected
    ``v_hat = v / (1 - alpha^t)``, then ``theta <- theta - lr / (sqrt(v_hat) + eps) * grad``.
    ``state = (t, v)``.
    """
    t, v = state
    t += 1
    v = alpha * v + (1 - alpha) * float(np.sum(grad**2))
    step = lr / (np.sqrt(v / (1 - alpha**t)) + eps)
    return theta - step * grad, (t, v)


def adam_step(theta, grad, state, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam (Kingma & Ba 2015), bias-corrected.  ``state = (t, m, v)``."""
    t, m, v = state
    t += 1
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    mhat = m / (1 - beta1**t)
    vhat = v / (1 - beta2**t)
    return theta - lr * mhat / (np.sqrt(vhat) + eps), (t, m, v)


def singular_values(factors) -> np.ndarray:
    """All singular values of the dense product, descending."""
    return np.linalg.svd(end_to_end(factors), compute_uv=False)


def effective_rank(sv) -> float:
    """Roy & Vetterli (2007): exp of the entropy of p = sigma / sum(sigma)."""
    sv = np.asarray(sv, dtype=np.float64)
    total = sv.sum()
    if total <= 0:
        return 0.0
    p = sv[sv > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))
