"""Supervised fine-tuning on GSM8K (the paper's Table 2, Figure 3).

Each example is ``Question: <question>\\nAnswer:`` followed by `` <answer>`` (worked solution
ending in ``#### <number>``) and EOS: the prompt format of lm-eval's ``gsm8k`` task, so the
fine-tuned model is scored on the format it learned. Only answer tokens are trained on:
prompt positions get label -100. Prompt and answer are tokenised separately so that the
mask boundary is exact.

``data.packing``: concatenate whole examples (never split) into sequences of up to
``max_length`` tokens, with ``position_ids`` restarting at each example. Eager/SDPA attention
still lets a packed example attend to earlier ones in its sequence; only
``model.attn_implementation=flash_attention_2`` isolates them via ``position_ids``.

``evaluate``: ``val_loss`` (answer tokens, test split) and, with
``data.eval_generate_examples > 0``, greedy exact match on that many test problems. Table 2's
accuracy comes from lm-evaluation-harness on the final checkpoint (docs/finetuning.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import Check, check_files, check_model_source, ok
from ..eval.gsm8k import format_prompt, read_gsm8k_jsonl, score_gsm8k
from ..hub import GSM8K_HINT, MODEL_HINT, check_repo, hub_access
from .base import Batch, Task, cfg_get
from .epoch_stream import EpochBatchStream, epoch_steps
from .glue import _tokenizer_hint, hf_config, preflight_tokenizer

log = logging.getLogger(__name__)

HF_GSM8K_DATASET = "openai/gsm8k"
DEFAULT_MODEL = "meta-llama/Llama-2-7b-hf"
IGNORE_INDEX = -100


def load_gsm8k_split(split: str, path: str | None, hf_dataset: str) -> list[dict[str, str]]:
    """``split`` is ``"train"`` or ``"test"``. ``path``: a directory with ``<split>.jsonl``,
    or (for train) the jsonl file itself, whose sibling ``test.jsonl`` is the test split."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            return read_gsm8k_jsonl(p / f"{split}.jsonl")
        return read_gsm8k_jsonl(p if split == "train" else p.with_name("test.jsonl"))
    import datasets

    with hub_access("GSM8K dataset", hf_dataset, GSM8K_HINT, repo_type="dataset"):
        ds = datasets.load_dataset(hf_dataset, "main", split=split)
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]


def tokenize_sft(tokenizer, record: dict[str, str], max_length: int) -> dict[str, list[int]] | None:
    """``input_ids``/``labels`` of one example, prompt masked; ``None`` when truncation to
    ``max_length`` would leave no answer token."""
    return tokenize_sft_batch(tokenizer, [record], max_length)[0]


def tokenize_sft_batch(
    tokenizer, records: list[dict[str, str]], max_length: int
) -> list[dict[str, list[int]] | None]:
    """:func:`tokenize_sft` for many records (one batched tokenizer call per side)."""
    prompts = tokenizer([format_prompt(r["question"]) for r in records], add_special_tokens=True)[
        "input_ids"
    ]
    answers = tokenizer([" " + r["answer"].strip() for r in records], add_special_tokens=False)[
        "input_ids"
    ]
    out: list[dict[str, list[int]] | None] = []
    for prompt, answer in zip(prompts, answers):
        answer = answer + [tokenizer.eos_token_id]
        input_ids = (prompt + answer)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
        if len(prompt) >= max_length:
            out.append(None)
            continue
        out.append(
            {"input_ids": input_ids, "labels": labels, "position_ids": list(range(len(input_ids)))}
        )
    return out


