"""Sweeps on a real SLURM cluster (slurm/local_cluster.sh up; .ci/run starts it).

Skipped, with the reason, only where no SLURM controller answers, and never under CI=true:
there a missing cluster fails every test, so a broken launcher cannot land green on skips.
Everything else is real:
the Hydra submitit launcher submits a job array, the trainer runs inside SLURM jobs, and the
requeue test sends SLURM's preemption signal to a running job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from trainer_helpers import REPO, subprocess_env

pytestmark = pytest.mark.slow


def _slurm_unavailable() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch/sinfo not installed (run slurm/local_cluster.sh up)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0:
        return f"SLURM controller not reachable: {out.stderr.strip()}"
    if not any(s.strip("*~#") in ("idle", "mix", "alloc") for s in out.stdout.split()):
        return f"no usable SLURM node (states: {out.stdout.split()})"
    return None


def _in_ci() -> bool:
    # GitHub Actions, GitLab CI and most other CI services set CI=true.
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="module")
def slurm():
    reason = _slurm_unavailable()
    if reason and _in_ci():
        pytest.fail(f"CI=true needs a SLURM cluster (.ci/run starts one): {reason}")
    if reason:
        pytest.skip(reason)


def _launch(sweep_dir: Path, name: str, *overrides: str) -> subprocess.Popen:
    """The Hydra launcher blocks until its jobs are done, so it runs in the background."""
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "+sweep=smoke",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=15",
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
        "trainer.progress_bar=false",
        *overrides,
    ]
    log = open(sweep_dir.parent / f"{sweep_dir.name}.launcher.log", "w")
    return subprocess.Popen(
        cmd, cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT
    )


def _wait(proc: subprocess.Popen, sweep_dir: Path, timeout: float) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = (sweep_dir.parent / f"{sweep_dir.name}.launcher.log").read_text()
    assert rc == 0, f"launcher exited {rc}:\n{log[-4000:]}"


def _cancel(name: str) -> None:
    subprocess.run(["scancel", "--name", name], capture_output=True)


def _run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file())


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_two_job_sweep_through_the_hydra_launcher(slurm, tmp_path: Path):
    name = f"aa-sweep-{uuid.uuid4().hex[:8]}"
    sweep_dir = tmp_path / "sweep"
    proc = _launch(sweep_dir, name, "trainer.max_steps=30")
    try:
        _wait(proc, sweep_dir, timeout=300)
    finally:
        _cancel(name)
    runs = _run_dirs(sweep_dir)
    assert [r.name for r in runs] == ["0_adamw", "1_alphaadam"]
    # One job array, two tasks, each with its own submitit log folder.
    job_logs = sorted(
        p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name
    )
    assert len(job_logs) == 2 and len({j.split("_")[0] for j in job_logs}) == 1
    for run, optimizer in zip(runs, ("adamw", "alphaadam")):
        summary = _summary(run)
        assert summary["status"] == "completed"
        assert summary["optimizer"] == optimizer and summary["steps"] == 30
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["kind"] == "train"][-1] == 30
        assert summary["final"]["train_loss"] > 0


def test_plain_multirun_jobs_get_fixed_resumable_run_dirs(slurm, tmp_path: Path):
    """`python train.py -m ... hydra/launcher=slurm` without +sweep: the launcher fixes each
    job's run dir (and resume=auto), so a requeue could never start a new time-stamped one."""
    name = f"aa-plain-{uuid.uuid4().hex[:8]}"
    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
        "optimizer=adamw",
        "trainer.max_steps=10",
        "trainer.progress_bar=false",
    ]
    try:
        subprocess.run(
            cmd, cwd=REPO, env=subprocess_env(), check=True, capture_output=True, timeout=300
        )
    finally:
        _cancel(name)
    (run,) = _run_dirs(sweep_dir)
    assert run.name == "0_adamw" and _summary(run)["status"] == "completed"
    saved = (run / "config.yaml").read_text()
    assert "resume: auto" in saved and f"run_dir: {run}" in saved


def _latest_train_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    steps = [json.loads(x)["step"] for x in path.read_text().splitlines() if '"train"' in x]
    return max(steps, default=-1)


