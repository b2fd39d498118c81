"""Kernels against the NumPy reference and central finite differences."""

import numpy as np
import pytest

import fastdmf
from fastdmf import reference
from fastdmf.engine import Engine
from fastdmf.factors import FactorLayout
from fastdmf.kernels import cpu

from .conftest import assert_parallel_invariant, engine_for, random_factors

# (depth, hidden widths or None for full-dimensional)
CASES = [(1, None), (2, [7]), (3, [5, 9]), (4, [6, 3, 8]), (5, [4, 4, 4, 4]), (3, None)]


def dims_for(problem, depth, widths):
    return FactorLayout.build(problem.shape, depth, widths).dims


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("depth, widths", CASES)
@pytest.mark.parametrize("which", ["square", "tall"])
def test_loss_and_grad_match_reference(request, which, depth, widths, parallel):
    problem = request.getfixturevalue(which)
    rng = np.random.default_rng(depth)
    factors = random_factors(dims_for(problem, depth, widths), rng)
    eng = engine_for(problem, factors, parallel=parallel)
    loss = eng.evaluate()
    ref_loss, ref_grads = reference.loss_and_grad(
        factors, problem.rows, problem.cols, problem.values
    )
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    assert loss == pytest.approx(
        reference.loss(factors, problem.rows, problem.cols, problem.values), rel=1e-13
    )
    for got, want in zip(eng.grads(), ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * np.abs(want).max())


@pytest.mark.parametrize("depth, widths", CASES[:5])
def test_float32_matches_reference(tall, depth, widths):
    rng = np.random.default_rng(10 + depth)
    factors = random_factors(dims_for(tall, depth, widths), rng)
    f32 = [w.astype(np.float32) for w in factors]
    loss, grads = fastdmf.loss_and_grad(f32, tall)
    assert all(g.dtype == np.float32 for g in grads)
    ref_loss, ref_grads = reference.loss_and_grad(
        [w.astype(np.float64) for w in f32], tall.rows, tall.cols, tall.values
    )
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("depth, widths", CASES[:5])
def test_gradients_match_central_differences(tall, depth, widths):
    """Every factor, 12 random coordinates each, central differences in float64."""
    rng = np.random.default_rng(20 + depth)
    factors = random_factors(dims_for(tall, depth, widths), rng)
    _, grads = fastdmf.loss_and_grad(factors, tall)
    h = 1e-6
    errors = []
    for j, w in enumerate(factors):
        for _ in range(12):
            a, b = rng.integers(w.shape[0]), rng.integers(w.shape[1])
            plus = [f.copy() for f in factors]
            minus = [f.copy() for f in factors]
            plus[j][a, b] += h
            minus[j][a, b] -= h
            fd = fastdmf.loss_and_grad(plus, tall)[0] - fastdmf.loss_and_grad(minus, tall)[0]
            fd /= 2 * h
            errors.append(abs(fd - grads[j][a, b]) / max(1e-3, np.abs(grads[j]).max()))
    assert max(errors) < 1e-6
    assert np.mean(errors) < 1e-7


def test_parallel_kernels_identical_for_any_thread_count(paper):
    """Owner-computes passes and fixed-block sums: bit-identical results for 1 and 2 threads,
    and equal to the serial build."""
    rng = np.random.default_rng(0)
    factors = random_factors(dims_for(paper, 3, [40, 30]), rng)
    assert_parallel_invariant(paper, factors)


