"""AlphaLion and AlphaSGD against literal transcriptions written here, torch.optim.SGD,
pytorch-optimizer's (Cautious) Lion, and a real learning problem."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alphaadam.optim.alphalion import AlphaLion
from alphaadam.optim.alphasgd import AlphaSGD
from alphaadam.optim.registry import build_optimizer

SHAPES = [(7, 5), (11,), (3, 4, 2)]
STEPS = 25


def _problem(seed: int = 0):
    """Parameters, targets and per-step noise for g = (theta - target) + noise."""
    g = torch.Generator().manual_seed(seed)
    thetas = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    targets = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    noise = [
        [0.7 * torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
        for _ in range(STEPS)
    ]
    return thetas, targets, noise


def _grad(theta, target, noise):
    return theta - target + noise


# ----------------------------------------------------------------- literal references
def _masked(u, phi, alpha, alpha_max, rescale):
    """phi*u scaled by d/(nnz+1) and alpha = min(||u||^2/||phi u||^2, alpha_max)."""
    kept = (phi * u).pow(2).sum().item()
    total = u.pow(2).sum().item()
    if alpha == "none":
        a = 1.0
    elif kept == 0:
        a = alpha_max
    else:
        a = total / kept if alpha == "ratio" else math.sqrt(total / kept)
        a = min(a, alpha_max)
    s = u.numel() / (phi.sum().item() + 1) if rescale else 1.0
    return s * a * phi * u


def lion_reference(thetas, targets, noise, lr, b1, b2, wd, mask, alpha, alpha_max, rescale):
    """Lion, Algorithm 2 of Chen et al. (2023), with the mask rules of AlphaLion's docs."""
    thetas = [t.clone() for t in thetas]
    ms = [torch.zeros_like(t) for t in thetas]
    for step_noise in noise:
        for i, (theta, target, n) in enumerate(zip(thetas, targets, step_noise)):
            g = _grad(theta, target, n)
            m = ms[i]
            update = torch.sign(b1 * m + (1 - b1) * g)
            if mask != "none":
                phi = ((g * m) > 0).double() if mask == "async" else ((g * update) > 0).double()
                update = _masked(update, phi, alpha, alpha_max, rescale)
            thetas[i] = theta - lr * (update + wd * theta)
            ms[i] = b2 * m + (1 - b2) * g
    return thetas


def sgd_reference(
    thetas, targets, noise, lr, mu, damp, wd, nesterov, mask, alpha, alpha_max, rescale
):
    """SGD with momentum as torch documents it, with the mask rules of AlphaSGD's docs."""
    thetas = [t.clone() for t in thetas]
    bufs = [None] * len(thetas)
    for step_noise in noise:
        for i, (theta, target, n) in enumerate(zip(thetas, targets, step_noise)):
            g = _grad(theta, target, n) + wd * theta
            prev = bufs[i] if bufs[i] is not None else torch.zeros_like(g)
            b = g.clone() if bufs[i] is None else mu * bufs[i] + (1 - damp) * g
            bufs[i] = b
            update = g + mu * b if nesterov else b
            if mask != "none":
                phi = ((g * prev) > 0).double() if mask == "async" else ((g * update) > 0).double()
                update = _masked(update, phi, alpha, alpha_max, rescale)
            thetas[i] = theta - lr * update
    return thetas


def run_optimizer(opt_cls, thetas, targets, noise, **kwargs):
    params = [t.clone().requires_grad_(True) for t in thetas]
    opt = opt_cls(params, **kwargs)
    for step_noise in noise:
        for p, target, n in zip(params, targets, step_noise):
            p.grad = _grad(p.detach(), target, n)
        opt.step()
    return [p.detach() for p in params], opt


MASK_OPTIONS = [
    dict(mask="none", alpha="none", alpha_max=2.0, rescale=False),
    dict(mask="async", alpha="ratio", alpha_max=2.0, rescale=True),
    dict(mask="sync", alpha="none", alpha_max=2.0, rescale=True),
    dict(mask="async", alpha="sqrt_ratio", alpha_max=1.5, rescale=False),
    dict(mask="sync", alpha="ratio", alpha_max=3.0, rescale=True),
    dict(mask="async", alpha="none", alpha_max=2.0, rescale=True),
]


