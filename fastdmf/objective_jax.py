"""The fused kernels inside a JAX program (the ``jax`` extra).

:func:`jax_loss` turns a :class:`fastdmf.Objective` into a JAX function ``theta -> loss``
with a ``jax.custom_vjp``: its forward calls the objective on the host through
``jax.pure_callback`` (loss and gradient in one kernel call) and keeps the gradient as the
residual; its backward scales that gradient by the cotangent. It works under ``jax.jit``,
``jax.grad`` and ``jax.value_and_grad``; under ``jax.vmap`` the batch runs one call after
another. The shape of ``theta`` is checked when the function is traced, before any kernel
runs; values (NaN, inf) are checked on the host.

JAX computes in float32 unless ``jax_enable_x64`` is on; a float32 ``theta`` is converted to
the objective's dtype on the host (one copy) and the results back to float32. For the
objective's full precision, enable x64 and build the objective in float64.

Example (see docs/embedding.md)::

    jax.config.update("jax_enable_x64", True)
    obj = fastdmf.Objective(problem, depth=3)
    loss = jax_loss(obj)
    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(obj.x0()))
"""

from __future__ import annotations

import numpy as np

try:
    import jax
except ModuleNotFoundError as exc:  # an optional extra
    if (exc.name or "").split(".")[0] != "jax":
        raise
    raise ImportError('fastdmf.objective_jax needs JAX: pip install "fastdmf[jax]"') from exc

from .objective import Objective

__all__ = ["jax_loss"]


def jax_loss(objective: Objective):
    """A JAX function ``theta -> loss`` (theta: the flat vector of ``objective.size``
    entries, layout of :meth:`fastdmf.Objective.pack`), differentiable once in reverse mode
    through the fused kernels."""
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a fastdmf.Objective, got {type(objective).__name__}")

    def host(x):
        loss, grad = objective(np.asarray(x))
        return np.asarray(loss, dtype=x.dtype), grad.astype(x.dtype, copy=False)

    def call(theta):
        if theta.ndim != 1 or theta.shape[0] != objective.size:
            raise ValueError(
                f"theta has shape {tuple(theta.shape)}; the objective takes a flat "
                f"vector of {objective.size} entries (dims d_0..d_N = "
                f"{list(objective.layout.dims)})"
            )
        if theta.dtype not in (np.float64, np.float32):
            raise TypeError(f"theta must be float64 or float32, got {theta.dtype}")
        out = (
            jax.ShapeDtypeStruct((), theta.dtype),
            jax.ShapeDtypeStruct(theta.shape, theta.dtype),
        )
        return jax.pure_callback(host, out, theta, vmap_method="sequential")

    @jax.custom_vjp
    def loss(theta):
        return call(theta)[0]

    def forward(theta):
        value, grad = call(theta)
        return value, grad

    def backward(grad, cotangent):
        return (cotangent * grad,)

    loss.defvjp(forward, backward)
    return loss
