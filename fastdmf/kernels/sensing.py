"""Fused sensing loss + factor gradients, and the many-step loop, in Numba.

Matrix sensing observes ``y_k = <A_k, W*>`` for p measurement matrices A_k (m x n). The
operator is held as the p x (m n) matrix ``amat`` acting on the row-major ``vec(W)``. One
evaluation at ``theta`` (notation of ``fastdmf.kernels.cpu``: ``Q_1 = W_1^T``,
``S_j = W_N ... W_j``, ``H_j = G (W_{j-1} ... W_1)^T``):

1. suffixes ``S_N = W_N``, ``S_j = S_{j+1} W_j`` for j = N-1..2 (BLAS);
2. the end-to-end product ``W = S_2 Q_1^T`` (m x n; sensing needs it, unlike completion);
3. residuals ``r = amat vec(W) - y`` (one BLAS gemv), the loss ``mean(r^2)``;
4. ``G = (2/p) amat^T r`` (one BLAS gemv, transposed);
5. ``dW_1^T = G^T S_2``, ``H_2 = G Q_1``, then as for completion: ``H_{j+1} = H_j W_j^T``
   (ending with ``dW_N = H_N``) and ``dW_j = S_{j+1}^T H_j`` (BLAS).

Cost per step: the two gemvs, 4 p m n flops. The serial build fuses them (``fused_pass``):
each block of rows of ``amat`` serves its residuals and then, still in cache, its share of
G, so ``amat`` (p m n numbers) streams from memory once per step instead of twice (16.1
against 20.8 ms per step on the paper's 100 x 100 problem with p = 2000, 2-core machine); the
dense chain adds O(N m n d + N m d^2). Memory: ``amat`` (p m n) plus O(m n + N m d) of
workspace. Depth 1 copies W^T to W and back (O(m n)).

The parallel build splits each gemv in ``config.DENSE_BLOCKS`` fixed row blocks of ``amat``,
one BLAS call per task; the transposed product keeps one partial vector per block, summed in
block order, so results do not depend on the thread count. The optimiser ``update``, the
step loop ``run`` and the flow integrators are those of ``fastdmf.kernels.cpu`` and
``fastdmf.kernels.flow``, compiled again with this module's ``loss_and_grad`` in their
namespace (``SERIAL`` / ``PARALLEL``, the same contracts). ``obs = (amat, y, lay)`` with
``lay`` from :func:`work_layout`; the ``rowloss`` argument of those contracts holds the
residuals.
"""

from __future__ import annotations

import numpy as np

from .. import config
from . import _family, aligned_zeros, cpu
from . import flow as _flow
from .cpu import _BLOCK, _blk, _hblock, _suffix, blocked_sum, dense_ab, dense_atb, run, update

__all__ = ["SERIAL", "PARALLEL", "work_layout", "prepare"]


def work_layout(dims, nblk):
    """Offsets of the workspace blocks (int64, length 2N + 5).

    ``lay[j]``: S_j and ``lay[N+j]``: H_j (m x d_{j-1}) for j = 2..N-1, as in
    ``cpu.work_layout``; ``lay[2N+1]``: W (m x n); ``lay[2N+2]``: G (m x n); ``lay[2N+3]``:
    ``nblk`` partial products (``nblk > 1``); ``lay[2N+4]``: total size.
    """
    n_fac = len(dims) - 1
    m, n = dims[-1], dims[0]
    lay = np.zeros(2 * n_fac + 5, dtype=np.int64)
    pos = 0
    for j in range(2, n_fac):
        lay[j] = pos
        pos += m * dims[j - 1]
    for j in range(2, n_fac):
        lay[n_fac + j] = pos
        pos += m * dims[j - 1]
    lay[2 * n_fac + 1] = pos
    lay[2 * n_fac + 2] = pos + m * n
    lay[2 * n_fac + 3] = pos = pos + 2 * m * n
    if nblk > 1:
        widest = max([m * n] + [dims[j] * dims[j - 1] for j in range(1, n_fac)])
        pos += nblk * widest
    lay[2 * n_fac + 4] = pos
    return lay


def prepare(problem, layout, dtype, parallel=None):
    """``(kernels, nblk, obs, work, resid)`` for a :class:`~fastdmf.SensingProblem`: the
    build, the operator in ``dtype`` (float64: a view of ``problem.A``, no copy), the
    workspace and the residual buffer.

    ``parallel=None`` picks the serial build: a step is two memory-bound gemvs over the
    operator, and splitting them over threads was slower on the machine of
    benchmarks/RESULTS_sensing.md; ``parallel=True`` splits them in
    ``config.DENSE_BLOCKS`` row blocks."""
    kernels = PARALLEL if parallel else SERIAL
    nblk = config.DENSE_BLOCKS if parallel else 1
    amat = np.ascontiguousarray(problem.operator, dtype=dtype)
    y = problem.y.astype(dtype)
    lay = work_layout(layout.dims, nblk)
    work = aligned_zeros(int(lay[-1]), dtype)
    resid = np.zeros(problem.n_observed, dtype=dtype)
    return kernels, nblk, (amat, y, lay), work, resid


# Rows of the operator per fused block (serial build): a block is read once from memory for
# its residuals and again, from cache, for its share of G (16 rows of a 100 x 100 problem:
# 1.3 MB, inside a 2 MB L2).
FUSED_BYTES = 1 << 20


