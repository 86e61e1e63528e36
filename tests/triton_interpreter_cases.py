"""Triton kernels vs the reference path, run by the Triton interpreter on CPU tensors.

Not collected directly (its name does not start with ``test_``): ``tests/test_fused.py``
runs this file in a subprocess with ``TRITON_INTERPRET=1`` set before triton is imported,
which the interpreter needs. To run it alone:
``TRITON_INTERPRET=1 python -m pytest tests/triton_interpreter_cases.py``.
"""

from __future__ import annotations

import os

import pytest
import torch

from alphaadam import PRESETS, AlphaAdam
from fused_cases import OPTION_SETS, checkpoint_moves, lockstep, make_params

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_fp32(preset):
    lockstep("triton", torch.float32, PRESETS[preset])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_params_fp32_state(dtype):
    lockstep("triton", dtype, PRESETS["alphaadam"])


@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_option_combinations(options):
    lockstep("triton", torch.float32, OPTION_SETS[options])


def test_tensor_lr():
    lockstep("triton", torch.float32, PRESETS["alphaadam"], lr=torch.tensor(1e-2))


def test_checkpoint_moves_between_paths():
    checkpoint_moves("triton")


def test_float64_and_non_contiguous_are_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="float64.*fused='compile'"):
        p = make_params(torch.float64, shapes=[(3,)])
        p[0].grad = torch.ones(3, dtype=torch.float64)
        AlphaAdam(p, fused="triton").step()
    base = torch.randn(4, 3)
    p = base.t().detach().requires_grad_()
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="non-contiguous param.*fused='compile'"):
        AlphaAdam([p], fused="triton").step()
