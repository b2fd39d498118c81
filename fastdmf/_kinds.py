"""Problem kinds: one table from a problem's type to everything a fit does differently for it.

A kind (matrix completion, matrix sensing, ...) is one :class:`Kind` entry of :data:`KINDS`:
how its parameters are laid out and initialised, which compiled kernels run it (CPU, batched,
CUDA where it exists), what a trajectory record holds, how held-out data are scored, which
of ``fit``'s arguments apply to it, and which result type a fit returns. The fit pipeline
(``api``, ``batch``, ``engine``, ``drive``, ``checkpoint``) asks the table and never the
problem's type, so a new kind is its problem module, its kernels module, its NumPy
reference, and one entry here.

The kernels' contract (``prepare``): ``(kernels, nblk, obs, work, rowloss)`` where
``kernels`` is a compiled family with ``parallel``, ``loss_and_grad``, ``run`` and
``run_flow`` (see :mod:`fastdmf.kernels.cpu`), ``obs`` the kind's data tuple, ``work`` the
workspace and ``rowloss`` the per-row (or per-residual) buffer; ``batch_run`` advances stacked
trials with the contract of :func:`fastdmf.kernels.batch.run_batch`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np

from . import config, diagonal
from .factors import FactorLayout, end_to_end
from .factors import initialize as initialize_factors
from .kernels import aligned_zeros, cpu, sensing
from .kernels import diagonal as diagonal_kernels
from .kernels.batch import run_batch, run_batch_sensing
from .kernels.flow_batch import run_batch_flow, run_batch_flow_sensing
from .lockstep import sensing_losses_and_grads_groups
from .problem import CompletionProblem, SensingProblem, synthetic_completion
from .result import FitResult
from .trajectory import Trajectory, held_out_mse, measure

__all__ = [
    "Kind",
    "KINDS",
    "kind_of",
    "find_kind",
    "by_name",
    "is_problem",
    "same_kind",
    "select_kernels",
]


def _never(problem) -> bool:
    return False


def _no_checks(problem, args) -> None:
    return None


@dataclass(frozen=True)
class Kind:
    """Everything the fit pipeline does differently for one type of problem.

    Attributes
    ----------
    name : str
        The kind's name: checkpoints' ``problem_kind``, a sweep spec's ``"kind"``.
    title : str
        What the problem is, in error messages ("completion problem").
    held_out : str
        What its held-out data are, in error messages ("held-out entries").
    problem_type : type
        The problem class; it has ``shape``, ``n_observed``, ``meta``, ``to_arrays()`` and
        ``from_arrays(arrays, meta)``.
    layout : callable ``(shape, depth, widths) -> layout``
        The flat parameter layout (``dims``, ``offsets``, ``size``, ``pack``, ``unpack``).
    from_dims : callable ``(dims, depth) -> layout``
        The layout back from its ``dims`` and the fit's depth, as a checkpoint keeps them.
    param_layout : callable ``(problem, params) -> layout``
        The layout of given parameters (``loss_and_grad``, ``Objective``).
    initialize : callable ``(layout, init, init_scale, rng) -> params``
        The initial parameters (``init`` a scheme name or the parameters themselves).
    param_count : callable ``(depth) -> int``
        How many parameter arrays a fit of that depth has (``init=`` given as arrays lists
        that many): the factors W_1..W_N for the matrix kinds.
    prepare : callable ``(problem, layout, dtype, parallel) -> (kernels, nblk, obs, work,
        rowloss)``
        The compiled family and its buffers for one fit (see the module docstring).
    batch_run : callable
        The batched step loop over the serial build (``fit_batch``).
    batch_flow : callable or None
        The batched flow over the serial build's ``run_flow`` (``fit_batch`` with a flow
        optimiser; the contract of :func:`fastdmf.kernels.flow_batch.run_batch_flow`); None
        when ``fit_batch`` refuses the flow for the kind.
    batch_eval : callable or None
        Losses and gradients of groups of stacked trials in one call, ``(parts, scratch) ->
        [losses per group]`` (:func:`fastdmf.lockstep.sensing_losses_and_grads_groups`): the
        evaluation of ``fit_batch(..., lockstep=True)``; None when the kind has none.
    measure : callable ``(params, grads, loss, counts, data, plan) -> dict``
        One trajectory record. ``counts`` is ``(step, time, n_evals)``; ``data`` holds
        ``problem``, ``test``, ``val`` and ``offsets``; ``plan`` is the fit's
        :class:`fastdmf._plan.Plan` (its resolved arguments: ``init_scale``, ``depth``,
        ``top_k``, ...; one per trial in ``fit_batch``).
    score : callable ``(params, test, offsets) -> float``
        The mean squared error on held-out data of the kind (NaN for None).
    trajectory : callable ``(plan, problem) -> Trajectory``
        The empty trajectory a fit records into.
    result : type
        The :class:`~fastdmf.FitResult` (sub)class a fit returns, built as
        ``result(params, trajectory, status, settings, n_steps, offsets)``.
    entries : bool
        Observed entries: ``validation=``, ``offsets=`` and the real-data defaults apply.
    check_held_out : callable ``(test, problem, what) -> None``
        Raises ValueError when held-out data ``test`` (of this kind) cannot be scored
        against a fit of ``problem`` (``what`` names the fitted problem); by default their
        shapes must be equal.
    is_real_data : callable ``(problem) -> bool``
        Whether ``fit``'s defaults for observations without a ground truth apply.
    check_fit : callable ``(problem, args) -> None``
        Kind-specific checks of ``fit``'s resolved arguments (a dict); raises on a bad one.
    cuda : callable ``() -> module`` or None
        The CUDA kernels (:mod:`fastdmf.kernels.cuda`'s interface: ``require``,
        ``available``, ``simulated``, ``max_trials``, ``DeviceBatch``), imported on first
        use; None when the kind runs on the CPU only.
    cpu_only : str
        Why ``backend="cuda"`` is refused, when ``cuda`` is None.
    residuals : callable ``(problem, w) -> ndarray`` or None
        Matrix kinds: the residuals of a dense m x n matrix ``w`` on the observations (the
        train loss is their mean square), for solvers that work on W itself.
    sweep_spec : ``(builder, default spec)`` or None
        How a sweep's problem spec dict ``{"kind": name, ...}`` builds a synthetic problem of
        this kind: ``builder(**spec)`` with the spec's other keys over the defaults; None
        when sweeps take no spec dict of the kind.
    """

    name: str
    title: str
    held_out: str
    problem_type: type
    layout: Callable
    from_dims: Callable
    param_layout: Callable
    initialize: Callable
    prepare: Callable
    batch_run: Callable
    measure: Callable
    score: Callable
    trajectory: Callable
    result: type = FitResult
    param_count: Callable = field(default=lambda depth: depth)
    check_held_out: Callable = field(
        default=lambda test, problem, what: _same_shape(test, problem, what)
    )
    entries: bool = False
    is_real_data: Callable = field(default=_never)
    check_fit: Callable = field(default=_no_checks)
    cuda: Callable | None = None
    cpu_only: str = ""
    residuals: Callable | None = None
    sweep_spec: tuple | None = None
    batch_flow: Callable | None = None
    batch_eval: Callable | None = None


# --------------------------------------------------------------------------- matrix kinds


def select_kernels(n_observed: int, layout, parallel=None):
    """The completion kernel family to use: ``parallel`` True/False, or None to decide by
    problem size (``config.PARALLEL_MIN_WORK``) and thread count."""
    if parallel is None:
        work = n_observed * max(layout.dims[1:-1], default=1)
        parallel = numba.get_num_threads() > 1 and work >= config.PARALLEL_MIN_WORK
    return cpu.PARALLEL if parallel else cpu.SERIAL


def _prepare_completion(problem, layout, dtype, parallel=None):
    """``(kernels, nblk, obs, work, rowloss)`` of a completion problem: the entries in CSR
    and CSC order, the workspace of :func:`fastdmf.kernels.cpu.work_layout`."""
    rowptr, colptr, order = problem.index
    values = problem.values.astype(dtype)
    col_rows = problem.rows[order]
    obs = (problem.rows, problem.cols, values, rowptr, colptr, col_rows, order)
    kernels = select_kernels(problem.n_observed, layout, parallel)
    # dense products: one BLAS call (serial build) or fixed blocks, one per task
    nblk = config.DENSE_BLOCKS if kernels.parallel else 1
    dims = np.asarray(layout.dims, dtype=np.int64)
    size = cpu.work_layout(dims, problem.n_observed, nblk)[-1]
    return kernels, nblk, obs, aligned_zeros(size, dtype), np.zeros(problem.shape[0])


def _matrix_layout(shape, depth, widths):
    return FactorLayout.build(shape, depth, widths)


def _same_shape(test, problem, what) -> None:
    if test.shape != problem.shape:
        raise ValueError(f"test= has shape {test.shape}, {what} {problem.shape}")


def _matrix_from_dims(dims, depth=None):
    dims = list(dims)
    return FactorLayout.build((dims[-1], dims[0]), len(dims) - 1, dims[1:-1])


def _matrix_param_layout(problem, factors):
    widths = [np.shape(w)[0] for w in list(factors)[:-1]]
    return FactorLayout.build(problem.shape, len(factors), widths)


def _matrix_trajectory(plan, problem):
    return Trajectory(plan.depth, plan.top_k, {"shape": list(problem.shape)})


def _matrix_measure(params, grads, loss, counts, data, plan, score):
    step, time, n_evals = counts
    return measure(
        params,
        grads,
        loss,
        step,
        time,
        n_evals,
        data.problem,
        data.test,
        plan.top_k,
        data.val,
        data.offsets,
        held_out=score,
    )


def _sensing_score(factors, test, offsets=None) -> float:
    """MSE of the factors' measurements ``<A_k, W>`` on held-out measurements."""
    if test is None:
        return np.nan
    return float(np.mean((test.measure(end_to_end(factors)) - test.y) ** 2))


