"""The fused AlphaAdam step for CPU (any device, really) through ``torch.compile``.

Four compiled calls per tensor, with dynamic shapes so that one compilation serves
every parameter (tensors are passed as 1-d aliases, so rank never changes):

* ``_moments_and_mask``: updates ``exp_avg`` and ``exp_avg_sq`` in place and writes the
  agreement mask as ``uint8`` (1 byte per element); pointwise, one loop.
* ``_sums``: ``[||u||^2, ||phi u||^2, nnz, ||g||_0]`` from the stored moments, the mask
  and the gradient (reads 9 bytes per element and the gradient). Kept apart from the first: a loop that both mutates ``exp_avg`` and reduces
  makes Inductor (torch 2.13, CPU) materialise an fp32 copy of the new momentum and add a copy
  loop, which was slower (20.1 vs 17.6 ms at 8M elements) and cost 4 bytes per element of the
  largest tensor in memory.
* ``_coefficients``: turns complete sums into ``[1 - lr wd, lr scale alpha, alpha, density,
  grad density]`` (``masking.compensation``); scalar code, once per tensor.
* ``_apply``: recomputes ``u`` from the stored moments (cheaper than storing it: a stored
  fp32 ``u`` would cost 8 bytes of traffic per element, recomputing reads nothing new) and
  writes the parameter.

Without sharding each tensor runs pass 1 then pass 2 at once, so only one tensor's mask is
alive at a time.

One-pass AlphaAdam (``one_pass=True``): the first call is ``_moments_mask_and_update``, which
also writes the parameter with the previous step's multiplier (computed for all tensors at
once, :func:`_reuse_coefficients`; ``[1, 0]``, a no-op, for a tensor that takes the exact
step); ``_apply`` then runs only for the tensors that take the exact step. On CPU that
choice is read on the host (free); on other devices it is not read at all: ``_apply`` runs
for every tensor with its coefficients selected on the device (a no-op for the rest), so
the compiled one-pass step on an accelerator saves no traffic (use Triton there). With sharded parameters all pass-1 sums are all-reduced in one collective
before any pass 2, so the masks of the whole bucket are alive (1 byte per local element).

``lr``, betas, eps and weight decay are passed as 0-d/1-d tensors, so a scheduler (or
param groups with different weight decay) never recompiles. Compiled variants are made per
parameter dtype, per mask/alpha option set, and for one-element tensors (Dynamo specialises
sizes 0 and 1), so a model normally needs two to four.

Step counts, bias corrections and the other loop constants are computed outside the
compiled code, once per step for all tensors (:func:`_step_constants`), and the update
coefficients once per tensor: inside a loop, Inductor recomputes such scalars for every
vector of elements (it does not hoist them); the float64 ``pow`` calls made the step 2-3x
slower, the rest cost the apply loop ~1.5x.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .adam_math import AdamHParams, bias_corrections, exact_dtype, lr_tensor
from .masking import MaskConfig, compensation
from .sharding import LocalBucket


def _flat(t: Tensor) -> Tensor:
    """A 1-d alias of a contiguous tensor that is not a view.

    Dynamo guards on a view's base (its rank and sizes), so ``t.view(-1)`` would recompile
    for every parameter shape; a fresh tensor on the same storage guards only on its length.
    """
    if not t.is_contiguous():
        return t
    if t.dim() == 1 and not t._is_view() and not t.requires_grad:
        return t  # already what the alias would be (and ~10 us per call cheaper)
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


# Row layout of the per-tensor constants (see _step_constants), already in the state dtype.
_ONE_MINUS_B1, _B2, _ONE_MINUS_B2, _INV_BC1, _INV_BC2_SQRT, _EPS = range(6)


def _direction_c(m: Tensor, v: Tensor, c: Tensor) -> Tensor:
    """:func:`_direction` from precomputed constants (the same values, rounded the same way)."""
    return (m * c[_INV_BC1]) / (v.sqrt() * c[_INV_BC2_SQRT] + c[_EPS])


def _update_moments(
    grad: Tensor, m: Tensor, v: Tensor, c: Tensor, mask_kind: str, maximize: bool
) -> Tensor:
    """Updates ``m`` and ``v`` in place; returns the agreement mask as a float 0/1 tensor."""
    g = grad.to(m.dtype)
    if maximize:
        g = -g
    if mask_kind == "async":
        phi = g * m > 0  # the momentum before this step's update (Algorithm 1)
    m.lerp_(g, c[_ONE_MINUS_B1])
    v.mul_(c[_B2]).add_(c[_ONE_MINUS_B2] * g * g)
    if mask_kind == "sync":
        phi = g * m > 0
    # A float select: Inductor's CPU code stores a bool (or a bool->int8 cast) element by
    # element, which cost more than the whole rest of the pass.
    return torch.where(phi, 1.0, 0.0)


def _moments_and_mask(
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    mask_out: Tensor,
    c: Tensor,
    mask_kind: str,
    maximize: bool,
) -> None:
    mask_out.copy_(_update_moments(grad, m, v, c, mask_kind, maximize).to(torch.uint8))


def _moments_mask_and_update(
    grad: Tensor,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    mask_out: Tensor,
    c: Tensor,
    k: Tensor,
    mask_kind: str,
    maximize: bool,
) -> None:
    """One-pass: :func:`_moments_and_mask`, and ``param <- param * k[0] - k[1] (phi u)``."""
    phi = _update_moments(grad, m, v, c, mask_kind, maximize)
    mask_out.copy_(phi.to(torch.uint8))
    u = _direction_c(m, v, c)
    param.copy_(param.to(m.dtype) * k[0] - k[1] * (u * phi.to(m.dtype)))


def _sums(m: Tensor, v: Tensor, mask: Tensor, c: Tensor, grad: Tensor) -> Tensor:
    """``[||u||^2, ||phi u||^2, nnz, ||g||_0]`` from the stored moments, mask and gradient."""
    u = _direction_c(m, v, c)
    phi_f = mask.to(m.dtype)
    u_sq = u * u
    active = torch.where(grad != 0, 1.0, 0.0).to(m.dtype)
    return torch.stack([u_sq.sum(), (u_sq * phi_f).sum(), phi_f.sum(), active.sum()])


def _coefficients(
    sums: Tensor, numel: Tensor, lr: Tensor, hyper: Tensor, cfg: MaskConfig
) -> Tensor:
    """``[1 - lr * wd, lr * scale * alpha, alpha, density, grad density]`` from complete sums.

    Scalar work done once per tensor: inside the element loop of the apply pass Inductor
    recomputed it (float64 casts and divisions) for every vector of elements, which made
    that pass ~1.5x slower.
    """
    coef, alpha, density, grad_density = compensation(
        sums[0], sums[1], sums[2], numel, cfg, sums[3]
    )
    lr = lr.to(sums.dtype)
    return torch.stack([1 - lr * hyper[3].to(sums.dtype), lr * coef, alpha, density, grad_density])


def _apply(param: Tensor, m: Tensor, v: Tensor, mask: Tensor, c: Tensor, k: Tensor) -> None:
    """``param <- param * (1 - lr wd) - lr scale alpha (phi u)``; ``k`` from :func:`_coefficients`."""
    u = _direction_c(m, v, c)
    theta = param.to(m.dtype) * k[0]
    param.copy_(theta - k[1] * (u * mask.to(m.dtype)))


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


def _flags_readable_on_host(params: list[Tensor]) -> bool:
    """CPU tensors: reading a value costs no device synchronisation."""
    return all(p.device.type == "cpu" for p in params)


def _apply_unless_updated(apply, flat, mask, c: Tensor, k: Tensor, k_prev, exact) -> None:
    """Pass 2 for a tensor that takes the exact step.

    ``k_prev is None``: not one-pass, always. ``exact`` known on the host (CPU): only if
    True. Otherwise (accelerators) always, with ``[1, 0]`` where the one-pass update was
    already applied (``k_prev[2] == 1``), chosen on the device.
    """
    if k_prev is None or exact:
        apply(*flat, mask, c, k)
    elif exact is None:
        identity = torch.zeros_like(k)
        identity[0] = 1
        apply(*flat, mask, c, torch.where(k_prev[2] > 0, identity, k))


_compiled: dict[str, object] = {}


def _compiled_fn(name: str):
    # Compiled lazily: importing the optimizer must not pay for torch.compile.
    if name not in _compiled:
        fn = {
            "moments": _moments_and_mask,
            "moments_and_update": _moments_mask_and_update,
            "sums": _sums,
            "coefficients": _coefficients,
            "apply": _apply,
            "adamw": _adamw,
        }[name]
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def _increment_and_bias_corrections(
    steps: list[Tensor], beta1: float, beta2: float, bias_correction: bool
) -> list[tuple[list[int], Tensor]]:
    """Increment every step; per device, the tensor indices and ``[1 - b1^t, sqrt(1 - b2^t)]``.

    Not rounded (float64 where the device has it): :func:`_step_constants` takes their
    reciprocals first, then rounds once. One small table per device.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, s in enumerate(steps):
        by_device.setdefault(s.device, []).append(i)
    tables = []
    for device, idx in by_device.items():
        group = [steps[i] for i in idx]
        torch._foreach_add_(group, 1.0)
        exact = exact_dtype(device)
        if bias_correction:
            bc1, bc2_sqrt = bias_corrections(torch.stack(group), beta1, beta2, exact)
            table = torch.stack([bc1, bc2_sqrt], 1)
        else:
            table = torch.ones(len(idx), 2, dtype=exact, device=device)
        tables.append((idx, table))
    return tables


