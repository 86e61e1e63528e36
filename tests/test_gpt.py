"""The nanoGPT GPT-2 model: shapes, init, causality, and loading Hugging Face weights."""

from __future__ import annotations

import math

import pytest
import torch

from alphaadam.models.gpt import GPT, GPT2_SHAPES, GPTConfig, build_gpt


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large"])
def test_parameter_count_equals_hugging_face_gpt2(name):
    import transformers

    shape = GPT2_SHAPES[name]
    with torch.device("meta"):
        ours = GPT(GPTConfig(block_size=1024, vocab_size=50257, bias=True, **shape))
        hf = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"]
            )
        )
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in hf.parameters())
    if name == "gpt2":
        assert count == 124_439_808  # GPT-2 small as published by Hugging Face


def test_nanogpt_initialisation_and_tied_embeddings():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=512, n_layer=4, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and len(names) == 2 + 4 * 6 + 1
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
        elif p.dim() == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.05)
        else:  # LayerNorm weights
            assert torch.equal(p, torch.ones_like(p))


def test_attention_is_causal_and_loss_is_cross_entropy():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    x = torch.randint(0, 64, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 64
    with torch.no_grad():
        a, loss = model(x, x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    expected = torch.nn.functional.cross_entropy(a.reshape(-1, 64), x.reshape(-1))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_from_pretrained_reproduces_hugging_face_logits(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=24)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a transposition slip would show
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    ours = build_gpt(
        block_size=16, vocab_size=0, n_layer=0, n_head=1, n_embd=1, init_from=str(tmp_path)
    ).eval()
    assert ours.config.block_size == 16 and ours.config.n_layer == 2
    x = torch.randint(0, 100, (3, 16))
    with torch.no_grad():
        expected = hf(x).logits
        got, _ = ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bad_head_count_is_named():
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=3"):
        GPTConfig(n_embd=100, n_head=3)
