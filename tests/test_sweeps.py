"""Sweep configs expand to the paper's grids; the dry run prints jobs and submits nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sweep_script", REPO / "scripts" / "sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def _jobs(name: str, *extra: str) -> list[dict[str, str]]:
    jobs, _ = sweep.expand_jobs([f"+sweep={name}", "hydra/launcher=slurm", *extra])
    return [dict(o.split("=", 1) for o in job) for job in jobs]


@pytest.mark.parametrize(
    "name, extra, count",
    [
        ("table1", (), 7 * 6 * 5),  # GLUE tasks x optimizers x lr grid
        ("table2", (), 7),  # the paper's seven GSM8K optimizers
        ("table3", (), 4),  # the four ablation presets
        ("table3", ("seed=1,2,3",), 12),  # optional seeds multiply
        ("figure2", (), 3 * 3 * 3),  # sizes x optimizers x lr grid
    ],
)
def test_sweep_sizes(name, extra, count):
    jobs = _jobs(name, *extra)
    assert len(jobs) == count
    assert len({tuple(sorted(j.items())) for j in jobs}) == count  # all distinct


def test_table1_grid_values():
    jobs = _jobs("table1")
    assert {j["data.task"] for j in jobs} == {"mrpc", "stsb", "cola", "rte", "sst2", "qnli", "qqp"}
    assert {float(j["optimizer.lr"]) for j in jobs} == {1e-5, 2e-5, 3e-5, 4e-5, 5e-5}
    assert {j["optimizer"] for j in jobs} == {
        "adamw",
        "adam_mini",
        "galore",
        "ldadam",
        "cadamw",
        "alphaadam",
    }


def test_command_line_key_replaces_the_configs_sweep():
    jobs = _jobs("table3", "optimizer=alphaadam")
    assert [j["optimizer"] for j in jobs] == ["alphaadam"]


def test_dry_run_shows_paper_settings_and_submits_nothing(tmp_path: Path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "sweep.py"),
            "table1",
            "--dry-run",
            "--no-preflight",  # roberta-base is on the Hub; tests/test_preflight.py covers it
            "optimizer=galore,alphaadam",
            "data.task=qqp",
            "optimizer.lr=1e-5",
            f"hydra.sweep.dir={tmp_path / 'sw'}",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "sweep table1: 2 job(s)" in out
    # QQP: batch 128 (32 x 4); GaLore: betas (0.9, 0.99); the paper's Table 1 settings.
    assert "lr 1e-05, betas (0.9, 0.99), batch 128, 3 epochs" in out
    assert "lr 1e-05, betas (0.9, 0.999), batch 128, 3 epochs" in out
    assert f"run dir {tmp_path / 'sw'}/0_galore" in out
    assert "#SBATCH --array=0-1%2" in out and "#SBATCH --signal=USR2@120" in out
    assert not (tmp_path / "sw").exists()


def test_preflight_runs_once_per_distinct_config_and_blocks_a_bad_sweep(
    tmp_path: Path, monkeypatch, capsys
):
    submitted = []
    monkeypatch.setattr(sweep.subprocess, "call", lambda cmd: submitted.append(cmd) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sw'}"

    # Two processes per job, but 3 micro-batches per step cannot be split over them.
    bad = ["trainer.gradient_accumulation_steps=3", "hydra.launcher.tasks_per_node=2"]
    assert sweep.main(["smoke", sweep_dir, *bad]) == 1
    out = capsys.readouterr().out
    assert submitted == []
    assert "preflight: 2 distinct config(s) for 2 job(s), 2 process(es) per job" in out
    assert "must be divisible by the 2 processes" in out
    assert "preflight failed for 2 of 2 config(s): nothing submitted" in out

    # The same seed twice gives one config for two jobs... and a good sweep is submitted.
    assert sweep.main(["smoke", sweep_dir, "optimizer=alphaadam", "seed=1,1"]) == 0
    out = capsys.readouterr().out
    assert "preflight: 1 distinct config(s) for 2 job(s)" in out and "jobs 0, 1: ok" in out
    assert len(submitted) == 1 and submitted[0][-3:] == [
        sweep_dir,
        "optimizer=alphaadam",
        "seed=1,1",
    ]

    assert sweep.main(["smoke", sweep_dir, *bad, "--no-preflight"]) == 0
    assert len(submitted) == 2
