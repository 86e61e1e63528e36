#!/usr/bin/env python
"""Kill chains: a run SIGKILLed at the checkpoint's weakest moments, resumed until it
completes, must end with a true record and the uninterrupted run's numbers.

Each chain trains the embedded default (``optimizer=alphaadam``, 120 steps, a checkpoint every
40, two kept: the case of the reliability trial) and kills it one or more times, each time at
a named moment of one checkpoint's save, or at a random time; then ``trainer.resume=auto``
runs it to the end. The named moments are the windows of ``alphaadam.checkpoint.save_checkpoint``:

- ``in_save@S``: the first file of step S's temporary folder written, the rest not;
- ``before_rename@S``: step S's temporary folder complete and checked, not renamed;
- ``after_rename@S``: ``step-S`` in place, ``latest`` still naming the one before;
- ``after_link@S``: ``latest`` moved to ``step-S``, the old checkpoints not yet pruned;
- ``random``: the parent sends SIGKILL at a uniformly random time of the run.

A killed segment is a worker process that patches ``os.replace`` / ``torch.save`` to SIGKILL
itself at that moment (nothing in the package changes). After the last segment the chain
checks what a user relies on: status ``completed`` at 120 steps, ``latest`` naming the newest
checkpoint, no more than ``keep`` checkpoints, no temporary debris, no duplicate or missing
metrics record, and every logged value equal to an uninterrupted run's (the ``make
check-runs`` comparison, wall-clock keys excepted).

    python scripts/kill_chains.py                       # the 12 chains, report to stdout
    python scripts/kill_chains.py --report results/kill_chains.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_runs import compare, records  # noqa: E402  (one comparison for both checks)

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS, EVERY, KEEP = 120, 40, 2
RUN = [
    "optimizer=alphaadam",
    f"trainer.max_steps={MAX_STEPS}",
    f"trainer.checkpoint_every={EVERY}",
    f"trainer.keep_checkpoints={KEEP}",
    "trainer.progress_bar=false",
]
POINTS = ("in_save", "before_rename", "after_rename", "after_link")

# Each chain: its kills in order, then a clean resume to the end.
CHAINS: list[list[str]] = [
    ["in_save@40"],
    ["before_rename@40"],
    ["after_rename@40"],
    ["after_rename@80"],
    ["after_link@80"],
    ["after_rename@120"],  # the final checkpoint: the run had logged all 120 steps
    ["in_save@80", "after_rename@120"],
    ["after_rename@40", "after_rename@80"],
    ["before_rename@80", "after_link@120"],
    ["after_rename@40", "after_rename@80", "after_rename@120"],
    ["random", "random"],
    ["random", "random", "random"],
]


@dataclass
class Chain:
    kills: list[str]
    segments: list[str] = field(default_factory=list)  # how each segment ended
    problems: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def install_fault(kill: str) -> None:
    """SIGKILL this process at ``kill`` (``point@step``) of a checkpoint save."""
    point, step = kill.split("@")
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}; valid: {', '.join(POINTS)}")
    name = f"step-{int(step):08d}"

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        dst = Path(dst)
        if point == "before_rename" and dst.name == name:
            die()
        result = real_replace(src, dst, *args, **kwargs)
        if point == "after_rename" and dst.name == name:
            die()
        if point == "after_link" and dst.name == "latest" and os.readlink(dst) == name:
            die()
        return result

    os.replace = replace
    if point == "in_save":
        import torch

        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            result = real_save(obj, f, *args, **kwargs)
            if Path(f).parent.name == f".tmp-{name}":
                die()
            return result

        torch.save = save


def worker(kill: str | None, overrides: list[str]) -> None:
    if kill:
        install_fault(kill)
    sys.argv = [str(REPO / "train.py"), *overrides]
    runpy.run_path(str(REPO / "train.py"), run_name="__main__")


def segment(
    run_dir: Path, kill: str | None, resume: bool, log: Path, kill_after: float | None = None
) -> str:
    overrides = [
        *RUN,
        f"trainer.run_dir={run_dir}",
        f"trainer.resume={'auto' if resume else 'false'}",
    ]
    fault = [] if kill in (None, "random") else ["--kill", kill]
    src = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": src}
    with log.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", *fault, "--", *overrides],
            cwd=run_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode == -signal.SIGKILL:
        return f"killed ({kill})"
    return f"exit {proc.returncode}"


def left_behind(run_dir: Path) -> str:
    """What a kill left: where ``latest`` points, the checkpoint folders, the last step
    logged (so the report shows which window each kill hit)."""
    if not (run_dir / "summary.json").is_file():
        return "no run record yet"
    ckpts = run_dir / "checkpoints"
    latest = os.readlink(ckpts / "latest") if (ckpts / "latest").is_symlink() else "none"
    folders = sorted(p.name.replace("step-0000", "") for p in ckpts.glob("*step-*"))
    metrics = run_dir / "metrics.jsonl"
    last, torn = 0, False
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            last, torn = max(last, json.loads(line)["step"]), False
        except (ValueError, KeyError):  # a line the kill tore (the resume drops it)
            torn = True
    return (
        f"latest {latest.replace('step-0000', '')}, folders [{' '.join(folders)}], "
        f"logged to step {last}{', torn last line' if torn else ''}"
    )


def check(run_dir: Path, reference: dict) -> tuple[list[str], int]:
    problems = []
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("status") != "completed" or summary.get("steps") != MAX_STEPS:
        problems.append(f"summary says {summary.get('status')}, {summary.get('steps')} steps")
    ckpts = run_dir / "checkpoints"
    newest = f"step-{MAX_STEPS:08d}"
    latest = os.readlink(ckpts / "latest") if (ckpts / "latest").is_symlink() else None
    if latest != newest or not (ckpts / newest).is_dir():
        problems.append(f"latest -> {latest}, not {newest}")
    kept = sorted(p.name for p in ckpts.glob("step-*"))
    if len(kept) > KEEP:
        problems.append(f"{len(kept)} checkpoints kept ({', '.join(kept)}), keep is {KEEP}")
    debris = sorted(p.name for p in [*ckpts.glob(".tmp-*"), *run_dir.glob(".*.tmp")])
    if debris:
        problems.append(f"left behind: {', '.join(debris)}")
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    keys = [(x["kind"], int(x["step"])) for x in lines]
    if len(keys) != len(set(keys)):
        problems.append(f"{len(keys) - len(set(keys))} duplicate metrics records")
    fresh = records(run_dir / "metrics.jsonl")
    if set(fresh) != set(reference):
        problems.append(
            f"records differ: missing {sorted(set(reference) - set(fresh))[:3]}, "
            f"extra {sorted(set(fresh) - set(reference))[:3]}"
        )
    compared, first, worst, _ = compare(reference, fresh, MAX_STEPS)
    if first is not None:
        step, key, a, b = first
        problems.append(f"step {step} {key}: {a!r} uninterrupted, {b!r} here (max rel {worst:.1e})")
    return problems, compared


def run_chain(kills: list[str], workdir: Path, reference: dict, ref_seconds: float, rng) -> Chain:
    chain = Chain(kills)
    run_dir = workdir / "run"
    log = workdir / "log.txt"
    for i, kill in enumerate(kills):
        after = rng.uniform(0.2, 0.95) * ref_seconds if kill == "random" else None
        ended = segment(run_dir, kill, resume=i > 0, log=log, kill_after=after)
        chain.segments.append(f"{ended}: {left_behind(run_dir)}")
    chain.segments.append(segment(run_dir, None, resume=bool(kills), log=log))
    if chain.segments[-1] != "exit 0":
        chain.problems.append(f"the last resume ended with {chain.segments[-1]}")
    try:
        problems, chain.compared = check(run_dir, reference)
        chain.problems += problems
    except (OSError, ValueError) as err:
        chain.problems.append(f"{type(err).__name__}: {err}")
    return chain


def report(chains: list[Chain], ref_seconds: float, head: str) -> str:
    lines = [
        "# Kill chains: SIGKILL at the checkpoint's windows, then resume",
        "",
        f"`python scripts/kill_chains.py` at `{head}`: the embedded default with AlphaAdam, "
        f"{MAX_STEPS} steps, a checkpoint every {EVERY}, {KEEP} kept (an uninterrupted run: "
        f"{ref_seconds:.1f} s). Each chain is killed as listed, then resumed with "
        "`trainer.resume=auto` to the end; a chain passes when the record is true (status, "
        "steps, `latest`, kept checkpoints, no debris, no duplicate record) and every logged "
        "value equals the uninterrupted run's. Generated; do not edit.",
        "",
        "| chain | kills | segments | values compared | result |",
        "|---|---|---|---|---|",
    ]
    for i, c in enumerate(chains, 1):
        result = "pass" if c.ok else "FAIL: " + "; ".join(c.problems)
        lines.append(
            f"| {i} | {', '.join(c.kills)} | {'; '.join(c.segments)} | {c.compared} | {result} |"
        )
    passed = sum(c.ok for c in chains)
    lines += ["", f"{passed} of {len(chains)} chains pass."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kill", help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help="also write the report here (markdown)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random kill times")
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.kill, args.overrides)
        return 0
    rng = random.Random(args.seed)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="kill_chains_") as tmp:
        ref_dir = Path(tmp) / "reference"
        ref_dir.mkdir()
        start = time.monotonic()
        ended = segment(ref_dir / "run", None, resume=False, log=ref_dir / "log.txt")
        ref_seconds = time.monotonic() - start
        if ended != "exit 0":
            print((ref_dir / "log.txt").read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"the uninterrupted run ended with {ended}")
        reference = records(ref_dir / "run" / "metrics.jsonl")
        chains = []
        for i, kills in enumerate(CHAINS, 1):
            workdir = Path(tmp) / f"chain{i}"
            workdir.mkdir()
            chain = run_chain(kills, workdir, reference, ref_seconds, rng)
            print(f"chain {i}: {', '.join(kills)}: {'pass' if chain.ok else chain.problems}")
            chains.append(chain)
    text = report(chains, ref_seconds, head)
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0 if all(c.ok for c in chains) else 1


if __name__ == "__main__":
    sys.exit(main())
