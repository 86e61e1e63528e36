#!/usr/bin/env python
"""Does the code at HEAD still reproduce the committed runs? (``make check-runs``)

Re-runs a sample of committed study runs from their own resolved ``config.yaml`` (one thread,
as the study ran them) for the first ``--steps`` optimizer steps, stops each there, and
compares every numeric value both logged at the same (kind, step) in ``metrics.jsonl`` (loss,
lr, grad norm, alpha, mask density, step scale, evaluations), wall-clock keys excepted.

    python scripts/check_runs.py                  # the default sample, 50 steps each
    python scripts/check_runs.py --steps 20 results/reduced/reduced_table3/adamw/lr0.008_seed1

``--reference-code DIR`` compares with a re-run by the code in DIR (a checkout of the commit
that made the run, say ``git worktree add /tmp/at-3ff63c8 3ff63c8``) on this machine instead of
the committed records: the committed runs were made on other machines, and a CPU with another
instruction set (AVX2 against AVX-512) vectorises sums differently, so that comparison tells
the code's part from the machine's.

Per run it prints the commit that made it, whether the prefix is bit-identical, the first
(step, key) that differs and the largest relative difference over the prefix, with where it
is. It exits 1 when any run's largest relative difference exceeds ``--tolerance`` (default
1e-3: float rounding that grows over a prefix of 50 steps stays below it on the machine type
that made a run, and a changed update rule, data order or schedule does not; on another
machine type a masked method's mask statistics can pass it, 4.8e-3 in
results/check_runs_vs_old_code.md, so there ``--reference-code`` is the check), and writes the report to ``--report`` (default
``results/check_runs.md``) when given. The default sample is one run per (study, commit that
made its runs): the first by path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_KEYS = {"time", "tokens_per_s", "epoch", "kind", "step"}
STUDIES = ("reduced_table1", "reduced_table2", "reduced_table3", "reduced_scaling")


@dataclass
class Comparison:
    run_dir: Path
    git_sha: str
    compared: int  # values compared
    first_difference: tuple[int, str, float, float] | None  # step, key, committed, now
    max_relative: float
    error: str | None = None
    max_relative_at: tuple[int, str] | None = None  # step, key of the largest difference

    @property
    def identical(self) -> bool:
        return self.error is None and self.first_difference is None


def default_sample(root: Path) -> list[Path]:
    """One committed run per (study, git_sha): the first by path."""
    listed = subprocess.run(
        ["git", "ls-files", "--", str(root)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    chosen: dict[tuple[str, str], Path] = {}
    for name in sorted(n for n in listed if n.endswith("/summary.json")):
        if not (REPO / name).is_file():  # committed, but removed from this checkout
            continue
        summary = json.loads((REPO / name).read_text())
        study = next((s for s in STUDIES if f"/{s}/" in f"/{name}"), None)
        if study is None or summary.get("status") != "completed":
            continue
        chosen.setdefault((study, summary.get("git_sha", "?")), (REPO / name).parent)
    return list(chosen.values())


def records(path: Path) -> dict[tuple[str, int], dict]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[(row["kind"], int(row["step"]))] = row
    return out


def compare(
    committed: dict, fresh: dict, steps: int
) -> tuple[int, tuple | None, float, tuple | None]:
    """(values compared, first difference, largest relative difference, its (step, key))."""
    compared, first, worst, worst_at = 0, None, 0.0, None
    for key in sorted(set(committed) & set(fresh), key=lambda k: (k[1], k[0])):
        if key[1] > steps:
            continue
        a, b = committed[key], fresh[key]
        for name in sorted(set(a) & set(b) - SKIP_KEYS):
            x, y = a[name], b[name]
            if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                continue
            compared += 1
            if x == y or (math.isnan(x) and math.isnan(y)):
                continue
            if first is None:
                first = (key[1], f"{key[0]}.{name}", x, y)
            relative = abs(x - y) / max(abs(x), abs(y), 1e-12)
            if relative > worst:
                worst, worst_at = relative, (key[1], f"{key[0]}.{name}")
    return compared, first, worst, worst_at


def rerun(run_dir: Path, steps: int, workdir: Path, timeout: float, code: Path = REPO) -> Path:
    """The run again from its config.yaml with the code in ``code``, stopped once step
    ``steps`` is logged."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "run"
    trainer = cfg["trainer"]
    trainer.update(run_dir=str(out), resume=False, progress_bar=False, checkpoint_every=0,
                   save_final=False, output_root=str(workdir))  # fmt: skip
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(code / "src"),
                                                     os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    log = (workdir / "log.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(config),
         "--worker-code", str(code)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    try:
        while proc.poll() is None:
            if metrics.is_file() and any(
                json.loads(line).get("step", 0) >= steps and json.loads(line)["kind"] == "train"
                for line in metrics.read_text().splitlines()
                if line.strip()
            ):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no step {steps} within {timeout:.0f} s")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        log.close()
    if not metrics.is_file():
        raise RuntimeError((workdir / "log.txt").read_text()[-2000:])
    return metrics


def check(run_dir: Path, steps: int, timeout: float, reference: Path | None = None) -> Comparison:
    summary = json.loads((run_dir / "summary.json").read_text())
    sha = summary.get("git_sha", "?")
    with tempfile.TemporaryDirectory(prefix="check_runs_") as tmp:
        try:
            fresh = rerun(run_dir, steps, Path(tmp) / "head", timeout)
            expected = run_dir / "metrics.jsonl"
            if reference is not None:
                expected = rerun(run_dir, steps, Path(tmp) / "reference", timeout, reference)
        except (RuntimeError, TimeoutError) as err:
            return Comparison(run_dir, sha, 0, None, math.nan, str(err))
        compared, first, worst, worst_at = compare(records(expected), records(fresh), steps)
    return Comparison(run_dir, sha, compared, first, worst, max_relative_at=worst_at)


def machine() -> str:
    import platform

    import torch

    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    ) if Path("/proc/cpuinfo").is_file() else platform.processor()  # fmt: skip
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def report(results: list[Comparison], steps: int, tolerance: float, head: str, against: str) -> str:
    lines = [
        "# Committed runs re-run at HEAD",
        "",
        f"`python scripts/check_runs.py --steps {steps}` at `{head[:7]}` on {machine()}: each "
        f"run re-run from its config.yaml for {steps} steps (one thread), every value logged at "
        f"the same step compared with {against}. Tolerance on the largest relative difference: "
        f"{tolerance:g}.",
        "",
        "| run | made by | values | bit-identical | first difference (step, key: committed / now) "
        "| largest relative difference (step, key) | within tolerance |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = r.run_dir.relative_to(REPO) if r.run_dir.is_relative_to(REPO) else r.run_dir
        if r.error:
            lines.append(
                f"| `{name}` | `{r.git_sha[:7]}` | — | — | error: {r.error[:120]} | — | no |"
            )
            continue
        first = (
            "—"
            if r.first_difference is None
            else (
                f"{r.first_difference[0]}, {r.first_difference[1]}: "
                f"{r.first_difference[2]:.9g} / {r.first_difference[3]:.9g}"
            )
        )
        where = f" ({r.max_relative_at[0]}, {r.max_relative_at[1]})" if r.max_relative_at else ""
        lines.append(
            f"| `{name}` | `{r.git_sha[:7]}` | {r.compared} | {'yes' if r.identical else 'no'} "
            f"| {first} | {r.max_relative:.2e}{where} "
            f"| {'yes' if r.max_relative <= tolerance else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def worker(config: Path, code: Path) -> None:
    from omegaconf import OmegaConf

    from alphaadam.trainer import main as train_main

    cfg = OmegaConf.load(config)
    # A trainer key added since the run was made takes the code's documented default, and a
    # key that code does not know (added later) is dropped.
    defaults = OmegaConf.load(code / "configs/trainer/default.yaml")
    known = {k: v for k, v in cfg.trainer.items() if k in defaults}
    cfg.trainer = OmegaConf.merge(defaults, known)
    train_main(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run dirs (default: the sample)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--root", type=Path, default=REPO / "results" / "reduced")
    parser.add_argument("--report", type=Path, default=None, help="write the table here")
    parser.add_argument(
        "--reference-code", type=Path, default=None,
        help="compare with a re-run by the code in this checkout, not the committed records",
    )  # fmt: skip
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-code", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.worker_code)
        return 0
    runs = [p.resolve() for p in args.runs] or default_sample(args.root)
    head = (
        subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    results = []
    for run_dir in runs:
        result = check(run_dir, args.steps, args.timeout, args.reference_code)
        results.append(result)
        state = "error" if result.error else ("identical" if result.identical else
                                              f"max rel diff {result.max_relative:.2e}")  # fmt: skip
        print(f"{run_dir} ({result.git_sha[:7]}): {result.compared} values, {state}", flush=True)
    against = (
        "the committed metrics.jsonl"
        if args.reference_code is None
        else f"a re-run by the code in {args.reference_code} on this machine"
    )
    text = report(results, args.steps, args.tolerance, head, against)
    print(text)
    if args.report:
        args.report.write_text(text)
    bad = [r for r in results if r.error or not r.max_relative <= args.tolerance]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
