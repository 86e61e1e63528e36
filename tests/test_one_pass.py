"""One-pass AlphaAdam (``one_pass=True``, an extension beyond the paper) against independent
expectations: the float64 transcription of its rule (``onepass_reference.py``), hand
arithmetic, the exact step where the start rule says so, and torch's AdamW for
``mask="none"``. The Triton kernels are checked in ``triton_interpreter_cases.py`` and
sharded parameters in ``test_sharded.py``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from algorithm1_reference import Algorithm1, Hyper
from alphaadam import AlphaAdam, alphaadam_preset
from onepass_reference import OnePass
from test_alphaadam_reference import OPTION_GRID as ALGORITHM1_GRID
from test_alphaadam_reference import SHAPES, make_grads, make_params, path

STEPS = 24
# Every path in float64 against the transcription; the compiled one compiles per option set,
# so it runs a few option sets (marked slow).
PATHS = [False, True, "cpu"]
PATH_IDS = ["single", "foreach", "fused_cpu"]
ALL_PATHS = [*PATHS, "compile"]
ALL_PATH_IDS = [*PATH_IDS, "compile"]
# The compiled path passes lr as a float32 tensor (fused.lr_tensor), also for float64
# parameters; an lr that float32 holds exactly keeps float64 tolerances meaningful.
COMPILE_LR = 2.0**-7


def one_pass_optimizer(params, hp: Hyper, foreach, lr=None):
    return AlphaAdam(
        params,
        lr=hp.lr if lr is None else lr,
        betas=(hp.beta1, hp.beta2),
        eps=hp.eps,
        weight_decay=hp.weight_decay,
        mask=hp.mask,
        alpha=hp.alpha,
        alpha_max=hp.alpha_max,
        rescale=hp.rescale,
        bias_correction=hp.bias_correction,
        maximize=hp.maximize,
        one_pass=True,
        **path(foreach),
    )


def feed(params, refs, grads, step: int) -> None:
    """Gradient ``step`` to every parameter, and the transcriptions' step on it."""
    for i, (p, ref) in enumerate(zip(params, refs)):
        p.grad = grads[i][step].clone()
        ref.step(grads[i][step])


def assert_matches(params, refs) -> None:
    for p, ref in zip(params, refs):
        torch.testing.assert_close(p.detach(), ref.theta, rtol=1e-10, atol=1e-12)


def run_against_transcription(
    hp: Hyper, foreach, shapes=SHAPES, steps=STEPS, zero_at=None, lr=None
):
    """Step the optimizer and the transcription side by side; ``zero_at``: ``{tensor index:
    step}`` where that tensor's gradient is exactly zero; ``lr``: a tensor lr, say."""
    params = make_params(shapes=shapes)
    refs = [OnePass(p, hp) for p in params]
    grads = [make_grads(p.shape, steps, seed=10 + i) for i, p in enumerate(params)]
    for i, step in (zero_at or {}).items():
        grads[i][step] = torch.zeros_like(grads[i][step])
    opt = one_pass_optimizer(params, hp, foreach, lr=lr)
    for step in range(steps):
        feed(params, refs, grads, step)
        opt.step()
        stats = opt.mask_statistics()  # float64 (read_mask_statistics reads out in fp32)
        for i, (p, ref) in enumerate(zip(params, refs)):
            where = f"param {i} {tuple(p.shape)} step {step + 1}"
            torch.testing.assert_close(
                p.detach(), ref.theta, rtol=1e-10, atol=1e-12, msg=lambda m, w=where: f"{w}: {m}"
            )
            if hp.mask == "none":
                continue
            s = {k: float(v) for k, v in stats[f"group0.param{i}"].items()}
            assert s["alpha"] == pytest.approx(ref.alpha, rel=1e-10), where
            assert s["mask_density"] == pytest.approx(ref.mask_density, abs=1e-12), where
            assert s["step_scale"] == pytest.approx(ref.step_scale, rel=1e-10), where
    for p, ref in zip(params, refs):
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.h, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.v, rtol=1e-10, atol=1e-14)
    return params, opt


