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

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .masking import MaskConfig, previous_where_usable, step_scale
from .sharding import is_dtensor

# The per-tensor diagnostics of a masked step (mask_statistics), in this order.
STAT_KEYS = ("alpha", "mask_density", "grad_density", "step_scale")

log = logging.getLogger(__name__)

# With Algorithm 1's rescale (rescale=True), a tensor whose step multiplier alpha * d/(nnz+1)
# exceeds this gets one warning (read_mask_statistics). A dense gradient's agreement mask
# keeps about half of it, so d/(nnz+1) is about 2 and the multiplier at most 2 * alpha_max = 4
# (reduced Table 3: 2.9 on average); 10 is past anything that regime gives, and far below
# the 88-550x a sparse embedding gradient produced in reduced Table 1 (docs/optimizer.md).
RESCALE_WARNING_MULTIPLIER = 10.0
# Below this gradient density the warning says the gradient is sparse, which
# rescale="active" corrects; above it, the mask itself keeps few entries, which it does not.
SPARSE_GRADIENT_DENSITY = 0.5


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


def check_group_hyperparameters(group: dict[str, Any], index: int) -> None:
    """The checks of the constructors, for one param group's own values."""
    try:
        if "lr" in group:
            check_lr(group["lr"])
        for name in ("eps", "weight_decay", "dampening"):
            if name in group:
                check_nonnegative(name, group[name])
        if "betas" in group:
            check_betas(tuple(group["betas"]))
        if "momentum" in group and not 0.0 <= group["momentum"] < 1.0:
            raise ValueError(f"Invalid momentum: {group['momentum']} (must be in [0, 1))")
    except ValueError as exc:
        raise ValueError(f"param group {index}: {exc}") from None


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

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # torch checks the constructor's defaults only; a group's own lr, betas, eps or
        # weight_decay (param_groups, optimizer.param_overrides) would otherwise train.
        check_group_hyperparameters({**self.defaults, **param_group}, len(self.param_groups))
        super().add_param_group(param_group)

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
        """``alpha`` (1), ``mask_density`` (``density``) and ``grad_density`` (0: no gradient
        counted yet) as 0-d tensors, once (``grad_density`` also for a checkpoint from before
        it was kept)."""
        if "alpha" not in state:
            state["alpha"] = torch.ones((), dtype=dtype, device=device)
            state["mask_density"] = torch.full((), density, dtype=dtype, device=device)
        if "grad_density" not in state:
            state["grad_density"] = torch.zeros((), dtype=dtype, device=device)

    # ------------------------------------------------------------ diagnostics
    def mask_statistics(
        self, named_parameters: Iterable[tuple[str, Tensor]] | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """Last step's per-tensor alpha, mask density, gradient density (the share of the
        tensor's elements with a nonzero gradient) and ``step_scale``, as device tensors (no
        host sync).

        ``step_scale`` is the multiplier of the scheduled lr that the last update applied to
        the masked direction: ``alpha * d / (||phi||_0 + 1)`` (``alpha`` alone with
        ``rescale=False``; ``d`` the nonzero-gradient count with ``rescale="active"``). A
        masked optimizer's effective step is this times the lr, which is why masked methods
        move further than AdamW at the same nominal lr. With
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
                        state["alpha"],
                        state["mask_density"],
                        p.numel(),
                        group["rescale"],
                        state.get("grad_density"),
                    )
                    reused = state.get("reused_scale")  # one-pass groups only
                    if group.get("one_pass"):
                        applied = previous_where_usable(applied, reused)
                    out[names[p]] = {
                        "alpha": state["alpha"],
                        "mask_density": state["mask_density"],
                        "grad_density": state["grad_density"],
                        "step_scale": applied,
                    }
        return out

    def read_mask_statistics(
        self, named_parameters: Iterable[tuple[str, Tensor]] | None = None
    ) -> dict[str, dict[str, float]]:
        """:meth:`mask_statistics` as Python floats, with one host transfer per device.

        Also the one place a host sees them, so it warns here (once per tensor) where
        Algorithm 1's rescale multiplies a tensor's step beyond
        ``RESCALE_WARNING_MULTIPLIER``: the trainer reads these at every log step, and code
        of your own gets the warning by calling this now and then.
        """
        named_parameters = None if named_parameters is None else list(named_parameters)
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
        out = {n: dict(zip(STAT_KEYS, values[n])) for n in names}
        self._warn_extreme_rescale(out, named_parameters)
        return out

    def _warn_extreme_rescale(
        self,
        stats: dict[str, dict[str, float]],
        named_parameters: list[tuple[str, Tensor]] | None,
    ) -> None:
        """One warning per tensor whose Algorithm 1 rescale (``rescale=True``) made its step
        multiplier exceed ``RESCALE_WARNING_MULTIPLIER``."""
        warned = self.__dict__.setdefault("_rescale_warned", set())  # not state: per process
        if named_parameters is not None:
            params = dict(named_parameters)
        else:
            params = {
                f"group{i}.param{j}": p
                for i, g in enumerate(self.param_groups)
                for j, p in enumerate(g["params"])
            }
        rescale_of = {id(p): g["rescale"] for g in self.param_groups for p in g["params"]}
        for name, values in stats.items():
            p = params.get(name)
            if p is None or id(p) in warned or rescale_of.get(id(p)) is not True:
                continue
            if not values["step_scale"] > RESCALE_WARNING_MULTIPLIER:
                continue
            warned.add(id(p))
            grad_density = values["grad_density"]
            if grad_density < SPARSE_GRADIENT_DENSITY:
                why = (
                    f"only {grad_density:.2%} of its elements have a nonzero gradient, and "
                    "Algorithm 1's d/(nnz+1) counts all of them; rescale='active' (an "
                    "extension, docs/optimizer.md) counts only those, for every tensor or for "
                    "this one alone (optimizer.param_overrides)"
                )
            else:
                why = (
                    f"its gradient is dense ({grad_density:.2%} nonzero) but the mask kept few "
                    "elements; rescale='active' would not change this, rescale=False would"
                )
            log.warning(
                f"{type(self).__name__}: the rescale multiplies the step of {name} "
                f"(shape {tuple(p.shape)}) by {values['step_scale']:.1f}x the lr (mask density "
                f"{values['mask_density']:.2%}): {why}. Warned once per tensor."
            )
