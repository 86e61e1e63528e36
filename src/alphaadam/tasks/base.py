"""The contract between the one shared trainer and each experiment's task.

The trainer (``alphaadam.trainer``) owns the loop: devices, precision, accumulation,
clipping, schedule, logging, checkpoints, resume. A task owns what differs between the
paper's experiments: the model, the data, the loss and the metrics. GPT-2 pretraining,
GLUE classification/regression and GSM8K supervised fine-tuning are each one ``Task``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..checks import Check

Batch = dict[str, torch.Tensor]


def cfg_get(cfg: Mapping | None, key: str, default: Any = None) -> Any:
    """``cfg[key]`` of a task's ``data``/``model`` config node; ``default`` when the node or
    the key is missing or the value is null (so ``key: null`` in YAML means "the default")."""
    if cfg is None:
        return default
    value = cfg.get(key, default)
    return default if value is None else value


class BatchStream(abc.ABC):
    """An endless, resumable source of training micro-batches for one process.

    ``state_dict`` must capture the position exactly, so that a resumed run draws the same
    batches the uninterrupted run would have drawn (the trainer checkpoints it).
    """

    @abc.abstractmethod
    def __next__(self) -> Batch: ...

    def __iter__(self) -> Iterator[Batch]:
        return self

    @property
    def epoch(self) -> float:
        """Fractional epochs consumed so far (``nan`` for sampled-window streams)."""
        return float("nan")

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Task(abc.ABC):
    """One experiment's model, data, loss and evaluation.

    Construct from the Hydra ``data``/``model`` config nodes; heavy work (tokenising,
    downloading) happens in :meth:`setup`, which the trainer calls once per process with
    the accelerate ``Accelerator`` (use ``accelerator.main_process_first()`` for caches).
    """

    #: short task name recorded in summary.json (``"lm"``, ``"glue"``, ``"gsm8k"``); when
    #: empty the trainer uses the task module's name
    name: str = ""
    #: metric the summary calls "best" (e.g. ``"val_loss"``, ``"accuracy"``, ``"matthews"``)
    primary_metric: str = "val_loss"
    #: ``"min"`` or ``"max"``
    primary_mode: str = "min"

    def setup(self, accelerator) -> None:  # noqa: B027 - optional hook
        """Prepare tokenizer and data (once per process)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    def preflight(self) -> list[Check]:
        """Check, without training or downloading weights, that the tokenizer, data and
        model this task needs can be reached (local files, the cache, or the Hub with this
        machine's token): a list of :class:`alphaadam.checks.Check`. May prepare what
        :meth:`meta_model` needs (a small tokenizer). ``trainer.preflight=true`` calls it
        instead of :meth:`setup`; the default checks nothing."""
        return []

    def meta_model(self) -> nn.Module:
        """The model's architecture on the meta device, with no weights read: the preflight
        counts its parameters and estimates memory from it. Called after :meth:`preflight`.
        The default builds :meth:`build_model` under ``torch.device("meta")``, right for
        models built from scratch; tasks that load weights override it."""
        with torch.device("meta"):
            return self.build_model()

    @abc.abstractmethod
    def train_stream(
        self, micro_batch_size: int, seed: int, rank: int, world_size: int
    ) -> BatchStream:
        """This process's share of the training data, as micro-batches."""

    def steps_per_epoch(self, global_batch_size: int) -> int | None:
        """Optimizer steps in one epoch, for epoch-based tasks (``None`` otherwise)."""
        return None

    @abc.abstractmethod
    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of one micro-batch (a scalar tensor)."""

    def count_tokens(self, batch: Batch) -> int:
        """Tokens the trainer reports for throughput (non-padding input tokens)."""
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        return int(batch["input_ids"].numel())

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, accelerator) -> dict[str, float]:
        """Metrics on the held-out split: always ``val_loss`` where a loss exists, plus
        the task's metrics (``accuracy``, ``f1``, ``pearson``, ...).

        The trainer calls this on every process, in eval mode, under ``torch.no_grad()``
        and the accelerator's autocast, and restores train mode afterwards; every process
        must return the same numbers (reduce over processes)."""


def task_name(task: Task) -> str:
    """``task.name``, or the task's module name (summary.json's ``task``)."""
    return getattr(task, "name", "") or type(task).__module__.rsplit(".", 1)[-1]
