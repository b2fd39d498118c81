"""``fastdmf.fit`` and the building blocks other solvers call.

``fit`` validates, prepares an :class:`~fastdmf.engine.Engine`, runs the compiled loop chunk
by chunk up to each record point, and packs a :class:`FitResult`. It has no arithmetic loops.
"""

from __future__ import annotations

import numpy as np

from ._defaults import is_real_data
from ._defaults import resolve as resolve_defaults
from ._kinds import is_problem, kind_of, kinds_message, same_kind
from ._plan import (
    DTYPES,
    FitData,
    dtype_name,
    plan,
    resolve_seed,
    settings,
    threads,
    validation_arg,
    versions,
)
from .checkpoint import Checkpointer
from .drive import run
from .engine import Engine, make_engine, resolve_backend
from .offsets import Offsets, check_validation, fit_offsets, validation_split
from .problem import completion
from .result import FitResult

__all__ = ["fit", "FitResult", "loss_and_grad", "as_problem", "as_test", "warmup", "versions"]


def as_problem(observed, shape=None):
    """A validated problem from a problem of any kind (completion, sensing, ...: returned as
    it is), a matrix (dense with NaN, or sparse), or a ``(rows, cols, values)`` tuple (with
    ``shape``)."""
    if is_problem(observed):
        if shape is not None and tuple(shape) != tuple(observed.shape):
            raise ValueError(
                f"the problem has shape {tuple(observed.shape)}, not "
                f"shape={tuple(shape)}: a problem carries its shape"
            )
        return observed
    if isinstance(observed, tuple):
        if len(observed) != 3:
            raise TypeError(
                f"a tuple of observations must be (rows, cols, values), got {len(observed)} items"
            )
        return completion(*observed, shape=shape)
    return completion(observed, shape=shape)


