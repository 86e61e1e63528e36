"""Atomic, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` (model, optimizer, scheduler,
trainer state, and per process its RNG states and data position). It is written under a
temporary name, renamed into place, and only then does the ``checkpoints/latest`` symlink
move to it, itself replaced by one ``os.replace``: a process killed at any instant leaves
``latest`` pointing at a complete checkpoint.
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

LATEST = "latest"


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
    # Collective: under FSDP it gathers the full weights (not rank 0's shards); otherwise it
    # is the unwrapped model's state_dict.
    model_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        torch.save(model_state, tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def load_checkpoint(path: Path, rank: int) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote, for this process (tensors on the CPU)."""
    per_rank = path / f"rank{rank}.pt"
    if not per_rank.is_file():
        raise FileNotFoundError(
            f"{per_rank} is missing: the checkpoint was written by fewer processes than this "
            "run has; resume with the same number of processes"
        )
    load = lambda name: torch.load(path / name, map_location="cpu", weights_only=False)  # noqa: E731
    return {
        "model": load("model.pt"),
        "optimizer": load("optimizer.pt"),
        "scheduler": load("scheduler.pt"),
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
        **load(f"rank{rank}.pt"),
    }
