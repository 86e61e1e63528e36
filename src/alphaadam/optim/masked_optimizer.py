"""What AlphaAdam, AlphaLion and AlphaSGD share as ``torch.optim.Optimizer`` classes.

* argument checks whose errors name the bad value and the valid range;
* ``step()``: the closure, then :meth:`MaskedOptimizer._step_group` for every param group
  (each optimizer writes its own);
* the checks every parameter of a step passes (dense, real; whole tensors where the
  optimizer does not sum over FSDP2 shards) and the lazily created mask statistics state;
* the diagnostics :meth:`MaskedOptimizer.mask_statistics` and
  :meth:`MaskedOptimizer.read_mask_statistics`.

The math lives elsewhere: the mask and its compensation in ``masking.py``, each optimizer's
direction in its own module.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .masking import MaskConfig, step_scale
from .sharding import is_dtensor

# The per-tensor diagnostics of a masked step (mask_statistics), in this order.
STAT_KEYS = ("alpha", "mask_density", "step_scale")


def check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor lr must have one element, got {lr.shape}")
    elif not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")


def check_nonnegative(name: str, value: float) -> None:
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")


def check_betas(betas: tuple[float, float]) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Invalid betas: {betas} (two values in [0, 1) expected)")


class MaskedOptimizer(Optimizer):
    """Base class of the masked optimizers; subclasses implement :meth:`_step_group`.

    A subclass's state holds, when a mask is active, the last step's ``alpha`` and
    ``mask_density`` per parameter (0-d tensors on the parameter's device), which the
    diagnostics read.
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    def _check_param(self, p: Tensor, whole_tensor_mask: MaskConfig | None = None) -> None:
        """A parameter with a gradient, before its step: dense and real. With
        ``whole_tensor_mask`` (an optimizer that computes alpha from the local tensor): not an
        FSDP2 shard while that mask is active."""
        name = type(self).__name__
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients")
        if torch.is_complex(p):
            raise RuntimeError(
                f"{name} does not support complex parameters: the sign-agreement mask is "
                "undefined for complex numbers (use torch.view_as_real)"
            )
        # alpha and the rescale are whole-tensor quantities; on FSDP2 shards they need the
        # cross-shard sums AlphaAdam does (sharding.py), which the others do not implement.
        cfg = whole_tensor_mask
        if cfg is not None and cfg.active and is_dtensor(p):
            raise RuntimeError(
                f"{name} with mask={cfg.mask!r} does not support sharded (DTensor / FSDP2) "
                "parameters; use it with DDP or a single device, or use AlphaAdam"
            )

    @staticmethod
    def _init_mask_state(
        state: dict[str, Tensor], dtype: torch.dtype, device: torch.device, density: float
    ) -> None:
        """``alpha`` (1) and ``mask_density`` (``density``) as 0-d tensors, once."""
        if "alpha" not in state:
            state["alpha"] = torch.ones((), dtype=dtype, device=device)
            state["mask_density"] = torch.full((), density, dtype=dtype, device=device)

    @staticmethod
    def _use_foreach(foreach: bool | None, params: list[Tensor]) -> bool:
        # torch's rule: None picks the multi-tensor path for CUDA parameters.
        return all(p.is_cuda for p in params) if foreach is None else foreach

    # ------------------------------------------------------------ diagnostics
    def mask_statistics(
        self, named_parameters: Iterable[tuple[str, Tensor]] | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """Last step's per-tensor alpha, mask density and ``step_scale``, as device tensors
        (no host sync).

        ``step_scale`` is the multiplier of the scheduled lr that the last update applied to
        the masked direction: ``alpha * d / (||phi||_0 + 1)`` (``alpha`` alone with
        ``rescale=False``). A masked optimizer's effective step is this times the lr, which
        is why masked methods move further than AdamW at the same nominal lr. With
        ``one_pass`` (AlphaAdam) it is the previous step's multiplier (the exact one on a
        step that fell back to it), while ``alpha`` and ``mask_density`` are this step's.

        Keyed by parameter name when ``named_parameters`` (e.g. ``model.named_parameters()``)
        is given, else by ``"group{i}.param{j}"``. Parameters never stepped, or in a group
        without a mask, are left out.
        """
        if named_parameters is not None:
            names = {p: n for n, p in named_parameters}
        else:
            names = {
                p: f"group{i}.param{j}"
                for i, g in enumerate(self.param_groups)
                for j, p in enumerate(g["params"])
            }
        out: dict[str, dict[str, Tensor]] = {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "alpha" in state and p in names:
                    applied = step_scale(
                        state["alpha"], state["mask_density"], p.numel(), group["rescale"]
                    )
                    reused = state.get("reused_scale")  # one-pass groups only
                    if group.get("one_pass") and reused is not None:
                        applied = torch.where(reused > 0, reused.to(applied.dtype), applied)
                    out[names[p]] = {
                        "alpha": state["alpha"],
                        "mask_density": state["mask_density"],
                        "step_scale": applied,
                    }
        return out

    def read_mask_statistics(
        self, named_parameters: Iterable[tuple[str, Tensor]] | None = None
    ) -> dict[str, dict[str, float]]:
        """:meth:`mask_statistics` as Python floats, with one host transfer per device."""
        stats = self.mask_statistics(named_parameters)
        if not stats:
            return {}
        names = list(stats)
        by_device: dict[torch.device, list[str]] = {}
        for n in names:
            by_device.setdefault(stats[n]["alpha"].device, []).append(n)
        values: dict[str, list[float]] = {}
        for device_names in by_device.values():
            rows = (
                torch.stack(
                    [
                        torch.stack([stats[n][key].float() for key in STAT_KEYS])
                        for n in device_names
                    ]
                )
                .cpu()
                .tolist()
            )
            values.update(zip(device_names, rows))
        return {n: dict(zip(STAT_KEYS, values[n])) for n in names}
