"""Bytes of optimizer state per parameter, measured, for every optimizer config.

Each config in ``configs/optimizer/`` is built through the registry on the project's GPT at
GPT-2 small's shapes (124M parameters, tied embeddings), takes one optimizer step on a tiny
batch, and the bytes of every tensor reachable from ``optimizer.state`` are summed (shared
storages counted once; objects inside the state, e.g. GaLore's projector, are walked too).
``bytes/param`` divides by the number of trainable parameters. Optimizers that cannot run here
(CUDA-only, or a package that is not installed) are listed with the reason.

    python benchmarks/optimizer_memory.py                   # GPT-2 small shapes
    python benchmarks/optimizer_memory.py --n-layer 2       # faster, same matrix shapes

Writes ``results/benchmarks/optimizer_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import OmegaConf

from alphaadam.models.gpt import GPT, GPTConfig
from alphaadam.optim.registry import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "optimizer"
OUT_DIR = ROOT / "results" / "benchmarks"

# registry name -> (distribution providing the implementation, devices it runs on)
SOURCES = {
    "adamw": ("torch", "CPU, CUDA"),
    "adamw_sm": ("alphaadam", "CPU, CUDA"),
    "adamw_am": ("alphaadam", "CPU, CUDA"),
    "alphaadam": ("alphaadam", "CPU, CUDA"),
    "alphaadam_custom": ("alphaadam", "CPU, CUDA"),
    "cadamw": ("alphaadam", "CPU, CUDA"),
    "adam_mini": ("adam-mini", "CPU, CUDA"),
    "galore": ("galore-torch", "CPU, CUDA"),
    "adam8bit": ("bitsandbytes", "CPU, CUDA"),
    "microadam": ("ista-daslab-optimizers", "CUDA only"),
    "ldadam": ("LDAdam", "CPU, CUDA"),
    "lion": ("alphaadam", "CPU, CUDA"),
    "alphalion": ("alphaadam", "CPU, CUDA"),
    "sgd": ("torch", "CPU, CUDA"),
    "alphasgd": ("alphaadam", "CPU, CUDA"),
}
HYPER_KEYS = ("lr", "betas", "momentum", "eps", "weight_decay")


def state_bytes(state) -> int:
    seen: set[int] = set()
    total = 0

    def walk(obj) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            key = obj.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += obj.untyped_storage().nbytes()
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            walk(vars(obj))

    walk(state)
    return total


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def measure(config: str, n_layer: int, seq: int) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{config}.yaml"), resolve=True)
    name = cfg.pop("name")
    dist, devices = SOURCES.get(name, ("?", "?"))
    row = {
        "config": config,
        "name": name,
        "source": f"{dist} {version_of(dist)}",
        "devices": devices,
        "defaults": {k: cfg[k] for k in HYPER_KEYS if k in cfg},
        "options": {k: v for k, v in cfg.items() if k not in HYPER_KEYS},
    }
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(block_size=1024, vocab_size=50304, n_layer=n_layer, n_head=12, n_embd=768)
    )
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        opt = build_optimizer(name, model, **cfg)
    except ImportError:
        row.update(params=n_params, state_bytes=None, bytes_per_param=None,
                   note=f"not run: {dist} not installed")  # fmt: skip
        return row
    except RuntimeError as err:
        if "CUDA" not in str(err):
            raise
        row.update(params=n_params, state_bytes=None, bytes_per_param=None,
                   note="not run: needs a CUDA GPU")  # fmt: skip
        return row
    idx = torch.randint(0, 50304, (1, seq))
    _, loss = model(idx, idx)
    loss.backward()
    t0 = time.perf_counter()
    opt.step()
    row["step_s"] = round(time.perf_counter() - t0, 3)
    nbytes = state_bytes(opt.state)
    row.update(params=n_params, state_bytes=nbytes, bytes_per_param=round(nbytes / n_params, 3))
    del opt, model, loss
    gc.collect()
    return row


def to_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Optimizer state after one step, GPT at GPT-2 small shapes ({meta['n_layer']} layers, "
        f"{rows[0]['params'] / 1e6:.1f}M trainable fp32 parameters), CPU.",
        f"Command: `{meta['command']}` ({meta['date']}, torch {meta['torch']}).",
        "",
        "| config | registry name | source | devices | state MiB | bytes/param | defaults | options |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mib = "n/a" if r["state_bytes"] is None else f"{r['state_bytes'] / 2**20:.1f}"
        bpp = (
            f"n/a ({r['note']})" if r["bytes_per_param"] is None else f"{r['bytes_per_param']:.3f}"
        )
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        defs = ", ".join(f"{k}={v}" for k, v in r["defaults"].items())
        lines.append(
            f"| {r['config']} | `{r['name']}` | {r['source']} | {r['devices']} | {mib} | {bpp} "
            f"| {defs} | {opts} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--configs", nargs="*", default=None, help="config names (default: all)")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    configs = args.configs or sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    rows = []
    for c in configs:
        rows.append(measure(c, args.n_layer, args.seq))
        r = rows[-1]
        print(f"{c:14s} {r['bytes_per_param']!s:>8} bytes/param  {r.get('note', '')}", flush=True)
    meta = {
        "command": "python "
        + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "n_layer": args.n_layer,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "optimizer_memory.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    (args.out / "optimizer_memory.md").write_text(to_markdown(rows, meta))
    print(f"wrote {args.out / 'optimizer_memory.md'}")


if __name__ == "__main__":
    main()
