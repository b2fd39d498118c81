"""Gradient flow d(theta)/dt = -grad L(theta), integrated by an adaptive Runge-Kutta pair.

``run_flow`` is compiled into both kernel builds (``fastdmf.kernels.cpu``): it calls that
build's ``loss_and_grad`` for every stage, so each stage costs one fused evaluation.

Method: Dormand & Prince (1980) 5(4), first-same-as-last, local extrapolation (the 5th-order
solution is kept). Error control per step::

    err = sqrt(mean_i((h sum_j e_j k_j,i / (atol + rtol max(|y_i|, |y_new,i|)))^2))

accepted when err <= 1; the next step is ``h * clip(0.9 err^(-1/5), 0.2, 5)``. A stage whose
loss is not finite counts as a rejected step (err = inf).

The two regimes of a deep-factorization flow:

- the plateau near a small initialisation, where the vector field is tiny and nearly constant
  in direction: the error estimate is tiny, so h grows by up to 5x per step and the plateau is
  crossed in a few dozen steps whatever its length in time;
- the end near a minimum, which is stiff: the step is capped by the stability interval of the
  explicit method (about h * lambda_max <= 3.3, lambda_max the largest Hessian eigenvalue).
  The controller finds that cap by itself (steps beyond it give a growing error estimate and
  are rejected or shrunk); ``rejected`` in the flow state counts them.
"""

from __future__ import annotations

import numba
import numpy as np

from . import CACHE
from .codes import CONVERGED, DIVERGED, GO_ON, RUNNING

# Dormand-Prince 5(4) tableau. Row s of _A holds a_{s+1, 1..s}; _B is the 5th-order weight
# vector (equal to the last row, FSAL); _E = b - b* (5th minus 4th order).
_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1 / 5, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3 / 40, 9 / 40, 0.0, 0.0, 0.0, 0.0],
        [44 / 45, -56 / 15, 32 / 9, 0.0, 0.0, 0.0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0, 0.0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0],
        [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
    ]
)
_E = np.array([71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40])

# Indices into the flow state vector ``fs``.
T, H, EVALS, ACCEPTED, REJECTED, LOSS, FSAL, RTOL, ATOL, METHOD, RHO, RHO_AGE = range(12)
FLOW_STATE_SIZE = 12
DOPRI5, RKC2 = 0.0, 1.0
# RKC: damping, the largest stage count, steps between spectral-radius estimates.
_RKC_EPS, _RKC_SMAX, _RHO_EVERY = 2.0 / 13.0, 400, 25
# The integrators pass the build's block size (``cpu._BLOCK``, the default) to its
# ``loss_and_grad`` as an int64, as ``run`` and the engine do: an omitted argument or an int
# literal is another Numba signature, which would compile the whole evaluation once more.


@numba.njit(inline="always")
def _stop_code(fs, tol, loss_cap, t_end):
    """The status to return now (DIVERGED, CONVERGED, RUNNING at t_end), or GO_ON."""
    loss = fs[LOSS]
    if not (loss <= loss_cap):
        return DIVERGED
    if loss <= tol:
        return CONVERGED
    if fs[T] >= t_end:
        return RUNNING
    return GO_ON


@numba.njit(inline="always")
def _conclude(flow, theta, grad, h, t_end, err, stage_loss, expo, lo, hi, safety):
    """Accept (err <= 1: y <- theta, f(y) <- -grad, t += h) or reject the step just tried,
    then set the next step h * clip(safety * err^(-expo), lo, hi). A step shortened to land
    on t_end does not shrink the step that follows. Returns whether it was accepted."""
    y, ks, fs = flow
    accepted = err <= 1.0
    if accepted:
        fs[T] = t_end if h == t_end - fs[T] else fs[T] + h
        y[:] = theta
        for i in range(y.shape[0]):
            ks[0, i] = -grad[i]
        fs[LOSS] = stage_loss
        fs[ACCEPTED] += 1
    else:
        fs[REJECTED] += 1
    if err == 0.0:
        factor = hi
    elif np.isfinite(err):
        factor = min(hi, max(lo, safety * err ** (-expo)))
    else:
        factor = lo
    if accepted and h < fs[H]:
        fs[H] = max(fs[H], h * factor)
    else:
        fs[H] = h * factor
    return accepted


