"""AlphaAdam against independent expectations: Algorithm 1, hand arithmetic, torch AdamW."""

from __future__ import annotations

import itertools

import pytest
import torch

from algorithm1_reference import Algorithm1, Hyper
from alphaadam import PRESETS, AlphaAdam, alphaadam_preset

# 0-d, zero-size, vector, matrix, 3-d, and a zero-size 3-d tensor, all in one optimizer so
# the foreach path also has to keep per-tensor quantities apart.
SHAPES = [(), (0,), (7,), (4, 5), (2, 3, 4), (3, 0, 2)]
STEPS = 24


def make_grads(shape, steps, seed, dtype=torch.float64):
    """A fixed gradient sequence with a persistent direction (so masks are neither empty
    nor full), noise, and exact zeros (which the strict ``> 0`` mask must reject)."""
    gen = torch.Generator().manual_seed(seed)
    drift = torch.randn(shape, generator=gen, dtype=torch.float64)
    grads = []
    for _ in range(steps):
        g = 0.7 * drift + torch.randn(shape, generator=gen, dtype=torch.float64)
        g[torch.rand(shape, generator=gen) < 0.1] = 0.0
        grads.append(g.to(dtype))
    return grads


def make_params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
        for s in shapes
    ]


# The reference paths and the fused C++ CPU step (fused="cpu"), all in float64.
PATHS = [False, True, "cpu"]
PATH_IDS = ["single", "foreach", "fused_cpu"]


def path(foreach: bool | str) -> dict:
    """AlphaAdam keyword arguments that select one of :data:`PATHS`."""
    return dict(fused=foreach) if isinstance(foreach, str) else dict(foreach=foreach)


def run_against_reference(hp: Hyper, foreach: bool | str, shapes=SHAPES, lr_tensor=False):
    params = make_params(shapes=shapes)
    refs = [Algorithm1(p, hp) for p in params]
    grads = [make_grads(p.shape, STEPS, seed=10 + i) for i, p in enumerate(params)]
    lr = torch.tensor(hp.lr, dtype=torch.float64) if lr_tensor else hp.lr
    opt = AlphaAdam(
        params,
        lr=lr,
        betas=(hp.beta1, hp.beta2),
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        mask=hp.mask,
        alpha=hp.alpha,
        alpha_max=hp.alpha_max,
        rescale=hp.rescale,
        bias_correction=hp.bias_correction,
        maximize=hp.maximize,
        **path(foreach),
    )
    for step in range(STEPS):
        for i, (p, ref) in enumerate(zip(params, refs)):
            p.grad = grads[i][step].clone()
            ref.step(grads[i][step])
        opt.step()
        for i, (p, ref) in enumerate(zip(params, refs)):
            torch.testing.assert_close(
                p.detach(),
                ref.theta,
                rtol=1e-10,
                atol=1e-12,
                msg=lambda m, i=i, step=step: (
                    f"param {i} {tuple(params[i].shape)} step {step + 1}: {m}"
                ),
            )
        stats = opt.mask_statistics()
        for i, ref in enumerate(refs):
            key = f"group0.param{i}"
            if hp.mask == "none":
                assert key not in stats
                continue
            alpha, density = stats[key]["alpha"], stats[key]["mask_density"]
            assert alpha.dtype == torch.float64 and alpha.dim() == 0
            assert float(alpha) == pytest.approx(ref.alpha, rel=1e-10), (i, step)
            assert float(density) == pytest.approx(ref.mask_density, abs=1e-12), (i, step)
            grad_density = float(stats[key]["grad_density"])
            assert grad_density == pytest.approx(ref.grad_density, abs=1e-12), (i, step)
    for p, ref in zip(params, refs):
        state = opt.state[p]
        assert int(state["step"]) == STEPS
        torch.testing.assert_close(state["exp_avg"], ref.h, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(state["exp_avg_sq"], ref.v, rtol=1e-10, atol=1e-14)


OPTION_GRID = list(
    itertools.product(
        ["async", "sync", "none"],  # mask
        ["ratio", "sqrt_ratio", "none"],  # alpha
        [2.0, 1.25],  # alpha_max (1.25 makes the clip bind often)
        [True, False, "active"],  # rescale ("active": make_grads has exact zeros)
        [True, False],  # bias_correction
        [0.0, 0.1],  # weight_decay
        [False, True],  # maximize
    )
)


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize(
    "mask,alpha,alpha_max,rescale,bias_correction,weight_decay,maximize",
    OPTION_GRID,
    ids=["-".join(map(str, c)) for c in OPTION_GRID],
)
def test_every_option_matches_algorithm1(
    mask, alpha, alpha_max, rescale, bias_correction, weight_decay, maximize, foreach
):
    hp = Hyper(
        lr=1e-2,
        beta1=0.9,
        beta2=0.99,
        eps=1e-8,
        weight_decay=weight_decay,
        mask=mask,
        alpha=alpha,
        alpha_max=alpha_max,
        rescale=rescale,
        bias_correction=bias_correction,
        maximize=maximize,
    )
    run_against_reference(hp, foreach)


PRESET_HYPERS = [
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
    dict(lr=3e-2, beta1=0.9, beta2=0.95, eps=1e-6, weight_decay=0.1, maximize=True),
    dict(lr=5e-3, beta1=0.5, beta2=0.9, eps=1e-8, weight_decay=0.01, bias_correction=False),
]


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("hyper", range(len(PRESET_HYPERS)))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_match_algorithm1(preset, hyper, foreach):
    hp = Hyper(**PRESET_HYPERS[hyper], **PRESETS[preset])
    run_against_reference(hp, foreach)


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 3)], ids=str)
def test_single_tensor_of_each_kind_matches_algorithm1(shape, foreach):
    # One tensor alone, so the foreach path sees lists of length one (incl. empty tensors).
    run_against_reference(Hyper(lr=1e-2, weight_decay=0.1), foreach, shapes=[shape])


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_tensor_lr_matches_algorithm1(foreach):
    run_against_reference(Hyper(lr=1e-2, weight_decay=0.1), foreach, lr_tensor=True)


