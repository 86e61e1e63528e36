"""AlphaAdam (Chang, Li & Yuan): Adam with an asynchronous mask and dynamic per-tensor alpha.

Algorithm 1 of the paper, per parameter tensor of ``d`` elements::

    g_t     = grad L(theta_t)
    d_t     = g_t * h_{t-1}                       # momentum BEFORE this step's update
    h_t     = b1 h_{t-1} + (1 - b1) g_t
    v_t     = b2 v_{t-1} + (1 - b2) g_t^2
    u_t     = h_t / (sqrt(v_t) + eps)
    phi_t   = 1[d_t > 0]
    alpha_t = min(||u_t||^2 / ||phi_t * u_t||^2, alpha_max)
    eta^    = eta * d / (||phi_t||_0 + 1)
    theta   = theta - eta^ * alpha_t * phi_t * u_t

Choices the paper leaves open, and what this implementation does (docs/optimizer.md):

* ``bias_correction=True`` (default): ``h_t`` and ``v_t`` are bias-corrected as in AdamW, so
  the ``mask="none"`` preset is exactly AdamW. ``False`` gives the literal pseudo-code.
* Step 1: ``h_0 = 0`` makes the asynchronous mask empty, so the first step moves no
  coordinate (only weight decay acts). Alpha is then reported as ``alpha_max``; no NaN/inf.
* Alpha without root, clipped at 2, and both ``eta^`` and alpha applied (as printed).
* Weight decay is decoupled (AdamW) and acts on every coordinate, masked or not.
* Alpha is per parameter tensor.

``one_pass=True`` is an extension, not the paper's algorithm (docs/optimizer.md): a tensor's
update uses its *previous* step's alpha and mask count, ``theta -= lr * alpha_{t-1} *
d/(nnz_{t-1}+1) * phi_t * u_t``, so the fused step needs one pass over memory instead of two;
the pass also computes this step's sums, stored for the next step. A tensor takes the exact
step whenever its previous statistics are unusable: at its first step and after a step whose
mask was empty (``nnz_{t-1} = 0``; every asynchronous step 1 is, since ``h_0 = 0``, and its
count would scale the step by ``d/1``).

State per parameter (identical for the single-tensor and foreach paths, so a checkpoint
moves between them): ``step`` (0-d float32), ``exp_avg`` and ``exp_avg_sq`` (float32 for
fp16/bf16 parameters, else the parameter's dtype), and, when a mask is active, the last
step's ``alpha`` and ``mask_density`` (0-d tensors, kept on the device; the density starts at
0, no mask counted yet), and with ``one_pass`` the ``reused_scale``: the previous step's
multiplier the last update applied, 0 if it took the exact step.
``load_state_dict`` keeps this layout (torch's default would cast fp32 moments to a half parameter's dtype).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .fused import check_fused_choice, select_fused_impl
from .masking import (
    MaskConfig,
    agreement_mask,
    foreach_agreement_masks,
    foreach_mask_and_compensate,
    mask_and_compensate,
    step_scale,
)
from .sharding import ReduceSums, local_buckets

__all__ = ["AlphaAdam", "PRESETS", "alphaadam_preset"]

LOW_PRECISION = (torch.float16, torch.bfloat16)
# Group options that choose a code path, not the math: load_state_dict keeps this
# optimizer's values rather than the checkpoint's.
IMPLEMENTATION_KEYS = ("foreach", "fused")
# The per-tensor diagnostics of a masked step (mask_statistics), in this order.
STAT_KEYS = ("alpha", "mask_density", "step_scale")

# The Table 3 ablation family: one class, four settings.
PRESETS: dict[str, dict[str, Any]] = {
    # Plain AdamW: no mask, no compensation. Matches torch.optim.AdamW.
    "adamw": {"mask": "none", "alpha": "none", "rescale": False},
    # AdamW + synchronous mask (Cautious AdamW, the paper's CAdamW baseline).
    "adamw_sm": {"mask": "sync", "alpha": "none", "rescale": True},
    # AdamW + asynchronous mask, no dynamic alpha.
    "adamw_am": {"mask": "async", "alpha": "none", "rescale": True},
    # AlphaAdam: asynchronous mask + dynamic alpha (Algorithm 1).
    "alphaadam": {"mask": "async", "alpha": "ratio", "rescale": True},
}


def _state_dtype(param: Tensor) -> torch.dtype:
    # Moments of half-precision parameters are kept in fp32: v_t underflows in fp16 and
    # bf16's 8-bit mantissa cannot accumulate (1 - b2) g^2 increments.
    return torch.float32 if param.dtype in LOW_PRECISION else param.dtype


def _bias_corrections(
    steps: Tensor, beta1: float, beta2: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``1 - b1^t`` and ``sqrt(1 - b2^t)`` for device-side step counts (no host sync).

    Computed in float64 where the device has it, then rounded once to ``dtype``: in float32
    ``0.999`` itself is off by 1.3e-8, which ``1 - b2^t`` amplifies to a 1e-5 relative error
    of the step at t = 1 (torch.optim.AdamW computes these in Python floats).
    """
    exact = torch.float32 if steps.device.type == "mps" else torch.float64
    t = steps.to(exact)
    bc1 = 1 - torch.pow(beta1, t)
    bc2_sqrt = (1 - torch.pow(beta2, t)).sqrt()
    return bc1.to(dtype), bc2_sqrt.to(dtype)


