"""Shared checks for the fused AlphaAdam paths (torch.compile in-process, Triton interpreted),
and the home of the test tensors: parameters, gradient sequences, clones.

Every check steps a fused optimizer and the single-tensor reference path on identical
parameters and gradients and compares parameters and the whole optimizer state.
"""

from __future__ import annotations

import io

import torch

from alphaadam import PRESETS, AlphaAdam

# 0-d, zero-size, odd sizes and a tensor bigger than one Triton interpreter chunk (32).
SHAPES = [(), (0,), (3, 0), (7,), (7, 5), (33, 17)]
STEPS = 3
OPTION_SETS = {
    # Every non-default option at once.
    "maximize_nobc_sqrt_norescale": dict(
        mask="async", alpha="sqrt_ratio", rescale=False, bias_correction=False, maximize=True
    ),
    "sync_ratio_alphamax3": dict(mask="sync", alpha="ratio", alpha_max=3.0, weight_decay=0.0),
    # The extension: d counts the nonzero gradient elements (grad_sequence zeroes a row).
    "active_rescale": dict(rescale="active"),
}
# One-pass AlphaAdam: async steps 1-2 are exact (start rule), so more steps than STEPS.
ONE_PASS_STEPS = 6
ONE_PASS_SETS = {
    "one_pass": dict(one_pass=True),
    "one_pass_sync_sqrt_maximize": dict(
        one_pass=True, mask="sync", alpha="sqrt_ratio", alpha_max=1.5, maximize=True
    ),
    "one_pass_norescale_nobc": dict(one_pass=True, rescale=False, bias_correction=False),
    "one_pass_active": dict(one_pass=True, mask="sync", rescale="active"),
}


def make_params(
    dtype: torch.dtype = torch.float32, seed: int = 0, shapes=SHAPES
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def grad_sequence(params, steps: int, seed: int = 1, zero_first_row: bool = True):
    """Gradients with a per-coordinate drift, so masks are neither empty nor full. With
    ``zero_first_row`` a matrix's first row gets no gradient, as an embedding row whose token
    is not in the batch: the nonzero count (rescale="active"'s d, the grad density) is then
    below the element count."""
    gen = torch.Generator().manual_seed(seed)
    drifts = [torch.randn(p.shape, generator=gen) for p in params]

    def without_first_row(g):
        if zero_first_row and g.dim() >= 2 and g.shape[0] > 1:
            g[0] = 0
        return g

    return [
        [
            without_first_row(0.5 * d + torch.randn(p.shape, generator=gen)).to(p.dtype)
            for p, d in zip(params, drifts)
        ]
        for _ in range(steps)
    ]


def clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def rounding_step(values: torch.Tensor) -> torch.Tensor:
    """The gap from each |value| to the next representable number of its dtype, in float32."""
    magnitude = values.abs()
    return (
        torch.nextafter(magnitude, torch.full_like(magnitude, float("inf"))) - magnitude
    ).float()


def assert_within_one_rounding_step(actual, expected, msg: str = "") -> None:
    """Half-precision parameters: every element at most one rounding step from the reference.

    Every path computes the update in float32 and rounds it once into the parameter, so a
    different float32 operation order can only move the result to the neighbouring bf16/fp16
    number. A relative tolerance loose enough for that (1e-2) would also pass a dropped weight
    decay, a dropped rescale or lr x1.3 (tests/test_fused_tolerance.py shows this one does not).
    """
    actual, expected = actual.detach(), expected.detach()
    assert actual.dtype == expected.dtype, (msg, actual.dtype, expected.dtype)
    gap = (actual.float() - expected.float()).abs()
    # At a power of two the step above is twice the step below: allow the larger one.
    allowed = torch.maximum(rounding_step(actual), rounding_step(expected))
    # Written so that a NaN on either side counts as beyond.
    beyond = ~((actual.float() == expected.float()) | (gap <= allowed))
    if beyond.any():
        worst = int((gap / allowed).flatten().argmax())
        raise AssertionError(
            f"{msg}: {int(beyond.sum())} of {gap.numel()} elements more than one {actual.dtype} "
            f"rounding step from the reference; worst at flat index {worst}: "
            f"{actual.flatten()[worst].item()} vs {expected.flatten()[worst].item()} "
            f"(step {allowed.flatten()[worst].item():.3g})"
        )


def assert_same_params(params_a, params_b, dtype) -> None:
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        if dtype in (torch.float16, torch.bfloat16):
            assert_within_one_rounding_step(b, a, msg=f"param {i}")
        else:
            torch.testing.assert_close(
                b.detach(), a.detach(), rtol=1e-5, atol=1e-6, msg=f"param {i}"
            )


def assert_same(params_a, opt_a, params_b, opt_b, dtype) -> None:
    assert_same_params(params_a, params_b, dtype)
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert set(sa) == set(sb), (set(sa), set(sb))
        for key in sa:
            assert sb[key].dtype == sa[key].dtype, (key, sb[key].dtype, sa[key].dtype)
            torch.testing.assert_close(
                sb[key], sa[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key, j=i: f"{j}.{k}: {m}"
            )


def lockstep(fused: str, dtype: torch.dtype, kwargs: dict, lr=1e-2, steps=STEPS) -> None:
    """Reference (single-tensor) vs fused over ``steps`` steps with identical gradients."""
    params = make_params(dtype)
    ref, fus = clone(params), clone(params)
    opts = dict(lr=lr, weight_decay=0.1)
    opts.update(kwargs)
    opt_ref = AlphaAdam(ref, foreach=False, **opts)
    opt_fus = AlphaAdam(fus, fused=fused, **opts)
    for grads in grad_sequence(params, steps):
        set_grads(ref, grads)
        set_grads(fus, grads)
        opt_ref.step()
        opt_fus.step()
        assert_same(ref, opt_ref, fus, opt_fus, dtype)


def checkpoint_moves(fused: str, preset: str = "alphaadam", **options) -> None:
    """Reference steps, checkpoint into the fused path (and on to foreach), equal to the
    reference steps throughout (6 steps; the moves come after steps 2 and 4)."""
    dtype = torch.float32
    params = make_params(dtype)
    grads = grad_sequence(params, 6)
    settings = dict(lr=1e-2, weight_decay=0.1, **PRESETS[preset], **options)
    ref = clone(params)
    opt_ref = AlphaAdam(ref, foreach=False, **settings)
    for g in grads:
        set_grads(ref, g)
        opt_ref.step()

    moved = clone(params)
    opt = AlphaAdam(moved, foreach=False, **settings)
    for step, g in enumerate(grads):
        if step in (2, 4):  # reference -> fused after step 2, fused -> foreach after step 4
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            kwargs = dict(fused=fused) if step == 2 else dict(foreach=True)
            opt = AlphaAdam(moved, **kwargs, **settings)
            opt.load_state_dict(torch.load(buf))
            # The loaded optimizer keeps its own path, not the checkpoint's (fused=None).
            assert opt.param_groups[0]["fused"] == kwargs.get("fused")
            assert opt.param_groups[0]["foreach"] == kwargs.get("foreach")
        set_grads(moved, g)
        opt.step()
    assert_same(ref, opt_ref, moved, opt, dtype)
