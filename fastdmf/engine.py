"""Buffers and kernel calls for one factorization: the only place that touches the kernels.

An :class:`Engine` owns the flat parameters, gradient, workspace and optimiser state of one
fit, allocated once; ``evaluate`` and ``run`` hand them to the compiled kernels. Nothing here
has size m x n (except depth 1, whose single factor is W itself).
"""

from __future__ import annotations

import numpy as np

from . import config
from ._kinds import COMPLETION, kind_of, select_kernels
from .kernels import aligned_copy, aligned_zeros, cpu, flow, is_aligned
from .kernels.blas import blas_threads
from .optim import OptimizerSpec, get_optimizer

__all__ = [
    "Engine",
    "FlowEngine",
    "CudaEngine",
    "make_engine",
    "select_kernels",
    "stack",
    "BACKENDS",
]

BACKENDS = ("cpu", "cuda", "auto")


class Engine:
    """Flat state of one factorization and the compiled calls on it.

    ``Engine(...)`` with a flow optimiser builds a :class:`FlowEngine`.

    Parameters
    ----------
    problem : CompletionProblem or SensingProblem
        Any problem of the kinds table (``fastdmf._kinds``), whose ``prepare`` gives the
        kernels and buffers; a sensing problem runs the kernels of
        ``fastdmf.kernels.sensing`` (which form the m x n product W; ``rowloss`` then holds
        the residuals).
    layout : FactorLayout
    theta : ndarray, shape (layout.size,)
        Initial parameters (factor 1 first, C order); its dtype is the compute dtype. Used
        in place when it starts on a 64-byte boundary, else copied into a buffer that does
        (see :func:`fastdmf.kernels.aligned_zeros`).
    optimizer : str or OptimizerSpec
    hyper : ndarray, shape (4,)
        ``[lr, a, b, eps]`` from :meth:`OptimizerSpec.hyper`.
    parallel : bool or None
    """

    backend = "cpu"
    #: the status of a fit that reached its end position
    END_STATUS = "max_steps"
    #: the buffers a checkpoint keeps (see :meth:`state`)
    STATE = ("theta", "grad", "ostate", "scalars", "hyper")
    #: the per-trial buffers ``fit_batch`` stacks (see :meth:`buffers`)
    BUFFERS = ("theta", "grad", "work", "rowloss", "ostate", "scalars", "hyper")

    def __new__(cls, problem=None, layout=None, theta=None, optimizer="gd", *args, **kwargs):
        if cls is Engine and _spec(optimizer).is_flow:
            cls = FlowEngine
        return super().__new__(cls)

    def __init__(self, problem, layout, theta, optimizer="gd", hyper=None, parallel=None):
        spec = _spec(optimizer)
        dtype = theta.dtype
        self.layout = layout
        self.theta = theta if is_aligned(theta) else aligned_copy(theta)
        self.grad = aligned_zeros(theta.shape, dtype)
        self.dims = np.asarray(layout.dims, dtype=np.int64)
        self.offs = layout.offsets
        self.kind = kind_of(problem)
        self.kernels, self.nblk, self.obs, self.work, self.rowloss = self.kind.prepare(
            problem, layout, dtype, parallel
        )
        self.spec = spec
        self.hyper = spec.hyper(1.0, {}) if hyper is None else hyper
        self.ostate = aligned_zeros(spec.state_slots * theta.size, dtype)
        self.scalars = np.zeros(3)  # optimiser steps, running average v, time

    @property
    def is_flow(self) -> bool:
        return self.spec.is_flow

    @property
    def time(self) -> float:
        """t = sum of the step sizes taken so far (flow time)."""
        return float(self.scalars[2])

    @property
    def n_evals(self) -> int:
        """Gradient evaluations spent by the optimiser (records not counted)."""
        return int(self.scalars[0])

    @property
    def n_steps(self) -> int:
        """Optimiser steps taken (accepted steps for the flow)."""
        return int(self.scalars[0])

    @property
    def position(self):
        """Where the fit stands: the flow time, or the number of steps."""
        return self.n_steps

    def out_of_budget(self, budget: int) -> bool:
        """No further step fits in ``budget`` steps."""
        return self.n_steps >= budget

    def advance(self, target, tol: float, loss_cap: float, budget: int) -> int:
        """Run towards position ``target`` (one compiled call, at most
        ``config.MAX_CHUNK_STEPS`` steps or ``budget`` in all); returns the kernel status."""
        chunk = min(target - self.n_steps, budget - self.n_steps, config.MAX_CHUNK_STEPS)
        return self.run(chunk, tol, loss_cap)[1]

    def divergence_advice(self) -> str:
        """What to change when a fit diverged (its warning says it)."""
        return f"Try a smaller learning rate than lr={self.hyper[0]:g}."

    def snapshot(self):
        """Copies of the state a diverged run returns to (see :meth:`restore`)."""
        return self.theta.copy(), self.scalars.copy()

    def restore(self, snap) -> None:
        params, scalars = snap
        self.theta[:] = params
        self.scalars[:] = scalars

    def state(self) -> dict:
        """The live buffers that make up the optimiser's state, by name (``STATE``; the flow
        adds its integrator's). A checkpoint saves them; :meth:`load_state` puts them back."""
        return {name: getattr(self, name) for name in self.STATE}

    def load_state(self, arrays) -> None:
        """Copy saved buffers (a mapping name -> array, as :meth:`state` gives) into this
        engine's state."""
        for name, buf in self.state().items():
            buf[...] = arrays[name]

    def buffers(self) -> dict:
        """The per-trial buffers by name (``BUFFERS``), live."""
        return {name: getattr(self, name) for name in self.BUFFERS}

    def bind(self, buffers) -> None:
        """Use the given arrays (e.g. rows of ``fit_batch``'s stacked buffers) as this
        engine's buffers of the same names; each must match the buffer it replaces."""
        for name, arr in buffers.items():
            old = getattr(self, name)
            if arr.shape != old.shape or arr.dtype != old.dtype:
                raise ValueError(
                    f"bind: {name} of shape {arr.shape} {arr.dtype}, expected "
                    f"{old.shape} {old.dtype}"
                )
            setattr(self, name, arr)

    def factors(self) -> list[np.ndarray]:
        """Views W_1..W_N into the parameters."""
        return self.layout.unpack(self.theta)

    def grads(self) -> list[np.ndarray]:
        """Views dL/dW_1..dL/dW_N into the gradient of the last evaluation."""
        return self.layout.unpack(self.grad)

    def evaluate(self) -> float:
        """Loss at the current parameters; fills the gradient."""
        return self.evaluate_at(self.theta, self.grad)

    def evaluate_at(self, theta, grad) -> float:
        """Loss at ``theta``, its gradient written into ``grad`` (every entry), with this
        engine's workspace; the engine's own parameters are left alone. For a solver that
        owns its iterate (:class:`fastdmf.Objective`): no copy in or out. Unchecked: both
        must be C-contiguous vectors of ``layout.size`` entries in the engine's dtype."""
        scale = 2.0 / self.obs[0].shape[0]
        # the block size is given (its default), as ``run`` and the flow integrators give it:
        # an omitted argument is another signature, one more compile of the evaluation
        with self._blas():
            return self.kernels.loss_and_grad(
                theta,
                grad,
                self.work,
                self.dims,
                self.offs,
                self.obs,
                self.rowloss,
                scale,
                self.nblk,
                cpu._BLOCK,
            )

    def _blas(self):
        """One BLAS thread under the kernels (see fastdmf.kernels.blas): the serial build then
        runs on exactly one core, the parallel build runs its own threads over blocks."""
        return blas_threads(1)

    def run(self, n_steps: int, tol: float, loss_cap: float):
        """Up to ``n_steps`` optimiser steps in one compiled call.

        Returns ``(steps_done, status, last_loss)`` with status one of ``codes.RUNNING``,
        ``codes.CONVERGED`` (loss <= tol before an update), ``codes.DIVERGED``.
        """
        opt = (self.spec.code, self.hyper, self.ostate, self.scalars)
        with self._blas():
            done, status, loss = self.kernels.run(
                self.theta,
                self.grad,
                self.work,
                self.dims,
                self.offs,
                self.obs,
                self.rowloss,
                opt,
                int(n_steps),
                float(tol),
                float(loss_cap),
                self.nblk,
                cpu._BLOCK,
            )
        return int(done), int(status), float(loss)


