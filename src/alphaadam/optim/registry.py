"""Name -> optimizer factory. The trainer builds every optimizer through :func:`build_optimizer`.

The name table and the factories' helpers are in ``factory_base.py``; the factories in
``alphaadam_factories.py`` (the Table 3 family) and ``baselines.py`` (every other optimizer),
imported here so that each registers once. Nothing imports this module back.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from . import alphaadam_factories, baselines  # noqa: F401  (they register their factories)
from .factory_base import REGISTRY, param_groups, register_optimizer

__all__ = ["build_optimizer", "available_optimizers", "param_groups", "register_optimizer"]


def available_optimizers() -> list[str]:
    return sorted(REGISTRY)


def build_optimizer(name: str, model: nn.Module, **cfg: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` for ``model``."""
    if name not in REGISTRY:
        raise ValueError(
            f"Unknown optimizer {name!r}; valid choices are {', '.join(available_optimizers())}"
        )
    return REGISTRY[name](model, **cfg)
