"""Fused completion loss + factor gradients, and the many-step training loop, in Numba.

Notation (docs/math.md): ``dims = (d_0 = n, d_1, ..., d_N = m)``, factor ``W_j`` is
``d_j x d_{j-1}`` and lives in the flat vector ``theta`` at ``offs[j-1]:offs[j]``.

One evaluation at ``theta``, for depth N >= 2 (never forming the m x n product). Write
``Q_1 = W_1^T`` (n x d_1, factor 1's own storage), ``S_j = W_N ... W_j`` (m x d_{j-1}) and
``H_j = G (W_{j-1} ... W_1)^T`` (m x d_{j-1}), G the sparse gradient of L in W:

1. suffixes ``S_N = W_N``, ``S_j = S_{j+1} W_j`` for j = N-1..2 (BLAS);
2. row pass, one fused sweep over the observed entries row by row:
   ``r_k = S_2[i_k] . Q_1[j_k] - y_k``, ``g_k = 2 r_k / |Omega|``, the loss, and
   ``H_2[i] = sum_k g_k Q_1[j_k]`` (at depth 2, H_2 is dW_2 itself);
3. column pass: ``dW_1^T[c] = sum_k g_k S_2[i_k]`` over the entries of column c;
4. ``H_{j+1} = H_j W_j^T`` for j = 2..N-1 (BLAS, on a transposed copy of W_j), ending
   with ``dW_N = H_N``;
5. middle factors ``dW_j = S_{j+1}^T H_j`` for j = 2..N-1 (BLAS).

Cost: three sparse passes of O(|Omega| d) whatever the depth, plus 3(N-2) dense products of
O(m d^2) (O(d^3) when square). Depth 2 needs no dense product at all; depth 1 works on W.

Parallelism and determinism: each task owns whole rows (row pass) or whole columns (column
pass) of the outputs, so there are no shared accumulators and no atomics; scalar sums (loss,
squared gradient norm) go through per-block buffers of a fixed block size summed serially;
dense products run in ``config.DENSE_BLOCKS`` fixed row blocks (fewer where blocks would have
under ``_MIN_BLOCK_ROWS`` rows: a function of the shape only), one BLAS call per task, and
the middle gradients (a sum over the m rows) keep one partial product per block, summed in
block order. The floating-point result is therefore the same for any thread count. Serial
and parallel variants are compiled from the same Python functions (``SERIAL`` / ``PARALLEL``).

JIT policy: ``fastmath`` (reassociation and contraction only, so the inner loops vectorise;
no finite-math flags, so NaN and inf propagate) only on the two sparse passes, which are pure
arithmetic; the loop that checks losses for NaN is compiled without it. ``cache=True`` only on
the serial build.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import CACHE, _family
from . import flow as _flow
from .codes import CONVERGED, DIVERGED, OPTIMIZER_CODES, RUNNING  # noqa: F401
from .flow import run_flow, run_rkc, spectral_radius  # noqa: F401  (compiled per build)

__all__ = ["SERIAL", "PARALLEL", "work_layout", "OPTIMIZER_CODES"]

# Statuses returned by ``run`` and the optimisers it knows (hyper = (lr, a, b, eps)) are
# those of fastdmf.kernels.codes.
# Block size of the deterministic reductions and of the parallel update (independent of the
# thread count; a problem smaller than one block runs inline, without a parallel region). The
# default of the ``block`` argument of ``loss_and_grad``, ``update`` and ``run``: a runtime
# value, so tests reach the multi-block paths on small problems with the compiled kernels.
_BLOCK = 16384

_inline = numba.njit(inline="always")
# Fewest rows per block of a dense product in the parallel build: every BLAS call packs its
# whole right operand again, so at the paper's 100 x 100 eight blocks of 12 rows cost twice
# the work of one call (a @ b plus a^T @ b, one thread: 198 against 104 us) and two blocks
# of 50 cost 121 us, which two threads share.
_MIN_BLOCK_ROWS = 48
# Reassociation and contraction only: the loops vectorise, NaN and inf still propagate.
_FASTMATH = {"reassoc", "contract"}


@_inline
def _dot8(s, q0, q1, q2, q3, q4, q5, q6, q7):
    """The eight dots s . q_u in one sweep over s (each element of s loaded once)."""
    zero = s.dtype.type(0)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
    for t in range(s.shape[0]):
        st = s[t]
        a0 += st * q0[t]
        a1 += st * q1[t]
        a2 += st * q2[t]
        a3 += st * q3[t]
        a4 += st * q4[t]
        a5 += st * q5[t]
        a6 += st * q6[t]
        a7 += st * q7[t]
    return a0, a1, a2, a3, a4, a5, a6, a7


@_inline
def _axpy8(dest, w, q0, q1, q2, q3, q4, q5, q6, q7):
    """dest += sum_u w[u] q_u, the eight rows in one sweep over dest."""
    w0, w1, w2, w3, w4, w5, w6, w7 = w
    for t in range(dest.shape[0]):
        dest[t] += ((w0 * q0[t] + w1 * q1[t]) + (w2 * q2[t] + w3 * q3[t])) + (
            (w4 * q4[t] + w5 * q5[t]) + (w6 * q6[t] + w7 * q7[t])
        )


@_inline
def _axpy4(dest, w0, w1, w2, w3, q0, q1, q2, q3):
    for t in range(dest.shape[0]):
        dest[t] += (w0 * q0[t] + w1 * q1[t]) + (w2 * q2[t] + w3 * q3[t])


@_inline
def _resid(x, vals, p, scale, g):
    """r = x - vals[p]; g[p] = scale r; returns r^2 in float64."""
    r = x - vals[p]
    g[p] = scale * r
    return np.float64(r) * np.float64(r)


@_inline
def _seg_resid_accum(s, dest, table, idx, vals, lo, hi, scale, g):
    """For p in [lo, hi): r = s . table[idx[p]] - vals[p], g[p] = scale r, and
    dest = sum_p g[p] table[idx[p]]; returns sum r^2 (float64).

    Eight entries at a time (then four, then one): their rows of ``table`` are gathered once,
    for the eight dots in one sweep over s, then, still in L1, added into dest in one sweep."""
    zero = s.dtype.type(0)
    dest[:] = 0
    loss = 0.0
    p = lo
    while p + 8 <= hi:
        q0, q1, q2, q3 = table[idx[p]], table[idx[p + 1]], table[idx[p + 2]], table[idx[p + 3]]
        q4, q5, q6, q7 = table[idx[p + 4]], table[idx[p + 5]], table[idx[p + 6]], table[idx[p + 7]]
        dots = _dot8(s, q0, q1, q2, q3, q4, q5, q6, q7)
        for u in range(8):
            loss += _resid(dots[u], vals, p + u, scale, g)
        _axpy8(
            dest,
            (g[p], g[p + 1], g[p + 2], g[p + 3], g[p + 4], g[p + 5], g[p + 6], g[p + 7]),
            q0,
            q1,
            q2,
            q3,
            q4,
            q5,
            q6,
            q7,
        )
        p += 8
    if p + 4 <= hi:
        q0, q1, q2, q3 = table[idx[p]], table[idx[p + 1]], table[idx[p + 2]], table[idx[p + 3]]
        a0, a1, a2, a3 = zero, zero, zero, zero
        for t in range(s.shape[0]):
            st = s[t]
            a0 += st * q0[t]
            a1 += st * q1[t]
            a2 += st * q2[t]
            a3 += st * q3[t]
        loss += _resid(a0, vals, p, scale, g)
        loss += _resid(a1, vals, p + 1, scale, g)
        loss += _resid(a2, vals, p + 2, scale, g)
        loss += _resid(a3, vals, p + 3, scale, g)
        _axpy4(dest, g[p], g[p + 1], g[p + 2], g[p + 3], q0, q1, q2, q3)
        p += 4
    while p < hi:
        q0 = table[idx[p]]
        a0 = zero
        for t in range(s.shape[0]):
            a0 += s[t] * q0[t]
        loss += _resid(a0, vals, p, scale, g)
        w0 = g[p]
        for t in range(dest.shape[0]):
            dest[t] += w0 * q0[t]
        p += 1
    return loss


@_inline
def _seg_accum(dest, table, idx, w, lo, hi):
    """dest = sum_{p in [lo, hi)} w[p] table[idx[p]], eight rows per sweep over dest (then
    four, then one)."""
    dest[:] = 0
    p = lo
    while p + 8 <= hi:
        _axpy8(
            dest,
            (w[p], w[p + 1], w[p + 2], w[p + 3], w[p + 4], w[p + 5], w[p + 6], w[p + 7]),
            table[idx[p]],
            table[idx[p + 1]],
            table[idx[p + 2]],
            table[idx[p + 3]],
            table[idx[p + 4]],
            table[idx[p + 5]],
            table[idx[p + 6]],
            table[idx[p + 7]],
        )
        p += 8
    if p + 4 <= hi:
        _axpy4(
            dest,
            w[p],
            w[p + 1],
            w[p + 2],
            w[p + 3],
            table[idx[p]],
            table[idx[p + 1]],
            table[idx[p + 2]],
            table[idx[p + 3]],
        )
        p += 4
    while p < hi:
        ra = table[idx[p]]
        wa = w[p]
        for t in range(dest.shape[0]):
            dest[t] += wa * ra[t]
        p += 1


@_inline
def _update_range(theta, grad, code, hyper, ostate, step, t, lo, hi):
    """Entries [lo, hi) of one optimiser step: gd and grouprmsprop move by ``step * grad``;
    adam (code 2) by its bias-corrected moments (``ostate = [m, v]``). The loops run over
    slices from index 0, so Numba's index checks fold away and they vectorise."""
    th = theta[lo:hi]
    gr = grad[lo:hi]
    if code != 2:
        for p in range(th.shape[0]):
            th[p] -= step * gr[p]
        return
    lr, b1, b2, eps = hyper[0], hyper[1], hyper[2], hyper[3]
    c1 = 1.0 - b1**t
    c2 = 1.0 - b2**t
    size = theta.shape[0]
    mo = ostate[lo:hi]
    ve = ostate[size + lo : size + hi]
    for p in range(th.shape[0]):
        mom = b1 * mo[p] + (1.0 - b1) * gr[p]
        vel = b2 * ve[p] + (1.0 - b2) * gr[p] * gr[p]
        mo[p] = mom
        ve[p] = vel
        th[p] -= lr * (mom / c1) / (np.sqrt(vel / c2) + eps)


