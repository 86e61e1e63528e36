"""The fused AlphaAdam step as two Triton kernels launched over all tensors of a group.

Layout (in the spirit of apex's ``multi_tensor_apply``): every tensor of a (device, param
dtype) group is cut into ``CHUNK``-element chunks; one program handles one chunk. Two small
int64 tables travel to the device each step:

* per tensor: the addresses of param, grad, exp_avg, exp_avg_sq, its element count and the
  offset of its mask in one flat ``uint8`` buffer (1 byte per element);
* per chunk: the tensor index and start element (cached: it depends only on the sizes).

Pass 1 (``_moments_kernel``) reads ``g, m, v``, writes ``m, v`` and the mask byte and adds the
chunk's ``||u||^2``, ``||phi u||^2``, ``nnz`` and ``||g||_0`` (the nonzero gradient elements)
into per-tensor accumulators with ``tl.atomic_add`` (fp32, fp32, int32, int32). Between the passes a few tiny torch ops turn the sums
(all-reduced over shards first, under FSDP2) into ``lr * d/(nnz+1) * alpha`` per tensor.
Pass 2 (``_apply_kernel``) reads ``p, m, v`` and the mask byte, recomputes ``u`` and writes
``p``. With ``mask="none"`` there are no sums and pass 1 applies the AdamW update itself.

One-pass AlphaAdam (``one_pass=True``): pass 1 also reads each tensor's previous multiplier
(``prev``, 0 for a tensor that takes the exact step). A tensor with ``prev > 0`` gets its
update in pass 1 (reads and writes ``p``, no mask byte: 28 bytes per fp32 element, AdamW's);
the others write the mask, and pass 2, still launched for every chunk, masks all its memory
accesses off for the tensors already updated. Nothing is read on the host.

Traffic per element: pass 1 reads g, m, v and writes m, v and the mask; pass 2 reads p, m, v
and the mask and writes p. fp32 params: 21 + 17 = 38 bytes against 28 for a fused AdamW
(1.36x); bf16/fp16 params with fp32 state: 19 + 13 = 32 against 22 (1.45x).

Kernels are built from plain functions: ``triton.jit`` for CUDA tensors and the Triton
interpreter for CPU tensors (how CI tests them; slow, for testing only). Moments must be
float32 (float32/float16/bfloat16 parameters).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .adam_math import AdamHParams, bias_corrections, lr_tensor
from .masking import MaskConfig, compensation
from .sharding import LocalBucket

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the dispatcher checks before importing us
    triton = None
    tl = None

BLOCK = 1024
CHUNK = 4096
# The interpreter runs each program in numpy: small chunks keep CI tests short while still
# cutting small test tensors into several chunks.
INTERPRET_BLOCK = 16
INTERPRET_CHUNK = 32

MASK_NONE, MASK_ASYNC, MASK_SYNC = 0, 1, 2


def _to_param_dtype(p, P_DTYPE: tl.constexpr):
    """fp32 ``p`` rounded to the parameter dtype (nearest even, also for bf16)."""
    if P_DTYPE == tl.bfloat16:
        # Round to nearest even by hand: the interpreter truncates fp32 -> bf16.
        bits = p.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        p_out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(p != p, p.to(tl.bfloat16), p_out)
    return p.to(P_DTYPE)


if triton is not None:
    # A device function the kernels call (an interpreted one under TRITON_INTERPRET=1).
    _to_param_dtype = triton.jit(_to_param_dtype)
_MASK_CODES = {"none": MASK_NONE, "async": MASK_ASYNC, "sync": MASK_SYNC}
_TL_DTYPES = {}


def _moments_kernel(
    table_ptr,  # int64 [6, n]: p, g, m, v addresses, numel, mask offset
    n_tensors,
    chunk_tensor_ptr,  # int32 [chunks]
    chunk_start_ptr,  # int64 [chunks]
    bc_ptr,  # fp32 [2, n]: 1 - b1^t, sqrt(1 - b2^t)
    sums_ptr,  # fp32 [2, n]: ||u||^2, ||phi u||^2
    nnz_ptr,  # int32 [2, n]: ||phi||_0, ||g||_0
    mask_ptr,  # uint8 [total]
    lr_ptr,  # fp32 [] (for MASK_MODE == 0 and ONE_PASS)
    prev_ptr,  # fp32 [n]: previous multiplier, 0 = exact step (only for ONE_PASS)
    beta1,
    beta2,
    eps,
    weight_decay,
    P_DTYPE: tl.constexpr,
    MASK_MODE: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    ONE_PASS: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.load(chunk_start_ptr + pid)
    p_ptr = tl.load(table_ptr + t).to(tl.pointer_type(P_DTYPE))
    g_ptr = tl.load(table_ptr + n_tensors + t).to(tl.pointer_type(P_DTYPE))
    m_ptr = tl.load(table_ptr + 2 * n_tensors + t).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(table_ptr + 3 * n_tensors + t).to(tl.pointer_type(tl.float32))
    numel = tl.load(table_ptr + 4 * n_tensors + t)
    mask_off = tl.load(table_ptr + 5 * n_tensors + t)
    bc1 = tl.load(bc_ptr + t)
    bc2_sqrt = tl.load(bc_ptr + n_tensors + t)
    if ONE_PASS:
        lr = tl.load(lr_ptr)
        prev = tl.load(prev_ptr + t)
        reuse = prev > 0
        decay = 1 - lr * weight_decay
        step_size = lr * prev
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    kept = tl.zeros((BLOCK,), dtype=tl.float32)
    count = tl.zeros((BLOCK,), dtype=tl.int32)
    active = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        inb = offs < numel
        g = tl.load(g_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        if MAXIMIZE:
            g = -g
        m = tl.load(m_ptr + offs, mask=inb, other=0.0)
        v = tl.load(v_ptr + offs, mask=inb, other=0.0)
        phi = g * m > 0  # MASK_ASYNC: the momentum before this step's update
        m = m + (1 - beta1) * (g - m)  # torch.lerp for weights < 0.5
        v = v * beta2 + (1 - beta2) * (g * g)
        tl.store(m_ptr + offs, m, mask=inb)
        tl.store(v_ptr + offs, v, mask=inb)
        u = m / (tl.sqrt(v) / bc2_sqrt + eps) / bc1
        if MASK_MODE == 0:
            lr = tl.load(lr_ptr)
            p = tl.load(p_ptr + offs, mask=inb, other=0.0).to(tl.float32)
            p = p * (1 - lr * weight_decay) - lr * u
            tl.store(p_ptr + offs, _to_param_dtype(p, P_DTYPE), mask=inb)
        else:
            if MASK_MODE == 2:
                phi = g * m > 0
            phi = phi & inb
            if ONE_PASS:
                # The update with the previous multiplier, or the mask for pass 2. (A where,
                # not `inb & reuse`: the interpreter cannot broadcast a bool scalar in `&`.)
                upd = tl.where(reuse, inb, False)
                p = tl.load(p_ptr + offs, mask=upd, other=0.0).to(tl.float32)
                p = p * decay - step_size * tl.where(phi, u, 0.0)
                tl.store(p_ptr + offs, _to_param_dtype(p, P_DTYPE), mask=upd)
                tl.store(
                    mask_ptr + mask_off + offs, phi.to(tl.uint8), mask=tl.where(reuse, False, inb)
                )
            else:
                tl.store(mask_ptr + mask_off + offs, phi.to(tl.uint8), mask=inb)
            u_sq = tl.where(inb, u * u, 0.0)
            total += u_sq
            kept += tl.where(phi, u_sq, 0.0)
            count += phi.to(tl.int32)
            active += tl.where(g != 0, 1, 0)  # g is 0 out of bounds (`other`)
    if MASK_MODE != 0:
        tl.atomic_add(sums_ptr + t, tl.sum(total, axis=0))
        tl.atomic_add(sums_ptr + n_tensors + t, tl.sum(kept, axis=0))
        tl.atomic_add(nnz_ptr + t, tl.sum(count, axis=0))
        tl.atomic_add(nnz_ptr + n_tensors + t, tl.sum(active, axis=0))


def _apply_kernel(
    table_ptr,
    n_tensors,
    chunk_tensor_ptr,
    chunk_start_ptr,
    bc_ptr,
    coef_ptr,  # fp32 [n]: d/(nnz+1) * alpha from masking.compensation
    mask_ptr,
    lr_ptr,
    prev_ptr,  # fp32 [n] (only for ONE_PASS): tensors with prev > 0 are already updated
    eps,
    weight_decay,
    P_DTYPE: tl.constexpr,
    ONE_PASS: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.load(chunk_start_ptr + pid)
    p_ptr = tl.load(table_ptr + t).to(tl.pointer_type(P_DTYPE))
    m_ptr = tl.load(table_ptr + 2 * n_tensors + t).to(tl.pointer_type(tl.float32))
    v_ptr = tl.load(table_ptr + 3 * n_tensors + t).to(tl.pointer_type(tl.float32))
    numel = tl.load(table_ptr + 4 * n_tensors + t)
    mask_off = tl.load(table_ptr + 5 * n_tensors + t)
    bc1 = tl.load(bc_ptr + t)
    bc2_sqrt = tl.load(bc_ptr + n_tensors + t)
    lr = tl.load(lr_ptr)
    step_size = lr * tl.load(coef_ptr + t)
    decay = 1 - lr * weight_decay
    if ONE_PASS:
        exact_step = tl.load(prev_ptr + t) <= 0  # else already updated in pass 1
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        inb = offs < numel
        if ONE_PASS:
            inb = tl.where(exact_step, inb, False)
        p = tl.load(p_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=inb, other=0.0)
        v = tl.load(v_ptr + offs, mask=inb, other=1.0)
        phi = tl.load(mask_ptr + mask_off + offs, mask=inb, other=0) != 0
        u = m / (tl.sqrt(v) / bc2_sqrt + eps) / bc1
        p = p * decay - step_size * tl.where(phi, u, 0.0)
        tl.store(p_ptr + offs, _to_param_dtype(p, P_DTYPE), mask=inb)


_kernels: dict[tuple[str, bool], object] = {}


def _kernel(name: str, interpret: bool):
    key = (name, interpret)
    if key not in _kernels:
        fn = {"moments": _moments_kernel, "apply": _apply_kernel}[name]
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction

            # tl.sum and friends are themselves @triton.jit functions, made interpretable
            # only when TRITON_INTERPRET=1 was set as triton was first imported.
            if not isinstance(tl.standard._sum_combine, InterpretedFunction):
                raise RuntimeError(
                    "fused='triton' on CPU tensors runs the Triton interpreter, which needs "
                    "TRITON_INTERPRET=1 in the environment before triton is first imported "
                    "(it is for testing; use fused='compile' for a fast CPU step)"
                )
            _kernels[key] = InterpretedFunction(fn)
        else:
            _kernels[key] = triton.jit(fn)
    return _kernels[key]


def _tl_dtype(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[
        dtype
    ]


_chunk_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _chunks(numels: tuple[int, ...], chunk: int, device: torch.device) -> tuple[Tensor, Tensor]:
    key = (numels, chunk, device)
    if key not in _chunk_cache:
        tensor_idx: list[int] = []
        starts: list[int] = []
        for i, n in enumerate(numels):
            for s in range(0, n, chunk):
                tensor_idx.append(i)
                starts.append(s)
        if len(_chunk_cache) > 16:
            _chunk_cache.clear()
        _chunk_cache[key] = (
            torch.tensor(tensor_idx, dtype=torch.int32).to(device),
            torch.tensor(starts, dtype=torch.int64).to(device),
        )
    return _chunk_cache[key]


def triton_alphaadam(
    bucket: LocalBucket,
    hp: AdamHParams,
    cfg: MaskConfig,
    *,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """Same arguments and results as ``reference_paths.single_tensor_alphaadam``."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, (p, g, m) in enumerate(zip(bucket.params, bucket.grads, bucket.exp_avgs)):
        if m.dtype != torch.float32:
            raise ValueError(
                f"fused='triton' keeps float32 moments; got a {p.dtype} parameter with "
                f"{m.dtype} state (use fused='compile' or fused=False)"
            )
        for name, t in (("param", p), ("grad", g), ("exp_avg", m)):
            if not t.is_contiguous():
                raise ValueError(
                    f"fused='triton' needs contiguous tensors; got a non-contiguous {name} of "
                    f"shape {tuple(t.shape)} (use fused='compile' or fused=False)"
                )
        if g.dtype != p.dtype:
            raise ValueError(
                f"fused='triton' needs gradients in the parameter dtype; got {g.dtype} "
                f"for a {p.dtype} parameter"
            )
        groups.setdefault((p.device, p.dtype), []).append(i)
    lr_by_device: dict[torch.device, Tensor] = {}
    # Bucket order is the same on every rank, so the collectives below line up.
    for (device, p_dtype), idx in groups.items():
        if device not in lr_by_device:
            lr_by_device[device] = lr_tensor(hp.lr, device)
        _step_group(bucket.subset(idx), hp, cfg, lr_by_device[device], p_dtype)


