"""The helpers every optimizer factory uses; imports no optimizer.

A factory receives the model (some baselines need parameter names or module shapes) and
the optimizer config as keyword arguments (``lr``, ``betas``, ``eps``, ``weight_decay``
and any option of that optimizer) and returns a ``torch.optim.Optimizer``. The factories
live in ``alphaadam_factories.py`` and ``baselines.py``; ``registry.OPTIMIZERS`` names them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer

OptimizerFactory = Callable[..., Optimizer]


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
    then :func:`override_groups` from its ``param_overrides``; all three are removed from
    ``cfg``. ``betas`` (a list in a YAML config) becomes a tuple."""
    weight_decay = cfg.pop("weight_decay", 0.0)
    no_decay_ndim_lt2 = cfg.pop("no_decay_ndim_lt2", True)
    overrides = cfg.pop("param_overrides", None) or {}
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    groups = override_groups(model, param_groups(model, weight_decay, no_decay_ndim_lt2), overrides)
    for group in groups:
        # torch's optimizers check their defaults only, and these values live in the groups
        # (optimizer.weight_decay=-1 would otherwise train with a growing weight norm).
        for key in ("lr", "weight_decay", "eps"):
            value = group.get(key)
            if value is not None and not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(
                    f"optimizer.{key}={value!r} (in a param group from optimizer.{key} or "
                    "optimizer.param_overrides): it must be a number >= 0"
                )
    return groups


def override_groups(
    model: nn.Module, groups: list[dict[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Move the parameters whose name matches a pattern of ``overrides`` (``re.search`` on
    ``model.named_parameters()`` names) into groups of their own with that pattern's settings,
    e.g. ``{"word_embeddings": {"rescale": False}}`` (``optimizer.param_overrides`` in a
    config). The rest of each group stays as it was. A pattern that matches no parameter, or a
    parameter that two patterns match, is an error: a typo must not silently train every
    tensor alike."""
    if not overrides:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    patterns = {pattern: re.compile(pattern) for pattern in overrides}
    matched: dict[str, list[str]] = {pattern: [] for pattern in overrides}
    out: list[dict[str, Any]] = []
    for group in groups:
        kept, moved = [], {}
        for p in group["params"]:
            name = names[id(p)]
            hits = [pattern for pattern, rx in patterns.items() if rx.search(name)]
            if len(hits) > 1:
                raise ValueError(
                    f"optimizer.param_overrides: parameter {name!r} matches several patterns "
                    f"{hits}; make them exclusive"
                )
            if hits:
                matched[hits[0]].append(name)
                moved.setdefault(hits[0], []).append(p)
            else:
                kept.append(p)
        if kept:
            out.append({**group, "params": kept})
        for pattern, params in moved.items():
            out.append({**group, **dict(overrides[pattern]), "params": params})
    unmatched = [pattern for pattern, hit in matched.items() if not hit]
    if unmatched:
        sample = ", ".join(list(names.values())[:8])
        raise ValueError(
            f"optimizer.param_overrides: pattern(s) {unmatched} match no parameter name "
            f"(re.search); the model's parameters are named like: {sample}, ..."
        )
    return out
