"""Property-based: the kernels equal the reference on random shapes, depths, widths and
sparsity patterns (including empty rows and columns)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdmf
from fastdmf import reference


@st.composite
def problems_and_factors(draw):
    m = draw(st.integers(1, 9))
    n = draw(st.integers(1, 9))
    depth = draw(st.integers(1, 4))
    widths = [draw(st.integers(1, 6)) for _ in range(depth - 1)]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    k = draw(st.integers(1, m * n))
    flat = rng.choice(m * n, size=k, replace=False)
    rows, cols = np.divmod(flat, n)
    problem = fastdmf.completion(rows, cols, rng.standard_normal(k), shape=(m, n))
    dims = [n, *widths, m]
    factors = [rng.standard_normal((dims[j], dims[j - 1])) for j in range(1, depth + 1)]
    return problem, factors


@settings(max_examples=60, deadline=None)
@given(problems_and_factors())
def test_kernels_equal_reference(case):
    problem, factors = case
    loss, grads = fastdmf.loss_and_grad(factors, problem)
    ref_loss, ref_grads = reference.loss_and_grad(
        factors, problem.rows, problem.cols, problem.values
    )
    assert np.isclose(loss, ref_loss, rtol=1e-12, atol=1e-300)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * (1 + np.abs(want).max()))
