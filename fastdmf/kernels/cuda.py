"""The CPU kernels' contracts on numba.cuda: fused completion loss + gradients and the step loop.

Same flat layout as :mod:`fastdmf.kernels.cpu` (``theta`` holds W_1^T, W_2, ..., W_N), same
evaluation (suffix products S_j, a row pass for the residuals and H_2, a column pass for dW_1^T,
dense products H_{j+1} = H_j W_j^T and dW_j = S_{j+1}^T H_j), same optimiser updates and the
same stopping rules (loss at or below ``tol`` before an update: converged; NaN, inf or above the
cap: diverged). Nothing m x n is formed at depth >= 2.

Every kernel carries a trial axis: the state of B independent trials of one problem lives in
(B, size) device arrays, and each kernel's grid covers (work of one trial) x B. A single fit is
a batch of one. A kernel skips trials whose ``status`` is not RUNNING, so trials that stop
early cost (almost) nothing afterwards.

Determinism: every output element is written by one thread, in a fixed order; the reductions
(loss, squared gradient norm, split-K products) use partitions that depend on the problem's
shape only, never on B or on the GPU, and are summed in a fixed order. A trial therefore gives
the same bits whatever batch it runs in, and the same bits on every run; the bits differ from
the CPU kernels' (another summation order), within rounding.

Small, densely observed problems take the dense step of :mod:`fastdmf.kernels.cuda_dense`
instead (cuBLAS products of the whole m x n matrix, a fused update): see :class:`DeviceBatch`.

Kernels are compiled per (dtype, tile, threads per block) by :func:`kernels`; the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``) runs them on tiny shapes with small tiles in the tests.
"""

from __future__ import annotations

import math
import time
from functools import cache
from types import SimpleNamespace

import numpy as np

from ..factors import FactorLayout
from ._cuda_env import IMPORT_ERROR as _IMPORT_ERROR
from ._cuda_env import (  # cuda: a module global, the simulator swaps it inside kernels
    RESID_PER_BLOCK,
    THREADS,
    TILE,
    cuda,
    simulated,
)
from .codes import ADAM, CONVERGED, DIVERGED, GROUPRMSPROP, IDLE, RUNNING

__all__ = ["available", "require", "kernels", "max_trials", "DeviceBatch"]


# Default launch shapes on a real GPU (the simulator tests pass small ones): TILE, THREADS
# and RESID_PER_BLOCK (entries per block of the residual pass) in _cuda_env; elements per
# block of the squared-norm reduction: like RESID_PER_BLOCK it fixes the partition of a
# reduction, so it depends on the shape only.
SQNORM_PER_BLOCK = 16384
# Inner length per split of a split-K product (dW_j sums over all m rows).
SPLIT_K = 2048
# Under the simulator (every thread a Python thread): tiny blocks and partitions, so that
# small test problems run every multi-block path in bounded time.
SIMULATOR_LAUNCH = {
    "tile": 2,
    "threads": 8,
    "split_k": 4,
    "resid_block": 8,
    "sq_block": 64,
    "update_threads": 8,
}
# CUDA's limit on a grid's y and z sizes: the trial axis runs along y (z in the products,
# times the number of splits), so it bounds the trials of one DeviceBatch.
GRID_YZ = 65535


def _launch(launch=None) -> dict:
    """Launch and partition shapes: the defaults (the simulator's under the simulator)
    updated with ``launch``."""
    return {**(SIMULATOR_LAUNCH if simulated() else {}), **(launch or {})}