def fit(
    observed,
    depth: int | None = None,
    *,
    shape=None,
    widths=None,
    init="gaussian",
    init_scale: float = 1e-3,
    optimizer: str = "grouprmsprop",
    lr: float | None = None,
    optimizer_options: dict | None = None,
    max_steps: int = 1_000_000,
    max_time: float | None = None,
    tol: float = 1e-6,
    record="auto",
    top_k: int | None = None,
    test=None,
    validation="auto",
    patience="auto",
    validation_seed: int = 0,
    refit: bool = False,
    offsets="auto",
    seed=None,
    dtype: str = "float64",
    n_threads: int | None = None,
    parallel: bool | None = None,
    callback=None,
    progress: bool | None = None,
    checkpoint=None,
    checkpoint_every=None,
    backend: str = "cpu",
) -> FitResult:
    """Train a depth-N linear network W = W_N ... W_1 on observed entries by gradient descent.

    Minimises the completion loss (Arora, Cohen, Hu & Luo 2019, eq. 1; a mean, no 1/2)::

        L(W_1, ..., W_N) = (1/|Omega|) sum_{(i,j,y) in Omega} ((W_N ... W_1)[i, j] - y)^2

    On a :class:`~fastdmf.SensingProblem` (measurements ``y_k = <A_k, W*>``) it minimises the
    sensing loss ``(1/p) sum_k (<A_k, W_N ... W_1> - y_k)^2`` instead, with every optimiser
    (see ``fastdmf.kernels.sensing``; a step then forms the m x n product).

    The defaults depend on the observations (see :mod:`fastdmf._defaults` and
    docs/realdata.md). A problem with a known ground truth (the paper's synthetic problems,
    and sensing problems) gets the paper's setup: depth 3, full-dimensional widths, gaussian
    init of scale 1e-3, GroupRMSprop with lr 1e-3, stop at train loss 1e-6 or 10^6 steps, a
    record every 1000, no offsets, no validation. Observed entries without a ground truth (a
    table with NaN, a sparse matrix, ratings) get a fit that generalises: offsets (biases;
    columns standardised first when in different units) fitted first, 10% of the entries
    held out as validation entries, a record
    every 25 steps and early stopping after 20 records without improvement (the state of
    the best validation record is returned), depth 2, hidden width min(m, n, 32), lr 3e-2.
    Any argument given explicitly is used as given.

    Parameters
    ----------
    observed : CompletionProblem, array with NaN for missing, scipy.sparse, (rows, cols, values)
        or SensingProblem
        The observed entries (see :func:`fastdmf.completion`); triplets need ``shape``. Or
        linear measurements (see :func:`fastdmf.sensing`).
    depth : int, optional
        Number of factors N >= 1; default 3 (2 for observations without a ground truth).
    shape : (int, int), optional
        Matrix shape for ``(rows, cols, values)`` input.
    widths : int or list of int, optional
        Hidden widths d_1..d_{N-1}; default min(m, n) each (min(m, n, 32) for observations
        without a ground truth).
    init : str or list of arrays
        ``"gaussian"``, ``"identity"``, ``"orthogonal"``, ``"balanced"`` (see
        :mod:`fastdmf.factors`), or the initial factors ``[W_1, ..., W_N]``.
    init_scale : float
        Scale of the initial end-to-end matrix (``||W(0)||_F ~ init_scale sqrt(m)``).
    optimizer : str
        ``"gd"``, ``"grouprmsprop"``, ``"adam"`` or ``"flow"`` (see :mod:`fastdmf.optim`).
    lr : float, optional
        Learning rate (for ``"flow"``: the first trial step of the integrator); default 1e-3
        (3e-2 for observations without a ground truth).
    optimizer_options : dict, optional
        E.g. ``{"alpha": 0.99, "eps": 1e-4}`` for grouprmsprop.
    max_steps : int
        Most optimiser steps (for ``"flow"``: most gradient evaluations).
    max_time : float, optional
        ``"flow"`` only (and required there): the flow time to integrate to.
    tol : float
        Stop once the train loss is <= tol. ``tol=0`` disables the threshold except at an
        exact zero loss, which no step can improve (the fit stops there, ``"converged"``).
    record : int, list of int, "log", ("log", count), None or "auto"
        When to record (see :func:`fastdmf.trajectory.record_schedule`); ``"auto"``: every
        1000 steps (every 25 for observations without a ground truth); for ``"flow"``,
        flow times: a float interval, a list of times, "log", ("log", count) or None (see
        :func:`fastdmf.trajectory.time_schedule`).
    top_k : int, optional
        Keep only the top-k singular values per record (all by default).
    test : any input form of ``observed``, optional
        Held-out entries of the same shape (for a sensing problem: held-out measurements, a
        SensingProblem, e.g. from :meth:`SensingProblem.split`); the trajectory's test error
        is their MSE when the problem has no ground truth (with a ground truth, the
        reconstruction error is used). They are never trained on, and do not steer the fit.
    validation : float, any input form of ``observed``, None or "auto"
        Entries that steer early stopping: a fraction in (0, 1) of the observed entries held
        out at random (drawn with ``validation_seed``; never a row's or column's last entry),
        or the validation entries themselves (held out of ``observed`` by the caller; every
        row and column they touch must keep a training entry). Their MSE is recorded as the
        trajectory's ``val_error``; the fit returns the state of the record where it is
        lowest (status ``"early_stopped"`` or ``"no_improvement"`` when that is not the last
        record), and stops once ``patience`` records in a row have not improved it (see
        ``refit``).
        ``"auto"``: 0.1 for observations without a ground truth, else None. Completion only.
    refit : bool
        With validation entries: once the fit has chosen its record, train again on all the
        observed entries (validation entries included) from the same initialisation, for
        the chosen number of steps (or flow time) times |Omega| / |Omega_train|, with the
        offsets refitted at the chosen ridge strength. The result is that second fit (its
        status is the first's; ``settings["refit"]`` says what was chosen). False (default):
        the chosen record's state, trained on the training part.
    patience : int or "auto"
        Records without a relative improvement of the validation error of
        ``config.MIN_IMPROVEMENT`` (1e-4) before the fit stops; ``"auto"``: 20.
    validation_seed : int
        Seed of the validation split of ``validation=<fraction>`` (0 by default, so that
        fits with different ``seed`` share one split).
    offsets : {"biases", "scaled", "mean", "auto"}, Offsets, None or "auto"
        Offsets fitted on the training entries before the factorization, which then trains
        on the residuals (see :mod:`fastdmf.offsets`): ``"mean"`` the global mean,
        ``"biases"`` the mean plus ridge row and column biases (the ridge strength chosen
        on the validation entries when there are some), ``"scaled"`` the biases of the
        columns standardised (for columns in different units), an ``Offsets`` as given.
        ``result.predict`` and ``result.matrix`` add them back. The default ``"auto"``:
        for observations without a ground truth ``"scaled"`` when the columns' scales span
        more than a factor 10, else ``"biases"``; None for a problem with a ground truth.
        Completion only.
    seed : int or None
        Seed of the initialisation; None draws one, which is kept in ``settings``.
    dtype : {"float64", "float32"}
    n_threads : int, optional
        Numba threads for the parallel kernels (restored afterwards).
    parallel : bool, optional
        Force the parallel or serial kernels; by default chosen by problem size.
    callback : callable, optional
        ``callback(record) -> bool`` after each record but the first and a converged last
        one: a dict of the record's values plus ``"factors"`` (copies of W_1..W_N); a true
        return stops the fit with status ``"stopped"``.
    progress : bool, optional
        None (default): a tqdm progress bar (step, train loss) on a terminal when tqdm is
        installed, shown once the fit has run for a second; True: that bar, or without tqdm
        or a terminal a status line on stderr updated twice a second; False: nothing.
        Records are also logged at DEBUG level on the ``fastdmf`` logger.
    checkpoint : str or os.PathLike, optional
        Write checkpoints to this file (atomically: temp file, fsync, rename) so that
        :func:`fastdmf.resume` can continue the fit, bit for bit on the same machine, after a
        crash, a kill or Ctrl-C (the last checkpoint survives; see
        :mod:`fastdmf.checkpoint`). One is written after the initial record, then at chunk
        boundaries (record points, and every ``config.MAX_CHUNK_STEPS`` steps), and a final
        one holding the status.
    checkpoint_every : int or float, optional
        An int: at least this many steps between checkpoints; a float: at least this many
        seconds (default 60.0).
    backend : {"cpu", "cuda", "auto"}
        Where the optimiser steps run: the Numba CPU kernels, the numba.cuda kernels
        (:mod:`fastdmf.kernels.cuda`; gd, grouprmsprop and adam; needs a CUDA GPU and the
        ``cuda`` extra) or ``"auto"`` (a CUDA GPU when one is usable). Records are computed on
        the host from the factors copied back at each record point.

    Returns
    -------
    FitResult

    Example
    -------
    >>> import fastdmf
    >>> problem = fastdmf.synthetic_completion(shape=(30, 30), rank=2, n_observed=400, seed=0)
    >>> result = fastdmf.fit(problem, depth=2, lr=1e-2, max_steps=3000, seed=0)
    >>> result.status in ("converged", "max_steps")
    True
    >>> sensed = fastdmf.synthetic_sensing(shape=(10, 10), rank=1, n_measurements=60, seed=0)
    >>> fastdmf.fit(sensed, depth=2, optimizer="adam", lr=1e-2, max_steps=500, seed=0).shape
    (10, 10)
    """
    args = {
        k: v for k, v in locals().items() if k not in ("observed", "callback", "test", "validation")
    }
    again = {
        k: v
        for k, v in args.items()
        if k not in ("validation_seed", "patience", "refit", "checkpoint", "checkpoint_every")
    }
    problem = as_problem(observed, shape)
    test = as_test(test, problem)
    if refit and checkpoint is not None:
        raise ValueError(
            "refit=True runs a second fit that checkpoints do not cover; "
            "checkpoint the fit with refit=False, then refit from its result "
            "(settings and n_steps)"
        )
    observed_problem = problem
    auto, problem, val, patience, fitted = prepare_observations(
        problem,
        {
            "depth": depth,
            "lr": lr,
            "record": record,
            "widths": widths,
            "init": init,
            "validation": validation,
            "offsets": offsets,
            "patience": patience,
        },
        validation_seed,
    )
    depth, lr, record, widths = auto["depth"], auto["lr"], auto["record"], auto["widths"]
    kind = kind_of(problem)
    the_plan = plan(
        kind,
        problem.shape,
        depth=depth,
        widths=widths,
        init=init,
        init_scale=init_scale,
        optimizer=optimizer,
        lr=lr,
        optimizer_options=optimizer_options,
        max_steps=max_steps,
        max_time=max_time,
        tol=tol,
        record=record,
        top_k=top_k,
        dtype=dtype,
        parallel=parallel,
    )
    args.update(
        depth=depth,
        lr=lr,
        record=record,
        widths=widths,
        dtype=the_plan.dtype,
        validation=validation_arg(auto["validation"]),
        patience=patience,
        offsets=(auto["offsets"].kind if isinstance(auto["offsets"], Offsets) else auto["offsets"]),
    )
    kind.check_fit(problem, args)
    seed = resolve_seed(seed)
    args["seed"] = seed
    the_plan = the_plan.replace(seed=seed, patience=patience)
    data = FitData(problem, test, val, fitted)
    layout = the_plan.layout
    params0 = kind.initialize(layout, the_plan.init, init_scale, np.random.default_rng(seed))
    theta = layout.pack(params0, dtype=the_plan.np_dtype)
    where = resolve_backend(backend, the_plan.spec, problem)
    with threads(n_threads):
        engine = make_engine(problem, layout, theta, the_plan.spec, the_plan.hyper, parallel, where)
        traj = kind.trajectory(the_plan, problem)
        label = "cuda" if where == "cuda" else ("parallel" if engine.kernels.parallel else "serial")
        fit_settings = settings(args, seed, problem, label)
        if fitted is not None:
            fit_settings["offsets"] = fitted.describe()
        if val is not None:
            fit_settings["validation_entries"] = val.n_observed
        saver = None
        if checkpoint is not None:
            saver = Checkpointer(checkpoint, checkpoint_every, the_plan, data, fit_settings)
        result = run(
            engine,
            data,
            the_plan,
            traj,
            fit_settings,
            callback=callback,
            progress=progress,
            saver=saver,
        )
    if refit and val is not None:
        return _refit(
            observed_problem, problem, test, fitted, again, seed, engine, result.status, callback
        )
    return result


