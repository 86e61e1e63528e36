"""Causal language modelling (GPT-2 pretraining): nanoGPT's random-window batches over a
tokenised corpus (OpenWebText, local text files, or the generated smoke corpus)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import Check, check_files, check_writable, fail, ok
from ..data.openwebtext import find_openwebtext_files, openwebtext_cache, openwebtext_folder
from ..data.smoke import smoke_cache
from ..data.token_cache import text_cache
from ..data.tokenizers import build_tokenizer
from ..hub import GPT2_INIT_HINT, OPENWEBTEXT_HINT, HubAccessError, hub_access, hub_reachable
from ..models.gpt import GPT, GPTConfig, build_gpt
from .base import Batch, BatchStream, Task

SOURCES = ("smoke", "text", "openwebtext")
_OPENWEBTEXT_KEYS = (
    "hf_dataset",
    "hf_revision",
    "local_dir",
    "expected_documents",
    "expected_train_tokens",
    "count_tolerance",
    "num_proc",
)


def openwebtext_options(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``openwebtext_cache`` arguments a data config sets (absent keys keep the defaults)."""
    return {k: data[k] for k in _OPENWEBTEXT_KEYS if k in data}


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A counter-based hash: sample ``j``'s window depends only on (seed, j)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def window_offsets(seed: int, sample_ids: np.ndarray, n_tokens: int, block_size: int) -> np.ndarray:
    """Start offsets of the windows for global sample numbers ``sample_ids``."""
    n_starts = n_tokens - block_size
    if n_starts < 1:
        raise ValueError(
            f"the split has {n_tokens} tokens, too few for windows of block_size={block_size}"
        )
    key = _splitmix64(np.array([seed], dtype=np.uint64))
    return (_splitmix64(sample_ids.astype(np.uint64) ^ key) % np.uint64(n_starts)).astype(np.int64)


def windows(tokens: np.ndarray, offsets: np.ndarray, block_size: int) -> Batch:
    x = np.stack([tokens[o : o + block_size] for o in offsets]).astype(np.int64)
    y = np.stack([tokens[o + 1 : o + 1 + block_size] for o in offsets]).astype(np.int64)
    return {"input_ids": torch.from_numpy(x), "labels": torch.from_numpy(y)}


