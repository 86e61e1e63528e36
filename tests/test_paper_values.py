"""results/paper/tables.yaml against the paper digest's own Markdown tables (shared/paper)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAPER_MD = REPO.parent / "shared" / "paper" / "PAPER.md"
PAPER = yaml.safe_load((REPO / "results" / "paper" / "tables.yaml").read_text())

pytestmark = pytest.mark.data


def _markdown_rows(heading: str) -> list[list[str]]:
    if not PAPER_MD.is_file():
        pytest.skip(f"{PAPER_MD} not present")
    text = PAPER_MD.read_text().split(heading, 1)[1]
    rows = []
    for line in text.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_table1_matches_the_paper():
    header, *rows = _markdown_rows("### Table 1")
    assert header == ["Method", "MRPC", "STS-B", "CoLA", "RTE", "SST-2", "QNLI", "QQP", "Avg"]
    keys = PAPER["table1"]["tasks"] + ["avg"]
    assert [r[0] for r in rows] == [e["label"] for e in PAPER["table1"]["rows"]]
    for row, entry in zip(rows, PAPER["table1"]["rows"]):
        assert [float(x) for x in row[1:]] == [entry["values"][k] for k in keys]


def test_table2_matches_the_paper():
    header, acc, loss = _markdown_rows("### Table 2")
    columns = PAPER["table2"]["columns"]
    assert header[1:] == [c["label"] for c in columns]
    assert [float(x) for x in acc[1:]] == [c["values"]["accuracy"] for c in columns]
    assert [float(x) for x in loss[1:]] == [c["values"]["train_loss"] for c in columns]


def test_table3_matches_the_paper():
    header, *rows = _markdown_rows("### Table 3")
    assert header[1:] == ["20%", "40%", "Avg(Early)", "60%", "100%", "Avg(Late)"]
    keys = ["20%", "40%", "avg_early", "60%", "100%", "avg_late"]
    for row, entry in zip(rows, PAPER["table3"]["rows"], strict=True):
        assert [float(x) for x in row[1:]] == [entry["values"][k] for k in keys]
