"""The preflight's check types and the checks a task's ``preflight()`` builds from.

:class:`Check` is one line of the report (:mod:`alphaadam.preflight` runs the run-level checks
and renders the report); :func:`ok`, :func:`warn` and :func:`fail` make one; the helpers below
check local files, a model source and writable folders. A leaf module: the Task contract
(``tasks/base.py``) names :class:`Check` without importing the preflight.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .hub import check_repo, looks_local, weight_files

OK, WARN, FAIL = "ok", "warn", "FAIL"

GB = 1e9


@dataclass
class Check:
    """One line of the preflight report."""

    name: str
    status: str  # ok | warn | FAIL
    detail: str


def ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def warn(name: str, detail: str) -> Check:
    return Check(name, WARN, detail)


def fail(name: str, detail: str) -> Check:
    return Check(name, FAIL, detail)


def check_files(name: str, paths: Iterable[Path], setting: str) -> Check:
    paths = [Path(p).expanduser() for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return fail(name, f"{setting}: missing {', '.join(missing)}")
    size = sum(p.stat().st_size for p in paths)
    return ok(name, f"{len(paths)} local file(s), {size / 1e6:.1f} MB ({setting})")


def check_model_source(name_or_path: str, local_hint: str, what: str = "Model") -> Check:
    """A transformers model: a local folder with its config and every weight file, or a Hub
    repository this machine can read (weights cached, or downloaded when the run starts)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            return fail("model", f"{folder} has no config.json: not a transformers model folder")
        weights = weight_files(folder)
        if weights is None:
            return fail(
                "model",
                f"{folder} has no complete weights (model.safetensors, pytorch_model.bin, or "
                "every shard an index names)",
            )
        size = sum(p.stat().st_size for p in weights)
        return ok(
            "model", f"local folder {folder}, {len(weights)} weight file(s), {size / GB:.2f} GB"
        )
    if looks_local(name_or_path):
        return fail("model", f"{what} {name_or_path}: no such local directory")
    good, detail = check_repo(name_or_path, "model", what, local_hint, need_weights=True)
    return Check("model", OK if good else FAIL, f"{name_or_path}: {detail}" if good else detail)


def check_writable(name: str, folders: Iterable[Path]) -> Check:
    """Each folder can be created and written (tried with a temporary file, then removed)."""
    shown = []
    for folder in folders:
        folder = Path(folder).expanduser().absolute()
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return fail(name, f"{folder}: {existing} is not a directory")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            return fail(name, f"{folder} cannot be written: {exc.strerror or exc} ({existing})")
        free = shutil.disk_usage(existing).free
        shown.append(f"{folder} ({free / GB:.0f} GB free)")
    return ok(name, "writable: " + ", ".join(shown))
