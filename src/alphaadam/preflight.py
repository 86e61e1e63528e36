"""Preflight: check a run in seconds, before it waits in a GPU queue.

``python train.py <overrides> trainer.preflight=true`` (and ``scripts/sweep.py`` once per
distinct job config before it submits) composes and validates the config, then checks what
a run needs without training and without downloading weights:

* config: trainer values, the task's own arguments, the optimizer's hyper-parameters;
* tokenizer, data and model: reachable from local files, the caches, or the Hub with this
  machine's token (the task's :meth:`~alphaadam.tasks.base.Task.preflight`);
* the model, built on the meta device: its parameter count beside the paper's;
* memory per GPU for weights, gradients and optimizer state under the precision and the
  DDP/FSDP layout, with the optimizer-state bytes per parameter measured by
  ``benchmarks/optimizer_memory.py``;
* the effective global batch, and that the output directories can be written.

It prints one line per check and returns non-zero when any check fails. The check type and
the helpers a task's own ``preflight()`` uses are in :mod:`alphaadam.checks`; this module
holds the run-level checks and the report.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .checks import (
    FAIL,
    GB,
    Check,
    check_writable,
    fail,
    ok,
    warn,
)

# The paper's parameter counts (Table 5 for GPT-2; RoBERTa-base and Llama-2-7B as their
# papers give them), by model config name. The preflight warns beyond PARAMETER_TOLERANCE.
PAPER_PARAMETERS = {
    "gpt2_small": 125e6,
    "gpt2_medium": 355e6,
    "gpt2_large": 770e6,
    "roberta-base": 125e6,
    "llama2_7b": 6.7e9,
}
PARAMETER_TOLERANCE = 0.02

# Optimizer state in bytes per trainable fp32 parameter, measured after one step at GPT-2
# small's shapes by `python benchmarks/optimizer_memory.py` (results/benchmarks/
# optimizer_memory.json; tests/test_preflight.py checks this copy against it). Keyed by
# registry name, and by rank for the low-rank optimizers, whose saving depends on the shapes.
STATE_BYTES_PER_PARAM: dict[tuple[str, int | None], float] = {
    ("adamw", None): 8.000,
    ("alphaadam", None): 8.000,
    ("adamw_sm", None): 8.000,
    ("adamw_am", None): 8.000,
    ("cadamw", None): 8.000,
    ("adam_mini", None): 4.003,
    ("galore", 8): 3.504,
    ("galore", 512): 7.089,
    ("adam8bit", None): 2.032,
    ("lion", None): 4.000,
    ("alphalion", None): 4.000,
    ("sgd", None): 4.000,
    ("alphasgd", None): 4.000,
}
SHAPE_DEPENDENT = ("galore", "ldadam")


@dataclass
class Report:
    title: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed

    def render(self, width: int = 100) -> str:
        lines = [f"Preflight: {self.title}"]
        for c in self.checks:
            lead = f"  {c.status:<5} {c.name:<10} "
            for i, paragraph in enumerate(c.detail.splitlines()):
                lines.append(
                    textwrap.fill(
                        paragraph,
                        width,
                        initial_indent=lead if i == 0 else " " * len(lead),
                        subsequent_indent=" " * len(lead),
                        break_on_hyphens=False,
                        break_long_words=False,
                    )
                )
        if self.ok:
            lines.append(
                f"Preflight passed in {self.seconds:.1f} s (nothing trained or downloaded)."
            )
        else:
            names = ", ".join(c.name for c in self.failed)
            lines.append(f"Preflight FAILED ({names}): fix the lines marked FAIL before launching.")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The run-level checks
# ---------------------------------------------------------------------------------------
def _check_config(cfg: DictConfig, processes: int) -> Check:
    from .optim.registry import available_optimizers
    from .trainer import eval_steps, lr_schedule

    tc = cfg.trainer
    problems: list[str] = []
    choices = {
        "device": ("auto", "cpu"),
        "mixed_precision": ("no", "bf16", "fp16"),
        "cpu_allocator": ("heap", "system"),
    }
    for key, valid in choices.items():
        if tc.get(key) not in valid:
            problems.append(f"trainer.{key}={tc.get(key)!r}; valid: {', '.join(valid)}")
    positive = ["micro_batch_size", "gradient_accumulation_steps", "log_every", "keep_checkpoints"]
    if not tc.get("max_epochs"):
        positive.append("max_steps")
    for key in positive:
        value = tc.get(key)
        if not isinstance(value, int) or value < 1:
            problems.append(f"trainer.{key}={value!r} must be a whole number >= 1")
    if tc.get("max_epochs") is not None and not tc.max_epochs > 0:
        problems.append(f"trainer.max_epochs={tc.max_epochs!r} must be > 0 (or null)")
    accum = tc.get("gradient_accumulation_steps")
    if isinstance(accum, int) and accum >= 1 and accum % processes:
        problems.append(
            f"trainer.gradient_accumulation_steps={accum} counts micro-batches per step over all "
            f"processes and must be divisible by the {processes} processes"
        )
    resume = tc.get("resume")
    if resume not in (False, "auto", None) and not Path(str(resume)).expanduser().is_dir():
        problems.append(f"trainer.resume={resume!r}: no such run directory (false | auto | <dir>)")
    try:
        steps = int(tc.max_steps) if isinstance(tc.get("max_steps"), int) else 1
        lr_schedule(tc.warmup_steps or 0, steps, tc.min_lr_ratio, tc.lr_schedule)
        eval_steps(tc, max(steps, 1), None)
    except (ValueError, TypeError) as exc:
        problems.append(str(exc))
    name = cfg.optimizer.get("name")
    if name not in available_optimizers():
        problems.append(
            f"optimizer.name={name!r} is not registered; valid: {', '.join(available_optimizers())}"
        )
    if problems:
        return fail("config", "; ".join(problems))
    return ok("config", "trainer and optimizer settings are valid")


def _count(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(trainable parameters, their bytes, all parameters, bytes of the frozen ones);
    ``parameters()`` yields a tied tensor once."""
    trainable = trainable_bytes = total = frozen_bytes = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            trainable_bytes += p.numel() * p.element_size()
        else:
            frozen_bytes += p.numel() * p.element_size()
    return trainable, trainable_bytes, total, frozen_bytes