def require_sentencepiece_for(folder: Path) -> None:
    """A local tokenizer given only as SentencePiece's ``tokenizer.model`` (Llama's) is read
    through ``sentencepiece`` and ``protobuf``; without them transformers fails with a
    parse error that does not say so."""
    if not (folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file():
        return
    missing = [m for m in ("sentencepiece", "google.protobuf") if not _importable(m)]
    if missing:
        raise ImportError(
            f"{folder / 'tokenizer.model'} is a SentencePiece tokenizer and reading it needs "
            f"{' and '.join(m.split('.')[-1] for m in missing)}: pip install 'alphaadam[eval]'"
        )


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def check_round_trip(tokenizer, text: str, tokenizer_path: str) -> None:
    """Refuse a tokenizer that cannot decode what it encodes (up to whitespace): a broken or
    foreign ``tokenizer.model`` would otherwise train on sequences that carry no text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if " ".join(decoded.split()) != " ".join(text.split()):
        raise ValueError(
            f"the tokenizer at {tokenizer_path} does not round-trip text (vocabulary size "
            f"{len(tokenizer)}): {text[:60]!r}... encodes to {len(ids)} tokens that decode to "
            f"{decoded[:60]!r}. It is broken or not the model's; point model.tokenizer (or "
            "model.name_or_path) at the model's own tokenizer files."
        )


def check_targets(
    examples: list[dict[str, list[int]]], split: str, tokenizer_path: str, max_length: int
) -> None:
    """Every encoded example must have a token to predict after the causal shift (a label
    other than -100 past position 0); otherwise its loss is 0/0."""
    if not examples:
        raise ValueError(
            f"GSM8K {split}: no example fits data.max_length={max_length} with the tokenizer "
            f"at {tokenizer_path}; raise data.max_length"
        )
    empty = [i for i, e in enumerate(examples) if all(t == IGNORE_INDEX for t in e["labels"][1:])]
    if empty:
        raise ValueError(
            f"GSM8K {split}: {len(empty)} of {len(examples)} encoded examples have no token to "
            f"predict (e.g. example {empty[0]}: {len(examples[empty[0]]['input_ids'])} tokens); "
            f"the tokenizer at {tokenizer_path} encodes the answers to nothing"
        )


def pack_examples(
    examples: list[dict[str, list[int]]], max_length: int
) -> list[dict[str, list[int]]]:
    """Greedy in-order packing of whole examples into sequences of at most ``max_length``."""
    packed: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        if current["input_ids"] and len(current["input_ids"]) + len(ex["input_ids"]) > max_length:
            packed.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        for key in current:
            current[key] = current[key] + ex[key]
    if current["input_ids"]:
        packed.append(current)
    return packed


class GSM8KTask(Task):
    """``data``: ``path`` (local jsonl dir/file, else the hub), ``hf_dataset``,
    ``max_length`` (512), ``packing``, ``eval_batch_size``, ``eval_examples`` (test problems
    for the answer loss, all when null), ``eval_generate_examples`` (0), ``max_new_tokens``,
    ``validation_examples`` (0: none; ``n``: the last ``n`` training problems, in file order,
    are held out as a validation split: ``val_loss`` is then their answer loss and
    ``test_loss`` the test split's, so an lr chosen on one is reported on the other; without
    it ``val_loss`` is the test split's, as before).
    ``model``: ``name_or_path``, ``tokenizer``, ``tokenizer_class`` (a transformers class
    name, default ``AutoTokenizer``), ``dtype`` (weights: float32 | bfloat16),
    ``gradient_checkpointing``, ``attn_implementation``; or, to train from scratch,
    ``name_or_path: null`` and ``config`` (a transformers config as a mapping with its
    ``model_type``, e.g. a small Llama), initialised from the run's seed."""

    name = "gsm8k"
    primary_metric = "val_loss"
    primary_mode = "min"

    def __init__(self, data: Mapping | None = None, model: Mapping | None = None):
        self.path = cfg_get(data, "path")
        self.hf_dataset = cfg_get(data, "hf_dataset", HF_GSM8K_DATASET)
        self.max_length = int(cfg_get(data, "max_length", 512))
        self.packing = bool(cfg_get(data, "packing", False))
        self.eval_batch_size = int(cfg_get(data, "eval_batch_size", 8))
        self.eval_examples = cfg_get(data, "eval_examples")
        self.eval_generate_examples = int(cfg_get(data, "eval_generate_examples", 0))
        self.max_new_tokens = int(cfg_get(data, "max_new_tokens", 256))
        self.validation_count = cfg_get(data, "validation_examples", 0) or 0
        if not (isinstance(self.validation_count, int) and self.validation_count >= 0):
            raise ValueError(
                f"data.validation_examples={self.validation_count!r}: the number of training "
                "problems (the file's last ones) held out for validation, a whole number >= 0"
            )
        self.scratch_config = cfg_get(model, "config")
        if self.scratch_config is not None and cfg_get(model, "name_or_path") is not None:
            raise ValueError(
                "model.name_or_path and model.config are exclusive: a pretrained model or one "
                "built from scratch from its config; set the other to null"
            )
        self.model_path = (
            None
            if self.scratch_config is not None
            else str(cfg_get(model, "name_or_path", DEFAULT_MODEL))
        )
        tokenizer = cfg_get(model, "tokenizer", self.model_path)
        if tokenizer is None:
            raise ValueError("a model built from model.config needs model.tokenizer (a directory)")
        self.tokenizer_path = str(tokenizer)
        self.tokenizer_class = str(cfg_get(model, "tokenizer_class", "AutoTokenizer"))
        dtype = str(cfg_get(model, "dtype", "float32"))
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype {dtype!r}; valid: float32, bfloat16, float16")
        self.dtype = getattr(torch, dtype)
        self.gradient_checkpointing = bool(cfg_get(model, "gradient_checkpointing", False))
        self.attn_implementation = cfg_get(model, "attn_implementation")
        self.tokenizer = None
        self.train_examples: list[dict[str, list[int]]] | None = None
        self.validation_set: list[dict[str, list[int]]] | None = None

    def setup(self, accelerator=None) -> None:
        import transformers

        require_sentencepiece_for(Path(self.tokenizer_path))
        tokenizer_cls = getattr(transformers, self.tokenizer_class, None)
        if tokenizer_cls is None or not hasattr(tokenizer_cls, "from_pretrained"):
            raise ValueError(
                f"model.tokenizer_class={self.tokenizer_class!r} is not a transformers tokenizer "
                "class (e.g. AutoTokenizer, LlamaTokenizer)"
            )
        with hub_access("Tokenizer", self.tokenizer_path, _tokenizer_hint(self)):
            self.tokenizer = tokenizer_cls.from_pretrained(self.tokenizer_path)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {self.tokenizer_path} has no EOS token")
        # Llama has no pad token; pads are masked out of attention and loss anyway.
        self.pad_token_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        if accelerator is not None:
            with accelerator.main_process_first():
                train, test = self._load_raw()
        else:
            train, test = self._load_raw()
        limit = None if self.eval_examples is None else int(self.eval_examples)
        self.test_records = test[:limit]
        validation = []
        if self.validation_count:
            if self.validation_count >= len(train):
                raise ValueError(
                    f"data.validation_examples={self.validation_count} leaves no training "
                    f"problem (the train split has {len(train)})"
                )
            train, validation = train[: -self.validation_count], train[-self.validation_count :]
        if train:
            sample = f"{format_prompt(train[0]['question'])} {train[0]['answer'].strip()}"
            check_round_trip(self.tokenizer, sample, self.tokenizer_path)
        self.train_examples = self._encode(train, "train")
        self.test_examples = self._encode(self.test_records, "test")
        self.validation_set = self._encode(validation, "validation") if validation else None
        splits = [("train", self.train_examples), ("test", self.test_examples)]
        if validation:
            splits.append(("validation", self.validation_set))
        for split, examples in splits:
            check_targets(examples, split, self.tokenizer_path, self.max_length)
        if self.packing:
            self.train_examples = pack_examples(self.train_examples, self.max_length)
        log.info(
            "GSM8K: %d train sequences (packing=%s), %d validation problems (held out of "
            "train), %d test problems",
            len(self.train_examples),
            self.packing,
            len(validation),
            len(self.test_examples),
        )

    def _load_raw(self):
        return (
            load_gsm8k_split("train", self.path, self.hf_dataset),
            load_gsm8k_split("test", self.path, self.hf_dataset),
        )

    def _encode(self, records, split):
        encoded = tokenize_sft_batch(self.tokenizer, records, self.max_length)
        dropped = sum(e is None for e in encoded)
        if dropped:
            log.warning(
                "GSM8K %s: %d examples dropped (prompt alone >= max_length %d)",
                split,
                dropped,
                self.max_length,
            )
        return [e for e in encoded if e is not None]

    def collate(self, features: list[dict[str, list[int]]]) -> Batch:
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
        }
        if self.packing:
            batch["position_ids"] = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
            batch["labels"][row, :n] = torch.tensor(f["labels"])
            batch["attention_mask"][row, :n] = 1
            if self.packing:
                batch["position_ids"][row, :n] = torch.tensor(f["position_ids"])
        return batch

    def _require_setup(self):
        if self.train_examples is None:
            raise RuntimeError("GSM8KTask.setup() must run before data or evaluation is used")

    def train_stream(self, micro_batch_size: int, seed: int, rank: int, world_size: int):
        self._require_setup()
        return EpochBatchStream(
            self.train_examples, self.collate, micro_batch_size, seed, rank, world_size
        )

    def steps_per_epoch(self, global_batch_size: int) -> int:
        self._require_setup()
        return epoch_steps(len(self.train_examples), global_batch_size)

    # -- preflight (alphaadam/preflight.py) ----------------------------------------------
    def preflight(self) -> list[Check]:
        checks = [preflight_tokenizer(self)]
        if self.path is not None:
            p = Path(self.path).expanduser()
            files = (
                [p / "train.jsonl", p / "test.jsonl"]
                if p.is_dir()
                else [p, p.with_name("test.jsonl")]
            )
            checks.append(check_files("data", files, "data.path"))
        else:
            good, detail = check_repo(self.hf_dataset, "dataset", "GSM8K dataset", GSM8K_HINT)
            checks.append(
                Check(
                    "data",
                    "ok" if good else "FAIL",
                    f"{self.hf_dataset}: {detail}" if good else detail,
                )
            )
        if self.scratch_config is not None:
            checks.append(ok("model", "built from model.config with the run's seed (no weights)"))
        else:
            checks.append(check_model_source(self.model_path, MODEL_HINT))
        return checks

    def meta_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        if self.scratch_config is not None:
            config = _scratch_config(self.scratch_config)
        else:
            config = hf_config(self.model_path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=self.dtype)

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.attn_implementation is not None:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.scratch_config is not None:
            model = AutoModelForCausalLM.from_config(_scratch_config(self.scratch_config), **kwargs)
        else:
            with hub_access("Model", self.model_path, MODEL_HINT):
                model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs)
        if self.gradient_checkpointing:
            # Non-reentrant checkpointing works with FSDP and with frozen inputs.
            # transformers 5 renamed the method; 4.x has only the old name.
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            model.config.use_cache = False
        return model

    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        device = next(model.parameters()).device
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    def count_tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, accelerator=None) -> dict[str, float]:
        """Token-averaged answer loss: ``val_loss`` on the validation problems and
        ``test_loss`` on the test problems (``val_loss`` is the test problems' without a
        validation split); exact match on the test problems when enabled."""
        self._require_setup()
        if self.validation_set is None:
            metrics = {"val_loss": self._answer_loss(model, accelerator, self.test_examples)}
        else:
            metrics = {
                "val_loss": self._answer_loss(model, accelerator, self.validation_set),
                "test_loss": self._answer_loss(model, accelerator, self.test_examples),
            }
        if self.eval_generate_examples > 0:
            metrics.update(self._exact_match(model, accelerator))
        return metrics

    def _answer_loss(self, model: nn.Module, accelerator, examples) -> float:
        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        n = len(examples)
        per_rank = math.ceil(n / world)
        shard = list(range(rank * per_rank, min(n, (rank + 1) * per_rank)))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.float64, device=device)
        try:
            for start in range(0, len(shard), self.eval_batch_size):
                batch = self.collate(
                    [examples[i] for i in shard[start : start + self.eval_batch_size]]
                )
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels")
                if accelerator is not None:
                    with accelerator.autocast():
                        logits = model(**batch).logits
                else:
                    logits = model(**batch).logits
                shift_logits = logits[:, :-1].float()
                shift_labels = labels[:, 1:]
                loss_sum += torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]),
                    shift_labels.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                ).double()
                tokens += (shift_labels != IGNORE_INDEX).sum()
        finally:
            model.train(was_training)
        if accelerator is not None and world > 1:
            loss_sum = accelerator.reduce(loss_sum, reduction="sum")
            tokens = accelerator.reduce(tokens, reduction="sum")
        return float(loss_sum / tokens)

    def _exact_match(self, model, accelerator) -> dict[str, float]:
        # Generation runs on the unwrapped model of every process over the same problems
        # (kept small during training); the final number comes from lm-eval or the CLI.
        unwrapped = accelerator.unwrap_model(model) if accelerator is not None else model
        result = score_gsm8k(
            unwrapped,
            self.tokenizer,
            self.test_records[: self.eval_generate_examples],
            max_new_tokens=self.max_new_tokens,
            batch_size=self.eval_batch_size,
        )
        return {k: float(result[k]) for k in ("exact_match_strict", "exact_match_flexible")}


def _scratch_config(config: Mapping):
    """A transformers config from a mapping that names its ``model_type``."""
    from omegaconf import DictConfig, OmegaConf
    from transformers import AutoConfig

    fields = (
        OmegaConf.to_container(config, resolve=True)
        if isinstance(config, DictConfig)
        else dict(config)
    )
    model_type = fields.pop("model_type", None)
    if model_type is None:
        raise ValueError("model.config needs a model_type (e.g. llama)")
    return AutoConfig.for_model(model_type, **fields)
