"""The table of problem kinds (fastdmf._kinds): lookups, and each entry's pieces against
independent values."""

import numpy as np
import pytest

import fastdmf
from fastdmf import _kinds
from fastdmf.factors import end_to_end


@pytest.fixture(scope="module")
def problems():
    comp = fastdmf.synthetic_completion(shape=(6, 5), rank=2, n_observed=20, seed=0)
    sens = fastdmf.synthetic_sensing(shape=(4, 3), rank=1, n_measurements=9, seed=0)
    return comp, sens


def test_lookups(problems):
    comp, sens = problems
    assert _kinds.kind_of(comp) is _kinds.COMPLETION
    assert _kinds.kind_of(sens) is _kinds.SENSING
    assert _kinds.by_name("sensing") is _kinds.SENSING
    assert _kinds.same_kind(comp, comp) and not _kinds.same_kind(comp, sens)
    assert _kinds.is_problem(sens) and not _kinds.is_problem(np.zeros((2, 2)))
    assert _kinds.find_kind((1, 2, 3)) is None
    with pytest.raises(TypeError, match="CompletionProblem, SensingProblem"):
        _kinds.kind_of(np.zeros(3))
    with pytest.raises(ValueError, match="unknown problem kind 'x'"):
        _kinds.by_name("x")
    names = [k.name for k in _kinds.KINDS]
    assert len(set(names)) == len(names)


def test_entries_and_real_data(problems):
    comp, sens = problems
    assert _kinds.COMPLETION.entries and not _kinds.SENSING.entries
    assert not _kinds.COMPLETION.is_real_data(comp)  # synthetic: has a ground truth
    real = fastdmf.completion(comp.rows, comp.cols, comp.values, shape=comp.shape)
    assert _kinds.COMPLETION.is_real_data(real)
    assert not _kinds.SENSING.is_real_data(sens)
    assert _kinds.SENSING.cuda is None and "sensing" in _kinds.SENSING.cpu_only


def test_scores_against_numpy(problems):
    comp, sens = problems
    rng = np.random.default_rng(1)
    for problem in problems:
        m, n = problem.shape
        factors = [rng.standard_normal((2, n)), rng.standard_normal((m, 2))]
        w = factors[1] @ factors[0]
        kind = _kinds.kind_of(problem)
        if kind is _kinds.COMPLETION:
            want = np.mean((w[comp.rows, comp.cols] - comp.values) ** 2)
        else:
            want = np.mean((np.einsum("kij,ij->k", sens.A, w) - sens.y) ** 2)
        assert kind.score(factors, problem) == pytest.approx(want, rel=1e-12)
        assert np.isnan(kind.score(factors, None))
        np.testing.assert_allclose(end_to_end(factors), w, rtol=1e-12)


def test_arrays_round_trip(problems):
    for problem in problems:
        kind = _kinds.kind_of(problem)
        arrays = problem.to_arrays()
        back = kind.problem_type.from_arrays(arrays, problem.meta)
        assert back.shape == problem.shape and back.meta == problem.meta
        for name, arr in arrays.items():
            np.testing.assert_array_equal(back.to_arrays()[name], arr)


def test_prepare_matches_the_loss(problems):
    """Each kind's kernels, as prepared, give the loss computed in NumPy."""
    rng = np.random.default_rng(2)
    for problem in problems:
        kind = _kinds.kind_of(problem)
        layout = kind.layout(problem.shape, 2, [3])
        factors = kind.initialize(layout, "gaussian", 0.5, rng)
        theta = layout.pack(factors)
        kernels, nblk, obs, work, rowloss = kind.prepare(problem, layout, np.float64, False)
        grad = np.zeros_like(theta)
        dims = np.asarray(layout.dims, dtype=np.int64)
        loss = kernels.loss_and_grad(theta, grad, work, dims, layout.offsets, obs, rowloss,
                                     2.0 / problem.n_observed, nblk)
        w = end_to_end(factors)
        if kind is _kinds.COMPLETION:
            want = np.mean((w[problem.rows, problem.cols] - problem.values) ** 2)
        else:
            want = np.mean((np.einsum("kij,ij->k", problem.A, w) - problem.y) ** 2)
        assert loss == pytest.approx(want, rel=1e-12)
        assert kind.from_dims(layout.dims) == layout
