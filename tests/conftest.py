"""Shared fixtures: small problems, built once per session so compiled kernels are reused."""

import os

# The CUDA kernels run on numba's CUDA simulator unless a user asks for a real GPU
# (NUMBA_ENABLE_CUDASIM=0); numba reads this when it is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
import numba.core.config  # noqa: E402  (pytest already imported numba for filterwarnings)

numba.core.config.reload_config()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastdmf  # noqa: E402


@pytest.fixture(scope="session")
def square():
    """A 12 x 12 rank-2 problem with 60 observed entries."""
    return fastdmf.synthetic_completion(shape=(12, 12), rank=2, n_observed=60, seed=3)


@pytest.fixture(scope="session")
def tall():
    """A non-square 17 x 9 problem, some rows and columns without any observation."""
    rng = np.random.default_rng(5)
    m, n = 17, 9
    flat = rng.choice(m * n, size=50, replace=False)
    rows, cols = np.divmod(flat, n)
    keep = (rows != 4) & (cols != 2)
    return fastdmf.completion(rows[keep], cols[keep], rng.standard_normal(keep.sum()),
                              shape=(m, n))


@pytest.fixture(scope="session")
def paper():
    """The paper's problem: 100 x 100, rank 5, 2000 observed entries."""
    return fastdmf.synthetic_completion(seed=0)


def random_factors(dims, rng, scale=1.0, dtype=np.float64):
    """Factors W_j of shape (dims[j], dims[j-1]) with N(0, scale^2/d_{j-1}) entries."""
    return [
        (rng.standard_normal((dims[j], dims[j - 1])) * scale / np.sqrt(dims[j - 1])).astype(dtype)
        for j in range(1, len(dims))
    ]
