"""A fit's plan: its arguments checked and resolved once, shared by ``fit``, ``fit_batch``,
``resume``, the sweep's up-front check, ``drive``, the checkpoints and the records.

:func:`plan` runs ``fit``'s checks of everything but the data, the seed and the backend, in
``fit``'s order, and returns a :class:`Plan` (frozen). :class:`FitData` holds what the fit
trains and scores on. The helpers here (threads, seeds, dtypes, settings, versions) are the
fit pipeline's shared internals.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import scipy

from ._version import __version__
from .optim import OptimizerSpec, get_optimizer
from .trajectory import record_schedule, time_schedule

__all__ = [
    "Plan",
    "FitData",
    "plan",
    "DTYPES",
    "dtype_name",
    "resolve_seed",
    "threads",
    "settings",
    "versions",
    "jsonable",
    "plain",
    "validation_arg",
    "widths_of",
    "check_args",
    "per_trial",
    "per_trial_options",
]

DTYPES = {"float64": np.float64, "float32": np.float32}


@dataclass(frozen=True, eq=False)
class FitData:
    """What a fit trains and scores on: the training ``problem``, held-out ``test`` data (in
    the data's units), validation entries ``val`` (in the units the factors train on) and
    the fitted ``offsets`` (or None)."""

    problem: Any
    test: Any = None
    val: Any = None
    offsets: Any = None


@dataclass(frozen=True, eq=False)
class Plan:
    """One fit's resolved arguments (see :func:`plan`).

    ``kind`` is the problem's :class:`fastdmf._kinds.Kind`; ``spec`` the optimiser, ``hyper``
    its kernel hyper-parameters ``[lr, a, b, eps]``; ``schedule`` the record positions (steps,
    or flow times) and ``end`` the last position; ``budget`` the most steps (gradient
    evaluations for the flow); ``seed`` is filled in once resolved; ``patience`` is set with
    validation entries. ``fit_batch`` holds one plan per trial (:meth:`trial`)."""

    kind: Any
    shape: tuple
    depth: int
    layout: Any
    widths: Any = None
    init: Any = "gaussian"
    init_scale: float | None = None
    spec: OptimizerSpec | None = None
    lr: float | None = None
    hyper: np.ndarray | None = None
    schedule: Any = ()
    end: Any = 0
    budget: int = 0
    tol: float = 0.0
    top_k: int | None = None
    dtype: str = "float64"
    parallel: bool | None = None
    seed: int | None = None
    patience: int | None = None

    @property
    def is_flow(self) -> bool:
        return self.spec is not None and self.spec.is_flow

    @property
    def np_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **changes) -> Plan:
        return dataclasses.replace(self, **changes)

    def trial(self, seed, init_scale, lr, optimizer_options=None) -> Plan:
        """This plan for one trial of ``fit_batch`` (its seed, init scale and rate)."""
        return self.replace(
            seed=seed,
            init_scale=init_scale,
            lr=lr,
            hyper=self.spec.hyper(lr, optimizer_options or {}),
        )


def plan(
    kind,
    shape,
    *,
    depth,
    widths=None,
    init="gaussian",
    init_scale=1e-3,
    optimizer="grouprmsprop",
    lr=1e-3,
    optimizer_options=None,
    max_steps=1_000_000,
    max_time=None,
    tol=1e-6,
    record=None,
    top_k=None,
    dtype="float64",
    parallel=None,
) -> Plan:
    """``fit``'s checks of everything but the data, the seed and the backend, in ``fit``'s
    order (sweeps run them before starting any fit); the :class:`Plan` they resolve."""
    init = check_args(
        depth,
        lr,
        init_scale,
        tol,
        init,
        optimizer_options,
        top_k,
        parallel,
        max_steps,
        kind.param_count(depth),
    )
    dtype = dtype_name(dtype)
    spec = get_optimizer(optimizer)
    hyper = spec.hyper(lr, optimizer_options or {})
    layout = kind.layout(shape, depth, widths_of(init, widths))
    if spec.is_flow:
        if (
            max_time is None
            or isinstance(max_time, bool)
            or not isinstance(max_time, (int, float, np.integer, np.floating))
            or not (np.isfinite(max_time) and max_time >= 0)
        ):
            raise ValueError(
                "optimizer='flow' integrates up to a flow time: give max_time= (a finite "
                f"number >= 0), got {max_time!r}"
            )
        schedule, end = time_schedule(record, max_time), float(max_time)
    else:
        if max_time is not None:
            raise ValueError("max_time= applies to optimizer='flow'; use max_steps= here")
        schedule, end = record_schedule(record, max_steps), max_steps
    return Plan(
        kind=kind,
        shape=tuple(shape),
        depth=depth,
        layout=layout,
        widths=widths,
        init=init,
        init_scale=init_scale,
        spec=spec,
        lr=lr,
        hyper=hyper,
        schedule=schedule,
        end=end,
        budget=max_steps,
        tol=tol,
        top_k=top_k,
        dtype=dtype,
        parallel=parallel,
    )


def check_args(
    depth, lr, init_scale, tol, init, optimizer_options, top_k, parallel, max_steps, n_params=None
):
    """Checks of fit's arguments (fit_batch's too) that later steps would fail on obscurely
    or take silently; returns ``init`` (a list of factors, or the scheme name). ``n_params``:
    how many arrays ``init`` given as arrays must list (default: ``depth``, one factor
    each)."""
    for name, value in (("lr", lr), ("init_scale", init_scale), ("tol", tol)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {value!r}")
    if not (tol >= 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if isinstance(max_steps, bool) or not (
        isinstance(max_steps, (int, np.integer)) and max_steps >= 0
    ):
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    if optimizer_options is not None and not isinstance(optimizer_options, dict):
        raise TypeError(f"optimizer_options must be a dict or None, got {optimizer_options!r}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if parallel is not None and not isinstance(parallel, (bool, np.bool_)):
        raise TypeError(f"parallel must be True, False or None, got {parallel!r}")
    if isinstance(init, str):
        return init
    try:
        init = list(init)
    except TypeError:
        raise TypeError(
            "init must be a scheme name or a list of the initial factors "
            f"[W_1, ..., W_N], got {init!r}"
        ) from None
    if len(init) != (depth if n_params is None else n_params):
        raise ValueError(
            f"init lists {len(init)} factor(s) but depth is {depth!r}: give one "
            "array per factor W_1..W_N"
        )
    return init


def widths_of(init, widths):
    """The inner widths: as given, else read off a list of initial factors (W_j is
    d_j x d_{j-1}), else None (the defaults)."""
    if widths is None and not isinstance(init, str):
        return [np.shape(w)[0] for w in list(init)[:-1]]
    return widths


def dtype_name(dtype) -> str:
    """ "float64" or "float32" for any spelling numpy accepts (np.float32, "f4", ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's deprecated aliases: refused below anyway
            name = np.dtype(dtype).name
    except (TypeError, ValueError):
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def resolve_seed(seed) -> int:
    """``seed`` as a non-negative int; None draws one (kept in the fit's settings)."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(seed, (int, np.integer)) and seed >= 0:
        return int(seed)
    raise TypeError(f"seed must be a non-negative int or None, got {seed!r}")


@contextmanager
def threads(n):
    """Run the block with ``n`` Numba threads (None: as they are), restored afterwards."""
    if n is None:
        yield
        return
    if not (isinstance(n, (int, np.integer)) and 1 <= n <= numba.config.NUMBA_NUM_THREADS):
        raise ValueError(
            f"n_threads must be an integer in [1, {numba.config.NUMBA_NUM_THREADS}], got {n!r}"
        )
    old = numba.get_num_threads()
    numba.set_num_threads(int(n))
    try:
        yield
    finally:
        numba.set_num_threads(old)


def settings(args, seed, problem, kernels) -> dict:
    """What a FitResult keeps to rerun its fit."""
    return {
        "arguments": jsonable(args),
        "seed": seed,
        "problem": repr(problem),
        "problem_meta": dict(problem.meta),
        "kernels": kernels,
        "versions": versions(),
    }


def versions() -> dict:
    """The versions of fastdmf, its libraries, Python and the platform."""
    return {
        "fastdmf": __version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def jsonable(args):
    """The arguments with numpy scalars, arrays and ranges (also inside lists) as plain
    Python values, so that ``json.dumps(settings)`` works; a list of factor arrays (``init``)
    becomes ``"<arrays>"``."""
    return {k: plain(v) for k, v in args.items()}


def plain(v):
    """One value as :func:`jsonable` keeps it."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, range):
        return list(v)
    if isinstance(v, (list, tuple)):
        if v and isinstance(v[0], np.ndarray) and v[0].ndim == 2:
            return "<arrays>"
        return type(v)(plain(x) for x in v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def validation_arg(validation):
    """How ``settings`` keeps ``validation=``: a fraction or None as it is, entries as a
    marker (the entries themselves are the caller's)."""
    if validation is None or isinstance(validation, (int, float, np.integer, np.floating)):
        return plain(validation)
    return "<entries>"


def per_trial(value, n: int, name: str) -> list[float]:
    """``fit_batch``'s per-trial real arguments (``init_scale``, ``lr``, ``max_time``): a
    scalar shared by the ``n`` trials, or one value per trial."""
    raw = np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number or one per seed, got {value!r}")
    vals = (
        np.broadcast_to(raw.astype(np.float64), (n,)) if raw.ndim == 0 else raw.astype(np.float64)
    )
    if vals.shape != (n,):
        raise ValueError(f"{name} must be a scalar or one value per seed ({n}), got {value!r}")
    return [float(v) for v in vals]


def per_trial_options(options, n: int) -> list[dict]:
    """One options dict per trial from ``optimizer_options``: a value given as a list, tuple
    or 1-D array holds one value per trial (e.g. ``{"rtol": [1e-4, 1e-6]}``), any other
    value is shared by every trial."""
    if options is None:
        return [{} for _ in range(n)]
    if not isinstance(options, dict):
        raise TypeError(f"optimizer_options must be a dict or None, got {options!r}")
    out = [{} for _ in range(n)]
    for key, value in options.items():
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (list, tuple, np.ndarray)):
            vals = list(np.asarray(value, dtype=object).ravel()) if np.ndim(value) == 1 else None
            if vals is None or len(vals) != n:
                raise ValueError(
                    f"optimizer option {key} must be a scalar or one value per "
                    f"seed ({n}), got {value!r}"
                )
            for b in range(n):
                out[b][key] = vals[b].item() if isinstance(vals[b], np.generic) else vals[b]
        else:
            for b in range(n):
                out[b][key] = value
    return out