class FlowEngine(Engine):
    """An :class:`Engine` that integrates the gradient flow (see fastdmf.kernels.flow):
    positions are flow times, the budget counts gradient evaluations, and the integrator's
    state (``flow = (y, stages, flow state)``) is part of the engine's state."""

    FLOW = ("flow_y", "flow_ks", "flow_fs")
    STATE = Engine.STATE + FLOW
    BUFFERS = Engine.BUFFERS + FLOW
    END_STATUS = "max_time"

    def __init__(self, problem, layout, theta, optimizer="flow", hyper=None, parallel=None):
        super().__init__(problem, layout, theta, optimizer, hyper, parallel)
        fs = np.zeros(flow.FLOW_STATE_SIZE)
        fs[flow.H], fs[flow.RTOL], fs[flow.ATOL] = self.hyper[0], self.hyper[1], self.hyper[3]
        fs[flow.METHOD] = self.spec.flow_method
        stages = aligned_zeros((7, theta.size), theta.dtype)  # rows aligned when size % 8 == 0
        self.flow = (aligned_copy(theta), stages, fs)

    def bind(self, buffers) -> None:
        buffers = dict(buffers)
        flows = [buffers.pop(name, old) for name, old in zip(self.FLOW, self.flow, strict=True)]
        for name, arr, old in zip(self.FLOW, flows, self.flow, strict=True):
            if arr.shape != old.shape or arr.dtype != old.dtype:
                raise ValueError(
                    f"bind: {name} of shape {arr.shape} {arr.dtype}, expected "
                    f"{old.shape} {old.dtype}"
                )
        super().bind(buffers)
        self.flow = tuple(flows)

    @property
    def flow_y(self):
        return self.flow[0]

    @property
    def flow_ks(self):
        return self.flow[1]

    @property
    def flow_fs(self):
        return self.flow[2]

    @property
    def time(self) -> float:
        return float(self.flow[2][flow.T])

    @property
    def n_evals(self) -> int:
        return int(self.flow[2][flow.EVALS])

    @property
    def n_steps(self) -> int:
        return int(self.flow[2][flow.ACCEPTED])

    @property
    def position(self):
        return self.time

    def out_of_budget(self, budget: int) -> bool:
        """No further step fits in ``budget`` gradient evaluations (a Dormand-Prince step
        costs six, an RKC step at least two)."""
        return self.n_evals + self.spec.evals_per_step > budget

    def advance(self, target, tol: float, loss_cap: float, budget: int) -> int:
        return self.run_flow(target, budget, tol, loss_cap)[1]

    def divergence_advice(self) -> str:
        # lr is only the first trial step here; the tolerances steer the integrator
        return (
            f"Try smaller tolerances than optimizer_options rtol={self.hyper[1]:g}, "
            f"atol={self.hyper[3]:g}."
        )

    def snapshot(self):
        return self.flow[0].copy(), self.flow[2].copy()

    def restore(self, snap) -> None:
        params, scalars = snap
        self.theta[:] = params
        self.flow[0][:] = params
        self.flow[2][:] = scalars
        self.flow[2][flow.FSAL] = 0.0

    def run_flow(self, t_end: float, max_evals: int, tol: float, loss_cap: float):
        """Integrate the gradient flow up to time ``t_end`` (see fastdmf.kernels.flow).

        Returns ``(accepted_steps, status, loss)`` like :meth:`run`; status RUNNING with
        ``time < t_end`` means the evaluation budget ran out.
        """
        with self._blas():
            done, status, loss = self.kernels.run_flow(
                self.theta,
                self.grad,
                self.work,
                self.dims,
                self.offs,
                self.obs,
                self.rowloss,
                self.flow,
                float(t_end),
                int(max_evals),
                float(tol),
                float(loss_cap),
                self.nblk,
            )
        return int(done), int(status), float(loss)