def test_step_never_forms_the_dense_matrix():
    """A 30000 x 30000 problem (7.2 GB dense in float64) with width 3: buffers stay
    O(|Omega| + (m + n) d) and a few training steps fit in a small memory budget."""
    import resource

    m = n = 30_000
    rng = np.random.default_rng(0)
    k = 20_000
    flat = rng.choice(m * n, size=k, replace=False)
    rows, cols = np.divmod(flat, n)
    problem = fastdmf.completion(rows, cols, rng.standard_normal(k), shape=(m, n))
    layout = FactorLayout.build(problem.shape, 3, [3, 3])
    factors = random_factors(layout.dims, rng, scale=0.1)
    eng = Engine(problem, layout, layout.pack(factors), "gd", np.array([1e-3, 0, 0, 0]))
    buffers = eng.theta.size + eng.grad.size + eng.work.size + eng.rowloss.size
    assert buffers < 10 * (k + (m + n) * 3)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    done, status, loss = eng.run(3, 0.0, 1e300)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert done == 3 and np.isfinite(loss)
    assert (after - before) * 1024 < 200e6  # ru_maxrss is in KiB on Linux
    # and the loss is right: compare with the entries computed from the factors
    pred = fastdmf.factors.predict_entries(eng.factors(), problem.rows, problem.cols)
    assert eng.evaluate() == pytest.approx(np.mean((pred - problem.values) ** 2), rel=1e-12)


def test_import_without_a_writable_cache_folder_warns_and_runs(same_fastdmf):
    """Where Numba has nowhere to cache (read-only install, no writable home), the kernels
    compile uncached with a warning instead of failing at import."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import warnings
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []  # no cache folder anywhere
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fastdmf
            from fastdmf.kernels import flow
        assert fastdmf.kernels.CACHE is False
        assert any("NUMBA_CACHE_DIR" in str(w.message) for w in caught)
        t, d1, d2 = flow._chebyshev(3, 1.0)   # compiled, uncached
        print(t[3], d1[3])
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, **same_fastdmf
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "9.0"]  # T_3(1) = 1, T_3'(1) = 9


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_dense_abt_matches_numpy_and_stays_in_its_scratch(parallel):
    """a @ b^T through the transposed copy, in one block and (parallel build, 100 rows) in
    two; the copy uses the first b.size entries of the scratch and nothing after them."""
    kernels = cpu.PARALLEL if parallel else cpu.SERIAL
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((100, 7)), rng.standard_normal((5, 7))
    for nblk in (1, 8):
        out = np.full((100, 5), np.nan)
        scratch = np.full(b.size + 3, -7.0)
        kernels.dense_abt(a, b, out, scratch, np.int64(nblk))
        np.testing.assert_allclose(out, a @ b.T, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(scratch[: b.size].reshape(7, 5), b.T)
        np.testing.assert_array_equal(scratch[b.size :], -7.0)


def test_engine_buffers_start_on_64_byte_boundaries(paper):
    """The engine's parameters, gradient, optimiser state, workspace and flow stages start
    on a cache line (misaligned parameters are copied, aligned ones used in place), and so
    do the rows of fit_batch's stacked buffers when a row is a whole number of lines."""
    from fastdmf.engine import stack
    from fastdmf.kernels import aligned_zeros, is_aligned

    layout = FactorLayout.build(paper.shape, 3, None)
    raw = np.zeros(layout.size + 1)
    theta = raw[1:]  # 8 bytes off whatever NumPy gave
    assert not is_aligned(theta)
    theta[:] = np.arange(layout.size) * 1e-6
    for optimizer in ("adam", "flow"):
        eng = Engine(paper, layout, theta, optimizer)
        bufs = [eng.theta, eng.grad, eng.ostate, eng.work]
        bufs += list(eng.flow[:2]) if optimizer == "flow" else []
        assert all(is_aligned(b) for b in bufs if b.size)
        np.testing.assert_array_equal(eng.theta, theta)
        assert eng.theta is not theta
    given = aligned_zeros(layout.size)
    assert Engine(paper, layout, given).theta is given
    assert layout.size * 8 % 64 == 0
    engines = [Engine(paper, layout, theta.copy()) for _ in range(3)]
    stacked = stack(engines)
    assert all(is_aligned(stacked[name][2]) for name in ("theta", "grad", "work"))
    for name in engines[0].BUFFERS:
        rows = [row for row in stacked[name] if row.nbytes and row.nbytes % 64 == 0]
        assert all(is_aligned(row) for row in rows)
    assert all(e.theta.base is not None and is_aligned(e.theta) for e in engines)
    np.testing.assert_array_equal(stacked["theta"][2], theta)