# ---------------------------------------------------------------------------- by hand
def _two_elements(**kwargs):
    theta = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = AlphaAdam([theta], **kwargs)

    def step(g):
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        return theta.detach().tolist(), opt.read_mask_statistics().get("group0.param0")

    return step, opt, theta


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_two_element_example_by_hand_async(foreach):
    # Literal pseudo-code (no bias correction), b1 = b2 = 0.5, eps = 0, lr = 0.1, d = 2.
    step, opt, _ = _two_elements(
        lr=0.1, betas=(0.5, 0.5), eps=0.0, bias_correction=False, **path(foreach)
    )

    # t=1, g=[1,-2]. h_0 = 0 so d_1 = g*h_0 = [0,0]: the strict mask is empty, nothing moves.
    # h_1 = 0.5*g = [0.5,-1];  v_1 = 0.5*g^2 = [0.5,2].  alpha reported as alpha_max = 2.
    theta, stats = step([1.0, -2.0])
    assert theta == [1.0, -1.0]
    assert stats["alpha"] == 2.0 and stats["mask_density"] == 0.0

    # t=2, g=[2,3]. d_2 = g*h_1 = [1,-3] -> phi = [1,0].
    # h_2 = 0.5*[0.5,-1] + 0.5*[2,3] = [1.25, 1];  v_2 = 0.5*[0.5,2] + 0.5*[4,9] = [2.25, 5.5]
    # u_2 = [1.25/1.5, 1/sqrt(5.5)] = [5/6, 1/sqrt(5.5)];  ||u||^2 = 25/36 + 2/11
    # alpha = (25/36 + 2/11) / (25/36) = 1 + 72/275 = 347/275  (below alpha_max = 2)
    # eta^ = 0.1 * 2/(1+1) = 0.1;  theta_0 -= 0.1 * 347/275 * 5/6 = 0.1 * 347/330
    theta, stats = step([2.0, 3.0])
    assert theta[0] == pytest.approx(1.0 - 0.1 * 347 / 330, abs=1e-15)  # 0.894848...
    assert theta[1] == -1.0
    assert stats["alpha"] == pytest.approx(347 / 275, rel=1e-6)  # fp32 readout
    assert stats["mask_density"] == 0.5

    # t=3, g=[1,1]. d_3 = g*h_2 = [1.25, 1] -> phi = [1,1] (full mask, alpha = 1).
    # h_3 = [0.5*1.25+0.5, 0.5+0.5] = [1.125, 1];  v_3 = [0.5*2.25+0.5, 0.5*5.5+0.5] = [1.625, 3.25]
    # eta^ = 0.1 * 2/(2+1) = 0.2/3 (the "+1" of Algorithm 1 shrinks even a full-mask step).
    theta, stats = step([1.0, 1.0])
    assert theta[0] == pytest.approx(
        1.0 - 0.1 * 347 / 330 - (0.2 / 3) * 1.125 / 1.625**0.5, abs=1e-15
    )  # 0.836013...
    assert theta[1] == pytest.approx(-1.0 - (0.2 / 3) / 3.25**0.5, abs=1e-15)  # -1.036980...
    assert stats["alpha"] == 1.0 and stats["mask_density"] == 1.0
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].tolist() == [1.125, 1.0]
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg_sq"].tolist() == [1.625, 3.25]


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_two_element_example_by_hand_sync_moves_at_step_one(foreach):
    # Same numbers, synchronous mask: phi_1 = 1[g_1 * h_1 > 0] with h_1 = 0.5*g_1, so every
    # nonzero coordinate passes at step 1.  v_1 = [0.5, 2]; u_1 = [0.5/sqrt(0.5), -1/sqrt(2)]
    # = [sqrt(0.5), -sqrt(0.5)];  eta^ = 0.1 * 2/3;  alpha = 1 (full mask).
    step, _, _ = _two_elements(
        lr=0.1, betas=(0.5, 0.5), eps=0.0, bias_correction=False, mask="sync", **path(foreach)
    )
    theta, stats = step([1.0, -2.0])
    assert theta[0] == pytest.approx(1.0 - (0.2 / 3) * 0.5**0.5, abs=1e-15)  # 0.952859...
    assert theta[1] == pytest.approx(-1.0 + (0.2 / 3) * 0.5**0.5, abs=1e-15)
    # step_scale = alpha * d/(nnz+1) = 1 * 2/3, read out in fp32; both gradients nonzero.
    assert stats == pytest.approx(
        {"alpha": 1.0, "mask_density": 1.0, "grad_density": 1.0, "step_scale": 2 / 3}, rel=1e-7
    )


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_two_element_example_by_hand_adamw_preset(foreach):
    # AdamW with bias correction, eps = 0: the first step is lr * sign(g), because
    # h_1/(1-b1) = g and sqrt(v_1/(1-b2)) = |g|.  With wd = 0.5: theta *= 1 - 0.1*0.5 first.
    theta = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = alphaadam_preset("adamw", [theta], lr=0.1, eps=0.0, weight_decay=0.5, **path(foreach))
    theta.grad = torch.tensor([3.0, -0.25], dtype=torch.float64)
    opt.step()
    assert theta.detach().tolist() == pytest.approx([0.95 - 0.1, -0.95 + 0.1], abs=1e-15)
    assert opt.mask_statistics() == {}


