"""The one training loop shared by every experiment (GPT-2 pretraining, GLUE, GSM8K).

It owns what is common (devices, DDP and FSDP through accelerate, mixed precision, gradient
accumulation and clipping, the warm-up + cosine schedule, evaluation, logging, atomic
checkpoints, exact resume) and asks a :class:`~alphaadam.tasks.base.Task` for the rest. It
never looks at which optimizer or task it runs; it only reads an optimizer's
``read_mask_statistics`` when it has one.

Read :func:`train` first: a list of build steps, then nanoGPT's loop. What it calls
follows, in the order it calls it:

* :func:`check_trainer_config` and :func:`open_run` -> :class:`Run`: the settings are
  checked, the accelerator started, the run directory chosen (nothing is written yet);
* :func:`build_training_setup` -> :class:`TrainingSetup` and :class:`TrainState`: task,
  model, optimizer, schedule and data stream, restored from the newest complete checkpoint
  on resume;
* :class:`~alphaadam.run_record.RunRecord` (its own module): the run directory's files
  and the progress output; as a context manager it writes the final status once, on every
  way out (``completed``, ``failed``, ``interrupted``);
* the phases of one step: :func:`accumulate_gradients`, :func:`gather_step`,
  :func:`apply_update`, :func:`evaluate_and_record`, :func:`save_run_checkpoint`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from . import run_dir as rd
from .checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
    set_rng_state,
    tidy_checkpoints,
)
from .checks import FAIL, check_writable
from .cpu_memory import CPU_ALLOCATOR_CHOICES, configure_cpu_allocator
from .hub import HubAccessError
from .optim.registry import build_optimizer
from .run_record import NonFiniteLossError, RunInterrupted, RunRecord
from .tasks.base import BatchStream, Task, task_name

# Status lines; only the main process writes them (each call site checks).
log = logging.getLogger(__name__)

T = TypeVar("T")

#: Every key of the ``trainer`` config group; configs/trainer/default.yaml documents each
#: (a test keeps the two equal). Any other key is a typo and refused.
TRAINER_KEYS = (
    "output_root",
    "run_dir",
    "resume",
    "device",
    "mixed_precision",
    "compile",
    "cpu_allocator",
    "max_steps",
    "max_epochs",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "grad_clip",
    "lr_schedule",
    "warmup_steps",
    "warmup_ratio",
    "min_lr_ratio",
    "log_every",
    "eval_every",
    "eval_fractions",
    "eval_at_epoch_end",
    "eval_at_start",
    "eval_at_end",
    "checkpoint_every",
    "save_final",
    "keep_checkpoints",
    "mask_stats_every",
    "mask_stats_steps",
    "nan_skip_budget",
    "progress_bar",
    "preflight",
    "preflight_processes",
    "preflight_fsdp",
)
LR_SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
DEVICES = ("auto", "cpu")


# ------------------------------------------------------------------------------- train
def train(cfg: DictConfig) -> Path:
    """Run (or continue) one training run; returns its run directory."""
    check_trainer_config(cfg.trainer)
    run = open_run(cfg)  # accelerator, run directory, new or resume; a resume locks it
    try:
        return _train(cfg, run)
    finally:
        run.release()


def _train(cfg: DictConfig, run: Run) -> Path:
    if run.mode == "completed":
        if run.is_main:
            log.info(f"Run already completed: {run.dir}")
        return run.dir
    tc, accelerator = cfg.trainer, run.accelerator
    fp16 = tc.mixed_precision == "fp16"
    with RunRecord(run, cfg) as record:  # writes the final status on every way out
        parts, state = build_training_setup(cfg, run)  # task, model, optimizer, schedule, data
        record.start(parts, state)  # config.yaml, summary.json "running", progress
        parts.model.train()
        if state.step == 0 and 0 in parts.eval_steps:
            evaluate_and_record(parts, state, record, accelerator)
        while state.step < parts.max_steps:
            record.stop_if_signalled()  # a SIGTERM that another handler saw first
            lr = parts.scheduler.get_last_lr()[0]
            loss_sum, tokens = accumulate_gradients(parts, accelerator)  # batches, fwd, bwd
            grad_norm = accelerator.clip_grad_norm_(
                parts.model.parameters(), tc.grad_clip or math.inf
            )
            result = gather_step(accelerator, loss_sum / parts.accum, tokens, grad_norm, lr, fp16)
            if not result.finite:
                parts.optimizer.zero_grad(set_to_none=True)
                state.skipped_steps += 1
                record.skip(state, result)  # raises once trainer.nan_skip_budget is spent
                continue
            apply_update(parts, accelerator)  # optimizer step, schedule, zero_grad
            state.advance(result)
            record.after_step(state, result)  # train record, mask statistics, progress
            if state.step in parts.eval_steps:
                evaluate_and_record(parts, state, record, accelerator)
            if checkpoint_due(tc, state.step, parts.max_steps):
                save_run_checkpoint(run, parts, state, tc.keep_checkpoints)
        if run.is_main:  # what a save killed before its link swap left undone
            tidy_checkpoints(run.dir / rd.CHECKPOINTS, tc.keep_checkpoints)
    return run.dir


def main(cfg: DictConfig) -> Path:
    """Entry point behind ``train.py`` (Hydra has composed ``cfg``)."""
    try:
        return train(cfg)
    except (NonFiniteLossError, HubAccessError, rd.RunDirError, CheckpointError) as exc:
        # On stderr, as a command-line tool's error: Hydra sends the log to stdout.
        if PartialState().is_main_process:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc
    except RunInterrupted as exc:
        raise SystemExit(128 + exc.signum) from exc  # the shell's code for a signal
    except KeyboardInterrupt as exc:  # SIGINT: the run record has printed its one line
        raise SystemExit(128 + signal.SIGINT) from exc


# ---------------------------------------------------------------------- settings, run
def check_trainer_config(tc: DictConfig) -> None:
    """Refuse a trainer setting the loop cannot run, before anything is built or written."""
    unknown = sorted(set(tc) - set(TRAINER_KEYS))
    if unknown:
        raise ValueError(
            f"Unknown trainer key(s): {', '.join(unknown)}. Valid keys are "
            f"{', '.join(TRAINER_KEYS)} (configs/trainer/default.yaml documents each)."
        )

    def require(key: str, ok: bool, should: str) -> None:
        if not ok:
            raise ValueError(f"trainer.{key}={tc[key]!r}: {should}")

    def count(key: str, least: int) -> None:
        value = tc[key]
        require(key, _is_int(value) and value >= least, f"must be a whole number >= {least}")

    def number(key: str, ok: Callable[[float], bool], should: str) -> None:
        value = tc[key]
        require(key, value is None or (_is_number(value) and ok(value)), f"{should} (or null)")

    if tc.max_epochs is None:
        require(
            "max_steps",
            _is_int(tc.max_steps) and tc.max_steps >= 1,
            "must be a whole number of optimizer steps >= 1 (or set trainer.max_epochs)",
        )
    number("max_epochs", lambda v: v > 0, "must be > 0")
    count("micro_batch_size", 1)
    count("gradient_accumulation_steps", 1)
    number("grad_clip", lambda v: v >= 0, "must be >= 0 (0 = off)")
    require("lr_schedule", tc.lr_schedule in LR_SCHEDULES, f"valid: {', '.join(LR_SCHEDULES)}")
    if tc.warmup_steps is not None:
        count("warmup_steps", 0)
    number("warmup_ratio", lambda v: 0 <= v <= 1, "must lie in [0, 1]")
    require(
        "min_lr_ratio",
        _is_number(tc.min_lr_ratio) and 0 <= tc.min_lr_ratio <= 1,
        "must lie in [0, 1]",
    )
    count("log_every", 1)
    for key in ("eval_every", "checkpoint_every", "mask_stats_every", "nan_skip_budget"):
        count(key, 0)
    count("keep_checkpoints", 1)
    require(
        "eval_fractions",
        all(_is_number(f) and 0 < f <= 1 for f in tc.eval_fractions or []),
        "every fraction must lie in (0, 1]",
    )
    require(
        "mask_stats_steps",
        all(_is_int(s) and s >= 1 for s in tc.mask_stats_steps or []),
        "every step must be a whole number >= 1",
    )
    require(
        "mixed_precision",
        tc.mixed_precision in MIXED_PRECISION,
        f"valid: {', '.join(MIXED_PRECISION)}",
    )
    require("device", tc.device in DEVICES, f"valid: {', '.join(DEVICES)}")
    require(
        "cpu_allocator",
        tc.cpu_allocator in CPU_ALLOCATOR_CHOICES,
        f"valid: {', '.join(CPU_ALLOCATOR_CHOICES)}",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Run:
    """Where a run writes and whether it starts or continues (:func:`open_run`)."""

    accelerator: Accelerator
    dir: Path
    mode: str  # "new" | "resume" | "completed" (nothing left to do)
    config: dict[str, Any] = field(default_factory=dict)  # resolved, as config.yaml has it
    lock: rd.RunLock | None = None  # held by the main process while it writes the run

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_run(cfg: DictConfig) -> Run:
    """Start the accelerator and choose the run directory (docs/run_dir.md). A run to
    resume, or an existing folder to start afresh, is locked here
    (:class:`~alphaadam.run_dir.RunLock`), before anything in it is restored or reset; a
    new folder when it is created (``RunRecord.start``), and it is checked to be creatable
    first. Writes nothing else (the lock file aside)."""
    tc = cfg.trainer
    accelerator = Accelerator(cpu=tc.device == "cpu", mixed_precision=tc.mixed_precision)
    if accelerator.device.type == "cpu":
        # Before the first step allocates anything large (alphaadam/cpu_memory.py).
        configure_cpu_allocator(tc.cpu_allocator)
    world = accelerator.num_processes
    if tc.gradient_accumulation_steps % world:
        raise ValueError(
            f"trainer.gradient_accumulation_steps={tc.gradient_accumulation_steps} counts micro-"
            f"batches per optimizer step over all processes; it must be divisible by the {world} processes"
        )
    held: list[rd.RunLock] = []

    def decide() -> tuple[Path, str]:
        path, mode = rd.resolve_run_dir(cfg)
        if mode == "new" and not path.is_dir():
            writable = check_writable("output", [path])
            if writable.status == FAIL:
                raise rd.RunDirError(
                    f"the run directory cannot be created: {writable.detail}; choose another "
                    "trainer.output_root (or trainer.run_dir)"
                )
        elif mode != "completed":  # an existing folder: locked before it is changed
            held.append(rd.RunLock.acquire(path))
        return path, mode

    config = OmegaConf.to_container(cfg, resolve=True)
    path, mode = main_process_decides(accelerator, decide)
    config["trainer"]["run_dir"] = str(path)
    return Run(accelerator, path, mode, config, held[0] if held else None)


def main_process_decides(accelerator: Accelerator, decide: Callable[[], T]) -> T:
    """``decide()`` run on the main process; its result, or its error, on every process."""
    outcome: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            outcome = [(True, decide())]
        except Exception as err:  # raised on every process below, not only here
            outcome = [(False, err)]
    broadcast_object_list(outcome)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


# -------------------------------------------------------------------- training setup
@dataclass
class TrainingSetup:
    """What the loop trains with (:func:`build_training_setup`)."""

    task: Task
    model: nn.Module  # as accelerate prepared it (DDP / FSDP wrapped)
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer  # accelerate's wrapper
    raw_optimizer: torch.optim.Optimizer  # the optimizer itself: its mask statistics
    scheduler: LambdaLR
    stream: BatchStream
    accum: int  # micro-batches per optimizer step on this process
    global_batch: int
    max_steps: int
    steps_per_epoch: int | None
    eval_steps: set[int]
    mask_stats_steps: set[int]

    def epoch(self, step: int) -> float | None:
        epoch = self.stream.epoch
        if math.isfinite(epoch):
            return epoch
        return step / self.steps_per_epoch if self.steps_per_epoch else None


def build_task(cfg: DictConfig) -> Task:
    """``cfg.task`` names the Task class by ``_target_``; it receives ``data`` and ``model``."""
    try:
        task = instantiate(cfg.task, data=cfg.data, model=cfg.model, _recursive_=False)
    except InstantiationException as exc:
        # Show the task's own error (e.g. a missing data file), not Hydra's wrapper.
        if exc.__cause__ is not None:
            raise exc.__cause__ from None
        raise
    if not isinstance(task, Task):
        raise TypeError(f"task._target_={cfg.task._target_} is not an alphaadam.tasks.base.Task")
    return task


def build_training_setup(cfg: DictConfig, run: Run) -> tuple[TrainingSetup, TrainState]:
    """Task, model, optimizer, schedule and data stream; on resume, restored from the
    newest complete checkpoint (model weights before device placement and sharding, the
    rest after ``accelerator.prepare``). Returns them with the run's :class:`TrainState`."""
    tc, accelerator = cfg.trainer, run.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    checkpoint = resume_checkpoint(run) if run.mode == "resume" else None
    set_seed(cfg.seed)  # identical initial weights on every process
    task = build_task(cfg)
    task.setup(accelerator)
    model = task.build_model()
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    ckpt = None
    if checkpoint is not None:
        # Under FSDP the full optimizer state is read by rank 0 alone and scattered as shards.
        ckpt = load_checkpoint(checkpoint, rank, optimizer=run.is_main or not fsdp)
        model.load_state_dict(ckpt["model"])
    if not fsdp:
        # Under FSDP, prepare's fully_shard moves one wrapped unit at a time to the device
        # and keeps only its shard there; moving the whole model first would put a full copy
        # on every device.
        model.to(accelerator.device)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer = build_optimizer(opt_cfg.pop("name"), model, **opt_cfg)

    global_batch = tc.micro_batch_size * tc.gradient_accumulation_steps
    steps_per_epoch = task.steps_per_epoch(global_batch)
    max_steps = total_steps(tc, steps_per_epoch, task)
    warmup = (
        tc.warmup_steps
        if tc.warmup_steps is not None
        else round((tc.warmup_ratio or 0.0) * max_steps)
    )
    scheduler = LambdaLR(optimizer, lr_schedule(warmup, max_steps, tc.min_lr_ratio, tc.lr_schedule))
    if tc.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    model, optimizer = accelerator.prepare(model, optimizer)

    stream = task.train_stream(tc.micro_batch_size, cfg.seed, rank, world)
    torch.manual_seed(cfg.seed + rank)  # dropout differs across processes, as in nanoGPT
    state = TrainState()
    if ckpt is not None:
        restore_optimizer(model, optimizer, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        stream.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"])
        state = TrainState.from_state_dict(ckpt["trainer_state"])
    parts = TrainingSetup(
        task=task,
        model=model,
        raw_model=accelerator.unwrap_model(model),
        optimizer=optimizer,
        raw_optimizer=getattr(optimizer, "optimizer", optimizer),
        scheduler=scheduler,
        stream=stream,
        accum=tc.gradient_accumulation_steps // world,
        global_batch=global_batch,
        max_steps=max_steps,
        steps_per_epoch=steps_per_epoch,
        eval_steps=eval_steps(tc, max_steps, steps_per_epoch),
        mask_stats_steps=set(tc.mask_stats_steps or []),
    )
    return parts, state


def resume_checkpoint(run: Run) -> Path:
    """The run's newest complete checkpoint; newer damaged ones are named and set aside."""
    ckpt_root = run.dir / rd.CHECKPOINTS
    world = run.accelerator.num_processes
    checkpoint, damaged = main_process_decides(
        run.accelerator, lambda: find_resume_checkpoint(ckpt_root, world)
    )
    for line in damaged if run.is_main else []:
        log.warning(f"Checkpoint {line}; resuming from {checkpoint.name}, the newest complete one.")
    return checkpoint


def total_steps(tc: DictConfig, steps_per_epoch: int | None, task: Task) -> int:
    """``trainer.max_steps``, or ``ceil(max_epochs x steps_per_epoch)`` for epoch-based tasks."""
    if not tc.max_epochs:
        return int(tc.max_steps)
    if not steps_per_epoch:
        raise ValueError(
            f"trainer.max_epochs is set but task {task_name(task)!r} has no epochs; use trainer.max_steps"
        )
    return math.ceil(tc.max_epochs * steps_per_epoch)


def lr_schedule(warmup_steps: int, max_steps: int, min_lr_ratio: float, schedule: str = "cosine"):
    """nanoGPT's ``get_lr`` as a multiplier of the base lr: linear warm-up over
    ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``max_steps``
    (``schedule="constant"`` keeps 1 after the warm-up, ``"linear"`` decays linearly)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(
            f"Unknown trainer.lr_schedule {schedule!r}; valid choices are {', '.join(LR_SCHEDULES)}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant" or max_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (max_steps - warmup_steps))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_lr_ratio + decay * (1.0 - min_lr_ratio)

    return factor


def eval_steps(tc: DictConfig, max_steps: int, steps_per_epoch: int | None) -> set[int]:
    """Steps (counted after the update) at which to evaluate."""
    steps: set[int] = set()
    if tc.eval_every:
        steps.update(range(tc.eval_every, max_steps + 1, tc.eval_every))
    for fraction in tc.eval_fractions or []:
        if not 0 < fraction <= 1:
            raise ValueError(f"trainer.eval_fractions must lie in (0, 1], got {fraction}")
        steps.add(max(1, round(fraction * max_steps)))
    if tc.eval_at_epoch_end and steps_per_epoch:
        steps.update(range(steps_per_epoch, max_steps + 1, steps_per_epoch))
    if tc.eval_at_end:
        steps.add(max_steps)
    if tc.eval_at_start:
        steps.add(0)
    return steps


# ------------------------------------------------------------------------ train state
@dataclass
class TrainState:
    """The counters a checkpoint carries (``trainer_state.json``), and the evaluation
    bookkeeping behind summary.json's ``final`` and ``best``."""

    step: int = 0
    tokens: int = 0
    wall_time_s: float = 0.0
    skipped_steps: int = 0
    best: dict[str, Any] | None = None  # the evaluation with the best primary metric
    final_eval: dict[str, float] = field(default_factory=dict)  # the last evaluation
    train_loss: float | None = None
    # Running sum behind summary.json's step_scale_mean (masked optimizers only).
    step_scale_sum: float = 0.0
    step_scale_records: int = 0
    _clock_origin: float = field(default=0.0, repr=False, compare=False)

    def state_dict(self) -> dict[str, Any]:
        """The ``trainer_state.json`` keys; the step-scale pair only once a masked
        optimizer logged one, as checkpoints have always had it."""
        out = {
            "step": self.step,
            "tokens": self.tokens,
            "wall_time_s": self.wall_time_s,
            "skipped_steps": self.skipped_steps,
            "best": self.best,
            "final_eval": self.final_eval,
            "train_loss": self.train_loss,
        }
        if self.step_scale_records:
            out.update(
                step_scale_sum=self.step_scale_sum, step_scale_records=self.step_scale_records
            )
        return out

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any]) -> TrainState:
        return cls(**saved)

    def start_clock(self) -> None:
        """Wall time continues from the checkpoint's; the time between runs is not counted."""
        self._clock_origin = time.perf_counter() - self.wall_time_s

    def advance(self, result: StepResult) -> None:
        self.step += 1
        self.tokens += result.tokens
        self.train_loss = result.loss
        self.wall_time_s = time.perf_counter() - self._clock_origin

    def add_step_scale(self, mean: float) -> None:
        self.step_scale_sum += mean
        self.step_scale_records += 1

    @property
    def step_scale_mean(self) -> float | None:
        return self.step_scale_sum / self.step_scale_records if self.step_scale_records else None

    def add_eval(self, results: dict[str, float], metric: str, mode: str) -> None:
        """The last evaluation becomes ``final``; it replaces ``best`` when its ``metric``
        is lower (``mode="min"``) or higher (``"max"``)."""
        self.final_eval = dict(results)
        value = results.get(metric)
        if value is None:
            return
        best = None if self.best is None else self.best[metric]
        if best is None or (value < best if mode == "min" else value > best):
            self.best = {"step": self.step, **results}


