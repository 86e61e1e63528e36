"""The masking framework shared by every AlphaAdam-style optimizer.

AlphaAdam's contribution is independent of Adam itself: given a momentum optimizer's
update direction ``u`` for one parameter tensor, keep only the coordinates where the
gradient agrees in sign with a reference momentum, and restore the step's size with

* the Cautious-style rescale ``d / (||phi||_0 + 1)`` (Algorithm 1's ``eta^``), and
* the per-tensor compensation ``alpha = ||u||^2 / ||phi * u||^2`` clipped at ``alpha_max``.

Optimizers (AlphaAdam, AlphaLion, AlphaSGD) compute their own direction and momentum and
call :func:`mask_and_compensate` (one tensor) or :func:`foreach_mask_and_compensate`
(a list of tensors with ``torch._foreach_*`` kernels). Both return the masked, compensated
direction (``lr`` not yet applied) together with the per-tensor alpha and mask density as
device tensors, so that nothing here forces a host synchronisation. The fused AlphaAdam
steps compute the sums in their own passes and call :func:`compensation`, the formula both
functions use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .sharding import ReduceSums, reduce_stacked

MASK_CHOICES = ("async", "sync", "none")
ALPHA_CHOICES = ("ratio", "sqrt_ratio", "none")
# True: Algorithm 1's d / (nnz + 1), d every element of the tensor; False: no rescale;
# "active" (an extension): d counts only the elements whose gradient is nonzero this step.
RESCALE_CHOICES = (True, False, "active")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"Invalid {name}={value!r}; valid choices are {', '.join(choices)}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class MaskConfig:
    """How the update of one tensor is masked and compensated.

    mask:
        ``"async"``: ``phi = 1[g_t * m_{t-1} > 0]`` (AlphaAdam, Algorithm 1);
        ``"sync"``: ``phi = 1[g_t * m_t > 0]`` with the updated momentum (Cautious);
        ``"none"``: every coordinate is updated (plain optimizer).
    alpha:
        ``"ratio"``: ``||u||^2 / ||phi u||^2`` (Algorithm 1); ``"sqrt_ratio"``: its square root
        (Section 3.2.2); ``"none"``: 1.
    alpha_max:
        Upper clip of alpha (Appendix F.4 uses 2).
    rescale:
        ``True``: multiply the step by ``d / (||phi||_0 + 1)`` as Algorithm 1's ``eta^`` does
        (``d`` = the tensor's element count); ``False``: no rescale; ``"active"`` (an
        extension beyond the paper, docs/optimizer.md): ``d`` counts only the elements whose
        gradient is nonzero this step, ``d_active / (||phi||_0 + 1)``. A zero gradient never
        passes the strict mask, so where only some rows of a tensor get a gradient (an
        embedding sees only the batch's tokens) the paper's ``d`` counts rows that could never
        be kept, and the step on the kept rows grows by ``d / d_active``. On a dense gradient
        ``"active"`` is the paper's rescale exactly.
    """

    mask: str = "async"
    alpha: str = "ratio"
    alpha_max: float = 2.0
    rescale: bool = True

    def __post_init__(self) -> None:
        _check_choice("mask", self.mask, MASK_CHOICES)
        _check_choice("alpha", self.alpha, ALPHA_CHOICES)
        if not (isinstance(self.rescale, bool) or self.rescale == "active"):
            raise ValueError(
                f"Invalid rescale={self.rescale!r}; valid choices are True, False, 'active'"
            )
        if not (isinstance(self.alpha_max, (int, float)) and self.alpha_max >= 1.0):
            raise ValueError(
                f"Invalid alpha_max={self.alpha_max!r}; it must be a number >= 1 "
                "(alpha = ||u||^2/||phi u||^2 is never below 1)"
            )

    @property
    def active(self) -> bool:
        return self.mask != "none"

    @classmethod
    def from_group(cls, group: dict) -> MaskConfig:
        return cls(group["mask"], group["alpha"], group["alpha_max"], group["rescale"])


def alpha_from_sums(total_sq: Tensor, kept_sq: Tensor, kind: str, alpha_max: float) -> Tensor:
    """``clip(total_sq / kept_sq, max=alpha_max)`` (or its root), elementwise.

    An empty mask (``kept_sq == 0``) updates nothing, so any alpha is harmless there; we
    report ``alpha_max``, the limit of the clipped ratio as the kept mass goes to zero, and
    never divide by zero (no NaN/inf even when the whole update is zero).
    """
    if kind == "none":
        return torch.ones_like(total_sq)
    kept_any = kept_sq > 0
    ratio = total_sq / torch.where(kept_any, kept_sq, torch.ones_like(kept_sq))
    if kind == "sqrt_ratio":
        ratio = ratio.sqrt()
    # The empty-mask value goes in after the root, so both kinds report alpha_max there.
    ratio = torch.where(kept_any, ratio, torch.full_like(ratio, alpha_max))
    return ratio.clamp(max=alpha_max)


def compensation(
    total_sq: Tensor | None,
    kept_sq: Tensor | None,
    nnz: Tensor,
    numels: int | Tensor,
    cfg: MaskConfig,
    active: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """A masked step's multiplier ``d / (nnz + 1) * alpha``, ``alpha``, the mask density and
    the gradient density.

    From complete sums: ``total_sq = ||u||^2``, ``kept_sq = ||phi u||^2``, ``nnz =
    ||phi||_0`` and ``active = ||g||_0`` (the elements with a nonzero gradient) of tensors of
    ``numels = d`` elements (elementwise over tensors; 0-d for one tensor). ``total_sq`` /
    ``kept_sq`` may be ``None`` when ``cfg.alpha == "none"``; ``active`` may be ``None``
    unless ``cfg.rescale == "active"`` (the gradient density is then ``None`` too). The
    rescale is Algorithm 1's ``eta^ / eta`` (``d / (nnz + 1)``), ``active / (nnz + 1)`` with
    ``rescale="active"``, 1 without a rescale; alpha is :func:`alpha_from_sums`, 1 for
    ``alpha="none"``.

    The one home of this formula on the Python side: the single-tensor, foreach, compiled and
    Triton paths all call it. The C++ kernel keeps a copy (``coefficients`` in
    ``csrc/alphaadam_cpu.cpp``) that ``tests/test_fused_cpu.py`` checks against this one.
    """
    if total_sq is not None:
        nnz = nnz.to(total_sq.dtype)
    if isinstance(numels, Tensor):
        numels = numels.to(nnz.dtype)
        at_least_one = numels.clamp(min=1)
    else:
        at_least_one = max(numels, 1)
    if active is not None:
        active = active.to(nnz.dtype)
    if cfg.rescale == "active":
        if active is None:
            raise ValueError("rescale='active' needs the count of nonzero gradient elements")
        # Computed as the paper's d / (nnz + 1) is: a Python d divides as reciprocal times d
        # (torch's __rtruediv__), a tensor d by true division. So on a dense gradient, where
        # active == d, the two rescales agree bit for bit.
        if isinstance(numels, Tensor):
            scale = active / (nnz + 1)
        else:
            scale = (nnz + 1).reciprocal() * active
    elif cfg.rescale:
        scale = numels / (nnz + 1)
    else:
        scale = torch.ones_like(nnz)
    if total_sq is None or cfg.alpha == "none":
        alpha = torch.ones_like(nnz)
    else:
        alpha = alpha_from_sums(total_sq, kept_sq, cfg.alpha, cfg.alpha_max)
    grad_density = None if active is None else active / at_least_one
    return scale * alpha, alpha, nnz / at_least_one, grad_density


def step_scale(
    alpha: Tensor,
    density: Tensor,
    numel: int | Tensor,
    rescale: bool | str,
    grad_density: Tensor | None = None,
) -> Tensor:
    """The multiplier of the lr that a masked step applied: ``alpha * d / (nnz + 1)``.

    Rebuilt from a tensor's stored ``alpha`` and ``mask_density`` (``nnz = density * d``,
    rounded back to the integer count it was computed from), in float64; with
    ``rescale="active"``, ``d`` is the active count rebuilt from ``grad_density`` the same
    way. An empty mask (step 1 of the asynchronous mask, where ``m_0 = 0``) moved nothing,
    so its effective multiplier is 0, not the formal ``alpha_max * d``. Elementwise:
    ``alpha``, ``density``, ``grad_density`` and ``numel`` may be 1-d tensors of several
    tensors' values.

    The one-pass step (``AlphaAdam(one_pass=True)``) applies this multiplier of the previous
    step, and takes the exact step where it is 0.
    """
    exact = torch.float32 if alpha.device.type == "mps" else torch.float64
    if isinstance(numel, Tensor):
        numel = numel.to(exact)
    nnz = torch.round(density.to(exact) * numel)
    scale = alpha.to(exact)
    if rescale == "active":
        if grad_density is None:
            raise ValueError("rescale='active' needs the stored grad_density")
        scale = scale * (torch.round(grad_density.to(exact) * numel) / (nnz + 1))
    elif rescale:
        scale = scale * (numel / (nnz + 1))
    return torch.where(nnz > 0, scale, torch.zeros_like(scale))


def nonzero_count(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """``||g||_0``: how many elements of a tensor's gradient are nonzero, as ``dtype``."""
    return torch.count_nonzero(grad).to(dtype)


