"""Compose the project's Hydra config and run the shared trainer in-process (tests only); the
home of the tests' tiny-run overrides (:data:`TINY`), subprocess environment, accelerate
reset, simulated kills (:class:`Crash`, :func:`interrupt_forward`), the interrupted run
that the checkpoint, run directory and run record tests share (:data:`RUN`,
:func:`_crashed_run`; its uninterrupted ``reference`` is a fixture in conftest.py),
train.py's exit code in-process (:func:`_main_exit`) and what two runs are compared by
(:func:`comparable_records`, :func:`saved_weights`, :func:`_same_weights`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hydra import compose, initialize_config_dir

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

# Overrides that make a test run small and quiet: no progress bar, a record every step and
# two evaluation batches.
TINY = ["trainer.progress_bar=false", "trainer.log_every=1", "data.eval_iters=2"]


def subprocess_env() -> dict[str, str]:
    """This environment for a child process (train.py, a script): one thread, and this
    checkout's ``src`` first on the import path."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def reset_accelerate() -> None:
    """Forget accelerate's state, a process-wide singleton that refuses a second configuration
    (e.g. mixed_precision="no" after a bf16 run), so that each in-process run starts afresh
    whichever tests ran before it. Before accelerate is imported there is nothing to forget."""
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)


def run_config(overrides: list[str], output_root: Path):
    """The config of a run under ``output_root``, without a progress bar."""
    return compose_config(
        [f"trainer.output_root={output_root}", "trainer.progress_bar=false", *overrides]
    )


def run_training(overrides: list[str], output_root: Path) -> Path:
    from alphaadam.trainer import train

    reset_accelerate()
    return train(run_config(overrides, output_root))


class Crash(RuntimeError):
    """A simulated kill: an error that nothing in the trainer expects."""


def interrupt_forward(
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    error: BaseException | None = None,
    action=None,
) -> None:
    """The ``n``-th training forward (one per micro-batch; evaluation's are not counted)
    calls ``action`` and then raises ``error``, as a kill or a signal would interrupt it."""
    from alphaadam.tasks.lm import LMTask

    original = LMTask.compute_loss
    calls = {"n": 0}

    def compute_loss(self, model, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == n:
                if action is not None:
                    action()
                if error is not None:
                    raise error
        return original(self, model, batch)

    monkeypatch.setattr(LMTask, "compute_loss", compute_loss)


def comparable_records(records: list[dict]) -> list[dict]:
    """The records without their wall-clock fields, which no two runs share."""
    return [{k: v for k, v in r.items() if k not in ("time", "tokens_per_s")} for r in records]


def saved_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of the run's latest checkpoint."""
    import torch

    return torch.load(run_dir / "checkpoints" / "latest" / "model.pt")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def eval_records(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# Checkpoints at steps 2 and 4 (both kept); a crash during step 5 leaves both.
RUN = [
    "optimizer=alphaadam",
    "model.dropout=0.1",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=2",
    "trainer.keep_checkpoints=2",
    "trainer.eval_every=3",
    *TINY,
]


def _crashed_run(monkeypatch, root: Path, overrides=RUN, step: int = 5) -> Path:
    interrupt_forward(monkeypatch, step, Crash("simulated kill"))  # one micro-batch a step
    with pytest.raises(Crash):
        run_training(overrides, root)
    monkeypatch.undo()
    (run_dir,) = (p for p in root.glob("smoke/*/*") if p.is_dir())
    return run_dir


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = saved_weights(a), saved_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _main_exit(overrides: list[str], output_root: Path) -> int:
    """``train.py``'s entry point in-process: its exit code (0 when it returns)."""
    from alphaadam.trainer import main

    reset_accelerate()
    cfg = run_config(overrides, output_root)
    try:
        main(cfg)
    except SystemExit as exit_:
        return exit_.code
    return 0