def as_test(test, problem, what="the fitted problem"):
    """``fit``'s ``test=`` as a problem of ``problem``'s kind and shape (None stays None):
    a problem keeps its own shape (checked), raw entries take the problem's."""
    if test is None:
        return None
    test = as_problem(test, None if is_problem(test) else problem.shape)
    if not same_kind(test, problem):
        raise TypeError(f"test= must be of the problem's kind: {kinds_message()}")
    kind_of(problem).check_held_out(test, problem, what)
    return test


def _refit(observed, train, test, fitted, args, seed, engine, status, callback) -> FitResult:
    """fit(refit=True)'s second fit: all observed entries, the chosen length scaled by
    |Omega| / |Omega_train|, the offsets refitted at the chosen ridge strength."""
    ratio = observed.n_observed / train.n_observed
    args = {
        **args,
        "seed": seed,
        "validation": None,
        "test": test,
        "callback": callback,
        "offsets": None if fitted is None else fit_offsets(observed, fitted.kind, lam=fitted.lam),
    }
    if engine.is_flow:
        chosen = engine.time
        args["max_time"] = chosen * ratio
    else:
        chosen = engine.n_steps
        args["max_steps"] = int(round(chosen * ratio))
    res = fit(observed, **args)
    res.settings["refit"] = {
        "chosen_status": status,
        "chosen_step": engine.n_steps,
        "chosen_time": engine.time,
        "ratio": ratio,
    }
    res.status = status
    return res


