"""OpenWebText as nanoGPT prepares it, into a token cache (``token_cache.py``): finding the
corpus's files on the Hub or in a local folder, fetching them, checking the document and
token counts, and writing ``train.bin`` / ``val.bin``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..hub import OPENWEBTEXT_HINT, hub_access
from .token_cache import cache_finished, publish_cache
from .tokenizers import Tokenizer

OPENWEBTEXT_REPO = "Skylion007/openwebtext"
# nanoGPT's data/openwebtext/prepare.py on the complete corpus: 8,013,769 documents, of which
# 8,009,762 train / 4,007 val, with 9,035,582,198 / 4,434,897 GPT-2 tokens (<|endoftext|>
# after each document). data.expected_* default to these; tests set tiny ones.
OPENWEBTEXT_DOCUMENTS = 8_013_769
OPENWEBTEXT_TRAIN_TOKENS = 9_035_582_198
# The 21 raw shards the repository's loading script (openwebtext.py) read.
_RAW_SHARD = re.compile(r"(^|/)urlsf_subset\d+\.tar$")
_PARQUET_BRANCH = "refs/convert/parquet"

log = logging.getLogger(__name__)


class IncompleteCorpusError(RuntimeError):
    """The corpus that arrived is not the one expected (a partial download or conversion)."""


@dataclass(frozen=True)
class CorpusFiles:
    """The files OpenWebText will be read from, before any download.

    ``kind`` is ``"parquet"`` (data files with a ``text`` column) or ``"shards"`` (the raw
    ``subsets/urlsf_subsetNN.tar``); ``names`` are repository paths (relative to
    ``local_dir`` for a local copy), ``sizes`` their bytes where known.
    """

    kind: str
    names: tuple[str, ...]
    sizes: tuple[int | None, ...]
    source: str  # for messages and meta.json: "<repo>@<commit>" or the local folder
    repo_id: str | None = None
    commit: str | None = None
    local_dir: Path | None = None

    @property
    def total_bytes(self) -> int | None:
        return None if None in self.sizes else sum(self.sizes)  # type: ignore[arg-type]


def _choose_files(names: Sequence[str], where: str) -> tuple[str, list[str]]:
    """Parquet data files when there are any, else the raw shards."""
    parquet = sorted(n for n in names if n.endswith(".parquet"))
    if parquet:
        return "parquet", parquet
    shards = sorted(n for n in names if _RAW_SHARD.search(n))
    if shards:
        return "shards", shards
    shown = ", ".join(sorted(names)[:8]) or "no files"
    raise FileNotFoundError(
        f"{where} holds neither parquet data files nor the raw OpenWebText shards "
        f"(subsets/urlsf_subsetNN.tar); it has: {shown}"
    )


def find_openwebtext_files(
    hf_dataset: str = OPENWEBTEXT_REPO,
    hf_revision: str = "main",
    local_dir: str | os.PathLike | None = None,
    local_hint: str | None = None,
) -> CorpusFiles:
    """Where OpenWebText would be read from, without downloading it.

    ``local_dir``: a copy of the dataset repository (any depth). Otherwise the Hub repository
    ``hf_dataset`` at ``hf_revision``, pinned to the commit that revision names now, so every
    file comes from one commit. The auto-converted ``refs/convert/parquet`` branch is read
    only when ``hf_revision`` names it (its conversion of a corpus this size can be partial;
    the document count is checked either way). ``local_hint`` is the local alternative a
    hub error names."""
    if local_dir is not None:
        root = Path(local_dir).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"data.local_dir: {root} is not a directory")
        names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        kind, chosen = _choose_files(names, f"data.local_dir={root}")
        return CorpusFiles(
            kind,
            tuple(chosen),
            tuple((root / n).stat().st_size for n in chosen),
            source=str(root),
            local_dir=root,
        )
    from huggingface_hub import HfApi

    with hub_access("Dataset", hf_dataset, local_hint or OPENWEBTEXT_HINT, repo_type="dataset"):
        info = HfApi().dataset_info(hf_dataset, revision=hf_revision, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    kind, chosen = _choose_files(list(sizes), f"{hf_dataset} at revision {hf_revision!r}")
    return CorpusFiles(
        kind,
        tuple(chosen),
        tuple(sizes[n] for n in chosen),
        source=f"{hf_dataset}@{info.sha}",
        repo_id=hf_dataset,
        commit=info.sha,
    )


def _fetch(files: CorpusFiles, max_workers: int, local_hint: str) -> list[str]:
    """Local paths of ``files`` (downloaded into the Hugging Face cache when remote)."""
    if files.local_dir is not None:
        return [str(files.local_dir / n) for n in files.names]
    from huggingface_hub import snapshot_download

    with hub_access("Dataset", files.repo_id, local_hint, repo_type="dataset"):
        folder = snapshot_download(
            files.repo_id,
            repo_type="dataset",
            revision=files.commit,
            allow_patterns=list(files.names),
            max_workers=max_workers,
        )
    return [str(Path(folder) / n) for n in files.names]


def normalise_document(text: str) -> str:
    """As openwebtext.py: runs of three or more newlines become two, ends stripped."""
    return re.sub("\n\n\n+", "\n\n", text).strip()


def raw_shard_documents(shards: list[str]):
    """Documents of raw OpenWebText shards in the order openwebtext.py yielded them: each
    shard (a tar) holds ``urlsf_subsetNN-K_data.xz`` members, each an xz-compressed tar of
    one ``.txt`` per document. Archives are read with the same ``datasets`` iterator the
    script used (regular files only, hidden names skipped)."""
    from datasets import DownloadManager

    archives = DownloadManager()
    for shard in shards:
        for xz_name, xz_file in archives.iter_archive(shard):
            if not xz_name.endswith(".xz"):
                continue
            for txt_name, txt_file in archives.iter_archive(xz_file):
                if txt_name.endswith(".txt"):
                    yield {"text": normalise_document(txt_file.read().decode("utf-8"))}


def openwebtext_folder(
    cache_root: str | os.PathLike,
    tokenizer_name: str,
    hf_dataset: str = OPENWEBTEXT_REPO,
    hf_revision: str = "main",
    local_dir: str | os.PathLike | None = None,
    val_size: float = 0.0005,
    split_seed: int = 2357,
) -> Path:
    """The cache folder of one OpenWebText preparation. The default source keeps nanoGPT's
    plain name (``gpt2-0.0005-2357``), so a copied nanoGPT ``train.bin``/``val.bin`` is
    found; any other source gets a suffix of its own."""
    name = f"{tokenizer_name}-{val_size}-{split_seed}"
    if local_dir is not None or (hf_dataset, hf_revision) != (OPENWEBTEXT_REPO, "main"):
        source = (
            str(Path(local_dir).expanduser().resolve())
            if local_dir
            else f"{hf_dataset}@{hf_revision}"
        )
        name += "-" + hashlib.sha256(source.encode()).hexdigest()[:12]
    return Path(cache_root).expanduser() / "openwebtext" / name


def _check_count(
    what: str,
    key: str,
    actual: int,
    expected: int | None,
    tolerance: float,
    source: str,
    folder: Path,
) -> None:
    if expected is None:
        log.warning(
            "OpenWebText from %s: %s %s, not checked (data.%s=null)",
            source,
            f"{actual:,}",
            what,
            key,
        )
        return
    if abs(actual - expected) > tolerance * expected:
        raise IncompleteCorpusError(
            f"OpenWebText from {source} has {actual:,} {what}, but {expected:,} are expected "
            f"(data.{key}, within data.count_tolerance={tolerance:g}): the download or "
            f"conversion is incomplete, or this is another corpus. Nothing was written to "
            f"{folder}. If the source is right, set data.{key}=<count> (null skips the check)."
        )


def openwebtext_cache(
    tokenizer: Tokenizer,
    cache_root: str | os.PathLike,
    *,
    hf_dataset: str = OPENWEBTEXT_REPO,
    hf_revision: str = "main",
    local_dir: str | os.PathLike | None = None,
    expected_documents: int | None = OPENWEBTEXT_DOCUMENTS,
    expected_train_tokens: int | None = OPENWEBTEXT_TRAIN_TOKENS,
    count_tolerance: float = 0.01,
    num_proc: int = 8,
    val_size: float = 0.0005,
    split_seed: int = 2357,
) -> Path:
    """nanoGPT's ``data/openwebtext/prepare.py`` without the loading script ``datasets`` >= 4
    refuses: the documents come from parquet data files when the source has them, else from
    the 21 raw shards the script read (:func:`find_openwebtext_files`). Then, as nanoGPT:
    the 0.05% validation split (seed 2357), the tokenizer's ids + ``<|endoftext|>`` per
    document, uint16 memmaps written in 1024 slices. The document count (before tokenising)
    and the train token count (before writing) are checked against ``expected_*``: nothing
    is written from a partial corpus. About 9B train tokens, 17 GB, by nanoGPT's count."""
    folder = openwebtext_folder(
        cache_root, tokenizer.name, hf_dataset, hf_revision, local_dir, val_size, split_seed
    )
    if cache_finished(folder):
        return folder
    if tokenizer.vocab_size > 2**16:
        raise ValueError(
            f"vocabulary of {tokenizer.vocab_size} tokens does not fit the uint16 cache"
        )
    import datasets
    from tqdm.auto import tqdm

    hint = f"{OPENWEBTEXT_HINT}; or put a prepared train.bin and val.bin into {folder}"
    files = find_openwebtext_files(hf_dataset, hf_revision, local_dir, hint)
    if _PARQUET_BRANCH in str(hf_revision):
        log.warning(
            "Reading the Hub's auto-converted parquet branch of %s; it can be partial for a "
            "corpus this size, so the document count is checked.",
            hf_dataset,
        )
    paths = _fetch(files, max_workers=num_proc, local_hint=hint)
    features = datasets.Features({"text": datasets.Value("string")})
    if files.kind == "parquet":
        raw = datasets.load_dataset(
            "parquet", data_files={"train": paths}, split="train", num_proc=num_proc
        )
        raw = raw.select_columns(["text"])
    else:
        raw = datasets.Dataset.from_generator(
            raw_shard_documents,
            features=features,
            gen_kwargs={"shards": paths},
            num_proc=min(num_proc, len(paths)),
        )
    _check_count(
        "documents",
        "expected_documents",
        len(raw),
        expected_documents,
        count_tolerance,
        files.source,
        folder,
    )

    split = raw.train_test_split(test_size=val_size, seed=split_seed, shuffle=True)
    split["val"] = split.pop("test")
    eot = [] if tokenizer.eot_token is None else [tokenizer.eot_token]

    def tokenize(example):
        ids = tokenizer.encode(example["text"]) + eot
        return {"ids": ids, "len": len(ids)}

    tokenized = split.map(
        tokenize, remove_columns=["text"], desc="tokenizing OpenWebText", num_proc=num_proc
    )
    totals = {name: int(np.sum(dset["len"], dtype=np.uint64)) for name, dset in tokenized.items()}
    _check_count(
        f"train tokens ({tokenizer.name} tokenizer)",
        "expected_train_tokens",
        totals["train"],
        expected_train_tokens,
        count_tolerance,
        files.source,
        folder,
    )
    tmp = folder.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        for name, dset in tokenized.items():
            out = np.memmap(tmp / f"{name}.bin", dtype=np.uint16, mode="w+", shape=(totals[name],))
            shards = min(1024, len(dset))
            pos = 0
            for i in tqdm(range(shards), desc=f"writing {name}.bin"):
                shard = dset.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
                chunk = np.concatenate(shard["ids"])
                out[pos : pos + len(chunk)] = chunk
                pos += len(chunk)
            out.flush()
            del out
        meta = {
            "source": files.source,
            "kind": files.kind,
            "files": len(files.names),
            "documents": len(raw),
            "tokens": totals,
            "tokenizer": tokenizer.name,
            "val_size": val_size,
            "split_seed": split_seed,
        }
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_cache(tmp, folder)
