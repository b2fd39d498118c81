"""The dense step of :class:`fastdmf.kernels.cuda.DeviceBatch` for small, densely observed problems.

At 100 x 100 with 2,000 entries (the paper's grid) the three sparse passes of the CUDA kernels
are latency-bound gathers, each as slow as a dense product over the whole matrix. This path
forms the end-to-end product and a dense gradient instead, so that everything but one gather
and one update is a batched matrix product, run by cuBLAS on the tensor cores:

    S_j = S_{j+1} W_j (j = N-1..2),  W = S_2 W_1,      r_k = W[i_k, j_k] - y_k,
    G[i_k, j_k] = (2 / |Omega|) r_k (zero elsewhere),  H_2 = G W_1^T,  dW_1^T = G^T S_2,
    H_{j+1} = H_j W_j^T,  dW_j = S_{j+1}^T H_j       (H_N = dW_N),

2N batched products per step (six at depth 3), the residuals and the loss in one kernel that
writes r_k into G at the fixed observed positions (the rest of G stays zero from the start),
and one fused update kernel (a block per trial: squared gradient norm, step size, update).
Nothing leaves the device inside a call of ``run``.

The products are strided-batched GEMMs through CuPy's cuBLAS bindings on the numba.cuda
arrays' device pointers (same context, same default stream, no copies). Without CuPy (and on
the CUDA simulator, where the tests run) they are the Numba product tiles of
:func:`fastdmf.kernels.cuda.kernels`, so every kernel of this path runs in CI.

Determinism: the residual and update kernels reduce over partitions fixed by the problem's
shape, as the sparse path does; cuBLAS gives the same bits on every run of the same batch
size, but it chooses its GEMM kernel by batch size, so a trial's bits can differ (within
rounding) between batches of different sizes. With the Numba tiles a trial's bits do not
depend on the batch.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numpy as np

from ._cuda_env import (  # cuda: a module global, the simulator swaps it inside kernels
    RESID_PER_BLOCK,
    THREADS,
    cuda,
    simulated,
)
from .codes import ADAM, GROUPRMSPROP, RUNNING

__all__ = ["choose_dense", "cublas_products", "DensePath", "DENSE_RATIO", "DENSE_MAX"]

# The dense step replaces three gathers over |Omega| entries by three products over the m x n
# matrix; on an H200 a product element costs about 1/16 of a gathered one (RESULTS_gpu.md),
# so the dense step is chosen when m n <= DENSE_RATIO |Omega|.
DENSE_RATIO = 16
# ... and when one trial's dense matrix has at most this many entries.
DENSE_MAX = 1 << 22
# Threads per block of the fused update (one block per trial).
UPDATE_THREADS = 512


def cublas_products(dtype):
    """A callable running strided-batched GEMMs through CuPy's cuBLAS, or None when CuPy
    cannot be imported or numba.cuda is the simulator."""
    if simulated():
        return None
    try:
        from cupy.cuda import cublas, device
    except Exception:  # noqa: BLE001  (no CuPy: the Numba product tiles)
        return None
    return _Cublas(cublas, device.get_cublas_handle(), np.dtype(dtype))


def choose_dense(m, n, n_observed, depth, launch_dense, have_cublas) -> bool:
    """Whether a DeviceBatch takes the dense step: ``launch_dense`` when given (True or False),
    else automatically for depth >= 2 problems with m n <= DENSE_RATIO |Omega| and
    m n <= DENSE_MAX, when cuBLAS is there (or on the simulator)."""
    if depth < 2:
        return False
    if launch_dense is not None:
        return bool(launch_dense)
    small = m * n <= DENSE_RATIO * n_observed and m * n <= DENSE_MAX
    return small and (have_cublas or simulated())


class _Cublas:
    """C_b = op(A_b) op(B_b) for every trial b in one cublas<t>gemmStridedBatched call.

    Arrays are (array, offset) pairs into (B, width) C-order device arrays, the matrices
    row-major at that offset of each row; cuBLAS is column-major, so the call computes
    C^T = op(B)^T op(A)^T with the operands swapped."""

    def __init__(self, cublas, handle, dtype):
        self.cublas, self.handle = cublas, handle
        self.gemm = (
            cublas.dgemmStridedBatched if dtype == np.float64 else cublas.sgemmStridedBatched
        )
        self.one, self.zero = np.ones(1, dtype), np.zeros(1, dtype)
        self.item = dtype.itemsize

    def _ptr(self, arr, off):
        return arr.__cuda_array_interface__["data"][0] + int(off) * self.item

    def __call__(self, a, ta, b, tb, c, M, N, K, batch):
        op_n, op_t = self.cublas.CUBLAS_OP_N, self.cublas.CUBLAS_OP_T
        (A, aoff), (Bm, boff), (C, coff) = a, b, c
        self.gemm(
            self.handle,
            op_t if tb else op_n,
            op_t if ta else op_n,
            N,
            M,
            K,
            self.one.ctypes.data,
            self._ptr(Bm, boff),
            K if tb else N,
            Bm.shape[1],
            self._ptr(A, aoff),
            M if ta else K,
            A.shape[1],
            self.zero.ctypes.data,
            self._ptr(C, coff),
            N,
            C.shape[1],
            batch,
        )


@cache
def dense_kernels(
    dtype="float64",
    resid_threads=THREADS,
    resid_block=RESID_PER_BLOCK,
    update_threads=UPDATE_THREADS,
):
    """The residual and fused update kernels for ``dtype``; ``resid_threads`` and
    ``update_threads`` threads per block (powers of two), ``resid_block`` entries per block
    of the loss reduction."""
    import numba

    for t in (resid_threads, update_threads):
        if t & (t - 1):
            raise ValueError(f"threads must be a power of two, got {t}")
    RT, UT, RB = int(resid_threads), int(update_threads), int(resid_block)
    ftype = numba.float32 if dtype == "float32" else numba.float64
    f64 = numba.float64

    @cuda.jit
    def residuals(Wd, Gd, n, rows, cols, vals, losspart, scale, status):
        """r_k = W[i_k, j_k] - y_k into G[i_k, j_k] = scale r_k; block p of trial b sums
        r_k^2 over its entries (fixed tree order) into losspart[b, p]."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        p = cuda.blockIdx.x
        lo = p * RB
        hi = min(vals.shape[0], lo + RB)
        acc = f64(0.0)
        for k in range(lo + cuda.threadIdx.x, hi, RT):
            pos = rows[k] * n + cols[k]
            r = Wd[b, pos] - vals[k]
            Gd[b, pos] = ftype(scale) * r
            acc += f64(r) * f64(r)
        buf = cuda.shared.array(RT, f64)
        t = cuda.threadIdx.x
        buf[t] = acc
        cuda.syncthreads()
        width = RT // 2
        while width > 0:
            if t < width:
                buf[t] += buf[t + width]
            cuda.syncthreads()
            width //= 2
        if t == 0:
            losspart[b, p] = buf[0]

    @cuda.jit
    def update(theta, grad, ostate, codes, hyper, sc, size, status):
        """One block per trial: the squared gradient norm (grouprmsprop), the step size
        (t += 1; sc = [t, v, time], as ``step_size``) and the update of ``update``."""
        b = cuda.blockIdx.x
        if status[b] != RUNNING:
            return
        t = cuda.threadIdx.x
        code = codes[b]
        lr = hyper[b, 0]
        buf = cuda.shared.array(UT, f64)
        if code == GROUPRMSPROP:
            acc = f64(0.0)
            for e in range(t, size, UT):
                x = f64(grad[b, e])
                acc += x * x
            buf[t] = acc
            cuda.syncthreads()
            width = UT // 2
            while width > 0:
                if t < width:
                    buf[t] += buf[t + width]
                cuda.syncthreads()
                width //= 2
        # every thread computes the step from the same values; thread 0 stores the scalars
        steps = sc[b, 0] + 1.0
        step = lr
        v = f64(0.0)
        if code == GROUPRMSPROP:
            a = hyper[b, 1]
            v = a * sc[b, 1] + (1.0 - a) * buf[0]
            step = lr / (math.sqrt(v / (1.0 - a**steps)) + hyper[b, 3])
        cuda.syncthreads()  # all threads have read sc before thread 0 writes it
        if t == 0:
            sc[b, 0] = steps
            if code == GROUPRMSPROP:
                sc[b, 1] = v
            sc[b, 2] += step
        # float64 arithmetic, rounded once when stored, as the CPU kernels do
        if code != ADAM:
            for e in range(t, size, UT):
                theta[b, e] = ftype(f64(theta[b, e]) - step * f64(grad[b, e]))
            return
        b1 = hyper[b, 1]
        b2 = hyper[b, 2]
        eps = hyper[b, 3]
        c1 = 1.0 - b1**steps
        c2 = 1.0 - b2**steps
        for e in range(t, size, UT):
            gr = f64(grad[b, e])
            mom = b1 * f64(ostate[b, e]) + (1.0 - b1) * gr
            vel = b2 * f64(ostate[b, size + e]) + (1.0 - b2) * gr * gr
            ostate[b, e] = ftype(mom)
            ostate[b, size + e] = ftype(vel)
            theta[b, e] = ftype(f64(theta[b, e]) - lr * (mom / c1) / (math.sqrt(vel / c2) + eps))

    return SimpleNamespace(residuals=residuals, update=update, update_threads=UT, resid_threads=RT)


