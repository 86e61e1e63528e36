"""The one training loop shared by every experiment (GPT-2 pretraining, GLUE, GSM8K).

It owns what is common — devices and DDP (accelerate), mixed precision, gradient
accumulation and clipping, the warm-up + cosine schedule, evaluation, logging, atomic
checkpoints and exact resume — and asks a :class:`~alphaadam.tasks.base.Task` for the
rest. The optimizer comes from the registry by its config name; the loop never looks at
which optimizer or task it runs (it only asks an optimizer for ``mask_statistics`` when it
has them).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from . import run_dir as rd
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
    set_rng_state,
)
from .cpu_memory import configure_cpu_allocator
from .hub import HubAccessError
from .optim.alphaadam import STAT_KEYS
from .optim.registry import build_optimizer
from .tasks.base import Task

log = logging.getLogger("alphaadam")


class NonFiniteLossError(RuntimeError):
    pass


def warmup_cosine(warmup_steps: int, max_steps: int, min_lr_ratio: float, schedule: str = "cosine"):
    """nanoGPT's ``get_lr`` as a multiplier of the base lr: linear warm-up over
    ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``max_steps``
    (``schedule="constant"`` keeps 1 after the warm-up, ``"linear"`` decays linearly)."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(
            f"Unknown trainer.lr_schedule {schedule!r}; valid choices are cosine, linear, constant"
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


def _task_name(task: Task) -> str:
    return getattr(task, "name", "") or type(task).__module__.rsplit(".", 1)[-1]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def _mask_stats(optimizer, model) -> dict[str, dict[str, torch.Tensor]]:
    get = getattr(optimizer, "mask_statistics", None)
    return get(model.named_parameters()) if callable(get) else {}


