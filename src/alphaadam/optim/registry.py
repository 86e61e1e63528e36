"""The optimizer catalogue: :data:`OPTIMIZERS`, name -> factory, and :func:`build_optimizer`,
through which the trainer builds every optimizer. ``optimizer.name`` in a config is a key of
the table (and names the run directory).

The factories are in ``alphaadam_factories.py`` (the Table 3 family) and ``baselines.py``
(every other optimizer), their shared helpers in ``factory_base.py``. Nothing imports this
module back.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from .alphaadam_factories import (
    TOKEN_EMBEDDING,
    build_alphaadam_custom,
    build_alphaadam_onepass,
    build_torch_adamw,
    make_preset_factory,
)
from .baselines import (
    build_adam8bit,
    build_adam_mini,
    build_alphalion,
    build_alphasgd,
    build_galore,
    build_ldadam,
    build_lion,
    build_microadam,
    build_sgd,
)
from .factory_base import OptimizerFactory, param_groups

__all__ = ["OPTIMIZERS", "build_optimizer", "available_optimizers", "param_groups"]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    # The Table 3 family (alphaadam_factories.py): torch's AdamW and AlphaAdam's presets.
    "adamw": build_torch_adamw,
    "adamw_sm": make_preset_factory("adamw_sm"),
    "adamw_am": make_preset_factory("adamw_am"),
    "alphaadam": make_preset_factory("alphaadam"),
    "cadamw": make_preset_factory("adamw_sm"),  # Cautious AdamW, the paper's CAdamW
    # Rescale variants (docs/optimizer.md): an extension and two ablations.
    "alphaadam_active": make_preset_factory("alphaadam", rescale="active"),
    "cadamw_active": make_preset_factory("adamw_sm", rescale="active"),
    "alphaadam_norescale": make_preset_factory("alphaadam", rescale=False),
    "alphaadam_embed_norescale": make_preset_factory(
        "alphaadam", param_overrides={TOKEN_EMBEDDING: {"rescale": False}}
    ),
    "alphaadam_onepass": build_alphaadam_onepass,
    "alphaadam_custom": build_alphaadam_custom,
    # The AlphaAdam mask on other momentum optimizers (baselines.py).
    "lion": build_lion,
    "alphalion": build_alphalion,
    "sgd": build_sgd,
    "alphasgd": build_alphasgd,
    # The paper's other baselines (baselines.py); optional packages.
    "adam_mini": build_adam_mini,
    "galore": build_galore,
    "ldadam": build_ldadam,
    "adam8bit": build_adam8bit,
    "microadam": build_microadam,
}


def available_optimizers() -> list[str]:
    return sorted(OPTIMIZERS)


def build_optimizer(name: str, model: nn.Module, **cfg: Any) -> Optimizer:
    """Build the optimizer named ``name`` in :data:`OPTIMIZERS` for ``model``."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Unknown optimizer {name!r}; valid choices are {', '.join(available_optimizers())}"
        )
    return OPTIMIZERS[name](model, **cfg)
