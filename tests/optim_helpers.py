"""Tiny models and a training loop shared by the optimizer tests."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "optimizer"
VOCAB, BLOCK = 96, 16


@dataclass
class TinyConfig:
    n_embd: int = 64
    n_head: int = 4
    n_layer: int = 2
    vocab_size: int = VOCAB
    block_size: int = BLOCK


class _Block(nn.Module):
    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd)
        self.attn = nn.ModuleDict(
            dict(c_attn=nn.Linear(c.n_embd, 3 * c.n_embd), c_proj=nn.Linear(c.n_embd, c.n_embd))
        )
        self.ln_2 = nn.LayerNorm(c.n_embd)
        self.mlp = nn.ModuleDict(
            dict(c_fc=nn.Linear(c.n_embd, 4 * c.n_embd), c_proj=nn.Linear(4 * c.n_embd, c.n_embd))
        )
        self.n_head = c.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.attn["c_attn"](self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn["c_proj"](y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x))))


class TinyGPT(nn.Module):
    """nanoGPT's layout and parameter names (fused c_attn, tied lm_head) at toy size."""

    def __init__(self, c: TinyConfig) -> None:
        super().__init__()
        self.config = c
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),
                wpe=nn.Embedding(c.block_size, c.n_embd),
                h=nn.ModuleList([_Block(c) for _ in range(c.n_layer)]),
                ln_f=nn.LayerNorm(c.n_embd),
            )
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor):
        pos = torch.arange(idx.shape[1])
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def tiny_gpt(seed: int = 0) -> nn.Module:
    """The project's GPT at toy size when it is importable, else :class:`TinyGPT`."""
    torch.manual_seed(seed)
    try:
        from alphaadam.models.gpt import GPT, GPTConfig
    except ImportError:
        return TinyGPT(TinyConfig())
    return GPT(GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=64))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed copy task (the target is the input shifted by one): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        seq = torch.randint(0, VOCAB, (8, BLOCK + 1), generator=g)
        out.append((seq[:, :-1], seq[:, :-1]))
    return out


def train(model: nn.Module, opt: torch.optim.Optimizer, data) -> list[float]:
    losses = []
    for idx, tgt in data:
        _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def roundtrip(obj):
    """torch.save + torch.load with the default (weights_only=True), as a checkpoint does."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)


def load_config(name: str) -> tuple[str, dict]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"), resolve=True)
    return cfg.pop("name"), cfg
