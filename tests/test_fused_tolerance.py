"""The half-precision comparison of the fused paths rejects wrong updates.

tests/fused_cases.py compares bf16/fp16 parameters at one rounding step of their dtype. On
the same data, parameters, gradients and steps as those comparisons, three wrong updates
(computed by the reference path with one setting changed) must each fail it: a dropped weight
decay, a dropped step rescale and lr x1.3. The earlier tolerance (rtol=1e-2, atol=2e-2)
passed all three.
"""

from __future__ import annotations

import pytest
import torch

from alphaadam import PRESETS, AlphaAdam
from fused_cases import (
    STEPS,
    assert_same_params,
    assert_within_one_rounding_step,
    clone,
    grad_sequence,
    make_params,
    set_grads,
)

LR, WEIGHT_DECAY = 1e-2, 0.1  # as in fused_cases.lockstep
WRONG_UPDATES = {
    "weight_decay_dropped": dict(weight_decay=0.0),
    "rescale_dropped": dict(rescale=False),
    "lr_x1.3": dict(lr=1.3 * LR),
}
HALF = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])


def reference_params(dtype, **changes):
    params = clone(make_params(dtype))
    opts = dict(lr=LR, weight_decay=WEIGHT_DECAY, **PRESETS["alphaadam"])
    opts.update(changes)
    opt = AlphaAdam(params, foreach=False, **opts)
    for grads in grad_sequence(params, STEPS):
        set_grads(params, grads)
        opt.step()
    return params


@HALF
@pytest.mark.parametrize("wrong", list(WRONG_UPDATES))
def test_wrong_update_is_rejected(dtype, wrong):
    right = reference_params(dtype)
    wrong_params = reference_params(dtype, **WRONG_UPDATES[wrong])
    with pytest.raises(AssertionError, match="rounding step from the reference"):
        assert_same_params(right, wrong_params, dtype)
    # The tolerance this replaced let every one of them through.
    for a, b in zip(right, wrong_params):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-2, atol=2e-2)


@HALF
def test_one_rounding_step_apart_passes_and_two_fail(dtype):
    values = torch.tensor([1.0, -0.3, 1e-3, 0.0, 4.0], dtype=dtype)
    up = torch.nextafter(values, torch.full_like(values, float("inf")))
    down = torch.nextafter(values, torch.full_like(values, float("-inf")))
    assert_within_one_rounding_step(up, values)
    assert_within_one_rounding_step(down, values)  # 4.0 - step below: half the step above
    two_up = torch.nextafter(up, torch.full_like(up, float("inf")))
    with pytest.raises(AssertionError, match="5 of 5 elements"):
        assert_within_one_rounding_step(two_up, values)
    with pytest.raises(AssertionError, match="1 of 5 elements"):
        assert_within_one_rounding_step(
            values.clone().index_fill_(0, torch.tensor([2]), float("nan")), values
        )
