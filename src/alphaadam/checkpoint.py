"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` (model, optimizer, scheduler,
trainer state, and per process its RNG states and data position) with a ``manifest.json``
(the run's resolved config and the sha256 of every other file). It is written under a
temporary name, flushed to disk, checked (every file present and readable), renamed into
place, and only then does the ``checkpoints/latest`` symlink move to it, itself replaced by
one ``os.replace``; older checkpoints are deleted last. A process killed at any instant
leaves a complete checkpoint, and the previous one stays until the new one has passed the
check, whatever ``keep``. A kill between the rename and the link swap leaves ``latest`` one
checkpoint behind: a resume always continues from the newest complete step folder, whatever
``latest`` says, and :func:`tidy_checkpoints` repairs the link and the pruning before a run
is called completed. A write that fails (a full disk) removes its temporary folder.

A checkpoint damaged afterwards (a truncated or emptied file, or one whose sha256 no longer
matches the manifest: a flipped bit) is found by :func:`find_resume_checkpoint`, which names
the file and the problem and falls back to the newest complete checkpoint.

Under FSDP2 (parameters are DTensor shards) the model and optimizer files hold the *full*
state, gathered to rank 0 by ``torch.distributed.checkpoint.state_dict`` and keyed by
parameter name; on resume rank 0 alone reads them and broadcasts each rank its shards.
Without sharding the files are the plain ``state_dict()`` of the model and optimizer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

LATEST = "latest"
STEP_PREFIX = "step-"
#: what a resume moves a damaged checkpoint folder to (kept for inspection, never loaded)
DAMAGED_PREFIX = "damaged-"
TRAINER_STATE = "trainer_state.json"
#: The checkpoint's own record: the resolved config it was trained under and each file's sha256.
MANIFEST = "manifest.json"
SHARED_TORCH_FILES = ("model.pt", "optimizer.pt", "scheduler.pt")
# Gathered to rank 0 only, on the CPU: one full copy at a time, never one per rank.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def is_sharded(model: torch.nn.Module) -> bool:
    """True when the parameters are DTensor shards (FSDP2 ``fully_shard``)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # accelerate wraps the optimizer; torch's state_dict helpers need the real one.
    return getattr(optimizer, "optimizer", optimizer)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the global state is what we restore
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    link = ckpt_root / LATEST
    return link.resolve() if link.exists() else None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """The step folders under ``ckpt_root``, newest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(
        (p for p in ckpt_root.glob(f"{STEP_PREFIX}*") if p.is_dir()),
        key=lambda p: p.name,
        reverse=True,
    )


def _rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def _torch_file_problem(path: Path) -> str | None:
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    # torch.save writes a zip archive whose directory sits at the end of the file: a
    # truncated or zero-filled file has none. Reading the directory costs a few kB.
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "not a torch.save file (no data.pkl in the archive)"
    except (zipfile.BadZipFile, OSError) as err:
        return f"truncated or not a torch.save file ({err})"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except FileNotFoundError:
        return "missing"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"not valid JSON ({err})"
    return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The checkpoint folder's manifest; None when it has none (written before manifests)
    or it is not valid JSON (:func:`checkpoint_problems` names that)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def checkpoint_problems(path: Path, world_size: int, *, checksums: bool = True) -> list[str]:
    """Why the checkpoint folder ``path`` cannot be resumed by ``world_size`` processes
    (each entry names a file); empty when every file is present and readable and, with
    ``checksums``, has the sha256 its manifest recorded. A folder without a manifest (written
    before manifests) is checked without checksums."""
    problems = []
    names = [*SHARED_TORCH_FILES, *(_rank_file(r) for r in range(world_size))]
    for name in names:
        problem = _torch_file_problem(path / name)
        if problem:
            problems.append(f"{name}: {problem}")
    problem = _json_problem(path / TRAINER_STATE)
    if problem:
        problems.append(f"{TRAINER_STATE}: {problem}")
    if not (path / MANIFEST).exists():
        return problems
    problem = _json_problem(path / MANIFEST)
    manifest = read_manifest(path)
    if problem or manifest is None or not isinstance(manifest.get("sha256"), dict):
        return [*problems, f"{MANIFEST}: {problem or 'has no sha256 table'}"]
    if checksums:
        damaged = {p.split(":", 1)[0] for p in problems}
        for name in [*names, TRAINER_STATE]:
            recorded = manifest["sha256"].get(name)
            if name in damaged or not (path / name).is_file():
                continue
            if recorded is None:
                problems.append(f"{name}: no sha256 in {MANIFEST}")
            elif sha256_of(path / name) != recorded:
                problems.append(
                    f"{name}: sha256 differs from the one recorded when it was written "
                    f"(the file changed on disk since)"
                )
    return problems


def find_resume_checkpoint(ckpt_root: Path, world_size: int) -> tuple[Path, list[str]]:
    """The newest complete checkpoint under ``ckpt_root``, and one line per newer folder
    that was damaged. Damaged folders are renamed ``damaged-step-...`` (kept for
    inspection, out of the way of later saves) and ``latest`` is pointed at the result
    whatever it named before (a kill between a save's rename and its link swap leaves it
    one behind). Raises :class:`CheckpointError` when no complete checkpoint is left."""
    skipped: list[str] = []
    for folder in list_checkpoints(ckpt_root):
        written_by = len(list(folder.glob("rank*.pt")))
        if written_by and written_by != world_size:
            # A resume with the wrong process count, not damage: leave every folder as it is.
            raise CheckpointError(
                f"{folder} was written by {written_by} process(es) and this run has "
                f"{world_size}; resume with the same number of processes"
            )
        problems = checkpoint_problems(folder, world_size)
        if not problems:
            if latest_checkpoint(ckpt_root) != folder.resolve():
                _point_latest(ckpt_root, folder.name)
            return folder, skipped
        aside = ckpt_root / f"{DAMAGED_PREFIX}{folder.name}"
        if aside.exists():
            aside = aside.with_name(f"{aside.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(folder, aside)
        skipped.append(f"{folder.name} is damaged ({'; '.join(problems)}); moved to {aside.name}")
    raise CheckpointError(
        f"no complete checkpoint in {ckpt_root}: "
        + (" ".join(skipped) if skipped else "it holds no step folder")
        + ". The run cannot continue from here; start a new run (another trainer.run_dir, "
        "or trainer.resume=false)."
    )


def _point_latest(ckpt_root: Path, name: str) -> None:
    link_tmp = ckpt_root / f".{LATEST}.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(name, link_tmp)
    os.replace(link_tmp, ckpt_root / LATEST)


def tidy_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Point ``latest`` at the newest step folder and delete the step folders beyond the
    newest ``keep``: what a save killed between its rename and its link swap left undone.
    Main process only; a run calls it before it is called completed."""
    steps = list_checkpoints(ckpt_root)
    if not steps:
        return
    if latest_checkpoint(ckpt_root) != steps[0].resolve():
        _point_latest(ckpt_root, steps[0].name)
    for old in steps[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _no_space(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a full disk as a RuntimeError of its C++ stream ("basic_ios",
    # "enforce fail"): tell it by the space left where it wrote.
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _fsync(path: Path) -> None:
    # Without it a crash soon after the rename can leave renamed but empty files (ext4's
    # delayed allocation), which the check below could not have seen.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    ckpt_root: Path,
    step: int,
    accelerator,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    stream,
    trainer_state: dict[str, Any],
    keep: int = 1,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint collectively (every process calls this). ``config`` (the run's
    resolved config) goes into the manifest, so that a resume can be checked against it
    without the run's config.yaml.

    Raises :class:`CheckpointError` (on every process) when a file cannot be written (a
    full disk: the temporary folder is removed) or the written files do not pass
    :func:`checkpoint_problems`; ``latest`` and the older checkpoints are then untouched."""
    name = f"{STEP_PREFIX}{step:08d}"
    tmp = ckpt_root / f".tmp-{name}"
    final = ckpt_root / name
    rank = accelerator.process_index
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if is_sharded(model):
        # Collectives: every rank sends its shards; only rank 0 receives the full tensors.
        model_state = get_model_state_dict(model, options=_GATHER)
        optimizer_state = get_optimizer_state_dict(model, _inner(optimizer), options=_GATHER)
    else:
        model_state = accelerator.get_state_dict(model)
        optimizer_state = optimizer.state_dict() if accelerator.is_main_process else None
    kept = f"the previous checkpoint {latest_checkpoint(ckpt_root) or '(none)'} is kept"
    failure = None
    try:
        if accelerator.is_main_process:
            torch.save(model_state, tmp / "model.pt")
            torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1) + "\n")
            for written in (*SHARED_TORCH_FILES, TRAINER_STATE):
                _fsync(tmp / written)
        torch.save({"rng": rng_state(), "data": stream.state_dict()}, tmp / _rank_file(rank))
        _fsync(tmp / _rank_file(rank))
    except (OSError, RuntimeError) as err:
        if not isinstance(err, OSError) and not _no_space(err, tmp):
            raise
        failure = _write_failure(err, step, tmp, kept)
    # Every process's failure, on every process (a gather of one line each).
    failures = [f for f in gather_object([failure]) if f is not None]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not failures:
        try:
            _write_manifest(tmp, accelerator.num_processes, config)
        except OSError as err:
            failures = [_write_failure(err, step, tmp, kept)]
    verdict = [failures[0] if failures else None]
    if accelerator.is_main_process and verdict[0] is None:
        # The checksums were just taken from these files: check the rest.
        problems = checkpoint_problems(tmp, accelerator.num_processes, checksums=False)
        verdict = [
            f"the checkpoint of step {step} failed its check after writing "
            f"({'; '.join(problems)}, in {tmp}); {kept}"
            if problems
            else None
        ]
    broadcast_object_list(verdict)
    if verdict[0] is not None:
        if accelerator.is_main_process and failures:
            shutil.rmtree(tmp, ignore_errors=True)  # it would keep the disk full
        raise CheckpointError(verdict[0])
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(ckpt_root)
        _point_latest(ckpt_root, name)
        steps = sorted(p for p in ckpt_root.glob(f"{STEP_PREFIX}*") if p.is_dir())
        for old in steps[: max(0, len(steps) - keep)]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_failure(err: BaseException, step: int, tmp: Path, kept: str) -> str:
    reason = "no space left on device" if _no_space(err, tmp) else "it could not be written"
    return (
        f"the checkpoint of step {step} was not written: {reason} ({type(err).__name__}: "
        f"{err}; in {tmp}, now removed); {kept}"
    )


