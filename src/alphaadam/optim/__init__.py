"""Optimizers: AlphaAdam, its ablation presets and the reusable masking framework."""

from .alphaadam import PRESETS, AlphaAdam, alphaadam_preset
from .masking import ALPHA_CHOICES, MASK_CHOICES, MaskConfig

__all__ = [
    "AlphaAdam",
    "PRESETS",
    "alphaadam_preset",
    "MaskConfig",
    "MASK_CHOICES",
    "ALPHA_CHOICES",
]