def stack(engines) -> dict:
    """Stack the trials' buffers (``BUFFERS``, trial axis first) into one dict of arrays and
    make each engine use its row (``fit_batch``); ``codes`` holds the optimiser's code per
    trial."""
    names = engines[0].BUFFERS
    stacked = {name: _aligned_stack([e.buffers()[name] for e in engines]) for name in names}
    for b, eng in enumerate(engines):
        eng.bind({name: stacked[name][b] for name in names})
    stacked["codes"] = np.full(len(engines), engines[0].spec.code, dtype=np.int64)
    return stacked


def _aligned_stack(arrays) -> np.ndarray:
    """``np.stack(arrays)`` in an aligned buffer: every row starts on a 64-byte boundary when
    its size in bytes is a multiple of 64 (the paper's layouts are)."""
    out = aligned_zeros((len(arrays), *arrays[0].shape), arrays[0].dtype)
    for row, a in zip(out, arrays, strict=True):
        row[...] = a
    return out


def _spec(optimizer) -> OptimizerSpec:
    return optimizer if isinstance(optimizer, OptimizerSpec) else get_optimizer(optimizer)


class CudaEngine(Engine):
    """An :class:`Engine` whose optimiser steps run on the GPU (:mod:`fastdmf.kernels.cuda`).

    The device keeps the parameters, optimiser state and workspace between calls; each
    :meth:`run` copies the parameters and optimiser state back into the host buffers, on
    which records, snapshots and :meth:`evaluate` work with the CPU kernels. ``launch``
    passes launch shapes to :class:`fastdmf.kernels.cuda.DeviceBatch`.
    """

    backend = "cuda"

    def __init__(self, problem, layout, theta, optimizer="gd", hyper=None, launch=None):
        spec = _spec(optimizer)
        if not spec.cuda:
            raise ValueError(_CPU_ONLY)
        kind = kind_of(problem)
        if kind.cuda is None:
            raise ValueError(kind.cpu_only)
        kc = kind.cuda()
        kc.require()
        super().__init__(problem, layout, theta, spec, hyper, parallel=False)
        self.device = kc.DeviceBatch(
            problem,
            self.dims,
            self.theta[None],
            np.array([spec.code]),
            self.hyper[None],
            self.ostate[None],
            self.scalars[None],
            launch,
        )

    def run(self, n_steps: int, tol: float, loss_cap: float):
        before = self.n_steps
        status = np.zeros(1, np.int64)
        loss = self.device.run(int(n_steps), tol, [loss_cap], [True], status)
        return self.n_steps - before, int(status[0]), float(loss[0])

    def restore(self, snap) -> None:
        super().restore(snap)
        self.device.upload()

    def load_state(self, arrays) -> None:
        super().load_state(arrays)
        self.device.upload()  # the GPU copy of the restored state


