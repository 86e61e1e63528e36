"""The properties torch's own optimizer test-suite checks, applied to AlphaAdam."""

from __future__ import annotations

import copy
import functools
import io
import math

import pytest
import torch
from torch import nn

import fused_cases
from algorithm1_reference import Algorithm1, Hyper
from alphaadam import PRESETS, AlphaAdam, alphaadam_preset
from fused_cases import clone, set_grads

FOREACH = pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
ALL_PRESETS = pytest.mark.parametrize("preset", list(PRESETS))
SHAPES = [(), (6,), (5, 4), (2, 3, 2)]


# fused_cases.py's tensors, on this suite's shapes and with every coordinate given a gradient.
make_params = functools.partial(fused_cases.make_params, shapes=SHAPES)
grad_sequence = functools.partial(fused_cases.grad_sequence, zero_first_row=False)


# ------------------------------------------------------------------- state_dict / copy
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@FOREACH
@ALL_PRESETS
def test_state_dict_round_trip_then_lockstep(preset, foreach, dtype):
    params = make_params(dtype)
    opt = alphaadam_preset(preset, params, lr=1e-2, weight_decay=0.1, foreach=foreach)
    grads = grad_sequence(params, 10)
    for g in grads[:5]:
        set_grads(params, g)
        opt.step()

    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = clone(params)
    resumed = alphaadam_preset(preset, resumed_params, lr=123.0, foreach=foreach)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.param_groups[0]["lr"] == 1e-2  # hyper-parameters come from the checkpoint
    for p, q in zip(params, resumed_params):
        assert set(resumed.state[q]) == set(opt.state[p])
        for key, value in opt.state[p].items():
            # The loaded state keeps its dtype: fp32 moments of bf16 params stay fp32.
            assert resumed.state[q][key].dtype == value.dtype, key
            assert resumed.state[q][key].device == q.device, key
            assert torch.equal(resumed.state[q][key], value), key

    for g in grads[5:]:
        set_grads(params, g)
        set_grads(resumed_params, g)
        opt.step()
        resumed.step()
        for p, q in zip(params, resumed_params):
            assert torch.equal(p, q)


def test_loading_a_checkpoint_keeps_the_code_path_of_the_loading_optimizer():
    # A run resumed with `optimizer.fused=true` (or foreach) must run that path, while the
    # hyper-parameters come from the checkpoint as in torch.
    params = make_params()
    opt = AlphaAdam(params, lr=1e-2, foreach=False)
    set_grads(params, grad_sequence(params, 1)[0])
    opt.step()
    for path in (dict(fused="cpu"), dict(fused="compile"), dict(foreach=True)):
        resumed = AlphaAdam(clone(params), lr=123.0, **path)
        resumed.load_state_dict(opt.state_dict())
        group = resumed.param_groups[0]
        assert group["lr"] == 1e-2
        assert (group["fused"], group["foreach"]) == (path.get("fused"), path.get("foreach"))


@FOREACH
def test_deepcopy_steps_identically(foreach):
    params = make_params()
    opt = AlphaAdam(params, lr=1e-2, foreach=foreach)
    grads = grad_sequence(params, 6)
    for g in grads[:3]:
        set_grads(params, g)
        opt.step()
    # Copy parameters and optimizer together so the copy's state is keyed by the copies.
    params_copy, opt_copy = copy.deepcopy((params, opt))
    assert opt_copy.param_groups[0]["params"][0] is params_copy[0]
    for g in grads[3:]:
        set_grads(params, g)
        set_grads(params_copy, g)
        opt.step()
        opt_copy.step()
    for p, q in zip(params, params_copy):
        assert torch.equal(p, q)
        for key in opt.state[p]:
            assert torch.equal(opt.state[p][key], opt_copy.state[q][key])


# --------------------------------------------------------------------- None / zero grads
@FOREACH
@ALL_PRESETS
def test_no_grad_is_a_no_op(preset, foreach):
    params = make_params()
    before = clone(params)
    opt = alphaadam_preset(preset, params, lr=1e-1, weight_decay=0.5, foreach=foreach)
    opt.step()  # no parameter has a gradient
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert len(opt.state) == 0
    # A parameter without a gradient stays untouched, state-less, while the others step.
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    assert torch.equal(opt.state[params[0]]["step"], torch.tensor(1.0))
    assert all(p not in opt.state for p in params[1:])
    assert all(torch.equal(p, q) for p, q in zip(params[1:], before[1:]))


