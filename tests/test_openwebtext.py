"""OpenWebText preparation with current ``datasets``: the raw shards or parquet files of the
Hub repository (served by a local fake hub through huggingface_hub's real client), or a local
copy; nanoGPT's split; the corpus is counted before anything is written."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest

from alphaadam.data import openwebtext
from alphaadam.data.tokenizers import Tokenizer
from alphaadam.hub import HubAccessError
from fake_hub import FakeHub

REPO = "Skylion007/openwebtext"
EOT = 256
# Bytes plus an end-of-text id, so documents can be cut apart again in train.bin.
BYTES_EOT = Tokenizer(
    name="bytes_eot",
    vocab_size=257,
    eot_token=EOT,
    encode=lambda text: list(text.encode("utf-8")),
    decode=lambda ids: bytes(ids).decode("utf-8"),
)


def _raw_document(shard: int, member: int, doc: int) -> str:
    # Runs of newlines and outer whitespace, which the reader must normalise as the old
    # loading script did; a non-ASCII character to check the utf-8 decoding.
    return f"  shard {shard} member {member} doc {doc}\n\n\n\nsecond paragraph é\n\n\n\n\nend \n"


def _expected(text: str) -> str:
    # The loading script's normalisation, written out independently of the code under test.
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def _xz_tar(files: dict[str, str]) -> bytes:
    """An xz-compressed tar of text files (one ``urlsf_subsetNN-K_data.xz`` member)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_raw_repo(root: Path, shards: int = 3, members: int = 2, docs: int = 4) -> list[str]:
    """The repository's layout: README, the old loading script, and ``subsets/`` with raw
    shards. Returns the normalised documents in archive order."""
    (root / "subsets").mkdir(parents=True)
    (root / "README.md").write_text("---\npretty_name: OpenWebText\n---\n")
    (root / "openwebtext.py").write_text("# the loading script datasets >= 4 refuses\n")
    documents = []
    for s in range(shards):
        with tarfile.open(root / "subsets" / f"urlsf_subset{s:02d}.tar", "w") as tar:
            for m in range(1, members + 1):
                texts = {
                    f"{s:04d}{m:03d}{d:03d}-{d}abc.txt": _raw_document(s, m, d) for d in range(docs)
                }
                documents += [_expected(t) for t in texts.values()]
                data = _xz_tar(texts)
                info = tarfile.TarInfo(f"openwebtext/urlsf_subset{s:02d}-{m}_data.xz")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return documents


