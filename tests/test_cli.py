"""The command line: the demo prints one row per depth with the fitted numbers."""

import numpy as np

import fastdmf
from fastdmf.cli import main


def test_demo_prints_the_fits(capsys):
    args = ["--size", "20", "--rank", "2", "--observed", "150", "--max-steps", "400"]
    assert main(["demo", "--depths", "1", "2", *args]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    problem = fastdmf.synthetic_completion(shape=(20, 20), rank=2, n_observed=150, seed=0)
    res = fastdmf.fit(problem, depth=2, seed=0, max_steps=400, record=None)
    assert rows[1][1] == res.status and int(rows[1][2]) == res.n_steps
    assert float(rows[1][3]) == float(f"{res.trajectory.test_error[-1]:.3e}")
    assert np.isclose(float(rows[1][4]), res.trajectory.effective_rank[-1], atol=0.01)


def test_info(capsys):
    assert main(["info"]) == 0
    assert "numba" in capsys.readouterr().out