@numba.njit(cache=CACHE)
def work_layout(dims, n_obs, nblk):
    """Offsets of the workspace blocks for ``dims`` (S_j, H_j: see module docstring).

    ``lay[j]``: S_j (m x d_{j-1}) and ``lay[N+j]``: H_j (m x d_{j-1}), for j = 2..N-1;
    ``lay[2N+1]``: g in row order and ``lay[2N+2]``: g in column order (|Omega| each, depth
    >= 2); ``lay[2N+3]``: ``nblk`` partial products of the middle gradients (when the dense
    products are split in ``nblk > 1`` blocks); ``lay[2N+4]``: W_j^T for the products
    H_{j+1} = H_j W_j^T (see ``dense_abt``); ``lay[2N+5]``: total size.
    """
    N = dims.shape[0] - 1
    m = dims[N]
    lay = np.zeros(2 * N + 6, dtype=np.int64)
    pos = 0
    for j in range(2, N):
        lay[j] = pos
        pos += m * dims[j - 1]
    for j in range(2, N):
        lay[N + j] = pos
        pos += m * dims[j - 1]
    lay[2 * N + 1] = pos
    if N >= 2:
        pos += n_obs
    lay[2 * N + 2] = pos
    if N >= 2:
        pos += n_obs
    lay[2 * N + 3] = pos
    if nblk > 1:
        for j in range(2, N):
            pos = max(pos, lay[2 * N + 3] + nblk * dims[j] * dims[j - 1])
    lay[2 * N + 4] = pos
    for j in range(2, N):
        pos = max(pos, lay[2 * N + 4] + dims[j] * dims[j - 1])
    lay[2 * N + 5] = pos
    return lay


