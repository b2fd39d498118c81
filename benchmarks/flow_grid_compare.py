"""The paper's completion grid by the flow against the same grid by GroupRMSprop, cell by cell.

Reads two ``table.csv`` files written by ``fastdmf reproduce table --full --kinds completion``
(by default docs/reproduction/table_full_completion.csv and its ``_flow`` twin) and prints,
for every GroupRMSprop (observations, depth, init, lr) cell, its mean reconstruction error
beside the flow cell of the same (observations, depth, init), their ratio, the mean steps
(GroupRMSprop) and gradient evaluations (flow), and how many cells lie within ``--within``
(10%).

A flow has no learning rate: the flow grid runs one flow per (problem, depth, init, seed) for
every lr, and its table.csv has one cell per (observations, depth, init) with an empty lr. A
flow table written before the lr axis collapsed has one cell per lr, each the same flow from
another first trial step; the cells of lr ``--first-step`` (1e-3, the first of the paper's
lrs and the collapsed grid's first step) stand for the flow then, and the largest gap to its
other lrs' cells is printed.

Usage: ``python benchmarks/flow_grid_compare.py [GRM_TABLE FLOW_TABLE] [--within 0.1]``
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "reproduction"


def _rows(path):
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["method"].startswith("depth")]


def read_grm(path):
    """``{(obs, method, init, lr): row}`` of a GroupRMSprop table.csv."""
    return {
        (int(r["n_observed"]), r["method"], float(r["init_scale"]), float(r["lr"])): r
        for r in _rows(path)
    }


def read_flow(path, first_step=1e-3):
    """``({(obs, method, init): row}, gap)`` of a flow table.csv: its cells with an empty
    lr or, in a table with one cell per lr, those of lr ``first_step``; ``gap`` is the
    largest relative difference of the reconstruction error between the cells of other lrs
    and the chosen one (None when the table has one cell per key)."""
    rows, cells, others = _rows(path), {}, []
    for r in rows:
        key = (int(r["n_observed"]), r["method"], float(r["init_scale"]))
        lr = r["lr"]
        if lr == "" or float(lr) == first_step:
            if key in cells:
                raise ValueError(f"{path}: two flow cells for {key} (empty lr and lr {lr})")
            cells[key] = r
        else:
            others.append((key, r))
    if not cells:
        raise ValueError(
            f"{path}: no flow cell with an empty lr or lr {first_step:g}; give --first-step"
        )
    gap = None
    for key, r in others:
        if key not in cells:
            raise ValueError(f"{path}: a cell of lr {r['lr']} for {key} but none of the flow")
        ratio = float(r["recon_error_mean"]) / float(cells[key]["recon_error_mean"])
        gap = max(gap or 0.0, abs(ratio - 1.0))
    return cells, gap


def compare(grm, flow, within):
    """One line per GroupRMSprop cell that has a flow cell: ``(key, grm row, flow row,
    ratio, inside)``, in the order (obs, depth, init descending, lr descending)."""
    out = []
    for key in sorted(grm, key=lambda k: (k[0], k[1], -k[2], -k[3])):
        f = flow.get(key[:3])
        if f is None:
            continue
        g = grm[key]
        ratio = float(f["recon_error_mean"]) / float(g["recon_error_mean"])
        out.append((key, g, f, ratio, abs(ratio - 1.0) <= within))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "tables",
        nargs="*",
        default=[DOCS / "table_full_completion.csv", DOCS / "table_full_completion_flow.csv"],
    )
    parser.add_argument("--within", type=float, default=0.10)
    parser.add_argument(
        "--first-step",
        type=float,
        default=1e-3,
        help="in a flow table with one cell per lr, the lr whose cells stand for the flow",
    )
    args = parser.parse_args(argv)
    if len(args.tables) != 2:
        parser.error("give two tables: the GroupRMSprop table.csv, then the flow's")
    grm = read_grm(args.tables[0])
    flow, gap = read_flow(args.tables[1], args.first_step)
    lines = compare(grm, flow, args.within)
    print(
        "| obs | depth | init | lr | GroupRMSprop error | steps | flow error (every lr) | "
        "evals | flow / GroupRMSprop |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for key, g, f, ratio, ok in lines:
        evals = float(f.get("evals_mean") or f["steps_mean"])
        mark = "" if ok else "**"
        print(
            f"| {key[0]} | {key[1][-1]} | {key[2]:g} | {key[3]:g} | "
            f"{float(g['recon_error_mean']):.3g} | {float(g['steps_mean']):,.0f} | "
            f"{float(f['recon_error_mean']):.3g} | {evals:,.0f} | {mark}{ratio:.3f}{mark} |"
        )
    outside = [(key, ratio) for key, _, _, ratio, ok in lines if not ok]
    print()
    if gap is not None:
        print(
            f"The flow table has one cell per lr (written before the lr axis collapsed): its "
            f"lr {args.first_step:g} cells stand for the flow; its other lrs' cells differ "
            f"from them by up to {100 * gap:.1f}%."
        )
    print(
        f"{len(lines) - len(outside)}/{len(lines)} cells within {100 * args.within:g}% of "
        "GroupRMSprop; outside: "
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