# ------------------------------------------------------------- foreach == single-tensor
def _run_both(preset, dtype, steps=20, **kwargs):
    results = []
    for foreach in (False, True):
        params = make_params(dtype=dtype, shapes=SHAPES + [(16, 8)])
        opt = alphaadam_preset(preset, params, lr=1e-2, weight_decay=0.1, foreach=foreach, **kwargs)
        grads = [
            make_grads(p.shape, steps, seed=100 + i, dtype=dtype) for i, p in enumerate(params)
        ]
        for s in range(steps):
            for p, g in zip(params, grads):
                p.grad = g[s].clone()
            opt.step()
        results.append((params, opt))
    return results


@pytest.mark.parametrize(
    "dtype,tol",
    [
        (torch.float64, dict(rtol=1e-13, atol=1e-15)),
        (torch.float32, dict(rtol=1e-5, atol=1e-6)),
        (torch.bfloat16, dict(rtol=1.6e-2, atol=1e-5)),
    ],
    ids=["float64", "float32", "bfloat16"],
)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_foreach_equals_single_tensor(preset, dtype, tol):
    (single_params, single), (multi_params, multi) = _run_both(preset, dtype)
    for p1, p2 in zip(single_params, multi_params):
        assert p1.dtype == p2.dtype == dtype
        torch.testing.assert_close(p1.detach(), p2.detach(), **tol)
        s1, s2 = single.state[p1], multi.state[p2]
        assert set(s1) == set(s2)
        expected_keys = {"step", "exp_avg", "exp_avg_sq"}
        if PRESETS[preset]["mask"] != "none":
            expected_keys |= {"alpha", "mask_density", "grad_density"}
        assert set(s1) == expected_keys
        for key in s1:
            assert s1[key].dtype == s2[key].dtype, key
            assert s1[key].shape == s2[key].shape, key
            # State is fp32 for half-precision params, so it is compared at fp32 tolerance.
            state_tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.bfloat16 else tol
            torch.testing.assert_close(s1[key], s2[key], **state_tol, msg=key)


