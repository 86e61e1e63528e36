"""Reference reproduction of AlphaAdam (asynchronous masked Adam with dynamic alpha)."""

from .optim import PRESETS, AlphaAdam, MaskConfig, alphaadam_preset

__version__ = "0.1.0"
__all__ = ["AlphaAdam", "PRESETS", "alphaadam_preset", "MaskConfig", "__version__"]
