"""Load and validate run directories (format: ``docs/run_dir.md``).

A run directory is any directory holding ``summary.json``. Every directory that looks like a
run (it has ``summary.json``, ``metrics.jsonl`` or ``config.yaml`` beside one of them) is
checked; a malformed one is reported with the file and the reason and then left out, so a
broken run can never be mixed silently into a table. Runs whose status is not ``completed``
are left out too, and reported separately (they are expected during a sweep).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
MASK_STATS = "mask_stats.jsonl"
CONFIG = "config.yaml"

VALID_STATUSES = ("running", "completed", "failed", "interrupted")
VALID_TASKS = ("lm", "glue", "gsm8k")
# Directories that never hold runs of their own (checkpoint payloads, submitit logs, Hydra),
# and `superseded/`: runs of an earlier design kept as a record, never counted with the runs
# that replaced them (results/superseded/README.md; read them with --root pointed inside).
_PRUNED_DIRS = {
    "checkpoints", ".submitit", ".hydra", "wandb", "tables", "figures", "paper", "superseded"
}  # fmt: skip

_REQUIRED_SUMMARY: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "experiment": (str,),
    "task": (str,),
    "dataset": (str,),
    "optimizer": (str,),
    "lr": (int, float),
    "seed": (int,),
    "max_steps": (int,),
    "steps": (int,),
    "final": (dict,),
    "best": (dict, type(None)),  # null when the run had no evaluation
    "primary_metric": (str,),
    "primary_mode": (str,),
}


@dataclass(frozen=True)
class Problem:
    """Why one run directory was left out."""

    run_dir: Path
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.run_dir / self.file}: {self.message}"


@dataclass
class Run:
    """One validated, completed run."""

    path: Path
    summary: dict[str, Any]
    metrics: pd.DataFrame
    mask_stats: pd.DataFrame | None = None

    @property
    def optimizer(self) -> str:
        return self.summary["optimizer"]

    @property
    def experiment(self) -> str:
        return self.summary["experiment"]

    @property
    def lr(self) -> float:
        return float(self.summary["lr"])

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])

    @functools.cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved ``config.yaml`` (read on first use)."""
        loaded = yaml.safe_load((self.path / CONFIG).read_text())
        return loaded if isinstance(loaded, dict) else {}

    @property
    def scale(self) -> str:
        """What scale the run is (the config's ``scale``; runs from before the key: "paper")."""
        return str(self.config.get("scale") or "paper")

    def train_curve(self) -> pd.DataFrame:
        return self.metrics[self.metrics["kind"] == "train"].sort_values("step")

    def eval_curve(self) -> pd.DataFrame:
        return self.metrics[self.metrics["kind"] == "eval"].sort_values("step")


@dataclass
class RunSet:
    """Everything found under a results root."""

    root: Path
    runs: list[Run] = field(default_factory=list)
    malformed: list[Problem] = field(default_factory=list)
    not_completed: list[Problem] = field(default_factory=list)

    def select(self, **equal: Any) -> list[Run]:
        """Runs whose summary fields equal the given values (a tuple/list value means 'any of')."""
        chosen = []
        for run in self.runs:
            ok = True
            for key, want in equal.items():
                have = run.summary.get(key)
                if isinstance(want, (tuple, list, set)):
                    ok = have in want
                else:
                    ok = have == want
                if not ok:
                    break
            if ok:
                chosen.append(run)
        return chosen

    def summaries(self) -> pd.DataFrame:
        """One row per run: the scalar summary fields plus ``path``."""
        rows = []
        for run in self.runs:
            row = {k: v for k, v in run.summary.items() if not isinstance(v, (dict, list))}
            row["path"] = str(run.path)
            rows.append(row)
        return pd.DataFrame(rows)

    def report(self) -> str:
        lines = [f"{len(self.runs)} completed run(s) under {self.root}"]
        if self.not_completed:
            lines.append(f"{len(self.not_completed)} run(s) excluded (not completed):")
            lines += [f"  - {p}" for p in self.not_completed]
        if self.malformed:
            lines.append(f"{len(self.malformed)} malformed run dir(s) skipped:")
            lines += [f"  - {p}" for p in self.malformed]
        return "\n".join(lines)