# Algorithm 1's option grid without mask="none" (tested below as plain AdamW).
OPTION_GRID = [c for c in ALGORITHM1_GRID if c[0] != "none"]


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize(
    "mask,alpha,alpha_max,rescale,bias_correction,weight_decay,maximize",
    OPTION_GRID,
    ids=["-".join(map(str, c)) for c in OPTION_GRID],
)
def test_every_option_matches_the_transcription(
    mask, alpha, alpha_max, rescale, bias_correction, weight_decay, maximize, foreach
):
    hp = Hyper(
        lr=1e-2,
        beta1=0.9,
        beta2=0.99,
        weight_decay=weight_decay,
        mask=mask,
        alpha=alpha,
        alpha_max=alpha_max,
        rescale=rescale,
        bias_correction=bias_correction,
        maximize=maximize,
    )
    run_against_transcription(hp, foreach)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(mask="sync", alpha="sqrt_ratio", alpha_max=1.25, maximize=True),
        dict(rescale=False, bias_correction=False, weight_decay=0.0),
    ],
    ids=["alphaadam", "sync-sqrt-clip-maximize", "norescale-nobc"],
)
def test_compiled_path_matches_the_transcription(options):
    torch._dynamo.reset()
    hp = Hyper(lr=COMPILE_LR, beta2=0.99, **{"weight_decay": 0.1, **options})
    run_against_transcription(hp, "compile")


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_tensor_lr_matches_the_transcription(foreach):
    lr = torch.tensor(1e-2, dtype=torch.float64)
    run_against_transcription(Hyper(lr=1e-2, weight_decay=0.1), foreach, steps=8, lr=lr)


