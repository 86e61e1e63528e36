"""The registry's baselines: every config builds and learns on a tiny GPT and resumes exactly;
CAdamW against the Cautious rule; library-specific wiring (Adam-mini blocks, GaLore groups,
8-bit state); clear errors for CUDA-only and missing packages."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from torch import nn

from alphaadam.optim import baselines
from alphaadam.optim.registry import available_optimizers, build_optimizer
from optim_helpers import CONFIG_DIR, batches, load_config, roundtrip, tiny_gpt, train

CUDA_ONLY = {"microadam"}
# Packages each registered name needs beyond torch (absent ones skip with the package named).
NEEDS = {
    "adam_mini": "adam_mini",
    "galore": "galore_torch",
    "adam8bit": "bitsandbytes",
    "ldadam": "ldadamw_torch",
}
OWNED_NAMES = {"cadamw", "adam_mini", "galore", "adam8bit", "microadam", "ldadam",
               "lion", "alphalion", "sgd", "alphasgd"}  # fmt: skip
# Learning rates that show learning within 10 steps on the toy model (the configs carry the
# paper's fine-tuning rates, far too small for that).
TEST_LR = {"lion": 3e-3, "alphalion": 3e-3, "sgd": 0.5, "alphasgd": 0.1}
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _skip_if_missing(name: str) -> None:
    module = NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{name} needs the package providing {module!r}, which is not installed")


def test_every_owned_name_is_registered_and_has_a_config():
    assert OWNED_NAMES <= set(available_optimizers())
    names = {load_config(c)[0] for c in CONFIGS}
    assert OWNED_NAMES <= names, OWNED_NAMES - names


@pytest.mark.parametrize("config", [c for c in CONFIGS])
def test_config_learns_and_resumes_exactly(config):
    name, cfg = load_config(config)
    assert name in available_optimizers(), f"{config}.yaml names unregistered {name!r}"
    if name in CUDA_ONLY:
        pytest.skip(f"{name} is CUDA-only; its CPU error is tested separately")
    _skip_if_missing(name)
    cfg["lr"] = TEST_LR.get(name, 3e-3)
    one_batch = batches(1) * 10

    model = tiny_gpt()
    losses = train(model, build_optimizer(name, model, **cfg), one_batch)
    assert losses[-1] < 0.95 * losses[0], losses

    # Resume: 4 steps, checkpoint through torch.save/torch.load(weights_only=True), 4 more.
    data = batches(8, seed=2)
    model_a = tiny_gpt()
    opt_a = build_optimizer(name, model_a, **cfg)
    train(model_a, opt_a, data[:4])
    ckpt = roundtrip({"model": model_a.state_dict(), "opt": opt_a.state_dict()})
    train(model_a, opt_a, data[4:])

    model_b = tiny_gpt(seed=123)
    opt_b = build_optimizer(name, model_b, **cfg)
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    train(model_b, opt_b, data[4:])
    for (n, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {n} differs after resume"


# ---------------------------------------------------------------------------- cadamw
def _cautious_adamw_reference(params, grad_fn, steps, lr, b1, b2, eps, wds, mask_fn):
    """AdamW (torch's order: decay, then step) with the Cautious mask of Liang et al. 2024:
    u = m_hat / (sqrt(v_hat) + eps); phi = 1[u * g > 0]; step lr * u * phi * d / (nnz + 1)."""
    params = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        grads = grad_fn(params, t)
        for i, (p, g, wd) in enumerate(zip(params, grads, wds)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
            u = mask_fn(u, g)
            params[i] = p * (1 - lr * wd) - lr * u
    return params


def _literal_cautious(u, g):
    mask = (u * g > 0).to(g.dtype)
    return u * mask * (mask.numel() / (mask.sum() + 1))


def _pytorch_optimizer_cautious(u, g):
    base = pytest.importorskip("pytorch_optimizer.base.optimizer", reason="pytorch-optimizer")
    u = u.clone()
    base.BaseOptimizer.apply_cautious(u, g)
    return u


@pytest.mark.parametrize("mask_fn", [_literal_cautious, _pytorch_optimizer_cautious])
def test_cadamw_is_cautious_adamw(mask_fn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(5)
    noise = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
             for _ in range(25)]  # fmt: skip

    def grad_fn(ps, t):  # gradient of 0.5 ||p - 0.3||^2 plus noise
        return [p - 0.3 + 0.5 * n for p, n in zip(ps, noise[t - 1])]

    start = [p.detach().clone() for p in params]
    opt = build_optimizer("cadamw", model, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for t in range(1, 26):
        for p, g in zip(params, grad_fn([q.detach() for q in params], t)):
            p.grad = g
        opt.step()
    wds = [0.1 if p.dim() >= 2 else 0.0 for p in params]  # the registry's no-decay rule
    want = _cautious_adamw_reference(start, grad_fn, 25, 0.01, 0.9, 0.99, 1e-8, wds, mask_fn)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------- adam_mini
def test_adam_mini_reads_dims_from_model_and_partitions_blocks():
    _skip_if_missing("adam_mini")
    model = tiny_gpt()
    opt = build_optimizer("adam_mini", model, lr=1e-3)
    train(model, opt, batches(1))
    n_head, n_embd = model.config.n_head, model.config.n_embd
    block = model.transformer.h[0]
    vmean = {k: opt.state[p]["vmean"].shape for k, p in [
        ("c_attn", block.attn.c_attn.weight),
        ("wte", model.transformer.wte.weight),
        ("wpe", model.transformer.wpe.weight),
    ]}  # fmt: skip
    # Fused QKV: one second moment per head of q, k and v (Adam-mini's wqk treatment).
    assert vmean["c_attn"] == (3 * n_head, 1)
    # Embeddings: one second moment per row (token / position).
    assert vmean["wte"] == (model.config.vocab_size, 1)
    assert vmean["wpe"] == (model.config.block_size, 1)
    assert n_embd == 64


def test_adam_mini_dims_errors_and_fallback():
    _skip_if_missing("adam_mini")
    with pytest.raises(ValueError, match="n_heads=8 but the model's config has n_heads=4"):
        build_optimizer("adam_mini", tiny_gpt(), lr=1e-3, n_heads=8)
    bare = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="set optimizer.dim and optimizer.n_heads"):
        build_optimizer("adam_mini", bare, lr=1e-3)
    opt = build_optimizer("adam_mini", bare, lr=1e-3, dim=8, n_heads=2)
    assert opt.dim == 8 and opt.n_heads == 2


# ---------------------------------------------------------------------------- galore
def _galore_module_names(model, rank):
    return sorted(baselines.low_rank_split(model, rank)[1])


def test_galore_projects_attention_and_mlp_weights_only():
    _skip_if_missing("galore")
    model = tiny_gpt()
    names = _galore_module_names(model, 8)
    # 4 linear weights per block (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj), 2 blocks; no
    # embedding, no (tied) lm_head, no norm or bias.
    assert len(names) == 8
    assert all(("attn" in n or "mlp" in n) for n in names), names
    opt = build_optimizer("galore", model, lr=1e-3, rank=8, update_proj_gap=50, scale=0.25)
    train(model, opt, batches(1))
    c_fc = model.transformer.h[0].mlp.c_fc.weight  # (256, 64): right projection to rank 8
    assert opt.state[c_fc]["exp_avg"].shape == (256, 8)
    assert opt.state[c_fc]["projector"].rank == 8
    ln = model.transformer.h[0].ln_1.weight
    assert opt.state[ln]["exp_avg"].shape == ln.shape  # full-rank AdamW
    # Rank 512 (the GSM8K setting) exceeds every matrix of this toy model: nothing projected.
    assert _galore_module_names(model, 512) == []


def test_galore_resume_across_a_projection_refresh():
    _skip_if_missing("galore")
    cfg = dict(lr=3e-3, rank=4, update_proj_gap=3, scale=0.25, weight_decay=0.01)
    data = batches(8, seed=4)
    model_a = tiny_gpt()
    opt_a = build_optimizer("galore", model_a, **cfg)
    train(model_a, opt_a, data[:4])
    ckpt = roundtrip({"model": model_a.state_dict(), "opt": opt_a.state_dict()})
    assert isinstance(
        opt_a.state[model_a.transformer.h[0].mlp.c_fc.weight]["projector"],
        baselines.importlib.import_module("galore_torch.galore_projector").GaLoreProjector,
    )  # fmt: skip  (state_dict() left the live state alone)
    train(model_a, opt_a, data[4:])  # steps 4..7 refresh the projection at step 6
    model_b = tiny_gpt(seed=9)
    opt_b = build_optimizer("galore", model_b, **cfg)
    model_b.load_state_dict(ckpt["model"])
    opt_b.load_state_dict(ckpt["opt"])
    train(model_b, opt_b, data[4:])
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


# -------------------------------------------------------------------------- adam8bit
def test_adam8bit_keeps_8bit_moments_for_large_tensors():
    _skip_if_missing("adam8bit")
    model = tiny_gpt()
    opt = build_optimizer("adam8bit", model, lr=1e-3)
    train(model, opt, batches(1))
    big = model.transformer.h[0].mlp.c_fc.weight  # 16384 elements >= min_8bit_size
    small = model.transformer.h[0].ln_1.weight
    assert opt.state[big]["state1"].dtype == torch.uint8
    assert opt.state[big]["state2"].dtype == torch.uint8
    assert opt.state[small]["state1"].dtype == torch.float32


# ---------------------------------------------------------------- errors and extras
def test_microadam_on_cpu_names_the_cuda_requirement():
    name, cfg = load_config("microadam")
    with pytest.raises(RuntimeError, match="runs only on CUDA GPUs.*\\['cpu'\\]"):
        build_optimizer(name, tiny_gpt(), **cfg)


def test_require_names_package_and_install_command():
    with pytest.raises(ImportError, match=r"'microadam' needs the package 'ista-daslab-optim"):
        baselines.require("no_such_module_anywhere", "ista-daslab-optimizers", "microadam",
                          baselines.MICROADAM_HINT)  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("ldadamw_torch") is not None,
                    reason="ldadamw_torch is installed: the config test builds it instead")  # fmt: skip
def test_ldadam_without_the_authors_package_gives_the_install_command():
    name, cfg = load_config("ldadam")
    with pytest.raises(ImportError, match="LowDimensionalAdam.git"):
        build_optimizer(name, tiny_gpt(), **cfg)


@pytest.mark.parametrize(
    "name,module",
    [
        ("adam_mini", "adam_mini"),
        ("galore", "galore_torch"),
        ("adam8bit", "bitsandbytes"),
    ],  # fmt: skip
)
def test_missing_package_gives_the_extra_install_hint(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "alphaadam\[baselines\]"'):
        build_optimizer(name, tiny_gpt(), lr=1e-3)


def test_project_imports_and_builds_without_any_optional_package():
    blocked = ["adam_mini", "galore_torch", "bitsandbytes", "pytorch_optimizer",
               "ista_daslab_optimizers", "ldadamw_torch", "torchao"]  # fmt: skip
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"
        "import torch, alphaadam\n"
        "from alphaadam.optim.registry import build_optimizer, available_optimizers\n"
        "assert 'adam_mini' in available_optimizers()\n"
        "m = torch.nn.Linear(4, 4)\n"
        "for n in ('alphaadam', 'cadamw', 'alphalion', 'alphasgd'):\n"
        "    build_optimizer(n, m, lr=1e-3)\n"
        "try:\n"
        "    build_optimizer('galore', m, lr=1e-3)\n"
        "except ImportError as e:\n"
        "    print('HINT', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'pip install "alphaadam[baselines]"' in out.stdout


def _tiny_roberta():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=40, num_labels=2,
    )  # fmt: skip
    return transformers.RobertaForSequenceClassification(cfg)


def test_low_rank_selection_on_roberta_skips_embeddings_and_classifier():
    names = baselines.low_rank_split(_tiny_roberta(), 8)[1]
    per_layer = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"]  # fmt: skip
    assert names == [f"roberta.encoder.layer.{i}.{n}" for i in range(2) for n in per_layer]


@pytest.mark.parametrize("name", ["adam_mini", "galore", "cadamw"])
def test_glue_model_trains(name):
    """RoBERTa (the GLUE model) builds and steps; Adam-mini reads hidden_size/heads from it and
    its BERT LayerNorm names do not reach adam-mini's per-row branch."""
    _skip_if_missing(name)
    model = _tiny_roberta()
    opt = build_optimizer(name, model, lr=1e-3, weight_decay=0.01)
    ids, labels = torch.randint(0, 100, (4, 8)), torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    if name == "adam_mini":
        q = model.roberta.encoder.layer[0].attention.self.query.weight
        assert opt.state[q]["vmean"].shape == (4, 1)  # one second moment per head


def test_ldadam_wiring_with_a_stand_in_package(monkeypatch):
    """Plumbing only (the authors' package cannot be installed offline): a stand-in module
    with the authors' LDAdamW signature records the groups our factory builds."""
    import types

    class FakeLDAdamW(torch.optim.Optimizer):
        def __init__(self, params, lr, betas, eps, rank, rho):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

        def zero_grad(self):  # the authors' signature: no set_to_none
            for group in self.param_groups:
                if not group["enable_lowrank"]:
                    for p in group["params"]:
                        p.grad = None

    fake = types.ModuleType("ldadamw_torch")
    fake.LDAdamW = FakeLDAdamW
    monkeypatch.setitem(sys.modules, "ldadamw_torch", fake)
    model = tiny_gpt()
    opt = build_optimizer("ldadam", model, lr=1e-3, rank=8, rho=0.9, weight_decay=0.01)
    low = [g for g in opt.param_groups if g["enable_lowrank"]]
    assert len(low) == 1 and low[0]["rank"] == 8 and low[0]["rho"] == 0.9
    assert {id(p) for p in low[0]["params"]} == {
        id(p) for p in baselines.low_rank_split(model, 8)[0]
    }
    n_all = sum(len(g["params"]) for g in opt.param_groups)
    assert n_all == len([p for p in model.parameters() if p.requires_grad])
    opt.zero_grad(set_to_none=True)  # what the trainer and accelerate call