@FOREACH
@pytest.mark.parametrize("preset", ["adamw_sm", "adamw_am", "alphaadam"])
def test_zero_grads_move_masked_presets_only_by_weight_decay(preset, foreach):
    # A zero gradient never agrees in sign with anything (strict > 0), so the masked presets
    # do not move; decoupled weight decay still shrinks every coordinate, as in AdamW.
    params = make_params()
    before = clone(params)
    opt = alphaadam_preset(preset, params, lr=1e-2, weight_decay=0.0, foreach=foreach)
    for g in grad_sequence(params, 3):  # build up momentum first
        set_grads(params, g)
        opt.step()
    moved = clone(params)
    assert not all(torch.equal(p, q) for p, q in zip(moved, before))
    for _ in range(3):
        set_grads(params, [torch.zeros_like(p) for p in params])
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, moved))
    assert all(float(opt.state[p]["mask_density"]) == 0.0 for p in params)
    assert all(math.isfinite(float(opt.state[p]["alpha"])) for p in params)

    opt.param_groups[0]["weight_decay"] = 0.5
    set_grads(params, [torch.zeros_like(p) for p in params])
    opt.step()
    for p, q in zip(params, moved):
        torch.testing.assert_close(p.detach(), q.detach() * (1 - 1e-2 * 0.5), rtol=0, atol=0)


@FOREACH
def test_zero_grads_move_adamw_preset_like_torch_adamw(foreach):
    # Without a mask, momentum keeps moving the parameters on zero gradients (AdamW does too).
    ours = make_params()
    theirs = clone(ours)
    opt = alphaadam_preset("adamw", ours, lr=1e-2, weight_decay=0.1, foreach=foreach)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    grads = grad_sequence(ours, 2) + [[torch.zeros_like(p) for p in ours]] * 3
    for g in grads:
        set_grads(ours, g)
        set_grads(theirs, g)
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- groups
@FOREACH
def test_param_groups_are_isolated(foreach):
    a, b, c = make_params(shapes=[(4, 3), (5,), (3, 3)])
    frozen_before = c.detach().clone()
    opt = AlphaAdam(
        [
            {"params": [a], "lr": 1e-2, "weight_decay": 0.1, "mask": "async"},
            {"params": [b], "lr": 3e-2, "weight_decay": 0.0, "mask": "sync", "alpha": "none"},
            {"params": [c], "lr": 1e-28, "weight_decay": 0.1},
        ],
        foreach=foreach,
    )
    # Each group alone, in its own optimizer, must give the same result.
    a2, b2 = clone([a, b])
    alone_a = AlphaAdam([a2], lr=1e-2, weight_decay=0.1, mask="async", foreach=foreach)
    alone_b = AlphaAdam([b2], lr=3e-2, mask="sync", alpha="none", foreach=foreach)
    for g in grad_sequence([a, b, c], 15):
        set_grads([a, b, c], g)
        set_grads([a2, b2], g[:2])
        opt.step()
        alone_a.step()
        alone_b.step()
    assert torch.equal(a, a2)
    assert torch.equal(b, b2)
    assert torch.equal(c, frozen_before)  # lr 1e-28 (and 1 - 1e-29) are below fp32's ulp
    assert set(opt.mask_statistics(zip("abc", [a, b, c]))) == {"a", "b", "c"}


def test_add_param_group_is_validated():
    opt = AlphaAdam(make_params()[:1])
    with pytest.raises(ValueError, match="'bogus'.*async, sync, none"):
        opt.add_param_group({"params": make_params(seed=1)[:1], "mask": "bogus"})