def _completion_residuals(problem, w):
    return w[problem.rows, problem.cols] - problem.values


def _sensing_residuals(problem, w):
    return problem.measure(w) - problem.y


def _completion_real_data(problem) -> bool:
    return problem.ground_truth is None and problem.truth_factors is None


def _cuda_kernels():
    from .kernels import cuda

    return cuda


COMPLETION = Kind(
    name="completion",
    title="completion problem",
    held_out="held-out entries",
    problem_type=CompletionProblem,
    layout=_matrix_layout,
    from_dims=_matrix_from_dims,
    param_layout=_matrix_param_layout,
    initialize=initialize_factors,
    prepare=_prepare_completion,
    batch_run=run_batch,
    batch_flow=run_batch_flow,
    measure=functools.partial(_matrix_measure, score=held_out_mse),
    score=held_out_mse,
    trajectory=_matrix_trajectory,
    entries=True,
    is_real_data=_completion_real_data,
    cuda=_cuda_kernels,
    residuals=_completion_residuals,
    sweep_spec=(
        synthetic_completion,
        {"shape": (100, 100), "rank": 5, "n_observed": 2000, "seed": 0},
    ),
)

SENSING = Kind(
    name="sensing",
    title="sensing problem",
    held_out="held-out measurements (a SensingProblem, e.g. from problem.split())",
    problem_type=SensingProblem,
    layout=_matrix_layout,
    from_dims=_matrix_from_dims,
    param_layout=_matrix_param_layout,
    initialize=initialize_factors,
    prepare=sensing.prepare,
    batch_run=run_batch_sensing,
    batch_flow=run_batch_flow_sensing,
    batch_eval=sensing_losses_and_grads_groups,
    measure=functools.partial(_matrix_measure, score=_sensing_score),
    score=_sensing_score,
    trajectory=_matrix_trajectory,
    cpu_only="backend='cuda' runs completion problems; matrix sensing runs on the CPU "
    "(backend='cpu')",
    residuals=_sensing_residuals,
)

