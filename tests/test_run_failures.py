"""A run directory never lies (issue 13): resume refuses a changed config, damaged files get
a named error and a way forward, every exit writes a final status, bad input fails before
the run directory exists, and batch jobs get plain progress lines."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from alphaadam import checkpoint as ckpt_mod
from alphaadam.checkpoint import CheckpointError
from alphaadam.run_dir import RESUME_MAY_CHANGE, RunDirError, config_differences
from alphaadam.tasks.lm import LMTask
from alphaadam.trainer import TRAINER_KEYS, NonFiniteLossError, RunInterrupted
from trainer_helpers import (
    CONFIG_DIR,
    REPO,
    TINY,
    Crash,
    comparable_records,
    compose_config,
    interrupt_forward,
    read_jsonl,
    reset_accelerate,
    run_config,
    run_training,
    saved_weights,
    subprocess_env,
    summary,
    train_records,
)

# Checkpoints at steps 2 and 4 (both kept); a crash during step 5 leaves both.
RUN = [
    "optimizer=alphaadam",
    "model.dropout=0.1",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=2",
    "trainer.keep_checkpoints=2",
    "trainer.eval_every=3",
    *TINY,
]


def _crashed_run(monkeypatch, root: Path, overrides=RUN, step: int = 5) -> Path:
    interrupt_forward(monkeypatch, step, Crash("simulated kill"))  # one micro-batch a step
    with pytest.raises(Crash):
        run_training(overrides, root)
    monkeypatch.undo()
    (run_dir,) = (p for p in root.glob("smoke/*/*") if p.is_dir())
    return run_dir


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = saved_weights(a), saved_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """RUN without interruption."""
    return run_training(RUN, tmp_path_factory.mktemp("reference"))


# ===================================================== 1. resume under a changed config
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


# ============================================================ 2. damaged files
DAMAGEABLE = ["model.pt", "optimizer.pt", "scheduler.pt", "rank0.pt", "trainer_state.json"]


@pytest.mark.parametrize("damaged", DAMAGEABLE)
def test_a_damaged_checkpoint_file_is_named_and_the_run_falls_back_to_the_previous(
    tmp_path, monkeypatch, caplog, reference, damaged
):
    run_dir = _crashed_run(monkeypatch, tmp_path)
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002", "step-00000004"]
    target = ckpts / "step-00000004" / damaged
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # truncated

    with caplog.at_level(logging.WARNING):
        resumed = run_training([*RUN, "trainer.resume=auto"], tmp_path)
    warning = caplog.text
    assert f"step-00000004 is damaged ({damaged}:" in warning
    assert "resuming from step-00000002" in warning
    assert (ckpts / "damaged-step-00000004" / damaged).is_file()  # kept for inspection
    assert summary(resumed)["status"] == "completed"
    assert _same_weights(resumed, reference)
    assert comparable_records(read_jsonl(resumed / "metrics.jsonl")) == comparable_records(
        read_jsonl(reference / "metrics.jsonl")
    )


def test_no_complete_checkpoint_left_is_a_named_error_and_a_failed_status(tmp_path, monkeypatch):
    run = [*RUN, "trainer.keep_checkpoints=1"]
    run_dir = _crashed_run(monkeypatch, tmp_path, run)
    (run_dir / "checkpoints" / "step-00000004" / "model.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"step-00000004 is damaged \(model.pt: empty") as err:
        run_training([*run, "trainer.resume=auto"], tmp_path)
    assert "start a new run" in str(err.value)
    s = summary(run_dir)
    assert s["status"] == "failed" and "model.pt: empty" in s["error"]


def test_a_checkpoint_that_fails_its_check_keeps_the_previous_one_even_with_keep_1(
    tmp_path, monkeypatch
):
    real_save = torch.save

    def save_then_lose_the_tail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        path = Path(f)
        if path.parent.name == ".tmp-step-00000004" and path.name == "model.pt":
            path.write_bytes(path.read_bytes()[:100])  # the disk kept only the start

    monkeypatch.setattr(ckpt_mod.torch, "save", save_then_lose_the_tail)
    run = ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=1", *TINY]
    with pytest.raises(CheckpointError, match=r"step 4 failed its check.*model\.pt: truncated"):
        run_training(run, tmp_path)
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    ckpts = run_dir / "checkpoints"
    assert os.readlink(ckpts / "latest") == "step-00000002"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002"]
    assert ckpt_mod.checkpoint_problems(ckpts / "step-00000002", world_size=1) == []
    s = summary(run_dir)
    assert s["status"] == "failed" and "model.pt" in s["error"] and s["steps"] == 4


def test_resuming_with_another_process_count_is_refused_and_moves_nothing(tmp_path):
    folder = tmp_path / "step-00000002"
    folder.mkdir()
    for name in ("model.pt", "optimizer.pt", "scheduler.pt", "rank0.pt", "rank1.pt"):
        torch.save({"x": torch.ones(2)}, folder / name)
    (folder / "trainer_state.json").write_text("{}")
    assert ckpt_mod.checkpoint_problems(folder, world_size=2) == []
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\) and this run has 1"):
        ckpt_mod.find_resume_checkpoint(tmp_path, world_size=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000002"]  # not set aside


def test_a_file_that_is_readable_as_zip_but_not_as_torch_names_itself(tmp_path):
    import zipfile

    folder = tmp_path / "step-00000001"
    folder.mkdir()
    for name in ("model.pt", "optimizer.pt", "scheduler.pt", "rank0.pt"):
        torch.save({"x": torch.ones(2)}, folder / name)
    (folder / "trainer_state.json").write_text("{}")
    with zipfile.ZipFile(folder / "scheduler.pt", "w") as bad:
        bad.writestr("archive/data.pkl", b"not a pickle")
    with pytest.raises(CheckpointError, match=r"scheduler\.pt cannot be read .* damaged"):
        ckpt_mod.load_checkpoint(folder, rank=0)


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


# ========================================================= 3. every exit has a status
def test_a_failure_in_the_step_0_evaluation_is_recorded_as_failed(tmp_path, monkeypatch):
    def broken_eval(self, model, accelerator):
        raise Crash("evaluation blew up")

    monkeypatch.setattr(LMTask, "evaluate", broken_eval)
    with pytest.raises(Crash):
        run_training(["trainer.max_steps=2", "trainer.eval_at_start=true", *TINY], tmp_path)
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    s = summary(run_dir)
    assert s["status"] == "failed" and s["error"] == "Crash: evaluation blew up"


def test_a_failure_while_restoring_a_checkpoint_is_recorded_as_failed(tmp_path, monkeypatch):
    run = [*RUN, "trainer.keep_checkpoints=1"]
    run_dir = _crashed_run(monkeypatch, tmp_path, run)
    # As a hard kill leaves it; then the resume cannot restore the optimizer state.
    s = summary(run_dir)
    (run_dir / "summary.json").write_text(json.dumps({**s, "status": "running"}))
    folder = run_dir / "checkpoints" / "step-00000004"
    torch.save({"not": "an optimizer state"}, folder / "optimizer.pt")
    # Written so (not changed since): the manifest's checksum matches, the check passes.
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["optimizer.pt"] = hashlib.sha256(
        (folder / "optimizer.pt").read_bytes()
    ).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KeyError, match="param_groups"):
        run_training([*run, "trainer.resume=auto"], tmp_path)
    after = summary(run_dir)
    assert after["status"] == "failed" and after["error"] == "KeyError: 'param_groups'"


@pytest.mark.parametrize(
    ("send", "expected_error"),
    [
        (lambda: os.kill(os.getpid(), signal.SIGTERM), "SIGTERM"),
        (lambda: os.kill(os.getpid(), signal.SIGINT), "SIGINT"),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_writes_interrupted_and_the_run_resumes(
    tmp_path, monkeypatch, reference, send, expected_error
):
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own
    try:
        _interrupt_and_resume(tmp_path, monkeypatch, reference, send, expected_error)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)


def _interrupt_and_resume(tmp_path, monkeypatch, reference, send, expected_error):
    handler_before = signal.getsignal(signal.SIGTERM)
    interrupt_forward(monkeypatch, 5, action=send)
    with pytest.raises((RunInterrupted, KeyboardInterrupt)):
        run_training(RUN, tmp_path)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == handler_before  # put back after the run
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["error"] == expected_error and s["steps"] == 4
    resumed = run_training([*RUN, "trainer.resume=auto"], tmp_path)
    assert resumed == run_dir and summary(resumed)["status"] == "completed"
    assert _same_weights(resumed, reference)


def test_under_another_sigterm_handler_it_runs_and_the_run_stops_between_steps(
    tmp_path, monkeypatch
):
    # submitit installs a SIGTERM handler that only logs (it requeues through USR2 and
    # must not be cut short by the SIGTERM the requeue itself causes).
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        interrupt_forward(monkeypatch, 3, action=lambda: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(RunInterrupted):
            run_training(RUN, tmp_path)
        assert seen == [signal.SIGTERM]  # the other handler ran
        assert signal.getsignal(signal.SIGTERM).__name__ == "<lambda>"  # and is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    s = summary(run_dir)
    # Step 3 finished (the signal came during it); the run stopped before step 4.
    assert s["status"] == "interrupted" and s["error"] == "SIGTERM" and s["steps"] == 3
    assert max(r["step"] for r in train_records(run_dir)) == 3


def test_submitits_exit_after_a_requeue_is_interrupted_not_failed(tmp_path, monkeypatch):
    # submitit's preemption handler requeues the job, then calls sys.exit(-1).
    interrupt_forward(monkeypatch, 3, SystemExit(-1))
    with pytest.raises(SystemExit):
        run_training(RUN, tmp_path)
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    assert summary(run_dir)["status"] == "interrupted"
    assert summary(run_dir)["error"] == "SystemExit(-1)"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_train_py_exits_128_plus_it_with_one_line_and_status_interrupted(
    tmp_path, signum
):
    name = signal.Signals(signum).name
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
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
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").is_file():  # past start-up, inside the loop
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, out[-2000:]  # 143, 130: the shell's codes
    s = summary(run_dir)
    assert s["status"] == "interrupted" and s["error"] == name
    assert f"Run interrupted ({name}) at step " in out
    assert f"continue it with trainer.resume=auto trainer.run_dir={run_dir}" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "Run directory:" not in out  # printed only by a completed run


# ======================================== 4. bad trainer settings, the NaN stop message
def test_trainer_keys_are_those_configs_trainer_default_yaml_documents():
    documented = yaml.safe_load((CONFIG_DIR / "trainer" / "default.yaml").read_text())
    assert list(TRAINER_KEYS) == list(documented)


def test_an_unknown_trainer_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        ValueError, match=r"Unknown trainer key\(s\): max_step\. Valid keys .*max_steps"
    ):
        run_training(["+trainer.max_step=5"], tmp_path)
    assert not (tmp_path / "smoke").exists()


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_steps=-5",
        "trainer.max_steps=0",
        "trainer.log_every=0",
        "trainer.keep_checkpoints=0",
        "trainer.micro_batch_size=0",
        "trainer.nan_skip_budget=-1",
        "trainer.warmup_ratio=1.5",
        "trainer.min_lr_ratio=2",
        "trainer.eval_fractions=[0,0.5]",
        "trainer.mixed_precision=fp8",
        "trainer.device=gpu",
        "trainer.lr_schedule=step",
        "trainer.cpu_allocator=jemalloc",
    ],
)
def test_a_bad_trainer_value_fails_before_the_run_directory_exists(tmp_path, override):
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}={re.escape(repr(_parsed(value)))}: "):
        run_training([*TINY, override], tmp_path)
    assert not (tmp_path / "smoke").exists()


def _parsed(value: str):
    return yaml.safe_load(value)


def test_the_nan_stop_names_the_newest_checkpoint_or_says_there_is_none(tmp_path, monkeypatch):
    def nan_from_step_5(self, model, batch):
        loss = original(self, model, batch)
        calls["n"] += model.training
        return loss * float("nan") if calls["n"] >= 5 else loss

    original, calls = LMTask.compute_loss, {"n": 0}
    monkeypatch.setattr(LMTask, "compute_loss", nan_from_step_5)
    with pytest.raises(NonFiniteLossError) as err:
        run_training(["trainer.max_steps=8", "trainer.checkpoint_every=3", *TINY], tmp_path / "a")
    (run_dir,) = (tmp_path / "a" / "smoke" / "alphaadam").iterdir()
    assert f"The newest checkpoint is {run_dir / 'checkpoints' / 'step-00000003'}" in str(err.value)

    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match="No checkpoint was written before it"):
        run_training(["trainer.max_steps=8", "trainer.checkpoint_every=0", *TINY], tmp_path / "b")


# ============================================================ 5. logs for batch jobs
def test_without_a_progress_bar_a_plain_line_every_log_every_steps(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="alphaadam"):
        run_dir = run_training(
            ["trainer.max_steps=25", "trainer.log_every=10", "trainer.progress_bar=false"],
            tmp_path,
        )
    lines = [m for m in caplog.messages if m.startswith("step ") and "| loss" in m]
    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 10, 20, 25]  # log_every, step 1 and the last
    assert len(lines) == len(records)
    for line, record in zip(lines, records):
        assert line.startswith(f"step {record['step']}/25 | loss {record['loss']:.4f} | lr ")
        assert "tok/s | elapsed" in line and "| eta" in line


# ================================= 6. no false record (issue 23): links, locks, disk, bits
def _main_exit(overrides: list[str], output_root: Path) -> int:
    """``train.py``'s entry point in-process: its exit code (0 when it returns)."""
    from alphaadam.trainer import main

    reset_accelerate()
    cfg = run_config(overrides, output_root)
    try:
        main(cfg)
    except SystemExit as exit_:
        return exit_.code
    return 0