_CPU_ONLY = (
    "the flow optimisers ('flow', 'flow_dopri5') run on the CPU only; use "
    "backend='cpu' (or one of gd, grouprmsprop, adam on the GPU)"
)


def resolve_backend(backend: str, optimizer, problem=None) -> str:
    """``"cpu"`` or ``"cuda"`` for a ``backend`` argument (``"auto"``: a real CUDA GPU when
    one is usable and the optimiser (an OptimizerSpec or its name) and the problem run
    there, else the CPU)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    kind = None if problem is None else kind_of(problem)
    cpu_only = kind is not None and kind.cuda is None
    if backend == "cuda" and cpu_only:
        raise ValueError(kind.cpu_only)
    on_gpu = _spec(optimizer).cuda
    if backend == "cuda" and not on_gpu:
        raise ValueError(_CPU_ONLY)
    if backend != "auto":
        return backend
    if not on_gpu or cpu_only:
        return "cpu"
    try:
        kc = (COMPLETION if kind is None else kind).cuda()
    except Exception:  # noqa: BLE001  (no numba.cuda: the CPU it is)
        return "cpu"
    return "cuda" if kc.available() and not kc.simulated() else "cpu"


def make_engine(problem, layout, theta, spec, hyper, parallel=None, backend="cpu"):
    """The engine for ``backend`` (already resolved: "cpu" or "cuda")."""
    if backend == "cuda":
        return CudaEngine(problem, layout, theta, spec, hyper)
    return Engine(problem, layout, theta, spec, hyper, parallel)
