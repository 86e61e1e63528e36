"""Correctness of the fused AlphaAdam step on a real device (the GPU half of tests/test_fused.py).

Steps ``fused="triton"`` (and ``fused="compile"``) against the reference single-tensor path
on identical parameters and gradients, for every preset and the masked presets with
``one_pass=True`` (6 steps: its first one-pass step is step 3), fp32/bf16/fp16 parameters
and shapes from 0-d to GPT-2's embedding (several Triton chunks per tensor), and compares
parameters and the whole optimizer state after every step. Prints one line per case and
writes a JSON summary; exits non-zero on any mismatch.

    python benchmarks/fused_cuda_check.py                      # CUDA
    TRITON_INTERPRET=1 python benchmarks/fused_cuda_check.py --device cpu --small   # dry run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from alphaadam import PRESETS, AlphaAdam

REPO = Path(__file__).resolve().parents[1]
FULL_SHAPES = [(), (0,), (7,), (7, 5), (768,), (768, 2304), (50257, 768)]
SMALL_SHAPES = [(), (0,), (7,), (7, 5), (33, 17)]
# (preset, extra options): every preset, and the masked ones one-pass.
CASES = [(preset, {}) for preset in PRESETS] + [
    (preset, {"one_pass": True}) for preset in PRESETS if PRESETS[preset]["mask"] != "none"
]
ONE_PASS_MIN_STEPS = 6


def run_case(fused, preset, dtype, shapes, device, steps, options=None) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    ref = [p.clone().to(device).requires_grad_() for p in base]
    fus = [p.clone().to(device).requires_grad_() for p in base]
    kwargs = dict(lr=1e-2, weight_decay=0.1, **PRESETS[preset], **(options or {}))
    opt_ref = AlphaAdam(ref, foreach=False, **kwargs)
    opt_fus = AlphaAdam(fus, fused=fused, **kwargs)
    drift = [torch.randn(s, generator=gen) for s in shapes]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
    worst = 0.0
    for _ in range(steps):
        for r, f, d in zip(ref, fus, drift):
            g = (0.5 * d + torch.randn(d.shape, generator=gen)).to(dtype).to(device)
            r.grad, f.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_fus.step()
        for r, f in zip(ref, fus):
            torch.testing.assert_close(f.detach(), r.detach(), **tol)
            for key, value in opt_ref.state[r].items():
                torch.testing.assert_close(opt_fus.state[f][key], value, rtol=1e-5, atol=1e-6)
            if r.numel():
                worst = max(worst, (f.detach().float() - r.detach().float()).abs().max().item())
    return {"max_abs_param_diff": worst}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="small shapes (interpreter runs)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--paths", nargs="*", default=["triton", "compile"])
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = SMALL_SHAPES if args.small else FULL_SHAPES
    results, failures = [], 0
    for fused in args.paths:
        for preset, options in CASES:
            steps = max(args.steps, ONE_PASS_MIN_STEPS) if options else args.steps
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                case = {"fused": fused, "preset": preset, **options, "dtype": str(dtype)}
                try:
                    case.update(run_case(fused, preset, dtype, shapes, device, steps, options))
                    case["ok"] = True
                except Exception as exc:  # report every case, then fail
                    case.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
                    failures += 1
                results.append(case)
                print(json.dumps(case), flush=True)
    report = {
        "check": "fused_cuda_check",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": getattr(sys.modules.get("triton"), "__version__", None),
        "shapes": [list(s) for s in shapes],
        "steps": args.steps,
        "failures": failures,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fused_check_{device.type}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(results) - failures}/{len(results)} cases passed; wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
