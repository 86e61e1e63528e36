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
from fused_cases import (
    ONE_PASS_SETS,
    ONE_PASS_STEPS,
    OPTION_SETS,
    checkpoint_moves,
    grad_sequence,
    lockstep,
    make_params,
    set_grads,
)

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


@pytest.mark.parametrize("options", list(ONE_PASS_SETS))
def test_one_pass_option_sets(options):
    lockstep("triton", torch.float32, ONE_PASS_SETS[options], steps=ONE_PASS_STEPS)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_one_pass_low_precision_params(dtype):
    lockstep("triton", dtype, ONE_PASS_SETS["one_pass"], steps=ONE_PASS_STEPS)


def test_one_pass_checkpoint_moves_between_paths():
    checkpoint_moves("triton", one_pass=True)


def test_one_pass_async_steps_one_and_two_are_the_exact_steps():
    # Step 1's asynchronous mask is empty: step 2 takes the exact step, bit for bit the
    # exact kernels' result; step 3 applies step 2's multiplier.
    params = make_params(torch.float32)
    one = [p.detach().clone().requires_grad_() for p in params]
    opt_one = AlphaAdam(one, lr=1e-2, weight_decay=0.1, fused="triton", one_pass=True)
    opt_exact = AlphaAdam(params, lr=1e-2, weight_decay=0.1, fused="triton")
    for step, grads in enumerate(grad_sequence(params, 3), start=1):
        set_grads(one, grads)
        set_grads(params, grads)
        opt_one.step()
        opt_exact.step()
        same = [torch.equal(a, b) for a, b in zip(one, params)]
        assert all(same) if step <= 2 else not all(same), step


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
