"""The optimizer name table and the helpers every factory uses; imports no optimizer.

A factory receives the model (some baselines need parameter names or module shapes) and
the optimizer config as keyword arguments (``lr``, ``betas``, ``eps``, ``weight_decay``
and any option of that optimizer) and returns a ``torch.optim.Optimizer``. The factory
modules (``alphaadam_factories.py``, ``baselines.py``) register theirs here with
:func:`register_optimizer`; ``registry.py`` imports them and builds by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.optim import Optimizer

OptimizerFactory = Callable[..., Optimizer]

REGISTRY: dict[str, OptimizerFactory] = {}


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    def decorator(factory: OptimizerFactory) -> OptimizerFactory:
        if name in REGISTRY:
            raise ValueError(f"optimizer {name!r} is registered twice")
        REGISTRY[name] = factory
        return factory

    return decorator


def param_groups(
    model: nn.Module, weight_decay: float, no_decay_ndim_lt2: bool = True
) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed and non-decayed groups.

    With ``no_decay_ndim_lt2`` (nanoGPT's and HF Trainer's convention), biases, norms and
    other tensors of fewer than two dims get no weight decay.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_ndim_lt2 and p.dim() < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def split_decay(model: nn.Module, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`param_groups` from the config's ``weight_decay`` and ``no_decay_ndim_lt2``,
    which it removes from ``cfg``; ``betas`` (a list in a YAML config) becomes a tuple."""
    weight_decay = cfg.pop("weight_decay", 0.0)
    no_decay_ndim_lt2 = cfg.pop("no_decay_ndim_lt2", True)
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return param_groups(model, weight_decay, no_decay_ndim_lt2)
