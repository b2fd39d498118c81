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

import numpy as np

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
_E = np.array(
    [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]
)

# Indices into the flow state vector ``fs``.
T, H, EVALS, ACCEPTED, REJECTED, LOSS, FSAL, RTOL, ATOL = range(9)
FLOW_STATE_SIZE = 9


def run_flow(theta, grad, work, dims, offs, obs, rowloss, flow, t_end, max_evals, tol,
             loss_cap, nblk):
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
    size = y.shape[0]
    rtol, atol = fs[RTOL], fs[ATOL]
    if fs[FSAL] == 0.0:
        theta[:] = y
        fs[LOSS] = loss_and_grad(  # noqa: F821  (bound per build by kernels.cpu._build)
            theta, grad, work, dims, offs, obs, rowloss, scale, nblk
        )
        fs[EVALS] += 1
        for i in range(size):
            ks[0, i] = -grad[i]
        fs[FSAL] = 1.0
    start = fs[ACCEPTED]
    while True:
        loss = fs[LOSS]
        if not (loss <= loss_cap):
            theta[:] = y
            return int(fs[ACCEPTED] - start), 2, loss
        if loss <= tol:
            theta[:] = y
            return int(fs[ACCEPTED] - start), 1, loss
        if fs[T] >= t_end or fs[EVALS] + 6 > max_evals:
            theta[:] = y
            return int(fs[ACCEPTED] - start), 0, loss
        h = min(fs[H], t_end - fs[T])
        stage_loss = 0.0
        for s in range(1, 7):
            for i in range(size):
                acc = 0.0
                for j in range(s):
                    acc += _A[s, j] * ks[j, i]
                theta[i] = y[i] + h * acc
            stage_loss = loss_and_grad(  # noqa: F821
                theta, grad, work, dims, offs, obs, rowloss, scale, nblk
            )
            fs[EVALS] += 1
            for i in range(size):
                ks[s, i] = -grad[i]
        # theta now holds y_new (stage 7 is evaluated at the 5th-order solution)
        err = 0.0
        if np.isfinite(stage_loss):
            for i in range(size):
                est = 0.0
                for j in range(7):
                    est += _E[j] * ks[j, i]
                sc = atol + rtol * max(abs(y[i]), abs(theta[i]))
                err += (h * est / sc) ** 2
            err = np.sqrt(err / size)
        else:
            err = np.inf
        if err <= 1.0:
            fs[T] = t_end if h == t_end - fs[T] else fs[T] + h
            y[:] = theta
            for i in range(size):
                ks[0, i] = ks[6, i]
            fs[LOSS] = stage_loss
            fs[ACCEPTED] += 1
        else:
            fs[REJECTED] += 1
        if err == 0.0:
            factor = 5.0
        elif np.isfinite(err):
            factor = min(5.0, max(0.2, 0.9 * err ** -0.2))
        else:
            factor = 0.2
        if err <= 1.0 and h < fs[H]:
            fs[H] = max(fs[H], h * factor)  # a step shortened to land on t_end
        else:
            fs[H] = h * factor
