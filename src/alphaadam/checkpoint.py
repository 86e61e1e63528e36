"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` (model, optimizer, scheduler,
trainer state, and per process its RNG states and data position). It is written under a
temporary name, renamed into place, and only then does the ``checkpoints/latest`` symlink
move to it, itself replaced by one ``os.replace``: a process killed at any instant leaves
``latest`` pointing at a complete checkpoint.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

LATEST = "latest"
# Gathered to rank 0 only, on the CPU: one full copy at a time, never one per rank.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


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
    """Write a checkpoint collectively (every process calls this)."""
    name = f"step-{step:08d}"
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
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1) + "\n")
    torch.save({"rng": rng_state(), "data": stream.state_dict()}, tmp / f"rank{rank}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        link_tmp = ckpt_root / f".{LATEST}.tmp"
        if link_tmp.is_symlink() or link_tmp.exists():
            link_tmp.unlink()
        os.symlink(name, link_tmp)
        os.replace(link_tmp, ckpt_root / LATEST)
        steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
        for old in steps[: max(0, len(steps) - keep)]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, rank: int, *, optimizer: bool = True) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote, for this process (tensors on the CPU).

    ``optimizer=False`` skips the optimizer file (``ckpt["optimizer"]`` is None): under
    FSDP only rank 0 reads it, see :func:`restore_optimizer`."""
    per_rank = path / f"rank{rank}.pt"
    if not per_rank.is_file():
        raise FileNotFoundError(
            f"{per_rank} is missing: the checkpoint was written by fewer processes than this "
            "run has; resume with the same number of processes"
        )
    load = lambda name: torch.load(path / name, map_location="cpu", weights_only=False)  # noqa: E731
    return {
        "model": load("model.pt"),
        "optimizer": load("optimizer.pt") if optimizer else None,
        "scheduler": load("scheduler.pt"),
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
        **load(f"rank{rank}.pt"),
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
