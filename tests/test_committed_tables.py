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
# An unpacked sdist or wheel has no .git: which files are committed cannot be known there.
needs_git_checkout = pytest.mark.skipif(
    not (REPO / ".git").exists(), reason="needs a git checkout: reads the committed files with git"
)


def _tracked(prefix: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", prefix], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in out.split("\0") if name]


def _copy_tracked(prefix: str, dest: Path, skip: tuple[str, ...] = ()) -> None:
    """The committed files under ``prefix`` (less those starting with ``skip``), at the same
    relative paths under ``dest``."""
    for name in _tracked(prefix):
        if name.startswith(skip):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, target)


def _make_tables(root: Path, out: Path, paper: Path = REPO / "results/paper/tables.yaml") -> None:
    subprocess.run(
        [sys.executable, "scripts/make_tables.py", "--root", str(root), "--out", str(out),
         "--paper", str(paper)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip


@needs_git_checkout
def test_committed_tables_are_make_tables_output_of_the_committed_runs(tmp_path):
    tables = [t for t in _tracked("results/tables/") if not t.endswith("/")]
    assert tables, "results/tables/ holds no committed tables; run make tables and commit them"
    # Only committed run files: a checkout may also hold runs still going or not yet committed.
    _copy_tracked("results/", tmp_path, skip=GENERATED)
    out = tmp_path / "tables"
    _make_tables(tmp_path / "results", out, paper=tmp_path / "results/paper/tables.yaml")
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(t).name for t in tables)
    for name in tables:
        assert (out / Path(name).name).read_bytes() == (REPO / name).read_bytes(), name


@needs_git_checkout
def test_the_study_plan_is_exactly_the_committed_runs(tmp_path):
    """``make reproduce-small`` from a fresh clone plans the committed run set, no more (a run
    the tables show but the study would not make) and no less (nothing left to run)."""
    from alphaadam.study import STUDY_SWEEPS, Study, group_state

    summaries = [n for n in _tracked("results/reduced/") if n.endswith("/summary.json")]
    assert summaries, "no committed study runs under results/reduced/"
    for name in summaries:
        for file in ("summary.json", "config.yaml"):
            source = REPO / name.replace("summary.json", file)
            target = tmp_path / name.replace("summary.json", file)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    root = tmp_path / "results" / "reduced"
    for sweep in STUDY_SWEEPS:
        study = Study.load(sweep, extra=[f"study.root={root}"])
        # A study still running (`study.finished: false`, flipped when its last run is
        # committed) may have jobs left; what it has committed must still be its own jobs.
        finished = bool(study.spec.get("finished", False))
        planned = set()
        for method, task in study.groups():
            state = group_state(study, method, task)
            if finished:
                assert state.grid_final and not state.waiting, (sweep, method, task, state.waiting)
            planned |= {job.run_dir for job in state.jobs}
        committed = {p.parent for p in (root / sweep).rglob("summary.json")}
        if finished:
            assert planned == committed, (sweep, sorted(planned ^ committed))
        else:
            assert committed <= planned, (sweep, sorted(committed - planned))


@needs_git_checkout
def test_superseded_tables_are_make_tables_output_of_their_own_runs(tmp_path):
    """A superseded design's committed tables are still what its committed runs give, so the
    record under results/superseded/ cannot drift from its runs."""
    studies = sorted({n.split("/")[2] for n in _tracked("results/superseded/") if n.count("/") > 2})
    assert studies, "no superseded study under results/superseded/"
    for study in studies:
        prefix = f"results/superseded/{study}/"
        _copy_tracked(prefix, tmp_path)
        out = tmp_path / "out" / study
        _make_tables(tmp_path / prefix, out)
        committed = _tracked(prefix + "tables/")
        assert committed, f"{prefix} has no tables/"
        for name in committed:
            assert (out / Path(name).name).read_bytes() == (REPO / name).read_bytes(), name
