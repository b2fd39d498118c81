"""Deep diagonal network loss + gradients, and the many-step loop, in Numba.

The model (:mod:`fastdmf.diagonal`): ``w = u^N - v^N`` elementwise, loss
``L = (1/n) ||X w - y||^2``. One evaluation at ``theta = [u; v]``:

1. ``w = u^N - v^N`` (O(d));
2. residuals ``r = X w - y`` (a gemv) and ``g = X^T (scale r)`` (a transposed gemv), the loss
   ``mean(r^2)``; ``scale = 2/n`` (from ``run``), so g is dL/dw;
3. ``du = N u^(N-1) g``, ``dv = -N v^(N-1) g`` (O(d)).

Cost per step: the two gemvs, 4 n d flops, whatever the depth. The serial build fuses them
(``fused_pass``, the sensing kernel's): each block of rows of X serves its residuals and then,
still in cache, its share of g, so X streams from memory once per step instead of twice. The
parallel build splits the rows of X in ``config.DENSE_BLOCKS`` fixed blocks, one task each,
each block a fused pass into its own partial g and partial loss, summed in block order: the
result does not depend on the thread count.

Contract (the one of ``fastdmf.kernels.cpu`` / ``sensing``; ``prepare`` builds it):

- ``theta``, ``grad``: ``[u; v]`` and ``[du; dv]``, 2 d entries;
- ``dims = (d, d)`` (int64): the lengths of u and v; ``offs = (0, d, 2d)``;
- ``obs = (X, y, depth)``: X (n x d, C order, in the parameters' dtype), y (n,), the depth
  N as an int. ``run`` and the flow take n from ``obs[0].shape[0]``;
- ``work`` (:func:`work_layout`): w, g, then ``nblk`` partial g's for the parallel build;
- ``rowloss`` (n,): receives ``scale * r``.

The optimiser ``update``, the step loop ``run`` and the flow integrators are those of
``fastdmf.kernels.cpu`` and ``fastdmf.kernels.flow``, compiled again with this module's
``loss_and_grad`` in their namespace (``SERIAL`` / ``PARALLEL``). ``update`` sees one flat
vector: GroupRMSprop's single group is all of theta (one step size from
``sum(du^2) + sum(dv^2)``), and Adam's moments are per entry, as for the matrix kinds.
``run_batch`` advances many trials of one problem, one trial per task, each trial running
the serial ``run``, so a trial computes exactly what its serial run computes;
``run_batch_flow`` does the same for the flow (the serial ``run_flow``; see
:mod:`fastdmf.kernels.flow_batch`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import config
from . import _family, cpu
from . import flow as _flow
from .batch import _twin
from .cpu import blocked_sum, run, update
from .flow_batch import batch_flow_of
from .sensing import FUSED_BYTES, fused_pass  # noqa: F401  (FUSED_BYTES: read by fused_pass)

__all__ = ["SERIAL", "PARALLEL", "work_layout", "prepare", "run_batch", "run_batch_flow"]


def work_layout(d, nblk):
    """Offsets of the workspace blocks (int64, length 4): ``lay[0]`` w (d), ``lay[1]`` g (d),
    ``lay[2]`` the ``nblk`` partial g's (``nblk > 1``), ``lay[3]`` the total size."""
    lay = np.zeros(4, dtype=np.int64)
    lay[1] = d
    lay[2] = 2 * d
    lay[3] = 2 * d + (nblk * d if nblk > 1 else 0)
    return lay


def prepare(problem, layout, dtype, parallel=None):
    """``(kernels, nblk, obs, work, resid)`` for a
    :class:`~fastdmf.diagonal.SparseRegressionProblem` and a
    :class:`~fastdmf.diagonal.DiagonalLayout`: the build, ``obs = (X, y, depth)`` in
    ``dtype`` (float64: ``problem.X`` itself, no copy), the workspace and the residual
    buffer.

    ``parallel=None`` picks the serial build: a step is one memory-bound fused pass over X
    (as for sensing, where splitting the pass over threads was slower on the machine of
    benchmarks/RESULTS_sensing.md); ``parallel=True`` splits it in ``config.DENSE_BLOCKS``
    row blocks."""
    kernels = PARALLEL if parallel else SERIAL
    nblk = config.DENSE_BLOCKS if parallel else 1
    X = np.ascontiguousarray(problem.X, dtype=dtype)
    y = np.ascontiguousarray(problem.y, dtype=dtype)
    work = np.zeros(int(work_layout(layout.n_features, nblk)[-1]), dtype=dtype)
    resid = np.zeros(problem.n_observed, dtype=dtype)
    return kernels, nblk, (X, y, int(layout.depth)), work, resid