def _ksplit(m, depth, split_k) -> int:
    """Splits of the products that sum over the m rows (depth >= 3 has them)."""
    return max(1, -(-m // split_k)) if depth > 2 else 1


def max_trials(m, depth, launch=None) -> int:
    """The most trials one :class:`DeviceBatch` of an m-row problem at ``depth`` launches
    (``fit_batch`` runs more in consecutive batches of this size)."""
    return GRID_YZ // _ksplit(m, depth, int(_launch(launch).get("split_k", SPLIT_K)))


def available() -> bool:
    """True when numba.cuda can run kernels here (a GPU, or the simulator)."""
    try:
        return cuda is not None and bool(cuda.is_available())
    except Exception:  # noqa: BLE001  (no CUDA driver, no toolkit: not available)
        return False


def require() -> None:
    """Raise a clear error when ``backend="cuda"`` cannot run."""
    if cuda is None:
        raise RuntimeError(
            f"backend='cuda' needs numba.cuda, which failed to import ({_IMPORT_ERROR}); "
            "install the extra with `pip install \"fastdmf[cuda]\"` or use backend='cpu'"
        )
    if not available():
        raise RuntimeError(
            "backend='cuda' found no usable CUDA GPU (numba.cuda.is_available() is False): "
            "check the NVIDIA driver and `pip install \"fastdmf[cuda]\"`, or use backend='cpu' "
            "(NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels on the simulator, for testing)"
        )


@cache
def kernels(
    dtype: str = "float64",
    tile: int = TILE,
    threads: int = THREADS,
    resid_block: int = RESID_PER_BLOCK,
    sq_block: int = SQNORM_PER_BLOCK,
):
    """The compiled kernel family for ``dtype`` with ``tile`` x ``tile`` product tiles,
    ``threads`` threads per block (a power of two) in the 1-d kernels, and reduction blocks of
    ``resid_block`` observed entries (loss) and ``sq_block`` parameters (gradient norm)."""
    import numba

    require()
    if threads & (threads - 1):
        raise ValueError(f"threads must be a power of two, got {threads}")
    T = int(tile)
    TPB = int(threads)
    T2 = 2 * T  # a block's output tile is T2 x T2
    TP = T + 1  # padded panel rows: no shared-memory bank conflicts on transposed loads
    T2P = T2 + 1
    RB = int(resid_block)
    SB = int(sq_block)
    ftype = numba.float32 if dtype == "float32" else numba.float64
    f64 = numba.float64

    @cuda.jit
    def matmul(A, aoff, ta, Bm, boff, tb, C, coff, M, N, K, ksplit, status):
        """C_b = op(A_b) op(B_b), M x N, inner length K; op transposes when ta/tb is 1
        (A stored K x M, B stored N x K). A block of T x T threads computes a 2T x 2T tile,
        each thread four outputs (rows ty, ty + T; columns tx, tx + T) from shared-memory
        panels of inner length T. With ksplit > 1, split s of the inner dimension writes its
        partial product at C[b, coff + s*M*N ...] (summed by sum_splits)."""
        z = cuda.blockIdx.z
        b = z // ksplit
        if status[b] != RUNNING:
            return
        s = z - b * ksplit
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        r0 = cuda.blockIdx.y * T2
        c0 = cuda.blockIdx.x * T2
        sa = cuda.shared.array((T2, TP), ftype)  # sa[r, q] = op(A)[r0 + r, kt + q]
        sb = cuda.shared.array((T, T2P), ftype)  # sb[q, c] = op(B)[kt + q, c0 + c]
        per = (K + ksplit - 1) // ksplit
        k0 = s * per
        k1 = min(K, k0 + per)
        zero = ftype(0.0)
        a00 = zero
        a01 = zero
        a10 = zero
        a11 = zero
        for kt in range(k0, k1, T):
            # consecutive threads (tx) read consecutive addresses in either storage
            for h in range(2):
                if ta == 0:
                    row, kk = r0 + ty + h * T, kt + tx
                    ok = row < M and kk < k1
                    sa[ty + h * T, tx] = A[b, aoff + row * K + kk] if ok else zero
                else:
                    row, kk = r0 + tx + h * T, kt + ty
                    ok = row < M and kk < k1
                    sa[tx + h * T, ty] = A[b, aoff + kk * M + row] if ok else zero
                if tb == 0:
                    kk, col = kt + ty, c0 + tx + h * T
                    ok = kk < k1 and col < N
                    sb[ty, tx + h * T] = Bm[b, boff + kk * N + col] if ok else zero
                else:
                    kk, col = kt + tx, c0 + ty + h * T
                    ok = kk < k1 and col < N
                    sb[tx, ty + h * T] = Bm[b, boff + col * K + kk] if ok else zero
            cuda.syncthreads()
            for q in range(T):
                x0 = sa[ty, q]
                x1 = sa[ty + T, q]
                y0 = sb[q, tx]
                y1 = sb[q, tx + T]
                a00 += x0 * y0
                a01 += x0 * y1
                a10 += x1 * y0
                a11 += x1 * y1
            cuda.syncthreads()
        base = coff + s * M * N
        row = r0 + ty
        col = c0 + tx
        if row < M:
            if col < N:
                C[b, base + row * N + col] = a00
            if col + T < N:
                C[b, base + row * N + col + T] = a01
        if row + T < M:
            if col < N:
                C[b, base + (row + T) * N + col] = a10
            if col + T < N:
                C[b, base + (row + T) * N + col + T] = a11

    @cuda.jit
    def sum_splits(part, poff, C, coff, size, ksplit, status):
        """C[b, coff + e] = sum over splits s (in order) of part[b, poff + s*size + e]."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        for e in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, size, cuda.gridDim.x * TPB):
            acc = part[b, poff + e]
            for s in range(1, ksplit):
                acc += part[b, poff + s * size + e]
            C[b, coff + e] = acc

    @cuda.jit(device=True)
    def block_sum(buf, acc):
        """Tree sum of ``acc`` over the block (fixed order); thread 0 gets the total."""
        t = cuda.threadIdx.x
        buf[t] = acc
        cuda.syncthreads()
        width = TPB // 2
        while width > 0:
            if t < width:
                buf[t] += buf[t + width]
            cuda.syncthreads()
            width //= 2
        return buf[0]

    @cuda.jit(device=True)
    def store_block_sum(part, b, p, acc):
        """part[b, p] = the block's sum of ``acc`` (fixed tree order)."""
        buf = cuda.shared.array(TPB, f64)
        total = block_sum(buf, acc)
        if cuda.threadIdx.x == 0:
            part[b, p] = total

    @cuda.jit
    def residuals(S, soff, theta, grad, d1, m, rows, cols, vals, g, losspart, scale, status):
        """r_k = S_2[i_k] . Q_1[j_k] - y_k, g_k = scale r_k; block p of trial b sums r_k^2
        over its entries into losspart[b, p]. Depth 1 (``d1 == 0``): theta is W^T,
        r_k = W[i_k, j_k] - y_k and scale r_k goes straight into grad (zeroed beforehand by
        ``fill``)."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        p = cuda.blockIdx.x
        lo = p * RB
        hi = min(vals.shape[0], lo + RB)
        acc = f64(0.0)
        for k in range(lo + cuda.threadIdx.x, hi, TPB):
            if d1 == 0:
                pos = cols[k] * m + rows[k]
                r = theta[b, pos] - vals[k]
                grad[b, pos] = ftype(scale) * r
            else:
                srow = soff + rows[k] * d1
                qrow = cols[k] * d1
                r = ftype(0.0)
                for c in range(d1):
                    r += S[b, srow + c] * theta[b, qrow + c]
                r -= vals[k]
                g[b, k] = ftype(scale) * r
            acc += f64(r) * f64(r)
        store_block_sum(losspart, b, p, acc)

    @cuda.jit
    def fill(x, size, value, status):
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        for e in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, size, cuda.gridDim.x * TPB):
            x[b, e] = value

    @cuda.jit
    def check_loss(losspart, nparts, nobs, loss, caps, tol, status):
        """Loss of every running trial; stop it when diverged (not <= cap) or converged."""
        b = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if b >= status.shape[0] or status[b] != RUNNING:
            return
        acc = f64(0.0)
        for p in range(nparts):
            acc += losspart[b, p]
        value = acc / nobs
        loss[b] = value
        if not (value <= caps[b]):
            status[b] = DIVERGED
        elif value <= tol:
            status[b] = CONVERGED

    @cuda.jit
    def row_pass(g, Q, d1, cols, rowptr, H, hoff, m, status):
        """H_2[i, c] = sum over row i's entries of g_k Q_1[j_k, c]."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        for e in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, m * d1, cuda.gridDim.x * TPB):
            i = e // d1
            c = e - i * d1
            acc = ftype(0.0)
            for k in range(rowptr[i], rowptr[i + 1]):
                acc += g[b, k] * Q[b, cols[k] * d1 + c]
            H[b, hoff + e] = acc

    @cuda.jit
    def col_pass(g, S, soff, d1, col_rows, order, colptr, grad, n, status):
        """dW_1^T[j, c] = sum over column j's entries of g_k S_2[i_k, c]."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        for e in range(cuda.blockIdx.x * TPB + cuda.threadIdx.x, n * d1, cuda.gridDim.x * TPB):
            j = e // d1
            c = e - j * d1
            acc = ftype(0.0)
            for p in range(colptr[j], colptr[j + 1]):
                acc += g[b, order[p]] * S[b, soff + col_rows[p] * d1 + c]
            grad[b, e] = acc

    @cuda.jit
    def sqnorm(x, size, part, status):
        """part[b, p] = sum of x[b, e]^2 over block p's fixed range."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        p = cuda.blockIdx.x
        lo = p * SB
        hi = min(size, lo + SB)
        acc = f64(0.0)
        for e in range(lo + cuda.threadIdx.x, hi, TPB):
            v = f64(x[b, e])
            acc += v * v
        store_block_sum(part, b, p, acc)

    @cuda.jit
    def step_size(codes, hyper, sc, part, nparts, stepsize, status):
        """Per trial: t += 1 and the step (grouprmsprop: lr / (sqrt(v_hat) + eps) with
        v = a v + (1 - a) ||g||^2); sc = [t, v, time]."""
        b = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if b >= status.shape[0] or status[b] != RUNNING:
            return
        lr = hyper[b, 0]
        a = hyper[b, 1]
        eps = hyper[b, 3]
        sc[b, 0] += 1.0
        t = sc[b, 0]
        step = lr
        if codes[b] == GROUPRMSPROP:
            acc = f64(0.0)
            for p in range(nparts):
                acc += part[b, p]
            sc[b, 1] = a * sc[b, 1] + (1.0 - a) * acc
            step = lr / (math.sqrt(sc[b, 1] / (1.0 - a**t)) + eps)
        stepsize[b] = step
        sc[b, 2] += step

    @cuda.jit
    def update(theta, grad, ostate, codes, hyper, sc, stepsize, size, status):
        """theta -= step * grad (gd, grouprmsprop) or the bias-corrected Adam step."""
        b = cuda.blockIdx.y
        if status[b] != RUNNING:
            return
        code = codes[b]
        start = cuda.blockIdx.x * TPB + cuda.threadIdx.x
        stride = cuda.gridDim.x * TPB
        # float64 arithmetic, rounded once when stored, as the CPU kernels do
        if code != ADAM:
            step = stepsize[b]
            for e in range(start, size, stride):
                theta[b, e] = ftype(f64(theta[b, e]) - step * f64(grad[b, e]))
            return
        lr = hyper[b, 0]
        b1 = hyper[b, 1]
        b2 = hyper[b, 2]
        eps = hyper[b, 3]
        t = sc[b, 0]
        c1 = 1.0 - b1**t
        c2 = 1.0 - b2**t
        for e in range(start, size, stride):
            gr = f64(grad[b, e])
            mom = b1 * f64(ostate[b, e]) + (1.0 - b1) * gr
            vel = b2 * f64(ostate[b, size + e]) + (1.0 - b2) * gr * gr
            ostate[b, e] = ftype(mom)
            ostate[b, size + e] = ftype(vel)
            theta[b, e] = ftype(f64(theta[b, e]) - lr * (mom / c1) / (math.sqrt(vel / c2) + eps))

    return SimpleNamespace(
        tile=T,
        threads=TPB,
        resid_block=RB,
        sq_block=SB,
        dtype=dtype,
        matmul=matmul,
        sum_splits=sum_splits,
        residuals=residuals,
        fill=fill,
        check_loss=check_loss,
        row_pass=row_pass,
        col_pass=col_pass,
        sqnorm=sqnorm,
        step_size=step_size,
        update=update,
    )


def _blocks(size, threads, cap=4096):
    return max(1, min(cap, -(-size // threads)))


class DeviceBatch:
    """B trials of one completion problem on the GPU: device buffers and the step loop.

    Parameters
    ----------
    problem : CompletionProblem
    dims : sequence of int
        ``(d_0 = n, d_1, ..., d_N = m)``.
    thetas : ndarray, shape (B, P)
        Initial parameters (flat layout of :class:`fastdmf.factors.FactorLayout`); the dtype
        (float32 or float64) is the compute dtype.
    codes : ndarray of int, shape (B,)
        Optimiser codes (``cpu.OPTIMIZER_CODES``); ``hyper`` (B, 4), ``ostate`` (B, slots P)
        and ``scalars`` (B, 3) as in :class:`fastdmf.engine.Engine`.
    launch : dict, optional
        Launch and partition shapes: ``tile``, ``threads``, ``resid_block``, ``sq_block``
        (see :func:`kernels`), ``split_k`` (inner length per split of the products that sum
        over the m rows), ``dense`` (True or False: take the dense step of
        :mod:`fastdmf.kernels.cuda_dense` or the sparse one; None, the default, chooses by the
        problem's shape, see :func:`~fastdmf.kernels.cuda_dense.choose_dense`) and
        ``update_threads`` (the dense step's fused update); defaults are the module
        constants, or ``SIMULATOR_LAUNCH`` under the CUDA simulator, so that every
        multi-block path runs on tiny problems.

    The device holds the parameters, optimiser state and workspace between calls; :meth:`run`
    returns with the parameters and optimiser state copied back into the host arrays given at
    construction (which it updates in place). ``path`` names the step taken: ``"sparse"``,
    ``"dense (cublas)"`` or ``"dense (numba tiles)"``.
    """

    def __init__(self, problem, dims, thetas, codes, hyper, ostate, scalars, launch=None):
        require()
        dtype = thetas.dtype
        from . import cuda_dense

        launch = _launch(launch)
        self.split_k = int(launch.pop("split_k", SPLIT_K))
        dense = launch.pop("dense", None)
        update_threads = int(launch.pop("update_threads", cuda_dense.UPDATE_THREADS))
        self.k = kernels(np.dtype(dtype).name, **launch)
        self.host = (thetas, ostate, scalars)
        self.dims = [int(d) for d in dims]
        self.depth = len(self.dims) - 1
        self.B, self.P = thetas.shape
        n, m = self.dims[0], self.dims[-1]
        self.m, self.n = m, n
        self.offs = FactorLayout.build((m, n), self.depth, self.dims[1:-1]).offsets
        rowptr, colptr, order = problem.index
        to = cuda.to_device
        self.nobs = problem.n_observed
        self.rows, self.cols = to(problem.rows), to(problem.cols)
        self.vals = to(problem.values.astype(dtype))
        self.rowptr, self.colptr = to(rowptr), to(colptr)
        self.col_rows, self.order = to(problem.rows[order]), to(order)
        self.theta = to(thetas)
        self.grad = cuda.device_array_like(thetas)
        self.ostate = to(ostate if ostate.size else np.zeros((self.B, 1), dtype))
        self.scalars = to(scalars)
        self.hyper = to(np.ascontiguousarray(hyper, dtype=np.float64))
        self.codes = to(np.ascontiguousarray(codes, dtype=np.int64))
        # workspace: S_j and H_j (j = 2..N-1), m x d_{j-1} each, and split-K partials
        self.lay = {}
        pos = 0
        for j in range(2, self.depth):
            self.lay["S", j] = pos
            pos += m * self.dims[j - 1]
        for j in range(2, self.depth):
            self.lay["H", j] = pos
            pos += m * self.dims[j - 1]
        self.ksplit = max(1, -(-m // self.split_k))
        products = cuda_dense.cublas_products(dtype) if self.depth > 1 else None
        dense = cuda_dense.choose_dense(m, n, self.nobs, self.depth, dense, products is not None)
        if dense and products is None and self.B * self.ksplit > GRID_YZ:
            dense = False  # the Numba tiles' split products would exceed the grid
        most = max_trials(m, self.depth, {"split_k": self.split_k})
        if self.B > most:
            raise ValueError(
                f"{self.B} trials exceed the {most} one GPU batch of this problem can launch "
                f"(a CUDA grid holds at most {GRID_YZ} blocks along y and z); run them in "
                f"batches of at most {most} (fit_batch does so itself)"
            )
        self.part_off = pos
        if self.ksplit > 1 and (self.depth > 2 or dense):
            # split-K partials of the products over the m rows (dW_1^T too in the dense step)
            sizes = [self.dims[j] * self.dims[j - 1] for j in range(2, self.depth)]
            pos += self.ksplit * max(sizes + ([n * self.dims[1]] if dense else []))
        self.work = cuda.device_array((self.B, max(pos, 1)), dtype)
        self.g = cuda.device_array((self.B, max(self.nobs, 1)), dtype)
        self.nres = -(-self.nobs // self.k.resid_block)
        self.losspart = cuda.device_array((self.B, self.nres), np.float64)
        self.nsq = -(-self.P // self.k.sq_block)
        self.sqpart = cuda.device_array((self.B, self.nsq), np.float64)
        self.stepsize = cuda.device_array(self.B, np.float64)
        self.loss = cuda.device_array(self.B, np.float64)
        self.status = cuda.device_array(self.B, np.int64)
        self.caps = cuda.device_array(self.B, np.float64)
        self.scale = 2.0 / self.nobs
        self._tol = 0.0  # set by run / evaluate for the loss check
        self.timings = None
        self.dense = cuda_dense.DensePath(self, products, update_threads) if dense else None
        self.path = f"dense ({self.dense.name})" if dense else "sparse"

    # ------------------------------------------------------------------ one evaluation
    def _factor(self, j):
        """(array, offset) of W_j in theta."""
        return self.theta, int(self.offs[j - 1])

    def _suffix(self, j):
        """(array, offset) of S_j = W_N ... W_j (m x d_{j-1})."""
        if j == self.depth:
            return self._factor(j)
        return self.work, self.lay["S", j]

    def _hblock(self, j):
        """(array, offset) of H_j (m x d_{j-1}); H_N is dW_N itself."""
        if j == self.depth:
            return self.grad, int(self.offs[j - 1])
        return self.work, self.lay["H", j]

    def _matmul(self, a, ta, b, tb, c, M, N, K):
        """c = op(a) op(b) for every running trial; ``a``, ``b``, ``c`` are (array, offset).
        Products over the m rows (``ta``) split their inner dimension and sum the splits."""
        k = self.k
        T = k.tile
        ksplit = self.ksplit if (ta and K > self.split_k) else 1
        grid = (-(-N // (2 * T)), -(-M // (2 * T)), self.B * ksplit)
        dest = c if ksplit == 1 else (self.work, self.part_off)
        self._go(
            f"matmul op{ta}{tb}",
            k.matmul[grid, (T, T)],
            a[0],
            a[1],
            ta,
            b[0],
            b[1],
            tb,
            dest[0],
            dest[1],
            M,
            N,
            K,
            ksplit,
            self.status,
        )
        if ksplit > 1:
            self._go(
                "sum_splits",
                k.sum_splits[(_blocks(M * N, k.threads), self.B), k.threads],
                self.work,
                self.part_off,
                c[0],
                c[1],
                M * N,
                ksplit,
                self.status,
            )

    def _go(self, name, launcher, *args):
        """Launch; with ``self.timings`` set (a dict), synchronise around the launch and add
        its wall time to ``timings[name]`` (profiling only: it serialises the launches)."""
        if self.timings is None:
            launcher(*args)
            return
        cuda.synchronize()
        t = time.perf_counter()
        launcher(*args)
        cuda.synchronize()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t

    def _evaluate(self):
        """Loss (into self.loss, with the stopping checks) and gradients of running trials."""
        if self.dense is not None:
            self.dense.evaluate()
            return
        k, N, d, B, TPB = self.k, self.depth, self.dims, self.B, self.k.threads
        m, n = self.m, self.n
        if N == 1:
            self._go(
                "fill", k.fill[(_blocks(self.P, TPB), B), TPB], self.grad, self.P, 0.0, self.status
            )
            s2, s2off, d1 = self.theta, 0, 0  # d1 = 0: the depth-1 residuals
        else:
            for j in range(N - 1, 1, -1):  # S_j = S_{j+1} W_j
                self._matmul(
                    self._suffix(j + 1), 0, self._factor(j), 0, self._suffix(j), m, d[j - 1], d[j]
                )
            s2, s2off = self._suffix(2)
            d1 = d[1]
        self._go(
            "residuals",
            k.residuals[(self.nres, B), TPB],
            s2,
            s2off,
            self.theta,
            self.grad,
            d1,
            m,
            self.rows,
            self.cols,
            self.vals,
            self.g,
            self.losspart,
            self.scale,
            self.status,
        )
        self._check()
        if N == 1:
            return
        h2, h2off = self._hblock(2)
        self._go(
            "row_pass",
            k.row_pass[(_blocks(m * d[1], TPB), B), TPB],
            self.g,
            self.theta,
            d[1],
            self.cols,
            self.rowptr,
            h2,
            h2off,
            m,
            self.status,
        )
        self._go(
            "col_pass",
            k.col_pass[(_blocks(n * d[1], TPB), B), TPB],
            self.g,
            s2,
            s2off,
            d[1],
            self.col_rows,
            self.order,
            self.colptr,
            self.grad,
            n,
            self.status,
        )
        for j in range(2, N):  # H_{j+1} = H_j W_j^T
            self._matmul(
                self._hblock(j), 0, self._factor(j), 1, self._hblock(j + 1), m, d[j], d[j - 1]
            )
        for j in range(2, N):  # dW_j = S_{j+1}^T H_j
            self._matmul(
                self._suffix(j + 1),
                1,
                self._hblock(j),
                0,
                (self.grad, int(self.offs[j - 1])),
                d[j],
                d[j - 1],
                m,
            )

    def _check(self):
        k = self.k
        self._go(
            "check_loss",
            k.check_loss[_blocks(self.B, 64), 64],
            self.losspart,
            self.nres,
            float(self.nobs),
            self.loss,
            self.caps,
            self._tol,
            self.status,
        )

    def _update(self):
        if self.dense is not None:
            self.dense.update()
            return
        k, B, TPB = self.k, self.B, self.k.threads
        self._go(
            "sqnorm", k.sqnorm[(self.nsq, B), TPB], self.grad, self.P, self.sqpart, self.status
        )
        self._go(
            "step_size",
            k.step_size[_blocks(B, 64), 64],
            self.codes,
            self.hyper,
            self.scalars,
            self.sqpart,
            self.nsq,
            self.stepsize,
            self.status,
        )
        self._go(
            "update",
            k.update[(_blocks(self.P, TPB), B), TPB],
            self.theta,
            self.grad,
            self.ostate,
            self.codes,
            self.hyper,
            self.scalars,
            self.stepsize,
            self.P,
            self.status,
        )

    # ------------------------------------------------------------------ public calls
    def upload(self):
        """Copy the host arrays (parameters, optimiser state, scalars) to the device again,
        after the caller changed them (e.g. restored a snapshot)."""
        thetas, ostate, scalars = self.host
        self.theta.copy_to_device(thetas)
        if ostate.size:
            self.ostate.copy_to_device(ostate)
        self.scalars.copy_to_device(scalars)

    def evaluate(self):
        """Losses of every trial and their gradients at the current device parameters
        (``tol`` and cap disabled). Returns ``(losses, grads)`` on the host."""
        self._tol = -1.0
        self.caps.copy_to_device(np.full(self.B, np.inf))
        self.status.copy_to_device(np.zeros(self.B, np.int64))
        self._evaluate()
        return self.loss.copy_to_host(), self.grad.copy_to_host()

    def run(self, n_steps, tol, caps, active, status_out, poll=64):
        """Up to ``n_steps`` steps of every trial with ``active[b]``; writes each trial's
        status (RUNNING, CONVERGED, DIVERGED) to ``status_out[b]`` and copies parameters,
        optimiser state and scalars back to the host arrays. Returns the last losses."""
        self._tol = float(tol)
        self.caps.copy_to_device(np.ascontiguousarray(caps, dtype=np.float64))
        start = np.where(np.asarray(active, dtype=bool), RUNNING, IDLE).astype(np.int64)
        self.status.copy_to_device(start)
        for s in range(int(n_steps)):
            self._evaluate()
            self._update()
            if (s + 1) % poll == 0 and not (self.status.copy_to_host() == RUNNING).any():
                break
        # the loss check of a last evaluation is not needed: the caller evaluates on records
        st = self.status.copy_to_host()
        act = np.asarray(active, dtype=bool)
        status_out[act] = st[act]
        # only the trials that ran come back: the host may hold changed rows for the others
        # (a diverged trial restored to its last good record)
        thetas, ostate, scalars = self.host
        if act.all():
            self.theta.copy_to_host(thetas)
            if ostate.size:
                self.ostate.copy_to_host(ostate)
            self.scalars.copy_to_host(scalars)
        else:
            thetas[act] = self.theta.copy_to_host()[act]
            if ostate.size:
                ostate[act] = self.ostate.copy_to_host()[act]
            scalars[act] = self.scalars.copy_to_host()[act]
        return self.loss.copy_to_host()
