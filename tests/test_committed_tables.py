"""The committed tables are what ``make tables`` writes from the committed runs, byte for byte
(issue 11: a fresh clone's ``make tables`` reproduces them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("results/tables/", "results/figures/", "results/benchmarks/")


def _tracked(prefix: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", prefix], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in out.split("\0") if name]


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="reads the committed files with git")
def test_committed_tables_are_make_tables_output_of_the_committed_runs(tmp_path):
    tables = [t for t in _tracked("results/tables/") if not t.endswith("/")]
    assert tables, "results/tables/ holds no committed tables; run make tables and commit them"
    # Only committed run files: a checkout may also hold runs still going or not yet committed.
    root = tmp_path / "results"
    for name in _tracked("results/"):
        if name.startswith(GENERATED):
            continue
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, target)
    out = tmp_path / "tables"
    subprocess.run(
        [sys.executable, "scripts/make_tables.py", "--root", str(root), "--out", str(out),
         "--paper", str(root / "paper" / "tables.yaml")],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(t).name for t in tables)
    for name in tables:
        assert (out / Path(name).name).read_bytes() == (REPO / name).read_bytes(), name
