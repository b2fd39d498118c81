"""Shared fixtures: small problems, built once per session so compiled kernels are reused."""

import os

# The CUDA kernels run on numba's CUDA simulator unless a user asks for a real GPU
# (NUMBA_ENABLE_CUDASIM=0); numba reads this when it is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
import numba.core.config  # noqa: E402  (pytest already imported numba for filterwarnings)

numba.core.config.reload_config()

from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastdmf  # noqa: E402
from fastdmf.engine import Engine  # noqa: E402
from fastdmf.factors import FactorLayout  # noqa: E402


@pytest.fixture
def same_fastdmf(tmp_path):
    """Keyword arguments (``env``, ``cwd``) for ``subprocess.run``/``Popen`` of
    ``sys.executable`` that make the child import the fastdmf this process imported (the
    installed package, or the checkout where PYTHONPATH names it): the folder holding that
    package first on PYTHONPATH, and an empty working folder, since ``python -c`` and
    ``python -m`` put the working folder first on ``sys.path`` and, run from a checkout, would
    import the checkout."""
    parent = str(Path(fastdmf.__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return dict(env=dict(os.environ, PYTHONPATH=os.pathsep.join([parent, *rest])), cwd=cwd)


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
    return fastdmf.completion(rows[keep], cols[keep], rng.standard_normal(keep.sum()), shape=(m, n))


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


def engine_for(problem, factors, dtype=np.float64, parallel=False, optimizer="gd", hyper=None):
    """An Engine (completion or sensing) holding ``factors``; widths read off the factors."""
    widths = [w.shape[0] for w in factors[:-1]]
    layout = FactorLayout.build(problem.shape, len(factors), widths)
    return Engine(
        problem, layout, layout.pack(factors, dtype=dtype), optimizer, hyper, parallel=parallel
    )


def assert_parallel_invariant(problem, factors):
    """The parallel build gives the same bits for 1 and 2 threads, and the serial build's
    loss and gradients within rounding."""
    serial = engine_for(problem, factors, parallel=False)
    loss_s = serial.evaluate()
    results = []
    old = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            eng = engine_for(problem, factors, parallel=True)
            results.append((eng.evaluate(), [g.copy() for g in eng.grads()]))
    finally:
        numba.set_num_threads(old)
    (l1, g1), (l2, g2) = results
    assert l1 == l2
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert loss_s == pytest.approx(l1, rel=1e-14)
    for a, b in zip(serial.grads(), g1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