# ------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@FOREACH
@ALL_PRESETS
def test_half_precision_params_keep_fp32_state(preset, foreach, dtype):
    # The optimizer computes in fp32 from an fp32 state and rounds theta once per step. So a
    # fp32 optimizer restarted each step from the rounded parameter, with the same gradients
    # (hence the same state), must produce exactly the value the half run rounds.
    half = make_params(dtype)
    full = [p.detach().float().requires_grad_() for p in half]
    opt_half = alphaadam_preset(preset, half, lr=1e-2, weight_decay=0.1, foreach=foreach)
    opt_full = alphaadam_preset(preset, full, lr=1e-2, weight_decay=0.1, foreach=foreach)
    for g in grad_sequence(half, 20):
        set_grads(half, g)
        set_grads(full, [x.float() for x in g])
        opt_half.step()
        opt_full.step()
        for h, f in zip(half, full):
            assert h.dtype == dtype
            torch.testing.assert_close(h.detach(), f.detach().to(dtype), rtol=0, atol=0)
            with torch.no_grad():
                f.copy_(h.float())
    for h, f in zip(half, full):
        for key, value in opt_half.state[h].items():
            assert value.dtype == torch.float32, key
            torch.testing.assert_close(value, opt_full.state[f][key], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- layouts, closure, ...
@FOREACH
@ALL_PRESETS
def test_non_contiguous_params(preset, foreach):
    base = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    strided = base.t().detach().requires_grad_()  # a non-contiguous leaf
    dense = strided.detach().contiguous().requires_grad_()
    assert not strided.is_contiguous()
    opt_s = alphaadam_preset(preset, [strided], lr=1e-2, foreach=foreach)
    opt_d = alphaadam_preset(preset, [dense], lr=1e-2, foreach=foreach)
    for (g,) in grad_sequence([dense], 10):
        strided.grad = g.t().contiguous().t()  # non-contiguous gradient too
        dense.grad = g.clone()
        opt_s.step()
        opt_d.step()
    # Alpha's sums run over memory in another order for the transposed layout: fp32 rounding.
    torch.testing.assert_close(strided, dense, rtol=1e-6, atol=1e-7)
    assert opt_s.state[strided]["exp_avg"].stride() == strided.stride()


@FOREACH
def test_closure_is_called_once_and_its_loss_returned(foreach):
    model = nn.Linear(3, 1)
    opt = AlphaAdam(model.parameters(), lr=1e-2, foreach=foreach)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert len(calls) == 1 and isinstance(loss, torch.Tensor) and loss.requires_grad
    assert opt.state[model.weight]["step"].item() == 1.0


@FOREACH
@ALL_PRESETS
def test_maximize_equals_minimizing_the_negative(preset, foreach):
    up, down = make_params(), make_params()
    opt_up = alphaadam_preset(preset, up, lr=1e-2, weight_decay=0.1, maximize=True, foreach=foreach)
    opt_down = alphaadam_preset(preset, down, lr=1e-2, weight_decay=0.1, foreach=foreach)
    for g in grad_sequence(up, 10):
        set_grads(up, g)
        set_grads(down, [-x for x in g])
        opt_up.step()
        opt_down.step()
    assert all(torch.equal(p, q) for p, q in zip(up, down))


@FOREACH
def test_sparse_gradients_are_rejected(foreach):
    emb = nn.Embedding(10, 3, sparse=True)
    opt = AlphaAdam(emb.parameters(), foreach=foreach)
    emb(torch.tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@FOREACH
def test_complex_params_are_rejected(foreach):
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = AlphaAdam([p], foreach=foreach)
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="complex parameters.*view_as_real"):
        opt.step()


# --------------------------------------------------------------------------- lr
@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4),
    ],
    ids=["LambdaLR", "CosineAnnealingLR"],
)
@FOREACH
def test_lr_scheduler_drives_the_step(make_scheduler, foreach):
    params = make_params()
    opt = AlphaAdam(params, lr=1e-2, weight_decay=0.1, foreach=foreach)
    scheduler = make_scheduler(opt)
    refs = [Algorithm1(p, Hyper(lr=1e-2, weight_decay=0.1)) for p in params]
    lrs = []
    for g in grad_sequence(params, 12):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        set_grads(params, g)
        opt.step()
        for ref, x in zip(refs, g):
            ref.hp.lr = lr
            ref.step(x)
        scheduler.step()
    assert len(set(lrs)) > 5  # the schedule did change the lr
    for p, ref in zip(params, refs):
        torch.testing.assert_close(p.detach().double(), ref.theta, rtol=1e-5, atol=1e-6)


