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

from . import sensing
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


@numba.njit(parallel=True)
def sensing_evaluate_many(thetas, grads, works, dims, offs, obs, idx, wmt, resid, part, losses):
    """Sensing losses and gradients of the trials ``idx`` (rows of the stacked ``thetas``,
    ``grads`` and ``works``), all at once: each trial's W (``sensing.forward``) becomes a
    column of ``wmt`` (m n x k), the operator products are two matrix-matrix products over
    fixed row blocks of the operator (``part.shape[0]`` blocks, one per task, whose partial
    products of ``A^T R`` are summed in block order: the same result for any thread count),
    then each trial's gradients (``sensing.backward``). ``resid``: p x k, ``part``:
    blocks x m n x k; ``losses[t]`` receives trial ``idx[t]``'s loss."""
    amat, y, lay = obs
    n_fac = dims.shape[0] - 1
    mn = dims[n_fac] * dims[0]
    nt = idx.shape[0]
    p = amat.shape[0]
    nb = part.shape[0]
    scale = 2.0 / p
    w_at, g_at = lay[2 * n_fac + 1], lay[2 * n_fac + 2]
    for t in prange(nt):
        b = idx[t]
        _sensing_forward(thetas[b], works[b], dims, offs, lay, np.int64(1))
        for i in range(mn):
            wmt[i, t] = works[b, w_at + i]
    for k in prange(nb):
        lo, hi = k * p // nb, (k + 1) * p // nb
        if hi > lo:
            np.dot(amat[lo:hi], wmt, resid[lo:hi])
    for t in prange(nt):
        acc = 0.0
        for k in range(p):
            r = resid[k, t] - y[k]
            acc += np.float64(r) * np.float64(r)
            resid[k, t] = scale * r
        losses[t] = acc / p
    for k in prange(nb):
        lo, hi = k * p // nb, (k + 1) * p // nb
        if hi > lo:
            np.dot(amat[lo:hi].T, resid[lo:hi], part[k])
        else:
            part[k, :, :] = 0.0
    for t in prange(nt):
        b = idx[t]
        for i in range(mn):
            acc = part[0, i, t]
            for k in range(1, nb):
                acc += part[k, i, t]
            works[b, g_at + i] = acc
        _sensing_backward(thetas[b], grads[b], works[b], dims, offs, lay, np.int64(1))
