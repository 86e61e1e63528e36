"""Name -> optimizer factory. The trainer builds every optimizer through :func:`build_optimizer`.

A factory receives the model (some baselines need parameter names or module shapes) and
the optimizer config as keyword arguments (``lr``, ``betas``, ``eps``, ``weight_decay``
and any option of that optimizer) and returns a ``torch.optim.Optimizer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .alphaadam import PRESETS, alphaadam_preset

OptimizerFactory = Callable[..., Optimizer]

_REGISTRY: dict[str, OptimizerFactory] = {}


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    def decorator(factory: OptimizerFactory) -> OptimizerFactory:
        if name in _REGISTRY:
            raise ValueError(f"optimizer {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_optimizers() -> list[str]:
    return sorted(_REGISTRY)


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


def build_optimizer(name: str, model: nn.Module, **cfg: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` for ``model``."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown optimizer {name!r}; valid choices are {', '.join(available_optimizers())}"
        )
    return _REGISTRY[name](model, **cfg)


def _split_decay(model: nn.Module, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    weight_decay = cfg.pop("weight_decay", 0.0)
    no_decay_ndim_lt2 = cfg.pop("no_decay_ndim_lt2", True)
    return param_groups(model, weight_decay, no_decay_ndim_lt2)


def _make_preset_factory(preset: str) -> OptimizerFactory:
    def factory(model: nn.Module, **cfg: Any) -> Optimizer:
        groups = _split_decay(model, cfg)
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        return alphaadam_preset(preset, groups, **cfg)

    factory.__doc__ = f"AlphaAdam preset {preset!r}: {PRESETS[preset]}"
    return factory


# The Table 3 family. "adamw_sm" is Cautious AdamW, registered again as "cadamw" by the
# baselines module.
for _preset in PRESETS:
    if _preset != "adamw":
        register_optimizer(_preset)(_make_preset_factory(_preset))


@register_optimizer("alphaadam_onepass")
def _alphaadam_one_pass(model: nn.Module, **cfg: Any) -> Optimizer:
    """The alphaadam preset with ``one_pass=True`` (an extension, not the paper's algorithm)."""
    return _make_preset_factory("alphaadam")(model, one_pass=True, **cfg)


@register_optimizer("adamw")
def _torch_adamw(model: nn.Module, **cfg: Any) -> Optimizer:
    """torch.optim.AdamW: ``fused=None`` is fused on CUDA and foreach elsewhere (unless
    ``foreach`` is given), ``True`` the fused step on any device (torch has one for CPU too),
    ``False`` foreach."""
    groups = _split_decay(model, cfg)
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    fused = cfg.pop("fused", None)
    if fused not in (None, True, False):
        raise ValueError(f"Invalid fused={fused!r} for adamw; valid choices are None, True, False")
    if fused is None and cfg.get("foreach") is None:
        # torch's fastest exact step where it has one; foreach on CPU unless fused is asked for
        # (the CPU fused step exists since torch 2.4; the CPU experiments ask for it).
        fused = all(p.is_cuda for g in groups for p in g["params"])
    if fused:
        cfg["fused"] = True
    elif cfg.get("foreach") is None:
        cfg["foreach"] = True
    return torch.optim.AdamW(groups, **cfg)


@register_optimizer("alphaadam_custom")
def _alphaadam_custom(model: nn.Module, **cfg: Any) -> Optimizer:
    """AlphaAdam with every option from the config (mask, alpha, alpha_max, rescale, ...)."""
    from .alphaadam import AlphaAdam

    groups = _split_decay(model, cfg)
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return AlphaAdam(groups, **cfg)


# The baselines and the masked Lion/SGD register themselves; imported last because they
# use the helpers above. Optional packages are imported only when their optimizer is built.
from . import baselines as _baselines  # noqa: E402, F401
