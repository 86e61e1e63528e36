"""AlphaSGD: SGD with momentum plus AlphaAdam's mask and per-tensor alpha.

The momentum recursion is ``torch.optim.SGD``'s, so ``mask="none"`` is exactly torch SGD::

    g_t = grad + wd * theta                      # coupled (L2) weight decay, as torch SGD
    b_1 = g_1;  b_t = mu b_{t-1} + (1 - dampening) g_t
    u_t = g_t + mu b_t   (nesterov)   or   b_t
    theta = theta - lr u_t

Masks (:mod:`alphaadam.optim.masking`):

* ``mask="async"`` (default): ``phi = 1[g_t * b_{t-1} > 0]`` with the momentum buffer *before*
  its update (AlphaAdam's rule). There is no buffer before step 1, which reads as ``b_0 = 0``:
  the first step's mask is empty and step 1 moves nothing, as for AlphaAdam.
* ``mask="sync"``: ``phi = 1[g_t * u_t > 0]``, the Cautious rule on this step's update
  direction (for plain momentum ``u_t = b_t``, the updated momentum).
* ``mask="none"``: torch SGD.

``g_t`` is the gradient the momentum consumes, weight-decay term included: with coupled
decay the decay is part of the objective's gradient, so it is masked like the rest (unlike
AlphaAdam's decoupled decay). A mask requires ``momentum > 0``. Single-tensor and
multi-tensor (``torch._foreach_*``, chosen by ``foreach=None`` for CUDA) paths compute the
same thing; masked AlphaSGD refuses FSDP2-sharded (DTensor) parameters. State: ``momentum_buffer`` (torch SGD's key, so checkpoints move between the two
when unmasked) and, with a mask, ``alpha`` and ``mask_density``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .masked_optimizer import MaskedOptimizer, check_lr, check_nonnegative
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

__all__ = ["AlphaSGD", "SGD_PRESETS"]

SGD_PRESETS: dict[str, dict[str, Any]] = {
    "alphasgd": {"mask": "async", "alpha": "ratio", "rescale": True},
}


class AlphaSGD(MaskedOptimizer):
    """SGD with momentum and AlphaAdam's mask and dynamic alpha.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate.
        momentum: momentum factor ``mu`` (must be > 0 when a mask is used).
        dampening: dampening of the gradient in the momentum (torch SGD's meaning).
        weight_decay: L2 penalty added to the gradient (torch SGD's meaning).
        nesterov: Nesterov momentum (requires ``momentum > 0`` and ``dampening == 0``).
        mask, alpha, alpha_max, rescale: see :class:`~alphaadam.optim.masking.MaskConfig`.
        maximize: maximise the objective instead.
        foreach: use the multi-tensor path; ``None`` picks it for CUDA parameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        mask: str = "async",
        alpha: str = "ratio",
        alpha_max: float = 2.0,
        rescale: bool | str = True,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1))")
        check_nonnegative("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"Nesterov momentum requires momentum > 0 and dampening == 0 "
                f"(got momentum={momentum}, dampening={dampening})"
            )
        cfg = MaskConfig(mask, alpha, alpha_max, rescale)
        if cfg.active and momentum == 0:
            raise ValueError(
                f"mask={mask!r} compares the gradient with the momentum, so it needs "
                "momentum > 0; use mask='none' for momentum-free SGD"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            mask=mask,
            alpha=alpha,
            alpha_max=float(alpha_max),
            rescale=rescale,
            maximize=maximize,
            foreach=foreach,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if MaskConfig.from_group(group).active and group["momentum"] == 0:
                raise ValueError("a param group with a mask needs momentum > 0")

    def _init_group(self, group, cfg: MaskConfig):
        """The parameters with gradients, their gradients, momentum buffers (``None``
        without momentum), whether each buffer is new, and ``(alpha, mask_density)``."""
        params, grads, bufs, fresh, stats = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            self._check_param(p, whole_tensor_mask=cfg)
            state = self.state[p]
            if cfg.active:
                self._init_mask_state(state, p.dtype, p.device, density=1.0)
            buf = state.get("momentum_buffer")
            # A zero buffer before step 1 is b_0 = 0 for the mask; the step itself then
            # sets b_1 = g_1 (torch's first step, without dampening).
            fresh.append(buf is None)
            if buf is None and group["momentum"] != 0:
                buf = state["momentum_buffer"] = torch.zeros_like(
                    p, memory_format=torch.preserve_format
                )
            params.append(p)
            grads.append(p.grad)
            bufs.append(buf)
            stats.append((state.get("alpha"), state.get("mask_density"), state.get("grad_density")))
        return params, grads, bufs, fresh, stats

    def _step_group(self, group: dict[str, Any]) -> None:
        cfg = MaskConfig.from_group(group)
        params, grads, bufs, fresh, stats = self._init_group(group, cfg)
        if not params:
            return
        foreach = use_foreach(group.get("foreach"), params)
        impl = _multi_tensor_alphasgd if foreach else _single_tensor_alphasgd
        impl(
            params,
            grads,
            bufs,
            fresh,
            stats,
            cfg=cfg,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
        )


def _single_tensor_alphasgd(
    params, grads, bufs, fresh, stats, *, cfg, lr, momentum, dampening, weight_decay,
    nesterov, maximize,
) -> None:  # fmt: skip
    for p, grad, buf, is_fresh, stat_outs in zip(params, grads, bufs, fresh, stats):
        g = -grad if maximize else grad
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        phi = None
        if momentum != 0:
            # async reads b_{t-1}: it must be taken before the buffer update below.
            phi = agreement_mask(g, buf) if cfg.mask == "async" else None
            if is_fresh:
                buf.copy_(g)
            else:
                buf.mul_(momentum).add_(g, alpha=1 - dampening)
            update = g.add(buf, alpha=momentum) if nesterov else buf
        else:
            update = g
        if cfg.active:
            update = update.clone()  # masked in place below; the buffer must survive
        if cfg.mask == "sync":
            phi = agreement_mask(g, update)
        # g includes the coupled weight decay, as the mask's does: a zero raw gradient with a
        # nonzero decay term can pass the mask, so it counts as active too.
        update, *stat_values = mask_and_compensate(update, phi, cfg, g)
        add_scaled_(p, update, -lr)
        if phi is not None:
            for out, value in zip(stat_outs, stat_values):
                out.copy_(value)


def _multi_tensor_alphasgd(
    params, grads, bufs, fresh, stats, *, cfg, lr, momentum, dampening, weight_decay,
    nesterov, maximize,
) -> None:  # fmt: skip
    """The same math with ``torch._foreach_*`` kernels, per (device, dtype) group."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, bufs, *(list(t) for t in zip(*stats))], with_indices=True
    )
    for (g_params, g_grads, g_bufs, *g_stats), indices in grouped.values():
        if maximize:
            g_grads = torch._foreach_neg(g_grads)
        if weight_decay != 0:
            g_grads = torch._foreach_add(g_grads, g_params, alpha=weight_decay)
        masks = None
        if momentum != 0:
            if cfg.mask == "async":
                masks = foreach_agreement_masks(g_grads, g_bufs)
            new = [i for i, k in enumerate(indices) if fresh[k]]
            old = [i for i, k in enumerate(indices) if not fresh[k]]
            if new:
                torch._foreach_copy_([g_bufs[i] for i in new], [g_grads[i] for i in new])
            if old:
                old_bufs = [g_bufs[i] for i in old]
                torch._foreach_mul_(old_bufs, momentum)
                torch._foreach_add_(old_bufs, [g_grads[i] for i in old], alpha=1 - dampening)
            if nesterov:
                updates = torch._foreach_add(g_grads, g_bufs, alpha=momentum)
            else:
                updates = torch._foreach_mul(g_bufs, 1.0) if cfg.active else g_bufs
        else:
            updates = g_grads
        if cfg.mask == "sync":
            masks = foreach_agreement_masks(g_grads, updates)
        updates, *stat_values = foreach_mask_and_compensate(updates, masks, cfg, g_grads)
        foreach_add_scaled_(g_params, updates, -lr)
        if masks is not None:
            for outs, values in zip(g_stats, stat_values):
                torch._foreach_copy_(outs, list(values.unbind(0)))
