"""The step benchmark runs end to end on a tiny scale and writes its JSON and Markdown."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimizer_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("optimizer_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["optimizer_step"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpt2_small_shapes_have_124m_parameters(bench):
    shapes = bench.gpt2_small_shapes()
    assert len(shapes) == 148  # 2 embeddings + 12 x 12 + final layer norm's 2
    total = sum(math.prod(s) for s in shapes.values())
    assert total == 124_439_808  # GPT-2 small (tied lm_head)
    assert shapes["h.0.attn.c_attn.weight"] == (768, 2304)
    assert shapes["h.11.mlp.c_proj.weight"] == (3072, 768)
    assert len(bench.gpt2_small_shapes(0.01)) == 148


def test_benchmark_writes_json_and_markdown(bench, tmp_path):
    variants = ["torch_adamw_foreach", "torch_adamw_fused", "alphaadam_foreach", "adamw_single"]
    bench.main(
        ["--scale", "0.002", "--steps", "1", "--warmup", "1", "--repeats", "2"]
        + ["--variants", *variants, "--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "optimizer_step_cpu_scale0.002.json").read_text())
    assert [r["variant"] for r in report["results"]] == variants
    for key in ("device", "torch", "cpu_count", "date", "command", "n_params"):
        assert report[key]
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["torch_adamw_foreach"]["x_torch_foreach"] == 1.0
    assert rows["torch_adamw_fused"]["x_torch_fused"] == 1.0
    assert all(r["n_timed_steps"] == 2 and r["median_ms"] > 0 for r in rows.values())
    # Two fp32 moments per parameter (plus per-tensor scalars for the masked preset).
    expected_state = 2 * 4 * report["n_params"] / 2**20
    assert rows["torch_adamw_foreach"]["state_mib"] == pytest.approx(expected_state, rel=1e-3)
    assert rows["alphaadam_foreach"]["state_mib"] == pytest.approx(expected_state, rel=1e-2)
    # torch's foreach AdamW keeps one model-sized temporary (sqrt(v)) alive: >= 1 x params.
    assert rows["torch_adamw_foreach"]["step_peak_mib"] >= 4 * report["n_params"] / 2**20 * 0.99
    assert "| alphaadam_foreach |" in (tmp_path / "optimizer_step_cpu_scale0.002.md").read_text()


def test_name_suffixes_the_output_files(bench, tmp_path):
    bench.main(
        ["--scale", "0.001", "--steps", "1", "--repeats", "1", "--variants", "adamw_single"]
        + ["--name", "quiet", "--out", str(tmp_path)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "optimizer_step_cpu_scale0.001_quiet.json",
        "optimizer_step_cpu_scale0.001_quiet.md",
    ]


def test_paired_steps_report_median_p90_and_spread(bench, tmp_path):
    variants = ["torch_adamw_fused", "alphaadam_cpu", "alphaadam_onepass_single"]
    bench.main(
        ["--scale", "0.002", "--steps", "3", "--warmup", "2", "--repeats", "2"]
        + ["--variants", *variants, "--out", str(tmp_path), "--name", "paired"]
    )
    report = json.loads((tmp_path / "optimizer_step_cpu_scale0.002_paired.json").read_text())
    assert report["pair_with"] == "torch_adamw_fused"
    rows = {r["variant"]: r for r in report["results"]}
    for row in rows.values():
        assert row["n_timed_steps"] == 6
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["max_ms"]
        assert row["x_paired_min"] <= row["x_paired_median"] <= row["x_paired_p90"]
        assert row["x_paired_p90"] <= row["x_paired_max"]
    assert rows["torch_adamw_fused"]["x_paired_p90"] == 1.0
    table = (tmp_path / "optimizer_step_cpu_scale0.002_paired.md").read_text()
    assert "paired: median | p90 | min–max" in table and "| alphaadam_onepass_single |" in table


def test_percentile_interpolates_like_numpy(bench):
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    # By hand: sorted 1 2 3 4 5 10; position 0.9 * 5 = 4.5 -> halfway between 5 and 10.
    assert bench.percentile(values, 90) == 7.5
    assert bench.percentile(values, 50) == 3.5
    assert bench.percentile([2.0], 90) == 2.0
    assert bench.spread([1.0, 3.0, 2.0], 10.0) == {
        "median": 20.0,
        "p90": 28.0,
        "min": 10.0,
        "max": 30.0,
    }


def test_unknown_variant_is_rejected(bench, tmp_path):
    with pytest.raises(SystemExit, match="nope.*valid choices"):
        bench.main(["--scale", "0.001", "--variants", "nope", "--out", str(tmp_path)])
