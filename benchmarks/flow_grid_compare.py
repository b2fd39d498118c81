"""The paper's completion grid by the flow against the same grid by GroupRMSprop, cell by cell.

Reads two ``table.csv`` files written by ``fastdmf reproduce table --full --kinds completion``
(by default docs/reproduction/table_full_completion.csv and its ``_flow`` twin) and prints,
for every (observations, depth, init, lr) cell, the mean reconstruction error of each and
their ratio, the mean steps (GroupRMSprop) and gradient evaluations (flow), and how many
cells lie within ``--within`` (10%).

Usage: ``python benchmarks/flow_grid_compare.py [GRM_TABLE FLOW_TABLE] [--within 0.1]``
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "reproduction"


def read(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        (int(r["n_observed"]), r["method"], float(r["init_scale"]), float(r["lr"])): r
        for r in rows
        if r["method"].startswith("depth")
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "tables",
        nargs="*",
        default=[DOCS / "table_full_completion.csv", DOCS / "table_full_completion_flow.csv"],
    )
    parser.add_argument("--within", type=float, default=0.10)
    args = parser.parse_args(argv)
    grm, flow = (read(p) for p in args.tables)
    print(
        "| obs | depth | init | lr | GroupRMSprop error | steps | flow error | evals | "
        "flow / GroupRMSprop |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    inside, outside = 0, []
    for key in sorted(grm, key=lambda k: (k[0], k[1], -k[2], -k[3])):
        if key not in flow:
            continue
        g, f = grm[key], flow[key]
        ratio = float(f["recon_error_mean"]) / float(g["recon_error_mean"])
        ok = abs(ratio - 1.0) <= args.within
        inside += ok
        if not ok:
            outside.append((key, ratio))
        evals = float(f.get("evals_mean") or f["steps_mean"])
        print(
            f"| {key[0]} | {key[1][-1]} | {key[2]:g} | {key[3]:g} | "
            f"{float(g['recon_error_mean']):.3g} | {float(g['steps_mean']):,.0f} | "
            f"{float(f['recon_error_mean']):.3g} | {evals:,.0f} | "
            f"{'**' if not ok else ''}{ratio:.3f}{'**' if not ok else ''} |"
        )
    total = inside + len(outside)
    print()
    print(
        f"{inside}/{total} cells within {100 * args.within:g}% of GroupRMSprop; outside: "
        + (
            ", ".join(
                f"{k[0]} obs depth {k[1][-1]} init {k[2]:g} lr {k[3]:g} ({r:.3f}x)"
                for k, r in outside
            )
            or "none"
        )
    )


if __name__ == "__main__":
    main()
