"""Gradient flows of many trials advanced together, one gradient evaluation per round.

A sensing evaluation streams the whole p x (m n) operator from memory for two products with
one vector each (``fastdmf.kernels.sensing``): a trial's evaluation is memory-bound, and
trials integrated side by side (``fastdmf.kernels.flow_batch``) each stream it again. Here
every running trial asks for its next evaluation point, and one round evaluates them all:
the operator products become two matrix-matrix products with one row per trial
(:func:`sensing_losses_and_grads`), which read the operator once for all of them.

Each trial runs the same integrator as ``fastdmf.kernels.flow`` (Runge-Kutta-Chebyshev with
its stiffness estimate, or Dormand-Prince), written as a generator that yields at each
evaluation: the same formulas in the same order, on the same state ``(y, ks, fs)``, so a
trial can be checkpointed, resumed and recorded as any flow trial. Only the gradients are
summed in another order (matrix-matrix instead of matrix-vector products), so a trial equals
its serial flow fit within rounding, not bit for bit; the trajectories agree to the
integration tolerance (tested against the serial flow).
"""

from __future__ import annotations

import numba
import numpy as np

from .kernels import flow as fk
from .kernels import flow_batch as fb
from .kernels.blas import blas_threads
from .kernels.codes import GO_ON, RUNNING

__all__ = [
    "run_lockstep_flow",
    "run_lockstep_groups",
    "sensing_losses_and_grads",
    "sensing_losses_and_grads_groups",
]


def sensing_losses_and_grads(thetas, grads, works, dims, offs, obs, idx, scratch=None):
    """Sensing losses of the trials ``idx`` (rows of the stacked ``thetas``; ``works`` their
    workspaces, see :func:`fastdmf.kernels.sensing.work_layout`); their gradients into the
    same rows of ``grads``: :func:`sensing_losses_and_grads_groups` of one group."""
    part = (thetas, grads, works, dims, offs, obs, idx)
    return sensing_losses_and_grads_groups([part], scratch)[0]


def sensing_losses_and_grads_groups(parts, scratch=None):
    """The sensing losses and gradients of several groups of trials of one problem, each
    group ``(thetas, grads, works, dims, offs, obs, idx)`` stacked trials of one layout
    (e.g. one depth; ``obs`` its operator, measurements and work layout, the operator and
    measurements the first group's for all), all evaluated together: one array of losses per
    group. Each trial's W becomes a row of a k x m n matrix (k the trials of all groups),
    the operator products of all of them are two matrix-matrix products, ``R = W A^T`` (k x
    p) and ``G = R A`` (k x m n), then each trial's factor gradients
    (:mod:`fastdmf.kernels.flow_batch`). ``scratch``: a dict that keeps the products'
    buffers from one call to the next (sized for the most trials seen).

    The two products are single BLAS calls (SciPy's OpenBLAS, which Numba calls) on as many
    threads as Numba has (``numba.get_num_threads()``); the trials' own products run on the
    calling thread with one BLAS thread. A product's rounding may change with the BLAS's
    thread count and with the number of trials in the round, not from run to run."""
    amat, y = parts[0][5][0], parts[0][5][1]
    nt = sum(part[6].shape[0] for part in parts)
    p = amat.shape[0]
    dims = parts[0][3]
    mn = int(dims[-1]) * int(dims[0])
    sizes = {"wt": mn * nt, "rt": p * nt, "gt": mn * nt}
    scratch = {} if scratch is None else scratch
    buf = {}
    for name, size in sizes.items():
        if name not in scratch or scratch[name].size < size:
            scratch[name] = np.empty(size, dtype=amat.dtype)
        buf[name] = scratch[name][:size]
    wt = buf["wt"].reshape(nt, mn)
    rt = buf["rt"].reshape(nt, p)
    gt = buf["gt"].reshape(nt, mn)
    losses = np.empty(nt)
    rows = np.cumsum([0] + [part[6].shape[0] for part in parts])
    for (thetas, _, works, dims, offs, obs, idx), lo, hi in zip(
        parts, rows[:-1], rows[1:], strict=True
    ):
        fb.sensing_forward_many(thetas, works, dims, offs, obs[2], idx, wt[lo:hi])
    with blas_threads(numba.get_num_threads()):
        fb.sensing_products_many(amat, y, wt, rt, gt, losses)
    for (thetas, grads, works, dims, offs, obs, idx), lo, hi in zip(
        parts, rows[:-1], rows[1:], strict=True
    ):
        fb.sensing_backward_many(thetas, grads, works, dims, offs, obs[2], idx, gt[lo:hi])
    return [losses[lo:hi] for lo, hi in zip(rows[:-1], rows[1:], strict=True)]


def _spectral_radius(theta, grad, flow, max_iter):
    """``fastdmf.kernels.flow.spectral_radius``, yielding at each evaluation."""
    y, ks, fs = flow
    delta = fk.probe_start(y, ks, theta.itemsize)
    rho = 0.0
    for _ in range(max_iter):
        if not fk.probe_point(theta, y, ks[3], delta):
            break
        yield
        fs[fk.EVALS] += 1
        rho, done = fk.probe_update(ks, grad, delta, rho)
        if done:
            break
    fk.probe_end(fs, rho)


