"""Tables in README.md and docs/*.md that quote results files are written from those files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def doc_tables():
    spec = importlib.util.spec_from_file_location("doc_tables", REPO / "scripts" / "doc_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_tables"] = module
    spec.loader.exec_module(module)
    return module


def _step_report(threads: int, rows: dict[str, tuple[float, float | None, float]]) -> dict:
    return {
        "command": f"python benchmarks/optimizer_step.py --threads {threads}",
        "date": "2026-01-02T03:04:05+00:00",
        "device": "cpu (x86_64)",
        "torch": "2.13.0+cpu",
        "cpu_count": 2,
        "torch_threads": threads,
        "load_average_at_end": [0.5, 0.4, 0.3],
        "repeats": 5,
        "steps": 3,
        "results": [
            {"variant": v, "median_ms": ms, "x_torch_fused": x, "step_peak_mib": mib}
            for v, (ms, x, mib) in rows.items()
        ],
    }


def test_every_generated_table_matches_its_results_file(doc_tables, capsys):
    rc = doc_tables.main(["--check"])
    assert rc == 0, capsys.readouterr().out
    # The README's step-time and memory tables are generated ones.
    readme = (REPO / "README.md").read_text()
    assert "<!-- doc_tables: step_time " in readme
    assert "<!-- doc_tables: memory_summary " in readme


def test_step_time_table_from_two_reports(doc_tables, tmp_path):
    one = _step_report(
        1, {"torch_adamw_fused": (200.0, 1.0, 0.0), "alphaadam_cpu": (333.4, 1.667, 36.8)}
    )
    two = _step_report(2, {"torch_adamw_fused": (100.0, 1.0, 0.0)})
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps(two))
    lines = doc_tables.render("step_time one.json two.json", tmp_path).splitlines()
    assert lines[:4] == [
        "| variant | ms/step, 1 thread | × torch fused AdamW | ms/step, 2 threads "
        "| × torch fused AdamW | extra memory: kept buffers + step peak |",
        "|---|---:|---:|---:|---:|---:|",
        "| torch AdamW `fused=True` | 200 | 1.00 | 100 | 1.00 | 0 MiB |",
        "| AlphaAdam C++ (`fused=True` on CPU) | 333 | 1.67 | — | — | 37 MiB |",
    ]
    assert "measured by `python benchmarks/optimizer_step.py --threads 2`" in lines[-1]
    assert "`two.json`" in lines[-1]


def test_step_time_table_from_a_paired_report(doc_tables, tmp_path):
    # benchmarks/optimizer_step.py pairs every step with one of torch's fused AdamW: the
    # table shows the per-pair ratios' median and 90th percentile, not a ratio of medians.
    report = _step_report(1, {"torch_adamw_fused": (150.0, 1.0, 0.0)})
    report["pair_with"] = "torch_adamw_fused"
    report["results"][0].update(x_paired_median=1.0, x_paired_p90=1.0)
    report["results"].append(
        {"variant": "alphaadam_onepass_cpu", "median_ms": 152.4, "x_torch_fused": 1.016,
         "x_paired_median": 1.02, "x_paired_p90": 1.04, "step_peak_mib": 0.5,
         "workspace_mib": 183.9}
    )  # fmt: skip
    (tmp_path / "p.json").write_text(json.dumps(report))
    lines = doc_tables.render("step_time p.json", tmp_path).splitlines()
    assert lines[:4] == [
        "| variant | ms/step, 1 thread | × torch fused AdamW | × at the 90th percentile "
        "| extra memory: kept buffers + step peak |",
        "|---|---:|---:|---:|---:|",
        "| torch AdamW `fused=True` | 150 | 1.00 | 1.00 | 0 MiB |",
        # kept buffers + step peak: 183.9 + 0.5 MiB
        "| AlphaAdam one-pass C++ (`one_pass=True, fused=True` on CPU) | 152 | 1.02 | 1.04 | 184 MiB |",
    ]
    assert "each paired with a step of torch's fused AdamW" in lines[-1]


def test_memory_summary_groups_equal_rows(doc_tables, tmp_path):
    rows = [
        dict(config="b", name="b", source="pkg 1", devices="CPU", bytes_per_param=8.0),
        dict(config="a", name="a", source="pkg 1", devices="CPU", bytes_per_param=8.0),
        dict(config="c", name="c", source="pkg 2", devices="CUDA only", bytes_per_param=None,
             note="not run: needs a CUDA GPU"),
    ]  # fmt: skip
    meta = dict(command="python benchmarks/optimizer_memory.py", date="d", torch="t", n_layer=12)
    (tmp_path / "m.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    lines = doc_tables.render("memory_summary m.json", tmp_path).splitlines()
    assert lines[2:4] == [
        "| `a`, `b` | pkg 1 | CPU | 8.0 |",
        "| `c` | pkg 2 | CUDA only | not run: needs a CUDA GPU |",
    ]


def test_stale_block_is_reported_then_rewritten(doc_tables, tmp_path, capsys):
    report = _step_report(1, {"torch_adamw_fused": (200.0, 1.0, 0.0)})
    (tmp_path / "r.json").write_text(json.dumps(report))
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "README.md"
    doc.write_text(
        "Intro.\n\n<!-- doc_tables: step_time r.json -->\n| hand-edited | 150 |\n"
        "<!-- /doc_tables -->\n\nOutro.\n"
    )
    assert doc_tables.main(["--check", "--root", str(tmp_path)]) == 1
    assert "README.md: stale table `step_time r.json`" in capsys.readouterr().out
    assert "hand-edited" in doc.read_text()  # --check writes nothing
    assert doc_tables.main(["--root", str(tmp_path)]) == 0
    text = doc.read_text()
    assert "hand-edited" not in text and "| torch AdamW `fused=True` | 200 |" in text
    assert text.startswith("Intro.\n\n<!-- doc_tables: step_time r.json -->\n")
    assert text.endswith("<!-- /doc_tables -->\n\nOutro.\n")
    assert doc_tables.main(["--check", "--root", str(tmp_path)]) == 0


def test_unknown_renderer_names_the_valid_ones(doc_tables, tmp_path):
    with pytest.raises(ValueError, match="'nope'.*step_time, memory, memory_summary"):
        doc_tables.render("nope x.json", tmp_path)


def test_include_copies_a_generated_file_verbatim(doc_tables, tmp_path):
    (tmp_path / "t.md").write_text("### Table\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "README.md"
    doc.write_text("<!-- doc_tables: include t.md -->\nold\n<!-- /doc_tables -->\n")
    assert doc_tables.main(["--root", str(tmp_path)]) == 0
    assert doc.read_text() == (
        "<!-- doc_tables: include t.md -->\n### Table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        "<!-- /doc_tables -->\n"
    )
