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
``load_state_dict`` keeps this layout (torch's default would cast fp32 moments to a half
parameter's dtype).

This module holds the class (arguments, state, the per-group step); ``step_paths.select_step``
picks the step path that does the math: ``reference_paths.py`` (single-tensor, foreach) or a
fused back end (docs/optimizer.md, "Code layout").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from .adam_math import AdamHParams, state_dtype
from .masked_optimizer import MaskedOptimizer, check_betas, check_lr, check_nonnegative
from .masking import MaskConfig, step_scale
from .sharding import local_buckets
from .step_paths import check_fused_choice, select_step

__all__ = ["AlphaAdam", "PRESETS", "alphaadam_preset"]

# Group options that choose a code path, not the math: load_state_dict keeps this
# optimizer's values rather than the checkpoint's.
IMPLEMENTATION_KEYS = ("foreach", "fused")
# The group keys an AlphaAdam state has and a torch.optim.AdamW state does not, and the
# reverse (load_state_dict converts an AdamW state).
MASK_GROUP_KEYS = ("mask", "alpha", "alpha_max", "rescale", "bias_correction", "one_pass")
ADAM_ONLY_GROUP_KEYS = ("amsgrad", "capturable", "differentiable", "decoupled_weight_decay")

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


def _previous_step_scales(
    stats: list[tuple[Tensor | None, ...]], numels: list[int], rescale: bool | str
) -> list[Tensor]:
    """One-pass: per tensor, the multiplier of the lr its previous step's statistics give.

    ``alpha_{t-1} * d / (nnz_{t-1} + 1)`` (``d`` the previous active count with
    ``rescale="active"``) as a 0-d tensor on the tensor's device, and 0 where
    the statistics are unusable (no step yet, or an empty previous mask), which tells every
    path to take the exact step. Read from the stored alpha and density before the step
    overwrites them, a few kernels per device for all tensors; no host sync.
    """
    by_device: dict[torch.device, list[int]] = {}
    for i, (alpha, *_) in enumerate(stats):
        by_device.setdefault(alpha.device, []).append(i)
    previous: list[Tensor | None] = [None] * len(stats)
    for device, idx in by_device.items():
        alphas = torch.stack([stats[i][0] for i in idx])
        densities = torch.stack([stats[i][1] for i in idx])
        grad_densities = torch.stack([stats[i][2] for i in idx])
        counts = torch.tensor([numels[i] for i in idx], dtype=torch.float64)
        scales = step_scale(
            alphas, densities, counts.to(device, non_blocking=True), rescale, grad_densities
        )
        for i, scale in zip(idx, scales.unbind(0)):
            previous[i] = scale
    return previous  # type: ignore[return-value]


class AlphaAdam(MaskedOptimizer):
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
        rescale: ``True`` (default): Algorithm 1's ``d / (||phi||_0 + 1)`` step rescale;
            ``False``: none; ``"active"`` (an extension beyond the paper, docs/optimizer.md):
            ``d`` counts only the elements with a nonzero gradient this step, for tensors such
            as embeddings whose gradient reaches only some rows.
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
        rescale: bool | str = True,
        bias_correction: bool = True,
        maximize: bool = False,
        one_pass: bool = False,
        foreach: bool | None = None,
        fused: bool | str | None = None,
    ) -> None:
        check_lr(lr)
        check_nonnegative("eps", eps)
        check_betas(betas)
        check_nonnegative("weight_decay", weight_decay)
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
        super().load_state_dict(self._from_adam_state(state_dict))
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
                dtype = torch.float32 if key == "step" else state_dtype(p)
                loaded = self.state[p][key]
                if loaded.dtype != dtype or loaded.device != p.device:
                    self.state[p][key] = value.to(device=p.device, dtype=dtype, copy=True)

    def _from_adam_state(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """An AlphaAdam state as it is; a ``torch.optim.AdamW`` (or Adam) state converted.

        AdamW's ``step``, ``exp_avg`` and ``exp_avg_sq`` are AlphaAdam's own moments, so
        they carry over. An AdamW state has no mask options: each group takes this
        optimizer's, and there is no mask history, so alpha and the mask statistics start
        as at step 1 while the mask already compares with the loaded momentum (the first
        step after loading is masked, not empty). A state that cannot be converted
        without changing the step (AMSGrad's maximum, Adam's coupled L2 decay, no Adam
        moments at all) is refused, naming what is wrong.
        """
        groups = state_dict["param_groups"]
        if all(all(key in g for key in MASK_GROUP_KEYS) for g in groups):
            return state_dict
        problems = []
        for i, g in enumerate(groups):
            if g.get("amsgrad"):
                problems.append(f"group {i} has amsgrad=True (AlphaAdam keeps no max_exp_avg_sq)")
            if g.get("decoupled_weight_decay") is False and g.get("weight_decay", 0.0) != 0:
                problems.append(
                    f"group {i} has coupled (L2) weight_decay={g['weight_decay']} as "
                    "torch.optim.Adam; AlphaAdam decays decoupled, as AdamW"
                )
        for key in ("step", "exp_avg", "exp_avg_sq"):
            lacking = [i for i, s in state_dict["state"].items() if key not in s]
            if lacking:
                have = sorted(state_dict["state"][lacking[0]])
                problems.append(
                    f"the state of parameter {lacking[0]} has no {key!r} (it has {have})"
                )
        if problems:
            missing = sorted({key for g in groups for key in MASK_GROUP_KEYS if key not in g})
            raise ValueError(
                f"AlphaAdam.load_state_dict: the state has none of AlphaAdam's group keys "
                f"{missing}, and it is not an Adam/AdamW state that can be converted: "
                + "; ".join(problems)
            )
        warnings.warn(
            "AlphaAdam.load_state_dict: converting an Adam/AdamW state (step and moments "
            "kept; mask options from this optimizer; alpha and mask statistics start fresh)",
            stacklevel=3,
        )
        converted = []
        for g, own in zip(groups, self.param_groups):
            group = {k: v for k, v in g.items() if k not in ADAM_ONLY_GROUP_KEYS}
            for key in MASK_GROUP_KEYS:
                group.setdefault(key, own[key])
            converted.append(group)
        return {"state": state_dict["state"], "param_groups": converted}

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
            self._check_param(p)
            state = self.state[p]
            if len(state) == 0:
                dtype = state_dtype(p)
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
                state["exp_avg_sq"] = torch.zeros_like(
                    p, dtype=dtype, memory_format=torch.preserve_format
                )
            if group["mask"] != "none":
                # No mask counted yet: a one-pass step takes the exact step (nnz_{t-1} = 0).
                self._init_mask_state(state, state["exp_avg"].dtype, p.device, density=0.0)
            if group["mask"] != "none" and group["one_pass"] and "reused_scale" not in state:
                state["reused_scale"] = torch.zeros_like(state["alpha"])
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            stats.append((state.get("alpha"), state.get("mask_density"), state.get("grad_density")))

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        stats: list[tuple[Tensor | None, ...]] = []
        self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps, stats)
        if not params:
            return
        path = select_step(group, params)
        hp = AdamHParams.from_group(group)
        cfg = MaskConfig.from_group(group)
        previous = None
        if group["one_pass"] and cfg.active:
            numels = [p.numel() for p in params]  # a DTensor's is the whole tensor's
            previous = _previous_step_scales(stats, numels, cfg.rescale)
        for bucket in local_buckets(
            params, grads, exp_avgs, exp_avg_sqs, steps, stats, previous_scales=previous
        ):
            path(bucket, hp, cfg, workspace=self._workspace())
        if previous is not None:
            reused = [self.state[p]["reused_scale"] for p in params]
            torch._foreach_copy_(reused, previous)

    def _workspace(self) -> dict[str, Tensor]:
        # Scratch buffers reused by every step (the fused C++ step's masks). Not state: not
        # in state_dict, and a copy or unpickled optimizer starts with none.
        return self.__dict__.setdefault("_step_workspace", {})


def alphaadam_preset(name: str, params, **kwargs) -> AlphaAdam:
    """``AlphaAdam`` configured as one of :data:`PRESETS` (kwargs may override the rest).

    A preset fixes its mask and alpha (they are what the preset is). A masked preset's
    ``rescale`` may be changed (``"active"`` or ``False``): a variant of the same method, which
    the run's config records and the tables label.
    """
    if name not in PRESETS:
        raise ValueError(
            f"Unknown AlphaAdam preset {name!r}; valid choices are {', '.join(PRESETS)}"
        )
    fixed = set(PRESETS[name])
    if PRESETS[name]["mask"] != "none":
        fixed.discard("rescale")
    clash = set(kwargs) & fixed
    if clash:
        raise ValueError(
            f"Preset {name!r} fixes {sorted(clash)}; build AlphaAdam(...) directly to change them"
        )
    return AlphaAdam(params, **{**PRESETS[name], **kwargs})
