"""Tokenizers for language modelling: GPT-2 BPE (tiktoken) and raw UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TOKENIZER_CHOICES = ("gpt2", "byte")

# SHA-256 of OpenAI's GPT-2 files (the same values tiktoken checks when it downloads them).
_GPT2_MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


@dataclass(frozen=True)
class Tokenizer:
    name: str
    vocab_size: int
    #: appended after each document (GPT-2's <|endoftext|>); ``None`` for bytes
    eot_token: int | None
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


def build_tokenizer(kind: str, files_dir: str | None = None) -> Tokenizer:
    """``kind="gpt2"``: GPT-2 BPE via tiktoken, read from ``files_dir`` (``vocab.json`` +
    ``merges.txt``, i.e. OpenAI's ``encoder.json`` + ``vocab.bpe``) when given, else
    downloaded by tiktoken (network). ``kind="byte"``: UTF-8 bytes, vocabulary 256."""
    if kind == "byte":
        return Tokenizer(
            name="byte",
            vocab_size=256,
            eot_token=None,
            encode=lambda text: list(text.encode("utf-8")),
            decode=lambda ids: bytes(ids).decode("utf-8", errors="replace"),
        )
    if kind != "gpt2":
        raise ValueError(
            f"Unknown tokenizer {kind!r}; valid choices are {', '.join(TOKENIZER_CHOICES)}"
        )
    import tiktoken

    if files_dir is None:
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as exc:  # requests/urllib errors differ by version
            raise RuntimeError(
                "The GPT-2 tokenizer is not cached and downloading it needs network access "
                "(openaipublic.blob.core.windows.net). Offline, point data.tokenizer_dir at a "
                "folder with GPT-2's vocab.json and merges.txt, or use data.tokenizer=byte. "
                f"Cause: {exc!r}"
            ) from exc
    else:
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        folder = Path(files_dir).expanduser()
        files = {"merges": folder / "merges.txt", "vocab": folder / "vocab.json"}
        for f in files.values():
            if not f.is_file():
                raise FileNotFoundError(
                    f"GPT-2 tokenizer file {f} does not exist (data.tokenizer_dir={files_dir!r} "
                    "must hold vocab.json and merges.txt)"
                )
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(files["merges"]),
            encoder_json_file=str(files["vocab"]),
            vocab_bpe_hash=_GPT2_MERGES_SHA256,
            encoder_json_hash=_GPT2_VOCAB_SHA256,
        )
        enc = tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": 50256},
            explicit_n_vocab=50257,
        )
    return Tokenizer(
        name="gpt2",
        vocab_size=enc.n_vocab,
        eot_token=enc.eot_token,
        encode=enc.encode_ordinary,
        decode=enc.decode,
    )
