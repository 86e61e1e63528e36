"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` (model, optimizer, scheduler,
trainer state, and per process its RNG states and data position). It is written under a
temporary name, flushed to disk, checked (every file present and readable), renamed into
place, and only then does the ``checkpoints/latest`` symlink move to it, itself replaced by
one ``os.replace``; older checkpoints are deleted last. A process killed at any instant
leaves ``latest`` pointing at a complete checkpoint, and the previous one stays until the
new one has passed the check, whatever ``keep``.

A checkpoint damaged afterwards (a truncated or emptied file) is found by
:func:`find_resume_checkpoint`, which names the file and the problem and falls back to the
newest complete checkpoint.

Under FSDP2 (parameters are DTensor shards) the model and optimizer files hold the *full*
state, gathered to rank 0 by ``torch.distributed.checkpoint.state_dict`` and keyed by
parameter name; on resume rank 0 alone reads them and broadcasts each rank its shards.
Without sharding the files are the plain ``state_dict()`` of the model and optimizer.
"""

from __future__ import annotations

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
from accelerate.utils import broadcast_object_list
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


def checkpoint_problems(path: Path, world_size: int) -> list[str]:
    """Why the checkpoint folder ``path`` cannot be resumed by ``world_size`` processes
    (each entry names a file); empty when every file is present and readable."""
    problems = []
    names = [*SHARED_TORCH_FILES, *(_rank_file(r) for r in range(world_size))]
    for name in names:
        problem = _torch_file_problem(path / name)
        if problem:
            problems.append(f"{name}: {problem}")
    state_file = path / TRAINER_STATE
    try:
        json.loads(state_file.read_text())
    except FileNotFoundError:
        problems.append(f"{TRAINER_STATE}: missing")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problems.append(f"{TRAINER_STATE}: not valid JSON ({err})")
    return problems


def find_resume_checkpoint(ckpt_root: Path, world_size: int) -> tuple[Path, list[str]]:
    """The newest complete checkpoint under ``ckpt_root``, and one line per newer folder
    that was damaged. Damaged folders are renamed ``damaged-step-...`` (kept for
    inspection, out of the way of later saves) and ``latest`` is pointed at the result.
    Raises :class:`CheckpointError` when no complete checkpoint is left."""
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
            if skipped:
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
) -> Path:
    """Write a checkpoint collectively (every process calls this).

    Raises :class:`CheckpointError` (on every process) when the written files do not pass
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
    if accelerator.is_main_process:
        torch.save(model_state, tmp / "model.pt")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1) + "\n")
        for written in (*SHARED_TORCH_FILES, TRAINER_STATE):
            _fsync(tmp / written)
    torch.save({"rng": rng_state(), "data": stream.state_dict()}, tmp / _rank_file(rank))
    _fsync(tmp / _rank_file(rank))
    accelerator.wait_for_everyone()
    verdict = [None]
    if accelerator.is_main_process:
        problems = checkpoint_problems(tmp, accelerator.num_processes)
        verdict = [
            f"the checkpoint of step {step} failed its check after writing "
            f"({'; '.join(problems)}, in {tmp}); the previous checkpoint "
            f"{latest_checkpoint(ckpt_root) or '(none)'} is kept"
            if problems
            else None
        ]
    broadcast_object_list(verdict)
    if verdict[0] is not None:
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
