"""GPT-2 small training throughput (tokens/s) with torch AdamW vs AlphaAdam paths.

A randomly initialised ``transformers`` GPT-2 small (124M) trained on random tokens, bf16
autocast on CUDA, one optimizer step per micro-batch. Every optimizer trains the same model
copy from the same initial weights for ``--warmup`` untimed and ``--steps`` timed steps;
optimizers are interleaved over ``--repeats`` rounds. Reports tokens/s per optimizer and its
ratio to torch's fused AdamW (the issue's target: AlphaAdam within 3%).

    python benchmarks/gpt2_throughput.py                          # CUDA
    python benchmarks/gpt2_throughput.py --device cpu --tiny --steps 2 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from alphaadam import alphaadam_preset
from alphaadam.cpu_memory import keep_freed_blocks_on_heap

REPO = Path(__file__).resolve().parents[1]
LR, BETAS, WD = 6e-4, (0.9, 0.95), 0.1


def optimizers(device: torch.device) -> dict:
    fused_path = "triton" if device.type == "cuda" else "compile"
    return {
        "torch_adamw_fused": lambda ps: torch.optim.AdamW(
            ps, lr=LR, betas=BETAS, weight_decay=WD, fused=True
        ),
        f"alphaadam_{fused_path}": lambda ps: alphaadam_preset(
            "alphaadam", ps, lr=LR, betas=BETAS, weight_decay=WD, fused=fused_path
        ),
        # one_pass=True (an extension): its first one-pass step is step 3 (--warmup >= 2).
        f"alphaadam_onepass_{fused_path}": lambda ps: alphaadam_preset(
            "alphaadam", ps, lr=LR, betas=BETAS, weight_decay=WD, fused=fused_path, one_pass=True
        ),
        "alphaadam_foreach": lambda ps: alphaadam_preset(
            "alphaadam", ps, lr=LR, betas=BETAS, weight_decay=WD, foreach=True
        ),
    }


def build_model(tiny: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    if tiny:
        config = GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=128)
    else:
        config = GPT2Config()  # GPT-2 small: 12 layers, 768 wide, 50257 vocab, 1024 context
    torch.manual_seed(0)
    return GPT2LMHeadModel(config), config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="toy model (smoke test)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        # As train.py does on CPU: freed step temporaries are reused, not page-faulted in.
        keep_freed_blocks_on_heap()
    base, config = build_model(args.tiny)
    seq = min(args.seq, config.n_positions)
    gen = torch.Generator().manual_seed(1)
    batch = torch.randint(0, config.vocab_size, (args.batch, seq), generator=gen).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    opts = optimizers(device)
    tokens_per_s: dict[str, list[float]] = {n: [] for n in opts}
    for r in range(args.repeats):
        names = list(opts)[r % len(opts) :] + list(opts)[: r % len(opts)]
        for name in names:
            model = copy.deepcopy(base).to(device).train()
            opt = opts[name](list(model.parameters()))
            for i in range(args.warmup + args.steps):
                if i == args.warmup:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                with autocast:
                    loss = model(batch, labels=batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            tokens_per_s[name].append(args.steps * batch.numel() / elapsed)
            print(f"repeat {r + 1} {name:22s} {tokens_per_s[name][-1]:12,.0f} tokens/s", flush=True)
            del model, opt
            if device.type == "cuda":
                torch.cuda.empty_cache()
    medians = {n: statistics.median(v) for n, v in tokens_per_s.items()}
    base_name = "torch_adamw_fused"
    rows = [
        {"optimizer": n, "tokens_per_s": v, "x_torch_adamw_fused": v / medians[base_name]}
        for n, v in medians.items()
    ]
    report = {
        "benchmark": "gpt2_throughput",
        "command": " ".join(["python", *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": getattr(sys.modules.get("triton"), "__version__", None),
        "model": "tiny" if args.tiny else "gpt2-small",
        "batch": args.batch,
        "seq": seq,
        "steps": args.steps,
        "repeats": args.repeats,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpt2_throughput_{device.type}{'_tiny' if args.tiny else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['optimizer']:22s} {row['tokens_per_s']:12,.0f} tokens/s  "
              f"x{row['x_torch_adamw_fused']:.3f} vs torch fused AdamW")  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
