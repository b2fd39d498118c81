"""pytest-benchmark suite at the paper's configuration (100x100, rank 5, 2000 observed, full
widths, gaussian init 1e-3), float64.

Run it explicitly (``testpaths = ["tests"]`` keeps it out of the main suite)::

    PYTHONPATH=. python -m pytest benchmarks/ --benchmark-group-by=group

Each group holds fastdmf and the dense NumPy step of ``_harness.py`` doing the same work,
so the relative column of pytest-benchmark's table reads as a ratio:

- ``loss+grad N=k``: ``Engine.evaluate`` (serial and parallel kernels) against the dense
  loss and gradients;
- ``100 GD steps N=k``: ``Engine.run(100)`` against 100 dense GD steps;
- ``fit``: ``fastdmf.fit`` for 2000 steps (paper defaults: GroupRMSprop, lr 1e-3, a record
  every 1000 steps) with no dense counterpart.

JIT compilation happens in the fixtures and warm-up rounds, outside the timings.
"""

from __future__ import annotations

import numpy as np
import pytest
from _harness import LR, NumpyDense

import fastdmf
from fastdmf import reference
from fastdmf.engine import Engine
from fastdmf.factors import FactorLayout, initialize
from fastdmf.optim import get_optimizer

SHAPE, RANK, N_OBS, INIT_SCALE, SEED = (100, 100), 5, 2000, 1e-3, 0
DEPTHS = [1, 2, 3]
KERNELS = {"serial": False, "parallel": True}


@pytest.fixture(scope="module")
def problem():
    return fastdmf.synthetic_completion(shape=SHAPE, rank=RANK, n_observed=N_OBS, seed=SEED)


def initial_factors(depth):
    layout = FactorLayout.build(SHAPE, depth)
    return layout, initialize(layout, "gaussian", INIT_SCALE, np.random.default_rng(SEED))


def make_engine(problem, depth, parallel):
    layout, factors = initial_factors(depth)
    theta = layout.pack(factors, dtype=np.float64)
    engine = Engine(problem, layout, theta, "gd", get_optimizer("gd").hyper(LR, {}), parallel)
    engine.evaluate()  # compile
    return engine


def make_dense(problem, depth):
    layout, factors = initial_factors(depth)
    dense = NumpyDense(problem, layout)
    dense.load(factors)
    return dense, factors


@pytest.mark.parametrize("kernels", list(KERNELS))
@pytest.mark.parametrize("depth", DEPTHS)
def test_evaluate(benchmark, problem, depth, kernels):
    benchmark.group = f"loss+grad N={depth}"
    engine = make_engine(problem, depth, KERNELS[kernels])
    loss = benchmark(engine.evaluate)
    factors = initial_factors(depth)[1]
    want = reference.loss(factors, problem.rows, problem.cols, problem.values)
    assert loss == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("depth", DEPTHS)
def test_evaluate_numpy_dense(benchmark, problem, depth):
    """The dense step without its update (loss and gradients)."""
    benchmark.group = f"loss+grad N={depth}"
    dense, _ = make_dense(problem, depth)
    ws = dense.ws
    saved = [w.copy() for w in ws]

    def loss_and_grad():
        dense.step()
        for w, s in zip(ws, saved, strict=True):  # undo the update: same point every round
            w[...] = s
        return dense.loss

    assert np.isfinite(benchmark(loss_and_grad))


@pytest.mark.parametrize("kernels", list(KERNELS))
@pytest.mark.parametrize("depth", DEPTHS)
def test_run_100(benchmark, problem, depth, kernels):
    benchmark.group = f"100 GD steps N={depth}"
    engine = make_engine(problem, depth, KERNELS[kernels])
    theta0 = engine.theta.copy()

    def reset():
        engine.theta[:] = theta0

    done, _, _ = benchmark.pedantic(
        engine.run, args=(100, 0.0, 1e300), setup=reset, rounds=20, warmup_rounds=1
    )
    assert done == 100


@pytest.mark.parametrize("depth", DEPTHS)
def test_run_100_numpy_dense(benchmark, problem, depth):
    benchmark.group = f"100 GD steps N={depth}"
    dense, factors = make_dense(problem, depth)
    benchmark.pedantic(
        dense.steps, args=(100,), setup=lambda: dense.load(factors), rounds=20, warmup_rounds=1
    )
    # the dense rows time the same steps: they land where Engine.run(100) does
    engine = make_engine(problem, depth, False)
    engine.run(100, 0.0, 1e300)
    for got, want in zip(dense.factors(), engine.factors(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-16)


def test_fit_2000_steps(benchmark, problem):
    benchmark.group = "fit"
    fastdmf.fit(problem, depth=3, max_steps=2, record=None, seed=SEED)  # compile

    def run():
        return fastdmf.fit(problem, depth=3, max_steps=2000, tol=0.0, seed=SEED)

    result = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    assert result.n_steps == 2000
