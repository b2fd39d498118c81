"""The fused kernels inside a PyTorch model (the ``torch`` extra).

:class:`ObjectiveFunction` is a ``torch.autograd.Function`` whose forward and backward are one
call of a :class:`fastdmf.Objective`: the forward runs the fused loss-and-gradient kernel on
the flat parameter tensor and keeps the gradient; the backward scales it by the incoming
gradient. Nothing of size m x n is formed, unlike the dense product a PyTorch model would
build for autograd.

Memory: a CPU tensor that is contiguous and in the objective's dtype is read in place
(``tensor.numpy()`` shares its memory) and the gradient comes back as a tensor over the
kernel's array (``torch.from_numpy``): zero copies. Another dtype or a non-contiguous tensor
costs one copy in (and one cast of the gradient back). Tensors on another device are refused:
the kernels run on the CPU.

Three ways in:

- :func:`objective_loss` ``(theta, objective)``: the loss of a flat tensor (zero-copy);
- :func:`factors_loss` ``(factors, objective)``: the loss of ``[W_1, ..., W_N]`` tensors
  produced by any upstream torch computation (one ``torch.cat`` to the flat layout);
- :class:`FactorizationLoss`: a ``torch.nn.Module`` that owns the flat parameter and returns
  the loss from ``forward()``, with the factors as views (``factors()``).

Example (see docs/embedding.md)::

    obj = fastdmf.Objective(problem, depth=3)
    layer = FactorizationLoss(obj, init_scale=1e-3, seed=0)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
    for _ in range(1000):
        opt.zero_grad()
        loss = layer() + 1e-4 * sum((w ** 2).sum() for w in layer.factors())
        loss.backward()
        opt.step()
"""

from __future__ import annotations

import numpy as np

try:
    import torch
except ModuleNotFoundError as exc:  # an optional extra
    if (exc.name or "").split(".")[0] != "torch":
        raise
    raise ImportError(
        'fastdmf.objective_torch needs PyTorch: pip install "fastdmf[torch]"'
    ) from exc

from .objective import Objective

__all__ = ["ObjectiveFunction", "objective_loss", "factors_loss", "FactorizationLoss"]

_TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}


class ObjectiveFunction(torch.autograd.Function):
    """``theta -> objective(theta)[0]`` with the kernel's gradient as its backward.

    Call through :func:`objective_loss`. Forward: the fused loss and gradient at ``theta``
    (a 1-D CPU tensor of ``objective.size`` entries); the loss comes back as a 0-d tensor in
    ``theta``'s dtype. Backward: ``grad_output * grad`` (not differentiable again: no
    second derivatives).
    """

    @staticmethod
    def forward(ctx, theta, objective):
        x = _as_vector(theta, objective)
        loss, grad = objective(x)
        ctx.grad = torch.from_numpy(grad)
        ctx.theta_dtype = theta.dtype
        return torch.tensor(loss, dtype=theta.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.grad
        if grad.dtype != ctx.theta_dtype:
            grad = grad.to(ctx.theta_dtype)
        ctx.grad = None  # the gradient is used once: free it with the graph
        return grad_output * grad, None


def objective_loss(theta: torch.Tensor, objective: Objective) -> torch.Tensor:
    """The objective's loss at the flat tensor ``theta`` (layout of
    :meth:`fastdmf.Objective.pack`), differentiable with respect to ``theta``."""
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be a fastdmf.Objective, got {type(objective).__name__}")
    _as_vector(theta, objective, check_only=True)
    return ObjectiveFunction.apply(theta, objective)


def factors_loss(factors, objective: Objective) -> torch.Tensor:
    """The objective's loss at factor tensors ``[W_1, ..., W_N]`` (W_j is d_j x d_{j-1}),
    differentiable with respect to each (one concatenation into the flat layout)."""
    factors = list(factors)
    if len(factors) != objective.depth:
        raise ValueError(f"expected {objective.depth} factors W_1..W_N, got {len(factors)}")
    for j, w in enumerate(factors, start=1):
        want = objective.layout.factor_shape(j)
        if not isinstance(w, torch.Tensor) or tuple(w.shape) != want:
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
            raise ValueError(
                f"factor W_{j} must be a tensor of shape {want}, got {got} "
                f"(dims d_0..d_N = {list(objective.layout.dims)})"
            )
    flat = torch.cat([factors[0].T.reshape(-1)] + [w.reshape(-1) for w in factors[1:]])
    return objective_loss(flat, objective)


def unpack(theta: torch.Tensor, objective: Objective) -> list[torch.Tensor]:
    """Views ``[W_1, ..., W_N]`` into the flat tensor ``theta`` (autograd flows through)."""
    off = objective.layout.offsets
    shapes = [objective.layout.factor_shape(j) for j in range(1, objective.depth + 1)]
    views = [theta[off[0] : off[1]].view(shapes[0][1], shapes[0][0]).T]
    views += [theta[off[j - 1] : off[j]].view(shapes[j - 1]) for j in range(2, len(off))]
    return views


class FactorizationLoss(torch.nn.Module):
    """A layer holding the factors of ``objective`` as one flat parameter; ``forward()``
    returns the data loss through the fused kernels.

    Parameters
    ----------
    objective : fastdmf.Objective
    init, init_scale, seed
        As :meth:`fastdmf.Objective.x0` (the factors ``fit`` starts from).
    """

    def __init__(
        self, objective: Objective, init="gaussian", init_scale: float = 1e-3, seed: int = 0
    ):
        super().__init__()
        if not isinstance(objective, Objective):
            raise TypeError(
                f"objective must be a fastdmf.Objective, got {type(objective).__name__}"
            )
        self.objective = objective
        self.theta = torch.nn.Parameter(torch.from_numpy(objective.x0(init, init_scale, seed)))

    def forward(self) -> torch.Tensor:
        return objective_loss(self.theta, self.objective)

    def factors(self) -> list[torch.Tensor]:
        """Views ``[W_1, ..., W_N]`` into the parameter (differentiable)."""
        return unpack(self.theta, self.objective)

    def matrix(self) -> torch.Tensor:
        """The dense end-to-end matrix W = W_N ... W_1 (m x n), differentiable."""
        factors = self.factors()
        w = factors[0]
        for f in factors[1:]:
            w = f @ w
        return w


def _as_vector(theta, objective, check_only=False):
    """``theta`` as the NumPy vector the objective reads (shared memory when possible), or
    a clear error before any kernel runs."""
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if theta.device.type != "cpu":
        raise ValueError(
            f"theta is on {theta.device}: the fused kernels run on the CPU; pass "
            "theta.cpu() (or fit with backend='cuda')"
        )
    if theta.dtype not in (torch.float64, torch.float32):
        raise TypeError(f"theta must be float64 or float32, got {theta.dtype}")
    if theta.dim() != 1 or theta.numel() != objective.size:
        raise ValueError(
            f"theta has shape {tuple(theta.shape)}; the objective takes a flat "
            f"vector of {objective.size} entries (dims d_0..d_N = "
            f"{list(objective.layout.dims)})"
        )
    if check_only:
        return None
    want = _TORCH_DTYPES[objective.dtype]
    x = theta.detach()
    if x.dtype != want or not x.is_contiguous():
        x = x.to(want).contiguous()
    return x.numpy()
