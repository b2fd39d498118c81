"""fastdmf reproduce theory: factorized flow = end-to-end flow, and the singular-value
dynamics of Arora et al. (2019) hold along the trajectory."""

import csv

from fastdmf.cli import main


def test_reproduce_theory_quick(tmp_path, capsys):
    out = tmp_path / "theory"
    assert main(["reproduce", "theory", "--out", str(out)]) == 0
    with open(out / "theory.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 26
    assert max(float(r["factorized_vs_e2e"]) for r in rows) < 1e-6
    assert max(float(r["sv_rate_gap"]) for r in rows) < 1e-3
    # gradient descent with a finite step is visibly off the flow while W moves fast
    assert max(float(r["gd_vs_e2e"]) for r in rows) > 1e-4
    assert "factorized vs e2e" in (out / "theory.md").read_text()
    assert "max ||W_factorized - W_e2e||" in capsys.readouterr().out