def _block(buf, off, rows, cols):
    return buf[off : off + rows * cols].reshape((rows, cols))


_blk = numba.njit(inline="always")(_block)


@_inline
def _plain_sum(x, lo, hi, square):
    """sum(x[lo:hi]) (or of its squares) in float64, in four interleaved partial sums
    (entries lo + 4k + u go to sum u; then (s0 + s1) + (s2 + s3)), so that consecutive adds
    do not wait on each other."""
    v = x[lo:hi]
    s0 = s1 = s2 = s3 = 0.0
    n4 = v.shape[0] - v.shape[0] % 4
    if square:
        for t in range(0, n4, 4):
            a0, a1 = np.float64(v[t]), np.float64(v[t + 1])
            a2, a3 = np.float64(v[t + 2]), np.float64(v[t + 3])
            s0 += a0 * a0
            s1 += a1 * a1
            s2 += a2 * a2
            s3 += a3 * a3
        for t in range(n4, v.shape[0]):
            a0 = np.float64(v[t])
            s0 += a0 * a0
    else:
        for t in range(0, n4, 4):
            s0 += np.float64(v[t])
            s1 += np.float64(v[t + 1])
            s2 += np.float64(v[t + 2])
            s3 += np.float64(v[t + 3])
        for t in range(n4, v.shape[0]):
            s0 += np.float64(v[t])
    return (s0 + s1) + (s2 + s3)


