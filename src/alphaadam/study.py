"""The reduced-scale reproduction study behind ``make reproduce-small`` (docs/reproduction.md).

Each table is one sweep config (``configs/sweep/reduced_table{1,2,3}.yaml``) whose ``study``
block lists the methods, each method's lr grid, the seeds and how a run is scored. A study
runs in two stages per method (and per GLUE task):

1. **grid**: every lr of the method's grid at ``grid_seed``. When the chosen lr lies at an
   edge of the grid, the grid is widened by one lr beyond that edge (``widen_factor``), up to
   ``max_widenings`` times, so that the chosen lr is inside the range that was tried. With
   ``refine: true``, the geometric midpoints between the chosen lr and its grid neighbours are
   run too, and the lr chosen again.
2. **seeds**: every seed of ``seeds`` at the chosen lr. When refinement moved the choice, the
   seeds also run at the lr the unrefined grid chose: the move rests on one seed, and the
   other seeds show whether it holds up (both lrs then appear in the tables' grid with all
   their seeds; the choice itself stays on equal seed counts).

The lr is chosen by :func:`alphaadam.results.selection.choose_lr`, the rule ``make tables``
uses. Every job is a ``train.py`` run with a fixed run directory (``trainer.run_dir`` from the
sweep config, named by table, task, method, lr and seed) and ``trainer.resume=auto``, so a
rerun of the study skips completed runs, continues interrupted ones from their last
checkpoint, and never overwrites a finished run. Which jobs exist is derived from the run
directories on disk each time, so the study needs no state file of its own.

Runs are local processes by default (``threads_per_run`` torch threads each, ``--jobs`` at a
time, Hydra's basic launcher) or, with ``launcher="slurm"``, one Hydra multirun per stage and
method through ``hydra/launcher=slurm`` (a SLURM job array).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .results.selection import LrChoice, choose_lr

REPO = Path(__file__).resolve().parents[2]
STUDY_SWEEPS = (
    "reduced_table3",
    "reduced_table1",
    "reduced_table2",
    "reduced_scaling",
    "reduced_table3_wd0",
    "reduced_table3_bf16",
)


def format_lr(lr: float) -> str:
    """The command-line spelling of an lr (Python's shortest round-trip repr)."""
    return repr(float(lr))


def _three_digits(value: float) -> float:
    return float(f"{value:.3g}")


@dataclass(frozen=True)
class Lattice:
    """The lrs ``base * 2**(k / steps_per_octave)`` (3 significant digits) for integer ``k``.

    A study with ``study.lattice`` keeps every method's lrs on it (widening and refinement
    move by whole lattice steps), so that methods share grid points: each has run the others'
    chosen lrs or can, and a "shared lr" comparison needs no lr that only one method tried.
    Computing each lr from its index, not from the previous lr, keeps repeated steps from
    drifting off the lattice by rounding.
    """

    base: float = 1e-3
    steps_per_octave: int = 2

    def lr(self, k: int) -> float:
        return _three_digits(self.base * 2.0 ** (k / self.steps_per_octave))

    def index(self, lr: float) -> int:
        k = round(self.steps_per_octave * math.log2(lr / self.base))
        if not math.isclose(self.lr(k), lr, rel_tol=1e-9):
            raise ValueError(
                f"lr {lr!r} is not on the study's lattice {self.base!r} x 2^(k/"
                f"{self.steps_per_octave}); the nearest lattice lrs are {self.lr(k - 1)!r}, "
                f"{self.lr(k)!r} and {self.lr(k + 1)!r}"
            )
        return k

    def steps(self, factor: float) -> int:
        """The whole number of lattice steps that multiply an lr by ``factor``."""
        n = self.steps_per_octave * math.log2(factor)
        if n < 1 or not math.isclose(n, round(n), abs_tol=1e-9):
            raise ValueError(
                f"study.widen_factor={factor!r} is not a whole number of lattice steps "
                f"(2^(1/{self.steps_per_octave}) each)"
            )
        return round(n)

    def shifted(self, lr: float, steps: int) -> float:
        return self.lr(self.index(lr) + steps)


def widened(lr: float, factor: float, edge: str, lattice: Lattice | None = None) -> float:
    """The next lr beyond ``edge`` of a grid: ``lr`` times or divided by ``factor``, rounded
    to 3 significant digits (on the lattice, ``factor``'s whole number of lattice steps)."""
    if lattice is not None:
        steps = lattice.steps(factor)
        return lattice.shifted(lr, -steps if edge == "low" else steps)
    value = lr / factor if edge == "low" else lr * factor
    return _three_digits(value)


def refined(grid: list[float], lr: float, lattice: Lattice | None = None) -> list[float]:
    """The geometric midpoints between ``lr`` and its neighbours in ``grid`` (3 digits; on
    the lattice, the lattice point halfway, where there is one)."""
    ordered = sorted(grid)
    i = ordered.index(lr)
    neighbours = ordered[max(i - 1, 0) : i] + ordered[i + 1 : i + 2]
    if lattice is None:
        return [_three_digits(math.sqrt(lr * n)) for n in neighbours]
    k = lattice.index(lr)
    halves = [(k + lattice.index(n)) / 2 for n in neighbours]
    return [lattice.lr(int(h)) for h in halves if h == int(h) and int(h) != k]


@dataclass(frozen=True)
class Job:
    sweep: str
    method: str
    task: str | None
    lr: float
    seed: int
    stage: str  # "grid" | "seeds" | "shared" (every seed at the shared_lr_from method's lr)
    run_dir: Path
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        task = f"{self.task} " if self.task else ""
        return f"{self.sweep} {task}{self.method} lr={format_lr(self.lr)} seed={self.seed}"


@dataclass
class Study:
    """One table's sweep config, read through Hydra so it is exactly what the runs see."""

    sweep: str
    cfg: DictConfig  # the composed config (any job of the sweep)
    repo: Path = REPO
    # Overrides for every job (and the study block), e.g. a quick end-to-end check with
    # `trainer.max_steps=5 study.root=/tmp/check`.
    extra: tuple[str, ...] = ()

    @classmethod
    def load(cls, sweep: str, repo: Path = REPO, extra: Iterable[str] = ()) -> Study:
        from hydra import compose, initialize_config_dir

        extra = tuple(extra)
        with initialize_config_dir(str(repo / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=[f"+sweep={sweep}", *extra])
        if "study" not in cfg:
            raise ValueError(f"configs/sweep/{sweep}.yaml has no `study` block")
        return cls(sweep, cfg, repo, extra)

    @property
    def spec(self) -> DictConfig:
        return self.cfg.study

    @property
    def tasks(self) -> list[str | None]:
        """The study's groups besides the method: GLUE tasks (``study.tasks``), or named
        points of a sweep over settings (``study.points``), or one unnamed group."""
        if self.spec.get("points"):
            return list(self.spec.points)
        return list(self.spec.tasks) if self.spec.tasks else [None]

    @property
    def lattice(self) -> Lattice | None:
        spec = self.spec.get("lattice")
        return None if spec is None else Lattice(float(spec.base), int(spec.steps_per_octave))

    @property
    def shared_lr_from(self) -> str | None:
        """The method whose chosen lr every other method also runs with every seed (the
        paper's protocol, one lr for all, beside the tuned comparison), or ``None``."""
        return self.spec.get("shared_lr_from")

    def task_overrides(self, task: str | None) -> list[str]:
        if task is None:
            return []
        if self.spec.get("points"):
            return list(self.spec.points[task].overrides)
        return [f"data.task={task}"]

    def seeds_for(self, task: str | None) -> list[int]:
        """``study.seeds``, or the point's own ``seeds`` where it sets them."""
        if self.spec.get("points") and self.spec.points[task].get("seeds") is not None:
            return [int(s) for s in self.spec.points[task].seeds]
        return [int(s) for s in self.spec.seeds]

    def start_grid(self, method: str, task: str | None) -> list[float]:
        """The method's ``lrs``, moved by the point's ``lr_shift`` lattice steps (the expected
        optimum moves with the point's setting; widening corrects a wrong guess)."""
        grid = [float(lr) for lr in self.spec.methods[method].lrs]
        shift = int(self.spec.points[task].get("lr_shift", 0)) if self.spec.get("points") else 0
        lattice = self.lattice
        if lattice is not None:
            grid = [lattice.shifted(lr, shift) for lr in grid]  # also checks they are on it
        elif shift:
            raise ValueError("a point's lr_shift needs study.lattice")
        return grid

    @property
    def methods(self) -> list[str]:
        return list(self.spec.methods)

    def groups(self) -> list[tuple[str, str | None]]:
        """Every (method, task); a method with ``tasks`` of its own runs only those."""
        return [
            (m, t)
            for t in self.tasks
            for m in self.methods
            if t is None
            or self.spec.methods[m].get("tasks") is None
            or t in self.spec.methods[m].tasks
        ]

    def minutes_per_run(self, task: str | None) -> float:
        value = self.spec.minutes_per_run
        return float(value[task] if isinstance(value, DictConfig) else value)

    def run_dir(self, method: str, task: str | None, lr: float, seed: int) -> Path:
        if self.spec.get("points"):
            return self._point_run_dir(method, task, lr, seed)
        # The sweep's own trainer.run_dir template, resolved by OmegaConf as the job will.
        node = OmegaConf.create(
            {
                "study": OmegaConf.to_container(self.spec, resolve=True),
                "sweep_name": self.sweep,
                "data": {"task": task},
                "optimizer": {"name": method, "lr": float(lr)},
                "seed": int(seed),
                "run_dir": OmegaConf.to_container(self.cfg.trainer, resolve=False)["run_dir"],
            }
        )
        path = Path(node.run_dir)
        return path if path.is_absolute() else self.repo / path

    def _point_cfg(self, task: str) -> DictConfig:
        """The composed config of one point (cached): its run directories are named by what
        the point sets (model width, steps), which only the whole config resolves."""
        cache = self.__dict__.setdefault("_point_cfgs", {})
        if task not in cache:
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(str(self.repo / "configs"), version_base="1.3"):
                cfg = compose(
                    "config",
                    overrides=[f"+sweep={self.sweep}", *self.task_overrides(task), *self.extra],
                )
            if cfg.get("point") != task:
                raise ValueError(
                    f"configs/sweep/{self.sweep}.yaml: point {task!r} composes to point="
                    f"{cfg.get('point')!r}; name it by what its overrides set"
                )
            cache[task] = cfg
        return cache[task]

    def _point_run_dir(self, method: str, task: str, lr: float, seed: int) -> Path:
        cfg = self._point_cfg(task).copy()
        OmegaConf.set_struct(cfg, False)
        cfg.optimizer.name, cfg.optimizer.lr, cfg.seed = method, float(lr), int(seed)
        path = Path(cfg.trainer.run_dir)
        return path if path.is_absolute() else self.repo / path

    def job(self, method: str, task: str | None, lr: float, seed: int, stage: str) -> Job:
        overrides = [
            f"+sweep={self.sweep}",
            f"optimizer={method}",
            f"optimizer.lr={format_lr(lr)}",
            f"seed={seed}",
            *self.task_overrides(task),
            *self.spec.methods[method].overrides,
            *self.extra,
        ]
        return Job(
            self.sweep,
            method,
            task,
            float(lr),
            int(seed),
            stage,
            self.run_dir(method, task, lr, seed),
            tuple(overrides),
        )

    # -- reading results ------------------------------------------------------------------
    def score(self, summary: dict[str, Any]) -> float:
        """The value a run is selected on (``study.select.metric``)."""
        metric = self.spec.select.metric
        if metric == "best":
            best = summary.get("best") or {}
            value = best.get(summary["primary_metric"])
        else:
            value = (summary.get("final") or {}).get(metric)
        return math.nan if value is None else float(value)


def read_status(run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None, None
    return summary.get("status"), summary


class StudyDesignError(ValueError):
    """A completed run in a study's place was made under another design of that study."""


_NOT_SET = "(not set)"


def check_design(study: Study, run_dir: Path) -> None:
    """Refuse a completed run whose ``config.yaml`` differs from the study's config at one of
    its ``study.design_keys``: a run of an earlier design of the table (another split to
    choose on, say) sits at the same path, and counting it as done would mix two designs in
    one table without a trace. The keys are listed rather than the whole config compared,
    because runs of one design made by older code lack keys added since."""
    keys = list(study.spec.get("design_keys") or [])
    if not keys:
        return
    try:
        saved = OmegaConf.load(run_dir / "config.yaml")
    except (OSError, ValueError) as err:
        raise StudyDesignError(
            f"{run_dir} is completed but its config.yaml cannot be read ({err}), so nothing "
            f"shows it was made under this design of {study.sweep} (study.design_keys: "
            f"{', '.join(keys)})"
        ) from None
    differ = []
    for key in keys:
        expected = OmegaConf.select(study.cfg, key, default=_NOT_SET)
        found = OmegaConf.select(saved, key, default=_NOT_SET)
        if found != expected:
            differ.append(f"{key}: run {found!r}, study {expected!r}")
    if differ:
        raise StudyDesignError(
            f"{run_dir} was made under another design of {study.sweep} "
            f"({'; '.join(differ)}); counting it would mix two designs in one table. Move "
            f"the earlier design's runs out of {study.spec.root} (they stay in git history), "
            "or run this design elsewhere (--override study.root=DIR)."
        )


def completed(study: Study, run_dir: Path) -> tuple[bool, dict[str, Any] | None]:
    """Whether the run is done (and of this design: :func:`check_design`), with its summary."""
    status, summary = read_status(run_dir)
    if status != "completed":
        return False, summary
    check_design(study, run_dir)
    return True, summary


@dataclass
class GroupState:
    """One (method, task) of a study: its grid so far, the choice, and the jobs it needs."""

    method: str
    task: str | None
    grid: list[float]
    widenings: int = 0
    unrefined_lr: float | None = None  # the choice before refinement added its midpoints
    choice: LrChoice | None = None
    grid_final: bool = False
    jobs: list[Job] = field(default_factory=list)  # every job known so far
    waiting: list[Job] = field(default_factory=list)  # not completed yet


def group_state(study: Study, method: str, task: str | None) -> GroupState:
    """Derive a group's jobs from the run directories on disk (no state file)."""
    spec = study.spec
    lattice = study.lattice
    state = GroupState(method, task, study.start_grid(method, task))
    seed = int(spec.grid_seed)
    shared = None  # the reference method's chosen lr, once final (study.shared_lr_from)
    reference = study.shared_lr_from
    if reference is not None and reference != method:
        ref = group_state(study, reference, task)
        if not ref.grid_final:
            shared = "pending"
        elif ref.choice is not None:
            shared = ref.choice.lr
    while True:
        grid_jobs = [study.job(method, task, lr, seed, "grid") for lr in state.grid]
        done = {}
        for job in grid_jobs:
            is_done, summary = completed(study, job.run_dir)
            if is_done:
                done[job.lr] = study.score(summary)
        if len(done) < len(grid_jobs):
            state.jobs = grid_jobs
            state.waiting = [j for j in grid_jobs if j.lr not in done]
            return state
        choice = choose_lr(((lr, seed, v) for lr, v in done.items()), spec.select.mode)
        state.choice = choice
        if choice is not None and choice.at_edge and state.widenings < int(spec.max_widenings):
            state.grid.append(widened(choice.lr, float(spec.widen_factor), choice.at_edge, lattice))
            state.grid.sort()
            state.widenings += 1
            continue
        if choice is not None and spec.get("refine", False) and state.unrefined_lr is None:
            # One finer level around the chosen lr: the geometric midpoints to its grid
            # neighbours, so a coarse (x2) grid cannot decide a comparison by where its
            # points happen to fall relative to each method's optimum.
            state.unrefined_lr = choice.lr  # also marks the group as refined (once only)
            added = [lr for lr in refined(state.grid, choice.lr, lattice) if lr not in state.grid]
            if added:
                state.grid = sorted(state.grid + added)
                continue
        if shared == "pending":
            # The seeds wait for the reference's choice: it may add a grid point here.
            state.jobs, state.waiting = grid_jobs, []
            return state
        if isinstance(shared, float) and shared not in state.grid:
            # The shared lr is a grid point like any other (seed `grid_seed` at every lr of
            # the grid, so the choice stays on equal seed counts), and may move the choice.
            state.grid = sorted(state.grid + [shared])
            continue
        state.grid_final = True
        seed_jobs = []
        if choice is not None:
            seed_lrs = [choice.lr]
            if state.unrefined_lr is not None and state.unrefined_lr != choice.lr:
                seed_lrs.append(state.unrefined_lr)
            seed_jobs = [
                study.job(method, task, lr, int(s), "seeds")
                for lr in seed_lrs
                for s in study.seeds_for(task)
                if int(s) != seed
            ]
            if isinstance(shared, float) and shared not in seed_lrs:
                seed_jobs += [
                    study.job(method, task, shared, int(s), "shared")
                    for s in study.seeds_for(task)
                    if int(s) != seed
                ]
        state.jobs = grid_jobs + seed_jobs
        state.waiting = [j for j in seed_jobs if not completed(study, j.run_dir)[0]]
        return state


def planned_runs(study: Study, state: GroupState) -> int:
    """Runs this group will have when done, as far as is known (widening may add more)."""
    seeds = study.seeds_for(state.task)
    extra_seeds = len([s for s in seeds if s != int(study.spec.grid_seed)])
    if state.grid_final:
        return len(state.jobs)
    shared = study.shared_lr_from not in (None, state.method)
    return len(state.grid) + extra_seeds * (2 if shared else 1)


# ----------------------------------------------------------------------------- running
@dataclass
class Progress:
    print: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)
    durations: dict[str, list[float]] = field(default_factory=dict)


def _completed_runs(studies: list[Study]) -> tuple[int, int]:
    """(completed, planned) runs over every study, as far as the plan is known."""
    done = total = 0
    for study in studies:
        for method, task in study.groups():
            state = group_state(study, method, task)
            total += planned_runs(study, state)
            done += len(state.jobs) - len(state.waiting)
    return done, total


def ready_jobs(studies: list[Study]) -> list[Job]:
    """Jobs that can start now: every table's grid runs (in study order) before any extra
    seed, so that every table has a first filled row as early as possible. A study of
    points goes point by point (grid runs first within each), so that its points complete
    one after another; a later point's jobs only fill the slots an earlier one leaves idle
    while it waits for a run to finish."""
    grid: list[Job] = []
    seeds: list[Job] = []
    by_point: list[Job] = []
    for study in studies:
        for task in study.tasks:
            states = [group_state(study, m, t) for m, t in study.groups() if t == task]
            point_grid = [j for s in states for j in s.waiting if j.stage == "grid"]
            point_seeds = [j for s in states for j in s.waiting if j.stage != "grid"]
            if study.spec.get("points"):
                by_point += point_grid + point_seeds
            else:
                grid += point_grid
                seeds += point_seeds
    return grid + seeds + by_point


def describe_plan(studies: list[Study], jobs: int) -> str:
    lines = []
    total_minutes = 0.0
    for study in studies:
        spec = study.spec
        states = [group_state(study, m, t) for m, t in study.groups()]
        planned = sum(planned_runs(study, s) for s in states)
        waiting = sum(len(s.waiting) for s in states)
        unknown = sum(planned_runs(study, s) - len(s.jobs) for s in states)
        to_run = waiting + unknown
        minutes = sum(
            (len(s.waiting) + planned_runs(study, s) - len(s.jobs)) * study.minutes_per_run(s.task)
            for s in states
        )
        total_minutes += minutes
        tasks = f" x {len(study.tasks)} tasks ({', '.join(study.tasks)})" if spec.tasks else ""
        lines.append(
            f"{study.sweep}: {len(study.methods)} methods ({', '.join(study.methods)}){tasks}; "
            f"grid at seed {spec.grid_seed}, then seeds {list(spec.seeds)} at each chosen lr"
            f"{' (and at the unrefined choice if refinement moved it)' if spec.get('refine') else ''}: "
            f"{planned} runs, {planned - to_run} done, {to_run} to run (~{minutes:.0f} min of "
            f"one core)"
        )
        lines.append(f"    {study.cfg.scale}")
        for s in states:
            where = f"{s.task}/" if s.task else ""
            chosen = f", chosen {format_lr(s.choice.lr)}" if s.grid_final and s.choice else ""
            lines.append(
                f"    {where}{s.method}: lrs {[format_lr(lr) for lr in s.grid]}{chosen}; "
                f"{len(s.waiting)} waiting"
            )
    lines.append(
        f"Estimated wall time: ~{total_minutes / max(jobs, 1):.0f} min with {jobs} runs at a "
        "time (more if a grid is widened)."
    )
    return "\n".join(lines)


def _pid_file(log_dir: Path, by_sweep: dict[str, Study], job: Job) -> Path:
    study = by_sweep[job.sweep]
    root = (study.repo / study.spec.root).resolve()
    name = str(job.run_dir.resolve().relative_to(root)).replace(os.sep, "__")
    return log_dir / f"{name}.pid"


def _prune_checkpoints(run_dir: Path) -> None:
    # A completed run is never resumed again; its checkpoints (kept for resuming an
    # interrupted run) would only fill the disk and cannot be committed.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _job_env(study: Study) -> dict[str, str]:
    threads = str(int(study.spec.threads_per_run))
    return {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(study.repo / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }


def _alive_elsewhere(pid_file: Path) -> bool:
    """Whether another study process is running this job now (its train.py is alive)."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"train.py" in cmdline


def run_local(studies: list[Study], jobs: int, progress: Progress, log_dir: Path) -> list[Job]:
    """Run every ready job as ``python train.py ...``, ``jobs`` at a time, until none is
    ready. Returns the jobs that failed (they are not retried in this invocation).

    A job another study process is already running (its pid file names a live train.py) is
    left to it. SIGINT/SIGTERM stop the running jobs (each writes its final status) and
    end the study; rerun it to continue them from their checkpoints.
    """
    by_sweep = {s.sweep: s for s in studies}
    running: dict[subprocess.Popen, tuple[Job, float, Path, Any]] = {}
    failed: list[Job] = []
    log_dir.mkdir(parents=True, exist_ok=True)

    def stop(signum, _frame):
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            proc.wait()
        progress.print(f"stopped by signal {signum}; rerun to continue from the checkpoints")
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_local_loop(studies, jobs, progress, log_dir, by_sweep, running, failed)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_local_loop(studies, jobs, progress, log_dir, by_sweep, running, failed) -> list[Job]:
    while True:
        busy = {r[0].run_dir for r in running.values()} | {j.run_dir for j in failed}
        ready = [
            j
            for j in ready_jobs(studies)
            if j.run_dir not in busy and not _alive_elsewhere(_pid_file(log_dir, by_sweep, j))
        ]
        while ready and len(running) < jobs:
            job = ready.pop(0)
            study = by_sweep[job.sweep]
            pid_file = _pid_file(log_dir, by_sweep, job)
            log = pid_file.with_suffix(".log")
            cmd = [sys.executable, str(study.repo / "train.py"), *job.overrides]
            handle = open(log, "ab")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen(
                cmd, cwd=study.repo, env=_job_env(study), stdout=handle, stderr=subprocess.STDOUT
            )
            pid_file.write_text(str(proc.pid))
            running[proc] = (job, time.monotonic(), log, handle)
            progress.print(f"start  {job.label} ({job.stage})")
        if not running:
            return failed
        finished = None
        while finished is None:
            for proc in running:
                if proc.poll() is not None:
                    finished = proc
                    break
            else:
                time.sleep(1.0)
        job, start, log, handle = running.pop(finished)
        handle.close()
        _pid_file(log_dir, by_sweep, job).unlink(missing_ok=True)
        minutes = (time.monotonic() - start) / 60
        status, summary = read_status(job.run_dir)
        study = by_sweep[job.sweep]
        if finished.returncode == 0 and status == "completed":
            _prune_checkpoints(job.run_dir)
            progress.durations.setdefault(job.sweep, []).append(minutes)
            value = study.score(summary)
            done, total = _completed_runs(studies)
            remaining = total - done
            mean = sum(progress.durations[job.sweep]) / len(progress.durations[job.sweep])
            progress.print(
                f"done   {job.label} in {minutes:.1f} min: {study.spec.select.metric} "
                f"{value:.4f} | {done}/{total} runs done, ~{remaining * mean / jobs:.0f} min left"
            )
        else:
            failed.append(job)
            progress.print(
                f"FAILED {job.label} (exit {finished.returncode}, status {status}); log: {log}"
            )


def run_slurm(
    studies: list[Study], progress: Progress, launcher_args: list[str], jobs: int
) -> list[Job]:
    """Submit the ready jobs of each (table, method, task, stage) as one Hydra multirun on
    ``hydra/launcher=slurm`` (a job array) and wait; repeat until nothing is ready."""
    failed: list[Job] = []
    lock = threading.Lock()
    while True:
        ready = [j for j in ready_jobs(studies) if j not in failed]
        if not ready:
            return failed
        groups: dict[tuple, list[Job]] = {}
        for job in ready:
            groups.setdefault((job.sweep, job.method, job.task, job.stage), []).append(job)

        def submit(group: list[Job]) -> None:
            first = group[0]
            lrs = ",".join(sorted({format_lr(j.lr) for j in group}))
            seeds = ",".join(sorted({str(j.seed) for j in group}))
            fixed = [o for o in first.overrides if not o.startswith(("optimizer.lr=", "seed="))]
            threads = next(s for s in studies if s.sweep == first.sweep).spec.threads_per_run
            cmd = [
                sys.executable,
                str(REPO / "train.py"),
                "-m",
                *fixed,
                f"optimizer.lr={lrs}",
                f"seed={seeds}",
                "hydra/launcher=slurm",
                f"hydra.launcher.setup=[export OMP_NUM_THREADS={threads}]",
                *launcher_args,
            ]
            with lock:
                progress.print(f"submit {len(group)} job(s): {' '.join(cmd[2:])}")
            code = subprocess.call(cmd, cwd=REPO)
            with lock:
                for job in group:
                    status, _ = read_status(job.run_dir)
                    if status == "completed":
                        _prune_checkpoints(job.run_dir)
                    else:
                        failed.append(job)
                        progress.print(
                            f"FAILED {job.label} (multirun exit {code}, status {status})"
                        )

        with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
            list(pool.map(submit, groups.values()))
