"""Factories of the Table 3 family: AlphaAdam's presets, the one-pass extension, AlphaAdam
with every option from the config, and torch's AdamW (the ``adamw`` row).

``registry.OPTIMIZERS`` names them: ``adamw_sm`` is Cautious AdamW, also named ``cadamw``
(the paper's CAdamW baseline). The rescale variants are named methods, so that their runs
get run directories and table rows of their own (``optimizer.name`` names both):
``alphaadam_active`` and ``cadamw_active`` (``rescale="active"``, an extension beyond the
paper, docs/optimizer.md), and two ablations, ``alphaadam_norescale`` (no rescale on any
tensor) and ``alphaadam_embed_norescale`` (none on the token embedding alone, with
:data:`TOKEN_EMBEDDING`). Any preset also takes ``rescale`` and ``param_overrides`` from the
config directly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .alphaadam import PRESETS, AlphaAdam, alphaadam_preset
from .factory_base import OptimizerFactory, split_decay

# The token embedding of each model family here: BERT/MiniLM, Llama, nanoGPT.
TOKEN_EMBEDDING = r"word_embeddings|embed_tokens|transformer\.wte"


def make_preset_factory(preset: str, **variant: Any) -> OptimizerFactory:
    """A factory of AlphaAdam preset ``preset``; ``variant`` sets defaults the config may
    override (``rescale``, ``param_overrides``)."""

    def factory(model: nn.Module, **cfg: Any) -> Optimizer:
        cfg = {**variant, **cfg}
        return alphaadam_preset(preset, split_decay(model, cfg), **cfg)

    factory.__doc__ = f"AlphaAdam preset {preset!r}: {PRESETS[preset]}" + (
        f", with {variant}" if variant else ""
    )
    return factory


def build_alphaadam_onepass(model: nn.Module, **cfg: Any) -> Optimizer:
    """The alphaadam preset with ``one_pass=True`` (an extension, not the paper's algorithm)."""
    return make_preset_factory("alphaadam")(model, one_pass=True, **cfg)


def build_alphaadam_custom(model: nn.Module, **cfg: Any) -> Optimizer:
    """AlphaAdam with every option from the config (mask, alpha, alpha_max, rescale, ...)."""
    return AlphaAdam(split_decay(model, cfg), **cfg)


def build_torch_adamw(model: nn.Module, **cfg: Any) -> Optimizer:
    """torch.optim.AdamW: ``fused=None`` is fused on CUDA and foreach elsewhere (unless
    ``foreach`` is given), ``True`` the fused step on any device (torch has one for CPU too),
    ``False`` foreach."""
    groups = split_decay(model, cfg)
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
