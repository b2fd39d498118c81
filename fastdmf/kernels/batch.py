"""Many independent trials of one problem, advanced together: one trial per task.

Each trial runs the serial build's ``run`` (``fastdmf.kernels.cpu.SERIAL``) on its own row of
stacked buffers, so a trial computes exactly what a serial ``fit`` of it computes; the
parallel loop is over trials (Numba's dynamic chunk size 1, so a trial that stops early frees
its thread for the next). Not cached: it is a parallel function. ``run_batch_sensing`` is the
same loop over the sensing build's ``run`` (``fastdmf.kernels.sensing.SERIAL``).

The serial ``run`` is called with the argument types a serial fit's engine passes (``nblk``
and the block size as int64, not an int literal or an omitted argument), so the serial
kernels a fit compiles (or loads from the cache) are the ones linked in here, not a second
compile of the whole loop.
"""

from __future__ import annotations

import types

import numba
import numpy as np
from numba import prange

from . import sensing
from .cpu import _BLOCK, SERIAL

_serial_run = SERIAL.run


@numba.njit(parallel=True)
def run_batch(bufs, dims, offs, obs, opts, n_steps, tol, caps, active, status):
    """Up to ``n_steps`` steps of every active trial b (``active[b]``): ``bufs = (thetas,
    grads, works, rowlosses)`` and ``opts = (codes, hypers, ostates, scalars)`` stacked with a
    leading trial axis. Writes each trial's ``run`` status to ``status[b]`` (its step count
    is in its scalars)."""
    thetas, grads, works, rowlosses = bufs
    codes, hypers, ostates, scalars = opts
    for b in prange(thetas.shape[0]):
        if active[b]:
            status[b] = _serial_run(
                thetas[b],
                grads[b],
                works[b],
                dims,
                offs,
                obs,
                rowlosses[b],
                (codes[b], hypers[b], ostates[b], scalars[b]),
                n_steps,
                tol,
                caps[b],
                np.int64(1),
                np.int64(_BLOCK),
            )[1]


def _twin(serial_run):
    """``run_batch`` compiled over another build's serial ``run``."""
    py = run_batch.py_func
    ns = {**py.__globals__, "_serial_run": serial_run}
    return numba.njit(parallel=True)(types.FunctionType(py.__code__, ns, py.__name__))


run_batch_sensing = _twin(sensing.SERIAL.run)
