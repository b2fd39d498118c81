"""Many independent gradient flows of one problem, integrated together: one trial per task.

Each trial runs the serial build's ``run_flow`` (``fastdmf.kernels.cpu.SERIAL``; the sensing
build's for ``run_batch_flow_sensing``) on its own row of stacked buffers and its own
integrator state ``(y, ks, fs)`` (time, step size, evaluations, stage count and stiffness
estimate of RKC, tolerances), up to its own end time. So a trial computes exactly what a
serial flow ``fit`` of it computes, bit for bit.

The trials are a work queue: one task per thread, each taking the next trial of the
caller's ``order`` (an atomic counter, :func:`fetch_add`) whenever it finishes one, so a
trial that reaches its record time early frees its thread for the next, and the trials start
in the order given (the caller puts the longest first). A ``prange`` over the trials would
not do this: Numba's OpenMP layer splits a ``prange`` into contiguous static blocks, one per
thread, whatever ``set_parallel_chunksize`` says, so one thread could get all the long trials.
Not cached: it is a parallel function.
"""

from __future__ import annotations

import types

import numba
import numpy as np
from numba import prange
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.extending import intrinsic

from . import CACHE, sensing
from .cpu import SERIAL

_serial_run_flow = SERIAL.run_flow


@intrinsic
def fetch_add(typingctx, counter):
    """``counter[0] += 1`` atomically, in compiled code; returns the value before (the next
    ticket of a work queue that several threads draw from). ``counter``: a 1-d int64
    array."""
    if not (
        isinstance(counter, nbtypes.Array) and counter.ndim == 1 and counter.dtype == nbtypes.int64
    ):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(nbtypes.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [zero])
        one = context.get_constant(nbtypes.int64, 1)
        return builder.atomic_rmw("add", ptr, one, "seq_cst")

    return nbtypes.int64(counter), codegen


@numba.njit(parallel=True)
def run_batch_flow(bufs, dims, offs, obs, flows, t_ends, max_evals, tol, caps, order, status):
    """Integrate every trial b of ``order`` up to flow time ``t_ends[b]`` or until it stops
    (see ``fastdmf.kernels.flow.run_flow``), starting them in that order as threads free
    up; trials not in ``order`` are left alone. ``bufs = (thetas, grads, works,
    rowlosses)`` and ``flows = (ys, kss, fss)`` stacked with a leading trial axis, in the
    caller's trial order. Writes each trial's status to ``status[b]`` (its time, evaluations
    and steps are in ``fss[b]``).
    """
    thetas, grads, works, rowlosses = bufs
    ys, kss, fss = flows
    n = order.shape[0]
    # the queue's counter, shared by the tasks; zeroed by a store, not np.zeros: Numba
    # makes np.zeros a parallel loop of its own, and with it a probe of this loop read the
    # counter back as 0 after the tasks had drawn every ticket (the atomic adds are
    # invisible to Numba's analysis of the array's uses)
    ticket = np.empty(1, np.int64)
    ticket[0] = 0
    for _ in prange(min(numba.get_num_threads(), n)):  # one task per thread
        i = fetch_add(ticket)
        while i < n:
            b = order[i]
            status[b] = _serial_run_flow(
                thetas[b],
                grads[b],
                works[b],
                dims,
                offs,
                obs,
                rowlosses[b],
                (ys[b], kss[b], fss[b]),
                t_ends[b],
                max_evals,
                tol,
                caps[b],
                np.int64(1),
            )[1]
            i = fetch_add(ticket)


def batch_flow_of(serial_run_flow):
    """``run_batch_flow`` compiled over another build's serial ``run_flow`` (a kind's
    kernels module: ``batch_flow_of(SERIAL.run_flow)``)."""
    py = run_batch_flow.py_func
    ns = {**py.__globals__, "_serial_run_flow": serial_run_flow}
    return numba.njit(parallel=True)(types.FunctionType(py.__code__, ns, py.__name__))


run_batch_flow_sensing = batch_flow_of(sensing.SERIAL.run_flow)


_sensing_forward = sensing.SERIAL.forward
_sensing_backward = sensing.SERIAL.backward


@numba.njit  # not cached: a cache entry would keep an old sensing.forward
def sensing_forward_many(thetas, works, dims, offs, lay, idx, wt):
    """Row t of ``wt`` (k x m n) := the W of trial ``idx[t]`` (``sensing.forward`` on its row
    of the stacked ``thetas`` and ``works``), trial by trial on the calling thread."""
    n_fac = dims.shape[0] - 1
    mn = dims[n_fac] * dims[0]
    w_at = lay[2 * n_fac + 1]
    for t in range(idx.shape[0]):
        b = idx[t]
        _sensing_forward(thetas[b], works[b], dims, offs, lay, np.int64(1))
        for i in range(mn):
            wt[t, i] = works[b, w_at + i]


@numba.njit(cache=CACHE)
def sensing_products_many(amat, y, wt, rt, gt, losses):
    """The operator products of k trials at once, given their W as the rows of ``wt`` (k x
    m n): ``rt = wt A^T`` (k x p), each row made the residual scaled by the loss's
    derivative, ``2 (A vec(W_t) - y) / p``, with the loss ``mean((A vec(W_t) - y)^2)``
    (summed in float64) into ``losses[t]``; then ``gt = rt A`` (k x m n), row t the
    gradient with respect to trial t's W. Two BLAS matrix-matrix products, threaded as the
    BLAS is."""
    p = y.shape[0]
    scale = 2.0 / p
    np.dot(wt, amat.T, rt)
    for t in range(rt.shape[0]):
        acc = 0.0
        for k in range(p):
            r = rt[t, k] - y[k]
            acc += np.float64(r) * np.float64(r)
            rt[t, k] = scale * r
        losses[t] = acc / p
    np.dot(rt, amat, gt)


@numba.njit  # not cached: a cache entry would keep an old sensing.backward
def sensing_backward_many(thetas, grads, works, dims, offs, lay, idx, gt):
    """Trial ``idx[t]``'s factor gradients (``sensing.backward``) from row t of ``gt``, the
    gradient with respect to its W (``A^T r_t``), trial by trial on the calling thread."""
    n_fac = dims.shape[0] - 1
    mn = dims[n_fac] * dims[0]
    g_at = lay[2 * n_fac + 2]
    for t in range(idx.shape[0]):
        b = idx[t]
        for i in range(mn):
            works[b, g_at + i] = gt[t, i]
        _sensing_backward(thetas[b], grads[b], works[b], dims, offs, lay, np.int64(1))
