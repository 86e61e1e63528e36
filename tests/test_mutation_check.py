"""The mutation check's quick subset: wrong updates on the single-tensor and foreach paths
and in the shared formulas must each make a test fail (scripts/mutation_check.py; the whole
check, with the C++, compiled and Triton paths, is results/mutation_check.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="copies the tree with git ls-files")
def test_every_quick_mutant_is_caught():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "scripts/mutation_check.py", "--paths", "single", "foreach", "shared",
         "--no-write"],
        cwd=REPO, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "17 of 17 mutants caught." in proc.stdout, proc.stdout[-3000:]
