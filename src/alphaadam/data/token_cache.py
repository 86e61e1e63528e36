"""Token caches: each corpus is tokenised once into ``train.bin`` / ``val.bin`` (uint16
memmaps, as nanoGPT stores OpenWebText) in a cache folder keyed by its inputs. This module
holds the cache's layout and writing, the train/val split sizes, and the cache of local text
files (:func:`text_cache`); ``openwebtext.py`` fills one from OpenWebText."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .tokenizers import Tokenizer

SPLITS = ("train", "val")


def cache_finished(folder: Path) -> bool:
    return all((folder / f"{s}.bin").is_file() for s in SPLITS)


def publish_cache(tmp: Path, folder: Path) -> Path:
    """Move a fully written cache into place in one rename, so a crash never leaves half."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:
        # Another process published the same cache first; theirs is as good as ours.
        shutil.rmtree(tmp, ignore_errors=True)
        if not cache_finished(folder):
            raise
    return folder


def write_tokens(ids: np.ndarray, path: Path) -> None:
    out = np.memmap(path, dtype=np.uint16, mode="w+", shape=(len(ids),))
    out[:] = ids
    out.flush()
    del out


def as_uint16(ids: Sequence[int], vocab_size: int) -> np.ndarray:
    if vocab_size > 2**16:
        raise ValueError(f"vocabulary of {vocab_size} tokens does not fit the uint16 cache")
    return np.asarray(ids, dtype=np.uint16)


def split_sizes(n_tokens: int, val_fraction: float) -> tuple[int, int]:
    """``(train, val)`` token counts of a corpus of ``n_tokens``: the last ``val_fraction``
    (at least one token) is validation."""
    n_val = max(1, int(n_tokens * val_fraction))
    return n_tokens - n_val, n_val


def min_corpus_tokens(min_split_tokens: int, val_fraction: float) -> int:
    """The fewest tokens whose two splits (:func:`split_sizes`) both hold ``min_split_tokens``."""
    n = max(2 * min_split_tokens, math.ceil(min_split_tokens / val_fraction))
    while min(split_sizes(n, val_fraction)) < min_split_tokens:
        n += 1
    return n


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"data.path: {path} is not UTF-8 text (byte {err.start}: {err.reason}). Convert "
            f"it first, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
        ) from None
    if not text.strip():
        raise ValueError(f"data.path: {path} is empty; give a text file with content")
    return text


def text_cache(
    paths: Sequence[str | os.PathLike],
    tokenizer: Tokenizer,
    cache_root: str | os.PathLike,
    val_fraction: float,
    min_split_tokens: int = 1,
) -> Path:
    """Tokenise local text files (concatenated in order, ``<|endoftext|>`` between files
    when the tokenizer has one); the last ``val_fraction`` of the tokens is validation.

    Each file must be non-empty UTF-8, and each split must hold ``min_split_tokens``
    (a language model's ``block_size + 1``); otherwise a ``ValueError`` names the files and
    the minimum, and nothing is written to the cache."""
    files = [Path(p).expanduser().resolve() for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"data.path: text file {f} does not exist")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    key = json.dumps(
        {
            "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files],
            "tokenizer": tokenizer.name,
            "val_fraction": val_fraction,
        }
    )
    folder = Path(cache_root).expanduser() / "text" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if cache_finished(folder):
        return folder
    ids: list[int] = []
    for f in files:
        ids.extend(tokenizer.encode(_read_text(f)))
        if tokenizer.eot_token is not None:
            ids.append(tokenizer.eot_token)
    n_train, n_val = split_sizes(len(ids), val_fraction)
    if min(n_train, n_val) < min_split_tokens:
        need = min_corpus_tokens(min_split_tokens, val_fraction)
        raise ValueError(
            f"data.path: {', '.join(map(str, files))} is too short: {len(ids)} tokens "
            f"({tokenizer.name} tokenizer) split into {n_train} training and {n_val} "
            f"validation tokens, and each split needs at least {min_split_tokens} (one "
            f"window, data.block_size + 1) with data.val_fraction={val_fraction}: at least "
            f"{need} tokens in all. Use more text or a smaller data.block_size."
        )
    tokens = as_uint16(ids, tokenizer.vocab_size)
    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        write_tokens(tokens[:n_train], tmp / "train.bin")
        write_tokens(tokens[n_train:], tmp / "val.bin")
        (tmp / "meta.json").write_text(key + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written cache entry
        raise
    return publish_cache(tmp, folder)
