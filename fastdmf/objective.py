"""The training loss as a function of one flat vector, for solvers other than ``fit``.

:class:`Objective` is the door for embedding fastdmf in another solver
(``scipy.optimize.minimize``, a PyTorch model through :mod:`fastdmf.objective_torch`, JAX
through :mod:`fastdmf.objective_jax`, a hand-written loop). It builds one
:class:`~fastdmf.engine.Engine` (workspace, observation index, kernel choice) at
construction; a call hands the caller's vector and a gradient array straight to the fused
kernels, so its cost over a step inside ``fit`` is the input check and one Python call
(see benchmarks/RESULTS_objective.md). :func:`fastdmf.loss_and_grad` instead packs the
factors and builds an engine on every call.

The flat vector ``x`` is the engine's ``theta``: factor 1 first, ``W_1`` stored transposed
(``W_1^T``, n x d_1, C order), then ``W_2 .. W_N`` in C order (see :mod:`fastdmf.factors`);
:meth:`Objective.pack` and :meth:`Objective.unpack` convert.
"""

from __future__ import annotations

import numpy as np

from ._kinds import kind_of
from ._plan import FitData, Plan, dtype_name, versions
from .api import as_problem, as_test
from .engine import Engine
from .result import FitResult

__all__ = ["Objective"]