def agreement_mask(grad: Tensor, reference: Tensor) -> Tensor:
    """``1[g * m > 0]`` as a 0/1 tensor in the dtype of ``grad``."""
    return (grad * reference > 0).to(grad.dtype)


def mask_and_compensate(
    update: Tensor,
    mask: Tensor | None,
    cfg: MaskConfig,
    grad: Tensor,
    *,
    numel: int | None = None,
    reduce_sums: ReduceSums | None = None,
    previous_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Mask one tensor's direction in place and scale it by ``rescale * alpha``.

    ``mask`` is the 0/1 agreement mask (``None`` when ``cfg.mask == "none"``); ``grad`` the
    step's gradient, whose nonzero count is ``rescale="active"``'s ``d`` and, for every
    rescale, the reported gradient density.
    Returns ``(update, alpha, density, grad_density)``; the last three are 0-d device tensors
    (``None`` without a mask).

    For a shard of a larger tensor (FSDP2), ``numel`` is the whole tensor's element count and
    ``reduce_sums`` sums the shard-local partial sums over all shards (see ``sharding.py``).

    ``previous_scale`` (one-pass AlphaAdam): a 0-d multiplier that replaces this step's
    ``rescale * alpha`` where it is positive (chosen on the device, no host sync); alpha and
    the densities returned are still this step's.
    """
    if mask is None:
        return update, None, None, None
    numel = update.numel() if numel is None else numel
    total_sq = update.square().sum() if cfg.alpha != "none" else None
    update.mul_(mask)
    nnz = mask.sum()
    active = nonzero_count(grad, nnz.dtype)
    kept_sq = update.square().sum() if total_sq is not None else None
    total_sq, kept_sq, nnz, active = reduce_stacked(reduce_sums, total_sq, kept_sq, nnz, active)
    scale_alpha, alpha, density, grad_density = compensation(
        total_sq, kept_sq, nnz, numel, cfg, active
    )
    update.mul_(previous_where_usable(scale_alpha, previous_scale))
    return update, alpha, density, grad_density


def foreach_mask_and_compensate(
    updates: list[Tensor],
    masks: list[Tensor] | None,
    cfg: MaskConfig,
    grads: list[Tensor],
    *,
    numels: list[int] | None = None,
    reduce_sums: ReduceSums | None = None,
    previous_scales: Tensor | None = None,
) -> tuple[list[Tensor], Tensor | None, Tensor | None, Tensor | None]:
    """Multi-tensor version of :func:`mask_and_compensate` (same math, same dtype rules).

    All tensors must share one device and dtype (the caller groups them). Returns the
    updates and three 1-d tensors holding each tensor's alpha, mask density and gradient
    density. ``numels``/``reduce_sums``: as in :func:`mask_and_compensate`, for shards;
    ``previous_scales``: a 1-d tensor, one ``previous_scale`` per tensor.
    """
    if masks is None or not updates:
        return updates, None, None, None
    numels = torch.tensor(
        [u.numel() for u in updates] if numels is None else numels,
        dtype=updates[0].dtype,
        device=updates[0].device,
    )
    total_sq = None
    if cfg.alpha != "none":
        total_sq = torch.stack(torch._foreach_norm(updates)).square()
    torch._foreach_mul_(updates, masks)
    # The L1 norm of a 0/1 mask is its number of ones, the L0 norm of a gradient its nonzero
    # count: one kernel each for every tensor.
    nnz = torch.stack(torch._foreach_norm(masks, 1))
    active = torch.stack(torch._foreach_norm(grads, 0)).to(nnz.dtype)
    kept_sq = None
    if total_sq is not None:
        kept_sq = torch.stack(torch._foreach_norm(updates)).square()
    total_sq, kept_sq, nnz, active = reduce_stacked(reduce_sums, total_sq, kept_sq, nnz, active)
    scale_alphas, alphas, densities, grad_densities = compensation(
        total_sq, kept_sq, nnz, numels, cfg, active
    )
    coefficients = previous_where_usable(scale_alphas, previous_scales)
    torch._foreach_mul_(updates, list(coefficients.unbind(0)))
    return updates, alphas, densities, grad_densities


def previous_where_usable(coefficient: Tensor, previous: Tensor | None) -> Tensor:
    """This step's coefficient, or the previous step's where it is usable (positive): the
    multiplier a one-pass step applies (``previous`` is ``None`` for the exact step)."""
    if previous is None:
        return coefficient
    return torch.where(previous > 0, previous.to(coefficient.dtype), coefficient)


def foreach_agreement_masks(grads: list[Tensor], references: list[Tensor]) -> list[Tensor]:
    """``1[g * m > 0]`` for every pair, as 0/1 tensors, with foreach kernels."""
    masks = torch._foreach_mul(grads, references)
    # sign() maps positive products to 1 and the rest to 0 or -1; clamping -1 away leaves
    # exactly the strict ``> 0`` test of Algorithm 1.
    torch._foreach_sign_(masks)
    torch._foreach_clamp_min_(masks, 0.0)
    return masks


# Applying a masked direction with a float or tensor lr (AlphaLion, AlphaSGD).
def add_scaled_(param: Tensor, update: Tensor, scale: float | Tensor) -> None:
    """``param += scale * update`` with torch's own rounding for float scales (bitwise equal
    to torch.optim), and a tensor product for tensor learning rates."""
    if isinstance(scale, Tensor):
        param.add_(update * scale)
    else:
        param.add_(update, alpha=scale)


def foreach_add_scaled_(params: list[Tensor], updates: list[Tensor], scale) -> None:
    """:func:`add_scaled_` for lists of tensors."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(params, torch._foreach_mul(updates, scale.to(params[0].device)))
    else:
        torch._foreach_add_(params, updates, alpha=scale)