DIAGONAL = Kind(
    name="diagonal",
    title="sparse-regression problem",
    held_out="held-out samples (a SparseRegressionProblem, e.g. from problem.split())",
    problem_type=diagonal.SparseRegressionProblem,
    layout=diagonal.layout,
    from_dims=diagonal.DiagonalLayout.from_dims,
    param_layout=diagonal.param_layout,
    initialize=diagonal.start,
    prepare=diagonal_kernels.prepare,
    batch_run=diagonal_kernels.run_batch,
    batch_flow=diagonal_kernels.run_batch_flow,
    measure=diagonal.record,
    score=diagonal.score,
    trajectory=diagonal.trajectory,
    result=diagonal.DiagonalResult,
    check_fit=diagonal.check_fit,
    cpu_only="backend='cuda' runs completion problems; a diagonal network runs on the CPU "
    "(backend='cpu')",
    check_held_out=diagonal.check_held_out,
    param_count=lambda depth: 2,
)

#: Every kind, in the order ``find_kind`` tries them.
KINDS: tuple[Kind, ...] = (COMPLETION, SENSING, DIAGONAL)


# --------------------------------------------------------------------------- lookups


def find_kind(problem) -> Kind | None:
    """The kind of ``problem``, or None when it is no problem object."""
    for kind in KINDS:
        if isinstance(problem, kind.problem_type):
            return kind
    return None


def kind_of(problem) -> Kind:
    """The kind of ``problem``; a TypeError naming the problem types otherwise."""
    kind = find_kind(problem)
    if kind is None:
        names = ", ".join(k.problem_type.__name__ for k in KINDS)
        raise TypeError(f"expected a problem ({names}), got {type(problem).__name__}")
    return kind


def by_name(name: str) -> Kind:
    """The kind called ``name`` (a checkpoint's ``problem_kind``)."""
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise ValueError(f"unknown problem kind {name!r}; known: {[k.name for k in KINDS]}")


def is_problem(obj) -> bool:
    """Whether ``obj`` is a problem object of some kind (not raw data)."""
    return find_kind(obj) is not None


def same_kind(a, b) -> bool:
    """Whether two problems are of one kind."""
    return find_kind(a) is find_kind(b)


def kinds_message() -> str:
    """ "held-out entries for a completion problem, ..." for error messages about ``test=``."""
    return ", ".join(f"{k.held_out} for a {k.title}" for k in KINDS)