def fused_pass(a, wvec, y, resid, gvec, scale):
    """Residuals r = a @ wvec - y and ``gvec = a^T (scale r)`` in one sweep over ``a``: each
    block of rows is used for both products while it is in cache. ``resid`` receives
    ``scale r``; returns ``sum(r^2)`` (float64, in row order)."""
    rows, cols = a.shape
    step = max(1, FUSED_BYTES // max(1, cols * a.itemsize))
    gvec[:] = 0.0
    gpart = np.empty(cols, dtype=gvec.dtype)
    acc = 0.0
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        blk = a[lo:hi]
        r = resid[lo:hi]
        np.dot(blk, wvec, r)
        for k in range(hi - lo):
            r[k] -= y[lo + k]
            v = np.float64(r[k])
            acc += v * v
            r[k] = scale * r[k]
        np.dot(blk.T, r, gpart)
        gvec += gpart
    return acc


def forward(theta, work, dims, offs, lay, nblk):
    """Steps 1-2 of an evaluation: the suffixes S_j and the end-to-end W (m x n, row-major
    at ``work[lay[2N+1]:]``) from ``theta``."""
    N = dims.shape[0] - 1
    m, n = dims[N], dims[0]
    w = work[lay[2 * N + 1] : lay[2 * N + 1] + m * n].reshape((m, n))
    q1 = _blk(theta, 0, n, dims[1])
    if N == 1:
        w[:, :] = q1.T
        return
    for j in range(N - 1, 1, -1):
        wj = _blk(theta, offs[j - 1], dims[j], dims[j - 1])
        dense_ab(
            _suffix(theta, work, dims, offs, lay, j + 1),
            wj,
            _suffix(theta, work, dims, offs, lay, j),
            nblk,
        )
    dense_ab(_suffix(theta, work, dims, offs, lay, 2), q1.T, w, nblk)


def backward(theta, grad, work, dims, offs, lay, nblk):
    """Step 5 of an evaluation: every factor gradient into ``grad`` from G (m x n, at
    ``work[lay[2N+2]:]``) and the suffixes of :func:`forward`."""
    N = dims.shape[0] - 1
    m, n = dims[N], dims[0]
    gm = work[lay[2 * N + 2] : lay[2 * N + 2] + m * n].reshape((m, n))
    part = work[lay[2 * N + 3] : lay[2 * N + 4]]
    q1 = _blk(theta, 0, n, dims[1])
    if N == 1:
        _blk(grad, 0, n, m)[:, :] = gm.T
        return
    s2 = _suffix(theta, work, dims, offs, lay, 2)
    dense_atb(gm, s2, _blk(grad, 0, n, dims[1]), part, nblk)
    dense_ab(gm, q1, _hblock(grad, work, dims, offs, lay, 2), nblk)
    for j in range(2, N):
        wj = _blk(theta, offs[j - 1], dims[j], dims[j - 1])
        dense_ab(
            _hblock(grad, work, dims, offs, lay, j),
            wj.T,
            _hblock(grad, work, dims, offs, lay, j + 1),
            nblk,
        )
    for j in range(2, N):
        dense_atb(
            _suffix(theta, work, dims, offs, lay, j + 1),
            _hblock(grad, work, dims, offs, lay, j),
            _blk(grad, offs[j - 1], dims[j], dims[j - 1]),
            part,
            nblk,
        )


def loss_and_grad(theta, grad, work, dims, offs, obs, resid, scale, nblk, block=_BLOCK):
    """Sensing loss at ``theta``; all factor gradients written into ``grad`` (see the module
    docstring). ``resid`` receives ``scale * r``. ``block``: the block size of the parallel
    build's sum of squared residuals (``cpu.blocked_sum``)."""
    amat, y, lay = obs
    N = dims.shape[0] - 1
    mn = dims[N] * dims[0]
    wvec = work[lay[2 * N + 1] : lay[2 * N + 1] + mn]
    gvec = work[lay[2 * N + 2] : lay[2 * N + 2] + mn]
    part = work[lay[2 * N + 3] : lay[2 * N + 4]]
    forward(theta, work, dims, offs, lay, nblk)
    if nblk == 1:
        loss = fused_pass(amat, wvec, y, resid, gvec, scale) / resid.shape[0]
    else:
        # the gemvs as n x 1 products, in the completion kernels' fixed row blocks
        dense_ab(amat, wvec.reshape((mn, 1)), resid.reshape((resid.shape[0], 1)), nblk)
        for k in range(resid.shape[0]):
            resid[k] -= y[k]
        loss = blocked_sum(resid, True, np.int64(block)) / resid.shape[0]
        for k in range(resid.shape[0]):
            resid[k] *= scale
        dense_atb(amat, resid.reshape((resid.shape[0], 1)), gvec.reshape((mn, 1)), part, nblk)
    backward(theta, grad, work, dims, offs, lay, nblk)
    return loss


# (name, Python function, compile options): update, run and the flow integrators call the
# loss_and_grad of the namespace they are compiled in, this module's.
_FAMILY = (
    ("blocked_sum", blocked_sum, "kernel"),
    ("dense_ab", dense_ab, "kernel"),
    ("dense_atb", dense_atb, "kernel"),
    ("fused_pass", fused_pass, "driver"),
    ("forward", forward, "driver"),
    ("backward", backward, "driver"),
    ("loss_and_grad", loss_and_grad, "driver"),
    ("update", update, "kernel"),
    ("run", run, "driver"),
    ("spectral_radius", _flow.spectral_radius, "driver"),
    ("run_rkc", _flow.run_rkc, "driver"),
    ("run_flow", _flow.run_flow, "driver"),
)


def _build(parallel, **options):
    """Compile the family serial or parallel (as ``cpu._build``); only the serial build is
    cached. The shared functions' cache entries differ from cpu's by their argument types
    (the sensing ``obs`` tuple), so the two families never load each other's code."""
    ns = dict(vars(cpu))
    ns.update({k: v for k, v in vars(_flow).items() if k not in ns})
    ns.update(globals())
    return _family.build(_FAMILY, ns, parallel, **options)


SERIAL = _build(False)
PARALLEL = _build(True)