def _as_if_killed(run_dir: Path) -> None:
    """summary.json as a hard kill leaves it."""
    (run_dir / "summary.json").write_text(json.dumps({**summary(run_dir), "status": "running"}))


def test_a_resume_continues_from_the_newest_checkpoint_whatever_latest_says_and_repairs_it(
    tmp_path,
):
    # A kill between renaming step-6 into place and swapping the link: latest names step-4,
    # and the pruning that follows the swap (to keep_checkpoints=2) never ran.
    run_dir = tmp_path / "run"
    run = [*RUN, f"trainer.run_dir={run_dir}"]
    run_training([*run, "trainer.keep_checkpoints=3"], tmp_path)
    ckpts = run_dir / "checkpoints"
    os.remove(ckpts / "latest")
    os.symlink("step-00000004", ckpts / "latest")
    _as_if_killed(run_dir)

    run_training([*run, "trainer.resume=auto"], tmp_path)
    assert os.readlink(ckpts / "latest") == "step-00000006"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000004", "step-00000006"]
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == 6


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


def test_a_full_disk_while_checkpointing_removes_the_partial_folder_and_records_failed(
    tmp_path, monkeypatch, capsys
):
    import errno

    real_save = torch.save

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        path = Path(f)
        if path.parent.name == ".tmp-step-00000004" and path.name == "optimizer.pt":
            path.write_bytes(b"\0" * 1000)  # what fitted
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "save", save_until_the_disk_is_full)
    run = ["trainer.max_steps=6", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=1", *TINY]
    capsys.readouterr()
    assert _main_exit(run, tmp_path) == 1
    err = capsys.readouterr().err.strip().splitlines()
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    ckpts = run_dir / "checkpoints"
    assert not (ckpts / ".tmp-step-00000004").exists()
    assert os.readlink(ckpts / "latest") == "step-00000002"
    assert sorted(p.name for p in ckpts.iterdir() if p.name != "latest") == ["step-00000002"]
    s = summary(run_dir)
    assert s["status"] == "failed" and s["steps"] == 4
    assert (
        "no space left on device" in s["error"] and str(ckpts / ".tmp-step-00000004") in s["error"]
    )
    assert len(err) == 1 and "no space left on device" in err[0]
    assert not list(run_dir.glob(".*.tmp"))


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


def test_a_flipped_bit_in_a_checkpoint_file_is_caught_by_its_checksum_and_the_run_falls_back(
    tmp_path, monkeypatch, caplog, reference
):
    import zipfile

    run_dir = _crashed_run(monkeypatch, tmp_path)
    model_file = run_dir / "checkpoints" / "step-00000004" / "model.pt"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, inside the weights
    model_file.write_bytes(bytes(data))
    with zipfile.ZipFile(model_file) as archive:  # still a well-formed archive
        assert any(n.endswith("data.pkl") for n in archive.namelist())

    with caplog.at_level(logging.WARNING):
        resumed = run_training([*RUN, "trainer.resume=auto"], tmp_path)
    assert "step-00000004 is damaged (model.pt: sha256 differs" in caplog.text
    assert "resuming from step-00000002" in caplog.text
    assert summary(resumed)["status"] == "completed" and _same_weights(resumed, reference)


def test_each_segment_records_its_code_and_a_resume_under_other_code_warns(
    tmp_path, monkeypatch, caplog
):
    import socket

    from alphaadam import run_dir as rd

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    run_dir = _crashed_run(monkeypatch, tmp_path)
    monkeypatch.setattr(rd, "git_sha", lambda: "f" * 40)  # as if the checkout moved on
    with caplog.at_level(logging.WARNING):
        run_training([*RUN, "trainer.resume=auto"], tmp_path)
    segments = summary(run_dir)["segments"]
    assert [s["from_step"] for s in segments] == [0, 4]
    assert [s["git_sha"] for s in segments] == [head, "f" * 40]
    for s in segments:
        assert isinstance(s["git_dirty"], bool)
        assert s["torch_version"] == torch.__version__
        assert s["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert s["host"] == socket.gethostname()
    assert f"git_sha: {head!r} -> {'f' * 40!r}" in caplog.text
    assert summary(run_dir)["git_sha"] == "f" * 40  # the latest segment's


def test_an_output_root_that_cannot_be_written_is_one_line_before_the_model_is_built(
    tmp_path, monkeypatch, capsys
):
    def built(self):
        raise AssertionError("the model was built")

    monkeypatch.setattr(LMTask, "build_model", built)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    capsys.readouterr()
    assert _main_exit(TINY, blocker / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be created" in err[0]
    assert f"{blocker} is not a directory" in err[0]
