"""Optimiser registry: names, defaults and state of the update rules run by the kernels.

Each optimiser updates the flat parameter vector ``theta`` from its gradient ``g``:

``"gd"``
    ``theta <- theta - lr g``.
``"grouprmsprop"`` (the paper's, Arora et al. 2019, appendix)
    one global step for all factors: ``v <- alpha v + (1 - alpha) ||g||^2``,
    ``theta <- theta - lr / (sqrt(v / (1 - alpha^t)) + eps) g``.
``"adam"``
    Kingma & Ba (2015), per entry, bias-corrected.
``"flow"``
    gradient flow d(theta)/dt = -g itself, integrated to the error tolerance ``rtol``/``atol``
    by the stabilised Runge-Kutta-Chebyshev method RKC (second order, stage count adapted to
    the Hessian's largest eigenvalue, so the stiff end of a fit does not cap the step);
    ``lr`` is the first trial step. Records are taken at flow times. See
    ``fastdmf.kernels.flow``.
``"flow_dopri5"``
    the same flow by the Dormand-Prince 5(4) pair: fifth order, but its step is capped by
    stability (h lambda_max <= 3.3) near a minimum.

The update itself runs inside the compiled loop (``fastdmf.kernels.cpu``); the NumPy oracle is
in ``fastdmf.reference``. "Time" ``t = sum of step sizes``: ``lr`` for gd and adam, the
adapted global step for grouprmsprop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels import flow
from ..kernels.codes import NO_STEP, OPTIMIZER_CODES

__all__ = ["OptimizerSpec", "OPTIMIZERS", "register_optimizer", "get_optimizer"]


@dataclass(frozen=True)
class OptimizerSpec:
    """An update rule: kernel code, default hyper-parameters, per-entry state slots, and
    what runs it.

    ``slots`` names the options passed in the kernel's ``hyper[1:4] = (a, b, eps)``.
    ``kind`` is ``"step"`` (a discrete rule, the kernels' ``update`` with ``code``) or
    ``"flow"`` (the gradient flow, integrated by ``flow_method``, one of
    ``fastdmf.kernels.flow.DOPRI5`` and ``RKC2``; ``code`` is ``codes.NO_STEP``).
    ``batched``: ``fit_batch`` runs it; ``cuda``: the CUDA kernels run it.
    ``evals_per_step``: the fewest gradient evaluations one step costs (the flow's budget is
    counted in evaluations).
    """

    name: str
    code: int
    defaults: dict
    slots: tuple
    state_slots: int  # arrays of len(theta) the rule keeps (Adam: 2)
    rates: tuple = ()  # options that are decay rates, in [0, 1)
    positive: tuple = ()  # options that must be > 0
    kind: str = "step"
    flow_method: float | None = None
    batched: bool = True
    cuda: bool = True
    evals_per_step: int = 1

    def __post_init__(self):
        if self.kind not in ("step", "flow"):
            raise ValueError(f"OptimizerSpec kind must be 'step' or 'flow', got {self.kind!r}")
        if (self.kind == "flow") != (self.flow_method is not None):
            raise ValueError("a flow optimiser names its flow_method, a step rule none")

    @property
    def is_flow(self) -> bool:
        """Whether this is the gradient flow (records at flow times, ``max_time``)."""
        return self.kind == "flow"

    def hyper(self, lr, options) -> np.ndarray:
        """``[lr, a, b, eps]`` for the kernel, with option names checked."""
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"optimizer {self.name!r} has no option(s) {sorted(unknown)}; its options are "
                f"{sorted(self.defaults) or 'none'}"
            )
        opts = {**self.defaults, **options}
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        for key, val in opts.items():
            if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
                raise TypeError(f"optimizer option {key} must be a real number, got {val!r}")
            hi = 1.0 if key in self.rates else np.inf
            if key in self.positive and not (0 < val < hi):
                why = (
                    " (it is added to a root that is 0 for a zero gradient, so 0 would "
                    "divide 0 by 0)"
                    if key == "eps"
                    else ""
                )
                raise ValueError(
                    f"optimizer option {key} must be > 0{why}, got {val!r}; the default is "
                    f"{self.defaults[key]!r}"
                )
            if not (0 <= val < hi):
                raise ValueError(f"optimizer option {key} must lie in [0, {hi:g}), got {val!r}")
        vals = [float(lr)] + [float(opts[k]) if k else 0.0 for k in self.slots]
        return np.array(vals, dtype=np.float64)


OPTIMIZERS: dict = {}


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    """Make ``spec`` available to ``fit(optimizer=spec.name)``."""
    OPTIMIZERS[spec.name] = spec
    return spec


def get_optimizer(name: str) -> OptimizerSpec:
    """Look an optimiser up by name; the error lists the valid names."""
    try:
        return OPTIMIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; valid names: {sorted(OPTIMIZERS)}") from None


register_optimizer(OptimizerSpec("gd", OPTIMIZER_CODES["gd"], {}, (None, None, None), 0))
register_optimizer(
    OptimizerSpec(
        "grouprmsprop",
        OPTIMIZER_CODES["grouprmsprop"],
        {"alpha": 0.99, "eps": 1e-4},
        ("alpha", None, "eps"),
        0,
        ("alpha",),
        ("eps",),
    )
)
# The two flow integrators differ in their method and its gradient evaluations per step.
for _name, _method, _evals in (("flow", flow.RKC2, 2), ("flow_dopri5", flow.DOPRI5, 6)):
    register_optimizer(
        OptimizerSpec(
            _name,
            NO_STEP,
            {"rtol": 1e-6, "atol": 1e-9},
            ("rtol", None, "atol"),
            0,
            positive=("rtol", "atol"),
            kind="flow",
            flow_method=_method,
            batched=False,
            cuda=False,
            evals_per_step=_evals,
        )
    )
register_optimizer(
    OptimizerSpec(
        "adam",
        OPTIMIZER_CODES["adam"],
        {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        ("beta1", "beta2", "eps"),
        2,
        ("beta1", "beta2"),
        ("eps",),
    )
)
