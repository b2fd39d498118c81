"""Norm-minimisation baselines: the matrices a norm picks among all that fit the observations.

The paper's question is whether the implicit bias of deep matrix factorization is a norm
(Arora, Cohen, Hu & Luo 2019, section 5). These solvers give the norm-minimising answers to
compare against, for completion and sensing problems alike, each as a depth-1
:class:`~fastdmf.FitResult`:

``nuclear_norm``
    ``min ||W||_*  s.t.  A(W) = y`` (the paper's baseline), certified by a dual multiplier.
``min_frobenius``
    ``min ||W||_F  s.t.  A(W) = y``: what gradient descent on W itself (depth 1) from zero
    converges to.
``schatten_p``
    ``min sum sigma_i^p  s.t.  A(W) = y``, 0 < p <= 1, by iteratively reweighted least squares.
``basis_pursuit``, ``min_norm_interpolant``
    The vector case (a :class:`~fastdmf.diagonal.SparseRegressionProblem`): ``min ||w||_1``
    and ``min ||w||_2`` subject to ``X w = y``, the two ends of a diagonal network's bias
    (docs/diagonal.md); basis pursuit with its LP dual certificate.
``soft_impute``
    ``min (1/2) ||P_Omega(W - Y)||_F^2 + lam ||W||_*`` (completion only; Mazumder, Hastie &
    Tibshirani 2010), ``lam`` chosen on held-out entries: the penalised form that noisy real
    data needs, the peer of a fit with early stopping.

See docs/baselines.md.
"""

from .basis_pursuit import basis_pursuit, min_norm_interpolant
from .frobenius import min_frobenius
from .nuclear import nuclear_norm
from .schatten import schatten_p
from .softimpute import soft_impute

BASELINES = {
    "nuclear_norm": nuclear_norm,
    "min_frobenius": min_frobenius,
    "schatten_p": schatten_p,
    "soft_impute": soft_impute,
    "basis_pursuit": basis_pursuit,
    "min_norm_interpolant": min_norm_interpolant,
}


def get_baseline(name: str):
    """The baseline solver registered under ``name``."""
    try:
        return BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(BASELINES)}") from None


__all__ = [
    "nuclear_norm",
    "min_frobenius",
    "schatten_p",
    "soft_impute",
    "basis_pursuit",
    "min_norm_interpolant",
    "BASELINES",
    "get_baseline",
]
