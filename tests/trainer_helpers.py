"""Compose the project's Hydra config and run the shared trainer in-process (tests only); the
home of the tests' tiny-run overrides (:data:`TINY`), subprocess environment and accelerate
reset."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

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


def run_training(overrides: list[str], output_root: Path) -> Path:
    from alphaadam.trainer import train

    reset_accelerate()
    cfg = compose_config(
        [f"trainer.output_root={output_root}", "trainer.progress_bar=false", *overrides]
    )
    return train(cfg)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def eval_records(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())