# ------------------------------------------------------------- adamw == torch AdamW
ADAMW_CASES = [
    dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1),
    dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01, maximize=True),
    dict(lr=3e-3, betas=(0.0, 0.5), eps=1e-8, weight_decay=1.0),
]


@pytest.mark.parametrize("torch_foreach", [False, True], ids=["torch-single", "torch-foreach"])
@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("case", range(len(ADAMW_CASES)))
def test_adamw_preset_matches_torch_adamw(case, foreach, torch_foreach):
    kwargs = ADAMW_CASES[case]
    ours = make_params(dtype=torch.float32, shapes=[(), (7,), (32, 16), (3, 4, 5)])
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    theirs_start = [p.detach().clone() for p in ours]
    opt = alphaadam_preset("adamw", ours, **path(foreach), **kwargs)
    ref = torch.optim.AdamW(theirs, foreach=torch_foreach, **kwargs)
    grads = [make_grads(p.shape, 100, seed=7 + i, dtype=torch.float32) for i, p in enumerate(ours)]
    for s in range(100):
        for a, b, g in zip(ours, theirs, grads):
            a.grad = g[s].clone()
            b.grad = g[s].clone()
        opt.step()
        ref.step()
    if foreach == "cpu":
        # The C++ step multiplies by reciprocal bias corrections and lets the compiler fuse
        # multiply-adds, so its fp32 trajectory drifts from torch's by more than an ulp
        # (measured: up to 4.1e-6 after 100 steps). What must hold is that it is as accurate
        # as torch: compared with AdamW run in float64 on the same inputs, its error is no
        # larger than torch's own fp32 error (measured 5.5e-6 to 8.3e-6 for both).
        exact = [p.detach().double().requires_grad_() for p in theirs_start]
        exact_opt = torch.optim.AdamW(exact, foreach=False, **kwargs)
        for s in range(100):
            for p, g in zip(exact, grads):
                p.grad = g[s].double()
            exact_opt.step()
        ours_err = max((a.detach().double() - e).abs().max().item() for a, e in zip(ours, exact))
        torch_err = max((b.detach().double() - e).abs().max().item() for b, e in zip(theirs, exact))
        assert ours_err <= 1.25 * torch_err + 1e-7, (ours_err, torch_err)
        tol = dict(rtol=1e-5, atol=1e-5)
    else:
        # fp32 rounding: AdamW divides by the bias corrections in another order. Measured:
        # at most 2 ulp apart (max |diff| 2.4e-7 on values up to ~4) after 100 steps.
        tol = dict(rtol=1e-6, atol=5e-7)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
        torch.testing.assert_close(opt.state[a]["exp_avg"], ref.state[b]["exp_avg"], **tol)
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"], **tol)


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_foreach_cpu_chunks_match_algorithm1(chunk, monkeypatch):
    # The CPU foreach path runs over runs of about CPU_CHUNK_NUMEL elements; tiny chunks
    # make tensors both above and below the chunk size share and split runs.
    import alphaadam.optim.reference_paths as module

    monkeypatch.setattr(module, "CPU_CHUNK_NUMEL", chunk)
    run_against_reference(Hyper(lr=1e-2, weight_decay=0.1), foreach=True)


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_tensors_at_different_steps_match_algorithm1(foreach):
    # A parameter without a gradient skips the step (its t does not advance), so one group
    # holds tensors at different t: bias corrections must be per tensor.
    hp = Hyper(lr=1e-2, weight_decay=0.1)
    params = make_params(shapes=[(5,), (3, 2), ()])
    refs = [Algorithm1(p, hp) for p in params]
    grads = [make_grads(p.shape, STEPS, seed=50 + i) for i, p in enumerate(params)]
    opt = AlphaAdam(params, lr=hp.lr, weight_decay=hp.weight_decay, **path(foreach))
    for step in range(STEPS):
        for i, (p, ref) in enumerate(zip(params, refs)):
            if step % (i + 2) == 1:  # this tensor sits this step out
                p.grad = None
            else:
                p.grad = grads[i][step].clone()
                ref.step(grads[i][step])
        opt.step()
        for p, ref in zip(params, refs):
            torch.testing.assert_close(p.detach(), ref.theta, rtol=1e-10, atol=1e-12)
    assert len({int(opt.state[p]["step"]) for p in params}) > 1