@FOREACH
def test_tensor_lr_equals_float_lr(foreach):
    a, b = make_params(), make_params()
    opt_a = AlphaAdam(a, lr=torch.tensor(1e-2), weight_decay=0.1, foreach=foreach)
    opt_b = AlphaAdam(b, lr=1e-2, weight_decay=0.1, foreach=foreach)
    for g in grad_sequence(a, 8):
        set_grads(a, g)
        set_grads(b, g)
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------- compile
@pytest.mark.slow
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_torch_compile_of_step_equals_eager(foreach):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = make_params(shapes=[(8, 4), (4,)])
    compiled = clone(eager)
    opt_e = AlphaAdam(eager, lr=1e-2, weight_decay=0.1, foreach=foreach)
    opt_c = AlphaAdam(compiled, lr=1e-2, weight_decay=0.1, foreach=foreach)

    @torch.compile
    def compiled_step():
        opt_c.step()

    for g in grad_sequence(eager, 4):
        set_grads(eager, g)
        set_grads(compiled, g)
        opt_e.step()
        compiled_step()
    # The step really went through Dynamo (a graph was captured, not a silent fallback).
    assert counters["stats"]["unique_graphs"] >= 1
    for p, q in zip(eager, compiled):
        # Inductor may fuse and reorder fp32 arithmetic: equal up to fp32 rounding.
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for key in opt_e.state[p]:
            torch.testing.assert_close(
                opt_e.state[p][key], opt_c.state[q][key], rtol=1e-5, atol=1e-6
            )


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(mask="asyncc"), r"mask='asyncc'.*async, sync, none"),
        (dict(alpha="sqrt"), r"alpha='sqrt'.*ratio, sqrt_ratio, none"),
        (dict(alpha_max=0.5), r"alpha_max=0.5.*>= 1"),
        (dict(rescale="yes"), r"rescale='yes'.*True, False"),
        (dict(lr=-1.0), r"-1.0"),
        (dict(lr=torch.tensor([1e-3, 1e-3])), r"one element"),
        (dict(betas=(0.9, 1.0)), r"\(0.9, 1.0\).*\[0, 1\)"),
        (dict(eps=-1e-8), r"-1e-08"),
        (dict(weight_decay=-0.1), r"-0.1"),
    ],
    ids=lambda v: str(v)[:30] if isinstance(v, dict) else None,
)
def test_invalid_options_name_the_value_and_choices(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AlphaAdam(make_params()[:1], **kwargs)


def test_invalid_preset_and_preset_clash():
    with pytest.raises(ValueError, match="'adam'.*adamw, adamw_sm, adamw_am, alphaadam"):
        alphaadam_preset("adam", make_params()[:1])
    with pytest.raises(ValueError, match="mask"):
        alphaadam_preset("alphaadam", make_params()[:1], mask="sync")


# ------------------------------------------------------------- NaN / inf safety
@FOREACH
@pytest.mark.parametrize("alpha", ["ratio", "sqrt_ratio", "none"])
def test_step_one_and_empty_masks_stay_finite(alpha, foreach):
    params = make_params()
    before = clone(params)
    opt = AlphaAdam(params, lr=1e-2, alpha=alpha, foreach=foreach)
    set_grads(params, grad_sequence(params, 1)[0])
    opt.step()
    # Step 1: h_0 = 0, so the asynchronous mask is empty and nothing moves.
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    expected_alpha = 1.0 if alpha == "none" else 2.0
    for stats in opt.read_mask_statistics().values():
        # (random gradients: every element nonzero)
        assert stats == {
            "alpha": expected_alpha,
            "mask_density": 0.0,
            "grad_density": 1.0,
            "step_scale": 0.0,
        }
    # Gradients opposing the momentum everywhere: an all-zero mask again, mid-training.
    for _ in range(3):
        set_grads(params, [-torch.sign(opt.state[p]["exp_avg"]) for p in params])
        opt.step()
        for p in params:
            assert torch.isfinite(p).all()
            assert float(opt.state[p]["mask_density"]) == 0.0
            assert math.isfinite(float(opt.state[p]["alpha"]))
    assert all(torch.equal(p, q) for p, q in zip(params, before))


# ---------------------------------------------------------------- diagnostics
@FOREACH
def test_mask_statistics_keyed_by_name_and_kept_as_device_tensors(foreach):
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1))
    opt = AlphaAdam(model.parameters(), lr=1e-2, foreach=foreach)
    assert opt.mask_statistics(model.named_parameters()) == {}  # nothing stepped yet
    x = torch.randn(16, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    stats = opt.mask_statistics(model.named_parameters())
    assert set(stats) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        # The state tensors themselves: reading them is the caller's choice (no sync here).
        assert stats[name]["alpha"] is opt.state[p]["alpha"]
        assert stats[name]["alpha"].device == p.device and stats[name]["alpha"].dim() == 0
        assert 0.0 <= float(stats[name]["mask_density"]) <= 1.0
        assert 1.0 <= float(stats[name]["alpha"]) <= 2.0
    floats = opt.read_mask_statistics(model.named_parameters())
    assert set(floats) == set(stats)
    assert all(isinstance(v, float) for s in floats.values() for v in s.values())
    assert set(opt.mask_statistics()) == {f"group0.param{i}" for i in range(4)}


# ------------------------------------------------- group hyper-parameters, AdamW states
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"weight_decay": -1.0}, "param group 1: Invalid weight_decay: -1.0"),
        ({"lr": -1e-3}, "param group 1: Invalid learning rate: -0.001"),
        ({"eps": -1e-8}, "param group 1: Invalid eps"),
        ({"betas": (0.9, 1.0)}, r"param group 1: Invalid betas: \(0.9, 1.0\)"),
    ],
)
def test_every_param_groups_hyper_parameters_are_checked(setting, message):
    # torch checks only the constructor's defaults; a group's own value must not train.
    a, b = make_params(shapes=[(3,), (2,)])
    with pytest.raises(ValueError, match=message):
        AlphaAdam([{"params": [a]}, {"params": [b], **setting}])