def run_flow(
    theta, grad, work, dims, offs, obs, rowloss, flow, t_end, max_evals, tol, loss_cap, nblk
):
    """Integrate the flow from ``fs[T]`` up to ``t_end`` (landing on it exactly).

    ``flow = (y, ks, fs)``: the state y (the parameters at time fs[T]), the seven stage
    vectors ``ks`` (7 x len(y); ks[0] = -grad L(y) when fs[FSAL] is 1) and the scalars ``fs``
    (time, next step, gradient evaluations, accepted and rejected steps, loss at y, FSAL flag,
    rtol, atol). ``theta`` and ``grad`` are the evaluation buffers; on return ``theta`` holds
    y. Stops early when the loss at an accepted point is <= tol (CONVERGED), not finite or
    above ``loss_cap`` (DIVERGED), or when ``max_evals`` evaluations are spent.
    Returns ``(accepted_steps, status, loss)``.
    """
    y, ks, fs = flow
    scale = 2.0 / obs[0].shape[0]
    block = np.int64(_BLOCK)  # noqa: F821  (cpu._BLOCK, bound per build; see above)
    rtol, atol = fs[RTOL], fs[ATOL]
    if fs[FSAL] == 0.0:
        theta[:] = y
        fs[LOSS] = loss_and_grad(  # noqa: F821  (bound per build by kernels.cpu._build)
            theta, grad, work, dims, offs, obs, rowloss, scale, nblk, block
        )
        fs[EVALS] += 1
        negate(grad, ks[0])
        fs[FSAL] = 1.0
    if fs[METHOD] == RKC2:
        return run_rkc(
            theta, grad, work, dims, offs, obs, rowloss, flow, t_end, max_evals, tol, loss_cap, nblk
        )
    start = fs[ACCEPTED]
    while True:
        code = _stop_code(fs, tol, loss_cap, t_end)
        if code == GO_ON and fs[EVALS] + 6 > max_evals:
            code = RUNNING
        if code != GO_ON:
            theta[:] = y
            return int(fs[ACCEPTED] - start), code, fs[LOSS]
        h = min(fs[H], t_end - fs[T])
        stage_loss = 0.0
        for s in range(1, 7):
            dp_point(theta, y, ks, h, s)
            stage_loss = loss_and_grad(  # noqa: F821
                theta, grad, work, dims, offs, obs, rowloss, scale, nblk, block
            )
            fs[EVALS] += 1
            negate(grad, ks[s])
        # theta now holds y_new (stage 7 is evaluated at the 5th-order solution)
        err = dp_error(y, theta, ks, h, rtol, atol, stage_loss)
        _conclude(flow, theta, grad, h, t_end, err, stage_loss, 0.2, 0.2, 5.0, 0.9)


@numba.njit(cache=CACHE)
def _chebyshev(s, w0):
    """T_j(w0), T_j'(w0), T_j''(w0) for j = 0..s (three-term recurrences)."""
    t = np.zeros(s + 1)
    d1 = np.zeros(s + 1)
    d2 = np.zeros(s + 1)
    t[0], t[1], d1[1] = 1.0, w0, 1.0
    for j in range(2, s + 1):
        t[j] = 2.0 * w0 * t[j - 1] - t[j - 2]
        d1[j] = 2.0 * t[j - 1] + 2.0 * w0 * d1[j - 1] - d1[j - 2]
        d2[j] = 4.0 * d1[j - 1] + 2.0 * w0 * d2[j - 1] - d2[j - 2]
    return t, d1, d2


# The arithmetic of the integrators, one function per piece: compiled into each kernel
# family's ``run_flow`` (inlined) and called one piece at a time by the trials of a
# lock-step batch (``fastdmf.lockstep``), which therefore compute the same numbers.


@numba.njit(inline="always")
def negate(grad, out):
    """out = -grad (the vector field at the point just evaluated)."""
    for i in range(grad.shape[0]):
        out[i] = -grad[i]


@numba.njit(inline="always")
def dp_point(theta, y, ks, h, s):
    """Dormand-Prince stage s's point: theta = y + h sum_j a_sj k_j."""
    for i in range(y.shape[0]):
        acc = 0.0
        for j in range(s):
            acc += _A[s, j] * ks[j, i]
        theta[i] = y[i] + h * acc


@numba.njit(inline="always")
def dp_error(y, theta, ks, h, rtol, atol, stage_loss):
    """The scaled RMS of the Dormand-Prince error estimate (inf if the last stage's loss is
    not finite)."""
    if not np.isfinite(stage_loss):
        return np.inf
    size = y.shape[0]
    err = 0.0
    for i in range(size):
        est = 0.0
        for j in range(7):
            est += _E[j] * ks[j, i]
        sc = atol + rtol * max(abs(y[i]), abs(theta[i]))
        err += (h * est / sc) ** 2
    return np.sqrt(err / size)