def train(cfg: DictConfig) -> Path:
    """Run (or continue) one training run; returns its run directory."""
    tc = cfg.trainer
    accelerator = Accelerator(cpu=tc.device == "cpu", mixed_precision=tc.mixed_precision)
    if accelerator.device.type == "cpu":
        # Before the first step allocates anything large (alphaadam/cpu_memory.py).
        configure_cpu_allocator(tc.cpu_allocator)
    main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    if tc.gradient_accumulation_steps % world:
        raise ValueError(
            f"trainer.gradient_accumulation_steps={tc.gradient_accumulation_steps} counts micro-"
            f"batches per optimizer step over all processes; it must be divisible by the {world} processes"
        )
    accum = tc.gradient_accumulation_steps // world
    global_batch = tc.micro_batch_size * tc.gradient_accumulation_steps

    # --- run directory ------------------------------------------------------------------
    choice = [rd.resolve_run_dir(cfg) if main else None]
    broadcast_object_list(choice)
    run_dir, mode = choice[0]
    if mode == "completed":
        if main:
            print(f"Run already completed: {run_dir}")
        return run_dir
    resume_from = latest_checkpoint(run_dir / rd.CHECKPOINTS) if mode == "resume" else None

    # --- task, model, optimizer, schedule -------------------------------------------------
    set_seed(cfg.seed)  # identical initial weights on every process
    task = build_task(cfg)
    task.setup(accelerator)
    model = task.build_model()
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if resume_from is not None:
        # Under FSDP the full optimizer state is read by rank 0 alone and scattered as shards.
        ckpt = load_checkpoint(resume_from, rank, optimizer=main or not fsdp)
        model.load_state_dict(ckpt["model"])
    if not fsdp:
        # Under FSDP, prepare's fully_shard moves one wrapped unit at a time to the device
        # and keeps only its shard there; moving the whole model first would put a full copy
        # on every device.
        model.to(accelerator.device)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer = build_optimizer(opt_cfg.pop("name"), model, **opt_cfg)

    # Created only once task, model and optimizer are built: a config error leaves no debris.
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / rd.CHECKPOINTS).mkdir(exist_ok=True)
        if mode == "new":  # records of an earlier attempt here that never checkpointed
            for stale in (rd.METRICS, rd.MASK_STATS, rd.EVENTS):
                (run_dir / stale).unlink(missing_ok=True)
        saved = OmegaConf.to_container(cfg, resolve=True)
        saved["trainer"]["run_dir"] = str(run_dir)
        OmegaConf.save(OmegaConf.create(saved), run_dir / rd.CONFIG)
        print(f"{'Resuming' if resume_from else 'Starting'} run in {run_dir}", flush=True)

    steps_per_epoch = task.steps_per_epoch(global_batch)
    max_steps = int(tc.max_steps)
    if tc.max_epochs:
        if not steps_per_epoch:
            raise ValueError(
                f"trainer.max_epochs is set but task {_task_name(task)!r} has no epochs; use trainer.max_steps"
            )
        max_steps = math.ceil(tc.max_epochs * steps_per_epoch)
    warmup = (
        tc.warmup_steps
        if tc.warmup_steps is not None
        else round((tc.warmup_ratio or 0.0) * max_steps)
    )
    scheduler = LambdaLR(
        optimizer, warmup_cosine(warmup, max_steps, tc.min_lr_ratio, tc.lr_schedule)
    )
    if tc.compile:
        model.compile()  # in place: state_dict keys stay those of the plain model
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    stream = task.train_stream(tc.micro_batch_size, cfg.seed, rank, world)
    torch.manual_seed(cfg.seed + rank)  # dropout differs across processes, as in nanoGPT
    state: dict[str, Any] = {
        "step": 0,
        "tokens": 0,
        "wall_time_s": 0.0,
        "skipped_steps": 0,
        "best": None,
        "final_eval": {},
        "train_loss": None,
    }
    if resume_from is not None:
        restore_optimizer(model, optimizer, ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        stream.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"])
        state.update(ckpt["trainer_state"])
        del ckpt
        if main:
            rd.truncate_jsonl(run_dir / rd.METRICS, state["step"])
            rd.truncate_jsonl(run_dir / rd.MASK_STATS, state["step"])
            rd.truncate_jsonl(run_dir / rd.EVENTS, state["step"])

    metrics = rd.MetricsLog(run_dir, cfg, enabled=main)
    evals = eval_steps(tc, max_steps, steps_per_epoch)
    mask_steps = set(tc.mask_stats_steps or [])
    summary = {
        "status": "running",
        "experiment": cfg.experiment_name,
        "task": _task_name(task),
        "dataset": cfg.data.get("name"),
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "seed": cfg.seed,
        "max_steps": max_steps,
        "primary_metric": task.primary_metric,
        "primary_mode": task.primary_mode,
        "git_sha": rd.git_sha(),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(accelerator.device)
        if accelerator.device.type == "cuda"
        else accelerator.device.type,
        "num_processes": world,
        "global_batch_size": global_batch,
        "run_dir": str(run_dir),
    }

    def write_summary(status: str, **extra: Any) -> None:
        if main:
            final = {"train_loss": state["train_loss"], **state["final_eval"]}
            rd.write_json_atomic(
                run_dir / rd.SUMMARY,
                {
                    **summary,
                    "status": status,
                    "steps": state["step"],
                    "tokens": state["tokens"],
                    "wall_time_s": state["wall_time_s"],
                    "skipped_steps": state["skipped_steps"],
                    "final": final,
                    "best": state["best"],
                    # Mean over the logged steps of the mean over tensors of the lr multiplier
                    # a masked update applied (alpha * d / (nnz + 1)); null without a mask.
                    "step_scale_mean": state["step_scale_sum"] / state["step_scale_records"]
                    if state.get("step_scale_records")
                    else None,
                    **extra,
                },
            )

    def epoch() -> float | None:
        e = stream.epoch
        if math.isfinite(e):
            return e
        return state["step"] / steps_per_epoch if steps_per_epoch else None

    def evaluate() -> None:
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            results = task.evaluate(model, accelerator)
        model.train()
        step = state["step"]
        metrics.write(
            {
                "kind": "eval",
                "step": step,
                "epoch": epoch(),
                "fraction": step / max_steps,
                **results,
            }
        )
        state["final_eval"] = dict(results)
        value = results.get(task.primary_metric)
        best = state["best"]
        if value is not None and (
            best is None
            or (
                value < best[task.primary_metric]
                if task.primary_mode == "min"
                else value > best[task.primary_metric]
            )
        ):
            state["best"] = {"step": step, **results}
        if main:
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def checkpoint() -> None:
        save_checkpoint(
            run_dir / rd.CHECKPOINTS,
            state["step"],
            accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            stream=stream,
            trainer_state=state,
            keep=tc.keep_checkpoints,
        )

    write_summary("running")
    segment_start = time.perf_counter()
    wall_before = state["wall_time_s"]
    last_log = (time.perf_counter(), state["tokens"])
    bar = tqdm(
        total=max_steps,
        initial=state["step"],
        disable=not (main and tc.progress_bar),
        dynamic_ncols=True,
        desc=str(cfg.experiment_name),
    )
    model.train()
    if state["step"] == 0 and 0 in evals:
        evaluate()
    try:
        while state["step"] < max_steps:
            lr = scheduler.get_last_lr()[0]
            loss_sum = torch.zeros((), device=accelerator.device)
            step_tokens = 0
            for micro in range(accum):
                batch = _to_device(next(stream), accelerator.device)
                # Only the last micro-batch all-reduces gradients.
                sync = (
                    contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
                )
                with sync:
                    with accelerator.autocast():
                        loss = task.compute_loss(model, batch)
                    accelerator.backward(loss / accum)
                loss_sum += loss.detach().float()
                step_tokens += task.count_tokens(batch)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip or math.inf)
            # One small all-reduce and one host sync per optimizer step.
            shared = accelerator.reduce(
                torch.stack(
                    [loss_sum / accum, torch.tensor(float(step_tokens), device=accelerator.device)]
                ),
                reduction="sum",
            )
            loss_value, tokens_value = shared.tolist()
            loss_value /= world
            grad_norm_value = float(grad_norm)
            # fp16's GradScaler skips steps with inf gradients itself; a bad loss is ours to handle.
            bad_grad = not math.isfinite(grad_norm_value) and tc.mixed_precision != "fp16"
            if not math.isfinite(loss_value) or bad_grad:
                state["skipped_steps"] += 1
                optimizer.zero_grad(set_to_none=True)
                metrics.write(
                    {
                        "kind": "skip",
                        "step": state["step"],
                        "loss": loss_value,
                        "grad_norm": grad_norm_value,
                        "skipped_steps": state["skipped_steps"],
                    },
                    rd.EVENTS,
                )
                if state["skipped_steps"] > tc.nan_skip_budget:
                    raise NonFiniteLossError(
                        f"non-finite loss {loss_value} / grad norm {grad_norm_value} at step "
                        f"{state['step'] + 1}: {state['skipped_steps']} bad steps exceed "
                        f"trainer.nan_skip_budget={tc.nan_skip_budget}. The last good checkpoint "
                        f"is kept in {run_dir / rd.CHECKPOINTS}; lower the lr or raise the budget."
                    )
                continue
            optimizer.step()
            # fp16: a step GradScaler skipped (inf/NaN gradients) leaves the lr schedule where it
            # was, as accelerate's own prepared schedulers do.
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            state["tokens"] += int(tokens_value)
            state["train_loss"] = loss_value
            state["wall_time_s"] = wall_before + time.perf_counter() - segment_start
            step = state["step"]
            bar.update(1)

            if step % tc.log_every == 0 or step == 1 or step == max_steps:
                now = time.perf_counter()
                tokens_per_s = (state["tokens"] - last_log[1]) / max(now - last_log[0], 1e-9)
                last_log = (now, state["tokens"])
                record = {
                    "kind": "train",
                    "step": step,
                    "epoch": epoch(),
                    "loss": loss_value,
                    "lr": lr,
                    "tokens": state["tokens"],
                    "time": state["wall_time_s"],
                    "grad_norm": grad_norm_value,
                    "tokens_per_s": tokens_per_s,
                }
                stats = _mask_stats(getattr(optimizer, "optimizer", optimizer), raw_model)
                if stats:
                    # One host sync for every tensor's statistics.
                    table = torch.stack(
                        [torch.stack([s[k].float() for k in STAT_KEYS]) for s in stats.values()]
                    )
                    alpha, density, scale = table.unbind(1)
                    a_mean, a_min, a_max, d_mean, s_mean, s_std, s_min, s_max = torch.stack(
                        [
                            alpha.mean(),
                            alpha.min(),
                            alpha.max(),
                            density.mean(),
                            scale.mean(),
                            scale.std(correction=0),
                            scale.min(),
                            scale.max(),
                        ]
                    ).tolist()
                    record.update(
                        alpha_mean=a_mean,
                        alpha_min=a_min,
                        alpha_max=a_max,
                        mask_density_mean=d_mean,
                        step_scale_mean=s_mean,
                        step_scale_std=s_std,
                        step_scale_min=s_min,
                        step_scale_max=s_max,
                    )
                    state["step_scale_sum"] = state.get("step_scale_sum", 0.0) + s_mean
                    state["step_scale_records"] = state.get("step_scale_records", 0) + 1
                metrics.write(record)
                bar.set_postfix(
                    loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}"
                )

            if (tc.mask_stats_every and step % tc.mask_stats_every == 0) or step in mask_steps:
                stats = _mask_stats(getattr(optimizer, "optimizer", optimizer), raw_model)
                if stats:
                    names = list(stats)
                    # One host sync for every tensor's statistics.
                    values = torch.stack(
                        [torch.stack([stats[n][k].float() for k in STAT_KEYS]) for n in names]
                    ).tolist()
                    metrics.write_many(
                        [
                            {"step": step, "param": n, **dict(zip(STAT_KEYS, row))}
                            for n, row in zip(names, values)
                        ],
                        rd.MASK_STATS,
                    )
            if step in evals:
                evaluate()
            if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or (
                step == max_steps and tc.save_final
            ):
                checkpoint()
    except NonFiniteLossError as exc:
        bar.close()
        write_summary("failed", error=str(exc))
        metrics.close()
        raise
    except BaseException as exc:
        bar.close()
        write_summary("failed", error=f"{type(exc).__name__}: {exc}")
        metrics.close()
        raise
    bar.close()
    write_summary("completed")
    metrics.close()
    if main:
        print(f"Run directory: {run_dir}", flush=True)
    accelerator.wait_for_everyone()
    return run_dir


def main(cfg: DictConfig) -> Path:
    """Entry point behind ``train.py`` (Hydra has composed ``cfg``)."""
    try:
        return train(cfg)
    except (NonFiniteLossError, HubAccessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
