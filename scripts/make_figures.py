#!/usr/bin/env python
"""Render the paper's Figures 2-5 (PNG + PDF) from every run directory under a root.

    python scripts/make_figures.py [--root results] [--out results/figures]

A figure with no matching runs is skipped and named in the output.
"""

from __future__ import annotations

import argparse
import sys

from alphaadam.results import load_runs
from alphaadam.results.figures import GPT2_SIZES, make_figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="results", help="searched recursively for run dirs")
    parser.add_argument("--out", default="results/figures")
    parser.add_argument(
        "--gpt2-experiments",
        default=",".join(GPT2_SIZES),
        help="comma-separated experiments, one Figure 2 panel each",
    )
    parser.add_argument(
        "--fig4-experiment", default=None, help="experiment for Figure 4 (default: task=gsm8k)"
    )
    parser.add_argument("--fig5-experiment", default="gpt2_small")
    parser.add_argument(
        "--alpha-step",
        type=int,
        default=None,
        help="step of the per-tensor alpha panel (default: the middle recorded step)",
    )
    parser.add_argument(
        "--alpha-optimizer", default="alphaadam", help="optimizer whose alpha Figures 4/5 show"
    )
    args = parser.parse_args(argv)

    runs = load_runs(args.root)
    print(runs.report())
    report = make_figures(
        runs,
        args.out,
        gpt2_experiments=tuple(e for e in args.gpt2_experiments.split(",") if e),
        alpha_experiment_fig4=args.fig4_experiment,
        alpha_experiment_fig5=args.fig5_experiment,
        alpha_step_value=args.alpha_step,
        alpha_optimizer=args.alpha_optimizer,
    )
    for reason in report.skipped:
        print(f"skipped {reason}")
    for path in report.written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
