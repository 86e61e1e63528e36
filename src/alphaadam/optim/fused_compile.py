"""The fused AlphaAdam step for CPU (any device, really) through ``torch.compile``.

Three compiled functions per tensor, with dynamic shapes so that one compilation serves
every parameter (tensors are passed as 1-d aliases, so rank never changes):

* ``_moments_and_mask``: updates ``exp_avg`` and ``exp_avg_sq`` in place and writes the
  agreement mask as ``uint8`` (1 byte per element); pointwise, one loop.
* ``_sums``: ``[||u||^2, ||phi u||^2, nnz]`` from the stored moments and mask (reads 9 bytes
  per element). Kept apart from the first: a loop that both mutates ``exp_avg`` and reduces
  makes Inductor (torch 2.13, CPU) materialise an fp32 copy of the new momentum and add a copy
  loop, which was slower (20.1 vs 17.6 ms at 8M elements) and cost 4 bytes per element of the
  largest tensor in memory.
* ``_apply``: turns complete sums into ``scale * alpha`` (same formulas as
  ``fused.coefficients``), recomputes ``u`` from the stored moments (cheaper than storing it:
  a stored fp32 ``u`` would cost 8 bytes of traffic per element, recomputing reads nothing new)
  and writes the parameter; returns alpha and the mask density.

Without sharding each tensor runs pass 1 then pass 2 at once, so only one tensor's mask is
alive at a time. With sharded parameters all pass-1 sums are all-reduced in one collective
before any pass 2, so the masks of the whole bucket are alive (1 byte per local element).

``lr``, betas, eps and weight decay are passed as 0-d/1-d tensors, so a scheduler (or
param groups with different weight decay) never recompiles. Compiled variants are made per
parameter dtype, per mask/alpha option set, and for one-element tensors (Dynamo specialises
sizes 0 and 1), so a model normally needs two to four.

Step counts and bias corrections are updated outside the compiled code, once per step for
all tensors: inside, Inductor would recompute the two float64 ``pow`` calls in every
iteration of the element loop (it does not hoist them), which made the step 2-3x slower.
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


def _direction(m: Tensor, v: Tensor, bc: Tensor, hyper: Tensor) -> Tensor:
    """``u = h / (sqrt(v) / sqrt(1 - b2^t) + eps) / (1 - b1^t)``, as the reference computes it."""
    # Scalar reciprocals: one vector division per element instead of three (the reference
    # divides by the scalars; results differ by an ulp).
    inv = (1 / bc).to(m.dtype)
    return (m * inv[0]) / (v.sqrt() * inv[1] + hyper[2].to(m.dtype))


def _moments(g: Tensor, m: Tensor, v: Tensor, hyper: Tensor) -> None:
    m.lerp_(g, (1 - hyper[0]).to(m.dtype))
    v.mul_(hyper[1].to(m.dtype)).add_((1 - hyper[1]).to(m.dtype) * g * g)


def _moments_and_mask(
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    mask_out: Tensor,
    hyper: Tensor,
    mask_kind: str,
    maximize: bool,
) -> None:
    g = grad.to(m.dtype)
    if maximize:
        g = -g
    if mask_kind == "async":
        phi = g * m > 0  # the momentum before this step's update (Algorithm 1)
    _moments(g, m, v, hyper)
    if mask_kind == "sync":
        phi = g * m > 0
    # uint8 through a float select: Inductor's CPU code stores a bool (or a bool->int8 cast)
    # element by element, which cost more than the whole rest of the pass.
    mask_out.copy_(torch.where(phi, 1.0, 0.0).to(torch.uint8))


def _sums(m: Tensor, v: Tensor, bc: Tensor, mask: Tensor, hyper: Tensor) -> Tensor:
    """``[||u||^2, ||phi u||^2, nnz]`` from the stored moments and mask."""
    u = _direction(m, v, bc, hyper)
    phi_f = mask.to(m.dtype)
    u_sq = u * u
    return torch.stack([u_sq.sum(), (u_sq * phi_f).sum(), phi_f.sum()])


def _apply(
    param: Tensor,
    m: Tensor,
    v: Tensor,
    bc: Tensor,
    mask: Tensor,
    sums: Tensor,
    numel: Tensor,
    lr: Tensor,
    hyper: Tensor,
    cfg: MaskConfig,
) -> Tensor:
    coef, alpha, density = coefficients(sums[0], sums[1], sums[2], numel, cfg)
    u = _direction(m, v, bc, hyper)
    lr = lr.to(m.dtype)
    theta = param.to(m.dtype) * (1 - lr * hyper[3].to(m.dtype))
    param.copy_(theta - (lr * coef) * (u * mask.to(m.dtype)))
    # Returned, not copied into the state here: Inductor (torch 2.13, CPU) drops in-place
    # writes to float64 0-d inputs. The caller copies all of them with one foreach call.
    return torch.stack([alpha, density])


def _adamw(
    param: Tensor,
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    bc: Tensor,
    lr: Tensor,
    hyper: Tensor,
    maximize: bool,
) -> None:
    # mask="none": no per-tensor sums, so a single pass (AdamW).
    g = grad.to(m.dtype)
    if maximize:
        g = -g
    _moments(g, m, v, hyper)
    u = _direction(m, v, bc, hyper)
    lr = lr.to(m.dtype)
    theta = param.to(m.dtype) * (1 - lr * hyper[3].to(m.dtype))
    param.copy_(theta - lr * u)


_compiled: dict[str, object] = {}


def _compiled_fn(name: str):
    # Compiled lazily: importing the optimizer must not pay for torch.compile.
    if name not in _compiled:
        fn = {"moments": _moments_and_mask, "sums": _sums, "apply": _apply, "adamw": _adamw}[name]
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def _step_and_bias_corrections(
    steps: list[Tensor], beta1: float, beta2: float, bias_correction: bool
) -> list[Tensor]:
    """Increment every step; per tensor ``[1 - b1^t, sqrt(1 - b2^t)]`` in float64.

    float64 as in the reference path (float32 ``0.999`` is off by 1.3e-8, which ``1 - b2^t``
    amplifies to a 1e-5 relative error at t = 1). One small tensor per device, handed out
    as non-view row aliases (see :func:`_flat`).
    """
    rows: list[Tensor | None] = [None] * len(steps)
    by_device: dict[torch.device, list[int]] = {}
    for i, s in enumerate(steps):
        by_device.setdefault(s.device, []).append(i)
    for device, idx in by_device.items():
        group = [steps[i] for i in idx]
        torch._foreach_add_(group, 1.0)
        exact = torch.float32 if device.type == "mps" else torch.float64
        if bias_correction:
            t = torch.stack(group).to(exact)
            table = torch.stack([1 - torch.pow(beta1, t), (1 - torch.pow(beta2, t)).sqrt()], 1)
        else:
            table = torch.ones(len(idx), 2, dtype=exact, device=device)
        for i, row in zip(idx, table.contiguous().unbind(0)):
            rows[i] = _flat(row)
    return rows  # type: ignore[return-value]


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
    scalars: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def scalars_on(device: torch.device) -> tuple[Tensor, Tensor]:
        # Tensors, not Python floats: Dynamo would specialise on (and recompile for) each
        # value of lr, betas, eps and weight decay.
        if device not in scalars:
            hyper = torch.tensor([beta1, beta2, eps, weight_decay], dtype=torch.float64)
            scalars[device] = (lr_tensor(lr, device), hyper.to(device))
        return scalars[device]

    bcs = _step_and_bias_corrections(steps, beta1, beta2, bias_correction)
    if not cfg.active:
        adamw = _compiled_fn("adamw")
        for p, g, m, v, bc in zip(params, grads, exp_avgs, exp_avg_sqs, bcs):
            if p.numel() == 0:
                continue
            lr_t, hyper = scalars_on(p.device)
            adamw(_flat(p), _flat(g), _flat(m), _flat(v), bc, lr_t, hyper, maximize=maximize)
        return

    moments_and_mask = _compiled_fn("moments")
    partial_sums = _compiled_fn("sums")
    apply = _compiled_fn("apply")
    pending = []
    stat_values: list[Tensor] = []
    for p, g, m, v, bc, numel in zip(params, grads, exp_avgs, exp_avg_sqs, bcs, numels):
        if p.numel() == 0:
            # A zero-size (local shard of a) tensor: nothing to touch, its sums are zero.
            mask = torch.empty(0, dtype=torch.uint8, device=p.device)
            sums = torch.zeros(3, dtype=m.dtype, device=p.device)
        else:
            mask = torch.empty(p.shape, dtype=torch.uint8, device=p.device)
            hyper = scalars_on(p.device)[1]
            mask_flat = _flat(mask)
            moments_and_mask(
                _flat(g), _flat(m), _flat(v), mask_flat, hyper,
                mask_kind=cfg.mask, maximize=maximize,
            )  # fmt: skip
            sums = partial_sums(_flat(m), _flat(v), bc, mask_flat, hyper)
        item = (p, m, v, bc, mask, sums, numel)
        if reduce_sums is None:
            stat_values.append(_apply_one(apply, item, scalars_on, cfg))
        else:
            pending.append(item)
    if pending:
        # One collective for the whole bucket: rows are tensors, columns the three sums.
        reduced = reduce_sums(torch.stack([item[5].to(torch.float64) for item in pending]))
        for item, row in zip(pending, reduced.unbind(0)):
            item = item[:5] + (row.to(item[1].dtype),) + item[6:]
            stat_values.append(_apply_one(apply, item, scalars_on, cfg))
    torch._foreach_copy_(
        [t for pair in stats for t in pair], [t for pair in stat_values for t in pair.unbind(0)]
    )


def _apply_one(apply, item, scalars_on, cfg: MaskConfig) -> Tensor:
    p, m, v, bc, mask, sums, numel = item
    numel_t = torch.tensor(numel, dtype=m.dtype, device=p.device)
    if p.numel() == 0:
        _, alpha, density = coefficients(sums[0], sums[1], sums[2], numel_t, cfg)
        return torch.stack([alpha, density])
    lr_t, hyper = scalars_on(p.device)
    return apply(_flat(p), _flat(m), _flat(v), bc, _flat(mask), sums, numel_t, lr_t, hyper, cfg=cfg)