# ---------------------------------------------------------------------- AlphaLion
@pytest.mark.parametrize("opts", MASK_OPTIONS, ids=lambda o: f"{o['mask']}-{o['alpha']}")
@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_alphalion_matches_transcription(opts, wd):
    thetas, targets, noise = _problem()
    got, _ = run_optimizer(
        AlphaLion, thetas, targets, noise, lr=0.01, betas=(0.8, 0.95), weight_decay=wd, **opts
    )
    want = lion_reference(thetas, targets, noise, 0.01, 0.8, 0.95, wd, **opts)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lion_equals_pytorch_optimizer_lion_and_cautious_lion():
    po = pytest.importorskip("pytorch_optimizer", reason="pytorch-optimizer (extra baselines)")
    thetas, targets, noise = _problem(3)
    for cautious, opts in [(False, MASK_OPTIONS[0]), (True, MASK_OPTIONS[2])]:
        ours, _ = run_optimizer(
            AlphaLion, thetas, targets, noise, lr=0.02, betas=(0.9, 0.99), weight_decay=0.1, **opts
        )
        theirs, _ = run_optimizer(
            po.Lion,
            thetas,
            targets,
            noise,
            lr=0.02,
            betas=(0.9, 0.99),
            weight_decay=0.1,
            cautious=cautious,
            foreach=False,
        )
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_alphalion_first_async_step_moves_nothing():
    p = torch.nn.Parameter(torch.ones(4))
    opt = AlphaLion([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 3.0, -4.0])
    opt.step()
    assert torch.equal(p.detach(), torch.ones(4))  # m_0 = 0: no coordinate agrees
    assert opt.state[p]["mask_density"].item() == 0.0
    assert opt.state[p]["alpha"].item() == 2.0  # alpha_max for an empty mask, never inf/NaN


# ------------------------------------------------------------------------ AlphaSGD
SGD_SETTINGS = [
    dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(momentum=0.8, dampening=0.3, weight_decay=0.05, nesterov=False),
    dict(momentum=0.9, dampening=0.0, weight_decay=0.05, nesterov=True),
]


@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=["plain", "damp-wd", "nesterov"])
@pytest.mark.parametrize("maximize", [False, True])
def test_alphasgd_none_equals_torch_sgd(settings, maximize):
    thetas, targets, noise = _problem(1)
    ours, _ = run_optimizer(
        AlphaSGD,
        thetas,
        targets,
        noise,
        lr=0.05,
        mask="none",
        alpha="none",
        rescale=False,
        maximize=maximize,
        **settings,
    )
    theirs, _ = run_optimizer(
        torch.optim.SGD,
        thetas,
        targets,
        noise,
        lr=0.05,
        maximize=maximize,
        foreach=False,
        **settings,
    )
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("opts", MASK_OPTIONS[1:], ids=lambda o: f"{o['mask']}-{o['alpha']}")
@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=["plain", "damp-wd", "nesterov"])
def test_alphasgd_matches_transcription(opts, settings):
    thetas, targets, noise = _problem(2)
    got, _ = run_optimizer(AlphaSGD, thetas, targets, noise, lr=0.05, **settings, **opts)
    want = sgd_reference(
        thetas,
        targets,
        noise,
        0.05,
        settings["momentum"],
        settings["dampening"],
        settings["weight_decay"],
        settings["nesterov"],
        **opts,
    )
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_alphasgd_rejects_mask_without_momentum():
    with pytest.raises(ValueError, match="momentum > 0"):
        AlphaSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.0)
    with pytest.raises(ValueError, match="valid choices are async, sync, none"):
        AlphaSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, mask="later")


# ---------------------------------------------------------------- convergence
def _digits():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn (extra dev)")
    x, y = datasets.load_digits(return_X_y=True)  # 1797 8x8 images, bundled with sklearn
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("alphalion", dict(lr=3e-3, weight_decay=0.0)),
        ("lion", dict(lr=3e-3, weight_decay=0.0)),
        ("alphasgd", dict(lr=0.1, momentum=0.9)),
        ("sgd", dict(lr=0.1, momentum=0.9)),
    ],
)
def test_convergence_on_digits(name, cfg):
    """A 64-32-10 MLP on sklearn's digits, full batch, 150 steps: training accuracy > 95%."""
    x, y = _digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    opt = build_optimizer(name, model, **cfg)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
        final = F.cross_entropy(model(x), y).item()
    assert final < 0.25 * first, (first, final)
    assert acc > 0.95, acc


