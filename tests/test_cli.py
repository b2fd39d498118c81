"""The command line: the demo prints one row per depth with the fitted numbers; bad input
gets its message and exit status 2."""

import numpy as np
import pytest

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


def test_bad_input_prints_its_message_and_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\ndepth = [1\n")
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "fastdmf sweep: error: TOMLDecodeError" in err and "Traceback" not in err
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "FileNotFoundError" in capsys.readouterr().err
    runs = tmp_path / "runs.csv"
    runs.write_text("a,b\n1,2\n")
    assert main(["reproduce", "table", "--runs", str(runs), "--out", str(tmp_path)]) == 2
    assert "lack the column(s) ['kind', 'method', 'n_observed']" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["--traceback", "sweep", str(tmp_path / "missing.toml")])


def test_python_dash_m_runs_the_command_line(same_fastdmf):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fastdmf", "--version"],
        capture_output=True,
        text=True,
        check=True,
        **same_fastdmf,
    )
    assert out.stdout.strip() == f"fastdmf {fastdmf.__version__}"
