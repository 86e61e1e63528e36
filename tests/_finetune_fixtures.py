"""Tiny models, tokenizers and data in the real on-disk formats, built offline per test."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad"]
FILLER = ["the", "a", "film", "cat", "dog", "is", "was", "very", "not", "man", "car", "red"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(POSITIVE if positive else NEGATIVE)]
    rng.shuffle(words)
    return " ".join(words) + " ."


def write_glue_dir(root: Path, n_train: int = 48, n_dev: int = 24, seed: int = 0) -> Path:
    """Every supported task in the GLUE download layout, with each file's real quirks
    (CoLA headerless, MRPC byte-order mark, RTE/QNLI string labels, STS-B float scores).
    The label is learnable: it follows the sentiment word of the (first) sentence."""
    rng = random.Random(seed)
    root = Path(root)

    def rows(n):
        return [(rng.random() < 0.5) for _ in range(n)]

    for split, n in (("train", n_train), ("dev", n_dev)):
        labels = rows(n)
        files = {
            "CoLA": ("", [f"src\t{int(y)}\t\t{_sentence(rng, y)}" for y in labels]),
            "SST-2": ("sentence\tlabel", [f"{_sentence(rng, y)}\t{int(y)}" for y in labels]),
            "MRPC": (
                "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                [
                    f'{int(y)}\t{i}\t{i + 1}\t{_sentence(rng, y)} "q\t{_sentence(rng, True)}'
                    for i, y in enumerate(labels)
                ],
            ),
            "STS-B": (
                "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                [
                    f"{i}\tg\tf\t2012\t{i:04d}\tnone\tnone\t{_sentence(rng, y)}\t{_sentence(rng, True)}\t"
                    f"{(4.0 if y else 1.0) + rng.random():.3f}"
                    for i, y in enumerate(labels)
                ],
            ),
            "QQP": (
                "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                [
                    f"{i}\t{2 * i}\t{2 * i + 1}\t{_sentence(rng, y)}\t{_sentence(rng, True)}\t{int(y)}"
                    for i, y in enumerate(labels)
                ],
            ),
            "QNLI": (
                "index\tquestion\tsentence\tlabel",
                [
                    f"{i}\t{_sentence(rng, y)}\t{_sentence(rng, True)}\t"
                    f"{'entailment' if y else 'not_entailment'}"
                    for i, y in enumerate(labels)
                ],
            ),
            "RTE": (
                "index\tsentence1\tsentence2\tlabel",
                [
                    f"{i}\t{_sentence(rng, y)}\t{_sentence(rng, True)}\t"
                    f"{'entailment' if y else 'not_entailment'}"
                    for i, y in enumerate(labels)
                ],
            ),
        }
        for task, (header, lines) in files.items():
            (root / task).mkdir(parents=True, exist_ok=True)
            body = ([header] if header else []) + lines
            (root / task / f"{split}.tsv").write_text("\n".join(body) + "\n", encoding="utf-8")
    return root


def _wrap(tokenizer_obj, **special):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_obj, **special)


def write_tiny_roberta(path: Path) -> Path:
    """A random-init 2-layer RoBERTa encoder and a word-level tokenizer, saved as a local
    model directory (what ``model.name_or_path`` points at)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import RobertaConfig, RobertaModel

    words = SPECIALS + sorted(set(POSITIVE + NEGATIVE + FILLER + [".", '"', "q"]))
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tokenizer = _wrap(
        tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=128,
    )
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


GSM8K_PROBLEMS = [
    (
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "3 + 4 = <<3+4=7>>7\n#### 7",
    ),
    ("A box holds 12 pens. How many pens are in 2 boxes?", "12 * 2 = <<12*2=24>>24\n#### 24"),
    ("Sam had 10 dollars and spent 6. How much is left?", "10 - 6 = <<10-6=4>>4\n#### 4"),
    ("Ann reads 5 pages a day for 3 days. How many pages?", "5 * 3 = <<5*3=15>>15\n#### 15"),
]


def write_gsm8k_dir(root: Path, n_train: int = 16, n_test: int = 4) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with (root / f"{split}.jsonl").open("w") as handle:
            for i in range(n):
                q, a = GSM8K_PROBLEMS[i % len(GSM8K_PROBLEMS)]
                handle.write(json.dumps({"question": q, "answer": a}) + "\n")
    return root


def write_tiny_llama(path: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A random-init Llama and a byte-level BPE tokenizer (exact decode round trip, so
    answers survive generation -> text -> regex), saved as a local model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"Question: {q}\nAnswer: {a}" for q, a in GSM8K_PROBLEMS]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    tokenizer = _wrap(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose(overrides: list[str]):
    """The config ``python train.py <overrides>`` would run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)
