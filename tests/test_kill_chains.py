"""scripts/kill_chains.py: a SIGKILL aimed at a checkpoint's rename window is really hit, the
resumed run's record is true, and the chain's check is not vacuous (a false record fails it)."""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kill_chains():
    spec = importlib.util.spec_from_file_location(
        "kill_chains", REPO / "scripts" / "kill_chains.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_chains"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference(kill_chains, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    ended = kill_chains.segment(workdir / "run", None, resume=False, log=workdir / "log.txt")
    assert ended == "exit 0", (workdir / "log.txt").read_text()[-3000:]
    return workdir / "run"


def test_a_kill_between_rename_and_link_swap_resumes_to_the_uninterrupted_record(
    kill_chains, reference, tmp_path
):
    records = kill_chains.records(reference / "metrics.jsonl")
    chain = kill_chains.run_chain(["after_rename@80"], tmp_path, records, 10.0, random.Random(0))
    # the kill hit the window: step-80 renamed into place, latest still naming step-40
    assert chain.segments[0].startswith(
        "killed (after_rename@80): latest 0040, folders [0040 0080]"
    )
    assert chain.segments[-1] == "exit 0"
    assert chain.problems == [] and chain.compared > 100


def test_the_check_fails_a_stale_latest_an_extra_checkpoint_and_a_changed_value(
    kill_chains, reference, tmp_path
):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run, symlinks=True)
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "step-00000080", ckpts / "step-00000040")
    os.remove(ckpts / "latest")
    os.symlink("step-00000080", ckpts / "latest")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"loss": ', '"loss": 1', 1)  # one value changed
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")

    problems, _ = kill_chains.check(run, kill_chains.records(reference / "metrics.jsonl"))
    text = "; ".join(problems)
    assert "latest -> step-00000080, not step-00000120" in text
    assert "3 checkpoints kept" in text
    assert "uninterrupted" in text  # the changed value, named with its step and key
