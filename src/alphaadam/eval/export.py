"""Turn a run's final checkpoint into a Hugging Face model directory (for lm-eval, the
GSM8K scorer, or sharing): ``python -m alphaadam.eval.export RUN_DIR [--out DIR]``.

The task in the run's ``config.yaml`` rebuilds the model (same architecture and head), the
checkpoint's weights are loaded strictly, and model + tokenizer are saved with
``save_pretrained``. Only tasks whose model is a transformers model can be exported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from alphaadam import run_dir as rd
from alphaadam.checkpoint import latest_checkpoint

HF_MODEL_DIR = "hf_model"


def export_hf_model(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    from transformers import AutoTokenizer

    from alphaadam.trainer import build_task

    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir / rd.CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoints/latest (was it run with trainer.save_final=false?)"
        )
    cfg = OmegaConf.load(run_dir / rd.CONFIG)
    task = build_task(cfg)
    model = task.build_model()
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} is not a transformers model; cannot export")
    model.load_state_dict(torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True))
    out = Path(out_dir) if out_dir is not None else run_dir / HF_MODEL_DIR
    model.save_pretrained(out)
    tokenizer_path = getattr(task, "tokenizer_path", None) or cfg.model.name_or_path
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help=f"default: RUN_DIR/{HF_MODEL_DIR}")
    args = parser.parse_args(argv)
    out = export_hf_model(args.run_dir, args.out)
    print(out)
    return out


if __name__ == "__main__":
    main()
