"""``make check-runs`` (scripts/check_runs.py): a committed run re-run at HEAD matches its own
records, and a tampered committed value is caught, named and fails the check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_helpers import subprocess_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_runs.py"


def _run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def made_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("check") / "run"
    done = _run(
        ["train.py", "optimizer=alphaadam", "trainer.max_steps=12", "trainer.log_every=1",
         "trainer.eval_every=0", "trainer.eval_at_start=false", "trainer.progress_bar=false",
         "trainer.mask_stats_every=0", f"trainer.run_dir={run_dir}"]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return run_dir


def test_a_run_re_run_at_head_is_bit_identical_over_the_prefix(made_run: Path):
    done = _run([str(SCRIPT), "--steps", "6", str(made_run)])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| `{made_run}"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "yes" and cells[5] == "0.00e+00"  # bit-identical
    # Steps 1-6, each with loss, lr, grad norm, tokens and the mask statistics' aggregates.
    assert int(cells[2]) >= 6 * 4


def test_a_tampered_committed_value_is_caught(made_run: Path, tmp_path: Path):
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(made_run), str(tampered)], check=True)
    lines = (tampered / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    target = next(r for r in rows if r["kind"] == "train" and r["step"] == 4)
    committed_loss = target["loss"]
    target["loss"] = committed_loss * 1.01  # a 1 % edit of one logged value
    (tampered / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = _run([str(SCRIPT), "--steps", "6", str(tampered)])
    assert done.returncode == 1, done.stdout[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| `{tampered}"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "no" and cells[6] == "NO"
    assert cells[4].startswith("4, train.loss:")
    # The relative difference is the edit's, 1 % of the larger value, and where it is.
    largest, where = cells[5].split(" ", 1)
    assert float(largest) == pytest.approx(0.01 / 1.01, rel=1e-2)
    assert where == "(4, train.loss)"


def test_against_reference_code_the_committed_records_are_not_read(made_run: Path, tmp_path):
    # The committed loss is edited, but --reference-code compares two fresh re-runs (HEAD and
    # the given checkout, here HEAD itself): identical, whatever the record says.
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(made_run), str(tampered)], check=True)
    metrics = tampered / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"loss": ', '"loss": 1', 1))
    done = _run([str(SCRIPT), "--steps", "4", "--reference-code", str(REPO), str(tampered)])
    assert done.returncode == 0, done.stdout[-2000:]
    assert f"a re-run by the code in {REPO} on this machine" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith(f"| `{tampered}"))
    assert [c.strip() for c in row.strip("|").split("|")][3] == "yes"