class RunDirError(ValueError):
    def __init__(self, file: str, message: str):
        super().__init__(message)
        self.file = file
        self.message = message


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (recursively) that hold any run-directory file."""
    found = []
    for path in sorted(_walk(root)):
        names = {p.name for p in path.iterdir() if p.is_file()}
        if SUMMARY in names or METRICS in names or (CONFIG in names and MASK_STATS in names):
            found.append(path)
    return found


def _walk(root: Path) -> Iterable[Path]:
    yield root
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.is_symlink() and child.name not in _PRUNED_DIRS:
            yield from _walk(child)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY
    if not path.is_file():
        raise RunDirError(SUMMARY, "missing (every run directory must have one)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(SUMMARY, f"not valid JSON ({err})") from err
    if not isinstance(summary, dict):
        raise RunDirError(SUMMARY, f"must be a JSON object, got {type(summary).__name__}")
    status = summary.get("status")
    if status not in VALID_STATUSES:
        raise RunDirError(SUMMARY, f"status={status!r}; valid: {', '.join(VALID_STATUSES)}")
    return summary


def _validate_summary(summary: dict[str, Any]) -> None:
    for key, types in _REQUIRED_SUMMARY.items():
        if key not in summary:
            raise RunDirError(SUMMARY, f"missing key {key!r}")
        value = summary[key]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in types)
            raise RunDirError(SUMMARY, f"{key}={value!r} should be {want}")
    if summary["task"] not in VALID_TASKS:
        raise RunDirError(SUMMARY, f"task={summary['task']!r}; valid: {', '.join(VALID_TASKS)}")
    if summary["primary_mode"] not in ("min", "max"):
        raise RunDirError(SUMMARY, f"primary_mode={summary['primary_mode']!r}; valid: min, max")
    if not (summary["lr"] > 0 and math.isfinite(summary["lr"])):
        raise RunDirError(SUMMARY, f"lr={summary['lr']!r} must be a positive finite number")
    if summary["best"] is None:
        summary["best"] = {}
    for section in ("final", "best"):
        for key, value in summary[section].items():
            if value is not None and not _is_number(value):
                raise RunDirError(SUMMARY, f"{section}.{key}={value!r} is not a number")


def _read_jsonl(run_dir: Path, name: str) -> list[dict[str, Any]]:
    records = []
    with open(run_dir / name) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise RunDirError(name, f"line {lineno} is not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise RunDirError(name, f"line {lineno} is not a JSON object")
            records.append(record)
    return records


def _read_metrics(run_dir: Path) -> pd.DataFrame:
    if not (run_dir / METRICS).is_file():
        raise RunDirError(METRICS, "missing")
    records = _read_jsonl(run_dir, METRICS)
    for lineno, rec in enumerate(records, 1):
        kind = rec.get("kind")
        if kind not in ("train", "eval"):
            raise RunDirError(METRICS, f"record {lineno}: kind={kind!r}; valid: train, eval")
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RunDirError(METRICS, f"record {lineno}: step={step!r} is not a step number")
        # The trainer writes a non-finite loss as null; a missing or non-numeric one is an error.
        key = "loss" if kind == "train" else "fraction"
        value = rec.get(key, "missing")
        if not (_is_number(value) or (key == "loss" and value is None)):
            raise RunDirError(METRICS, f"record {lineno} ({kind}): {key}={value!r} is not a number")
    frame = pd.DataFrame(records, columns=None if records else ["kind", "step"])
    # A resumed run re-logs the steps between its last checkpoint and the interruption;
    # the later record is the one on the resumed (surviving) trajectory.
    return frame.drop_duplicates(subset=["kind", "step"], keep="last").reset_index(drop=True)


def _read_mask_stats(run_dir: Path) -> pd.DataFrame | None:
    if not (run_dir / MASK_STATS).is_file():
        return None
    records = _read_jsonl(run_dir, MASK_STATS)
    for lineno, rec in enumerate(records, 1):
        for key in ("step", "param", "alpha", "mask_density"):
            if key not in rec:
                raise RunDirError(MASK_STATS, f"record {lineno}: missing key {key!r}")
        if not _is_number(rec["alpha"]):
            raise RunDirError(
                MASK_STATS, f"record {lineno}: alpha={rec['alpha']!r} is not a number"
            )
    frame = pd.DataFrame(records, columns=None if records else ["step", "param", "alpha"])
    return frame.drop_duplicates(subset=["step", "param"], keep="last").reset_index(drop=True)


def load_run(run_dir: Path) -> Run:
    """Load one completed run; raises :class:`RunDirError` naming the bad file."""
    summary = _read_summary(run_dir)
    _validate_summary(summary)
    metrics = _read_metrics(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise RunDirError(CONFIG, "missing")
    return Run(path=run_dir, summary=summary, metrics=metrics, mask_stats=_read_mask_stats(run_dir))


def load_runs(root: str | Path) -> RunSet:
    """Every run directory under ``root``: completed runs loaded, the rest reported."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"results root {str(root)!r} is not a directory")
    result = RunSet(root=root)
    for run_dir in find_run_dirs(root):
        try:
            status = _read_summary(run_dir)["status"]
        except RunDirError as err:
            result.malformed.append(Problem(run_dir, err.file, err.message))
            continue
        if status != "completed":
            result.not_completed.append(Problem(run_dir, SUMMARY, f"status={status!r}"))
            continue
        try:
            result.runs.append(load_run(run_dir))
        except RunDirError as err:
            result.malformed.append(Problem(run_dir, err.file, err.message))
    return result
