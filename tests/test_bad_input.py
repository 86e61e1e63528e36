"""Bad input fails early and clearly (issue 13, item 4): data files, caches, tokenizers and
the GLUE batch, each checked before the run directory is created."""

from __future__ import annotations

import re

import pytest

from trainer_helpers import REPO, TINY, compose_config, run_training


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", r"is empty"),
        (b"caf\xe9 au lait\n" * 100, r"is not UTF-8 text \(byte 3"),
        # byte tokens, block 64, val_fraction 0.1: each split needs 65 tokens, the
        # validation split is int(0.1 n), so n >= 650 (hand-computed).
        (b"x" * 100, r"is too short: 100 tokens .* at least 65 .* at least 650 tokens"),
    ],
    ids=["empty", "latin1", "short"],
)
def test_a_bad_text_file_is_named_before_the_run_and_leaves_no_cache_debris(
    tmp_path, content, problem
):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=rf"{re.escape(str(corpus))}.*{problem}"):
        run_training(
            [
                "data=text",
                f"data.path={corpus}",
                "data.tokenizer=byte",
                "data.block_size=64",
                f"data.cache_dir={cache}",
                *TINY,
            ],
            tmp_path / "runs",
        )
    assert not (tmp_path / "runs").exists()
    assert not cache.exists() or not any(cache.rglob("*.bin"))
    assert not cache.exists() or not list(cache.rglob(".tmp-*"))


def test_a_cache_too_short_for_a_larger_block_fails_before_the_run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be " * 40)  # 760 bytes: fine for block 64
    common = [
        "data=text",
        f"data.path={corpus}",
        "data.tokenizer=byte",
        f"data.cache_dir={tmp_path / 'c'}",
    ]
    run_training([*common, "data.block_size=64", "trainer.max_steps=1", *TINY], tmp_path / "a")
    with pytest.raises(
        ValueError,
        match=r"the val split has 76 tokens, fewer than one window of data.block_size \+ 1 = 129",
    ):
        run_training([*common, "data.block_size=128", *TINY], tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_qqp_brings_the_papers_batch_of_128():
    def batch(*overrides):
        cfg = compose_config(["experiment=roberta_glue", *overrides])
        return cfg.trainer.micro_batch_size * cfg.trainer.gradient_accumulation_steps

    # Paper Table 4: batch 32 for every GLUE task, 128 for QQP.
    assert batch("data.task=qqp") == 128 == batch("data.task=QQP")
    assert {batch(f"data.task={t}") for t in ("rte", "mrpc", "cola", "stsb", "sst2", "qnli")} == {
        32
    }
    assert batch("data.task=qqp", "trainer.gradient_accumulation_steps=1") == 32  # explicit wins
    sweep = compose_config(["+sweep=table1", "data.task=qqp"])
    assert sweep.trainer.micro_batch_size * sweep.trainer.gradient_accumulation_steps == 128


def test_a_tokenizer_that_encodes_text_to_nothing_is_refused_before_the_run(tmp_path):
    """The issue's case: a broken local Llama tokenizer with a vocabulary of 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from _finetune_fixtures import _wrap, write_gsm8k_dir, write_tiny_llama

    model_dir = write_tiny_llama(tmp_path / "llama")
    broken = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    broken.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    for f in model_dir.glob("tokenizer*"):
        f.unlink()
    _wrap(broken, bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"does not round-trip text \(vocabulary size 3\)"):
        run_training(
            [
                "experiment=llama2_gsm8k",
                f"data.path={write_gsm8k_dir(tmp_path / 'gsm8k')}",
                f"model.name_or_path={model_dir}",
                "model.gradient_checkpointing=false",
                "trainer.mixed_precision=no",
                "trainer.device=cpu",
            ],
            tmp_path / "runs",
        )
    assert not (tmp_path / "runs").exists()


def test_examples_without_a_token_to_predict_are_refused():
    from alphaadam.tasks.gsm8k import IGNORE_INDEX, check_targets

    fine = {"input_ids": [1, 5, 6, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX, 6, 2]}
    only_first = {"input_ids": [2], "labels": [2]}  # the shift leaves nothing to predict
    check_targets([fine], "train", "tok", 512)
    with pytest.raises(ValueError, match=r"1 of 2 encoded examples have no token to predict"):
        check_targets([fine, only_first], "train", "tok", 512)
    with pytest.raises(ValueError, match=r"no example fits data.max_length=8"):
        check_targets([], "train", "tok", 8)


def test_a_sentencepiece_tokenizer_without_sentencepiece_says_what_to_install(
    tmp_path, monkeypatch
):
    from alphaadam.tasks import gsm8k

    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\x0b")
    monkeypatch.setattr(gsm8k, "_importable", lambda module: module != "sentencepiece")
    with pytest.raises(ImportError, match=r"needs sentencepiece: pip install 'alphaadam\[eval\]'"):
        gsm8k.require_sentencepiece_for(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")  # a fast tokenizer file needs neither
    gsm8k.require_sentencepiece_for(tmp_path)


def test_sentencepiece_and_protobuf_are_in_the_eval_extra():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=]", r)[0] for r in extras["eval"]}
    assert {"sentencepiece", "protobuf"} <= names


@pytest.mark.parametrize("name", ["adamw", "alphaadam"])
def test_a_negative_weight_decay_is_refused_before_training(name, tmp_path):
    # split_decay moves weight_decay into param groups, which torch does not check.
    with pytest.raises(ValueError, match=r"optimizer.weight_decay=-1 .*>= 0"):
        run_training(
            [f"optimizer={name}", "optimizer.weight_decay=-1", "trainer.max_steps=1"], tmp_path
        )
