#!/usr/bin/env python
"""Rebuild the paper's Tables 1-3 (Markdown + LaTeX) from every run directory under a root.

    python scripts/make_tables.py [--root results] [--out results/tables]

Malformed run directories and runs that did not complete are listed and left out.
"""

from __future__ import annotations

import argparse
import sys

from alphaadam.results import load_runs
from alphaadam.results.tables import build_all, load_paper, write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="results", help="searched recursively for run dirs")
    parser.add_argument("--out", default="results/tables")
    parser.add_argument("--paper", default="results/paper/tables.yaml")
    parser.add_argument(
        "--glue-value",
        choices=("best", "final"),
        default="best",
        help="which summary section feeds Table 1: the best eval epoch or the final one",
    )
    parser.add_argument("--gsm8k-accuracy-key", default="accuracy")
    parser.add_argument("--table3-experiment", default="ablation_table3")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when any run dir is malformed"
    )
    args = parser.parse_args(argv)

    runs = load_runs(args.root)
    print(runs.report())
    tables = build_all(
        runs,
        load_paper(args.paper),
        glue_value=args.glue_value,
        gsm8k_accuracy_key=args.gsm8k_accuracy_key,
        table3_experiment=args.table3_experiment,
    )
    for table in tables:
        for problem in table.problems:
            print(f"{table.name}: {problem}")
    for path in write_tables(tables, args.out):
        print(f"wrote {path}")
    return 1 if args.strict and runs.malformed else 0


if __name__ == "__main__":
    sys.exit(main())
