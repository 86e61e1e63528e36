"""The run's record (``alphaadam.run_record``): what metrics.jsonl, mask_stats.jsonl and
summary.json hold (docs/run_dir.md), the segments that record the code and machine each
start and resume ran under, the plain progress lines of a run without a progress bar, the
NaN stop's advice, and the final status written on every way out of a run: ``failed`` with
the error (a failed restore included), ``interrupted`` for SIGTERM, SIGINT and submitit's
exit after a requeue, and for a signal to train.py one line and the shell's exit code."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from alphaadam.tasks.lm import LMTask
from alphaadam.trainer import NonFiniteLossError, RunInterrupted
from trainer_helpers import (
    REPO,
    RUN,
    TINY,
    _crashed_run,
    _same_weights,
    eval_records,
    interrupt_forward,
    read_jsonl,
    run_training,
    subprocess_env,
    summary,
    train_records,
)


# ---------------------------------------- metrics.jsonl, mask_stats.jsonl, summary.json
def test_metrics_mask_stats_and_summary_follow_run_dir_md(tmp_path):
    run_dir = run_training(
        [
            "optimizer=alphaadam",
            "trainer.max_steps=6",
            "trainer.eval_every=3",
            "trainer.mask_stats_every=3",
            "trainer.eval_at_start=false",
            *TINY,
        ],
        tmp_path,
    )
    assert run_dir.parent == tmp_path / "smoke" / "alphaadam"
    assert (run_dir / "config.yaml").is_file()
    train = train_records(run_dir)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    keys = {
        "kind",
        "step",
        "epoch",
        "loss",
        "lr",
        "tokens",
        "time",
        "grad_norm",
        "tokens_per_s",
        "alpha_mean",
        "alpha_min",
        "alpha_max",
        "mask_density_mean",
        "step_scale_mean",
        "step_scale_std",
        "step_scale_min",
        "step_scale_max",
    }
    assert all(set(r) == keys for r in train)
    # 16 windows of 64 tokens per step
    assert [r["tokens"] for r in train] == [1024 * s for s in range(1, 7)]
    assert all(1.0 <= r["alpha_min"] <= r["alpha_mean"] <= r["alpha_max"] <= 2.0 for r in train)
    assert all(0.0 <= r["mask_density_mean"] <= 1.0 for r in train)
    evals = eval_records(run_dir)
    assert [(e["step"], e["fraction"]) for e in evals] == [(3, 0.5), (6, 1.0)]
    assert all({"kind", "step", "epoch", "fraction", "val_loss"} <= set(e) for e in evals)

    stats = read_jsonl(run_dir / "mask_stats.jsonl")
    # one record per trainable tensor, by name (2 blocks x 6 + wte, wpe, ln_f; lm_head is tied)
    names = [n for n, _ in _tiny_model().named_parameters()]
    assert len(names) == 15
    assert sorted(r["param"] for r in stats if r["step"] == 3) == sorted(names)
    assert {r["step"] for r in stats} == {3, 6}
    keys = {"step", "param", "alpha", "mask_density", "grad_density", "step_scale"}
    assert all(set(r) == keys for r in stats)
    # A dense tiny GPT: every gradient element is nonzero after the first step.
    assert all(r["grad_density"] == 1.0 for r in stats if r["param"] != "transformer.wpe.weight")
    params = dict(_tiny_model().named_parameters())
    for r in stats:  # Algorithm 1's multiplier of lr: alpha * d / (||phi||_0 + 1)
        d = params[r["param"]].numel()
        expected = r["alpha"] * d / (round(r["mask_density"] * d) + 1)
        assert r["step_scale"] == pytest.approx(expected, rel=1e-6)
    # Step 1's asynchronous mask is empty (m_0 = 0): nothing moved, the multiplier is 0.
    assert train[0]["step_scale_max"] == 0.0
    assert all(
        r["step_scale_min"] - 1e-9 <= r["step_scale_mean"] <= r["step_scale_max"] + 1e-9
        for r in train
    )

    s = summary(run_dir)
    assert s["status"] == "completed"
    for key, value in {
        "experiment": "smoke",
        "task": "lm",
        "dataset": "smoke",
        "optimizer": "alphaadam",
        "lr": 3e-3,
        "seed": 1337,
        "max_steps": 6,
        "steps": 6,
        "tokens": 6144,
        "primary_metric": "val_loss",
        "primary_mode": "min",
        "device": "cpu",
        "num_processes": 1,
        "torch_version": torch.__version__,
    }.items():
        assert s[key] == value, key
    assert s["final"]["val_loss"] == evals[-1]["val_loss"]
    assert s["final"]["train_loss"] == train[-1]["loss"]
    best = min(evals, key=lambda e: e["val_loss"])
    assert s["best"] == {"step": best["step"], "val_loss": best["val_loss"]}
    assert s["wall_time_s"] > 0 and "git_sha" in s
    # The run's mean effective multiplier: the mean of the logged per-step means.
    logged = [r["step_scale_mean"] for r in train]
    assert s["step_scale_mean"] == pytest.approx(sum(logged) / len(logged))


def _tiny_model():
    from alphaadam.models.gpt import build_gpt

    return build_gpt(block_size=64, vocab_size=256, n_layer=2, n_head=2, n_embd=64)


def test_optimizer_without_mask_statistics_logs_no_alpha(tmp_path):
    run_dir = run_training(
        ["optimizer=adamw", "trainer.max_steps=2", "trainer.mask_stats_every=1", *TINY], tmp_path
    )
    assert all("alpha_mean" not in r for r in train_records(run_dir))
    assert not (run_dir / "mask_stats.jsonl").exists()
    assert summary(run_dir)["step_scale_mean"] is None


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


# ------------------------------------------------------ progress, the NaN stop's advice
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


# -------------------------------------------------------------- every exit has a status
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
