"""Step time and memory of every AlphaAdam preset against torch.optim.AdamW.

The parameter set has GPT-2 small's 148 tensors and shapes (124.4M fp32 parameters), built
as raw tensors; ``--scale`` multiplies each tensor's first dimension (so the tensor count,
which drives the per-tensor overheads of a foreach optimizer, stays the same).

Every variant steps the same parameters and gradients. Variants are measured side by side:
each repeat builds every variant's optimizer afresh (in a rotated order, so slow drifts of a
shared machine spread over all variants), runs ``--warmup`` untimed steps (the first one
allocates the state) and then ``--steps`` timed steps.

Paired steps (``--pair-with``, torch's fused AdamW by default): alongside each variant a
fresh baseline optimizer steps the same parameters, alternating with it step by step (who
goes first alternates too), so each of the variant's timed steps has a baseline step timed
next to it, under the same machine load. A shared machine's load comes in phases that
move both steps of a pair together; the per-pair ratios cancel them. Reported per variant:
the median, 90th percentile, min and max step time over all timed steps of all repeats,
and the median, 90th percentile, min and max of its per-pair ratios to the baseline. The
older ``x_torch_*`` columns are ratios of medians (unpaired).

Memory, measured once per variant on a steady-state (not the first) step:

* ``state_mib``: the optimizer's persistent state (sum of its state tensors' bytes).
* ``workspace_mib``: scratch buffers the optimizer keeps between steps outside its state
  (AlphaAdam's ``_step_workspace``: the C++ step's phi*u and mask of the largest tensor).
* ``step_peak_mib``: the peak of extra bytes live during one step, above the level at its
  start (temporaries: masks, denominators, updates). On CUDA this is
  ``torch.cuda.max_memory_allocated`` minus the bytes allocated before the step. On CPU it
  comes from ``torch.profiler`` with ``profile_memory=True``: its raw record of every
  allocation and free made through torch's CPU allocator during the step, in time order;
  the peak of their running sum. Memory outside torch's allocator (Python objects, the
  OS's view, i.e. RSS) is not counted; RSS would hide reuse of freed heap memory.

Variants are a table of name -> factory (:data:`VARIANTS`); a new path (e.g. a fused kernel)
is one more :func:`variant` registration.

    python benchmarks/optimizer_step.py                       # full size, CPU
    python benchmarks/optimizer_step.py --scale 0.05 --steps 5 --repeats 5
    python benchmarks/optimizer_step.py --device cuda --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.optim import Optimizer

from alphaadam import PRESETS, alphaadam_preset
from alphaadam.cpu_memory import keep_freed_blocks_on_heap

REPO = Path(__file__).resolve().parents[1]
LR, WEIGHT_DECAY, BETAS = 6e-4, 0.1, (0.9, 0.95)  # the paper's GPT-2 settings


@dataclass(frozen=True)
class Variant:
    name: str
    factory: Callable[[list[Tensor]], Optimizer]
    description: str


VARIANTS: dict[str, Variant] = {}


def variant(name: str, description: str):
    """Register ``factory(params) -> optimizer`` under ``name``."""

    def register(factory: Callable[[list[Tensor]], Optimizer]):
        if name in VARIANTS:
            raise ValueError(f"benchmark variant {name!r} registered twice")
        VARIANTS[name] = Variant(name, factory, description)
        return factory

    return register


BASELINE_FOREACH = "torch_adamw_foreach"
BASELINE_FUSED = "torch_adamw_fused"

variant(BASELINE_FOREACH, "torch.optim.AdamW(foreach=True)")(
    lambda ps: torch.optim.AdamW(ps, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, foreach=True)
)
variant(BASELINE_FUSED, "torch.optim.AdamW(fused=True)")(
    lambda ps: torch.optim.AdamW(ps, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=True)
)


def _preset_factory(preset: str, foreach: bool):
    def factory(ps):
        return alphaadam_preset(
            preset, ps, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, foreach=foreach
        )

    return factory


for _preset in PRESETS:
    for _foreach, _path in ((True, "foreach"), (False, "single")):
        variant(f"{_preset}_{_path}", f"alphaadam_preset({_preset!r}, foreach={_foreach})")(
            _preset_factory(_preset, _foreach)
        )


def _fused_factory(preset: str, fused: str):
    def factory(ps):
        return alphaadam_preset(
            preset, ps, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, fused=fused
        )

    return factory


# Fused two-pass step (docs/fused.md): the C++ step for CPU, torch.compile, Triton for CUDA.
for _preset in PRESETS:
    for _fused in ("cpu", "compile", "triton"):
        variant(f"{_preset}_{_fused}", f"alphaadam_preset({_preset!r}, fused={_fused!r})")(
            _fused_factory(_preset, _fused)
        )


def _one_pass_factory(path: dict):
    def factory(ps):
        return alphaadam_preset(
            "alphaadam", ps, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, one_pass=True, **path
        )

    return factory


# One-pass AlphaAdam (one_pass=True, an extension; docs/optimizer.md). Its first two steps
# are exact (the start rule): time it with --warmup 2 or more.
for _path, _kwargs in (
    ("cpu", dict(fused="cpu")),
    ("compile", dict(fused="compile")),
    ("triton", dict(fused="triton")),
    ("foreach", dict(foreach=True)),
    ("single", dict(foreach=False)),
):
    variant(
        f"alphaadam_onepass_{_path}", f"alphaadam_preset('alphaadam', one_pass=True, {_kwargs})"
    )(_one_pass_factory(_kwargs))


def gpt2_small_shapes(scale: float = 1.0) -> dict[str, tuple[int, ...]]:
    """GPT-2 small's parameter shapes (HF naming, Conv1D weights are in x out)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d)}
    for i in range(layers):
        h = f"h.{i}."
        shapes.update(
            {
                h + "ln_1.weight": (d,),
                h + "ln_1.bias": (d,),
                h + "attn.c_attn.weight": (d, 3 * d),
                h + "attn.c_attn.bias": (3 * d,),
                h + "attn.c_proj.weight": (d, d),
                h + "attn.c_proj.bias": (d,),
                h + "ln_2.weight": (d,),
                h + "ln_2.bias": (d,),
                h + "mlp.c_fc.weight": (d, 4 * d),
                h + "mlp.c_fc.bias": (4 * d,),
                h + "mlp.c_proj.weight": (4 * d, d),
                h + "mlp.c_proj.bias": (d,),
            }
        )
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    if scale != 1.0:
        shapes = {n: (max(1, round(s[0] * scale)), *s[1:]) for n, s in shapes.items()}
    return shapes