@numba.njit(inline="always")
def probe_start(y, ks, itemsize):
    """Start a stiffness estimate: the direction ks[3] (f(y), or ones, if still zero); the
    probe's length."""
    v = ks[3]
    if np.sqrt(np.sum(v * v)) == 0.0:
        for i in range(y.shape[0]):
            v[i] = ks[0, i] if ks[0, i] != 0.0 else 1.0
    ynorm = np.sqrt(np.sum(y * y))
    # the probe must move theta by far more than its rounding: ~sqrt(eps) relative, or a
    # float32 probe can leave theta, and so the gradient, unchanged
    rel = 3.5e-4 if itemsize == 4 else 1e-7
    return rel * max(ynorm, 1e-8)


@numba.njit(inline="always")
def probe_point(theta, y, v, delta):
    """theta = y + delta v / |v|; False (theta untouched) when v is 0: the gradient did not
    move along v, no curvature seen there."""
    vnorm = np.sqrt(np.sum(v * v))
    if vnorm == 0.0:
        return False
    for i in range(y.shape[0]):
        theta[i] = y[i] + delta * v[i] / vnorm
    return True


@numba.njit(inline="always")
def probe_update(ks, grad, delta, rho):
    """v = J (delta v/|v|) (J = -Hessian) from the gradient at the probe; returns the new
    estimate |v| / delta and whether it agrees with ``rho`` within 1%."""
    v = ks[3]
    for i in range(v.shape[0]):
        v[i] = -grad[i] - ks[0, i]
    new = np.sqrt(np.sum(v * v)) / delta
    return new, abs(new - rho) <= 0.01 * new


@numba.njit(inline="always")
def probe_end(fs, rho):
    """Store the estimate (with a 1.2 safety factor) and restart its age."""
    # 0 marks "not estimated": a flat direction keeps a tiny positive estimate instead
    fs[RHO] = max(1.2 * rho, 1e-300)
    fs[RHO_AGE] = 0.0
    return fs[RHO]


@numba.njit(inline="always")
def rkc_stages(fs, t_end):
    """The next RKC step's stage count s and length h (capped by the largest stage count)."""
    rho = fs[RHO]
    h = min(fs[H], t_end - fs[T])
    s = 1 + int(np.sqrt(1.0 + 1.54 * h * rho))
    if s > _RKC_SMAX:
        s = _RKC_SMAX
        h = min(h, ((s - 1.0) ** 2 - 1.0) / (1.54 * rho))
    return max(s, 2), h


@numba.njit(inline="always")
def rkc_begin(y, ks, h, s):
    """Start an s-stage RKC step: ks[1] = Y_0 = y, ks[2] = Y_1; returns the coefficients
    ``(b, tc, w0, w1)`` its stages use."""
    w0 = 1.0 + _RKC_EPS / (s * s)
    tc, d1, d2 = _chebyshev(s, w0)
    w1 = d1[s] / d2[s]
    b = np.empty(s + 1)
    for j in range(2, s + 1):
        b[j] = d2[j] / (d1[j] * d1[j])
    b[0] = b[1] = b[2]
    # ks rows: 0 f(y), 1 Y_{j-2}, 2 Y_{j-1}, 4 f(Y_{j-1}), 5 Y_j, 6 f(y_new)
    mu1 = b[1] * w1
    for i in range(y.shape[0]):
        ks[1, i] = y[i]
        ks[2, i] = y[i] + mu1 * h * ks[0, i]
    return b, tc, w0, w1


@numba.njit(inline="always")
def rkc_stage(y, ks, grad, h, j, coef):
    """RKC stage j from the gradient at Y_{j-1} (``grad``): ks[1], ks[2] <- Y_{j-1}, Y_j."""
    b, tc, w0, w1 = coef
    mu = 2.0 * b[j] * w0 / b[j - 1]
    nu = -b[j] / b[j - 2]
    mut = 2.0 * b[j] * w1 / b[j - 1]
    gam = -(1.0 - b[j - 1] * tc[j - 1]) * mut
    for i in range(y.shape[0]):
        ks[5, i] = (
            (1.0 - mu - nu) * y[i]
            + mu * ks[2, i]
            + nu * ks[1, i]
            - mut * h * grad[i]
            + gam * h * ks[0, i]
        )
        ks[1, i] = ks[2, i]
        ks[2, i] = ks[5, i]


