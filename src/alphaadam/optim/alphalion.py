"""AlphaLion: Lion (Chen et al. 2023) with AlphaAdam's mask and per-tensor alpha.

Lion, per parameter tensor (the paper's Algorithm 2)::

    c_t     = b1 m_{t-1} + (1 - b1) g_t          # interpolation used only for the step
    u_t     = sign(c_t)
    m_t     = b2 m_{t-1} + (1 - b2) g_t          # the momentum that is carried over
    theta   = theta - lr (u_t + wd theta)

AlphaLion masks ``u_t`` with :mod:`alphaadam.optim.masking`:

* ``mask="async"`` (default): ``phi = 1[g_t * m_{t-1} > 0]`` -- the gradient against Lion's
  carried EMA momentum *before* this step's update, exactly AlphaAdam's asynchronous rule.
  As in AlphaAdam, ``m_0 = 0`` makes the first step's mask empty: step 1 moves nothing but
  weight decay.
* ``mask="sync"``: ``phi = 1[g_t * u_t > 0]`` -- the agreement of this step's *update
  direction* with the gradient, which is the Cautious rule (Liang et al. 2024) as Cautious
  Lion applies it (``sign(c_t)`` and ``c_t`` have the same sign, so ``c_t`` is the reference).
  For AlphaAdam the same rule reads ``g_t * m_t > 0`` because Adam's denominator is positive.
* ``mask="none"``: plain Lion.

``alpha`` (``"ratio"``, ``"sqrt_ratio"``, ``"none"``), ``alpha_max`` and ``rescale`` mean what
they mean for AlphaAdam. Weight decay is decoupled and acts on every coordinate, masked or
not. A single-tensor path and a multi-tensor (``torch._foreach_*``) path compute the same
thing; ``foreach=None`` picks the latter for CUDA parameters. A mask needs whole-tensor sums,
so masked AlphaLion refuses FSDP2-sharded (DTensor) parameters.

State per parameter: ``exp_avg`` (the carried momentum ``m``, in the parameter's dtype, as
reference Lion implementations keep it) and, with a mask, the last step's ``alpha`` and
``mask_density`` as 0-d tensors (read by :meth:`mask_statistics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .masked_optimizer import MaskedOptimizer, check_betas, check_lr, check_nonnegative
from .masking import (
    MaskConfig,
    add_scaled_,
    agreement_mask,
    foreach_add_scaled_,
    foreach_agreement_masks,
    foreach_mask_and_compensate,
    mask_and_compensate,
)
from .step_paths import use_foreach

__all__ = ["AlphaLion", "LION_PRESETS"]

LION_PRESETS: dict[str, dict[str, Any]] = {
    "lion": {"mask": "none", "alpha": "none", "rescale": False},
    "alphalion": {"mask": "async", "alpha": "ratio", "rescale": True},
}


class AlphaLion(MaskedOptimizer):
    """Lion with AlphaAdam's mask and dynamic alpha (``mask="none"`` is plain Lion).

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate (Lion wants ~3-10x smaller than AdamW's).
        betas: ``(b1, b2)``: ``b1`` interpolates the step direction, ``b2`` the momentum.
        weight_decay: decoupled weight decay ``theta *= 1 - lr * wd`` on every coordinate.
        mask, alpha, alpha_max, rescale: see :class:`~alphaadam.optim.masking.MaskConfig`.
        maximize: maximise the objective instead.
        foreach: use the multi-tensor path; ``None`` picks it for CUDA parameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        mask: str = "async",
        alpha: str = "ratio",
        alpha_max: float = 2.0,
        rescale: bool | str = True,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonnegative("weight_decay", weight_decay)
        MaskConfig(mask, alpha, alpha_max, rescale)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            mask=mask,
            alpha=alpha,
            alpha_max=float(alpha_max),
            rescale=rescale,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            MaskConfig.from_group(group)

    def _init_group(self, group, cfg: MaskConfig):
        """The parameters with gradients, their gradients, momenta and ``(alpha,
        mask_density)`` state; creates the state of a parameter's first step."""
        params, grads, exp_avgs, stats = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            self._check_param(p, whole_tensor_mask=cfg)
            state = self.state[p]
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if cfg.active:
                self._init_mask_state(state, p.dtype, p.device, density=1.0)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            stats.append((state.get("alpha"), state.get("mask_density"), state.get("grad_density")))
        return params, grads, exp_avgs, stats

    def _step_group(self, group: dict[str, Any]) -> None:
        cfg = MaskConfig.from_group(group)
        params, grads, exp_avgs, stats = self._init_group(group, cfg)
        if not params:
            return
        foreach = use_foreach(group.get("foreach"), params)
        impl = _multi_tensor_alphalion if foreach else _single_tensor_alphalion
        beta1, beta2 = group["betas"]
        impl(
            params,
            grads,
            exp_avgs,
            stats,
            cfg=cfg,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )


def _single_tensor_alphalion(
    params, grads, exp_avgs, stats, *, cfg, lr, beta1, beta2, weight_decay, maximize
) -> None:
    for p, grad, exp_avg, stat_outs in zip(params, grads, exp_avgs, stats):
        g = -grad if maximize else grad
        # async reads m_{t-1}: it must be taken before the momentum update below.
        phi = agreement_mask(g, exp_avg) if cfg.mask == "async" else None
        direction = exp_avg.lerp(g, 1 - beta1)
        if cfg.mask == "sync":
            phi = agreement_mask(g, direction)
        update = direction.sign_()
        update, *stat_values = mask_and_compensate(update, phi, cfg, g)

        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        add_scaled_(p, update, -lr)
        exp_avg.lerp_(g, 1 - beta2)
        if phi is not None:
            for out, value in zip(stat_outs, stat_values):
                out.copy_(value)


def _multi_tensor_alphalion(
    params, grads, exp_avgs, stats, *, cfg, lr, beta1, beta2, weight_decay, maximize
) -> None:
    """The same math with ``torch._foreach_*`` kernels, per (device, dtype) group."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, *(list(t) for t in zip(*stats))]
    )
    for (g_params, g_grads, g_m, *g_stats), _ in grouped.values():
        if maximize:
            g_grads = torch._foreach_neg(g_grads)
        masks = foreach_agreement_masks(g_grads, g_m) if cfg.mask == "async" else None
        updates = torch._foreach_lerp(g_m, g_grads, 1 - beta1)
        if cfg.mask == "sync":
            masks = foreach_agreement_masks(g_grads, updates)
        torch._foreach_sign_(updates)
        updates, *stat_values = foreach_mask_and_compensate(updates, masks, cfg, g_grads)
        if weight_decay != 0:
            torch._foreach_mul_(g_params, 1 - lr * weight_decay)
        foreach_add_scaled_(g_params, updates, -lr)
        torch._foreach_lerp_(g_m, g_grads, 1 - beta2)
        if masks is not None:
            for outs, values in zip(g_stats, stat_values):
                torch._foreach_copy_(outs, list(values.unbind(0)))