# ------------------------------------------------------------------------ one step
@dataclass(frozen=True)
class StepResult:
    """One optimizer step's numbers, the same on every process."""

    loss: float  # mean over micro-batches and processes
    grad_norm: float  # before clipping
    tokens: int  # over all processes
    lr: float
    finite: bool


def accumulate_gradients(
    parts: TrainingSetup, accelerator: Accelerator
) -> tuple[torch.Tensor, int]:
    """Forward and backward over this process's micro-batches of one step. Returns the
    summed loss (on the device) and the tokens seen."""
    loss_sum = torch.zeros((), device=accelerator.device)
    tokens = 0
    for micro in range(parts.accum):
        batch = _to_device(next(parts.stream), accelerator.device)
        # Only the last micro-batch all-reduces gradients.
        sync = (
            contextlib.nullcontext()
            if micro == parts.accum - 1
            else accelerator.no_sync(parts.model)
        )
        with sync:
            with accelerator.autocast():
                loss = parts.task.compute_loss(parts.model, batch)
            accelerator.backward(loss / parts.accum)
        loss_sum += loss.detach().float()
        tokens += parts.task.count_tokens(batch)
    return loss_sum, tokens


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def gather_step(
    accelerator: Accelerator,
    mean_loss: torch.Tensor,
    tokens: int,
    grad_norm: torch.Tensor,
    lr: float,
    fp16: bool,
) -> StepResult:
    """The step's loss and tokens over all processes: one small all-reduce and one host sync."""
    shared = accelerator.reduce(
        torch.stack([mean_loss, torch.tensor(float(tokens), device=accelerator.device)]),
        reduction="sum",
    )
    loss, total_tokens = shared.tolist()
    loss /= accelerator.num_processes
    norm = float(grad_norm)
    # fp16's GradScaler skips steps with inf gradients itself; a bad loss is ours to handle.
    finite = math.isfinite(loss) and (math.isfinite(norm) or fp16)
    return StepResult(loss=loss, grad_norm=norm, tokens=int(total_tokens), lr=lr, finite=finite)