def _job_id(name: str) -> str | None:
    out = subprocess.run(
        ["squeue", "-h", "--name", name, "-o", "%A %T"], capture_output=True, text=True
    ).stdout.split()
    return out[0] if out and out[1] == "RUNNING" else None


REQUEUE_STEPS = ["trainer.max_steps=400", "trainer.checkpoint_every=50", "trainer.log_every=10"]


@pytest.fixture(scope="module")
def reference_loss(slurm, tmp_path_factory) -> float:
    """Final train loss of the uninterrupted run (same config, run directly)."""
    ref_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "optimizer=alphaadam",
            f"trainer.run_dir={ref_dir}",
            "trainer.progress_bar=false",
            *REQUEUE_STEPS,
        ],
        cwd=REPO,
        env=subprocess_env(),
        check=True,
        capture_output=True,
    )
    return _summary(ref_dir)["final"]["train_loss"]


def _wait_for_step(name: str, run_dir: Path, step: int) -> str:
    """Job id of ``name`` once it is running and has logged ``step`` (past a checkpoint)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        job = _job_id(name)
        if job and _latest_train_step(run_dir) >= step:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {name} never reached step {step}")


def _assert_resumed_exactly(run_dir: Path, reference: float, interrupted_at: int) -> None:
    summary = _summary(run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 400
    # No lost or repeated steps: every logged step exactly once, in order.
    train_steps = [
        json.loads(x)["step"]
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"train"' in x
    ]
    assert train_steps == sorted(set(train_steps))
    assert set(range(10, 401, 10)) <= set(train_steps)
    assert summary["final"]["train_loss"] == pytest.approx(reference, abs=1e-6), (
        f"interrupted at step {interrupted_at}: {summary['final']['train_loss']} vs {reference}"
    )


def test_requeue_resumes_in_the_same_run_dir_with_the_same_final_loss(
    slurm, reference_loss: float, tmp_path: Path
):
    name = f"aa-requeue-{uuid.uuid4().hex[:8]}"
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "0_alphaadam"
    proc = _launch(sweep_dir, name, "optimizer=alphaadam", *REQUEUE_STEPS)
    try:
        # Interrupt after the step-100 checkpoint, mid-way between checkpoints, so the
        # resumed job must redo steps 101..N from the checkpoint.
        job = _wait_for_step(name, run_dir, 120)
        interrupted_at = _latest_train_step(run_dir)
        assert interrupted_at < 400, "the job finished before it could be interrupted"
        # What SLURM sends before preemption / time-out (submitit's --signal=USR2@delay).
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        _wait(proc, sweep_dir, timeout=300)
    finally:
        _cancel(name)

    assert _run_dirs(sweep_dir) == [run_dir], "the requeued job must not start a new run dir"
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    assert f"Resuming run in {run_dir}" in logs, logs[-3000:]
    _assert_resumed_exactly(run_dir, reference_loss, interrupted_at)


def test_sbatch_template_requeues_on_usr1_and_resumes(slurm, reference_loss: float, tmp_path):
    name = f"aa-sbatch-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    log = tmp_path / "job.out"
    env = subprocess_env() | {"NPROC": "1", "RUN_DIR": str(run_dir)}
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--mem=2G",
            f"--output={log}",
            str(REPO / "slurm" / "train_single_node.sbatch"),
            "optimizer=alphaadam",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            *REQUEUE_STEPS,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        _wait_for_step(name, run_dir, 120)
        interrupted_at = _latest_train_step(run_dir)
        assert interrupted_at < 400, "the job finished before it could be interrupted"
        # What `#SBATCH --signal=B:USR1@180` delivers to the batch script before the limit.
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _summary_status(run_dir) != "completed":
            time.sleep(1)
    finally:
        _cancel(name)
    out = log.read_text()
    assert "USR1: stopping the run, requeueing" in out and "restart 1" in out, out[-3000:]
    assert f"Resuming run in {run_dir}" in out, out[-3000:]
    assert out.count("Run directory:") == 1, "the interrupted instance must not finish too"
    _assert_resumed_exactly(run_dir, reference_loss, interrupted_at)


def _summary_status(run_dir: Path) -> str | None:
    try:
        return _summary(run_dir)["status"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None