def make_parameters(shapes, device, dtype=torch.float32) -> list[Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    params = []
    for shape in shapes.values():
        p = torch.randn(shape, generator=gen, device=device).mul_(0.02).to(dtype)
        p.requires_grad_()
        # Fixed gradients: every path's work is dense, so its cost does not depend on values.
        p.grad = torch.randn(shape, generator=gen, device=device).mul_(1e-3).to(dtype)
        params.append(p)
    return params


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_bytes(opt: Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, Tensor)
    )


def workspace_bytes(opt: Optimizer) -> int:
    workspace = opt.__dict__.get("_step_workspace", {})
    return sum(v.numel() * v.element_size() for v in workspace.values())


def step_peak_bytes(opt: Optimizer, device: torch.device) -> int:
    """Peak extra bytes live during one ``opt.step()`` (see the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        opt.step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    # The raw allocator records (one per allocation or free, with its time): the summarised
    # FunctionEvents fold frees into whichever op encloses them and lose their timing.
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between order statistics (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """Median, 90th percentile, min and max of ``values``, each times ``scale``."""
    return {
        "median": scale * statistics.median(values),
        "p90": scale * percentile(values, 90),
        "min": scale * min(values),
        "max": scale * max(values),
    }


def timed_step(opt: Optimizer, device: torch.device) -> float:
    start = time.perf_counter()
    opt.step()
    synchronize(device)
    return time.perf_counter() - start


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cpu":
        # As train.py does on CPU: freed step temporaries are reused, not page-faulted in.
        keep_freed_blocks_on_heap()
    if args.threads:
        torch.set_num_threads(args.threads)
    # By default each fused back end runs only where it is meant to: Triton on CUDA (on CPU
    # tensors it would run its test-only interpreter), the C++ step on CPU.
    names = args.variants or [
        n
        for n in VARIANTS
        if not (n.endswith("_triton") and device.type != "cuda")
        and not (n.endswith("_cpu") and device.type != "cpu")
    ]
    unknown = [n for n in names + [args.pair_with] if n and n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; valid choices are {', '.join(VARIANTS)}")
    shapes = gpt2_small_shapes(args.scale)
    params = make_parameters(shapes, device, getattr(torch, args.dtype))
    n_params = sum(p.numel() for p in params)
    print(
        f"{len(params)} tensors, {n_params / 1e6:.1f}M parameters on {device}, "
        f"{torch.get_num_threads()} threads; {len(names)} variants x {args.repeats} repeats",
        flush=True,
    )

    times: dict[str, list[float]] = {n: [] for n in names}
    pair_ratios: dict[str, list[float]] = {n: [] for n in names}
    memory: dict[str, dict[str, float]] = {}
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            opt = VARIANTS[name].factory(params)
            base = None
            if args.pair_with and name != args.pair_with:
                base = VARIANTS[args.pair_with].factory(params)
            for _ in range(args.warmup):
                opt.step()
                if base is not None:
                    base.step()
            synchronize(device)
            for s in range(args.steps):
                if base is None:
                    times[name].append(timed_step(opt, device))
                    continue
                if s % 2 == 0:
                    t, t_base = timed_step(opt, device), timed_step(base, device)
                else:
                    t_base, t = timed_step(base, device), timed_step(opt, device)
                times[name].append(t)
                pair_ratios[name].append(t / t_base)
            del base
            if name not in memory:
                memory[name] = {
                    "state_mib": state_bytes(opt) / 2**20,
                    "workspace_mib": workspace_bytes(opt) / 2**20,
                    "step_peak_mib": step_peak_bytes(opt, device) / 2**20,
                }
            print(
                f"  repeat {r + 1}/{args.repeats} {name:24s} "
                f"{1e3 * statistics.median(times[name][-args.steps :]):9.1f} ms/step",
                flush=True,
            )
            del opt
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    medians = {n: statistics.median(t) for n, t in times.items()}
    rows = []
    for name in names:
        ms = spread(times[name], 1e3)
        ratios = spread(pair_ratios[name]) if pair_ratios[name] else None
        if name == args.pair_with:
            ratios = spread([1.0])
        row = {
            "variant": name,
            "description": VARIANTS[name].description,
            **{f"{k}_ms": v for k, v in ms.items()},
            "n_timed_steps": len(times[name]),
            "paired_with": args.pair_with,
            **{f"x_paired_{k}": (ratios or {}).get(k) for k in ("median", "p90", "min", "max")},
            **memory[name],
        }
        for key, base in (("x_torch_foreach", BASELINE_FOREACH), ("x_torch_fused", BASELINE_FUSED)):
            row[key] = medians[name] / medians[base] if base in medians else None
        rows.append(row)
    return {
        "benchmark": "optimizer_step",
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": describe_device(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "n_tensors": len(params),
        "n_params": n_params,
        "scale": args.scale,
        "param_dtype": args.dtype,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "pair_with": args.pair_with,
        "hyperparameters": {"lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY},
        "results": rows,
    }


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown(report: dict) -> str:
    pair = report.get("pair_with")
    lines = [
        f"# Optimizer step: {report['n_params'] / 1e6:.1f}M parameters in {report['n_tensors']} "
        f"tensors (GPT-2 small shapes, scale {report['scale']:g}, "
        f"{report.get('param_dtype', 'float32')} params)",
        "",
        f"{report['device']}, torch {report['torch']}, triton {report.get('triton')}, "
        f"{report['torch_threads']} threads of "
        f"{report['cpu_count']} CPUs, {report['date']}; "
        f"{report['repeats']} x {report['steps']} timed steps per variant after "
        f"{report['warmup']} warm-up" + (f", each paired with a step of {pair}." if pair else "."),
        f"Load average at the end: {report['load_average_at_end']}.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| variant | median ms/step | p90 ms | min–max ms "
        + (f"| × {pair}, paired: median | p90 | min–max " if pair else "")
        + "| × torch foreach (medians) | state MiB | workspace MiB | step peak MiB |",
        "|---|---:|---:|---:|" + ("---:|---:|---:|" if pair else "") + "---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        paired = ""
        if pair:
            paired = (
                f"| {_ratio(r['x_paired_median'])} | {_ratio(r['x_paired_p90'])} "
                f"| {_ratio(r['x_paired_min'])}–{_ratio(r['x_paired_max'])} "
            )
        lines.append(
            f"| {r['variant']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} "
            f"| {r['min_ms']:.1f}–{r['max_ms']:.1f} {paired}| {_ratio(r['x_torch_foreach'])} "
            f"| {r['state_mib']:.1f} | {r.get('workspace_mib', 0.0):.1f} "
            f"| {r['step_peak_mib']:.1f} |"
        )
    lines += [
        "",
        "Paired: each timed step of a variant has a step of the baseline timed next to it "
        "(alternating which goes first); the ratio columns summarise those per-pair ratios. "
        "state MiB: the optimizer's persistent state. workspace MiB: buffers it keeps between "
        "steps outside its state. step peak MiB: extra bytes live during "
        "one steady-state step (CUDA: max_memory_allocated; CPU: torch.profiler allocation "
        "events, see benchmarks/optimizer_step.py).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="first-dimension scale")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per repeat (>= 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--variants", nargs="*", help=f"subset of: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--pair-with", default=BASELINE_FUSED, type=lambda v: None if v == "none" else v,
        help="baseline variant timed step by step next to every variant ('none': unpaired)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
        help="parameter and gradient dtype (AlphaAdam keeps fp32 state for half precision)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    parser.add_argument(
        "--name", help="suffix of the output files (e.g. 2threads), so runs that differ in "
        "threads or variants each keep their own file under --out",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.repeats < 1 or args.scale <= 0:
        parser.error("--warmup, --steps and --repeats must be >= 1 and --scale > 0")

    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"optimizer_step_{torch.device(args.device).type}_scale{args.scale:g}"
    if args.dtype != "float32":
        stem += f"_{args.dtype}"
    if args.name:
        stem += f"_{args.name}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