def _previous_step_scales(
    stats: list[tuple[Tensor | None, Tensor | None]], numels: list[int], rescale: bool
) -> list[Tensor]:
    """One-pass: per tensor, the multiplier of the lr its previous step's statistics give.

    ``alpha_{t-1} * d / (nnz_{t-1} + 1)`` as a 0-d tensor on the tensor's device, and 0 where
    the statistics are unusable (no step yet, or an empty previous mask), which tells every
    path to take the exact step. Read from the stored alpha and density before the step
    overwrites them, a few kernels per device for all tensors; no host sync.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, (alpha, _) in enumerate(stats):
        by_device.setdefault(alpha.device, []).append(i)
    previous: list[Tensor | None] = [None] * len(stats)
    for device, idx in by_device.items():
        alphas = torch.stack([stats[i][0] for i in idx])
        densities = torch.stack([stats[i][1] for i in idx])
        counts = torch.tensor([numels[i] for i in idx], dtype=torch.float64)
        scales = step_scale(alphas, densities, counts.to(device, non_blocking=True), rescale)
        for i, scale in zip(idx, scales.unbind(0)):
            previous[i] = scale
    return previous  # type: ignore[return-value]


class AlphaAdam(Optimizer):
    """AlphaAdam, usable wherever ``torch.optim.AdamW`` is.

    Args:
        params: iterable of parameters or param-group dicts.
        lr: learning rate (float or 0-d tensor).
        betas: ``(b1, b2)`` for the first and second moments.
        eps: added to ``sqrt(v_t)``.
        weight_decay: decoupled weight decay, applied to every coordinate.
        mask: ``"async"`` (default), ``"sync"`` or ``"none"``.
        alpha: ``"ratio"`` (default), ``"sqrt_ratio"`` or ``"none"``.
        alpha_max: clip for alpha (default 2, Appendix F.4).
        rescale: apply Algorithm 1's ``d / (||phi||_0 + 1)`` step rescale (default True).
        bias_correction: Adam bias correction of both moments (default True).
        maximize: maximise the objective instead.
        one_pass: apply the previous step's alpha and mask count (an extension beyond the
            paper; see the module docstring), so the fused step is one pass (default False).
        foreach: use the multi-tensor path; ``None`` picks it for CUDA parameters.
        fused: the fused step (docs/fused.md): ``True`` picks Triton kernels for CUDA
            parameters and a C++ step (built when the optimizer is) for CPU ones;
            ``"triton"``, ``"cpu"`` or ``"compile"`` (``torch.compile``, any device) force
            one. ``None`` (default) runs the foreach/single-tensor paths: Triton becomes the
            CUDA default only once it has passed ``benchmarks/gpu_check.sh`` on real
            hardware (docs/fused.md).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        mask: str = "async",
        alpha: str = "ratio",
        alpha_max: float = 2.0,
        rescale: bool = True,
        bias_correction: bool = True,
        maximize: bool = False,
        one_pass: bool = False,
        foreach: bool | None = None,
        fused: bool | str | None = None,
    ) -> None:
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError(f"Invalid lr: a tensor lr must have one element, got {lr.shape}")
        elif not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid eps: {eps} (must be >= 0)")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Invalid betas: {betas} (two values in [0, 1) expected)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
        check_fused_choice(fused, foreach)
        MaskConfig(mask, alpha, alpha_max, rescale)  # validates, with the valid choices
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            mask=mask,
            alpha=alpha,
            alpha_max=float(alpha_max),
            rescale=rescale,
            bias_correction=bias_correction,
            maximize=maximize,
            one_pass=one_pass,
            foreach=foreach,
            fused=fused,
        )
        super().__init__(params, defaults)
        if any(
            g["fused"] in (True, "cpu") and any(p.device.type == "cpu" for p in g["params"])
            for g in self.param_groups
        ):
            # Built or loaded now, not in the first step(): a training run's clock starts
            # after construction, and a missing compiler fails before any training.
            from .fused_cpu import load_extension

            load_extension()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Per-group overrides of the mask options are validated like the constructor's,
        # before the group is added (the constructor's groups come through here too).
        group = {**self.defaults, **param_group}
        MaskConfig.from_group(group)
        if not isinstance(group["one_pass"], bool):
            raise ValueError(
                f"Invalid one_pass={group['one_pass']!r}; valid choices are True, False"
            )
        super().add_param_group(param_group)

    @classmethod
    def preset(cls, name: str, params, **kwargs) -> AlphaAdam:
        """Build one of the Table 3 family by name (see :data:`PRESETS`)."""
        return alphaadam_preset(name, params, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Hyper-parameters come from the checkpoint (as in torch), but which code path runs
        # them stays this optimizer's: every path computes the same step and keeps the same
        # state, and a run resumed with `optimizer.fused=true` must get the fused step, not
        # the path the checkpoint was written with.
        paths = [{key: g[key] for key in IMPLEMENTATION_KEYS} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, path in zip(self.param_groups, paths):
            group.update(path)
        # torch.optim casts every floating state tensor to its parameter's dtype (rounding the
        # fp32 moments of fp16/bf16 parameters) and leaves ``step`` on the device it was saved
        # from. Rebuild the layout _init_group creates from the checkpoint's own values.
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if not (isinstance(value, Tensor) and value.is_floating_point()):
                    continue
                dtype = torch.float32 if key == "step" else _state_dtype(p)
                loaded = self.state[p][key]
                if loaded.dtype != dtype or loaded.device != p.device:
                    self.state[p][key] = value.to(device=p.device, dtype=dtype, copy=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("maximize", False)
            group.setdefault("one_pass", False)

    # ------------------------------------------------------------------ state
    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, steps, stats) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AlphaAdam does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError(
                    "AlphaAdam does not support complex parameters: the sign-agreement mask "
                    "is undefined for complex numbers (use torch.view_as_real)"
                )
            state = self.state[p]
            if len(state) == 0:
                dtype = _state_dtype(p)
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
                state["exp_avg_sq"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
            if group["mask"] != "none" and "alpha" not in state:
                dtype = state["exp_avg"].dtype
                state["alpha"] = torch.ones((), dtype=dtype, device=p.device)
                # No mask counted yet: a one-pass step takes the exact step (nnz_{t-1} = 0).
                state["mask_density"] = torch.zeros((), dtype=dtype, device=p.device)
            if group["mask"] != "none" and group["one_pass"] and "reused_scale" not in state:
                state["reused_scale"] = torch.zeros_like(state["alpha"])
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            stats.append((state.get("alpha"), state.get("mask_density")))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            exp_avgs: list[Tensor] = []
            exp_avg_sqs: list[Tensor] = []
            steps: list[Tensor] = []
            stats: list[tuple[Tensor | None, Tensor | None]] = []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps, stats)
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.is_cuda for p in params)
            impl = _multi_tensor_alphaadam if foreach else _single_tensor_alphaadam
            fused_impl = select_fused_impl(group["fused"], group["foreach"], params)
            if fused_impl is not None:
                impl = fused_impl
            beta1, beta2 = group["betas"]
            cfg = MaskConfig.from_group(group)
            previous = None
            if group["one_pass"] and cfg.active:
                numels = [p.numel() for p in params]  # a DTensor's is the whole tensor's
                previous = _previous_step_scales(stats, numels, cfg.rescale)
            for b in local_buckets(params, grads, exp_avgs, exp_avg_sqs, steps, stats):
                impl(
                    b.params,
                    b.grads,
                    b.exp_avgs,
                    b.exp_avg_sqs,
                    b.steps,
                    b.stats,
                    numels=b.numels,
                    reduce_sums=b.reduce_sums,
                    previous_scales=None if previous is None else [previous[i] for i in b.indices],
                    workspace=self._workspace(),
                    cfg=cfg,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    bias_correction=group["bias_correction"],
                    maximize=group["maximize"],
                )
            if previous is not None:
                reused = [self.state[p]["reused_scale"] for p in params]
                torch._foreach_copy_(reused, previous)
        return loss

    def _workspace(self) -> dict[str, Tensor]:
        # Scratch buffers reused by every step (the fused C++ step's masks). Not state: not
        # in state_dict, and a copy or unpickled optimizer starts with none.
        return self.__dict__.setdefault("_step_workspace", {})

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
        ``one_pass`` it is the previous step's multiplier (the exact one on a step that fell
        back to it), while ``alpha`` and ``mask_density`` are this step's.

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