def blocks_pass(X, w, y, resid, g, part, scale, nblk):
    """``fused_pass`` over ``nblk`` fixed row blocks of X, one task each, into partial g's
    (``part``) and float64 partial losses, summed in block order. Returns ``sum(r^2)``."""
    rows, cols = X.shape
    lossp = np.zeros(nblk)
    for k in prange(nblk):
        lo, hi = k * rows // nblk, (k + 1) * rows // nblk
        pk = part[k * cols : (k + 1) * cols]
        if hi > lo:
            lossp[k] = fused_pass(X[lo:hi], w, y[lo:hi], resid[lo:hi], pk, scale)
        else:
            pk[:] = 0
    g[:] = part[:cols]
    acc = lossp[0]
    for k in range(1, nblk):
        g += part[k * cols : (k + 1) * cols]
        acc += lossp[k]
    return acc


def loss_and_grad(theta, grad, work, dims, offs, obs, resid, scale, nblk, block=None):
    """Loss at ``theta = [u; v]``; ``[du; dv]`` written into ``grad`` (see the module
    docstring). ``resid`` receives ``scale * r``. ``block`` (the block size ``cpu.run``
    passes on) is unused: this family has no blocked sums in its loss."""
    X, y, depth = obs
    d = dims[0]
    u = theta[offs[0] : offs[1]]
    v = theta[offs[1] : offs[2]]
    w = work[0:d]
    g = work[d : 2 * d]
    for i in range(d):
        pu = u.dtype.type(1)
        pv = u.dtype.type(1)
        for _ in range(depth):
            pu *= u[i]
            pv *= v[i]
        w[i] = pu - pv
    if nblk == 1:
        acc = fused_pass(X, w, y, resid, g, scale)
    else:
        acc = blocks_pass(X, w, y, resid, g, work[2 * d : 2 * d + nblk * d], scale, nblk)
    du = grad[offs[0] : offs[1]]
    dv = grad[offs[1] : offs[2]]
    for i in range(d):
        pu = u.dtype.type(depth)
        pv = u.dtype.type(depth)
        for _ in range(depth - 1):
            pu *= u[i]
            pv *= v[i]
        du[i] = pu * g[i]
        dv[i] = -pv * g[i]
    return acc / resid.shape[0]


# (name, Python function, compile options): update, run and the flow integrators call the
# loss_and_grad of the namespace they are compiled in, this module's.
_FAMILY = (
    ("blocked_sum", blocked_sum, "kernel"),
    ("fused_pass", fused_pass, "driver"),
    ("blocks_pass", blocks_pass, "kernel"),
    ("loss_and_grad", loss_and_grad, "driver"),
    ("update", update, "kernel"),
    ("run", run, "driver"),
    ("spectral_radius", _flow.spectral_radius, "driver"),
    ("run_rkc", _flow.run_rkc, "driver"),
    ("run_flow", _flow.run_flow, "driver"),
)


def _build(parallel, **options):
    """Compile the family serial or parallel (as ``sensing._build``); only the serial build
    is cached. Its cache entries differ from cpu's and sensing's by the argument types (the
    ``(X, y, depth)`` obs tuple), so the families never load each other's code."""
    ns = dict(vars(cpu))
    ns.update({k: v for k, v in vars(_flow).items() if k not in ns})
    ns.update(globals())
    return _family.build(_FAMILY, ns, parallel, **options)


SERIAL = _build(False)
PARALLEL = _build(True)

run_batch = _twin(SERIAL.run)
"""``fastdmf.kernels.batch.run_batch`` over this family's serial ``run``: the same contract
(``bufs``, ``dims``, ``offs``, ``obs``, ``opts``, ...), one trial per task."""
run_batch_flow = batch_flow_of(SERIAL.run_flow)
