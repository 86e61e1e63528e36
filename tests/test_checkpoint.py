"""The checkpoint files (``alphaadam.checkpoint``): a checkpoint is written under a
temporary folder, checked, renamed into place and only then named by the ``latest`` link,
and older ones are pruned to ``trainer.keep_checkpoints``; a kill or a full disk during the
write leaves the previous checkpoint in place and no partial folder; a resume continues from
the newest complete checkpoint whatever ``latest`` says; a damaged one (truncated, emptied,
unreadable, or a flipped bit that its manifest's sha256 catches) is named, set aside and
fallen back from; and one written by another number of processes is refused."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from alphaadam import checkpoint as ckpt_mod
from alphaadam.checkpoint import CheckpointError
from trainer_helpers import (
    RUN,
    TINY,
    Crash,
    _crashed_run,
    _main_exit,
    _same_weights,
    comparable_records,
    read_jsonl,
    run_training,
    saved_weights,
    summary,
)


# -------------------------------------- writing: temporary folder, rename, latest, keep
def test_a_kill_during_checkpoint_write_leaves_latest_intact(tmp_path, monkeypatch):
    run = ["trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.eval_every=0", *TINY]
    reference = run_training(run, tmp_path / "a")

    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        path = Path(f)
        if path.parent.name == ".tmp-step-00000004" and path.name == "optimizer.pt":
            path.write_bytes(b"half a file")
            raise Crash("killed while writing optimizer.pt")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(Crash):
        run_training(run, tmp_path / "b")
    monkeypatch.undo()
    (crashed,) = (tmp_path / "b" / "smoke" / "alphaadam").iterdir()
    ckpts = crashed / "checkpoints"
    assert (ckpts / ".tmp-step-00000004").is_dir()  # the torn write ...
    assert os.readlink(ckpts / "latest") == "step-00000002"  # ... is not what "latest" means
    state = ckpt_mod.load_checkpoint(ckpt_mod.latest_checkpoint(ckpts), rank=0)
    assert state["trainer_state"]["step"] == 2

    resumed = run_training([*run, "trainer.resume=auto"], tmp_path / "b")
    assert resumed == crashed
    assert not (ckpts / ".tmp-step-00000004").exists()
    assert os.readlink(ckpts / "latest") == "step-00000004"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000004"]  # keep_checkpoints=1
    a, b = saved_weights(reference), saved_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


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


# ----------------------------------------------- damaged checkpoints, the process count
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
