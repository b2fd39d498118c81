"""The paper's synthetic experiment (Arora et al. 2019, section 5), with its default setup.

About 30,000 GroupRMSprop steps per depth; marked slow, run in full by CI (tens of seconds).
"""

import pytest

import fastdmf


@pytest.mark.slow
def test_depth_orders_reconstruction_as_in_the_paper(paper):
    errors = {}
    for depth in (1, 2, 3):
        res = fastdmf.fit(paper, depth=depth, seed=0, record=None)
        assert res.status == "converged", (depth, res)
        errors[depth] = res.trajectory.test_error[-1]
        if depth == 3:
            assert res.trajectory.effective_rank[-1] < 5.5
    m, n = paper.shape
    assert errors[1] == pytest.approx(1 - paper.n_observed / (m * n), abs=0.03)
    assert errors[3] < 1e-3
    assert errors[3] < errors[2] < errors[1]
