"""Gradient flows of many trials advanced together, one gradient evaluation per round.

A sensing evaluation streams the whole p x (m n) operator from memory for two products with
one vector each (``fastdmf.kernels.sensing``): a trial's evaluation is memory-bound, and
trials integrated side by side (``fastdmf.kernels.flow_batch``) each stream it again. Here
every running trial asks for its next evaluation point, and one round evaluates them all:
the operator products become two matrix-matrix products with one column per trial
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

import numpy as np

from . import config
from .kernels import flow as fk
from .kernels.codes import GO_ON, RUNNING
from .kernels.flow_batch import sensing_evaluate_many

__all__ = ["run_lockstep_flow", "sensing_losses_and_grads"]


def sensing_losses_and_grads(thetas, grads, works, dims, offs, obs, idx, scratch=None):
    """Sensing losses of the trials ``idx`` (rows of the stacked ``thetas``; ``works`` their
    workspaces, see :func:`fastdmf.kernels.sensing.work_layout`); their gradients into the
    same rows of ``grads``. The operator products of all of them are two matrix-matrix
    products (:func:`fastdmf.kernels.flow_batch.sensing_evaluate_many`, over
    ``config.DENSE_BLOCKS`` fixed blocks of operator rows). ``scratch``: a dict that keeps
    the products' buffers from one call to the next (sized for the most trials seen)."""
    amat = obs[0]
    nt = idx.shape[0]
    mn = int(dims[-1]) * int(dims[0])
    sizes = {"wmt": mn * nt, "resid": amat.shape[0] * nt, "part": config.DENSE_BLOCKS * mn * nt}
    scratch = {} if scratch is None else scratch
    buf = {}
    for name, size in sizes.items():
        if name not in scratch or scratch[name].size < size:
            scratch[name] = np.empty(size, dtype=thetas.dtype)
        buf[name] = scratch[name][:size]
    wmt = buf["wmt"].reshape(mn, nt)
    resid = buf["resid"].reshape(amat.shape[0], nt)
    part = buf["part"].reshape(config.DENSE_BLOCKS, mn, nt)
    losses = np.empty(nt)
    sensing_evaluate_many(thetas, grads, works, dims, offs, obs, idx, wmt, resid, part, losses)
    return losses


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
    thetas, grads, works = bufs[0], bufs[1], bufs[2]
    ys, kss, fss = flows
    live, scratch = {}, {}
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
    while live:
        idx = np.fromiter(live, dtype=np.int64)
        losses = evaluate(thetas, grads, works, dims, offs, obs, idx, scratch)
        for b, loss in zip(idx, losses, strict=True):
            try:
                live[b].send(float(loss))
            except StopIteration as stop:
                status[b] = stop.value
                del live[b]