def _step_and_bias_corrections(
    steps: list[Tensor], beta1: float, beta2: float, bias_correction: bool
) -> list[Tensor]:
    """Per tensor ``[1 - b1^t, sqrt(1 - b2^t)]``, as non-view row aliases (see :func:`_flat`)."""
    rows: list[Tensor | None] = [None] * len(steps)
    for idx, table in _increment_and_bias_corrections(steps, beta1, beta2, bias_correction):
        for i, row in zip(idx, table.contiguous().unbind(0)):
            rows[i] = _flat(row)
    return rows  # type: ignore[return-value]


def _step_constants(
    steps: list[Tensor],
    state_dtypes: list[torch.dtype],
    beta1: float,
    beta2: float,
    eps: float,
    bias_correction: bool,
) -> list[Tensor]:
    """Increment every step; per tensor the six constants of the element loops.

    ``[1 - b1, b2, 1 - b2, 1 / (1 - b1^t), 1 / sqrt(1 - b2^t), eps]``, computed in float64
    and rounded to the state dtype, exactly the values :func:`_moments` and
    :func:`_direction` compute inside their loops. Computed here once per step for all
    tensors: inside, Inductor recomputed these scalars (float64 loads, casts and divisions)
    for every vector of elements, which cost more than the arithmetic on the elements.
    """
    rows: list[Tensor | None] = [None] * len(steps)
    for idx, table in _increment_and_bias_corrections(steps, beta1, beta2, bias_correction):
        hyper = torch.tensor([beta1, beta2, eps], dtype=table.dtype, device=table.device)
        hyper = hyper.expand(len(idx), 3)
        inv = 1 / table
        full = torch.stack(
            [1 - hyper[:, 0], hyper[:, 1], 1 - hyper[:, 1], inv[:, 0], inv[:, 1], hyper[:, 2]],
            1,
        )
        by_dtype: dict[torch.dtype, list[int]] = {}
        for j, i in enumerate(idx):
            by_dtype.setdefault(state_dtypes[i], []).append(j)
        for dtype, js in by_dtype.items():
            rounded = full[js].to(dtype).contiguous()
            for j, row in zip(js, rounded.unbind(0)):
                rows[idx[j]] = _flat(row)
    return rows  # type: ignore[return-value]