@_inline
def _suffix(theta, work, dims, offs, lay, j):
    """S_j = W_N ... W_j, m x d_{j-1}; S_N is factor N itself."""
    N = dims.shape[0] - 1
    if j == N:
        return _blk(theta, offs[N - 1], dims[N], dims[N - 1])
    return _blk(work, lay[j], dims[N], dims[j - 1])


@_inline
def _hblock(grad, work, dims, offs, lay, j):
    """H_j = G (W_{j-1} ... W_1)^T, m x d_{j-1}; H_N is dW_N itself (in ``grad``)."""
    N = dims.shape[0] - 1
    if j == N:
        return _blk(grad, offs[N - 1], dims[N], dims[N - 1])
    return _blk(work, lay[N + j], dims[N], dims[j - 1])


def blocked_sum(x, square, block=_BLOCK):
    """sum(x) (or sum(x**2)) in float64 over fixed blocks of ``block`` entries, one task each,
    then the partial sums in block order: the same result for any thread count."""
    nb = (x.shape[0] + block - 1) // block
    if nb <= 1:
        return _plain_sum(x, 0, x.shape[0], square)
    part = np.zeros(nb)
    for b in prange(nb):
        part[b] = _plain_sum(x, b * block, min((b + 1) * block, x.shape[0]), square)
    return _plain_sum(part, 0, nb, False)


