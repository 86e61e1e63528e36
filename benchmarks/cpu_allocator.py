"""CPU training with glibc's default allocator against the heap setting (trainer.cpu_allocator).

Each case trains with ``python train.py`` twice in fresh processes, ``cpu_allocator=system``
and ``cpu_allocator=heap``, alternating which goes first per repeat, and records for each
process its wall time, user and system CPU time (``os.wait4``), the training tokens/s the
run logged (tokens over the training segment's wall time, start-up excluded) and whether
every logged loss is bit-identical between the two settings.

    python benchmarks/cpu_allocator.py                       # the three default cases
    python benchmarks/cpu_allocator.py --cases smoke --repeats 3

Results go to ``results/benchmarks/cpu_allocator.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHAKESPEARE = [
    "experiment=shakespeare_cpu",
    f"data.path={DATA / 'tinyshakespeare' / 'input.txt'}",
]
CASES: dict[str, list[str]] = {
    # `python train.py`: the smoke default.
    "smoke": [],
    # The command: GPT-2 BPE from local files.
    "shakespeare_cpu_gpt2bpe": [
        *SHAKESPEARE,
        f"data.tokenizer_dir={DATA / 'tokenizers' / 'gpt2'}",
    ],
    "shakespeare_cpu_byte": [*SHAKESPEARE, "data.tokenizer=byte"],
}


def run_once(overrides: list[str], allocator: str, threads: int, workdir: Path) -> dict:
    out_root = workdir / f"{allocator}_{time.monotonic_ns()}"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        *overrides,
        f"trainer.cpu_allocator={allocator}",
        f"trainer.output_root={out_root}",
        "trainer.progress_bar=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"train.py failed ({shlex.join(cmd)}):\n{output[-3000:]}")
    (run_dir,) = [p.parent for p in out_root.rglob("summary.json")]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    summary = json.loads((run_dir / "summary.json").read_text())
    config = OmegaConf.load(run_dir / "config.yaml")  # resolved when the run started
    train = [r for r in records if r["kind"] == "train"]
    return {
        "optimizer": config.optimizer.name,
        "optimizer_fused": config.optimizer.get("fused"),
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "sys_share": usage.ru_stime / wall,
        "train_tokens_per_s": summary["tokens"] / summary["wall_time_s"],
        "losses": [r["loss"] for r in train],
        "max_rss_mib": usage.ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    if any(c != "smoke" for c in args.cases) and not DATA.is_dir():
        raise SystemExit(f"the shakespeare cases read {DATA}, which does not exist")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            runs: dict[str, list[dict]] = {"system": [], "heap": []}
            for repeat in range(args.repeats):
                order = ("system", "heap") if repeat % 2 == 0 else ("heap", "system")
                for allocator in order:
                    result = run_once(CASES[case], allocator, args.threads, Path(tmp))
                    runs[allocator].append(result)
                    print(
                        f"{case} {allocator}: wall {result['wall_s']:.1f} s, sys "
                        f"{result['sys_s']:.1f} s ({result['sys_share']:.0%}), "
                        f"{result['train_tokens_per_s']:,.0f} tokens/s",
                        flush=True,
                    )
            identical = all(
                s["losses"] == h["losses"] for s, h in zip(runs["system"], runs["heap"])
            )
            row = {"case": case, "overrides": CASES[case], "identical_losses": identical}
            for allocator, results in runs.items():
                for key in ("wall_s", "user_s", "sys_s", "sys_share", "train_tokens_per_s"):
                    row[f"{allocator}_{key}"] = statistics.median(r[key] for r in results)
                row[f"{allocator}_max_rss_mib"] = max(r["max_rss_mib"] for r in results)
            row["speedup_tokens_per_s"] = (
                row["heap_train_tokens_per_s"] / row["system_train_tokens_per_s"]
            )
            rows.append(row)

    report = {
        "benchmark": "cpu_allocator",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_allocator.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# CPU allocator: glibc default vs `trainer.cpu_allocator=heap`",
        "",
        f"`{report['command']}` on {report['date']}, {args.threads} thread(s), "
        f"median of {args.repeats} alternating repeat(s). Generated; do not edit.",
        "",
        "| case | allocator | wall s | user s | sys s | sys / wall | train tokens/s | max RSS MiB | losses bit-identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        for allocator in ("system", "heap"):
            lines.append(
                f"| {row['case']} | {allocator} | {row[f'{allocator}_wall_s']:.1f} | "
                f"{row[f'{allocator}_user_s']:.1f} | {row[f'{allocator}_sys_s']:.1f} | "
                f"{row[f'{allocator}_sys_share']:.0%} | {row[f'{allocator}_train_tokens_per_s']:,.0f} | "
                f"{row[f'{allocator}_max_rss_mib']:,.0f} | {'yes' if row['identical_losses'] else 'NO'} |"
            )
    lines.append("")
    lines.append(
        "Training tokens/s with the heap setting, relative to glibc's default: "
        + ", ".join(f"{r['case']} {r['speedup_tokens_per_s']:.2f}x" for r in rows)
        + "."
    )
    (args.out / "cpu_allocator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