def apply_update(parts: TrainingSetup, accelerator: Accelerator) -> None:
    parts.optimizer.step()
    # fp16: a step GradScaler skipped (inf/NaN gradients) leaves the lr schedule where it
    # was, as accelerate's own prepared schedulers do.
    if not accelerator.optimizer_step_was_skipped:
        parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)


def evaluate(parts: TrainingSetup, accelerator: Accelerator) -> dict[str, float]:
    """The task's metrics, in eval mode, without gradients, under autocast."""
    parts.model.eval()
    with torch.no_grad(), accelerator.autocast():
        results = parts.task.evaluate(parts.model, accelerator)
    parts.model.train()
    return results


def evaluate_and_record(
    parts: TrainingSetup, state: TrainState, record: RunRecord, accelerator: Accelerator
) -> None:
    results = evaluate(parts, accelerator)
    record.log_eval(state, results)
    state.add_eval(results, parts.task.primary_metric, parts.task.primary_mode)


def checkpoint_due(tc: DictConfig, step: int, max_steps: int) -> bool:
    return bool(tc.checkpoint_every and step % tc.checkpoint_every == 0) or (
        step == max_steps and tc.save_final
    )


def save_run_checkpoint(run: Run, parts: TrainingSetup, state: TrainState, keep: int) -> Path:
    return save_checkpoint(
        run.dir / rd.CHECKPOINTS,
        state.step,
        run.accelerator,
        model=parts.model,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        stream=parts.stream,
        trainer_state=state.state_dict(),
        keep=keep,
        config=run.config,
    )


# ------------------------------------------------------------------------ run record