def _step_group(
    bucket: LocalBucket, hp: AdamHParams, cfg: MaskConfig, lr: Tensor, p_dtype: torch.dtype
) -> None:
    """One (device, parameter dtype) group: pass 1, the coefficients, pass 2."""
    params, steps, stats = bucket.params, bucket.steps, bucket.stats
    device = params[0].device
    interpret = device.type != "cuda"
    block, chunk = (INTERPRET_BLOCK, INTERPRET_CHUNK) if interpret else (BLOCK, CHUNK)
    n = len(params)
    local_numels = [p.numel() for p in params]

    torch._foreach_add_(steps, 1.0)
    if hp.bias_correction:
        bc1, bc2_sqrt = bias_corrections(torch.stack(steps), hp.beta1, hp.beta2, torch.float32)
        bc = torch.stack([bc1, bc2_sqrt])
    else:
        bc = torch.ones(2, n, dtype=torch.float32, device=device)

    mask_offsets = [0] * n
    total = 0
    for i, k in enumerate(local_numels):
        mask_offsets[i] = total
        total += k
    table = torch.tensor(
        [
            [p.data_ptr() for p in params],
            [g.data_ptr() for g in bucket.grads],
            [m.data_ptr() for m in bucket.exp_avgs],
            [v.data_ptr() for v in bucket.exp_avg_sqs],
            local_numels,
            mask_offsets,
        ],
        dtype=torch.int64,
    ).to(device, non_blocking=True)
    chunk_tensor, chunk_start = _chunks(tuple(local_numels), chunk, device)
    n_chunks = chunk_tensor.numel()

    mask_code = _MASK_CODES[cfg.mask]
    one_pass = bucket.previous_scales is not None and mask_code != MASK_NONE
    prev = torch.stack(bucket.previous_scales).float() if one_pass else lr  # lr: an unused pointer
    sums = torch.zeros(2, n, dtype=torch.float32, device=device)
    nnz = torch.zeros(2, n, dtype=torch.int32, device=device)
    mask = torch.empty(total if mask_code else 0, dtype=torch.uint8, device=device)
    tl_dtype = _tl_dtype(p_dtype)
    if n_chunks:
        _kernel("moments", interpret)[(n_chunks,)](
            table, n, chunk_tensor, chunk_start, bc, sums, nnz, mask, lr, prev,
            hp.beta1, hp.beta2, hp.eps, hp.weight_decay,
            P_DTYPE=tl_dtype, MASK_MODE=mask_code, MAXIMIZE=hp.maximize, ONE_PASS=one_pass,
            BLOCK=block, CHUNK=chunk,
        )  # fmt: skip
    if not mask_code:
        return

    counts = nnz.to(torch.float32)
    if bucket.reduce_sums is not None:
        reduced = bucket.reduce_sums(torch.cat([sums.double(), counts.double()]))
        sums, counts = reduced[:2].float(), reduced[2:].float()
    numel_t = torch.tensor(bucket.numels, dtype=torch.float32).to(device, non_blocking=True)
    coef, alpha, density, grad_density = compensation(
        sums[0], sums[1], counts[0], numel_t, cfg, counts[1]
    )
    for j, values in enumerate((alpha, density, grad_density)):
        torch._foreach_copy_([s[j] for s in stats], list(values.unbind(0)))
    if n_chunks:
        _kernel("apply", interpret)[(n_chunks,)](
            table, n, chunk_tensor, chunk_start, bc, coef.contiguous(), mask, lr, prev,
            hp.eps, hp.weight_decay,
            P_DTYPE=tl_dtype, ONE_PASS=one_pass, BLOCK=block, CHUNK=chunk,
        )  # fmt: skip