def _human(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,.0f}"


def _check_model(model: torch.nn.Module, cfg: DictConfig) -> Check:
    trainable, _, total, _ = _count(model)
    name = str(cfg.model.get("name"))
    paper = PAPER_PARAMETERS.get(name)
    detail = f"{type(model).__name__} built on the meta device: {_human(total)} parameters"
    if trainable != total:
        detail += f" ({_human(trainable)} trainable)"
    if paper is None:
        return ok("params", detail + " (no paper count for this model)")
    off = (total - paper) / paper
    detail += f"; the paper's {name}: {_human(paper)}"
    if abs(off) > PARAMETER_TOLERANCE:
        return warn(
            "params",
            f"{detail}, {off:+.0%} off: is model.{'name_or_path' if 'name_or_path' in cfg.model else 'n_layer/n_embd'} the paper's model?",
        )
    return ok("params", detail + f" ({off:+.1%})")


def state_bytes_per_param(optimizer_cfg: dict[str, Any]) -> float | None:
    """Measured optimizer-state bytes per fp32 parameter for this optimizer config, or
    ``None`` when it was not measured (CUDA-only MicroAdam, LDAdam, an unmeasured rank)."""
    name = optimizer_cfg.get("name")
    if (name, None) in STATE_BYTES_PER_PARAM:
        return STATE_BYTES_PER_PARAM[(name, None)]
    return STATE_BYTES_PER_PARAM.get((name, optimizer_cfg.get("rank")))