def test_the_rule_is_not_the_exact_step():
    # Guards the transcription tests against a one-pass option that silently ran the exact
    # step: from step 3 on (async: step 1 empty, step 2 exact) the two trajectories part.
    hp = Hyper(lr=1e-2, weight_decay=0.1)
    one_pass, _ = run_against_transcription(hp, False, steps=3)
    exact = make_params()
    opt = AlphaAdam(exact, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(3):
        for i, p in enumerate(exact):
            p.grad = make_grads(p.shape, 3, seed=10 + i)[step]
        opt.step()
    for a, b in zip(one_pass, exact):
        if a.numel() > 1:
            assert not torch.allclose(a, b, rtol=1e-6, atol=0), a.shape


# --------------------------------------------------------------------- the start rule
def _lockstep_with_exact(foreach, mask: str, steps: int):
    """A one-pass and an exact optimizer on the same path, same gradients; yields per step."""
    params = make_params(shapes=[(7,), (4, 5), ()])
    one, exact = [p.detach().clone().requires_grad_() for p in params], params
    grads = [make_grads(p.shape, steps, seed=30 + i) for i, p in enumerate(params)]
    kw = dict(lr=1e-2, weight_decay=0.1, mask=mask, **path(foreach))
    opt_one, opt_exact = AlphaAdam(one, one_pass=True, **kw), AlphaAdam(exact, **kw)
    for step in range(steps):
        for i in range(len(params)):
            one[i].grad = grads[i][step].clone()
            exact[i].grad = grads[i][step].clone()
        opt_one.step()
        opt_exact.step()
        yield step + 1, one, exact, opt_one, opt_exact


@pytest.mark.parametrize("foreach", ALL_PATHS, ids=ALL_PATH_IDS)
def test_async_step_two_after_the_empty_step_one_is_the_exact_step(foreach):
    # Step 1's asynchronous mask is empty (h_0 = 0): its count would scale step 2 by d/1.
    for step, one, exact, opt_one, opt_exact in _lockstep_with_exact(foreach, "async", 3):
        if step <= 2:
            for a, b in zip(one, exact):
                assert torch.equal(a, b), step  # the same code on the same path: bit for bit
            stats_one = opt_one.read_mask_statistics()
            assert stats_one == opt_exact.read_mask_statistics()
            if step == 1:
                assert all(s["step_scale"] == 0.0 for s in stats_one.values())
        else:  # step 3 uses step 2's statistics
            assert not torch.equal(one[1], exact[1])


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_sync_mask_is_usable_from_step_one(foreach):
    # The synchronous mask of step 1 is not empty (h_1 = (1 - b1) g_1), so step 2 already
    # applies step 1's multiplier.
    for step, one, exact, opt_one, _ in _lockstep_with_exact(foreach, "sync", 2):
        if step == 1:
            assert all(torch.equal(a, b) for a, b in zip(one, exact))
            applied_at_1 = {k: v["step_scale"] for k, v in opt_one.read_mask_statistics().items()}
        else:
            assert not torch.equal(one[1], exact[1])
            at_2 = opt_one.read_mask_statistics()
            assert {k: v["step_scale"] for k, v in at_2.items()} == applied_at_1


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_a_zero_gradient_step_makes_the_next_step_exact(foreach):
    # Tensor 2 gets an exactly zero gradient at step 6: its mask is empty, so step 7 must be
    # its exact step (the transcription implements the rule), while the others stay one-pass.
    hp = Hyper(lr=1e-2, weight_decay=0.1)
    shapes = [(7,), (4, 5), (3, 4)]
    run_against_transcription(hp, foreach, shapes=shapes, steps=9, zero_at={2: 5})

    # And directly: after the zero-gradient step, an exact optimizer with the same state
    # takes the same step 7 for tensor 2 (not for tensor 1).
    params = make_params(shapes=shapes)
    grads = [make_grads(p.shape, 7, seed=10 + i) for i, p in enumerate(params)]
    grads[2][5] = torch.zeros_like(grads[2][5])
    opt = AlphaAdam(params, lr=1e-2, weight_decay=0.1, one_pass=True, **path(foreach))
    for step in range(6):
        for i, p in enumerate(params):
            p.grad = grads[i][step].clone()
        opt.step()
    assert float(opt.state[params[2]]["mask_density"]) == 0.0
    twins = [p.detach().clone().requires_grad_() for p in params]
    exact = AlphaAdam(twins, lr=1e-2, weight_decay=0.1, **path(foreach))
    exact.load_state_dict(_roundtrip(opt))  # a copy: load_state_dict shares the tensors
    for group in exact.param_groups:
        group["one_pass"] = False
    for p, q, g in zip(params, twins, grads):
        p.grad, q.grad = g[6].clone(), g[6].clone()
    opt.step()
    exact.step()
    assert torch.equal(params[2], twins[2])
    assert not torch.equal(params[1], twins[1])


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_two_element_example_by_hand(foreach):
    # The hand-worked example of test_alphaadam_reference (b1 = b2 = 0.5, eps = 0, no bias
    # correction, lr = 0.1, d = 2), one-pass. Steps 1 and 2 are the exact steps there:
    # step 1's mask is empty, so step 2 cannot use its count.
    theta = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = AlphaAdam(
        [theta], lr=0.1, betas=(0.5, 0.5), eps=0.0, bias_correction=False, one_pass=True,
        **path(foreach),
    )  # fmt: skip

    def step(g):
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        stats = {k: float(v) for k, v in opt.mask_statistics()["group0.param0"].items()}
        return theta.detach().tolist(), stats

    theta_1, stats = step([1.0, -2.0])
    assert theta_1 == [1.0, -1.0] and stats["step_scale"] == 0.0
    # t=2, g=[2,3]: phi = [1,0], alpha_2 = 347/275, nnz_2 = 1, exact: 0.1 * 347/275 * 2/2 * 5/6.
    theta_2, stats = step([2.0, 3.0])
    assert theta_2[0] == pytest.approx(1.0 - 0.1 * 347 / 330, abs=1e-15)
    assert theta_2[1] == -1.0
    assert stats["step_scale"] == pytest.approx(347 / 275, rel=1e-15)
    # t=3, g=[1,1]: full mask, h_3 = [1.125, 1], v_3 = [1.625, 3.25]. The exact step would
    # scale by alpha_3 * 2/(2+1) = 2/3; one-pass applies step 2's 347/275 * 2/(1+1).
    theta_3, stats = step([1.0, 1.0])
    c = 347 / 275
    assert theta_3[0] == pytest.approx(theta_2[0] - 0.1 * c * 1.125 / 1.625**0.5, abs=1e-15)
    assert theta_3[1] == pytest.approx(-1.0 - 0.1 * c / 3.25**0.5, abs=1e-15)
    # alpha and the densities are this step's (for step 4), step_scale what step 3 applied.
    assert stats == pytest.approx(
        {"alpha": 1.0, "mask_density": 1.0, "grad_density": 1.0, "step_scale": c}, rel=1e-15
    )


# ---------------------------------------------------------------- mask="none" is AdamW
@pytest.mark.parametrize("foreach", ALL_PATHS, ids=ALL_PATH_IDS)
def test_one_pass_without_a_mask_is_plain_adamw(foreach):
    shapes = [(), (7,), (32, 16)]
    ours = make_params(dtype=torch.float32, shapes=shapes)
    plain = [p.detach().clone().requires_grad_() for p in ours]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    kw = dict(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    opt = alphaadam_preset("adamw", ours, one_pass=True, **kw, **path(foreach))
    opt_plain = alphaadam_preset("adamw", plain, **kw, **path(foreach))
    ref = torch.optim.AdamW(theirs, foreach=False, **kw)
    grads = [make_grads(p.shape, 30, seed=7 + i, dtype=torch.float32) for i, p in enumerate(ours)]
    for s in range(30):
        for a, b, c, g in zip(ours, plain, theirs, grads):
            a.grad, b.grad, c.grad = g[s].clone(), g[s].clone(), g[s].clone()
        opt.step()
        opt_plain.step()
        ref.step()
    assert opt.mask_statistics() == {}
    for a, b, c in zip(ours, plain, theirs):
        assert torch.equal(a, b)  # one_pass changes nothing without a mask
        assert set(opt.state[a]) == {"step", "exp_avg", "exp_avg_sq"}
        # torch's AdamW: fp32 rounding apart (test_alphaadam_reference measures the bound).
        torch.testing.assert_close(a.detach(), c.detach(), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------- checkpoints
def _roundtrip(opt) -> dict:
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("foreach", PATHS, ids=PATH_IDS)
def test_checkpoint_mid_training_continues_bit_identically(foreach):
    params = make_params(shapes=[(7,), (4, 5), ()])
    grads = [make_grads(p.shape, 10, seed=70 + i) for i, p in enumerate(params)]
    kw = dict(lr=1e-2, weight_decay=0.1, one_pass=True, **path(foreach))
    opt = AlphaAdam(params, **kw)
    resumed_params = None
    for step in range(10):
        if step == 5:
            resumed_params = [p.detach().clone().requires_grad_() for p in params]
            resumed = AlphaAdam(resumed_params, **kw)
            resumed.load_state_dict(_roundtrip(opt))
            assert set(resumed.state[resumed_params[0]]) == {
                "step", "exp_avg", "exp_avg_sq", "alpha", "mask_density", "grad_density", "reused_scale"
            }  # fmt: skip
        for i, p in enumerate(params):
            p.grad = grads[i][step].clone()
            if resumed_params is not None:
                resumed_params[i].grad = grads[i][step].clone()
        opt.step()
        if resumed_params is not None:
            resumed.step()
    for a, b in zip(params, resumed_params):
        assert torch.equal(a, b)
    assert opt.read_mask_statistics() == resumed.read_mask_statistics()


@pytest.mark.slow
def test_checkpoint_moves_between_every_path():
    # single -> C++ -> compiled -> foreach -> single, two steps each, against the
    # transcription (float64): the state carries everything the next step needs.
    hp = Hyper(lr=COMPILE_LR, weight_decay=0.1)
    params = make_params()
    refs = [OnePass(p, hp) for p in params]
    grads = [make_grads(p.shape, 10, seed=10 + i) for i, p in enumerate(params)]
    route = [False, "cpu", "compile", True, False]
    opt = None
    for step in range(10):
        if step % 2 == 0:
            state = None if opt is None else _roundtrip(opt)
            opt = one_pass_optimizer(params, hp, route[step // 2])
            if state is not None:
                opt.load_state_dict(state)
        feed(params, refs, grads, step)
        opt.step()
        assert_matches(params, refs)


def test_switching_one_pass_on_mid_training_uses_the_exact_steps_statistics():
    # An exact run's alpha and density are valid previous statistics: a checkpoint of an
    # exact run continues one-pass from them, as the transcription does after its steps.
    hp = Hyper(lr=1e-2, weight_decay=0.1)
    params = make_params(shapes=[(7,), (4, 5)])
    refs = [OnePass(p, hp) for p in params]
    grads = [make_grads(p.shape, 6, seed=10 + i) for i, p in enumerate(params)]
    exact = AlphaAdam(params, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(3):
        for i, p in enumerate(params):
            p.grad = grads[i][step].clone()
        exact.step()
    # The transcription starts from the exact run's state, its step 3 statistics included.
    for p, ref in zip(params, refs):
        ref.theta, ref.t = p.detach().clone(), 3
        ref.h, ref.v = exact.state[p]["exp_avg"].clone(), exact.state[p]["exp_avg_sq"].clone()
        ref.prev_alpha = float(exact.state[p]["alpha"])
        ref.prev_nnz = round(float(exact.state[p]["mask_density"]) * p.numel())
    opt = AlphaAdam(params, lr=1e-2, weight_decay=0.1, one_pass=True, foreach=False)
    opt.load_state_dict(_roundtrip(exact))
    for group in opt.param_groups:  # the checkpoint's groups say one_pass=False
        group["one_pass"] = True
    for step in range(3, 6):
        feed(params, refs, grads, step)
        opt.step()
        assert_matches(params, refs)


# ------------------------------------------------------------------- options
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_invalid_one_pass_names_the_value_and_choices(value):
    with pytest.raises(ValueError, match=rf"one_pass={value!r}.*True, False"):
        AlphaAdam(make_params(shapes=[(3,)]), one_pass=value)
    opt = AlphaAdam(make_params(shapes=[(3,)]))
    with pytest.raises(ValueError, match=rf"one_pass={value!r}"):
        opt.add_param_group({"params": make_params(shapes=[(2,)], seed=1), "one_pass": value})


def test_one_pass_is_a_per_group_option():
    hp = Hyper(lr=1e-2, weight_decay=0.1)
    a, b = make_params(shapes=[(7,), (4, 5)])
    ref_a, ref_b = OnePass(a, hp), Algorithm1(b, hp)
    opt = AlphaAdam([{"params": [a], "one_pass": True}, {"params": [b]}], lr=1e-2, weight_decay=0.1)
    grads = [make_grads(p.shape, 6, seed=10 + i) for i, p in enumerate((a, b))]
    for step in range(6):
        a.grad, b.grad = grads[0][step].clone(), grads[1][step].clone()
        ref_a.step(grads[0][step])
        ref_b.step(grads[1][step])
        opt.step()
    torch.testing.assert_close(a.detach(), ref_a.theta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.detach(), ref_b.theta, rtol=1e-10, atol=1e-12)
    assert "reused_scale" in opt.state[a] and "reused_scale" not in opt.state[b]


def test_deepcopy_keeps_one_pass():
    params = make_params(shapes=[(7,)])
    opt = AlphaAdam(params, one_pass=True)
    assert copy.deepcopy(opt).param_groups[0]["one_pass"] is True


def test_registry_name_and_config_build_the_one_pass_alphaadam():
    from omegaconf import OmegaConf

    from alphaadam.optim.registry import build_optimizer
    from trainer_helpers import compose_config

    cfg = compose_config(["optimizer=alphaadam_onepass"])
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    reference = OmegaConf.to_container(
        compose_config(["optimizer=alphaadam"]).optimizer, resolve=True
    )
    assert {k: v for k, v in opt_cfg.items() if k != "name"} == {
        k: v for k, v in reference.items() if k != "name"
    }  # the alphaadam preset's settings, fused included
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(opt_cfg.pop("name"), model, **opt_cfg)
    for group in opt.param_groups:
        assert group["one_pass"] is True
        assert (group["mask"], group["alpha"], group["rescale"]) == ("async", "ratio", True)
