"""Adam's side of an AlphaAdam step, shared by every step path: hyper-parameters, state
dtype, bias corrections and the learning rate as a tensor.

Imports nothing else from this package, so every path (``reference_paths.py`` and the fused
back ends) can import it. The C++ kernel (``csrc/alphaadam_cpu.cpp``, ``loop_consts``) keeps
its own copy of :func:`bias_corrections`; the tests compare every path with the float64
transcription of Algorithm 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AdamHParams:
    """The Adam hyper-parameters of one param group's step (the mask's are
    :class:`~alphaadam.optim.masking.MaskConfig`).

    ``lr`` is a float or a 0-d tensor (a scheduler may hold it as one).
    """

    lr: float | Tensor
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    bias_correction: bool = True
    maximize: bool = False

    @classmethod
    def from_group(cls, group: dict[str, Any]) -> AdamHParams:
        beta1, beta2 = group["betas"]
        return cls(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            bias_correction=group["bias_correction"],
            maximize=group["maximize"],
        )


def state_dtype(param: Tensor) -> torch.dtype:
    """The dtype of a parameter's moments.

    Moments of half-precision parameters are kept in fp32: v_t underflows in fp16 and bf16's
    8-bit mantissa cannot accumulate (1 - b2) g^2 increments.
    """
    return torch.float32 if param.dtype in LOW_PRECISION else param.dtype


def exact_dtype(device: torch.device) -> torch.dtype:
    """float64, or float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def bias_corrections(
    steps: Tensor, beta1: float, beta2: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``1 - b1^t`` and ``sqrt(1 - b2^t)`` for device-side step counts (no host sync).

    Computed in float64 where the device has it, then rounded once to ``dtype``: in float32
    ``0.999`` itself is off by 1.3e-8, which ``1 - b2^t`` amplifies to a 1e-5 relative error
    of the step at t = 1 (torch.optim.AdamW computes these in Python floats). Elementwise:
    ``steps`` may hold several tensors' counts.
    """
    t = steps.to(exact_dtype(steps.device))
    bc1 = 1 - torch.pow(beta1, t)
    bc2_sqrt = (1 - torch.pow(beta2, t)).sqrt()
    return bc1.to(dtype), bc2_sqrt.to(dtype)


def lr_tensor(lr: float | Tensor, device: torch.device) -> Tensor:
    """The learning rate as a 0-d float32 device tensor (a scheduler never recompiles)."""
    if isinstance(lr, Tensor):
        return lr.detach().to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(lr, dtype=torch.float32, device=device)
