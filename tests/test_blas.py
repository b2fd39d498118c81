"""BLAS thread limits: both bundled OpenBLAS libraries, and the fit's records on one thread."""

import numpy as np
import pytest

import fastdmf
from fastdmf import _kinds
from fastdmf.kernels import blas


def _counts():
    return [get() for get, _ in blas._openblas()]


def test_blas_threads_limits_both_libraries_and_restores():
    found = blas._openblas()
    if len(found) < 2:
        pytest.skip("SciPy's and NumPy's bundled OpenBLAS are not both found here")
    before = _counts()
    with blas.blas_threads(1):
        assert _counts() == [1, 1]
        with blas.blas_threads(2):
            assert _counts() == [2, 2]
        assert _counts() == [1, 1]
    assert _counts() == before
    with pytest.raises(RuntimeError), blas.blas_threads(1):
        raise RuntimeError("restored on the way out")
    assert _counts() == before


def test_records_run_on_one_blas_thread(monkeypatch):
    """The records' QR and SVD run on one thread of NumPy's OpenBLAS: a threaded call would
    leave its workers spinning beside the next chunk's parallel kernels."""
    if len(blas._openblas()) < 2:
        pytest.skip("NumPy's bundled OpenBLAS is not found here")
    seen = []
    original = _kinds.measure

    def spy(*args, **kwargs):
        seen.append(_counts()[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(_kinds, "measure", spy)
    problem = fastdmf.synthetic_completion(shape=(12, 10), rank=2, n_observed=60, seed=3)
    with blas.blas_threads(2):  # whatever the environment set, the fit starts from 2
        res = fastdmf.fit(
            problem, depth=2, optimizer="gd", lr=0.1, max_steps=20, record=5, progress=False
        )
        assert _counts() == [2, 2]
    assert len(seen) == len(res.trajectory) >= 5
    assert seen == [1] * len(seen)
    assert np.all(np.isfinite(res.trajectory.train_loss))
