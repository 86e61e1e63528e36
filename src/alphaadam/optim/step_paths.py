"""Choosing an AlphaAdam param group's step path: the one dispatcher (:func:`select_step`).

Every path is called as ``path(bucket, hp, cfg, workspace=...)`` (``sharding.LocalBucket``,
``adam_math.AdamHParams``, ``masking.MaskConfig``), computes the same step and keeps the same
state, so a checkpoint moves between paths:

* the reference paths (``reference_paths.py``): single-tensor, and multi-tensor with
  ``torch._foreach_*`` kernels;
* the fused step (docs/fused.md), two passes over every tensor: (1) moments, the agreement
  mask (1 byte per element) and per-tensor partial sums ``||u||^2``, ``||phi * u||^2``,
  ``||phi||_0``; (2) after the sums are complete (and all-reduced over shards), the
  parameter update. With ``one_pass=True`` a tensor whose previous statistics are usable
  gets its update in pass 1 (with the previous step's multiplier) and skips pass 2. Three
  back ends: Triton kernels for CUDA (``fused_triton.py``, also runnable on CPU tensors
  through the Triton interpreter, which is how CI tests them), a C++ kernel pair for CPU
  built when the optimizer is (``fused_cpu.py``, ``csrc/alphaadam_cpu.cpp``) and a
  ``torch.compile``d per-tensor step for any device (``fused_compile.py``).

It also states the ``foreach=None`` rule (:func:`use_foreach`) that AlphaLion and AlphaSGD
follow.

Imports run one way: ``alphaadam`` (and ``alphalion``, ``alphasgd``) -> this module -> the paths -> ``masking``, ``adam_math``,
``sharding``. The fused back ends are imported when first chosen, which keeps ``import
alphaadam`` from importing triton.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .reference_paths import multi_tensor_alphaadam, single_tensor_alphaadam

FUSED_CHOICES = (None, False, True, "triton", "cpu", "compile")
TRITON_PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

StepPath = Callable[..., None]  # path(bucket, hp, cfg, *, workspace=None)


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


def use_foreach(foreach: bool | None, params: list[Tensor]) -> bool:
    """torch's rule for ``foreach=None``: the multi-tensor path for CUDA parameters, the
    single-tensor one otherwise. AlphaLion and AlphaSGD follow it too."""
    return all(p.is_cuda for p in params) if foreach is None else foreach


def select_step(group: dict[str, Any], params: list[Tensor]) -> StepPath:
    """The step path for a param group's ``params`` (those with gradients).

    ``fused=None`` (default) or ``False``: a reference path, foreach if ``foreach`` says so,
    and for ``foreach=None`` on CUDA (torch's rule), single-tensor on CPU. ``None`` chooses no
    fused step: the Triton kernels have only run under the Triton interpreter; they become
    the CUDA default once ``benchmarks/gpu_check.sh`` has passed on real hardware
    (docs/fused.md). The fused CPU steps need a build (C++, and a compiler) or a compilation
    (tens of seconds, docs/fused.md), which a user asking for nothing should neither wait for
    nor see fail. ``True`` means Triton on CUDA and C++ on CPU; ``"triton"``, ``"cpu"`` and
    ``"compile"`` force one, after checking that it can run these parameters.
    """
    fused = group["fused"]
    if fused is None or fused is False:
        if use_foreach(group["foreach"], params):
            return multi_tensor_alphaadam
        return single_tensor_alphaadam
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


def select_fused_impl(
    fused: bool | str | None, foreach: bool | None, params: list[Tensor]
) -> StepPath | None:
    """The fused back end :func:`select_step` picks, or ``None`` for a reference path (kept
    for the tests that ask which fused step a config reaches)."""
    if fused is None or fused is False:
        return None
    return select_step({"fused": fused, "foreach": foreach}, params)