@numba.njit(inline="always")
def rkc_error(y, theta, ks, grad, h, rtol, atol, stage_loss):
    """The scaled RMS of RKC's error estimate at y_new = theta (inf if its loss is not
    finite)."""
    if not np.isfinite(stage_loss):
        return np.inf
    size = y.shape[0]
    err = 0.0
    for i in range(size):
        est = (12.0 * (y[i] - theta[i]) + 6.0 * h * (ks[0, i] - grad[i])) / 15.0
        sc = atol + rtol * max(abs(y[i]), abs(theta[i]))
        err += (est / sc) ** 2
    return np.sqrt(err / size)


def spectral_radius(theta, grad, work, dims, offs, obs, rowloss, flow, nblk, max_iter=30):
    """Largest eigenvalue of the Hessian at y (the stiffness of the flow), by power
    iteration on finite differences of the gradient; the direction is kept in ks[3] for the
    next estimate. Costs one gradient evaluation per iteration (at most ``max_iter``)."""
    y, ks, fs = flow
    scale = 2.0 / obs[0].shape[0]
    block = np.int64(_BLOCK)  # noqa: F821  (cpu._BLOCK, bound per build; see above)
    delta = probe_start(y, ks, theta.itemsize)
    rho = 0.0
    for _ in range(max_iter):
        if not probe_point(theta, y, ks[3], delta):
            break
        loss_and_grad(theta, grad, work, dims, offs, obs, rowloss, scale, nblk, block)  # noqa: F821
        fs[EVALS] += 1
        new, done = probe_update(ks, grad, delta, rho)
        rho = new
        if done:
            break
    return probe_end(fs, rho)


def run_rkc(
    theta, grad, work, dims, offs, obs, rowloss, flow, t_end, max_evals, tol, loss_cap, nblk
):
    """The flow by RKC, the damped second-order Runge-Kutta-Chebyshev method of Sommeijer,
    Shampine & Verwer (1998), for stiff problems with a real spectrum, as gradient flows are
    (the Jacobian is minus the Hessian). With s stages its stability interval is about
    0.65 s^2 (against 3.3 for Dormand-Prince), so s grows with sqrt(h * rho): each step takes
    s = 1 + sqrt(1 + 1.54 h rho) evaluations, rho the Hessian's largest eigenvalue from
    :func:`spectral_radius` (re-estimated every few steps). Error estimate (their eq. 2.7):
    (12 (y - y_new) + 6 h (f(y) + f(y_new))) / 15; next step h * clip(0.8 err^(-1/3), 0.1, 10).
    Same contract as ``run_flow``."""
    y, ks, fs = flow
    scale = 2.0 / obs[0].shape[0]
    block = np.int64(_BLOCK)  # noqa: F821  (cpu._BLOCK, bound per build; see above)
    rtol, atol = fs[RTOL], fs[ATOL]
    start = fs[ACCEPTED]
    while True:
        code = _stop_code(fs, tol, loss_cap, t_end)
        if code != GO_ON:
            theta[:] = y
            return int(fs[ACCEPTED] - start), code, fs[LOSS]
        if fs[RHO] == 0.0 or fs[RHO_AGE] >= _RHO_EVERY:
            # the estimate comes out of the evaluation budget too; a step needs 2 more
            room = int(max_evals - fs[EVALS]) - 2
            if room < 1:
                theta[:] = y
                return int(fs[ACCEPTED] - start), RUNNING, fs[LOSS]
            spectral_radius(theta, grad, work, dims, offs, obs, rowloss, flow, nblk, min(30, room))
        s, h = rkc_stages(fs, t_end)
        if fs[EVALS] + s > max_evals:
            theta[:] = y
            return int(fs[ACCEPTED] - start), RUNNING, fs[LOSS]
        coef = rkc_begin(y, ks, h, s)
        stage_loss = 0.0
        for j in range(2, s + 1):
            theta[:] = ks[2]
            stage_loss = loss_and_grad(  # noqa: F821
                theta, grad, work, dims, offs, obs, rowloss, scale, nblk, block
            )
            fs[EVALS] += 1
            rkc_stage(y, ks, grad, h, j, coef)
        theta[:] = ks[2]
        stage_loss = loss_and_grad(  # noqa: F821
            theta, grad, work, dims, offs, obs, rowloss, scale, nblk, block
        )
        fs[EVALS] += 1
        err = rkc_error(y, theta, ks, grad, h, rtol, atol, stage_loss)
        if _conclude(flow, theta, grad, h, t_end, err, stage_loss, 1.0 / 3.0, 0.1, 10.0, 0.8):
            fs[RHO_AGE] += 1
        else:
            fs[RHO_AGE] = _RHO_EVERY  # re-estimate the stiffness before retrying