# ------------------------------------------------- rescale="active" (the extension)
@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("rescale, d", [(True, 4), ("active", 2)], ids=["paper", "active"])
def test_active_rescale_counts_only_rows_with_a_gradient_by_hand(foreach, rescale, d):
    # A 2 x 2 "embedding" whose second row gets no gradient, as a token absent from the batch.
    # Synchronous mask (it moves at step 1), lr 0.1, b1 = b2 = 0.5, no bias correction:
    # h_1 = 0.5 g, v_1 = 0.5 g^2, u = sign(g) sqrt(0.5) on row 0 and 0 on row 1 (eps).
    # phi = [[1, 1], [0, 0]], nnz = 2, alpha = 1 (u is 0 off the mask).
    # Paper: eta^ = 0.1 * 4 / 3; active: d = 2 elements with a gradient, eta^ = 0.1 * 2 / 3.
    theta = torch.tensor([[1.0, -1.0], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    opt = AlphaAdam(
        [theta], lr=0.1, betas=(0.5, 0.5), eps=1e-12, bias_correction=False, mask="sync",
        rescale=rescale, **path(foreach),
    )  # fmt: skip
    theta.grad = torch.tensor([[1.0, -2.0], [0.0, 0.0]], dtype=torch.float64)
    opt.step()
    eta_hat = 0.1 * d / 3
    expected = [[1.0 - eta_hat * 0.5**0.5, -1.0 + eta_hat * 0.5**0.5], [0.5, 0.5]]
    torch.testing.assert_close(theta.detach(), torch.tensor(expected, dtype=torch.float64))
    stats = opt.read_mask_statistics()["group0.param0"]
    assert stats == pytest.approx(
        {"alpha": 1.0, "mask_density": 0.5, "grad_density": 0.5, "step_scale": d / 3}, rel=1e-6
    )


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("mask", ["async", "sync"])
def test_active_rescale_on_dense_gradients_is_the_papers_bit_for_bit(foreach, mask):
    # Every gradient element nonzero: d_active = d, so the two rescales are the same numbers.
    def run(rescale):
        params = make_params(shapes=[(7,), (4, 5), (2, 3, 4)])
        opt = AlphaAdam(params, lr=1e-2, mask=mask, rescale=rescale, **path(foreach))
        gen = torch.Generator().manual_seed(3)
        for _ in range(6):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) + 0.5
            opt.step()
        return params, opt

    paper, paper_opt = run(True)
    active, active_opt = run("active")
    for p, q in zip(paper, active):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "alpha", "mask_density", "grad_density"):
            assert torch.equal(paper_opt.state[p][key], active_opt.state[q][key]), key
        assert float(active_opt.state[q]["grad_density"]) == 1.0
