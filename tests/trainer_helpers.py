"""Compose the project's Hydra config and run the shared trainer in-process (tests only)."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def reset_accelerate() -> None:
    # Accelerator state is a process-wide singleton; each in-process run starts afresh.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


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
