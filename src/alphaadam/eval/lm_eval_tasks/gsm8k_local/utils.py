"""Dataset loader for the ``gsm8k_local`` lm-eval task (``custom_dataset`` hook)."""

from __future__ import annotations

import os
from pathlib import Path


def load_gsm8k(data_dir: str | None = None, **_metadata):
    """``{"train", "test"}`` from ``<data_dir>/{train,test}.jsonl`` (``--metadata``
    ``{"data_dir": ...}`` or ``$GSM8K_DATA_DIR``); the hub's ``openai/gsm8k`` otherwise."""
    import datasets

    data_dir = data_dir or os.environ.get("GSM8K_DATA_DIR")
    if data_dir:
        files = {split: str(Path(data_dir) / f"{split}.jsonl") for split in ("train", "test")}
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"gsm8k_local: missing {missing}")
        return datasets.load_dataset("json", data_files=files)
    try:
        return datasets.load_dataset("openai/gsm8k", "main")
    except Exception as err:  # noqa: BLE001 - re-raised with the offline alternative named
        raise RuntimeError(
            f"gsm8k_local: hub unreachable ({err}); pass --metadata "
            '\'{"data_dir": "<dir with train.jsonl and test.jsonl>"}\' or set GSM8K_DATA_DIR'
        ) from err
