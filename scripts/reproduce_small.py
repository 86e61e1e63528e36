#!/usr/bin/env python
"""Run the reduced-scale reproduction study (docs/reproduction.md), or continue it.

    python scripts/reproduce_small.py                      # every table, 2 runs at a time
    python scripts/reproduce_small.py --tables table3 --dry-run
    python scripts/reproduce_small.py --launcher slurm hydra.launcher.partition=cpu

It prints the plan (runs done and to run per table, each method's lr grid and chosen lr, an
estimate of the time), then runs what is missing and prints each run as it finishes, with
the runs left and an estimate of the time left. Rerunning it skips completed runs and
continues interrupted ones from their checkpoints. Then `make tables figures` rebuilds the
tables and figures from the run directories under results/reduced/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alphaadam.study import (
    REPO,
    STUDY_SWEEPS,
    Progress,
    Study,
    StudyDesignError,
    describe_plan,
    group_state,
    run_local,
    run_slurm,
)

TABLES = {name.removeprefix("reduced_"): name for name in STUDY_SWEEPS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=list(TABLES),
        default=list(TABLES),
        help="which tables, in this order (default: %(default)s)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (local launcher)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for every job and the study block (repeatable), e.g. a quick "
        "pipeline check: --override trainer.max_steps=5 --override study.root=/tmp/check",
    )
    parser.add_argument(
        "launcher_args", nargs="*", help="hydra.launcher.* overrides for --launcher slurm"
    )
    args = parser.parse_intermixed_args(argv)
    if args.launcher_args and args.launcher != "slurm":
        parser.error(f"launcher overrides {args.launcher_args} need --launcher slurm")

    studies = [Study.load(TABLES[t], extra=args.override) for t in args.tables]
    # A table whose place holds runs of an earlier design is left out, loudly, and the
    # others go on: one table's conflict should not stall the rest of the study.
    blocked = {}
    for study in studies:
        try:
            for method, task in study.groups():
                group_state(study, method, task)
        except StudyDesignError as err:
            blocked[study.sweep] = str(err)
    for sweep, why in blocked.items():
        print(f"{sweep}: not run: {why}", file=sys.stderr, flush=True)
    studies = [s for s in studies if s.sweep not in blocked]
    if not studies:
        return 1
    print(describe_plan(studies, args.jobs), flush=True)
    if args.dry_run:
        return 1 if blocked else 0
    progress = Progress(print=lambda line: print(line, flush=True))
    if args.launcher == "slurm":
        failed = run_slurm(studies, progress, args.launcher_args, args.jobs)
    else:
        root = Path(studies[0].spec.root)
        root = root if root.is_absolute() else REPO / root
        failed = run_local(studies, args.jobs, progress, root / ".logs")
    print(describe_plan(studies, args.jobs), flush=True)
    if failed:
        print(f"{len(failed)} run(s) failed:", *[f"  {j.label}" for j in failed], sep="\n")
        return 1
    if blocked:
        print(f"not run (another design's runs in the way): {', '.join(blocked)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
