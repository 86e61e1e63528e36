"""A tiny epoch-based task (linear regression) for trainer tests."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from alphaadam.tasks.base import BatchStream, Task


class ToyEpochStream(BatchStream):
    """Examples in order, this process's share of each global micro-batch."""

    def __init__(self, x, y, batch_size, rank, world):
        self.x, self.y, self.batch_size, self.rank, self.world = x, y, batch_size, rank, world
        self.draws = 0

    def __next__(self):
        n = len(self.x)
        start = (self.draws * self.world + self.rank) * self.batch_size
        idx = torch.arange(start, start + self.batch_size) % n
        self.draws += 1
        return {"x": self.x[idx], "y": self.y[idx]}

    @property
    def epoch(self) -> float:
        return self.draws * self.world * self.batch_size / len(self.x)

    def state_dict(self):
        return {"draws": self.draws}

    def load_state_dict(self, state):
        self.draws = state["draws"]


class ToyRegressionTask(Task):
    name = "toy"

    def __init__(self, data=None, model=None):
        self.n = 40

    def setup(self, accelerator) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.n, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def build_model(self):
        return nn.Linear(4, 1)

    def train_stream(self, micro_batch_size, seed, rank, world_size):
        return ToyEpochStream(self.x, self.y, micro_batch_size, rank, world_size)

    def steps_per_epoch(self, global_batch_size):
        return math.ceil(self.n / global_batch_size)

    def compute_loss(self, model, batch):
        return F.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])

    def count_tokens(self, batch):
        return len(batch["x"])

    def evaluate(self, model, accelerator):
        x, y = self.x.to(accelerator.device), self.y.to(accelerator.device)
        return {"val_loss": float(self.compute_loss(model, {"x": x, "y": y}))}
