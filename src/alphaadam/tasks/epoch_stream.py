"""An epoch-based, resumable micro-batch stream over a finite list of examples.

Fine-tuning tasks (GLUE, GSM8K) train for whole epochs over a map-style dataset. Each epoch
draws a fresh permutation from ``(seed, epoch)``, so the position ``(epoch, micro_batch)``
is all a checkpoint needs to resume exactly.

Sharding follows ``DistributedSampler``: the permutation is padded by wrapping around to a
multiple of ``world_size`` and rank ``r`` takes every ``world_size``-th index starting at
``r``. Within a rank, micro-batches are consecutive slices; the last one of an epoch may be
smaller. With ``world_size`` processes and ``micro_batch_size`` examples each, one epoch is
``ceil(ceil(n / world_size) / micro_batch_size)`` micro-batches per process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Batch, BatchStream


class EpochBatchStream(BatchStream):
    def __init__(
        self,
        examples: Sequence[Any],
        collate: Callable[[list[Any]], Batch],
        micro_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        if len(examples) == 0:
            raise ValueError("EpochBatchStream needs at least one example")
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        self.examples = examples
        self.collate = collate
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.per_rank = math.ceil(len(examples) / world_size)
        self.batches_per_epoch = math.ceil(self.per_rank / micro_batch_size)
        self._epoch = 0
        self._batch = 0
        self._indices = self._epoch_indices(0)

    def _epoch_indices(self, epoch: int) -> list[int]:
        n = len(self.examples)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        padded = self.per_rank * self.world_size
        order = (order * math.ceil(padded / n))[:padded]
        return order[self.rank :: self.world_size]

    def __next__(self) -> Batch:
        if self._batch >= self.batches_per_epoch:
            self._epoch += 1
            self._batch = 0
            self._indices = self._epoch_indices(self._epoch)
        start = self._batch * self.micro_batch_size
        chunk = self._indices[start : start + self.micro_batch_size]
        self._batch += 1
        return self.collate([self.examples[i] for i in chunk])

    @property
    def epoch(self) -> float:
        return self._epoch + self._batch / self.batches_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batch": self._batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(
                f"checkpointed stream used seed {state['seed']}, this run uses {self.seed}"
            )
        self._epoch = int(state["epoch"])
        self._batch = int(state["batch"])
        self._indices = self._epoch_indices(self._epoch)


def epoch_steps(num_examples: int, global_batch_size: int) -> int:
    """Optimizer steps in one epoch when the last, partial global batch is kept."""
    return math.ceil(num_examples / global_batch_size)
