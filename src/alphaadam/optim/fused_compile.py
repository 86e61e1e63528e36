"""The fused AlphaAdam step for CPU (any device, really) through ``torch.compile``.

Two compiled functions per tensor, both with dynamic shapes so that one compilation serves
every parameter (tensors are flattened, so rank never changes):

* ``_moments_and_sums``: updates ``step``, ``exp_avg``, ``exp_avg_sq`` in place, writes the
  agreement mask as ``bool`` (1 byte per element) and returns ``[||u||^2, ||phi u||^2, nnz]``;
  Inductor emits one loop that stores the moments and mask and reduces the sums.
* ``_apply``: turns complete sums into ``scale * alpha`` (same formulas as
  ``fused.coefficients``), recomputes ``u`` from the stored moments (cheaper than storing it:
  a stored fp32 ``u`` would cost 8 bytes of traffic per element, recomputing reads nothing new)
  and writes the parameter, alpha and mask density.

Without sharding each tensor runs pass 1 then pass 2 at once, so only one tensor's mask is
alive at a time. With sharded parameters all pass-1 sums are all-reduced in one collective
before any pass 2, so the masks of the whole bucket are alive (1 byte per local element).

``lr`` is passed as a 0-d tensor (a scheduler changing it does not recompile); betas, eps,
weight decay and the mask options are compile-time constants (changing one recompiles).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .fused import coefficients, lr_tensor
from .masking import MaskConfig
from .sharding import ReduceSums


def _flat(t: Tensor) -> Tensor:
    """A 1-d alias of a contiguous tensor that is not a view.

    Dynamo guards on a view's base (its rank and sizes), so ``t.view(-1)`` would recompile
    for every parameter shape; a fresh tensor on the same storage guards only on its length.
    """
    if not t.is_contiguous():
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def _direction(m: Tensor, v: Tensor, step: Tensor, beta1, beta2, eps, bias_correction) -> Tensor:
    if bias_correction:
        t = step.to(torch.float64)
        bc1 = (1 - torch.pow(beta1, t)).to(m.dtype)
        bc2_sqrt = (1 - torch.pow(beta2, t)).sqrt().to(m.dtype)
        return m / (v.sqrt() / bc2_sqrt + eps) / bc1
    return m / (v.sqrt() + eps)


def _moments_and_sums(
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: Tensor,
    mask_out: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    mask_kind: str,
    bias_correction: bool,
    maximize: bool,
) -> Tensor:
    g = grad.to(m.dtype)
    if maximize:
        g = -g
    step.add_(1)
    if mask_kind == "async":
        phi = g * m > 0  # the momentum before this step's update (Algorithm 1)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if mask_kind == "sync":
        phi = g * m > 0
    u = _direction(m, v, step, beta1, beta2, eps, bias_correction)
    mask_out.copy_(phi)
    u_sq = u * u
    return torch.stack([u_sq.sum(), torch.where(phi, u_sq, 0).sum(), phi.sum(dtype=m.dtype)])


def _apply(
    param: Tensor,
    m: Tensor,
    v: Tensor,
    step: Tensor,
    mask: Tensor,
    sums: Tensor,
    numel: Tensor,
    lr: Tensor,
    alpha_out: Tensor,
    density_out: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    cfg: MaskConfig,
    bias_correction: bool,
) -> None:
    coef, alpha, density = coefficients(sums[0], sums[1], sums[2], numel, cfg)
    u = _direction(m, v, step, beta1, beta2, eps, bias_correction)
    theta = param.to(m.dtype)
    lr = lr.to(m.dtype)
    if weight_decay != 0:
        theta = theta * (1 - lr * weight_decay)
    param.copy_(theta - (lr * coef) * torch.where(mask, u, 0))
    alpha_out.copy_(alpha)
    density_out.copy_(density)


def _adamw(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: Tensor,
    lr: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    maximize: bool,
) -> None:
    # mask="none": no per-tensor sums, so a single pass (AdamW).
    g = grad.to(m.dtype)
    if maximize:
        g = -g
    step.add_(1)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    u = _direction(m, v, step, beta1, beta2, eps, bias_correction)
    theta = param.to(m.dtype)
    lr = lr.to(m.dtype)
    if weight_decay != 0:
        theta = theta * (1 - lr * weight_decay)
    param.copy_(theta - lr * u)


_compiled: dict[str, object] = {}


def _compiled_fn(name: str):
    # Compiled lazily: importing the optimizer must not pay for torch.compile.
    if name not in _compiled:
        fn = {"sums": _moments_and_sums, "apply": _apply, "adamw": _adamw}[name]
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def compiled_alphaadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    stats: list[tuple[Tensor | None, Tensor | None]],
    *,
    cfg: MaskConfig,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    maximize: bool,
    numels: list[int] | None = None,
    reduce_sums: ReduceSums | None = None,
) -> None:
    """Same signature and results as ``alphaadam._single_tensor_alphaadam``."""
    if numels is None:
        numels = [p.numel() for p in params]
    lrs: dict[torch.device, Tensor] = {}

    def lr_on(device: torch.device) -> Tensor:
        if device not in lrs:
            lrs[device] = lr_tensor(lr, device)
        return lrs[device]

    consts = dict(beta1=beta1, beta2=beta2, eps=eps, bias_correction=bias_correction)
    if not cfg.active:
        adamw = _compiled_fn("adamw")
        for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
            if p.numel() == 0:
                s.add_(1)
                continue
            adamw(
                _flat(p), _flat(g), _flat(m), _flat(v), s, lr_on(p.device),
                weight_decay=weight_decay, maximize=maximize, **consts,
            )  # fmt: skip
        return

    moments_and_sums = _compiled_fn("sums")
    apply = _compiled_fn("apply")
    pending = []
    for p, g, m, v, s, (alpha_out, density_out), numel in zip(
        params, grads, exp_avgs, exp_avg_sqs, steps, stats, numels
    ):
        if p.numel() == 0:
            # A zero-size (local shard of a) tensor: nothing to touch, its sums are zero.
            s.add_(1)
            mask = torch.empty(0, dtype=torch.bool, device=p.device)
            sums = torch.zeros(3, dtype=m.dtype, device=p.device)
        else:
            mask = torch.empty(p.shape, dtype=torch.bool, device=p.device)
            sums = moments_and_sums(
                _flat(g), _flat(m), _flat(v), s, _flat(mask),
                mask_kind=cfg.mask, maximize=maximize, **consts,
            )  # fmt: skip
        item = (p, m, v, s, mask, sums, numel, alpha_out, density_out)
        if reduce_sums is None:
            _apply_one(apply, item, lr_on, weight_decay, cfg, consts)
        else:
            pending.append(item)
    if not pending:
        return
    # One collective for the whole bucket: rows are tensors, columns the three sums.
    reduced = reduce_sums(torch.stack([item[5].to(torch.float64) for item in pending]))
    for item, row in zip(pending, reduced.unbind(0)):
        item = item[:5] + (row.to(item[1].dtype),) + item[6:]
        _apply_one(apply, item, lr_on, weight_decay, cfg, consts)


def _apply_one(apply, item, lr_on, weight_decay, cfg, consts) -> None:
    p, m, v, s, mask, sums, numel, alpha_out, density_out = item
    numel_t = torch.tensor(numel, dtype=m.dtype, device=p.device)
    if p.numel() == 0:
        _, alpha, density = coefficients(sums[0], sums[1], sums[2], numel_t, cfg)
        alpha_out.copy_(alpha)
        density_out.copy_(density)
        return
    apply(
        _flat(p), _flat(m), _flat(v), s, _flat(mask), sums, numel_t, lr_on(p.device),
        alpha_out, density_out, weight_decay=weight_decay, cfg=cfg, **consts,
    )  # fmt: skip
