"""The run directory (docs/run_dir.md): where it is, and the files in it."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .checkpoint import latest_checkpoint

CONFIG, METRICS, MASK_STATS, EVENTS, SUMMARY, CHECKPOINTS = (
    "config.yaml",
    "metrics.jsonl",
    "mask_stats.jsonl",
    "events.jsonl",
    "summary.json",
    "checkpoints",
)
#: config keys that may differ between a run and its resumption (the preflight keys only
#: matter to a run that never trains, and runs made before them have none)
_RESUME_KEYS = ("resume", "run_dir", "preflight", "preflight_processes", "preflight_fsdp")


class RunDirError(RuntimeError):
    pass


def _comparable(cfg: DictConfig | dict) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    c = json.loads(json.dumps(c))  # deep copy
    for k in _RESUME_KEYS:
        c.get("trainer", {}).pop(k, None)
    return c


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / SUMMARY
    return json.loads(f.read_text()) if f.is_file() else None


def _resumable(run_dir: Path) -> bool:
    return latest_checkpoint(run_dir / CHECKPOINTS) is not None


def _matches(run_dir: Path, cfg: DictConfig) -> bool:
    f = run_dir / CONFIG
    return f.is_file() and _comparable(OmegaConf.load(f)) == _comparable(cfg)


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, str]:
    """Pick this run's directory. Returns ``(path, mode)`` with mode ``"new"``,
    ``"resume"`` or ``"completed"`` (nothing left to do).

    ``trainer.resume``: ``false`` starts a new run; ``auto`` continues ``trainer.run_dir``
    if given, else the newest unfinished run under ``<output_root>/<experiment>/<optimizer>``
    whose config is identical (apart from _RESUME_KEYS), else starts a new run; a path
    continues the run in that directory.
    """
    tc = cfg.trainer
    resume = tc.resume
    if resume in (None, False, "false", "never"):
        resume = False
    if resume not in (False, "auto"):
        path = Path(str(resume)).expanduser()
        if not _resumable(path):
            raise RunDirError(
                f"trainer.resume={resume}: {path} holds no checkpoints/latest to resume"
            )
        return path.resolve(), "resume"
    if tc.run_dir:
        path = Path(str(tc.run_dir)).expanduser().resolve()
        summary = read_summary(path)
        if summary is None and not _resumable(path):
            return path, "new"
        if resume != "auto":
            raise RunDirError(
                f"{path} already holds a run (status {summary and summary.get('status')!r}); "
                "pass trainer.resume=auto to continue it, or choose another trainer.run_dir"
            )
        if summary is not None and summary.get("status") == "completed":
            return path, "completed"
        return path, ("resume" if _resumable(path) else "new")
    parent = (
        Path(str(tc.output_root)).expanduser() / str(cfg.experiment_name) / str(cfg.optimizer.name)
    )
    if resume == "auto" and parent.is_dir():
        for candidate in sorted(parent.iterdir(), reverse=True):
            summary = read_summary(candidate) or {}
            if (
                summary.get("status") != "completed"
                and _resumable(candidate)
                and _matches(candidate, cfg)
            ):
                return candidate.resolve(), "resume"
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return (parent / f"{stamp}_{secrets.token_hex(3)}").resolve(), "new"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; readers get null
    return value


def dump_json_line(record: dict[str, Any]) -> str:
    return json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2) + "\n")
    os.replace(tmp, path)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop records after ``last_step``: a resumed run re-logs the steps it redoes."""
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text().splitlines(keepends=True)
        if line.strip() and json.loads(line).get("step", 0) <= last_step
    ]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class MetricsLog:
    """Appends records to the run's JSONL files (main process) and mirrors them to wandb."""

    def __init__(self, run_dir: Path, cfg: DictConfig, enabled: bool) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        self.wandb = None
        if enabled and cfg.logger.get("wandb"):
            # Offline unless the user chose otherwise: runs must never need the network.
            os.environ.setdefault("WANDB_MODE", "offline")
            import wandb

            w = cfg.logger.wandb
            self.wandb = wandb.init(
                project=w.get("project"),
                entity=w.get("entity"),
                name=w.get("name") or run_dir.name,
                group=w.get("group"),
                dir=str(run_dir),
                id=w.get("id") or run_dir.name,
                resume="allow",
                config=OmegaConf.to_container(cfg, resolve=True),
            )

    def write(self, record: dict[str, Any], file: str = METRICS) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / file, "a") as f:
            f.write(dump_json_line(record))
        if self.wandb is not None and file == METRICS:
            data = {
                f"{record['kind']}/{k}": v for k, v in record.items() if k not in ("kind", "step")
            }
            self.wandb.log(data, step=record["step"])

    def write_many(self, records: list[dict[str, Any]], file: str) -> None:
        if self.enabled and records:
            with open(self.run_dir / file, "a") as f:
                f.writelines(dump_json_line(r) for r in records)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
