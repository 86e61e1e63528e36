"""The run directory (``alphaadam.run_dir``): where a run's directory is and which run
``trainer.resume`` continues (a run directory is never overwritten, a completed run never
rerun, each multirun job gets its own); the config guard, which refuses a resume under a
changed config (checked against config.yaml, or without one the copy each checkpoint
carries, and one clear error when config.yaml is damaged), names the keys that differ, and
lets the keys of ``RESUME_MAY_CHANGE`` change; the lock that keeps a second process out;
and the file helpers under the run record: a torn or damaged metrics.jsonl line, the atomic
summary write on a full disk, and the offline wandb mirror of the metrics."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from alphaadam.run_dir import RESUME_MAY_CHANGE, RunDirError, config_differences
from trainer_helpers import (
    REPO,
    RUN,
    TINY,
    _crashed_run,
    _main_exit,
    _same_weights,
    comparable_records,
    compose_config,
    read_jsonl,
    run_training,
    subprocess_env,
    summary,
    train_records,
)


# ---------------------------------------------- where the run directory is, resume=auto
def test_a_run_directory_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "mine"
    run = ["trainer.max_steps=2", f"trainer.run_dir={run_dir}", *TINY]
    assert run_training(run, tmp_path) == run_dir
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match="already holds a run"):
        run_training(run, tmp_path)
    # resume=auto on a completed run does nothing
    assert run_training([*run, "trainer.resume=auto"], tmp_path) == run_dir
    assert (run_dir / "metrics.jsonl").read_text() == before
    # and two runs of one config get two directories
    first = run_training(["trainer.max_steps=1", *TINY], tmp_path / "x")
    second = run_training(["trainer.max_steps=1", *TINY], tmp_path / "x")
    assert first != second and first.parent == second.parent


def test_resume_from_a_path_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RunDirError, match="no checkpoints/latest"):
        run_training([f"trainer.resume={tmp_path / 'nothing'}", *TINY], tmp_path)


def test_resume_auto_without_run_dir_does_not_rerun_a_completed_run(tmp_path):
    run = ["trainer.max_steps=2", *TINY]
    first = run_training(run, tmp_path)
    before = (first / "metrics.jsonl").read_text()
    again = run_training([*run, "trainer.resume=auto"], tmp_path)
    assert again == first
    assert [p.name for p in first.parent.iterdir()] == [first.name]
    assert (first / "metrics.jsonl").read_text() == before
    # Another config is another run.
    other = run_training([*run, "trainer.resume=auto", "optimizer.lr=1e-3"], tmp_path)
    assert other != first and summary(other)["lr"] == 1e-3


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_run_directory(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "optimizer=adamw,alphaadam",
            "trainer.max_steps=2",
            "trainer.progress_bar=false",
            "trainer.eval_at_start=false",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p for p in (tmp_path / "results" / "runs" / "smoke").glob("*/*") if p.is_dir())
    assert [p.parent.name for p in runs] == ["adamw", "alphaadam"]
    assert all(summary(p)["status"] == "completed" for p in runs)


# --------------------------------------------------------------------- the config guard
def test_resume_refuses_a_changed_config_and_names_exactly_the_differing_keys(
    tmp_path, monkeypatch
):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    config_before = (run_dir / "config.yaml").read_text()
    summary_before = (run_dir / "summary.json").read_text()
    changed = {"optimizer.lr": (0.003, 0.0001), "trainer.max_steps": (6, 300), "seed": (1337, 7)}
    with pytest.raises(RunDirError) as err:
        run_training(
            [
                *RUN,
                f"trainer.run_dir={run_dir}",
                "trainer.resume=auto",
                "optimizer.lr=1e-4",
                "trainer.max_steps=300",
                "seed=7",
                "trainer.progress_bar=true",  # allowed: changes no number
            ],
            tmp_path,
        )
    message = str(err.value)
    listed = {
        key: (run, now)
        for key, run, now in re.findall(r"^  (\S+)\s+run: (.+?)  now: (.+)$", message, re.M)
    }
    # Exactly the keys that differ, with both values; the allowed progress_bar is not listed.
    assert listed == {key: (repr(a), repr(b)) for key, (a, b) in changed.items()}
    assert "trainer.progress_bar" in message.split("may change only:")[1]
    # Nothing was rewritten: the run's records still describe the run that ran.
    assert (run_dir / "config.yaml").read_text() == config_before
    assert (run_dir / "summary.json").read_text() == summary_before


def test_resume_under_another_optimizer_is_refused_not_a_key_error(tmp_path, monkeypatch):
    run_dir = _crashed_run(monkeypatch, tmp_path, [*RUN, "optimizer=adamw"])
    with pytest.raises(RunDirError, match=r"optimizer\.name\s+run: 'adamw'  now: 'alphaadam'"):
        run_training(
            [*RUN, f"trainer.run_dir={run_dir}", "trainer.resume=auto", "optimizer=alphaadam"],
            tmp_path,
        )


def test_config_differences_are_exactly_the_changed_keys_outside_the_allowed_list():
    base = compose_config(["experiment=smoke"])
    changed = compose_config(
        [
            "experiment=smoke",
            "optimizer.lr=1e-4",
            "data.block_size=32",
            "trainer.warmup_steps=5",
            "+optimizer.extra=1",
            "trainer.log_every=3",
            "trainer.output_root=/elsewhere",
            "trainer.checkpoint_every=7",
        ]
    )
    found = {key: (a, b) for key, a, b in config_differences(base, changed)}
    assert found == {
        "optimizer.lr": (0.003, 0.0001),
        "data.block_size": (64, 32),
        "trainer.warmup_steps": (base.trainer.warmup_steps, 5),
        "optimizer.extra": ("(not set)", 1),
    }
    assert {"trainer.log_every", "trainer.output_root", "trainer.checkpoint_every"} <= set(
        RESUME_MAY_CHANGE
    )
    # A study's plan (a method added to its sweep) never blocks resuming its runs.
    planned = OmegaConf.to_container(base, resolve=True)
    planned["study"] = {"methods": {"alphaadam_onepass": {"lrs": [1e-3]}}}
    planned["scale"] = "other"
    assert config_differences(base, planned) == []


def test_allowed_changes_resume_and_give_the_uninterrupted_result(tmp_path, monkeypatch, reference):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    resumed = run_training(
        [
            *RUN,
            "trainer.resume=auto",  # found by its config although the allowed keys differ
            "trainer.log_every=2",
            "trainer.checkpoint_every=3",
            "trainer.keep_checkpoints=1",
            "trainer.mask_stats_every=2",
            "trainer.nan_skip_budget=3",
        ],
        tmp_path,
    )
    assert resumed == run_dir and summary(resumed)["status"] == "completed"
    assert _same_weights(resumed, reference)
    ref = {r["step"]: r for r in comparable_records(train_records(reference))}
    assert all(ref[r["step"]] == r for r in comparable_records(train_records(resumed)))


def test_a_resume_without_config_yaml_is_checked_against_the_config_the_checkpoint_carries(
    tmp_path, monkeypatch, reference
):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    (run_dir / "config.yaml").unlink()
    with pytest.raises(RunDirError, match=r"optimizer\.lr\s+run: 0\.003  now: 0\.0005"):
        run_training(
            [*RUN, f"trainer.run_dir={run_dir}", "trainer.resume=auto", "optimizer.lr=5e-4"],
            tmp_path,
        )
    assert not (run_dir / "config.yaml").exists()  # the refused resume wrote nothing
    resumed = run_training([*RUN, f"trainer.run_dir={run_dir}", "trainer.resume=auto"], tmp_path)
    assert summary(resumed)["status"] == "completed" and _same_weights(resumed, reference)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optimizer"]["lr"] == 0.003


@pytest.mark.parametrize(
    ("text", "problem"),
    [("optimizer: {lr: [0.003\n", "not valid YAML"), ("", "it is empty")],
    ids=["garbage", "empty"],
)
def test_a_damaged_config_yaml_is_one_clear_error_not_a_traceback_or_a_diff(
    tmp_path, monkeypatch, capsys, text, problem
):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    (run_dir / "config.yaml").write_text(text)
    summary_before = (run_dir / "summary.json").read_text()
    capsys.readouterr()
    code = _main_exit([*RUN, f"trainer.run_dir={run_dir}", "trainer.resume=auto"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(f"error: {run_dir / 'config.yaml'} is damaged")
    assert problem in err[0] and "Keys that differ" not in err[0]
    assert (run_dir / "summary.json").read_text() == summary_before


# ----------------------------------------------------------------------------- the lock
def test_a_second_process_on_a_run_dir_fails_at_once_naming_the_holder_and_sigkill_frees_it(
    tmp_path,
):
    import socket

    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            f"trainer.run_dir={run_dir}",
            "trainer.max_steps=100000",
            "trainer.progress_bar=false",
            "trainer.eval_at_start=false",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").is_file():  # the holder is training
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.1)
        records_before = (run_dir / "summary.json").read_text()
        with pytest.raises(RunDirError) as err:
            run_training(
                [f"trainer.run_dir={run_dir}", "trainer.resume=auto", "trainer.max_steps=100000"],
                tmp_path,
            )
        assert f"PID {holder.pid} on host {socket.gethostname()}" in str(err.value)
        assert (run_dir / "summary.json").read_text() == records_before  # not touched
    finally:
        holder.kill()  # SIGKILL: no handler runs, no lock file is cleaned up
        holder.wait(timeout=60)
    assert summary(run_dir)["status"] == "running"
    # The kernel dropped the lock with the process: the next attempt is let in.
    lock_path = run_dir / ".lock"
    import fcntl

    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if held


# ----------------------------------------- the files: JSON lines, atomic summary, wandb
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(
    tmp_path, monkeypatch, caplog, reference
):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 5, "lo')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        resumed = run_training([*RUN, "trainer.resume=auto"], tmp_path)
    assert "metrics.jsonl: dropped its torn last line" in caplog.text
    assert comparable_records(read_jsonl(resumed / "metrics.jsonl")) == comparable_records(
        read_jsonl(reference / "metrics.jsonl")
    )


def test_a_damaged_line_before_the_last_is_a_named_error(tmp_path, monkeypatch):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    with pytest.raises(RunDirError, match=r"metrics\.jsonl line 2 is not JSON"):
        run_training([*RUN, "trainer.resume=auto"], tmp_path)


def test_a_summary_write_that_runs_out_of_space_leaves_the_old_summary_and_no_temp_file(
    tmp_path, monkeypatch
):
    import errno

    from alphaadam import run_dir as rd

    target = tmp_path / "summary.json"
    target.write_text('{"status": "running"}\n')
    real_write = Path.write_text

    def full(self, *args, **kwargs):
        if self.name == ".summary.json.tmp":
            self.touch()  # created, then nothing fits
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        rd.write_json_atomic(target, {"status": "failed"})
    assert target.read_text() == '{"status": "running"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.slow
def test_wandb_logger_is_offline_by_default(tmp_path, monkeypatch):
    pytest.importorskip(
        "wandb", reason="wandb is in the logging extra (pip install -e '.[logging]')"
    )
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = run_training(["logger=wandb", "trainer.max_steps=2", *TINY], tmp_path)
    assert os.environ["WANDB_MODE"] == "offline"
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert len(train_records(run_dir)) == 2  # the JSONL is still written
