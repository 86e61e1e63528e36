"""Shared checks for the fused AlphaAdam paths (torch.compile in-process, Triton interpreted).

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
}


def make_params(dtype: torch.dtype, seed: int = 0, shapes=SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def grad_sequence(params, steps: int, seed: int = 1):
    """Gradients with a per-coordinate drift, so masks are neither empty nor full."""
    gen = torch.Generator().manual_seed(seed)
    drifts = [torch.randn(p.shape, generator=gen) for p in params]
    return [
        [
            (0.5 * d + torch.randn(p.shape, generator=gen)).to(p.dtype)
            for p, d in zip(params, drifts)
        ]
        for _ in range(steps)
    ]


def clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = g.clone()


def tolerances(dtype: torch.dtype) -> dict:
    # Low-precision params may land one rounding step apart (different fp32 op order).
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-6)
    return dict(rtol=1e-2, atol=2e-2)


def assert_same(params_a, opt_a, params_b, opt_b, dtype) -> None:
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        torch.testing.assert_close(b.detach(), a.detach(), **tolerances(dtype), msg=f"param {i}")
        sa, sb = opt_a.state[a], opt_b.state[b]
        assert set(sa) == set(sb), (set(sa), set(sb))
        for key in sa:
            assert sb[key].dtype == sa[key].dtype, (key, sb[key].dtype, sa[key].dtype)
            torch.testing.assert_close(
                sb[key], sa[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key, j=i: f"{j}.{k}: {m}"
            )


def lockstep(fused: str, dtype: torch.dtype, kwargs: dict, lr=1e-2) -> None:
    """Reference (single-tensor) vs fused over STEPS steps with identical gradients."""
    params = make_params(dtype)
    ref, fus = clone(params), clone(params)
    opts = dict(lr=lr, weight_decay=0.1)
    opts.update(kwargs)
    opt_ref = AlphaAdam(ref, foreach=False, **opts)
    opt_fus = AlphaAdam(fus, fused=fused, **opts)
    for grads in grad_sequence(params, STEPS):
        set_grads(ref, grads)
        set_grads(fus, grads)
        opt_ref.step()
        opt_fus.step()
        assert_same(ref, opt_ref, fus, opt_fus, dtype)


def checkpoint_moves(fused: str, preset: str = "alphaadam") -> None:
    """Two reference steps, checkpoint into the fused path (and back), equal to 4 reference."""
    dtype = torch.float32
    params = make_params(dtype)
    grads = grad_sequence(params, 4)
    ref = clone(params)
    opt_ref = AlphaAdam(ref, lr=1e-2, weight_decay=0.1, foreach=False, **PRESETS[preset])
    for g in grads:
        set_grads(ref, g)
        opt_ref.step()

    moved = clone(params)
    opt = AlphaAdam(moved, lr=1e-2, weight_decay=0.1, foreach=False, **PRESETS[preset])
    for step, g in enumerate(grads):
        if step in (1, 3):  # reference -> fused after step 1, fused -> foreach after step 3
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            kwargs = dict(fused=fused) if step == 1 else dict(foreach=True)
            opt = AlphaAdam(moved, lr=1e-2, weight_decay=0.1, **kwargs, **PRESETS[preset])
            opt.load_state_dict(torch.load(buf))
            # The loaded optimizer keeps its own path, not the checkpoint's (fused=None).
            assert opt.param_groups[0]["fused"] == kwargs.get("fused")
            assert opt.param_groups[0]["foreach"] == kwargs.get("foreach")
        set_grads(moved, g)
        opt.step()
    assert_same(ref, opt_ref, moved, opt, dtype)
