"""Language-modelling data: tokenizers, token caches, random windows, the smoke corpus."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from alphaadam.data.smoke import smoke_text
from alphaadam.data.token_cache import text_cache
from alphaadam.data.tokenizers import Tokenizer, build_tokenizer
from alphaadam.tasks.lm import LMTask, WindowStream

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2_DIR = SHARED / "tokenizers" / "gpt2"
SHAKESPEARE = SHARED / "tinyshakespeare" / "input.txt"


# ------------------------------------------------------------------------- tokenizers
@pytest.mark.data
def test_gpt2_bpe_from_local_files_matches_transformers():
    if not GPT2_DIR.is_dir() or not SHAKESPEARE.is_file():
        pytest.skip("../shared/data is not present")
    from transformers import GPT2TokenizerFast

    ours = build_tokenizer("gpt2", str(GPT2_DIR))
    assert ours.vocab_size == 50257 and ours.eot_token == 50256
    assert ours.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    # transformers 5 ignores GPT2TokenizerFast(vocab_file=, merges_file=) (empty vocabulary);
    # from_pretrained on the folder reads the same two files.
    reference = GPT2TokenizerFast.from_pretrained(str(GPT2_DIR))
    text = SHAKESPEARE.read_text()[:20000]
    assert ours.encode(text) == reference(text)["input_ids"]
    assert ours.decode(ours.encode(text)) == text


def test_tokenizer_errors_name_the_problem(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "merges.txt"))):
        build_tokenizer("gpt2", str(tmp_path))
    with pytest.raises(ValueError, match="Unknown tokenizer 'bpe'; valid choices are gpt2, byte"):
        build_tokenizer("bpe")

    import tiktoken

    def offline(name):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="needs network access.*data.tokenizer_dir"):
        build_tokenizer("gpt2")


def test_byte_tokenizer_round_trip():
    tok = build_tokenizer("byte")
    assert tok.vocab_size == 256 and tok.eot_token is None
    assert tok.encode("aé") == [97, 0xC3, 0xA9]
    assert tok.decode(tok.encode("to be, or not")) == "to be, or not"


# ------------------------------------------------------------------------- caches
def test_text_cache_splits_the_tokens_and_is_reused(tmp_path):
    text = "".join(f"line {i}\n" for i in range(500))
    src = tmp_path / "corpus.txt"
    src.write_text(text)
    tok = build_tokenizer("byte")
    folder = text_cache([src], tok, tmp_path / "cache", val_fraction=0.1)
    train = np.memmap(folder / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(folder / "val.bin", dtype=np.uint16, mode="r")
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    n_val = int(len(raw) * 0.1)
    assert np.array_equal(val, raw[-n_val:]) and np.array_equal(train, raw[:-n_val])
    stamp = (folder / "train.bin").stat().st_mtime_ns
    assert text_cache([src], tok, tmp_path / "cache", 0.1) == folder
    assert (folder / "train.bin").stat().st_mtime_ns == stamp  # not rewritten
    src.write_text(text + "more\n")  # a changed file gets its own cache
    assert text_cache([src], tok, tmp_path / "cache", 0.1) != folder
    assert not list((tmp_path / "cache" / "text").glob(".tmp-*"))


def test_text_cache_separates_files_with_end_of_text():
    eot = 999
    tok = Tokenizer("fake", 1000, eot, lambda s: [ord(c) for c in s], lambda ids: "")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a, b = Path(d, "a.txt"), Path(d, "b.txt")
        a.write_text("ab")
        b.write_text("cdefghijklmnopqrst")
        folder = text_cache([a, b], tok, Path(d, "cache"), 0.25)
        tokens = np.concatenate(
            [np.fromfile(folder / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]
        )
    assert tokens.tolist() == [97, 98, eot, *map(ord, "cdefghijklmnopqrst"), eot]


# ------------------------------------------------------------------------- windows
def _tokens(n=5000):
    return np.arange(n, dtype=np.uint16) % 50000


def test_windows_are_shifted_slices_of_the_corpus():
    tokens = _tokens()
    batch = next(WindowStream(tokens, block_size=32, batch_size=8, seed=3, rank=0, world=1))
    x, y = batch["input_ids"], batch["labels"]
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    for row_x, row_y in zip(x, y):
        start = int(row_x[0])  # tokens[i] == i here
        assert torch.equal(row_x, torch.arange(start, start + 32))
        assert torch.equal(row_y, row_x + 1)
        assert 0 <= start <= len(tokens) - 33


def test_a_step_draws_the_same_windows_however_the_global_batch_is_split():
    tokens = _tokens()

    def step_windows(world, accum, micro):
        streams = [
            WindowStream(tokens, 16, micro, seed=7, rank=r, world=world) for r in range(world)
        ]
        rows = []
        for _ in range(accum):
            for s in streams:
                rows.extend(next(s)["input_ids"][:, 0].tolist())
        return sorted(rows)

    one = step_windows(world=1, accum=4, micro=2)
    assert one == step_windows(world=2, accum=2, micro=2) == step_windows(world=4, accum=1, micro=2)
    assert len(set(one)) > 4  # the windows are not all the same


def test_window_stream_resumes_exactly_and_checks_its_world():
    tokens = _tokens()
    stream = WindowStream(tokens, 16, 4, seed=1, rank=1, world=2)
    for _ in range(5):
        next(stream)
    state = stream.state_dict()
    expected = [next(stream)["input_ids"] for _ in range(3)]
    again = WindowStream(tokens, 16, 4, seed=1, rank=1, world=2)
    again.load_state_dict(state)
    assert all(torch.equal(a, next(again)["input_ids"]) for a in expected)
    with pytest.raises(ValueError, match="world size 2 .* this run has 4"):
        WindowStream(tokens, 16, 4, seed=1, rank=0, world=4).load_state_dict(state)


def test_too_short_split_is_an_error():
    with pytest.raises(ValueError, match="too few for windows of block_size=64"):
        next(WindowStream(_tokens(50), 64, 2, 0, 0, 1))


# ------------------------------------------------------------------------- smoke corpus
def test_smoke_corpus_is_deterministic_and_follows_its_counting_rule():
    text = smoke_text(n_sentences=500, seed=0)
    assert text == smoke_text(n_sentences=500, seed=0)
    assert text != smoke_text(n_sentences=500, seed=1)
    lines = text.strip().split("\n")
    assert len(lines) == 500
    for line in lines:
        *words, last = line.split(" ")
        assert last == f"{len(words)}."


def test_lm_task_requires_a_data_source():
    with pytest.raises(
        ValueError, match="Unknown data.source 'web'; valid choices are smoke, text, openwebtext"
    ):
        LMTask(data={"source": "web"}, model={})
