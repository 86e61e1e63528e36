"""The smoke corpus: generated, deterministic and learnable, so ``python train.py`` needs no
download and its loss visibly falls within a minute on a CPU."""

from __future__ import annotations

import random

import numpy as np

from .token_cache import as_uint16
from .tokenizers import Tokenizer

_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
_VERBS = ["sees", "finds", "likes", "paints", "follows", "greets"]
_ADJECTIVES = ["red", "small", "quiet", "bright", "old", "green"]
_NOUNS = ["cat", "boat", "tree", "house", "river", "lamp", "bird"]


def smoke_text(n_sentences: int = 20000, seed: int = 0) -> str:
    """Sentences from a small grammar plus a counting rule: the number that ends each
    sentence is the count of words before it, so a model must attend back to predict it."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(_NAMES), rng.choice(_VERBS), "the"]
        words += rng.sample(_ADJECTIVES, rng.randint(0, 2)) + [rng.choice(_NOUNS)]
        lines.append(f"{' '.join(words)} {len(words)}.")
    return "\n".join(lines) + "\n"


def smoke_cache(tokenizer: Tokenizer, val_fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
    """The smoke corpus as in-memory token arrays (it is regenerated in well under a second)."""
    tokens = as_uint16(tokenizer.encode(smoke_text(seed=seed)), tokenizer.vocab_size)
    n_val = max(1, int(len(tokens) * val_fraction))
    return {"train": tokens[:-n_val], "val": tokens[-n_val:]}