def _check_optimizer(model: torch.nn.Module, cfg: DictConfig) -> Check:
    from .optim.baselines import CudaOnlyError
    from .optim.registry import build_optimizer

    options = OmegaConf.to_container(cfg.optimizer, resolve=True)
    name = options.pop("name")
    try:
        optimizer = build_optimizer(name, model, **options)
    except CudaOnlyError as exc:
        return warn("optimizer", f"{name}: built only on a GPU, not checked here ({exc})")
    except (ImportError, TypeError, ValueError) as exc:
        return fail("optimizer", f"{name}: {exc}")
    groups = len(optimizer.param_groups)
    return ok("optimizer", f"{name} builds ({groups} parameter groups, lr {options.get('lr')})")


def _size(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def _check_memory(model: torch.nn.Module, cfg: DictConfig, processes: int, fsdp: bool) -> Check:
    """Weights + gradients + optimizer state per GPU. Weights keep their dtype (fp32 master
    weights under autocast), except that accelerate's FSDP2 prepare upcasts trainable ones
    to fp32 under mixed precision; gradients match the trainable weights; the state is the
    measured bytes/param times the trainable parameters. FSDP divides all three by the
    process count, DDP keeps a full copy on every GPU."""
    trainable, trainable_bytes, _, frozen_bytes = _count(model)
    if fsdp and cfg.trainer.mixed_precision != "no":
        trainable_bytes = trainable * 4
    opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
    per_param = state_bytes_per_param(opt)
    weights, grads = trainable_bytes + frozen_bytes, trainable_bytes
    state = None if per_param is None else trainable * per_param
    shard = processes if fsdp else 1
    fp32 = trainable_bytes == trainable * 4
    parts = [
        f"weights {_size(weights / shard)}{'' if fp32 else ' (not fp32)'}",
        f"gradients {_size(grads / shard)}",
    ]
    if state is None:
        parts.append(f"optimizer state unknown ({opt['name']} was not measured)")
        line = " + ".join(parts)
    else:
        parts.append(f"optimizer state {_size(state / shard)} ({per_param:g} B/param)")
        line = " + ".join(parts) + f" = {_size((weights + grads + state) / shard)} per GPU"
    layout = (
        f"FSDP, each of {processes} GPUs holds 1/{processes}"
        if fsdp
        else f"{'DDP, ' if processes > 1 else ''}every GPU holds all"
    )
    line += (
        f" ({layout}; precision {cfg.trainer.mixed_precision}); activations, buffers and the "
        "CUDA context come on top (not estimated)"
    )
    notes = []
    if per_param is not None and opt["name"] in SHAPE_DEPENDENT:
        notes.append(f"{opt['name']}'s bytes/param were measured at GPT-2 small's shapes")
    if per_param is not None and not fp32:
        notes.append("state bytes/param were measured with fp32 parameters")
    if fsdp and cfg.trainer.gradient_accumulation_steps // processes > 1:
        notes.append(
            "FSDP2 keeps unsharded gradients while accumulating under no_sync: up to "
            f"+{_size(grads)} per GPU (docs/finetuning.md)"
        )
    full = None if state is None else weights + grads + state
    if not fsdp and full is not None and full >= 10 * GB:
        over = ", ".join(f"{n} GPUs {_size(full / n)}" for n in (2, 4, 8))
        notes.append(f"with FSDP (trainer.preflight_fsdp=true): {over} per GPU")
    if notes:
        text = "; ".join(notes)
        line += "\n" + text[0].upper() + text[1:] + "."
    if torch.cuda.is_available() and full is not None:
        capacity = torch.cuda.get_device_properties(0).total_memory
        if full / shard > capacity:
            return fail("memory", f"more than this GPU's {_size(capacity)}: {line}")
    return ok("memory", line)


def _check_batch(cfg: DictConfig, processes: int) -> Check:
    tc = cfg.trainer
    micro, accum = tc.micro_batch_size, tc.gradient_accumulation_steps
    global_batch = micro * accum
    detail = (
        f"global batch {global_batch} sequences = micro-batch {micro} x {accum} "
        f"accumulated over all {processes} process(es) ({max(accum // processes, 1)} per process per step)"
    )
    block = cfg.data.get("block_size")
    if block:
        detail += f"; {global_batch * block:,} tokens per step"
    length = f"{tc.max_epochs} epochs" if tc.get("max_epochs") else f"{tc.max_steps:,} steps"
    return ok("batch", detail + f"; {length}")


def _output_folders(cfg: DictConfig, extra: Iterable[Path]) -> list[Path]:
    folders = [Path(str(cfg.trainer.output_root))]
    run_dir = cfg.trainer.get("run_dir")
    if run_dir:
        folders.append(Path(str(run_dir)))
    folders += [Path(p) for p in extra]
    return folders


def preflight(
    cfg: DictConfig,
    processes: int | None = None,
    fsdp: bool | None = None,
    output_folders: Iterable[Path] = (),
    cache: MutableMapping[str, Any] | None = None,
) -> Report:
    """Check one run's config (see the module docstring). ``processes``/``fsdp`` describe
    the launch (default: ``trainer.preflight_processes`` / ``trainer.preflight_fsdp``, else
    the launcher's ``WORLD_SIZE`` / ``ACCELERATE_USE_FSDP``, else 1 process without FSDP).
    ``cache`` lets a sweep share the task checks and meta model between jobs whose task,
    data and model configs are equal."""
    from .trainer import build_task

    start = time.perf_counter()
    tc = cfg.trainer
    if processes is None:
        processes = int(tc.get("preflight_processes") or os.environ.get("WORLD_SIZE", 1))
    if fsdp is None:
        fsdp = tc.get("preflight_fsdp")
        if fsdp is None:
            fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    title = (
        f"experiment {cfg.get('experiment_name')}, optimizer {cfg.optimizer.get('name')}, "
        f"{processes} process(es){', FSDP' if fsdp else ''}"
    )
    report = Report(title)
    try:
        # Hydra resolves interpolations lazily: a bad one would otherwise surface mid-run.
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # noqa: BLE001 - OmegaConf raises several error types
        report.checks.append(fail("config", f"{type(exc).__name__}: {exc}"))
        report.seconds = time.perf_counter() - start
        return report
    report.checks.append(_check_config(cfg, processes))

    key = json.dumps(
        {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "data", "model")},
        sort_keys=True,
    )
    cache = {} if cache is None else cache
    if key not in cache:
        cache[key] = _task_checks(cfg, build_task)
    task_checks, model = cache[key]
    report.checks += task_checks
    if model is not None:
        report.checks.append(_check_model(model, cfg))
        if not any(c.name == "config" and c.status == FAIL for c in report.checks):
            report.checks.append(_check_optimizer(model, cfg))
        report.checks.append(_check_memory(model, cfg, processes, fsdp))
    if isinstance(tc.get("micro_batch_size"), int) and isinstance(
        tc.get("gradient_accumulation_steps"), int
    ):
        report.checks.append(_check_batch(cfg, processes))
    report.checks.append(check_writable("output", _output_folders(cfg, output_folders)))
    report.seconds = time.perf_counter() - start
    return report


def _task_checks(cfg: DictConfig, build_task) -> tuple[list[Check], torch.nn.Module | None]:
    """The task's own checks and its meta model (``None`` when it cannot be built)."""
    from .hub import HubAccessError

    try:
        task = build_task(cfg)
    except Exception as exc:  # noqa: BLE001 - a bad task config is a finding, not a crash
        return [fail("task", f"{cfg.task.get('_target_')}: {type(exc).__name__}: {exc}")], None
    checks = task.preflight()
    try:
        model = task.meta_model()
    except (HubAccessError, OSError, ValueError) as exc:
        if not any(c.name == "model" and c.status == FAIL for c in checks):
            checks.append(fail("params", f"model not built on the meta device: {exc}"))
        return checks, None
    return checks, model


def main(cfg: DictConfig) -> int:
    """``trainer.preflight=true``: print the report; 0 when every check passed, else 1."""
    report = preflight(cfg)
    print(report.render(), flush=True)
    return 0 if report.ok else 1
