"""The scaling study's tables (alphaadam.results.tables.scaling) from hand-built runs: the lr
chosen on validation loss, test loss reported, paired differences, seeds 2-3 alone, the
detectable difference, the shared-lr comparison and the parameter count, each by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from alphaadam.results import load_runs
from alphaadam.results.tables.render import Cell
from alphaadam.results.tables.scaling import build_scaling_tables, parameter_count
from alphaadam.results.tables.stats import detectable_difference


def scaling_run(root: Path, optimizer: str, lr: float, seed: int, val: float, test: float,
                scale: float | None = None, width: int = 64) -> Path:  # fmt: skip
    run = root / f"d{width}_s100" / optimizer / f"lr{lr}_seed{seed}"
    run.mkdir(parents=True)
    config = {
        "scale": "reduced: test",
        "model": {
            "n_layer": 4,
            "n_head": width // 32,
            "n_embd": width,
            "pad_vocab_multiple": 64,
            "vocab_size": None,
        },  # fmt: skip
        "data": {"block_size": 256},
        "optimizer": {"name": optimizer, "lr": lr},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    # Test loss falls linearly to `test` at 100 %; validation loss ends at `val`.
    evals = [
        {"kind": "eval", "step": round(f * 100), "epoch": None, "fraction": f,
         "val_loss": val + (1 - f), "test_loss": test + (1 - f)}
        for f in (0.2, 0.4, 0.6, 1.0)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    summary = {
        "status": "completed", "experiment": f"reduced_scaling_d{width}_s100", "task": "lm",
        "dataset": "tinyshakespeare_bytes", "optimizer": optimizer, "lr": lr, "seed": seed,
        "max_steps": 100, "steps": 100, "tokens": 409600, "wall_time_s": 1.0,
        "final": {"val_loss": val, "test_loss": test}, "best": {"step": 100, "val_loss": val},
        "primary_metric": "val_loss", "primary_mode": "min", "git_sha": "x",
        "step_scale_mean": scale,
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def tables(tmp_path: Path):
    # AdamW: 2e-3 wins on validation (2.0 < 2.2), seeds 1-3 there.
    for lr, val in ((1e-3, 2.2), (2e-3, 2.0), (4e-3, 2.3)):
        scaling_run(tmp_path, "adamw", lr, 1, val, test=val + 0.05)
    scaling_run(tmp_path, "adamw", 2e-3, 2, 2.02, test=2.10)
    scaling_run(tmp_path, "adamw", 2e-3, 3, 2.04, test=2.12)
    # AlphaAdam: 1e-3 wins (1.8), seeds 2-3 there, and every seed at AdamW's 2e-3 (shared).
    for lr, val in ((5e-4, 1.95), (1e-3, 1.8), (2e-3, 1.9)):
        scaling_run(tmp_path, "alphaadam", lr, 1, val, test=val + 0.01, scale=3.0)
    scaling_run(tmp_path, "alphaadam", 1e-3, 2, 1.85, test=1.86, scale=3.0)
    scaling_run(tmp_path, "alphaadam", 1e-3, 3, 1.84, test=1.90, scale=3.0)
    scaling_run(tmp_path, "alphaadam", 2e-3, 2, 1.92, test=1.95, scale=3.2)
    scaling_run(tmp_path, "alphaadam", 2e-3, 3, 1.93, test=1.99, scale=3.2)
    built = build_scaling_tables(load_runs(tmp_path))
    return {t.name: t for t in [*built, *(part for table in built for part in table.parts)]}


def _row(table, label):
    return next(r for r in table.rows if label in r)


def test_detectable_difference_by_hand():
    # Pairs -0.1, -0.2, -0.3: sd 0.1, n 3; t_.975,2 = 4.302653, t_.80,2 = 1.060660.
    cell = Cell([-0.1, -0.2, -0.3])
    assert detectable_difference(cell) == pytest.approx(
        (4.302653 + 1.060660) * 0.1 / 3**0.5, rel=1e-6
    )
    assert math.isnan(detectable_difference(Cell([-0.1])))


def test_the_point_table_reports_test_loss_at_the_lr_chosen_on_validation(tables):
    point = tables["reduced_scaling_d64_s100"]
    adamw = _row(point, "AdamW")
    # AdamW at 2e-3, test losses 2.05, 2.10, 2.12: mean 2.090, sd 0.036.
    assert adamw[5] == "2.090 ± 0.036" and adamw[-1] == "3 @ 2e-3"
    alpha = _row(point, "AlphaAdam")
    # AlphaAdam at 1e-3: test 1.81, 1.86, 1.90 -> 1.857 ± 0.045; step scale 3, lr x 3 = 3e-3.
    assert alpha[5] == "1.857 ± 0.045" and alpha[-3:] == ["3.00 ± 0.00", "3e-3", "3 @ 1e-3"]
    # At 20 %, every test loss is 0.8 higher.
    assert alpha[1] == "2.657 ± 0.045"


def test_paired_differences_seeds_2_3_and_what_the_seeds_could_detect(tables):
    paired = tables["reduced_scaling_d64_s100_paired"]
    row = _row(paired, "AlphaAdam")
    # Per seed: 1.81-2.05 = -0.24, 1.86-2.10 = -0.24, 1.90-2.12 = -0.22.
    diffs = [-0.24, -0.24, -0.22]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert row[1].startswith(f"{mean:+.3f} ± {sd:.3f} (n=3;")
    assert row[2].startswith("-0.230 ± 0.014 (n=2;")  # seeds 2 and 3 alone
    assert row[3] == f"{(4.302653 + 1.060660) * sd / 3**0.5:.3f} (n=3)"


def test_shared_lr_compares_every_method_at_adamws_choice(tables):
    shared = tables["reduced_scaling_d64_s100_shared"]
    assert "(2e-3)" in shared.title
    row = _row(shared, "AlphaAdam")
    # At 2e-3: AlphaAdam 1.91, 1.95, 1.99 vs AdamW 2.05, 2.10, 2.12.
    assert row[1] == "1.950 ± 0.040"
    assert row[2].startswith("-0.140 ± 0.010 (n=3;")
    assert row[4] == f"{2e-3 * (3.0 + 3.2 + 3.2) / 3:.2e}".replace("e-03", "e-3")


def test_summary_table_one_row_per_method_and_point_with_the_real_parameter_count(tables):
    summary = tables["reduced_scaling"]
    first = summary.rows[0]
    # d = 64, 4 layers, vocabulary 256, block 256, no biases, tied head, by hand:
    # wte + wpe = 2 * 256 * 64; per layer 12 d^2 + 2 d (two LayerNorm weights); final LN d.
    params = 2 * 256 * 64 + 4 * (12 * 64 * 64 + 2 * 64) + 64
    assert params == 229_952
    assert first[:4] == ["d64_s100", "0.23M", "0.4M (100 steps)", "AdamW"]
    assert [r[3] for r in summary.rows] == ["AdamW", "AlphaAdam"]


def test_parameter_count_reads_the_runs_config(tmp_path):
    run_dir = scaling_run(tmp_path, "adamw", 1e-3, 1, 2.0, 2.0, width=128)
    (run,) = load_runs(tmp_path).runs
    assert run.path == run_dir
    assert parameter_count(run) == 2 * 256 * 128 + 4 * (12 * 128 * 128 + 2 * 128) + 128


def test_the_tail_part_says_whether_validation_loss_still_falls_at_the_end(tables):
    tail = tables["reduced_scaling_d64_s100_tail"]
    row = _row(tail, "AlphaAdam")
    # The fixture's last two evaluations are at 60 % and 100 % of 100 steps, with val loss
    # `val + 0.4` then `val`; AlphaAdam's seeds at 1e-3 end at 1.80, 1.85, 1.84.
    assert row[1] == "60 -> 100"
    assert row[2] == "2.230 ± 0.026" and row[3] == "1.830 ± 0.026"
    assert row[4].startswith("-0.400 ± 0.000 (n=3;")


def test_alphaadam_against_cadamw_is_paired_by_seed_at_each_ones_chosen_lr(tmp_path):
    scaling_run(tmp_path, "adamw", 2e-3, 1, 2.0, test=2.1)
    # CAdamW: 4e-3 wins on validation; seeds 1-3 there (test 1.90, 1.95, 1.93).
    scaling_run(tmp_path, "adamw_sm", 2e-3, 1, 1.95, test=1.96, scale=1.5)
    for seed, test in ((1, 1.90), (2, 1.95), (3, 1.93)):
        scaling_run(tmp_path, "adamw_sm", 4e-3, seed, 1.9, test=test, scale=1.5)
    # AlphaAdam: 1e-3 wins; seeds 1-3 there (test 1.94, 1.92, 1.99).
    scaling_run(tmp_path, "alphaadam", 2e-3, 1, 1.97, test=1.98, scale=3.0)
    for seed, test in ((1, 1.94), (2, 1.92), (3, 1.99)):
        scaling_run(tmp_path, "alphaadam", 1e-3, seed, 1.85, test=test, scale=3.0)
    built = build_scaling_tables(load_runs(tmp_path))
    versus = next(
        p for t in built for p in t.parts if p.name == "reduced_scaling_alphaadam_vs_cadamw"
    )
    (row,) = versus.rows
    # Per seed, AlphaAdam minus CAdamW: +0.04, -0.03, +0.06 -> mean +0.0233, sd 0.0473.
    diffs = [0.04, -0.03, 0.06]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert row[0] == "d64_s100"
    assert row[1].startswith(f"{mean:+.3f} ± {sd:.3f} (n=3;")
    assert row[2].startswith("+0.015 ± 0.064 (n=2;")  # seeds 2-3: -0.03, +0.06
    assert row[3] == f"{(4.302653 + 1.060660) * sd / 3**0.5:.3f} (n=3)"
    # Every test loss is 1.0 higher at 20 % and 0.6 at 40 %, so Avg(Early)'s pairs are the same.
    assert row[4].startswith(f"{mean:+.3f} ± {sd:.3f} (n=3;")