def _write_manifest(folder: Path, world_size: int, config: dict[str, Any] | None) -> None:
    names = [*SHARED_TORCH_FILES, *(_rank_file(r) for r in range(world_size)), TRAINER_STATE]
    manifest = {"config": config, "sha256": {name: sha256_of(folder / name) for name in names}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    _fsync(folder / MANIFEST)


def load_checkpoint(path: Path, rank: int, *, optimizer: bool = True) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote, for this process (tensors on the CPU).

    ``optimizer=False`` skips the optimizer file (``ckpt["optimizer"]`` is None): under
    FSDP only rank 0 reads it, see :func:`restore_optimizer`."""
    per_rank = path / _rank_file(rank)
    if not per_rank.is_file():
        raise FileNotFoundError(
            f"{per_rank} is missing: the checkpoint was written by fewer processes than this "
            "run has; resume with the same number of processes"
        )

    def load(name: str) -> Any:
        try:
            if name == TRAINER_STATE:
                return json.loads((path / name).read_text())
            return torch.load(path / name, map_location="cpu", weights_only=False)
        except Exception as err:  # torch reports damage as RuntimeError, OSError, EOFError...
            raise CheckpointError(
                f"{path / name} cannot be read ({type(err).__name__}: {err}); it is damaged. "
                f"Move {path.name} aside and resume to continue from an older checkpoint."
            ) from err

    return {
        "model": load("model.pt"),
        "optimizer": load("optimizer.pt") if optimizer else None,
        "scheduler": load("scheduler.pt"),
        "trainer_state": load(TRAINER_STATE),
        **load(_rank_file(rank)),
    }


def restore_optimizer(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any] | None
) -> None:
    """Load a saved optimizer state into ``optimizer`` (after ``accelerator.prepare``).

    Sharded (FSDP2) models: collective; ``state`` is the full, name-keyed state on rank 0
    and None elsewhere, and each rank receives its own shards of every tensor (0-d entries
    such as AlphaAdam's ``step``, ``alpha``, ``mask_density`` are broadcast whole)."""
    if is_sharded(model):
        if state is not None and _keyed_by_index(state):
            raise ValueError(
                "this optimizer checkpoint is keyed by parameter index, the format of an "
                "unsharded run (or of an FSDP run saved before full-state checkpoints, which "
                "holds only rank 0's shard); an FSDP run can resume only from a checkpoint "
                "written by an FSDP run of this version"
            )
        set_optimizer_state_dict(model, _inner(optimizer), state or {}, options=_SCATTER)
        return
    if state is None or not _keyed_by_index(state):
        raise ValueError(
            "this optimizer checkpoint was written by an FSDP (sharded) run; resume it under "
            "FSDP with the same model"
        )
    optimizer.load_state_dict(state)


def _keyed_by_index(state: dict[str, Any]) -> bool:
    return all(isinstance(i, int) for g in state["param_groups"] for i in g["params"])