def prepare_observations(problem, kw, validation_seed):
    """``(resolved arguments, training problem, validation entries, patience, offsets)``:
    fit's and fit_batch's defaults that depend on the observations filled in (``kw`` holds
    depth, lr, record, widths, init, validation, offsets, patience as given), the validation
    entries held out and the offsets fitted and removed from the training and validation
    entries (held-out test entries stay in the data's units: see ``trajectory.measure``)."""
    auto = resolve_defaults(kw, is_real_data(problem), problem.shape)
    val_auto = isinstance(kw["validation"], str) and kw["validation"] == "auto"
    problem, val, patience, fitted = _generalization(
        problem, auto["validation"], auto["patience"], validation_seed, auto["offsets"], val_auto
    )
    if fitted is not None and val is not None:
        val = fitted.remove(val)
    return auto, problem, val, patience, fitted


def _generalization(problem, validation, patience, validation_seed, offsets, val_auto=False):
    """``(training problem, validation entries or None, patience, Offsets or None)`` from
    fit's ``validation``, ``patience`` and ``offsets`` (defaults already resolved); the
    offsets are fitted on the training entries but not yet removed from anything. A default
    (``val_auto``) fraction that finds no entry to hold out (every entry is the last of its
    row or column: tiny inputs) means no validation."""
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"patience must be a positive number of records, got {patience!r}")
    kind = kind_of(problem)
    if not kind.entries and (validation is not None or offsets is not None):
        raise TypeError(
            "validation= and offsets= apply to observed entries (completion); "
            f"pass validation=None, offsets=None for a {kind.title}"
        )
    val = None
    if isinstance(validation, (int, float, np.integer, np.floating)) and not isinstance(
        validation, bool
    ):
        try:
            problem, val = validation_split(problem, validation, validation_seed)
        except ValueError:
            if not val_auto:
                raise
    elif validation is not None:
        if isinstance(validation, (bool, str)):
            raise TypeError(
                "validation= takes a fraction in (0, 1), validation entries, "
                f"None or 'auto', not {validation!r}"
            )
        val = as_problem(validation, None if is_problem(validation) else problem.shape)
        if not same_kind(val, problem):
            raise TypeError(
                f"validation= of a {kind.title} takes {kind.held_out}, not a {kind_of(val).title}"
            )
        check_validation(problem, val)
    if offsets is None:
        return problem, val, int(patience), None
    if isinstance(offsets, Offsets):  # given as they are (fit(refit=True) passes its own)
        if (offsets.row.shape, offsets.col.shape) != ((problem.shape[0],), (problem.shape[1],)):
            raise ValueError(
                f"offsets= of shape {(offsets.row.size, offsets.col.size)} for "
                f"a problem of shape {problem.shape}"
            )
        return offsets.remove(problem), val, int(patience), offsets
    if offsets not in ("mean", "biases", "scaled", "auto"):
        raise ValueError(
            f"offsets must be 'biases', 'scaled', 'mean', 'auto', an Offsets or "
            f"None, got {offsets!r}"
        )
    if not is_real_data(problem):
        raise ValueError(
            "offsets= applies to observations without a ground truth: the reconstruction "
            "error of a synthetic problem is measured on the factorization alone. Pass "
            "offsets=None, or remove the offsets yourself (fastdmf.offsets.fit_offsets)"
        )
    fitted = fit_offsets(problem, offsets, validation=val)
    return fitted.remove(problem), val, int(patience), fitted


