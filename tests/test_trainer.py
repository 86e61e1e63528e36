"""The shared training loop (``alphaadam.trainer``): the lr schedule, the default smoke
run, bit-for-bit resume and the trainer_state.json format, the NaN stop and skip budget, a
step the grad scaler skipped, the settings refused before anything is written (trainer
keys and values, an output root that cannot be written, a missing data file, an unknown
optimizer), the global batch, epochs, a failure in the step-0 evaluation, DDP and bf16.
The run directory, the run's record and the checkpoints have their own test files
(test_run_dir.py, test_run_record.py, test_checkpoint.py)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from alphaadam import checkpoint as ckpt_mod
from alphaadam.tasks.lm import LMTask
from alphaadam.trainer import TRAINER_KEYS, NonFiniteLossError, TrainState, lr_schedule
from trainer_helpers import (
    CONFIG_DIR,
    REPO,
    TINY,
    Crash,
    _main_exit,
    comparable_records,
    eval_records,
    interrupt_forward,
    read_jsonl,
    run_training,
    saved_weights,
    subprocess_env,
    summary,
    train_records,
)


# ----------------------------------------------------------------------------- schedule
def test_lr_schedule_matches_nanogpt_get_lr():
    f = lr_schedule(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    # nanoGPT: lr * (it + 1) / (warmup + 1) during warm-up, then cosine to min_lr.
    assert f(0) == pytest.approx(1 / 11)
    assert f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.5 * 0.9)  # half-way: cos(pi/2) = 0
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    assert lr_schedule(0, 100, 0.0, "linear")(25) == pytest.approx(0.75)
    assert lr_schedule(5, 100, 0.0, "constant")(50) == 1.0
    with pytest.raises(ValueError, match="cosine, linear, constant"):
        lr_schedule(0, 10, 0.1, "step")


# ------------------------------------------------------------------------ smoke default
def test_python_train_py_is_a_fast_cpu_smoke_run_whose_loss_drops(tmp_path):
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [sys.executable, str(REPO / "train.py")],
        cwd=tmp_path,
        env={**subprocess_env(), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert out.returncode == 0, out.stderr[-3000:]
    # CPU seconds, not wall time: the budget is "under a minute on a CPU", and a shared test
    # machine's load must not make this flaky (unloaded it is ~10 s of wall time).
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_s < 60, f"smoke run used {cpu_s:.0f} CPU seconds"
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("Run directory: ")][-1]
    run_dir = Path(line.removeprefix("Run directory: "))
    assert run_dir.is_dir() and run_dir.is_relative_to(tmp_path)
    evals = eval_records(run_dir)
    # Before training a byte-level model is near-uniform over 256 symbols: ln 256 = 5.545.
    assert evals[0]["step"] == 0 and abs(evals[0]["val_loss"] - math.log(256)) < 0.1
    assert evals[-1]["val_loss"] < 1.5
    assert [e["val_loss"] for e in evals] == sorted((e["val_loss"] for e in evals), reverse=True)


# ------------------------------------------------------------------------------- resume
RESUME_RUN = [
    "optimizer=alphaadam",
    "model.dropout=0.1",  # the torch RNG matters too
    "trainer.max_steps=9",
    "trainer.gradient_accumulation_steps=2",
    "trainer.micro_batch_size=4",
    "trainer.warmup_steps=2",
    "trainer.checkpoint_every=3",
    "trainer.eval_every=3",
    "trainer.mask_stats_every=2",
    *TINY,
]


def test_resume_auto_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    reference = run_training(RESUME_RUN, tmp_path / "a")

    # during step 8 (two micro-batches a step); the last checkpoint: step 6
    interrupt_forward(monkeypatch, 2 * 7 + 1, Crash("simulated kill"))
    with pytest.raises(Crash):
        run_training(RESUME_RUN, tmp_path / "b")
    (crashed,) = (tmp_path / "b" / "smoke" / "alphaadam").iterdir()
    assert summary(crashed)["status"] == "failed"
    assert max(r["step"] for r in train_records(crashed)) == 7
    monkeypatch.undo()

    resumed = run_training([*RESUME_RUN, "trainer.resume=auto"], tmp_path / "b")
    assert resumed == crashed  # found by its config, not started afresh
    assert summary(resumed)["status"] == "completed"
    ref_records = read_jsonl(reference / "metrics.jsonl")
    new_records = read_jsonl(resumed / "metrics.jsonl")
    assert comparable_records(new_records) == comparable_records(ref_records)  # exact floats
    assert read_jsonl(resumed / "mask_stats.jsonl") == read_jsonl(reference / "mask_stats.jsonl")
    a, b = saved_weights(reference), saved_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary(resumed)["tokens"] == summary(reference)["tokens"]


def test_train_state_keeps_the_trainer_state_json_format_of_earlier_checkpoints():
    # trainer_state.json as checkpoints have always written it (before TrainState existed):
    # seven keys, plus the step-scale pair once a masked optimizer logged one.
    plain = {
        "step": 6,
        "tokens": 6144,
        "wall_time_s": 1.5,
        "skipped_steps": 1,
        "best": {"step": 3, "val_loss": 5.0},
        "final_eval": {"val_loss": 5.1},
        "train_loss": 4.9,
    }
    masked = {**plain, "step_scale_sum": 3.5, "step_scale_records": 2}
    for saved in (plain, masked):
        restored = TrainState.from_state_dict(saved)
        assert list(restored.state_dict().items()) == list(saved.items())  # keys in order
    assert TrainState.from_state_dict(masked).step_scale_mean == 1.75
    assert TrainState.from_state_dict(plain).step_scale_mean is None


# ---------------------------------------------------------------------------- NaN / inf
def _nan_from(monkeypatch, first_bad_call: int, last_bad_call: int | None = None):
    original = LMTask.compute_loss
    calls = {"n": 0}

    def compute_loss(self, model, batch):
        loss = original(self, model, batch)
        if model.training:
            calls["n"] += 1
            if first_bad_call <= calls["n"] <= (last_bad_call or math.inf):
                return loss * float("nan")
        return loss

    monkeypatch.setattr(LMTask, "compute_loss", compute_loss)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _nan_from(monkeypatch, first_bad_call=5)
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss nan .* at step 5.*nan_skip_budget=0"
    ):
        run_training(["trainer.max_steps=8", "trainer.checkpoint_every=2", *TINY], tmp_path)
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    s = summary(run_dir)
    assert s["status"] == "failed" and "non-finite loss" in s["error"] and s["steps"] == 4
    assert os.readlink(run_dir / "checkpoints" / "latest") == "step-00000004"
    latest = ckpt_mod.load_checkpoint(ckpt_mod.latest_checkpoint(run_dir / "checkpoints"), 0)
    assert all(torch.isfinite(t).all() for t in latest["model"].values())


def test_nan_skip_budget_skips_bad_steps(tmp_path, monkeypatch):
    _nan_from(monkeypatch, first_bad_call=3, last_bad_call=3)
    run_dir = run_training(["trainer.max_steps=5", "trainer.nan_skip_budget=1", *TINY], tmp_path)
    s = summary(run_dir)
    assert s["status"] == "completed" and s["steps"] == 5 and s["skipped_steps"] == 1
    assert {r["kind"] for r in read_jsonl(run_dir / "metrics.jsonl")} == {"train", "eval"}
    skips = read_jsonl(run_dir / "events.jsonl")
    assert len(skips) == 1 and skips[0]["step"] == 2 and skips[0]["loss"] is None  # NaN -> null
    assert all(math.isfinite(r["loss"]) for r in train_records(run_dir))


def test_a_step_the_grad_scaler_skipped_does_not_advance_the_lr_schedule(tmp_path, monkeypatch):
    # fp16 GradScaler skips exist only on GPUs (accelerate has no scaler on CPU), so the
    # skip report is faked: optimizer steps 2 and 3 are reported as skipped.
    from accelerate import Accelerator

    args = ["trainer.max_steps=5", "trainer.log_every=1", "trainer.warmup_steps=10", *TINY]
    normal = [r["lr"] for r in train_records(run_training(args, tmp_path / "normal"))]
    calls = iter(range(1, 100))
    monkeypatch.setattr(
        Accelerator, "optimizer_step_was_skipped", property(lambda self: next(calls) in (2, 3))
    )
    skipped = [r["lr"] for r in train_records(run_training(args, tmp_path / "skipped"))]
    assert len(set(normal)) == 5  # warm-up: every step has its own lr
    assert skipped == [normal[0], normal[1], normal[1], normal[1], normal[2]]


# ----------------------------------- bad settings and input, before anything is written
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


def test_missing_text_file_names_the_path(tmp_path):
    missing = tmp_path / "no_such_corpus.txt"
    with pytest.raises(FileNotFoundError, match="no_such_corpus.txt"):
        run_training(["data=text", f"data.path={missing}", "data.tokenizer=byte"], tmp_path)
    with pytest.raises(ValueError, match="data.path"):
        run_training(["data=text", "data.tokenizer=byte"], tmp_path)
    assert not (tmp_path / "smoke").exists()  # nothing written


def test_unknown_optimizer_name_lists_the_registry(tmp_path):
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'adamx'; valid choices are .*alphaadam"
    ):
        run_training(["optimizer.name=adamx"], tmp_path)
    assert not (tmp_path / "smoke").exists()


# ------------------------------------------------------------ batch, epochs, evaluation
def test_global_batch_is_micro_batch_times_total_accumulation(tmp_path):
    run_dir = run_training(
        ["trainer.max_steps=1", "trainer.gradient_accumulation_steps=3", *TINY], tmp_path
    )
    assert summary(run_dir)["global_batch_size"] == 16 * 3
    assert train_records(run_dir)[0]["tokens"] == 16 * 3 * 64


def test_epoch_based_training_evaluates_at_epoch_ends(tmp_path):
    run_dir = run_training(
        [
            "task._target_=toy_tasks.ToyRegressionTask",
            "trainer.max_epochs=2",
            "trainer.micro_batch_size=4",
            "trainer.gradient_accumulation_steps=2",
            "trainer.eval_at_start=false",
            "trainer.eval_every=0",
            "trainer.eval_fractions=[0.3]",
            "optimizer.lr=0.05",
            "optimizer.weight_decay=0",
            *TINY,
        ],
        tmp_path,
    )
    s = summary(run_dir)
    # 40 examples / (4 x 2) per step = 5 steps per epoch
    assert s["max_steps"] == 10 and s["steps"] == 10 and s["task"] == "toy"
    evals = eval_records(run_dir)
    assert [(e["step"], e["epoch"]) for e in evals] == [(3, 0.6), (5, 1.0), (10, 2.0)]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_max_epochs_needs_an_epoch_based_task(tmp_path):
    with pytest.raises(ValueError, match="has no epochs"):
        run_training(["trainer.max_epochs=1", *TINY], tmp_path)


def test_a_failure_in_the_step_0_evaluation_is_recorded_as_failed(tmp_path, monkeypatch):
    def broken_eval(self, model, accelerator):
        raise Crash("evaluation blew up")

    monkeypatch.setattr(LMTask, "evaluate", broken_eval)
    with pytest.raises(Crash):
        run_training(["trainer.max_steps=2", "trainer.eval_at_start=true", *TINY], tmp_path)
    (run_dir,) = (tmp_path / "smoke" / "alphaadam").iterdir()
    s = summary(run_dir)
    assert s["status"] == "failed" and s["error"] == "Crash: evaluation blew up"


# ---------------------------------------------------------------------------- DDP, bf16
@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    common = [
        "optimizer=alphaadam",
        "trainer.max_steps=4",
        "trainer.micro_batch_size=4",
        "trainer.gradient_accumulation_steps=2",
        "trainer.eval_every=2",
        *TINY,
    ]
    single = run_training(common, tmp_path / "one")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(REPO / "train.py"),
            *common,
            "trainer.device=cpu",
            f"trainer.output_root={tmp_path / 'two'}",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (double,) = (tmp_path / "two" / "smoke" / "alphaadam").iterdir()
    assert summary(double)["num_processes"] == 2
    assert sorted(p.name for p in (double / "checkpoints" / "latest").glob("rank*.pt")) == [
        "rank0.pt",
        "rank1.pt",
    ]
    one, two = train_records(single), train_records(double)
    assert [r["tokens"] for r in one] == [r["tokens"] for r in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    for a, b in zip(eval_records(single), eval_records(double)):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    wa, wb = saved_weights(single), saved_weights(double)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_runs_and_changes_the_arithmetic(tmp_path):
    run = ["trainer.max_steps=3", "trainer.eval_at_start=false", *TINY]
    fp32 = train_records(run_training(run, tmp_path / "fp32"))
    bf16_dir = run_training([*run, "trainer.mixed_precision=bf16"], tmp_path / "bf16")
    bf16 = train_records(bf16_dir)
    assert all(math.isfinite(r["loss"]) for r in bf16)
    # same data and init, so the losses agree to bf16 precision but not bit for bit
    for a, b in zip(fp32, bf16):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2)
    assert [a["loss"] for a in fp32] != [b["loss"] for b in bf16]
    weights = saved_weights(bf16_dir)
    assert all(w.dtype == torch.float32 for w in weights.values())  # fp32 master weights