@_inline
def _dense_blocks(rows, nblk):
    """Blocks a dense product over ``rows`` rows is split in: ``nblk``, but none under
    _MIN_BLOCK_ROWS rows (a function of the shape alone, never of the thread count)."""
    return max(1, min(nblk, rows // _MIN_BLOCK_ROWS))


def dense_ab(a, b, out, nblk):
    """out = a @ b (BLAS), the rows of a and out split in up to ``nblk`` blocks (see
    _dense_blocks), one per task."""
    rows = a.shape[0]
    nb = _dense_blocks(rows, nblk)
    if nb == 1:
        np.dot(a, b, out)
        return
    for k in prange(nb):
        lo, hi = k * rows // nb, (k + 1) * rows // nb
        if hi > lo:
            np.dot(a[lo:hi], b, out[lo:hi])


def dense_abt(a, b, out, scratch, nblk):
    """out = a @ b^T: b copied transposed into ``scratch``, then ``dense_ab``. (OpenBLAS's
    product with a transposed right operand is the slow one: at 100 x 100 x 100, 38 us
    against 25 us for the plain product plus 3 us for the copy.)"""
    bt = scratch[: b.shape[0] * b.shape[1]].reshape((b.shape[1], b.shape[0]))
    bt[:, :] = b.T
    dense_ab(a, bt, out, nblk)


def dense_atb(a, b, out, part, nblk):
    """out = a^T @ b (BLAS), the shared dimension split in up to ``nblk`` blocks (see
    _dense_blocks) whose partial products go to their own slice of ``part`` and are then
    summed in block order."""
    rows, size = a.shape[0], out.shape[0] * out.shape[1]
    nb = _dense_blocks(rows, nblk)
    if nb == 1:
        np.dot(a.T, b, out)
        return
    for k in prange(nb):
        lo, hi = k * rows // nb, (k + 1) * rows // nb
        pk = part[k * size : (k + 1) * size].reshape(out.shape)
        if hi > lo:
            np.dot(a[lo:hi].T, b[lo:hi], pk)
        else:
            pk[:, :] = 0
    out[:, :] = part[:size].reshape(out.shape)
    for k in range(1, nb):
        out += part[k * size : (k + 1) * size].reshape(out.shape)


def depth1(theta, grad, obs, rowloss, scale, block):
    cols, vals, rowptr = obs[1], obs[2], obs[3]
    m = rowptr.shape[0] - 1
    grad[:] = 0.0
    for i in prange(m):
        acc = 0.0
        for k in range(rowptr[i], rowptr[i + 1]):
            r = theta[cols[k] * m + i] - vals[k]
            acc += np.float64(r) * np.float64(r)
            grad[cols[k] * m + i] = scale * r
        rowloss[i] = acc
    return blocked_sum(rowloss, False, block) / vals.shape[0]


def row_pass(theta, grad, work, dims, offs, lay, obs, rowloss, scale, block):
    """Residuals, loss and H_2 = G W_1^T; iteration i owns row i of every output."""
    N = dims.shape[0] - 1
    cols, vals, rowptr = obs[1], obs[2], obs[3]
    g = work[lay[2 * N + 1] : lay[2 * N + 1] + vals.shape[0]]
    q1 = _blk(theta, 0, dims[0], dims[1])
    s2 = _suffix(theta, work, dims, offs, lay, 2)
    h2 = _hblock(grad, work, dims, offs, lay, 2)
    for i in prange(dims[N]):
        rowloss[i] = _seg_resid_accum(
            s2[i], h2[i], q1, cols, vals, rowptr[i], rowptr[i + 1], scale, g
        )
    return blocked_sum(rowloss, False, block) / vals.shape[0]


def col_pass(theta, grad, work, dims, offs, lay, obs):
    """dW_1^T[c] = sum_k g_k S_2[i_k] over column c's entries; iteration c owns column c
    (dW_1 is stored transposed, like W_1)."""
    N = dims.shape[0] - 1
    colptr, col_rows, order = obs[4], obs[5], obs[6]
    nobs = order.shape[0]
    g = work[lay[2 * N + 1] : lay[2 * N + 1] + nobs]
    gcol = work[lay[2 * N + 2] : lay[2 * N + 2] + nobs]
    for p in range(nobs):
        gcol[p] = g[order[p]]
    s2 = _suffix(theta, work, dims, offs, lay, 2)
    dw1t = _blk(grad, 0, dims[0], dims[1])
    for c in prange(dims[0]):
        _seg_accum(dw1t[c], s2, col_rows, gcol, colptr[c], colptr[c + 1])


def loss_and_grad(theta, grad, work, dims, offs, obs, rowloss, scale, nblk, block=_BLOCK):
    """Loss at ``theta``; all factor gradients written into ``grad``. Dense products run in
    ``nblk`` blocks (1: one BLAS call each); the loss is summed in blocks of ``block`` rows."""
    N = dims.shape[0] - 1
    blk = np.int64(block)  # one compiled type whether ``block`` is given or left out
    if N == 1:
        return depth1(theta, grad, obs, rowloss, scale, blk)
    lay = work_layout(dims, obs[0].shape[0], nblk)
    for j in range(N - 1, 1, -1):
        w = _blk(theta, offs[j - 1], dims[j], dims[j - 1])
        dense_ab(
            _suffix(theta, work, dims, offs, lay, j + 1),
            w,
            _suffix(theta, work, dims, offs, lay, j),
            nblk,
        )
    loss = row_pass(theta, grad, work, dims, offs, lay, obs, rowloss, scale, blk)
    col_pass(theta, grad, work, dims, offs, lay, obs)
    scratch = work[lay[2 * N + 4] : lay[2 * N + 5]]
    for j in range(2, N):
        dense_abt(
            _hblock(grad, work, dims, offs, lay, j),
            _blk(theta, offs[j - 1], dims[j], dims[j - 1]),
            _hblock(grad, work, dims, offs, lay, j + 1),
            scratch,
            nblk,
        )
    part = work[lay[2 * N + 3] : lay[2 * N + 4]]
    for j in range(2, N):
        dense_atb(
            _suffix(theta, work, dims, offs, lay, j + 1),
            _hblock(grad, work, dims, offs, lay, j),
            _blk(grad, offs[j - 1], dims[j], dims[j - 1]),
            part,
            nblk,
        )
    return loss


def update(theta, grad, code, hyper, ostate, sc, block=_BLOCK):
    """One optimiser step in place; ``sc = [t, v, time]`` (see OPTIMIZER_CODES). Entries are
    updated in fixed blocks of ``block``, one task each (a single block runs inline)."""
    blk = np.int64(block)
    lr, a, eps = hyper[0], hyper[1], hyper[3]
    sc[0] += 1.0
    t = sc[0]
    step = lr
    if code == 1:
        sc[1] = a * sc[1] + (1.0 - a) * blocked_sum(grad, True, blk)
        step = lr / (np.sqrt(sc[1] / (1.0 - a**t)) + eps)
    size = theta.shape[0]
    nb = (size + blk - 1) // blk
    if nb <= 1:
        _update_range(theta, grad, code, hyper, ostate, step, t, 0, size)
    else:
        for k in prange(nb):
            _update_range(
                theta, grad, code, hyper, ostate, step, t, k * blk, min((k + 1) * blk, size)
            )
    sc[2] += step


def run(
    theta, grad, work, dims, offs, obs, rowloss, opt, n_steps, tol, loss_cap, nblk, block=_BLOCK
):
    """Up to ``n_steps`` optimiser steps in one compiled call (``block``: as in
    ``loss_and_grad`` and ``update``).

    ``opt = (code, hyper, ostate, sc)``. Each step evaluates the loss at the current
    ``theta``: at or below ``tol`` the run stops before updating (CONVERGED); NaN, inf or
    above ``loss_cap`` it stops (DIVERGED). Returns ``(steps_done, status, last_loss)``.
    """
    code, hyper, ostate, sc = opt
    scale = 2.0 / obs[0].shape[0]
    blk = np.int64(block)
    loss = np.nan
    for s in range(n_steps):
        loss = loss_and_grad(theta, grad, work, dims, offs, obs, rowloss, scale, nblk, blk)
        if not (loss <= loss_cap):
            return s, DIVERGED, loss
        if loss <= tol:
            return s, CONVERGED, loss
        update(theta, grad, code, hyper, ostate, sc, blk)
    return n_steps, RUNNING, loss


_FAMILY = (
    ("blocked_sum", "kernel"),
    ("dense_ab", "kernel"),
    ("dense_atb", "kernel"),
    ("dense_abt", "kernel"),
    ("depth1", "kernel"),
    ("row_pass", "fast"),
    ("col_pass", "fast"),
    ("loss_and_grad", "driver"),
    ("update", "kernel"),
    ("run", "driver"),
    ("spectral_radius", "driver"),
    ("run_rkc", "driver"),
    ("run_flow", "driver"),
)


def _build(parallel, **options):
    """Compile the family with ``parallel`` (prange) or as plain loops (see
    ``fastdmf.kernels._family.build``; ``options`` pass through to it)."""
    ns = dict(globals())
    ns.update({k: v for k, v in vars(_flow).items() if k not in ns})
    family = [(name, globals()[name], kind) for name, kind in _FAMILY]
    return _family.build(family, ns, parallel, fastmath=_FASTMATH, **options)


SERIAL = _build(False)
PARALLEL = _build(True)