def test_a_torch_adamw_state_loads_as_the_same_moments_and_continues_like_adamw():
    # AdamW's exp_avg / exp_avg_sq / step are AlphaAdam's moments. Without a mask
    # (the "adamw" preset) AlphaAdam continuing from AdamW's state must take AdamW's steps.
    ours = make_params()
    theirs = clone(ours)
    adamw = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1)
    grads = grad_sequence(ours, 6)
    for g in grads[:3]:
        set_grads(theirs, g)
        adamw.step()
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            a.copy_(b)
    opt = alphaadam_preset("adamw", ours, lr=1e-2, weight_decay=0.1)
    with pytest.warns(UserWarning, match="converting an Adam/AdamW state"):
        # a copy, as a checkpoint file gives: torch's loading shares same-dtype tensors
        opt.load_state_dict(copy.deepcopy(adamw.state_dict()))
    for g in grads[3:]:
        set_grads(ours, g)
        set_grads(theirs, g)
        opt.step()
        adamw.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert opt.state[ours[0]]["step"].item() == 6


def test_a_masked_alphaadam_from_an_adamw_state_masks_its_first_step():
    # No mask history in an AdamW state, but the momentum is there: the first step after
    # loading compares the gradient with it (a nonempty mask), unlike a fresh start.
    params = make_params(shapes=[(50,)])
    adamw = torch.optim.AdamW(params, lr=1e-3)
    grads = grad_sequence(params, 3)
    for g in grads[:2]:
        set_grads(params, g)
        adamw.step()
    momentum = adamw.state[params[0]]["exp_avg"].clone()
    opt = AlphaAdam(params, lr=1e-3)
    with pytest.warns(UserWarning):
        opt.load_state_dict(copy.deepcopy(adamw.state_dict()))
    assert opt.param_groups[0]["mask"] == "async"
    assert torch.equal(opt.state[params[0]]["exp_avg"], momentum)
    set_grads(params, grads[2])
    opt.step()
    density = opt.state[params[0]]["mask_density"].item()
    agree = (torch.sign(grads[2][0]) == torch.sign(momentum)).float()
    assert density == pytest.approx(agree.mean().item())
    assert 0 < density < 1


@pytest.mark.parametrize(
    ("make_other", "message"),
    [
        (lambda p: torch.optim.AdamW(p, amsgrad=True), "amsgrad=True"),
        (lambda p: torch.optim.Adam(p, weight_decay=0.1), "coupled .L2. weight_decay=0.1"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "has no 'exp_avg'"),
    ],
    ids=["amsgrad", "adam_l2", "sgd"],
)
def test_a_state_that_cannot_be_converted_is_refused_naming_what_is_missing(make_other, message):
    params = make_params(shapes=[(4,)])
    other = make_other(params)
    set_grads(params, grad_sequence(params, 1)[0])
    other.step()
    opt = AlphaAdam(params)
    with pytest.raises(ValueError, match=message) as info:
        opt.load_state_dict(other.state_dict())
    assert "'mask'" in str(info.value)  # the group keys AlphaAdam needs and did not get
