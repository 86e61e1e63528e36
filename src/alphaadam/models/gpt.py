"""GPT-2 in nanoGPT's form (Karpathy, github.com/karpathy/nanoGPT, model.py).

The paper trains GPT-2 small/medium/large with the nanoGPT codebase, so the model keeps
nanoGPT's choices: pre-LayerNorm blocks, GELU(tanh) MLP of width 4d, learned positions,
tied input/output embeddings, N(0, 0.02) init with the residual projections scaled by
1/sqrt(2 * n_layer), and optional biases (nanoGPT trains without them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

#: Paper Table 5 (and GPT-2's published shapes).
GPT2_SHAPES: dict[str, dict[str, int]] = {
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},  # 124M
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},  # 350M
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},  # 774M
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},  # 1558M
}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 64, as nanoGPT does
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Tied embeddings: one tensor, listed once by named_parameters() as transformer.wte.weight.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2 paper: scale residual-path projections by 1/sqrt(number of residual adds).
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by nanoGPT's convention position embeddings are not counted."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits ``(B, T, vocab)``, and the mean cross-entropy when ``targets`` is given
        (positions whose target is ``-100`` are ignored)."""
        _, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length {T} exceeds the model's block_size {self.config.block_size}"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
        )
        return logits, loss

    @classmethod
    def from_pretrained(cls, name_or_path: str, dropout: float = 0.0) -> GPT:
        """GPT-2 weights from Hugging Face ``transformers`` (hub name such as ``"gpt2"`` or a
        local directory written by ``save_pretrained``), converted as nanoGPT does."""
        from transformers import GPT2LMHeadModel

        from ..hub import GPT2_INIT_HINT, hub_access

        with hub_access("GPT-2 checkpoint (model.init_from)", name_or_path, GPT2_INIT_HINT):
            hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        hc = hf.config
        cfg = GPTConfig(
            block_size=hc.n_positions,
            vocab_size=hc.vocab_size,
            n_layer=hc.n_layer,
            n_head=hc.n_head,
            n_embd=hc.n_embd,
            dropout=dropout,
            bias=True,
        )
        model = cls(cfg)
        ours = model.state_dict()
        theirs = {k: v for k, v in hf.state_dict().items() if not k.endswith(".attn.bias")}
        theirs = {k: v for k, v in theirs.items() if not k.endswith(".attn.masked_bias")}
        # Tied output layer: some transformers versions leave it out of the state dict.
        theirs.setdefault("lm_head.weight", theirs["transformer.wte.weight"])
        # HF GPT-2 uses Conv1D, whose weights are the transpose of nn.Linear's.
        conv1d = (
            "attn.c_attn.weight",
            "attn.c_proj.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
        )
        missing = set(ours) - set(theirs)
        if missing:
            raise ValueError(f"{name_or_path}: checkpoint lacks {sorted(missing)[:5]}...")
        with torch.no_grad():
            for k in ours:
                src = theirs[k].t() if k.endswith(conv1d) else theirs[k]
                if src.shape != ours[k].shape:
                    raise ValueError(
                        f"{name_or_path}: {k} has shape {tuple(src.shape)}, "
                        f"expected {tuple(ours[k].shape)}"
                    )
                ours[k].copy_(src)
        return model


def build_gpt(
    *,
    block_size: int,
    vocab_size: int,
    n_layer: int,
    n_head: int,
    n_embd: int,
    dropout: float = 0.0,
    bias: bool = False,
    init_from: str = "scratch",
) -> GPT:
    """A GPT from scratch, or initialised from GPT-2 weights (``init_from`` = hub name or
    local directory) — then the checkpoint's own shapes win over the config's."""
    if init_from == "scratch":
        return GPT(GPTConfig(block_size, vocab_size, n_layer, n_head, n_embd, dropout, bias))
    model = GPT.from_pretrained(init_from, dropout=dropout)
    if block_size < model.config.block_size:
        # Crop the position table so the model matches the data's context length.
        model.transformer.wpe.weight = nn.Parameter(model.transformer.wpe.weight[:block_size])
        model.config.block_size = block_size
    return model