def loss_and_grad(factors, problem, dtype=None, shape=None):
    """``(loss, [dL/dW_1, ..., dL/dW_N])`` of the completion loss (or, for a SensingProblem,
    the sensing loss), through the fit kernels.

    Parameters
    ----------
    factors : list of arrays
        ``[W_1, ..., W_N]`` with chained shapes.
    problem : CompletionProblem, SensingProblem or any input form of :func:`fit`
        The observed entries or measurements; ``(rows, cols, values)`` needs ``shape``.
    dtype : {"float64", "float32"}, optional
        Compute dtype; by default that of the factors (float64 unless all are float32).
    """
    problem = as_problem(problem, shape)
    if not isinstance(factors, list):  # a list subclass (DiagonalParams) keeps its depth
        factors = list(factors)
    if not factors:
        raise ValueError("factors must hold at least one matrix")
    layout = kind_of(problem).param_layout(problem, factors)
    if dtype is None:
        dtype = "float32" if all(np.asarray(w).dtype == np.float32 for w in factors) else "float64"
    theta = layout.pack(factors, dtype=DTYPES[dtype_name(dtype)])
    engine = Engine(problem, layout, theta)
    loss = engine.evaluate()
    return float(loss), [np.array(g) for g in engine.grads()]


def warmup(dtypes=("float64",), parallel=(False, True)) -> None:
    """Compile the kernels now (a few seconds each) instead of at the first fit."""
    from .problem import synthetic_completion

    problem = synthetic_completion(shape=(4, 3), rank=1, n_observed=6, seed=0)
    for dt in dtypes:
        for par in parallel:
            fit(problem, depth=3, max_steps=2, record=None, dtype=dt, parallel=par, seed=0)