@pytest.mark.parametrize("name", ["alphalion", "alphasgd"])
def test_mask_statistics_per_tensor(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
    opt = build_optimizer(name, model, lr=1e-2, **({"momentum": 0.9} if name == "alphasgd" else {}))
    x, y = torch.randn(16, 5), torch.randn(16, 2)
    for step in range(3):
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        stats = opt.read_mask_statistics(model.named_parameters())
        assert sorted(stats) == sorted(n for n, _ in model.named_parameters())
        numels = {n: p.numel() for n, p in model.named_parameters()}
        for n, s in stats.items():
            if step == 0:  # no momentum yet: the asynchronous mask is empty, nothing moved
                # (the MSE gradient of a linear layer on random inputs is dense)
                assert s == {
                    "alpha": 2.0,
                    "mask_density": 0.0,
                    "grad_density": 1.0,
                    "step_scale": 0.0,
                }
            else:
                assert 1.0 <= s["alpha"] <= 2.0 and 0.0 < s["mask_density"] <= 1.0
                # Algorithm 1's multiplier of lr: alpha * d / (||phi||_0 + 1).
                d = numels[n]
                nnz = round(s["mask_density"] * d)
                assert s["step_scale"] == pytest.approx(s["alpha"] * d / (nnz + 1), rel=1e-6)


def test_plain_names_refuse_mask_options():
    model = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="optimizer 'lion' fixes \\['mask'\\].*'alphalion'"):
        build_optimizer("lion", model, lr=1e-3, mask="async")


def _run_skipping_first(opt_cls, thetas, targets, noise, **kwargs):
    """Like run_optimizer, but the first tensor has no gradient at step 1 (so one group
    mixes tensors at different step counts)."""
    params = [t.clone().requires_grad_(True) for t in thetas]
    opt = opt_cls(params, **kwargs)
    for step, step_noise in enumerate(noise):
        for i, (p, target, n) in enumerate(zip(params, targets, step_noise)):
            p.grad = None if (step == 0 and i == 0) else _grad(p.detach(), target, n)
        opt.step()
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("opts", MASK_OPTIONS, ids=lambda o: f"{o['mask']}-{o['alpha']}")
@pytest.mark.parametrize(
    "opt_cls,kwargs",
    [
        (AlphaLion, dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.3)),
        (AlphaLion, dict(lr=torch.tensor(0.01, dtype=torch.float64), maximize=True)),
        (AlphaSGD, SGD_SETTINGS[1]),
        (AlphaSGD, {**SGD_SETTINGS[2], "maximize": True}),
    ],
    ids=["lion", "lion-tensor-lr-max", "sgd-damp-wd", "sgd-nesterov-max"],
)
def test_foreach_path_equals_single_tensor_path(opt_cls, kwargs, opts):
    thetas, targets, noise = _problem(7)
    kwargs = {"lr": 0.05, **kwargs, **opts}
    single, opt_s = _run_skipping_first(opt_cls, thetas, targets, noise, foreach=False, **kwargs)
    multi, opt_m = _run_skipping_first(opt_cls, thetas, targets, noise, foreach=True, **kwargs)
    for a, b in zip(single, multi):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if opts["mask"] != "none":
        s, m = opt_s.read_mask_statistics(), opt_m.read_mask_statistics()
        for key in s:
            assert s[key] == pytest.approx(m[key], rel=1e-10)


@pytest.mark.parametrize("settings", SGD_SETTINGS, ids=["plain", "damp-wd", "nesterov"])
def test_alphasgd_foreach_none_equals_torch_foreach_sgd(settings):
    thetas, targets, noise = _problem(8)
    ours, _ = _run_skipping_first(AlphaSGD, thetas, targets, noise, lr=0.05, mask="none",
                                  alpha="none", rescale=False, foreach=True, **settings)  # fmt: skip
    theirs, _ = _run_skipping_first(torch.optim.SGD, thetas, targets, noise, lr=0.05,
                                    foreach=True, **settings)  # fmt: skip
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