class DensePath:
    """The dense evaluation and fused update of a :class:`~fastdmf.kernels.cuda.DeviceBatch`
    (which owns the parameters, workspace, statuses and losses; this adds the m x n end-to-end
    product and gradient of every trial)."""

    def __init__(self, db, products, update_threads):
        self.db = db
        k = db.k
        self.k = dense_kernels(k.dtype, k.threads, k.resid_block, update_threads)
        self.products = products  # cuBLAS, or None: the Numba tiles (db._matmul)
        B, mn = db.B, db.m * db.n
        dtype = db.vals.dtype
        self.wd = cuda.device_array((B, mn), dtype)
        self.gd = cuda.to_device(np.zeros((B, mn), dtype))  # zero off the observed entries
        self.name = "cublas" if products is not None else "numba tiles"

    def _gemm(self, label, a, ta, b, tb, c, M, N, K):
        db = self.db
        if self.products is None:
            db._matmul(a, ta, b, tb, c, M, N, K)
        else:
            db._go(label, self.products, a, ta, b, tb, c, M, N, K, db.B)

    def evaluate(self):
        db, N, d, m, n = self.db, self.db.depth, self.db.dims, self.db.m, self.db.n
        for j in range(N - 1, 1, -1):  # S_j = S_{j+1} W_j
            self._gemm(
                "gemm S", db._suffix(j + 1), 0, db._factor(j), 0, db._suffix(j), m, d[j - 1], d[j]
            )
        s2, q1, wd, gd = db._suffix(2), (db.theta, 0), (self.wd, 0), (self.gd, 0)
        self._gemm("gemm W", s2, 0, q1, 1, wd, m, n, d[1])  # W = S_2 W_1 (Q_1 = W_1^T)
        db._go(
            "dense residuals",
            self.k.residuals[(db.nres, db.B), self.k.resid_threads],
            self.wd,
            self.gd,
            n,
            db.rows,
            db.cols,
            db.vals,
            db.losspart,
            db.scale,
            db.status,
        )
        db._check()
        self._gemm("gemm H", gd, 0, q1, 0, db._hblock(2), m, d[1], n)  # H_2 = G Q_1
        self._gemm("gemm dW1", gd, 1, s2, 0, (db.grad, 0), n, d[1], m)  # dW_1^T = G^T S_2
        for j in range(2, N):  # H_{j+1} = H_j W_j^T
            self._gemm(
                "gemm H", db._hblock(j), 0, db._factor(j), 1, db._hblock(j + 1), m, d[j], d[j - 1]
            )
        for j in range(2, N):  # dW_j = S_{j+1}^T H_j
            self._gemm(
                "gemm dW",
                db._suffix(j + 1),
                1,
                db._hblock(j),
                0,
                (db.grad, int(db.offs[j - 1])),
                d[j],
                d[j - 1],
                m,
            )

    def update(self):
        db = self.db
        db._go(
            "fused update",
            self.k.update[db.B, self.k.update_threads],
            db.theta,
            db.grad,
            db.ostate,
            db.codes,
            db.hyper,
            db.scalars,
            db.P,
            db.status,
        )
