"""The run directory (docs/run_dir.md): where it is, the files in it, and the lock that
keeps a second process out of it."""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import math
import os
import secrets
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from .checkpoint import MANIFEST, list_checkpoints, read_manifest
from .config_keys import RESUME_MAY_CHANGE, config_differences

log = logging.getLogger(__name__)

CONFIG, METRICS, MASK_STATS, EVENTS, SUMMARY, CHECKPOINTS, LOCK = (
    "config.yaml",
    "metrics.jsonl",
    "mask_stats.jsonl",
    "events.jsonl",
    "summary.json",
    "checkpoints",
    ".lock",
)


class RunDirError(RuntimeError):
    pass


def _config_file(run_dir: Path) -> DictConfig | None:
    """The run's config.yaml; None when there is none. Raises :class:`RunDirError` (one
    line) when it is not YAML or not a non-empty mapping."""
    f = run_dir / CONFIG
    if not f.is_file():
        return None
    try:
        saved = OmegaConf.load(f)
        problem = None if isinstance(saved, DictConfig) and len(saved) else "it is empty"
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = "not valid YAML: " + " ".join(str(err).split())
    if problem is not None:
        raise RunDirError(
            f"{f} is damaged ({problem}), so this resume cannot be checked against the "
            f"config the run was started with. Delete it and resume: the resume is then "
            f"checked against the copy each checkpoint carries ({CHECKPOINTS}/step-*/"
            f"{MANIFEST}), and config.yaml is rewritten."
        )
    return saved


def _saved_config(run_dir: Path) -> tuple[DictConfig | dict | None, Path | None]:
    """The config ``run_dir`` was run with, and the file it comes from: config.yaml, or
    without one the copy in the newest checkpoint's manifest; ``(None, None)`` if neither."""
    saved = _config_file(run_dir)
    if saved is not None:
        return saved, run_dir / CONFIG
    for folder in list_checkpoints(run_dir / CHECKPOINTS):
        manifest = read_manifest(folder)
        if manifest is not None and isinstance(manifest.get("config"), dict):
            return manifest["config"], folder / MANIFEST
    return None, None


def check_same_config(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to continue ``run_dir`` under a config that would change its results.

    The run's config is read from config.yaml, or, when that is missing, from the copy its
    newest checkpoint carries; with neither the resume is refused too (nothing would show
    that it continues the same experiment)."""
    saved, source = _saved_config(run_dir)
    if saved is None:
        raise RunDirError(
            f"{run_dir} has no {CONFIG}, and none of its checkpoints carries the run's "
            f"config (they were written before checkpoints did), so nothing shows that "
            f"this resume continues the same experiment. Put the run's {CONFIG} back, or "
            "start a new run (trainer.resume=false, or another trainer.run_dir)."
        )
    differences = config_differences(saved, cfg)
    if differences:
        width = max(len(k) for k, _, _ in differences)
        lines = "\n".join(f"  {k:<{width}}  run: {a!r}  now: {b!r}" for k, a, b in differences)
        raise RunDirError(
            f"{run_dir} was run with another config; continuing it would mix two "
            f"experiments. Keys that differ:\n{lines}\nResume with the run's values (they "
            f"are in {source}), or start a new run (trainer.resume=false, or "
            f"another trainer.run_dir). A resume may change only: {', '.join(RESUME_MAY_CHANGE)}."
        )


class RunLock:
    """An exclusive lock on a run directory (``flock`` on its ``.lock`` file), held while a
    process writes the run. The kernel drops it when the process ends, however it ends, so
    a SIGKILL or a SLURM requeue leaves no stale lock. The file names the holder."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Take the lock, or raise :class:`RunDirError` naming the holder's PID and host."""
        path = run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            holder = holder or "it has not written its PID yet"
            raise RunDirError(
                f"{run_dir} is in use by another process ({holder}); two processes on one "
                "run directory would interleave its records. Let that one finish (or stop "
                "it), or choose another trainer.run_dir."
            ) from None
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            log.warning(
                "%s: the file system does not support locks (%s); nothing keeps a second "
                "process out of this run directory",
                path,
                err.strerror,
            )
            return cls(None)
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"PID {os.getpid()} on host {socket.gethostname()}, since {since}\n".encode(), 0
        )
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock; the file stays (removing it would race)
            self._fd = None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    f = run_dir / SUMMARY
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(
            f"{f} is damaged (not valid JSON: {err}). It is rewritten when the run continues: "
            "delete it and resume (trainer.resume=auto), or choose another trainer.run_dir."
        ) from err


def _resumable(run_dir: Path) -> bool:
    return bool(list_checkpoints(run_dir / CHECKPOINTS))


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, str]:
    """Pick this run's directory. Returns ``(path, mode)`` with mode ``"new"``,
    ``"resume"`` or ``"completed"`` (nothing left to do).

    ``trainer.resume``: ``false`` starts a new run; ``auto`` continues ``trainer.run_dir``
    if given, else the newest run under ``<output_root>/<experiment>/<optimizer>`` with the
    same config (up to :data:`RESUME_MAY_CHANGE`) that completed (nothing to do) or has a
    checkpoint, else starts a new run; a path continues the run in that directory. A run is
    only ever continued under the config it was started with (:func:`check_same_config`).
    """
    tc = cfg.trainer
    resume = tc.resume
    if resume in (None, False, "false", "never"):
        resume = False
    if resume not in (False, "auto"):
        path = Path(str(resume)).expanduser()
        if not _resumable(path):
            raise RunDirError(
                f"trainer.resume={resume}: {path} holds no checkpoints/latest (no step-* folder) to resume"
            )
        check_same_config(path, cfg)
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
        completed = summary is not None and summary.get("status") == "completed"
        if not completed and not _resumable(path):
            return path, "new"  # stopped before its first checkpoint: nothing to continue
        check_same_config(path, cfg)
        return path, ("completed" if completed else "resume")
    parent = (
        Path(str(tc.output_root)).expanduser() / str(cfg.experiment_name) / str(cfg.optimizer.name)
    )
    if resume == "auto" and parent.is_dir():
        for candidate in sorted(parent.iterdir(), reverse=True):
            try:
                saved, _ = _saved_config(candidate)
                if saved is None or config_differences(saved, cfg):
                    continue
                summary = read_summary(candidate) or {}
            except RunDirError as err:
                log.warning("Skipping %s: %s", candidate, err)
                continue
            if summary.get("status") == "completed":
                return candidate.resolve(), "completed"
            if _resumable(candidate):
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
    try:
        tmp.write_text(json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2) + "\n")
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: no partial file left beside the old one
        raise
    os.replace(tmp, path)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop records after ``last_step``: a resumed run re-logs the steps it redoes.

    A last line that is not JSON (the process was killed while appending it) is dropped
    with a warning; an unreadable line before the last one is an error naming it."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    while lines and not lines[-1].strip():
        lines.pop()
    keep = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise RunDirError(
                    f"{path} line {number} is not JSON ({err}): the file is damaged before "
                    "its last line. Repair or delete that line, then resume."
                ) from err
            log.warning(
                "%s: dropped its torn last line %d (%d characters, written when the run "
                "stopped): %.60r",
                path,
                number,
                len(line),
                line,
            )
            continue
        if record.get("step", 0) <= last_step:
            keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_sha() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() or None if out is not None else None


def git_dirty() -> bool | None:
    """True when tracked files differ from the commit (``git_sha`` then does not name the
    code that ran); None outside a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


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
