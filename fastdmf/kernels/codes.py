"""The integer codes the compiled kernels exchange with Python, defined once by name.

Status of a compiled call (``run``, ``run_flow``, the batched and CUDA loops):

``RUNNING``     the call ended with steps left to take (chunk or budget spent, flow time
                reached)
``CONVERGED``   the loss was <= tol before an update
``DIVERGED``    the loss was not finite or above the divergence cap
``IDLE``        (CUDA batches) a trial that is not advanced by this call

``GO_ON`` is the flow integrators' internal "no reason to stop yet" (never returned).

Optimiser codes (``OptimizerSpec.code``, the kernels' ``code`` argument): ``GD``,
``GROUPRMSPROP``, ``ADAM`` for the step rules of ``cpu.update`` and the CUDA update; the flow
optimisers have no step code (``NO_STEP``): they run the integrators of
:mod:`fastdmf.kernels.flow`, whose method is ``DOPRI5`` or ``RKC2`` in the flow state.
"""

from __future__ import annotations

RUNNING, CONVERGED, DIVERGED, IDLE = 0, 1, 2, 3
GO_ON = -1

GD, GROUPRMSPROP, ADAM = 0, 1, 2
NO_STEP = -1
OPTIMIZER_CODES = {"gd": GD, "grouprmsprop": GROUPRMSPROP, "adam": ADAM}

__all__ = [
    "RUNNING",
    "CONVERGED",
    "DIVERGED",
    "IDLE",
    "GO_ON",
    "GD",
    "GROUPRMSPROP",
    "ADAM",
    "NO_STEP",
    "OPTIMIZER_CODES",
]