def _rkc(theta, grad, flow, t_end, max_evals, tol, cap):
    """``fastdmf.kernels.flow.run_rkc``, yielding at each evaluation; returns the status."""
    y, ks, fs = flow
    rtol, atol = fs[fk.RTOL], fs[fk.ATOL]
    while True:
        code = fk._stop_code(fs, tol, cap, t_end)
        if code != GO_ON:
            theta[:] = y
            return code
        if fs[fk.RHO] == 0.0 or fs[fk.RHO_AGE] >= fk._RHO_EVERY:
            # the estimate comes out of the evaluation budget too; a step needs 2 more
            room = int(max_evals - fs[fk.EVALS]) - 2
            if room < 1:
                theta[:] = y
                return RUNNING
            yield from _spectral_radius(theta, grad, flow, min(30, room))
        s, h = fk.rkc_stages(fs, t_end)
        if fs[fk.EVALS] + s > max_evals:
            theta[:] = y
            return RUNNING
        coef = fk.rkc_begin(y, ks, h, s)
        for j in range(2, s + 1):
            theta[:] = ks[2]
            yield
            fs[fk.EVALS] += 1
            fk.rkc_stage(y, ks, grad, h, j, coef)
        theta[:] = ks[2]
        stage_loss = yield
        fs[fk.EVALS] += 1
        err = fk.rkc_error(y, theta, ks, grad, h, rtol, atol, stage_loss)
        if fk._conclude(flow, theta, grad, h, t_end, err, stage_loss, 1.0 / 3.0, 0.1, 10.0, 0.8):
            fs[fk.RHO_AGE] += 1
        else:
            fs[fk.RHO_AGE] = fk._RHO_EVERY  # re-estimate the stiffness before retrying


def _dopri5(theta, grad, flow, t_end, max_evals, tol, cap):
    """``fastdmf.kernels.flow.run_flow``'s Dormand-Prince loop, yielding at each
    evaluation; returns the status."""
    y, ks, fs = flow
    rtol, atol = fs[fk.RTOL], fs[fk.ATOL]
    while True:
        code = fk._stop_code(fs, tol, cap, t_end)
        if code == GO_ON and fs[fk.EVALS] + 6 > max_evals:
            code = RUNNING
        if code != GO_ON:
            theta[:] = y
            return code
        h = min(fs[fk.H], t_end - fs[fk.T])
        stage_loss = 0.0
        for s in range(1, 7):
            fk.dp_point(theta, y, ks, h, s)
            stage_loss = yield
            fs[fk.EVALS] += 1
            fk.negate(grad, ks[s])
        err = fk.dp_error(y, theta, ks, h, rtol, atol, stage_loss)
        fk._conclude(flow, theta, grad, h, t_end, err, stage_loss, 0.2, 0.2, 5.0, 0.9)


def _trial(theta, grad, flow, t_end, max_evals, tol, cap):
    """One trial's flow up to ``t_end`` (``fastdmf.kernels.flow.run_flow``) as a generator:
    it fills ``theta`` and yields; the caller writes the gradient there into ``grad`` and
    sends the loss back. Returns the status code."""
    y, ks, fs = flow
    if fs[fk.FSAL] == 0.0:
        theta[:] = y
        fs[fk.LOSS] = yield
        fs[fk.EVALS] += 1
        fk.negate(grad, ks[0])
        fs[fk.FSAL] = 1.0
    if fs[fk.METHOD] == fk.RKC2:
        return (yield from _rkc(theta, grad, flow, t_end, max_evals, tol, cap))
    return (yield from _dopri5(theta, grad, flow, t_end, max_evals, tol, cap))


def run_lockstep_flow(
    evaluate, bufs, dims, offs, obs, flows, t_ends, max_evals, tol, caps, active, status
) -> None:
    """Integrate every active trial b up to flow time ``t_ends[b]`` or until it stops, all
    trials advancing one evaluation per round; the contract of
    :func:`fastdmf.kernels.flow_batch.run_batch_flow`. ``evaluate(thetas, grads, works,
    dims, offs, obs, idx, scratch) -> losses`` evaluates the trials ``idx`` together (e.g.
    :func:`sensing_losses_and_grads`; ``scratch`` a dict it may keep buffers in)."""

    def one(parts, scratch):
        return [evaluate(*parts[0], scratch)]

    head = (bufs, dims, offs, obs, flows, t_ends, max_evals, tol, caps, active, status)
    run_lockstep_groups(one, [head])


def run_lockstep_groups(evaluate, groups) -> None:
    """:func:`run_lockstep_flow` for several groups of stacked trials (e.g. one group per
    depth), all advancing in the same rounds: ``groups`` holds one ``(bufs, dims, offs, obs,
    flows, t_ends, max_evals, tol, caps, active, status)`` per group, and ``evaluate(parts,
    scratch) -> [losses per group]`` evaluates, each round, the running trials of every group
    (``parts``: one ``(thetas, grads, works, dims, offs, obs, idx)`` per group; e.g.
    :func:`sensing_losses_and_grads_groups`)."""
    lives, scratch = [], {}
    for bufs, _, _, _, flows, t_ends, max_evals, tol, caps, active, status in groups:
        thetas, grads = bufs[0], bufs[1]
        ys, kss, fss = flows
        live = {}
        for b in np.flatnonzero(active):
            gen = _trial(
                thetas[b],
                grads[b],
                (ys[b], kss[b], fss[b]),
                t_ends[b],
                max_evals,
                tol,
                caps[b],
            )
            try:
                next(gen)
                live[b] = gen
            except StopIteration as stop:
                status[b] = stop.value
        lives.append(live)
    while any(lives):
        parts = []
        for (bufs, dims, offs, obs, *_), live in zip(groups, lives, strict=True):
            idx = np.fromiter(live, dtype=np.int64)
            parts.append((bufs[0], bufs[1], bufs[2], dims, offs, obs, idx))
        every = evaluate(parts, scratch)
        for part, losses, live, group in zip(parts, every, lives, groups, strict=True):
            status = group[-1]
            for b, loss in zip(part[-1], losses, strict=True):
                try:
                    live[b].send(float(loss))
                except StopIteration as stop:
                    status[b] = stop.value
                    del live[b]
