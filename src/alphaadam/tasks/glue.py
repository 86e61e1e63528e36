"""GLUE fine-tuning (the paper's Table 1): sequence classification, and regression for STS-B.

Data comes from the hub (``nyu-mll/glue``) or, with ``data.glue_dir``, from a directory in
the layout of the GLUE download script (``<glue_dir>/<RTE|MRPC|...>/{train,dev}.tsv``).
Labels use the hub's ids in both cases (RTE/QNLI: entailment=0, not_entailment=1), so a
model trained from either source is the same classifier.

Metric reported in Table 1 (``primary_metric``): Matthews correlation for CoLA, Pearson for
STS-B, accuracy for every other task, MRPC and QQP included. The paper does not name its
metrics; this is the convention of the works whose baselines it reruns (LoRA, GaLore), and
its AdamW MRPC/QQP numbers (89.2/91.0) match RoBERTa-base accuracies rather than F1.
F1 (MRPC, QQP) and Spearman (STS-B) are recorded alongside.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import Check, check_files, check_model_source, fail, ok
from ..eval import load_glue_metric
from ..hub import (
    GLUE_HINT,
    MODEL_HINT,
    TOKENIZER_HINT,
    HubAccessError,
    check_repo,
    hub_access,
    hub_reachable,
)
from .base import Batch, Task, cfg_get
from .epoch_stream import EpochBatchStream, epoch_steps

log = logging.getLogger(__name__)

HF_GLUE_DATASET = "nyu-mll/glue"
DEFAULT_MODEL = "roberta-base"


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    """Where one GLUE task's fields live, in the hub dataset and in the tsv files."""

    name: str  # hub config name, also the metric config
    dir_name: str  # folder in the GLUE tsv layout
    text_columns: tuple[str, ...]  # hub columns, in model-input order
    tsv_text: tuple[str | int, ...]  # tsv header names (or column indices when headerless)
    tsv_label: str | int
    tsv_header: bool
    #: tsv label strings in hub id order; ``None`` for the STS-B regression score
    label_values: tuple[str, ...] | None
    primary_metric: str

    @property
    def is_regression(self) -> bool:
        return self.label_values is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_values is None else len(self.label_values)


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueSpec] = {
    spec.name: spec
    for spec in (
        # CoLA's tsv has no header: source, label, original judgement, sentence.
        GlueSpec("cola", "CoLA", ("sentence",), (3,), 1, False, _BINARY, "matthews_correlation"),
        GlueSpec("sst2", "SST-2", ("sentence",), ("sentence",), "label", True, _BINARY, "accuracy"),
        GlueSpec(
            "mrpc",
            "MRPC",
            ("sentence1", "sentence2"),
            ("#1 String", "#2 String"),
            "Quality",
            True,
            _BINARY,
            "accuracy",
        ),
        GlueSpec(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2"),
            "score",
            True,
            None,
            "pearson",
        ),
        GlueSpec(
            "qqp",
            "QQP",
            ("question1", "question2"),
            ("question1", "question2"),
            "is_duplicate",
            True,
            _BINARY,
            "accuracy",
        ),
        GlueSpec(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            ("question", "sentence"),
            "label",
            True,
            _ENTAILMENT,
            "accuracy",
        ),
        GlueSpec(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2"),
            "label",
            True,
            _ENTAILMENT,
            "accuracy",
        ),
    )
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb"}


def glue_spec(task: str) -> GlueSpec:
    """The spec for ``task``; accepts hub names (``sst2``) and folder names (``SST-2``)."""
    key = str(task).lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; valid: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def read_glue_tsv(path: str | Path, spec: GlueSpec) -> list[dict[str, Any]]:
    """Rows of one GLUE tsv file as hub-style records (text columns + ``label``).

    GLUE tsv files are not CSV: quotes are literal text, so fields are split on tabs only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GLUE {spec.name}: missing {path}")
    records: list[dict[str, Any]] = []
    short_lines: list[int] = []
    # utf-8-sig: the MRPC files start with a byte-order mark before the header.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if spec.tsv_header:
            header = next(reader)
            wanted = [*spec.tsv_text, spec.tsv_label]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise ValueError(f"{path}: header {header} lacks columns {missing}")
            text_idx = [header.index(c) for c in spec.tsv_text]
            label_idx = header.index(spec.tsv_label)
            width = len(header)
        else:
            text_idx = list(spec.tsv_text)
            label_idx = spec.tsv_label
            width = max(*text_idx, label_idx) + 1
        for line_no, row in enumerate(reader, start=2 if spec.tsv_header else 1):
            if len(row) < width:
                # The public QQP train file has a handful of truncated rows; the GLUE
                # baselines drop them too. Counted and reported below, with their lines.
                short_lines.append(line_no)
                continue
            if len(row) > width:
                # A tab inside a text field shifts every later column: the row's label and
                # texts would be read from the wrong fields.
                raise ValueError(
                    f"{path}:{line_no}: {len(row)} tab-separated fields, expected {width} "
                    f"for {spec.name} (a tab inside a text field?)"
                )
            raw = row[label_idx].strip()
            if spec.is_regression:
                label: float | int = _similarity_score(raw, path, line_no)
            elif raw in spec.label_values:
                label = spec.label_values.index(raw)
            else:
                raise ValueError(
                    f"{path}:{line_no}: label {raw!r} not in {list(spec.label_values)} for {spec.name}"
                )
            record = {col: row[i] for col, i in zip(spec.text_columns, text_idx)}
            record["label"] = label
            records.append(record)
    if short_lines:
        shown = ", ".join(map(str, short_lines[:10])) + (", ..." if len(short_lines) > 10 else "")
        log.warning(
            "%s: skipped %d rows with fewer than %d fields (lines %s)",
            path,
            len(short_lines),
            width,
            shown,
        )
    if not records:
        raise ValueError(f"{path}: no examples")
    return records


def _similarity_score(raw: str, path: Path, line_no: int) -> float:
    """An STS-B label: a similarity score from 0 to 5."""
    try:
        score = float(raw)
    except ValueError:
        raise ValueError(
            f"{path}:{line_no}: STS-B label {raw!r} is not a number (scores run from 0 to 5)"
        ) from None
    if not 0.0 <= score <= 5.0:  # also NaN
        raise ValueError(f"{path}:{line_no}: STS-B label {raw!r} is outside 0 to 5")
    return score


def load_glue_split(spec: GlueSpec, split: str, glue_dir: str | None, hf_dataset: str):
    """``split`` is ``"train"`` or ``"dev"``; from ``glue_dir`` when given, else the hub."""
    if glue_dir is not None:
        return read_glue_tsv(Path(glue_dir) / spec.dir_name / f"{split}.tsv", spec)
    import datasets

    hub_split = {"train": "train", "dev": "validation"}[split]
    with hub_access("GLUE dataset", hf_dataset, GLUE_HINT, repo_type="dataset"):
        ds = datasets.load_dataset(hf_dataset, spec.name, split=hub_split)
    return [{**{c: row[c] for c in spec.text_columns}, "label": row["label"]} for row in ds]


class GlueTask(Task):
    """One GLUE task. ``data``: ``task``, ``glue_dir`` (local tsv root, else the hub),
    ``hf_dataset``, ``max_length`` (512), ``eval_batch_size``. ``model``: ``name_or_path``
    (hub id or local directory, default ``roberta-base``), ``tokenizer`` (defaults to it)."""

    name = "glue"
    primary_mode = "max"

    def __init__(self, data: Mapping | None = None, model: Mapping | None = None):
        self.spec = glue_spec(cfg_get(data, "task", "rte"))
        self.primary_metric = self.spec.primary_metric
        self.glue_dir = cfg_get(data, "glue_dir")
        self.hf_dataset = cfg_get(data, "hf_dataset", HF_GLUE_DATASET)
        self.max_length = int(cfg_get(data, "max_length", 512))
        self.eval_batch_size = int(cfg_get(data, "eval_batch_size", 64))
        self.model_path = str(cfg_get(model, "name_or_path", DEFAULT_MODEL))
        self.tokenizer_path = str(cfg_get(model, "tokenizer", self.model_path))
        self.tokenizer = None
        self.train_examples: list[dict[str, Any]] | None = None
        self.dev_examples: list[dict[str, Any]] | None = None
        self._metric = None

    # -- data -------------------------------------------------------------------------
    def setup(self, accelerator=None) -> None:
        from transformers import AutoTokenizer, DataCollatorWithPadding

        with hub_access("Tokenizer", self.tokenizer_path, _tokenizer_hint(self)):
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        self._collator = DataCollatorWithPadding(self.tokenizer)
        if accelerator is not None:
            with accelerator.main_process_first():
                train, dev = self._load_raw()
        else:
            train, dev = self._load_raw()
        self.train_examples = self._tokenize(train)
        self.dev_examples = self._tokenize(dev)
        log.info(
            "GLUE %s: %d train, %d dev examples (max_length %d)",
            self.spec.name,
            len(self.train_examples),
            len(self.dev_examples),
            self.max_length,
        )

    def _load_raw(self):
        return (
            load_glue_split(self.spec, "train", self.glue_dir, self.hf_dataset),
            load_glue_split(self.spec, "dev", self.glue_dir, self.hf_dataset),
        )

    def _tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        texts = [[r[c] for r in records] for c in self.spec.text_columns]
        encoded = self.tokenizer(*texts, truncation=True, max_length=self.max_length)
        keys = list(encoded.keys())
        return [
            {**{k: encoded[k][i] for k in keys}, "labels": records[i]["label"]}
            for i in range(len(records))
        ]

    def collate(self, features: list[dict[str, Any]]) -> Batch:
        """Dynamic padding: each batch is padded to its own longest sequence."""
        batch = self._collator(features)
        if self.spec.is_regression:
            batch["labels"] = batch["labels"].float()
        return dict(batch)

    def _require_setup(self):
        if self.train_examples is None:
            raise RuntimeError("GlueTask.setup() must run before data or evaluation is used")

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
        if self.glue_dir is not None:
            folder = Path(self.glue_dir).expanduser() / self.spec.dir_name
            files = [folder / "train.tsv", folder / "dev.tsv"]
            checks.append(check_files("data", files, "data.glue_dir"))
        else:
            good, detail = check_repo(self.hf_dataset, "dataset", "GLUE dataset", GLUE_HINT)
            checks.append(
                Check(
                    "data",
                    "ok" if good else "FAIL",
                    f"{self.hf_dataset}/{self.spec.name}: {detail}" if good else detail,
                )
            )
        checks.append(check_model_source(self.model_path, MODEL_HINT))
        return checks

    def meta_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        config = hf_config(
            self.model_path,
            num_labels=self.spec.num_labels,
            problem_type="regression" if self.spec.is_regression else "single_label_classification",
        )
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(config)

    # -- model and loss -----------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        with hub_access("Model", self.model_path, MODEL_HINT):
            return AutoModelForSequenceClassification.from_pretrained(
                self.model_path,
                num_labels=self.spec.num_labels,
                problem_type=(
                    "regression" if self.spec.is_regression else "single_label_classification"
                ),
            )

    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        logits = model(**_inputs(batch, model)).logits
        return self._loss(logits, batch["labels"].to(logits.device), reduction="mean")

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str):
        # Computed here, not by the model, so train and dev losses are the same function
        # and in fp32 under autocast.
        if self.spec.is_regression:
            return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction=reduction)
        return F.cross_entropy(logits.float(), labels, reduction=reduction)

    # -- evaluation ---------------------------------------------------------------------
    @property
    def metric(self):
        if self._metric is None:
            self._metric = load_glue_metric(self.spec.name)
        return self._metric

    @torch.no_grad()
    def evaluate(self, model: nn.Module, accelerator=None) -> dict[str, float]:
        """Dev-set ``val_loss`` and the task's GLUE metrics; dev is split across processes
        and the predictions gathered, so every process returns the same numbers."""
        self._require_setup()
        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        n = len(self.dev_examples)
        per_rank = math.ceil(n / world)
        order = list(range(n)) + [n - 1] * (per_rank * world - n)
        shard = order[rank * per_rank : (rank + 1) * per_rank]

        was_training = model.training
        model.eval()
        preds, losses = [], []
        try:
            for start in range(0, len(shard), self.eval_batch_size):
                idx = shard[start : start + self.eval_batch_size]
                batch = self.collate([self.dev_examples[i] for i in idx])
                if accelerator is not None:
                    with accelerator.autocast():
                        logits = model(**_inputs(batch, model)).logits
                else:
                    logits = model(**_inputs(batch, model)).logits
                labels = batch["labels"].to(logits.device)
                losses.append(self._loss(logits, labels, reduction="none").reshape(-1))
                if self.spec.is_regression:
                    preds.append(logits.float().squeeze(-1))
                else:
                    preds.append(logits.argmax(dim=-1))
        finally:
            model.train(was_training)
        pred = torch.cat(preds)
        loss = torch.cat(losses)
        if accelerator is not None and world > 1:
            pred = accelerator.gather(pred)
            loss = accelerator.gather(loss)
        pred, loss = pred[:n].cpu(), loss[:n].cpu()
        refs = [ex["labels"] for ex in self.dev_examples]
        metrics = self.metric.compute(predictions=pred.tolist(), references=refs)
        return {"val_loss": float(loss.double().mean()), **metrics}


def hf_config(name_or_path: str, **kwargs):
    """A transformers model config alone (config.json, never the weights), for the preflight."""
    from transformers import AutoConfig

    with hub_access("Model", name_or_path, MODEL_HINT):
        return AutoConfig.from_pretrained(
            name_or_path, local_files_only=not hub_reachable(), **kwargs
        )


def preflight_tokenizer(task):
    """Load a transformers task's tokenizer (small files, cached by the Hub client) and
    report it: the preflight's tokenizer check for GLUE and GSM8K."""
    import transformers

    name = getattr(task, "tokenizer_class", "AutoTokenizer")
    tokenizer_cls = getattr(transformers, name, None)
    if tokenizer_cls is None or not hasattr(tokenizer_cls, "from_pretrained"):
        return fail("tokenizer", f"model.tokenizer_class={name!r} is not a transformers class")
    try:
        with hub_access("Tokenizer", task.tokenizer_path, _tokenizer_hint(task)):
            tokenizer = tokenizer_cls.from_pretrained(
                task.tokenizer_path, local_files_only=not hub_reachable()
            )
    except (HubAccessError, OSError, ValueError, ImportError) as exc:
        return fail("tokenizer", str(exc))
    return ok(
        "tokenizer",
        f"{type(tokenizer).__name__}, {len(tokenizer)} tokens, from {task.tokenizer_path}",
    )


def _tokenizer_hint(task) -> str:
    """The local setting for a task's tokenizer: its own key when set apart from the model."""
    return TOKENIZER_HINT if task.tokenizer_path != task.model_path else MODEL_HINT


def _inputs(batch: Batch, model: nn.Module) -> dict[str, torch.Tensor]:
    """Model inputs (labels stay out: the task computes the loss) on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}
