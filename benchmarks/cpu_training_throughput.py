"""End-to-end training tokens/s of AlphaAdam against AdamW on the CPU experiments.

Each case trains with ``python train.py`` once per optimizer per repeat, in fresh processes,
the optimizers in a rotated order per repeat (so a slow phase of a shared machine does not
always hit the same one), with the experiments' own settings: the heap allocator and
``fused_optimizer: true`` (AlphaAdam's C++ step, torch's fused CPU AdamW). Recorded
per run: the training tokens/s it logged (tokens over the training segment's wall time,
start-up excluded; ``benchmarks/cpu_allocator.py`` runs the process) and the optimizer
path its config resolved to. Reported per case and optimizer: the median tokens/s and its
ratio to AdamW's, both as a ratio of medians and as the median of the per-repeat ratios.

    python benchmarks/cpu_training_throughput.py                    # every case, 2 repeats
    python benchmarks/cpu_training_throughput.py --cases smoke --repeats 10 --name smoke

Results go to ``results/benchmarks/cpu_training_throughput[_<name>].{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from cpu_allocator import CASES, DATA, REPO, run_once

OPTIMIZERS = ["adamw", "alphaadam", "alphaadam_onepass"]
BASELINE = "adamw"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--optimizers", nargs="*", default=OPTIMIZERS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    parser.add_argument(
        "--name", help="suffix of the output files, so a run of some cases keeps its own"
    )
    args = parser.parse_args(argv)
    stem = "cpu_training_throughput" + (f"_{args.name}" if args.name else "")
    if BASELINE not in args.optimizers:
        parser.error(f"--optimizers must include the baseline {BASELINE!r}")
    if any(c != "smoke" for c in args.cases) and not DATA.is_dir():
        raise SystemExit(f"the shakespeare cases read {DATA}, which does not exist")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            runs: dict[str, list[dict]] = {name: [] for name in args.optimizers}
            for repeat in range(args.repeats):
                shift = repeat % len(args.optimizers)
                for name in args.optimizers[shift:] + args.optimizers[:shift]:
                    overrides = [*CASES[case], f"optimizer={name}"]
                    result = run_once(overrides, "heap", args.threads, Path(tmp))
                    runs[name].append(result)
                    print(
                        f"{case} {name}: {result['train_tokens_per_s']:,.0f} tokens/s "
                        f"(wall {result['wall_s']:.1f} s)",
                        flush=True,
                    )
            base = [r["train_tokens_per_s"] for r in runs[BASELINE]]
            for name, results in runs.items():
                speeds = [r["train_tokens_per_s"] for r in results]
                rows.append(
                    {
                        "case": case,
                        "optimizer": name,
                        "tokens_per_s": speeds,
                        "median_tokens_per_s": statistics.median(speeds),
                        "x_adamw_of_medians": statistics.median(speeds) / statistics.median(base),
                        "x_adamw_median_per_repeat": statistics.median(
                            s / b for s, b in zip(speeds, base)
                        ),
                        "optimizer_fused": results[0]["optimizer_fused"],
                    }
                )

    report = {
        "benchmark": "cpu_training_throughput",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable.split("/")[-1], *sys.argv]),
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| case | optimizer | optimizer.fused | tokens/s per repeat | median tokens/s "
        "| × adamw (medians) | × adamw (median of per-repeat ratios) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['optimizer']} | {row['optimizer_fused']} | "
            + ", ".join(f"{s:,.0f}" for s in row["tokens_per_s"])
            + f" | {row['median_tokens_per_s']:,.0f} | {row['x_adamw_of_medians']:.3f} "
            f"| {row['x_adamw_median_per_repeat']:.3f} |"
        )
    lines += [
        "",
        f"Training tokens/s of the CPU experiments. Measured by `{report['command']}` on "
        f"{report['date']}, {report['machine']}, {args.threads} thread(s), {args.repeats} "
        f"repeat(s) per optimizer in rotated order, load average at the end "
        f"{report['load_average_at_end'][0]:.2f}. Generated; do not edit.",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
