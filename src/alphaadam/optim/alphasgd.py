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
AlphaAdam's decoupled decay). A mask requires ``momentum > 0``. Only a single-tensor path
exists. State: ``momentum_buffer`` (torch SGD's key, so checkpoints move between the two
when unmasked) and, with a mask, ``alpha`` and ``mask_density``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .alphaadam import AlphaAdam
from .alphalion import add_scaled_, check_lr, check_real_dense
from .masking import MaskConfig, agreement_mask, mask_and_compensate

__all__ = ["AlphaSGD", "SGD_PRESETS"]

SGD_PRESETS: dict[str, dict[str, Any]] = {
    "alphasgd": {"mask": "async", "alpha": "ratio", "rescale": True},
}


class AlphaSGD(Optimizer):
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
        rescale: bool = True,
        maximize: bool = False,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum: {momentum} (must be in [0, 1))")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
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
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if MaskConfig.from_group(group).active and group["momentum"] == 0:
                raise ValueError("a param group with a mask needs momentum > 0")

    mask_statistics = AlphaAdam.mask_statistics
    read_mask_statistics = AlphaAdam.read_mask_statistics

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            cfg = MaskConfig.from_group(group)
            mu, dampening = group["momentum"], group["dampening"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                check_real_dense("AlphaSGD", p)
                state = self.state[p]
                g = -p.grad if group["maximize"] else p.grad
                if weight_decay != 0:
                    g = g.add(p, alpha=weight_decay)
                if cfg.active and "alpha" not in state:
                    state["alpha"] = torch.ones((), dtype=p.dtype, device=p.device)
                    state["mask_density"] = torch.ones((), dtype=p.dtype, device=p.device)

                phi = None
                if mu != 0:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        if cfg.mask == "async":
                            phi = torch.zeros_like(g)  # g * b_0 with b_0 = 0: nothing agrees
                        buf = torch.clone(g).detach()
                        state["momentum_buffer"] = buf
                    else:
                        if cfg.mask == "async":
                            phi = agreement_mask(g, buf)
                        buf.mul_(mu).add_(g, alpha=1 - dampening)
                    update = g.add(buf, alpha=mu) if group["nesterov"] else buf
                else:
                    update = g
                if phi is not None or cfg.mask == "sync":
                    update = update.clone()  # masked in place below; the buffer must survive
                if cfg.mask == "sync":
                    phi = agreement_mask(g, update)

                update, alpha, density = mask_and_compensate(update, phi, cfg)
                add_scaled_(p, update, -lr)
                if alpha is not None:
                    state["alpha"].copy_(alpha)
                    state["mask_density"].copy_(density)
        return loss