def alphaadam_preset(name: str, params, **kwargs) -> AlphaAdam:
    """``AlphaAdam`` configured as one of :data:`PRESETS` (kwargs may override the rest)."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown AlphaAdam preset {name!r}; valid choices are {', '.join(PRESETS)}"
        )
    clash = set(kwargs) & set(PRESETS[name])
    if clash:
        raise ValueError(
            f"Preset {name!r} fixes {sorted(clash)}; build AlphaAdam(...) directly to change them"
        )
    return AlphaAdam(params, **PRESETS[name], **kwargs)


# ----------------------------------------------------------------------------------------
# Single-tensor path: reads like Algorithm 1.
# ----------------------------------------------------------------------------------------
def _single_tensor_alphaadam(
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
    previous_scales: list[Tensor] | None = None,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """One parameter tensor at a time.

    ``numels``/``reduce_sums``: whole-tensor element counts and the sum over shards (FSDP2,
    ``sharding.py``). ``previous_scales`` (``one_pass``): per tensor, the previous step's
    multiplier to apply instead of this step's, or 0 for the exact step; this path computes
    both and selects on the device. ``workspace``: scratch buffers the optimizer keeps
    across steps (used by the fused C++ step; not needed here).
    """
    if numels is None:
        numels = [p.numel() for p in params]
    if previous_scales is None:
        previous_scales = [None] * len(params)
    for param, grad, exp_avg, exp_avg_sq, step_t, (alpha_out, density_out), numel, prev in zip(
        params, grads, exp_avgs, exp_avg_sqs, steps, stats, numels, previous_scales
    ):
        theta = param.float() if param.dtype in LOW_PRECISION else param
        g = (-grad if maximize else grad).to(exp_avg.dtype)
        step_t += 1

        # d_t = g_t * h_{t-1}: the asynchronous mask reads the momentum before its update.
        phi = agreement_mask(g, exp_avg) if cfg.mask == "async" else None
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if cfg.mask == "sync":
            phi = agreement_mask(g, exp_avg)

        # u_t = h_t / (sqrt(v_t) + eps), with AdamW's bias correction unless disabled.
        if bias_correction:
            bc1, bc2_sqrt = _bias_corrections(step_t, beta1, beta2, exp_avg.dtype)
            u = exp_avg / ((exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)) / bc1
        else:
            u = exp_avg / exp_avg_sq.sqrt().add_(eps)

        # phi * u, scaled by d/(||phi||_0 + 1) and alpha_t.
        u, alpha, density = mask_and_compensate(
            u, phi, cfg, numel=numel, reduce_sums=reduce_sums, previous_scale=prev
        )

        if weight_decay != 0:
            theta.mul_(1 - lr * weight_decay)
        theta.sub_(u.mul_(lr))

        if theta is not param:
            param.copy_(theta)
        if alpha is not None:
            alpha_out.copy_(alpha)
            density_out.copy_(density)


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


def _multi_tensor_alphaadam(
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
    previous_scales: list[Tensor] | None = None,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """The single-tensor path's math with foreach kernels (same arguments)."""
    alphas_out = [a for a, _ in stats]
    densities_out = [d for _, d in stats]
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, steps, alphas_out, densities_out],
        with_indices=True,
    )
    for (_device, _dtype), (
        (g_params, g_grads, g_m, g_v, g_steps, g_alpha, g_density),
        indices,
    ) in _cache_sized_chunks(grouped, enabled=reduce_sums is None):
        g_numels = None if numels is None else [numels[i] for i in indices]
        g_previous = None
        if previous_scales is not None:
            g_previous = torch.stack([previous_scales[i] for i in indices])
        low_precision = g_params[0].dtype in LOW_PRECISION
        work_params = [p.float() for p in g_params] if low_precision else g_params
        state_dtype = g_m[0].dtype
        if maximize:
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
        step_scale = None
        if bias_correction:
            # Each tensor's own step (they may differ), stacked: a few kernels for all.
            bc1_all, bc2_sqrt_all = _bias_corrections(
                torch.stack(g_steps), beta1, beta2, state_dtype
            )
            torch._foreach_add_(denom, list((eps * bc2_sqrt_all).unbind(0)))
            step_scale = bc2_sqrt_all / bc1_all
        else:
            torch._foreach_add_(denom, eps)
        updates = _divide_into_denominators(g_m, denom)
        del denom

        updates, alphas, densities = foreach_mask_and_compensate(
            updates,
            masks,
            cfg,
            numels=g_numels,
            reduce_sums=reduce_sums,
            previous_scales=g_previous,
        )

        if weight_decay != 0:
            decay = 1 - lr * weight_decay
            torch._foreach_mul_(work_params, decay)
        if isinstance(lr, Tensor):
            lr = lr.to(device=updates[0].device)
        if step_scale is None:
            torch._foreach_mul_(updates, lr)
        else:
            torch._foreach_mul_(updates, list((step_scale * lr).unbind(0)))
        torch._foreach_sub_(work_params, updates)

        if low_precision:
            torch._foreach_copy_(g_params, work_params)
        if alphas is not None:
            torch._foreach_copy_(g_alpha, list(alphas.unbind(0)))
            torch._foreach_copy_(g_density, list(densities.unbind(0)))
