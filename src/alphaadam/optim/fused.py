"""Choosing a fused AlphaAdam step, and the math both fused paths share.

The fused step is two passes over every tensor (docs/fused.md):

1. moments, the agreement mask (1 byte per element) and per-tensor partial sums
   ``||u||^2``, ``||phi * u||^2``, ``||phi||_0``;
2. after the sums are complete (and all-reduced over shards), the parameter update.

With ``one_pass=True`` a tensor whose previous statistics are usable gets its update in pass 1
(with the previous step's multiplier) and skips pass 2.

Three back ends implement it: Triton kernels for CUDA (``fused_triton.py``, also runnable on
CPU tensors through the Triton interpreter, which is how CI tests them), a C++ kernel pair for
CPU built on first use (``fused_cpu.py``, ``csrc/alphaadam_cpu.cpp``) and a ``torch.compile``d
per-tensor step for any device (``fused_compile.py``). All take the same arguments as the
reference single-tensor/foreach paths in ``alphaadam.py`` and keep the same state.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import torch
from torch import Tensor

from .masking import MaskConfig, alpha_from_sums

FUSED_CHOICES = (None, False, True, "triton", "cpu", "compile")
TRITON_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_fused_choice(fused: object, foreach: object) -> None:
    if not any(fused is c or (isinstance(c, str) and fused == c) for c in FUSED_CHOICES):
        raise ValueError(
            f"Invalid fused={fused!r}; valid choices are None, False, True, 'triton', 'cpu', 'compile'"
        )
    if fused and foreach:
        raise ValueError(
            f"fused={fused!r} and foreach=True are exclusive; set one of them (or neither)"
        )


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def select_fused_impl(fused: bool | str | None, foreach: bool | None, params: list[Tensor]):
    """The fused implementation a param group uses, or ``None`` for the reference paths.

    ``None`` chooses no fused step: the foreach path on CUDA, the single-tensor path on CPU.
    The Triton kernels have only run under the Triton interpreter; they become the CUDA
    default once ``benchmarks/gpu_check.sh`` has passed on real hardware (docs/fused.md).
    The fused CPU steps need a build (C++, and a compiler) or a compilation (tens of seconds,
    docs/fused.md), which a user asking for nothing should neither wait for nor see fail.
    ``True`` means Triton on CUDA and C++ on CPU.
    """
    if fused is None or fused is False:
        return None
    kind = fused
    if fused is True:
        kind = "triton" if all(p.is_cuda for p in params) else "cpu"
    if kind == "triton":
        if not triton_installed():
            raise RuntimeError(
                "fused='triton' needs the triton package (pip install triton; CUDA torch wheels "
                "ship it); use fused='compile' or fused=False instead"
            )
        bad = sorted({str(p.dtype) for p in params if p.dtype not in TRITON_PARAM_DTYPES})
        if bad:
            raise ValueError(
                f"fused='triton' supports float32/float16/bfloat16 parameters, got {bad}; "
                "use fused='compile' or fused=False for them"
            )
        from .fused_triton import triton_alphaadam

        return triton_alphaadam
    if kind == "cpu":
        bad_devices = sorted({str(p.device) for p in params if p.device.type != "cpu"})
        if bad_devices:
            raise ValueError(
                f"fused='cpu' runs on CPU tensors, got parameters on {bad_devices}; use "
                "fused=True (Triton on CUDA) or fused='compile'"
            )
        from .fused_cpu import CPU_PARAM_DTYPES, cpu_alphaadam

        bad = sorted({str(p.dtype) for p in params if p.dtype not in CPU_PARAM_DTYPES})
        if bad:
            raise ValueError(
                f"fused='cpu' supports float32/float64/bfloat16/float16 parameters, got {bad}; "
                "use fused=False for them"
            )
        return cpu_alphaadam
    from .fused_compile import compiled_alphaadam

    return compiled_alphaadam


def bias_corrections(steps: Tensor, beta1: float, beta2: float) -> tuple[Tensor, Tensor]:
    """``1 - b1^t`` and ``sqrt(1 - b2^t)`` in float64 (float32 on MPS), rounded to float32.

    float32 ``0.999`` is off by 1.3e-8, which ``1 - b2^t`` amplifies to a 1e-5 relative error
    at t = 1; torch's AdamW computes these in Python doubles.
    """
    exact = torch.float32 if steps.device.type == "mps" else torch.float64
    t = steps.to(exact)
    bc1 = 1 - torch.pow(beta1, t)
    bc2_sqrt = (1 - torch.pow(beta2, t)).sqrt()
    return bc1.float(), bc2_sqrt.float()


def coefficients(
    total_sq: Tensor, kept_sq: Tensor, nnz: Tensor, numels: Tensor, cfg: MaskConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-tensor ``scale * alpha``, ``alpha`` and mask density from complete sums.

    The same formulas as ``masking.mask_and_compensate`` (``scale = d / (nnz + 1)``, alpha
    clipped, ``alpha_max`` for an empty mask), elementwise over tensors.
    """
    nnz = nnz.to(total_sq.dtype)
    numels = numels.to(total_sq.dtype)
    scale = numels / (nnz + 1) if cfg.rescale else torch.ones_like(nnz)
    if cfg.alpha != "none":
        alpha = alpha_from_sums(total_sq, kept_sq, cfg.alpha, cfg.alpha_max)
    else:
        alpha = torch.ones_like(nnz)
    density = nnz / numels.clamp(min=1)
    return scale * alpha, alpha, density


def lr_tensor(lr: float | Tensor, device: torch.device) -> Tensor:
    """The learning rate as a 0-d float32 device tensor (a scheduler never recompiles)."""
    if isinstance(lr, Tensor):
        return lr.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(lr, dtype=torch.float32, device=device)


FusedImpl = Callable[..., None]