def write_parquet(folder: Path, documents: list[str], files: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(documents) // files)
    for i in range(files):
        table = pa.table({"text": documents[i * per : (i + 1) * per]})
        pq.write_table(table, folder / f"train-{i:05d}-of-{files:05d}.parquet")


def nanogpt_split(documents: list[str], val_size: float) -> dict[str, list[str]]:
    """nanoGPT's prepare.py split, run by ``datasets`` itself on the documents in order."""
    import datasets

    split = datasets.Dataset.from_dict({"text": documents}).train_test_split(
        test_size=val_size, seed=2357, shuffle=True
    )
    return {"train": split["train"]["text"], "val": split["test"]["text"]}


def read_documents(path: Path) -> list[str]:
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    cuts = np.flatnonzero(ids == EOT)
    assert len(cuts) and cuts[-1] == len(ids) - 1  # every document ends with its EOT
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [bytes(ids[a:b].astype(np.uint8)).decode("utf-8") for a, b in zip(starts, cuts)]


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """Fresh Hugging Face caches for one test (hub downloads and datasets' arrow files)."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path / "hf"


def _prepare(cache: Path, n_docs: int, tokens: int, **kw) -> Path:
    return openwebtext.openwebtext_cache(
        BYTES_EOT,
        cache,
        expected_documents=n_docs,
        expected_train_tokens=tokens,
        count_tolerance=0.0,
        num_proc=2,
        val_size=0.125,
        **kw,
    )


def _train_tokens(documents: list[str], val_size: float = 0.125) -> int:
    return sum(len(d.encode()) + 1 for d in nanogpt_split(documents, val_size)["train"])


def test_raw_shards_from_the_hub_give_nanogpts_split(tmp_path, hf_home, monkeypatch):
    documents = write_raw_repo(tmp_path / "repo")
    with FakeHub() as hub:
        sha = hub.add("dataset", REPO, tmp_path / "repo")
        hub.serve(monkeypatch)
        folder = _prepare(tmp_path / "cache", len(documents), _train_tokens(documents))
        downloads = [r for r in hub.requests if r.startswith("GET /datasets/")]
    expected = nanogpt_split(documents, 0.125)
    assert read_documents(folder / "train.bin") == expected["train"]
    assert read_documents(folder / "val.bin") == expected["val"]
    assert len(expected["val"]) == 3  # ceil(24 * 0.125)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"] == f"{REPO}@{sha}" and meta["kind"] == "shards"
    assert meta["documents"] == 24 and meta["files"] == 3
    # Only the shards were downloaded (not the loading script or README), pinned to one commit.
    assert sorted(downloads) == [
        f"GET /datasets/{REPO}/resolve/{sha}/subsets/urlsf_subset{i:02d}.tar" for i in range(3)
    ]
    # Prepared once: later runs read the cache without asking the (now stopped) hub.
    assert _prepare(tmp_path / "cache", len(documents), _train_tokens(documents)) == folder


def test_parquet_on_main_is_preferred_and_a_local_copy_matches_the_hub(
    tmp_path, hf_home, monkeypatch
):
    write_raw_repo(tmp_path / "repo")
    # Different documents in the parquet files, so the test sees which files were read.
    documents = [f"parquet document {i}\n\n\n\nbody" for i in range(20)]
    write_parquet(tmp_path / "repo" / "plain_text", documents)
    with FakeHub() as hub:
        hub.add("dataset", REPO, tmp_path / "repo")
        hub.serve(monkeypatch)
        from_hub = _prepare(tmp_path / "cache", 20, _train_tokens(documents))
    assert json.loads((from_hub / "meta.json").read_text())["kind"] == "parquet"
    assert read_documents(from_hub / "val.bin") == nanogpt_split(documents, 0.125)["val"]

    local = _prepare(tmp_path / "cache", 20, _train_tokens(documents), local_dir=tmp_path / "repo")
    assert local != from_hub  # a cache folder of its own
    for name in ("train.bin", "val.bin"):
        assert (local / name).read_bytes() == (from_hub / name).read_bytes()


def test_a_partial_parquet_conversion_is_refused_before_anything_is_written(
    tmp_path, hf_home, monkeypatch
):
    documents = write_raw_repo(tmp_path / "repo")
    write_parquet(tmp_path / "converted" / "plain_text" / "partial-train", documents[:10], 1)
    with FakeHub() as hub:
        hub.add("dataset", REPO, tmp_path / "repo")
        hub.add("dataset", REPO, tmp_path / "converted", revision="refs/convert/parquet")
        hub.serve(monkeypatch)
        with pytest.raises(openwebtext.IncompleteCorpusError, match=r"has 10 documents, but 24"):
            _prepare(
                tmp_path / "cache", 24, _train_tokens(documents), hf_revision="refs/convert/parquet"
            )
        # main (the raw shards) is complete and passes the same check.
        _prepare(tmp_path / "cache", 24, _train_tokens(documents))
    folders = sorted(p.name for p in (tmp_path / "cache" / "openwebtext").iterdir())
    assert folders == ["bytes_eot-0.125-2357"]  # no partial cache, no .tmp-* debris


def test_a_token_count_off_the_expected_one_writes_nothing(tmp_path, hf_home):
    documents = write_raw_repo(tmp_path / "repo", shards=1)
    tokens = _train_tokens(documents)
    with pytest.raises(openwebtext.IncompleteCorpusError) as err:
        _prepare(tmp_path / "cache", len(documents), tokens + 100, local_dir=tmp_path / "repo")
    assert f"has {tokens:,} train tokens (bytes_eot tokenizer), but {tokens + 100:,}" in str(
        err.value
    )
    assert "data.expected_train_tokens" in str(err.value)
    assert not (tmp_path / "cache" / "openwebtext").exists() or not any(
        (tmp_path / "cache" / "openwebtext").iterdir()
    )


def test_a_repository_without_data_files_names_what_it_has(tmp_path, hf_home):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "openwebtext.py").write_text("# script only\n")
    with pytest.raises(FileNotFoundError, match=r"neither parquet.*has: openwebtext.py"):
        _prepare(tmp_path / "cache", 1, 1, local_dir=tmp_path / "repo")


def test_gated_and_unreachable_hub_name_the_local_settings(tmp_path, hf_home, monkeypatch):
    with FakeHub() as hub:
        hub.gate("dataset", REPO)
        hub.serve(monkeypatch)
        with pytest.raises(HubAccessError) as err:
            _prepare(tmp_path / "cache", 1, 1)
    assert err.value.problem == "gated"
    assert f"https://huggingface.co/datasets/{REPO}" in str(err.value)
    assert "data.local_dir=<dir>" in str(err.value) and "train.bin" in str(err.value)

    from huggingface_hub import constants

    # No network: nothing listens on the endpoint's port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubAccessError) as err:
        _prepare(tmp_path / "cache", 1, 1)
    assert err.value.problem == "unreachable"
    assert "no connection to the Hub" in str(err.value) and "Connection refused" in str(err.value)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError) as err:
        _prepare(tmp_path / "cache", 1, 1)
    assert err.value.problem == "unreachable"
    assert "HF_HUB_OFFLINE=1 is set" in str(err.value) and "data.local_dir=<dir>" in str(err.value)


def test_the_fake_repository_is_refused_by_datasets_load_dataset_as_the_real_one_is(
    tmp_path, hf_home, monkeypatch
):
    """The premise of issue 15: ``datasets`` >= 4 will not load a repository that still has
    its loading script (what the old preparation called; nanoGPT issue #633)."""
    import datasets

    write_raw_repo(tmp_path / "repo", shards=1)
    with FakeHub() as hub:
        hub.add("dataset", REPO, tmp_path / "repo")
        hub.serve(monkeypatch)
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
        monkeypatch.setattr(
            datasets.config,
            "HUB_DATASETS_URL",
            hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        )
        with pytest.raises(RuntimeError, match="Dataset scripts are no longer supported"):
            datasets.load_dataset(REPO)