class Objective:
    """``x -> (loss, grad)`` of a deep matrix factorization, buffers allocated once.

    The completion loss (the paper's convention: a mean, no 1/2)::

        f(x) = (1/|Omega|) sum_{(i,j,y) in Omega} ((W_N ... W_1)[i, j] - y)^2,
        [W_1, ..., W_N] = unpack(x)

    or, for a :class:`~fastdmf.SensingProblem`, ``(1/p) sum_k (<A_k, W_N ... W_1> - y_k)^2``
    (any problem kind the engine runs). ``grad`` is ``df/dx`` in the same flat layout.

    Parameters
    ----------
    problem : CompletionProblem, SensingProblem or any input form of :func:`fastdmf.fit`
        The observed entries or measurements; ``(rows, cols, values)`` needs ``shape``.
    depth : int
        Number of factors N >= 1.
    widths : int or list of int, optional
        Hidden widths d_1..d_{N-1}; default min(m, n) each (as in ``fit``).
    dtype : {"float64", "float32"}
        Compute dtype of the kernels; ``x`` of the other float dtype is converted (a copy).
    shape : (int, int), optional
        Matrix shape for ``(rows, cols, values)`` input.
    parallel : bool, optional
        Force the parallel or serial kernels; by default chosen by problem size, as ``fit``.

    Notes
    -----
    One call runs at a time: the workspace is shared between calls (not thread-safe).
    A call checks ``x`` (length, dtype, finiteness: O(size)), then writes the gradient into
    a new array, so a solver may keep the gradients it is given; pass ``out=`` to
    :meth:`loss_and_grad` to reuse one.

    Example
    -------
    >>> import fastdmf, scipy.optimize
    >>> problem = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=150, seed=0)
    >>> obj = fastdmf.Objective(problem, depth=2)
    >>> res = scipy.optimize.minimize(obj, obj.x0(init_scale=1e-2), jac=True,
    ...                               method="L-BFGS-B", options={"maxiter": 300})
    >>> obj.result(res.x).train_loss < 1e-4
    True
    """

    def __init__(
        self,
        problem,
        depth: int,
        widths=None,
        dtype: str = "float64",
        *,
        shape=None,
        parallel: bool | None = None,
    ):
        self.problem = as_problem(problem, shape)
        if parallel is not None and not isinstance(parallel, (bool, np.bool_)):
            raise TypeError(f"parallel must be True, False or None, got {parallel!r}")
        self.dtype = np.dtype(dtype_name(dtype))
        self.kind = kind_of(self.problem)
        self.layout = self.kind.layout(self.problem.shape, depth, widths)
        self._engine = Engine(
            self.problem, self.layout, np.zeros(self.layout.size, self.dtype), parallel=parallel
        )
        self._size = self.layout.size  # FactorLayout.size recomputes the offsets: read once
        self.n_calls = 0

    # ------------------------------------------------------------------ shape of x
    @property
    def size(self) -> int:
        """Length of the flat parameter vector x."""
        return self._size

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (m, n) of the end-to-end matrix."""
        return self.layout.shape

    @property
    def depth(self) -> int:
        return self.layout.depth

    def __repr__(self) -> str:
        kernels = "parallel" if self._engine.kernels.parallel else "serial"
        return (
            f"Objective(depth={self.depth}, dims={list(self.layout.dims)}, "
            f"size={self.size}, dtype={self.dtype.name}, kernels={kernels})"
        )

    # ------------------------------------------------------------------ evaluation
    def __call__(self, x) -> tuple[float, np.ndarray]:
        """``(loss, grad)`` at ``x``: the ``jac=True`` form of ``scipy.optimize.minimize``."""
        return self.loss_and_grad(x)

    def loss_and_grad(self, x, out=None) -> tuple[float, np.ndarray]:
        """``(loss, grad)`` at ``x``; the gradient is written into ``out`` when given (a
        C-contiguous vector of ``size`` entries in the compute dtype), else a new array."""
        x = self._check(x, finite=True)
        if out is None:
            grad = np.empty(self.size, self.dtype)
        else:
            grad = out
            if not (
                isinstance(out, np.ndarray)
                and out.shape == (self.size,)
                and out.dtype == self.dtype
                and out.flags.c_contiguous
                and out.flags.writeable
            ):
                raise ValueError(
                    f"out= must be a writeable C-contiguous {self.dtype.name} vector of "
                    f"{self.size} entries, got {_describe(out)}"
                )
            if np.may_share_memory(out, x):
                raise ValueError("out= must not overlap x: the gradient would overwrite it")
        loss = self._engine.evaluate_at(x, grad)
        self.n_calls += 1
        return float(loss), grad

    def loss(self, x) -> float:
        """The loss alone (the kernels compute the gradient anyway)."""
        return self.loss_and_grad(x)[0]

    def grad(self, x) -> np.ndarray:
        """The gradient alone."""
        return self.loss_and_grad(x)[1]

    # ------------------------------------------------------------------ conversions
    def x0(self, init="gaussian", init_scale: float = 1e-3, seed: int = 0) -> np.ndarray:
        """Initial vector: the factors ``fit(problem, depth, init=init, init_scale=init_scale,
        seed=seed)`` starts from, packed (see :mod:`fastdmf.factors` for the schemes)."""
        if isinstance(seed, bool) or not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise TypeError(f"seed must be a non-negative int, got {seed!r}")
        if isinstance(init_scale, bool) or not isinstance(
            init_scale, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"init_scale must be a real number, got {init_scale!r}")
        factors = self.kind.initialize(
            self.layout, init, init_scale, np.random.default_rng(int(seed))
        )
        return self.layout.pack(factors, dtype=self.dtype)

    def pack(self, factors) -> np.ndarray:
        """The flat vector of ``[W_1, ..., W_N]`` (W_j is d_j x d_{j-1}), in the compute
        dtype; shapes and finiteness are checked."""
        return self.layout.pack(factors, dtype=self.dtype)

    def unpack(self, x) -> list[np.ndarray]:
        """Views ``[W_1, ..., W_N]`` into ``x`` (no copy when ``x`` is a C-contiguous vector
        in the compute dtype; ``W_1`` is then Fortran-ordered)."""
        return self.layout.unpack(self._check(x, finite=False))

    # ------------------------------------------------------------------ reading an answer
    def result(
        self,
        x,
        *,
        test=None,
        top_k: int | None = None,
        status: str | None = None,
        n_steps: int = 0,
        tol: float = 1e-6,
        history=None,
    ) -> FitResult:
        """A :class:`~fastdmf.FitResult` for the vector ``x`` an outside solver returned,
        so that its answer reads like a fit's (factors, ``matrix()``, ``predict``, records).

        Parameters
        ----------
        x : array
            The final vector.
        test : any input form of ``fit``'s ``test``, optional
            Held-out entries or measurements, as for :func:`fastdmf.fit`.
        top_k : int, optional
            Keep only the top-k singular values per record.
        status : str, optional
            Default: ``"converged"`` when the train loss at ``x`` is <= ``tol``, else
            ``"stopped"`` (the outside solver stopped before that).
        n_steps : int
            The solver's iteration count, kept as the last record's step.
        tol : float
            Train loss counted as converged when ``status`` is not given.
        history : sequence of arrays, optional
            Earlier iterates (e.g. gathered by a scipy ``callback``), recorded before ``x``
            at steps 0, 1, ... (their ``n_evals`` is their index).

        Records are computed as ``fit`` computes them (:func:`fastdmf.trajectory.measure`
        on the kernels' loss and gradient); ``time`` is NaN (no step size); the last
        record's ``n_evals`` is this objective's call count.
        """
        test = self._check_test(test)
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
        ):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        points = [self._check(h, finite=True) for h in (history or [])]
        x = self._check(x, finite=True)
        plan = Plan(
            kind=self.kind,
            shape=tuple(self.shape),
            depth=self.depth,
            layout=self.layout,
            top_k=top_k,
            dtype=self.dtype.name,
        )
        data = FitData(self.problem, test)
        traj = self.kind.trajectory(plan, self.problem)
        grad = np.empty(self.size, self.dtype)
        steps = list(range(len(points))) + [int(n_steps or len(points))]
        for k, (step, point) in enumerate(zip(steps, [*points, x], strict=True)):
            loss = self._engine.evaluate_at(point, grad)
            if not np.isfinite(loss):
                raise ValueError(
                    f"the loss at {'x' if k == len(points) else f'history[{k}]'} "
                    "is not finite; the solver diverged"
                )
            n_evals = self.n_calls if k == len(points) else k
            traj.append(
                self.kind.measure(
                    self.layout.unpack(point),
                    self.layout.unpack(grad),
                    loss,
                    (step, np.nan, n_evals),
                    data,
                    plan,
                )
            )
        if status is None:
            status = "converged" if loss <= tol else "stopped"
        factors = [np.array(w, dtype=self.dtype) for w in self.layout.unpack(x)]
        return self.kind.result(factors, traj, status, self._settings(), int(steps[-1]))

    # ------------------------------------------------------------------ checks
    def _check(self, x, finite: bool) -> np.ndarray:
        """``x`` as a C-contiguous vector in the compute dtype, or a clear error."""
        if not isinstance(x, np.ndarray):
            if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
                x = np.asarray(x)
            else:
                raise TypeError(
                    f"x must be a flat NumPy vector of {self.size} floats, got {type(x).__name__}"
                )
        if x.dtype not in (np.float64, np.float32):
            raise TypeError(
                f"x must hold float64 or float32 values, got dtype {x.dtype}; the objective "
                f"computes in {self.dtype.name} (x.astype(np.{self.dtype.name}) converts)"
            )
        if x.ndim != 1 or x.size != self.size:
            raise ValueError(
                f"x has shape {x.shape}; this objective takes a flat vector of {self.size} "
                f"entries (depth {self.depth}, dims d_0..d_N = {list(self.layout.dims)}). "
                "obj.pack([W_1, ..., W_N]) builds one; was it made for another problem shape "
                "or depth?"
            )
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not x.flags.writeable:  # Numba types read-only arrays apart: a copy, not a
            x = x.copy()  # second compilation of the kernels (JAX hands these)
        if finite and not np.isfinite(x.sum()) and not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise ValueError(
                f"x holds a non-finite value (x[{bad}] = {x[bad]}); the "
                "solver diverged or was given a bad start"
            )
        return x

    def _check_test(self, test):
        return as_test(test, self.problem, "the objective's problem")

    def _settings(self) -> dict:
        """What a FitResult keeps (the keys of fit's settings)."""
        return {
            "arguments": {
                "depth": self.depth,
                "widths": list(self.layout.dims[1:-1]),
                "dtype": self.dtype.name,
                "solver": "Objective",
            },
            "seed": None,
            "problem": repr(self.problem),
            "problem_meta": dict(self.problem.meta),
            "kernels": "parallel" if self._engine.kernels.parallel else "serial",
            "versions": versions(),
        }


def _describe(a) -> str:
    if isinstance(a, np.ndarray):
        return f"an array of shape {a.shape}, dtype {a.dtype}"
    return type(a).__name__
