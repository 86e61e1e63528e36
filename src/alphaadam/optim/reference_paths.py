"""The reference AlphaAdam step paths: single-tensor (reads like Algorithm 1) and
multi-tensor (the same math with ``torch._foreach_*`` kernels).

``step_paths.select_step`` picks one of these (``fused=None``/``False``) or a fused back end; all
are called as ``path(bucket, hp, cfg, workspace=...)`` (``sharding.LocalBucket``,
``adam_math.AdamHParams``, ``masking.MaskConfig``) and keep the same state, so a checkpoint
moves between them. The tests compare both with the float64 transcription of Algorithm 1
(``tests/algorithm1_reference.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from .adam_math import LOW_PRECISION, AdamHParams, bias_corrections
from .masking import (
    MaskConfig,
    agreement_mask,
    foreach_agreement_masks,
    foreach_mask_and_compensate,
    mask_and_compensate,
)
from .sharding import LocalBucket


# ----------------------------------------------------------------------------------------
# Single-tensor path: reads like Algorithm 1.
# ----------------------------------------------------------------------------------------
def single_tensor_alphaadam(
    bucket: LocalBucket,
    hp: AdamHParams,
    cfg: MaskConfig,
    *,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """One parameter tensor at a time.

    The bucket's ``numels``/``reduce_sums``: whole-tensor element counts and the sum over
    shards (FSDP2, ``sharding.py``). Its ``previous_scales`` (``one_pass``): per tensor, the
    previous step's multiplier to apply instead of this step's, or 0 for the exact step; this
    path computes both and selects on the device. ``workspace``: scratch buffers the
    optimizer keeps across steps (used by the fused C++ step; not needed here).
    """
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    previous_scales = bucket.previous_scales or [None] * len(bucket.params)
    for param, grad, exp_avg, exp_avg_sq, step_t, stats, numel, prev in zip(
        bucket.params, bucket.grads, bucket.exp_avgs, bucket.exp_avg_sqs, bucket.steps,
        bucket.stats, bucket.numels, previous_scales,
    ):  # fmt: skip
        theta = param.float() if param.dtype in LOW_PRECISION else param
        g = (-grad if hp.maximize else grad).to(exp_avg.dtype)
        step_t += 1

        # d_t = g_t * h_{t-1}: the asynchronous mask reads the momentum before its update.
        phi = agreement_mask(g, exp_avg) if cfg.mask == "async" else None
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if cfg.mask == "sync":
            phi = agreement_mask(g, exp_avg)

        # u_t = h_t / (sqrt(v_t) + eps), with AdamW's bias correction unless disabled.
        if hp.bias_correction:
            bc1, bc2_sqrt = bias_corrections(step_t, beta1, beta2, exp_avg.dtype)
            u = exp_avg / ((exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)) / bc1
        else:
            u = exp_avg / exp_avg_sq.sqrt().add_(eps)

        # phi * u, scaled by d/(||phi||_0 + 1) and alpha_t.
        u, alpha, density, grad_density = mask_and_compensate(
            u, phi, cfg, g, numel=numel, reduce_sums=bucket.reduce_sums, previous_scale=prev
        )

        if hp.weight_decay != 0:
            theta.mul_(1 - lr * hp.weight_decay)
        theta.sub_(u.mul_(lr))

        if theta is not param:
            param.copy_(theta)
        if alpha is not None:
            for out, value in zip(stats, (alpha, density, grad_density)):
                out.copy_(value)


# ----------------------------------------------------------------------------------------
# Multi-tensor path: the same math with torch._foreach_* kernels.
# ----------------------------------------------------------------------------------------
CPU_CHUNK_NUMEL = 1 << 18


def _cache_sized_chunks(grouped, enabled: bool = True):
    """The device/dtype groups, with CPU groups cut into runs of about CPU_CHUNK_NUMEL
    elements.

    The math is per tensor, so chunking changes nothing but speed: on CPU, foreach kernels
    are per-tensor loops, and running the whole step over a chunk at a time keeps its
    temporaries small (reused by the allocator instead of page-faulted in) and in cache
    between passes. Accelerators keep one launch per kernel for the whole group. Not
    ``enabled`` for shards: each chunk's sums are all-reduced, so every rank must cut the
    same chunks, and shard sizes differ between ranks.
    """
    for key, (lists, indices) in grouped.items():
        # Under torch.compile the grouping key is (None, None) and inductor fuses anyway.
        if not enabled or key[0] is None or key[0].type != "cpu":
            yield key, (lists, indices)
            continue
        start, total = 0, 0
        params = lists[0]
        for i, p in enumerate(params):
            total += p.numel()
            if total >= CPU_CHUNK_NUMEL or i == len(params) - 1:
                chunk = [lst[start : i + 1] for lst in lists]
                yield key, (chunk, None if indices is None else indices[start : i + 1])
                start, total = i + 1, 0


def _divide_into_denominators(numerators: list[Tensor], denominators: list[Tensor]) -> list[Tensor]:
    """``numerators / denominators``, written over the denominators on CPU.

    CPU has no multi-tensor kernels (foreach is a per-tensor loop there) and a fresh buffer
    the size of the model is page-faulted in, which costs more than the division itself.
    On accelerators the caching allocator makes the out-of-place foreach kernel cheap, and
    torch.compile (which fuses the step anyway) gets the functional form.
    """
    on_cpu = bool(denominators) and denominators[0].device.type == "cpu"
    if on_cpu and not torch.compiler.is_compiling():
        for n, d in zip(numerators, denominators):
            torch.div(n, d, out=d)
        return denominators
    return torch._foreach_div(numerators, denominators)


def multi_tensor_alphaadam(
    bucket: LocalBucket,
    hp: AdamHParams,
    cfg: MaskConfig,
    *,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """The single-tensor path's math with foreach kernels (same arguments)."""
    lr, beta1, beta2, eps = hp.lr, hp.beta1, hp.beta2, hp.eps
    numels, previous_scales = bucket.numels, bucket.previous_scales
    alphas_out, densities_out, grad_densities_out = (list(t) for t in zip(*bucket.stats))
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [
            bucket.params, bucket.grads, bucket.exp_avgs, bucket.exp_avg_sqs, bucket.steps,
            alphas_out, densities_out, grad_densities_out,
        ],
        with_indices=True,
    )  # fmt: skip
    for (_device, _dtype), (
        (g_params, g_grads, g_m, g_v, g_steps, g_alpha, g_density, g_grad_density),
        indices,
    ) in _cache_sized_chunks(grouped, enabled=bucket.reduce_sums is None):
        g_numels = [numels[i] for i in indices]
        g_previous = None
        if previous_scales is not None:
            g_previous = torch.stack([previous_scales[i] for i in indices])
        low_precision = g_params[0].dtype in LOW_PRECISION
        work_params = [p.float() for p in g_params] if low_precision else g_params
        state_dtype = g_m[0].dtype
        if hp.maximize:
            g_grads = torch._foreach_neg(g_grads)
        if g_grads[0].dtype != state_dtype:
            g_grads = [g.to(state_dtype) for g in g_grads]

        torch._foreach_add_(g_steps, 1.0)
        masks = foreach_agreement_masks(g_grads, g_m) if cfg.mask == "async" else None
        torch._foreach_lerp_(g_m, g_grads, 1 - beta1)
        torch._foreach_mul_(g_v, beta2)
        torch._foreach_addcmul_(g_v, g_grads, g_grads, 1 - beta2)
        if cfg.mask == "sync":
            masks = foreach_agreement_masks(g_grads, g_m)

        # u = m / (sqrt(v)/bc2s + eps) / bc1 = m / (sqrt(v) + eps*bc2s) * (bc2s/bc1): the
        # per-tensor scalars join lr in one multiply at the end (alpha is scale-invariant),
        # which saves two passes over every tensor.
        denom = torch._foreach_sqrt(g_v)
        bias_ratio = None  # sqrt(1 - b2^t) / (1 - b1^t) per tensor
        if hp.bias_correction:
            # Each tensor's own step (they may differ), stacked: a few kernels for all.
            bc1_all, bc2_sqrt_all = bias_corrections(
                torch.stack(g_steps), beta1, beta2, state_dtype
            )
            torch._foreach_add_(denom, list((eps * bc2_sqrt_all).unbind(0)))
            bias_ratio = bc2_sqrt_all / bc1_all
        else:
            torch._foreach_add_(denom, eps)
        updates = _divide_into_denominators(g_m, denom)
        del denom

        updates, alphas, densities, grad_densities = foreach_mask_and_compensate(
            updates,
            masks,
            cfg,
            g_grads,
            numels=g_numels,
            reduce_sums=bucket.reduce_sums,
            previous_scales=g_previous,
        )

        if hp.weight_decay != 0:
            decay = 1 - lr * hp.weight_decay
            torch._foreach_mul_(work_params, decay)
        if isinstance(lr, Tensor):
            lr = lr.to(device=updates[0].device)
        if bias_ratio is None:
            torch._foreach_mul_(updates, lr)
        else:
            torch._foreach_mul_(updates, list((bias_ratio * lr).unbind(0)))
        torch._foreach_sub_(work_params, updates)

        if low_precision:
            torch._foreach_copy_(g_params, work_params)
        if alphas is not None:
            torch._foreach_copy_(g_alpha, list(alphas.unbind(0)))
            torch._foreach_copy_(g_density, list(densities.unbind(0)))
            torch._foreach_copy_(g_grad_density, list(grad_densities.unbind(0)))