def _reuse_coefficients(
    previous_scales: list[Tensor],
    state_dtypes: list[torch.dtype],
    lr: float | Tensor,
    weight_decay: float,
) -> list[Tensor]:
    """One-pass: per tensor ``[1 - lr wd, lr * previous, 1]`` in the state dtype where its
    previous multiplier is usable (> 0), else ``[1, 0, 0]`` (no update in the first call)."""
    rows: list[Tensor | None] = [None] * len(previous_scales)
    by_key: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (prev, dtype) in enumerate(zip(previous_scales, state_dtypes)):
        by_key.setdefault((prev.device, dtype), []).append(i)
    for (device, dtype), idx in by_key.items():
        prev = torch.stack([previous_scales[i] for i in idx]).to(dtype)
        lr_t = lr_tensor(lr, device).to(dtype)
        usable = prev > 0
        zero, one = torch.zeros_like(prev), torch.ones_like(prev)
        decay = torch.where(usable, 1 - lr_t * weight_decay, one)
        table = torch.stack([decay, torch.where(usable, lr_t * prev, zero), usable.to(dtype)], 1)
        for i, row in zip(idx, table.unbind(0)):
            rows[i] = _flat(row)
    return rows  # type: ignore[return-value]


def compiled_alphaadam(
    bucket: LocalBucket,
    hp: AdamHParams,
    cfg: MaskConfig,
    *,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """Same arguments and results as ``reference_paths.single_tensor_alphaadam``."""
    params, grads, exp_avgs, exp_avg_sqs = (
        bucket.params,
        bucket.grads,
        bucket.exp_avgs,
        bucket.exp_avg_sqs,
    )
    previous_scales, reduce_sums = bucket.previous_scales, bucket.reduce_sums
    scalars: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def scalars_on(device: torch.device) -> tuple[Tensor, Tensor]:
        # Tensors, not Python floats: Dynamo would specialise on (and recompile for) each
        # value of lr, betas, eps and weight decay.
        if device not in scalars:
            hyper = torch.tensor([hp.beta1, hp.beta2, hp.eps, hp.weight_decay], dtype=torch.float64)
            scalars[device] = (lr_tensor(hp.lr, device), hyper.to(device))
        return scalars[device]

    if not cfg.active:
        bcs = _step_and_bias_corrections(bucket.steps, hp.beta1, hp.beta2, hp.bias_correction)
        adamw = _compiled_fn("adamw")
        for p, g, m, v, bc in zip(params, grads, exp_avgs, exp_avg_sqs, bcs):
            if p.numel() == 0:
                continue
            lr_t, hyper = scalars_on(p.device)
            adamw(_flat(p), _flat(g), _flat(m), _flat(v), bc, lr_t, hyper, maximize=hp.maximize)
        return

    state_dtypes = [m.dtype for m in exp_avgs]
    consts = _step_constants(
        bucket.steps, state_dtypes, hp.beta1, hp.beta2, hp.eps, hp.bias_correction
    )
    moments_and_mask = _compiled_fn("moments")
    apply = _compiled_fn("apply")
    one_pass = previous_scales is not None
    if one_pass:
        reuse_k = _reuse_coefficients(previous_scales, state_dtypes, hp.lr, hp.weight_decay)
        exact_step = [None] * len(params)  # not read on the host: select on the device
        if _flags_readable_on_host(params):
            exact_step = torch.stack(previous_scales).le(0).tolist()
    else:
        reuse_k = exact_step = [None] * len(params)
    pending = []
    k_values: list[Tensor] = []
    for p, g, m, v, c, numel, k_prev, exact in zip(
        params, grads, exp_avgs, exp_avg_sqs, consts, bucket.numels, reuse_k, exact_step
    ):
        numel_t = torch.tensor(numel, dtype=m.dtype, device=p.device)
        lr_t, hyper = scalars_on(p.device)
        if p.numel() == 0:
            # A zero-size (local shard of a) tensor: nothing to touch, its sums are zero.
            sums = torch.zeros(4, dtype=m.dtype, device=p.device)
            if reduce_sums is None:
                k_values.append(_coefficients(sums, numel_t, lr_t, hyper, cfg))
            else:
                pending.append((None, None, c, sums, numel_t, lr_t, hyper, k_prev, exact))
            continue
        # 1-d (not view) aliases made once per tensor: each costs more than a small
        # tensor's kernel, and a step of GPT-2 small makes hundreds of them.
        flat = (_flat(p), _flat(m), _flat(v))
        mask = torch.empty(p.numel(), dtype=torch.uint8, device=p.device)
        if one_pass:
            _compiled_fn("moments_and_update")(
                _flat(g), *flat, mask, c, k_prev, mask_kind=cfg.mask, maximize=hp.maximize
            )
        else:
            moments_and_mask(
                _flat(g), flat[1], flat[2], mask, c, mask_kind=cfg.mask, maximize=hp.maximize
            )
        sums = _compiled_fn("sums")(flat[1], flat[2], mask, c, _flat(g))
        if reduce_sums is None:
            # Coefficients in a call of their own: a graph holding both the option-dependent
            # scalar code and a reduction is compiled per option set and per size class,
            # which exceeded Dynamo's recompile limit (8) with four presets in one process.
            k = _compiled_fn("coefficients")(sums, numel_t, lr_t, hyper, cfg=cfg)
            _apply_unless_updated(apply, flat, mask, c, k, k_prev, exact)
            k_values.append(k)
        else:
            pending.append((flat, mask, c, sums, numel_t, lr_t, hyper, k_prev, exact))
    if pending:
        # One collective for the whole bucket: rows are tensors, columns the four sums.
        # Tensors that reused their previous multiplier are already updated (no waiting).
        reduced = reduce_sums(torch.stack([item[3].to(torch.float64) for item in pending]))
        for (flat, mask, c, _, numel_t, lr_t, hyper, k_prev, exact), row in zip(
            pending, reduced.unbind(0)
        ):
            k = _compiled_fn("coefficients")(row.to(numel_t.dtype), numel_t, lr_t, hyper, cfg=cfg)
            if flat is not None:
                _apply_unless_updated(apply, flat, mask, c, k, k_prev, exact)
            k_values.append(k)
    # k = [decay, step, alpha, density, grad density]; the state gets the last three. Copied here, not
    # inside the compiled code: Inductor (torch 2.13, CPU) drops in-place writes to float64
    # 0-d inputs.
    torch._foreach_copy_(
        [t for pair in bucket.stats for t in pair], [t for k in k_values for t in k[2:].unbind(0)]
    )