class WindowStream(BatchStream):
    """Random windows of ``block_size + 1`` tokens, as nanoGPT's ``get_batch``.

    Global sample ``j`` is drawn from ``hash(seed, j)``; draw ``c`` of rank ``r`` among
    ``W`` takes samples ``(c * W + r) * B ... + B - 1``. So one optimizer step sees the same
    set of windows for any split of its global batch into processes x accumulation steps,
    and the position is one integer.
    """

    def __init__(
        self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, rank: int, world: int
    ) -> None:
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.draws = 0

    def __next__(self) -> Batch:
        first = (self.draws * self.world + self.rank) * self.batch_size
        ids = np.arange(first, first + self.batch_size, dtype=np.uint64)
        self.draws += 1
        offsets = window_offsets(self.seed, ids, len(self.tokens), self.block_size)
        return windows(self.tokens, offsets, self.block_size)

    def state_dict(self) -> dict[str, Any]:
        return {"draws": self.draws, "seed": self.seed, "world": self.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world"] != self.world or state["seed"] != self.seed:
            raise ValueError(
                f"data position was saved with world size {state['world']} and seed "
                f"{state['seed']}; this run has {self.world} and {self.seed}"
            )
        self.draws = int(state["draws"])


class LMTask(Task):
    """Next-token prediction with a nanoGPT GPT.

    ``data`` keys: ``name``, ``source`` (smoke | text | openwebtext), ``path`` (text files),
    ``tokenizer`` (gpt2 | byte), ``tokenizer_dir``, ``block_size``, ``val_fraction``,
    ``test_fraction``, ``cache_dir``, ``eval_iters``, ``eval_batch_size``; for OpenWebText also
    ``hf_dataset``, ``hf_revision``, ``local_dir``, ``expected_documents``,
    ``expected_train_tokens``, ``count_tolerance``, ``num_proc``.
    ``model`` keys: the ``build_gpt`` arguments except ``vocab_size`` (``null`` = the
    tokenizer's, padded up to ``pad_vocab_multiple``).
    """

    name = "lm"
    primary_metric = "val_loss"
    primary_mode = "min"

    def __init__(self, data: Mapping[str, Any], model: Mapping[str, Any]) -> None:
        self.data_cfg = dict(data)
        self.model_cfg = dict(model)
        source = self.data_cfg.get("source")
        if source not in SOURCES:
            raise ValueError(
                f"Unknown data.source {source!r}; valid choices are {', '.join(SOURCES)}"
            )
        if source == "text":
            paths = self.data_cfg.get("path")
            if not paths:
                raise ValueError("data=text needs data.path=<text file> (or a list of files)")
            paths = [paths] if isinstance(paths, str) else list(paths)
            for p in paths:
                if not Path(p).expanduser().is_file():
                    raise FileNotFoundError(
                        f"data.path: text file {Path(p).expanduser()} does not exist"
                    )
            self.data_cfg["path"] = paths
        self.test_fraction = float(self.data_cfg.get("test_fraction") or 0.0)
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(
                f"data.test_fraction={self.data_cfg.get('test_fraction')!r}: the share of the "
                "held-out split kept for the test split must lie in [0, 1) (0 = no test split)"
            )
        self.splits: dict[str, np.ndarray] = {}

    def setup(self, accelerator) -> None:
        d = self.data_cfg
        self.tokenizer = build_tokenizer(d.get("tokenizer", "gpt2"), d.get("tokenizer_dir"))
        if d["source"] == "smoke":
            self.splits = smoke_cache(
                self.tokenizer, d.get("val_fraction", 0.1), d.get("corpus_seed", 0)
            )
            self._split_test()
            self._check_splits("the smoke corpus")
            return
        with accelerator.main_process_first():  # tokenise once; the other ranks read the cache
            if d["source"] == "text":
                folder = text_cache(
                    d["path"],
                    self.tokenizer,
                    d["cache_dir"],
                    d.get("val_fraction", 0.1),
                    min_split_tokens=self.block_size + 1,
                )
            else:
                folder = openwebtext_cache(self.tokenizer, d["cache_dir"], **openwebtext_options(d))
        self.splits = {
            s: np.memmap(folder / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val")
        }
        self._split_test()
        self._check_splits(", ".join(d["path"]) if d["source"] == "text" else str(folder))

    def _split_test(self) -> None:
        """With ``data.test_fraction``, the held-out tokens' last share becomes the test split
        and the rest stays validation: an lr chosen on ``val_loss`` can then be reported on
        ``test_loss``, text it never saw. The two are contiguous, never mixed, and the training
        split is unchanged."""
        if not self.test_fraction:
            return
        held_out = self.splits["val"]
        n_val = len(held_out) - int(len(held_out) * self.test_fraction)
        self.splits["val"], self.splits["test"] = held_out[:n_val], held_out[n_val:]

    def _check_splits(self, source: str) -> None:
        # A cache made for a smaller block_size can be too short for this one; found now,
        # before the run directory exists, not at the first batch.
        for split, tokens in self.splits.items():
            if len(tokens) < self.block_size + 1:
                raise ValueError(
                    f"data ({source}): the {split} split has {len(tokens)} tokens, fewer than "
                    f"one window of data.block_size + 1 = {self.block_size + 1}. Use more "
                    "text or a smaller data.block_size."
                )

    @property
    def block_size(self) -> int:
        return int(self.data_cfg["block_size"])

    def build_model(self) -> nn.Module:
        cfg = dict(self.model_cfg)
        multiple = cfg.pop("pad_vocab_multiple", 64)
        cfg.pop("name", None)
        if cfg.get("vocab_size") is None:
            cfg["vocab_size"] = math.ceil(self.tokenizer.vocab_size / multiple) * multiple
        cfg["block_size"] = self.block_size
        return build_gpt(**cfg)

    # -- preflight (alphaadam/preflight.py) ----------------------------------------------
    def preflight(self) -> list[Check]:
        d = self.data_cfg
        checks = []
        try:
            self.tokenizer = build_tokenizer(d.get("tokenizer", "gpt2"), d.get("tokenizer_dir"))
            where = d.get("tokenizer_dir") or "tiktoken's cache or download"
            if self.tokenizer.name == "byte":
                where = "no files"
            checks.append(
                ok(
                    "tokenizer",
                    f"{self.tokenizer.name}, {self.tokenizer.vocab_size} tokens ({where})",
                )
            )
        except (OSError, RuntimeError, ValueError) as exc:
            checks.append(fail("tokenizer", str(exc)))
        if d["source"] == "smoke":
            checks.append(ok("data", "the generated smoke corpus (no files)"))
        elif d["source"] == "text":
            checks.append(check_files("data", d["path"], "data.path"))
            checks.append(check_writable("cache", [Path(d["cache_dir"])]))
        else:
            checks.append(self._preflight_openwebtext())
        return checks

    def _preflight_openwebtext(self):
        d = self.data_cfg
        opts = openwebtext_options(d)
        name = getattr(getattr(self, "tokenizer", None), "name", d.get("tokenizer", "gpt2"))
        folder = openwebtext_folder(
            d["cache_dir"],
            name,
            opts.get("hf_dataset", "Skylion007/openwebtext"),
            opts.get("hf_revision", "main"),
            opts.get("local_dir"),
        )
        if all((folder / f"{s}.bin").is_file() for s in ("train", "val")):
            tokens = (folder / "train.bin").stat().st_size // 2
            return ok("data", f"OpenWebText prepared in {folder} ({tokens:,} train tokens)")
        hint = f"{OPENWEBTEXT_HINT}; or put a prepared train.bin and val.bin into {folder}"
        try:
            files = find_openwebtext_files(
                opts.get("hf_dataset", "Skylion007/openwebtext"),
                opts.get("hf_revision", "main"),
                opts.get("local_dir"),
                hint,
            )
        except (HubAccessError, FileNotFoundError) as exc:
            return fail("data", f"OpenWebText is not prepared in {folder}, and: {exc}")
        size = files.total_bytes
        expected = opts.get("expected_train_tokens")
        kind = "parquet file(s)" if files.kind == "parquet" else "raw shard(s)"
        detail = (
            f"OpenWebText not prepared yet: the first run reads {len(files.names)} {kind}"
            f"{f' ({size / 1e9:.2f} GB)' if size else ''} from {files.source}"
        )
        writable = check_writable("data", [folder.parent])
        if writable.status != "ok":
            return writable
        if expected:
            need = 2 * expected  # uint16 tokens; val.bin is 0.05% of that
            detail += f" and writes ~{need / 1e9:.2f} GB to {folder}"
            existing = folder
            while not existing.exists():
                existing = existing.parent
            free = shutil.disk_usage(existing).free
            if free < need:
                return fail("data", f"{detail}, but only {free / 1e9:.1f} GB are free there")
        return ok(
            "data", detail + "; run it once before a sweep, so jobs do not race to prepare it"
        )

    def meta_model(self) -> nn.Module:
        init_from = self.model_cfg.get("init_from", "scratch")
        if init_from == "scratch":
            if getattr(self, "tokenizer", None) is None:
                raise ValueError("its vocabulary comes from the tokenizer, which did not load")
            return super().meta_model()
        # The checkpoint's own shapes win (build_gpt): read them from its config alone.
        from transformers import AutoConfig

        with hub_access("GPT-2 checkpoint (model.init_from)", init_from, GPT2_INIT_HINT):
            hf = AutoConfig.from_pretrained(init_from, local_files_only=not hub_reachable())
        block = min(self.block_size, hf.n_positions)
        cfg = GPTConfig(block, hf.vocab_size, hf.n_layer, hf.n_head, hf.n_embd, 0.0, True)
        with torch.device("meta"):
            return GPT(cfg)

    def train_stream(
        self, micro_batch_size: int, seed: int, rank: int, world_size: int
    ) -> BatchStream:
        return WindowStream(
            self.splits["train"], self.block_size, micro_batch_size, seed, rank, world_size
        )

    def compute_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        _, loss = model(batch["input_ids"], batch["labels"])
        return loss

    def evaluate(self, model: nn.Module, accelerator) -> dict[str, float]:
        """Mean loss over ``eval_iters`` fixed batches of each held-out split: ``val_loss``,
        and ``test_loss`` with ``data.test_fraction`` (the same windows at every evaluation,
        so curves compare checkpoints rather than sampling noise)."""
        return {
            f"{split}_loss": self._split_loss(model, accelerator, self.splits[split])
            for split in ("val", "test")
            if split in self.splits
        }

    def _split_loss(self, model: nn.Module, accelerator, tokens: np.ndarray) -> float:
        iters, batch = int(self.data_cfg["eval_iters"]), int(self.data_cfg["eval_batch_size"])
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
        for i in range(accelerator.process_index, iters, accelerator.num_processes):
            ids = np.arange(i * batch, (i + 1) * batch, dtype=np.uint64)
            offsets = window_offsets(0, ids, len(tokens), self.block_size)
            b = {
                k: v.to(accelerator.device)
                for k, v in windows(tokens, offsets, self.block_size).items()
            }
            total[0] += self.compute_loss(model, b).double()
            total[1] += 1
        total = accelerator.reduce(total, reduction="sum")
        return float(total[0] / total[1])
