"""End to end without SLURM: the Table 1 sweep config (basic launcher) on a tiny local
RoBERTa and GLUE-format data, then `make tables`' code on the sweep directory. The expected
cells are computed here from the summaries with plain json, independently of the loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _finetune_fixtures import write_glue_dir, write_tiny_roberta

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_table1_sweep_to_table(tmp_path: Path):
    glue_dir = write_glue_dir(tmp_path / "glue")
    model_dir = write_tiny_roberta(tmp_path / "roberta")
    sweep_dir = tmp_path / "sweep"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "+sweep=table1",
            "hydra/launcher=basic",
            f"hydra.sweep.dir={sweep_dir}",
            "data.task=rte,stsb",
            "optimizer=adamw,alphaadam",
            "optimizer.lr=1e-3,3e-3",
            f"data.glue_dir={glue_dir}",
            f"model.name_or_path={model_dir}",
            "data.max_length=64",
            "trainer.max_epochs=2",
            "trainer.micro_batch_size=8",
            "trainer.gradient_accumulation_steps=2",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
        ],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        check=True,
        capture_output=True,
    )
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    assert len(summaries) == 8 and all(s["status"] == "completed" for s in summaries)

    out = tmp_path / "tables"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_tables.py"),
            "--root",
            str(sweep_dir),
            "--out",
            str(out),
            "--paper",
            str(REPO / "results" / "paper" / "tables.yaml"),
        ],
        check=True,
        capture_output=True,
    )
    md = (out / "table1.md").read_text().splitlines()
    for label, optimizer in (("AdamW", "adamw"), ("AlphaAdam", "alphaadam")):
        start = next(i for i, line in enumerate(md) if line.startswith(f"| {label} | paper"))
        ours = [c.strip() for c in md[start + 1].strip("|").split("|")]
        seeds = [c.strip() for c in md[start + 2].strip("|").split("|")]
        for task, column in (("stsb", 3), ("rte", 5)):  # Method, "", MRPC, STS-B, CoLA, RTE
            runs = [s for s in summaries if s["optimizer"] == optimizer and s["dataset"] == task]
            best = max(runs, key=lambda s: (s["best"][s["primary_metric"]], -s["lr"]))
            value = 100 * best["best"][best["primary_metric"]]
            assert ours[column] == f"{value:.2f}"
            assert seeds[column] == f"1 @ {best['lr']:.0e}".replace("e-0", "e-")
        assert ours[2] == "—" and ours[-1] == "—"  # MRPC not run; Avg needs all seven
