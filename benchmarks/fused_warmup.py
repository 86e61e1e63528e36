"""One-time costs of the fused CPU steps: building the C++ kernel and compiling the step.

Each measurement runs in a fresh process with its own empty cache directory, so nothing
built before is reused:

* ``cpp_build_s``: ``AlphaAdam(fused="cpu")`` construction on a tiny model with an empty
  ``TORCH_EXTENSIONS_DIR`` (the kernel is built when the optimizer is built);
* ``cpp_load_s``: the same in a second process with that directory filled (the cached build
  is loaded);
* ``compile_first_step_s`` and ``compile_second_step_s``: the first and second
  ``step()`` of ``fused="compile"`` at GPT-2 small shapes (``--scale``) with an empty
  Inductor cache (``TORCHINDUCTOR_CACHE_DIR``).

    python benchmarks/fused_warmup.py

Results go to ``results/benchmarks/fused_warmup.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CPP = """
import time, torch
from alphaadam import AlphaAdam
p = torch.zeros(3, requires_grad=True)
start = time.perf_counter()
AlphaAdam([p], fused="cpu")
print(time.perf_counter() - start)
"""

COMPILE = """
import sys, time, torch
sys.path.insert(0, {bench!r})
from optimizer_step import gpt2_small_shapes, make_parameters
from alphaadam import AlphaAdam
params = make_parameters(gpt2_small_shapes({scale}), torch.device("cpu"))
opt = AlphaAdam(params, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused="compile")
for _ in range(2):
    start = time.perf_counter()
    opt.step()
    print(time.perf_counter() - start)
"""


def seconds(code: str, env: dict[str, str]) -> list[float]:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"measurement failed:\n{proc.stderr[-3000:]}")
    return [float(line) for line in proc.stdout.split()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="GPT-2 small shape scale")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args(argv)
    base_env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": str(args.threads),
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = {**base_env, "TORCH_EXTENSIONS_DIR": str(Path(tmp) / "extensions")}
        (build,) = seconds(CPP, env)
        (load,) = seconds(CPP, env)
        env = {**base_env, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        first, second = seconds(
            COMPILE.format(bench=str(REPO / "benchmarks"), scale=args.scale), env
        )
    report = {
        "benchmark": "fused_warmup",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable.split("/")[-1], *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "scale": args.scale,
        "cpp_build_s": build,
        "cpp_load_s": load,
        "compile_first_step_s": first,
        "compile_second_step_s": second,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fused_warmup.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| one-time cost of a fused CPU step | seconds |",
        "|---|---:|",
        f"| C++ step: build (empty extensions cache), in the optimizer's constructor | {build:.1f} |",
        f"| C++ step: load of the cached build, in a new process | {load:.2f} |",
        f'| compiled step (`fused="compile"`), first step, empty Inductor cache, GPT-2 small '
        f"shapes x{args.scale:g} | {first:.1f} |",
        f"| compiled step, second step | {second:.2f} |",
        "",
        f"Measured by `{report['command']}` on {report['date']}, {report['machine']}, "
        f"{args.threads} thread(s), load average at the end "
        f"{report['load_average_at_end'][0]:.2f}. Generated; do not edit.",
    ]
    (args.out / "fused_warmup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
