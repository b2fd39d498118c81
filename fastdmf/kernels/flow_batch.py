"""Many independent gradient flows of one problem, integrated together: one trial per task.

Each trial runs the serial build's ``run_flow`` (``fastdmf.kernels.cpu.SERIAL``; the sensing
build's for ``run_batch_flow_sensing``) on its own row of stacked buffers and its own
integrator state ``(y, ks, fs)`` (time, step size, evaluations, stage count and stiffness
estimate of RKC, tolerances), up to its own end time. So a trial computes exactly what a
serial flow ``fit`` of it computes, bit for bit. The loop over trials is Numba's dynamic
schedule with chunk size 1 (set by the caller): a trial that reaches its record time early
frees its thread for the next. Not cached: it is a parallel function.
"""

from __future__ import annotations

import types

import numba
from numba import prange

from . import sensing
from .cpu import SERIAL

_serial_run_flow = SERIAL.run_flow


@numba.njit(parallel=True)
def run_batch_flow(bufs, dims, offs, obs, flows, t_ends, max_evals, tol, caps, active, status):
    """Integrate every active trial b (``active[b]``) up to flow time ``t_ends[b]`` or until
    it stops (see ``fastdmf.kernels.flow.run_flow``): ``bufs = (thetas, grads, works,
    rowlosses)`` and ``flows = (ys, kss, fss)`` stacked with a leading trial axis. Writes
    each trial's status to ``status[b]`` (its time, evaluations and steps are in ``fss[b]``).
    """
    thetas, grads, works, rowlosses = bufs
    ys, kss, fss = flows
    for b in prange(thetas.shape[0]):
        if active[b]:
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
                1,
            )[1]


def batch_flow_of(serial_run_flow):
    """``run_batch_flow`` compiled over another build's serial ``run_flow`` (a kind's
    kernels module: ``batch_flow_of(SERIAL.run_flow)``)."""
    py = run_batch_flow.py_func
    ns = {**py.__globals__, "_serial_run_flow": serial_run_flow}
    return numba.njit(parallel=True)(types.FunctionType(py.__code__, ns, py.__name__))


run_batch_flow_sensing = batch_flow_of(sensing.SERIAL.run_flow)
