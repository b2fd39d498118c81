"""fastdmf: deep matrix factorization, fast and exact.

Train W = W_N ... W_1 by gradient descent on observed entries with fused Numba kernels, and
record how its singular values move (Arora, Cohen, Hu & Luo, NeurIPS 2019).

>>> import fastdmf
>>> problem = fastdmf.synthetic_completion(shape=(100, 100), rank=5, n_observed=2000, seed=0)
>>> result = fastdmf.fit(problem, depth=3)          # doctest: +SKIP
"""

from . import baselines, theory
from ._version import __version__
from .api import FitResult, fit, loss_and_grad, warmup
from .batch import fit_batch
from .batch_flow import resume_batch
from .checkpoint import resume
from .diagonal import SparseRegressionProblem, sparse_regression, synthetic_sparse_regression
from .experiments.sweep import sweep
from .experiments.sweep_table import SweepTable, load_sweep
from .factors import INITS
from .objective import Objective
from .optim import OPTIMIZERS
from .problem import (
    CompletionProblem,
    SensingProblem,
    completion,
    from_ratings,
    sensing,
    synthetic_completion,
    synthetic_sensing,
)
from .trajectory import Trajectory, load_trajectory

__all__ = [
    "__version__",
    "fit",
    "fit_batch",
    "resume",
    "resume_batch",
    "sweep",
    "load_sweep",
    "SweepTable",
    "FitResult",
    "loss_and_grad",
    "Objective",
    "warmup",
    "completion",
    "synthetic_completion",
    "from_ratings",
    "CompletionProblem",
    "sensing",
    "synthetic_sensing",
    "SensingProblem",
    "sparse_regression",
    "synthetic_sparse_regression",
    "SparseRegressionProblem",
    "Trajectory",
    "load_trajectory",
    "INITS",
    "OPTIMIZERS",
    "theory",
    "baselines",
]


def __getattr__(name):
    # DMFImputer needs scikit-learn (an optional extra): imported on first use only
    if name == "DMFImputer":
        try:
            from .sklearn import DMFImputer
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "sklearn":
                raise
            raise ImportError(
                'fastdmf.DMFImputer needs scikit-learn: pip install "fastdmf[sklearn]"'
            ) from exc
        return DMFImputer
    raise AttributeError(f"module 'fastdmf' has no attribute {name!r}")
