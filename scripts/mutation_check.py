#!/usr/bin/env python
"""Mutation check: does the test suite catch a wrong update on every step path?

Each mutant is one small edit of the optimizer's source that a real bug could make: lr x1.05,
weight decay dropped, the rescale dropped, alpha's clip changed, the asynchronous mask taken
from the updated momentum (async -> sync), beta2 swapped for beta1 in one kernel. Most are
made on one step path only (single-tensor, foreach, C++, torch.compile, Triton through its
interpreter); two are made in the shared Python formulas (``masking.compensation`` and
``masking.alpha_from_sums``), which the single-tensor, foreach, compiled and Triton paths
all call.

For every mutant the script copies the working tree (git's tracked and unignored files,
without ``results/``) into a temporary directory, applies the edit there (the checkout is
never modified), runs the tests that exercise that path with ``pytest -x`` and records the
first test that fails. A catch counts only if that test passes on the unmutated copy
(re-run at the end) and failed as a test, not as a collection error or a C++ build error.
The exit status is 0 when every mutant was caught.

    python scripts/mutation_check.py                   # every mutant; writes results/mutation_check.md
    python scripts/mutation_check.py --paths single foreach shared --no-write   # the quick subset

The quick subset runs in ``tests/test_mutation_check.py`` (slow-marked). The whole check takes
about half an hour on 2 CPU cores (each C++ mutant rebuilds the kernel; each compiled-path
mutant recompiles).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIM = "src/alphaadam/optim"
# A mutant's edit inside an argument list: the path passes a wrong MaskConfig to the formula.
REPLACE = '__import__("dataclasses").replace'

# The tests that exercise each path, in the order pytest runs them (``-x``: the first
# failure ends the run). The reference tests compare with the float64 transcription of
# Algorithm 1; the fused paths are also compared, step by step, with the single-tensor path.
SELECTIONS: dict[str, list[str]] = {
    "single": ["tests/test_alphaadam_reference.py", "-k", "not foreach and not fused_cpu"],
    "foreach": ["tests/test_alphaadam_reference.py", "-k", "foreach"],
    "cpu": ["tests/test_alphaadam_reference.py", "tests/test_fused_cpu.py", "-k",
            "fused_cpu or test_fused_cpu"],
    "compile": ["tests/test_fused.py", "-k", "compile"],
    "triton": ["tests/triton_interpreter_cases.py"],
    "shared": ["tests/test_alphaadam_reference.py", "-k", "not fused_cpu"],
}  # fmt: skip
PATH_NAMES = {
    "single": "single-tensor",
    "foreach": "foreach",
    "cpu": "C++ (fused='cpu')",
    "compile": "torch.compile",
    "triton": "Triton (interpreter)",
    "shared": "shared Python formula",
}


@dataclass(frozen=True)
class Mutant:
    kind: str  # lr | weight_decay | rescale | alpha_clip | mask_sync | beta2
    path: str  # a key of SELECTIONS
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str


KINDS = {
    "lr": "lr x1.05",
    "weight_decay": "weight decay dropped",
    "rescale": "rescale d/(nnz+1) dropped",
    "alpha_clip": "alpha clipped at alpha_max + 0.5",
    "mask_sync": "async mask from the updated momentum",
    "beta2": "beta1 in place of beta2 (second moment)",
    "active_all": "rescale='active' counts all elements",
}

REF = f"{OPTIM}/reference_paths.py"
CPP = f"{OPTIM}/csrc/alphaadam_cpu.cpp"
COMPILE = f"{OPTIM}/fused_compile.py"
TRITON = f"{OPTIM}/fused_triton.py"
MASKING = f"{OPTIM}/masking.py"

MUTANTS = [
    # ---------------------------------------------------------------- single-tensor path
    Mutant("lr", "single", REF, "theta.sub_(u.mul_(lr))", "theta.sub_(u.mul_(lr * 1.05))"),
    Mutant("weight_decay", "single", REF,
           "theta.mul_(1 - lr * hp.weight_decay)", "theta.mul_(1.0)"),
    Mutant("rescale", "single", REF,
           "u, phi, cfg, g, numel=numel,",
           f"u, phi, {REPLACE}(cfg, rescale=False), g, numel=numel,"),
    Mutant("alpha_clip", "single", REF,
           "u, phi, cfg, g, numel=numel,",
           f"u, phi, {REPLACE}(cfg, alpha_max=cfg.alpha_max + 0.5), g, numel=numel,"),
    Mutant("active_all", "single", REF,  # the count the single-tensor path hands over
           "u, phi, cfg, g, numel=numel,", "u, phi, cfg, torch.ones_like(g), numel=numel,"),
    Mutant("mask_sync", "single", REF,
           'if cfg.mask == "sync":\n            phi = agreement_mask(g, exp_avg)',
           'if cfg.mask in ("sync", "async"):\n            phi = agreement_mask(g, exp_avg)'),
    Mutant("beta2", "single", REF,
           "exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)",
           "exp_avg_sq.mul_(beta1).addcmul_(g, g, value=1 - beta1)"),
    # ---------------------------------------------------------------------- foreach path
    Mutant("lr", "foreach", REF,
           "list((bias_ratio * lr).unbind(0))", "list((bias_ratio * lr * 1.05).unbind(0))"),
    Mutant("weight_decay", "foreach", REF,
           "decay = 1 - lr * hp.weight_decay", "decay = 1.0"),
    Mutant("rescale", "foreach", REF,
           "masks,\n            cfg,\n",
           f"masks,\n            {REPLACE}(cfg, rescale=False),\n"),
    Mutant("alpha_clip", "foreach", REF,
           "masks,\n            cfg,\n",
           f"masks,\n            {REPLACE}(cfg, alpha_max=cfg.alpha_max + 0.5),\n"),
    Mutant("mask_sync", "foreach", REF,
           'if cfg.mask == "sync":\n            masks = foreach_agreement_masks(g_grads, g_m)',
           'if cfg.mask in ("sync", "async"):\n'
           "            masks = foreach_agreement_masks(g_grads, g_m)"),
    Mutant("beta2", "foreach", REF,
           "torch._foreach_mul_(g_v, beta2)\n        torch._foreach_addcmul_(g_v, g_grads, "
           "g_grads, 1 - beta2)",
           "torch._foreach_mul_(g_v, beta1)\n        torch._foreach_addcmul_(g_v, g_grads, "
           "g_grads, 1 - beta1)"),
    Mutant("active_all", "foreach", REF,
           "masks,\n            cfg,\n            g_grads,",
           "masks,\n            cfg,\n            [torch.ones_like(g) for g in g_grads],"),
    # ------------------------------------------------------------------- C++ (fused_cpu)
    Mutant("lr", "cpu", CPP,
           "h.lr * scale * alpha, alpha, density,", "h.lr * 1.05 * scale * alpha, alpha, density,"),
    Mutant("weight_decay", "cpu", CPP,
           "{ return 1.0 - h.lr * h.weight_decay; }", "{ return 1.0; }"),
    Mutant("rescale", "cpu", CPP,
           "if (h.rescale == kRescaleAll) scale = numel / (nnz + 1.0);",
           "if (h.rescale == kRescaleAll) scale = 1.0;"),
    Mutant("active_all", "cpu", CPP,
           "sub_active += static_cast<S>(g != S(0));", "sub_active += S(1);"),
    Mutant("alpha_clip", "cpu", CPP,
           "alpha = std::min(alpha, h.alpha_max);", "alpha = std::min(alpha, h.alpha_max + 0.5);"),
    Mutant("mask_sync", "cpu", CPP,
           "(kMask == kMaskAsync ? g * m_old : g * m_new)", "(g * m_new)"),
    Mutant("beta2", "cpu", CPP,  # pass 1 of the masked step only (6-space indent)
           "\n      const S v_new = v[i] * c.b2 + c.one_minus_b2 * (g * g);",
           "\n      const S v_new = v[i] * c.one_minus_w1 + c.w1 * (g * g);"),
    # -------------------------------------------------------------------- torch.compile
    Mutant("lr", "compile", COMPILE,
           "lr * coef, alpha, density, grad_density]", "lr * 1.05 * coef, alpha, density, grad_density]"),
    Mutant("weight_decay", "compile", COMPILE,
           "[1 - lr * hyper[3].to(sums.dtype), lr * coef", "[1 + 0 * lr, lr * coef"),
    Mutant("rescale", "compile", COMPILE,
           "(sums, numel_t, lr_t, hyper, cfg=cfg)",
           f"(sums, numel_t, lr_t, hyper, cfg={REPLACE}(cfg, rescale=False))"),
    Mutant("alpha_clip", "compile", COMPILE,
           "(sums, numel_t, lr_t, hyper, cfg=cfg)",
           f"(sums, numel_t, lr_t, hyper, cfg={REPLACE}(cfg, alpha_max=cfg.alpha_max + 0.5))"),
    Mutant("mask_sync", "compile", COMPILE,
           'if mask_kind == "sync":\n        phi = g * m > 0',
           'if mask_kind in ("sync", "async"):\n        phi = g * m > 0'),
    Mutant("beta2", "compile", COMPILE,
           "v.mul_(c[_B2]).add_(c[_ONE_MINUS_B2] * g * g)",
           "v.mul_(1 - c[_ONE_MINUS_B1]).add_(c[_ONE_MINUS_B1] * g * g)"),
    Mutant("active_all", "compile", COMPILE,
           "active = torch.where(grad != 0, 1.0, 0.0)", "active = torch.where(grad == grad, 1.0, 0.0)"),
    # ---------------------------------------------------------- Triton (interpreter)
    Mutant("lr", "triton", TRITON,
           "step_size = lr * tl.load(coef_ptr + t)", "step_size = lr * 1.05 * tl.load(coef_ptr + t)"),
    Mutant("weight_decay", "triton", TRITON,  # pass 2 (pass 1 writes p only for mask='none')
           "    decay = 1 - lr * weight_decay\n    if ONE_PASS:",
           "    decay = lr * 0.0 + 1.0\n    if ONE_PASS:"),
    Mutant("rescale", "triton", TRITON,
           "sums[0], sums[1], counts[0], numel_t, cfg, counts[1]",
           f"sums[0], sums[1], counts[0], numel_t, {REPLACE}(cfg, rescale=False), counts[1]"),
    Mutant("alpha_clip", "triton", TRITON,
           "sums[0], sums[1], counts[0], numel_t, cfg, counts[1]",
           "sums[0], sums[1], counts[0], numel_t, "
           f"{REPLACE}(cfg, alpha_max=cfg.alpha_max + 0.5), counts[1]"),
    Mutant("mask_sync", "triton", TRITON,
           "if MASK_MODE == 2:\n                phi = g * m > 0",
           "if MASK_MODE != 0:\n                phi = g * m > 0"),
    Mutant("beta2", "triton", TRITON,
           "v = v * beta2 + (1 - beta2) * (g * g)", "v = v * beta1 + (1 - beta1) * (g * g)"),
    Mutant("active_all", "triton", TRITON,
           "active += tl.where(g != 0, 1, 0)", "active += tl.where(inb, 1, 0)"),
    # ---------------------------------------------- the shared Python formulas (masking)
    Mutant("rescale", "shared", MASKING,
           "        scale = numels / (nnz + 1)\n    else:",
           "        scale = torch.ones_like(nnz)\n    else:"),
    Mutant("active_all", "shared", MASKING,
           "    if cfg.rescale == \"active\":\n        if active is None:",
           "    if cfg.rescale == \"active\":\n        active = torch.full_like(nnz, 1.0) * numels\n"
           "        if active is None:"),
    Mutant("alpha_clip", "shared", MASKING,
           "return ratio.clamp(max=alpha_max)", "return ratio.clamp(max=alpha_max + 0.5)"),
]  # fmt: skip

# A failure for one of these reasons is a broken mutant, not a catch.
BROKEN = ("could not build its C++ kernel", "SyntaxError", "NameError", "ImportError")


@dataclass
class Outcome:
    mutant: Mutant
    caught_by: str | None  # the first failing test's node id
    reason: str  # the failure's one-line summary, or why it does not count
    seconds: float
    confirmed: bool = False  # the test passes without the mutant


def site(mutant: Mutant) -> str:
    text = (REPO / mutant.file).read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(
            f"mutant {mutant.kind}/{mutant.path}: {mutant.old!r} occurs {count} times in "
            f"{mutant.file} (expected once); update MUTANTS to the current source"
        )
    line = text[: text.index(mutant.old.lstrip("\n"))].count("\n") + 1
    return f"{mutant.file.removeprefix(OPTIM + '/')}:{line}"


def copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in files:
        if not name or name.startswith("results/") or not (REPO / name).is_file():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def environment(tree: Path, ext_dir: Path, path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(ext_dir))
    if path == "triton":
        env["TRITON_INTERPRET"] = "1"  # before triton is first imported
    return env


def run_pytest(tree: Path, ext_dir: Path, path: str, args: list[str], timeout: int):
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=line", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(
        cmd, cwd=tree, env=environment(tree, ext_dir, path), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def first_failure(output: str) -> tuple[str | None, str]:
    """The node id and message of the first FAILED (or ERROR) line of pytest's summary."""
    for line in output.splitlines():
        match = re.match(r"(FAILED|ERROR) (\S+)(?: - (.*))?", line)
        if match:
            kind, node, message = match.groups()
            return (node if kind == "FAILED" else None), f"{kind}: {message or ''}"[:160]
    return None, output.strip().splitlines()[-1][:160] if output.strip() else "no output"


def check_mutant(mutant: Mutant, tree: Path, ext_dir: Path, timeout: int) -> Outcome:
    source = tree / mutant.file
    original = source.read_text()
    source.write_text(original.replace(mutant.old, mutant.new))
    start = time.perf_counter()
    try:
        rc, output = run_pytest(
            tree, ext_dir, mutant.path, ["-x", "-rfE", *SELECTIONS[mutant.path]], timeout
        )
    except subprocess.TimeoutExpired:
        rc, output = -1, f"timed out after {timeout} s"
    finally:
        source.write_text(original)
    seconds = time.perf_counter() - start
    if rc == 0:
        return Outcome(mutant, None, "SURVIVED: every selected test passed", seconds)
    node, reason = first_failure(output)
    if node is None or any(marker in reason for marker in BROKEN) or BROKEN[0] in output:
        return Outcome(mutant, None, f"BROKEN mutant (not a catch): {reason}", seconds)
    return Outcome(mutant, node, reason, seconds)


def confirm(outcomes: list[Outcome], tree: Path, ext_dir: Path, timeout: int) -> None:
    """Re-run every catching test on the unmutated tree: each must pass there."""
    by_path: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.caught_by:
            by_path.setdefault(outcome.mutant.path, []).append(outcome)
    for path, group in by_path.items():
        nodes = sorted({o.caught_by for o in group})
        _, output = run_pytest(tree, ext_dir, path, ["-rA", *nodes], timeout)
        passed = {m.group(1) for m in re.finditer(r"^PASSED (\S+)", output, re.M)}
        for outcome in group:
            outcome.confirmed = outcome.caught_by in passed
            if not outcome.confirmed:
                outcome.reason = f"NOT A CATCH: fails without the mutant too ({outcome.reason})"


def check_imports_from_copy(tree: Path, ext_dir: Path) -> None:
    code = "import alphaadam, sys; print(alphaadam.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=environment(tree, ext_dir, "single"),
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"the copy imports alphaadam from {out}, not from {tree}")


def report(outcomes: list[Outcome], command: str, seconds: float) -> str:
    import torch

    lines = [
        "# Mutation check: does the suite catch a wrong update on every path?",
        "",
        f"Written by `{command}` on {datetime.datetime.now().isoformat(timespec='seconds')}, "
        f"{platform.machine()}, torch {torch.__version__}, {os.cpu_count()} cores, "
        f"{seconds / 60:.1f} min. Generated; do not edit (docs: `scripts/mutation_check.py`).",
        "",
        "Each mutant is applied to a copy of the tree; the path's tests run with `pytest -x`; "
        "**caught by** is the first test that failed, and it passed again without the mutant. "
        "`shared` mutants are in `masking.py`, which the single-tensor, foreach, compiled and "
        "Triton paths all call.",
        "",
        "| mutant | path | site | caught by | seconds |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        caught = f"`{o.caught_by}`" if o.caught_by and o.confirmed else f"**{o.reason}**"
        lines.append(
            f"| {KINDS[o.mutant.kind]} | {PATH_NAMES[o.mutant.path]} | `{site(o.mutant)}` | "
            f"{caught} | {o.seconds:.0f} |"
        )
    caught = sum(o.confirmed for o in outcomes)
    lines += ["", f"{caught} of {len(outcomes)} mutants caught.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", choices=list(SELECTIONS), default=list(SELECTIONS))
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "mutation_check.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per pytest run")
    args = parser.parse_args(argv)
    if "triton" in args.paths and not _triton_installed():
        print("triton is not installed: skipping the Triton path", file=sys.stderr)
        args.paths.remove("triton")
    mutants = [m for m in MUTANTS if m.path in args.paths and m.kind in args.kinds]
    for m in mutants:
        site(m)  # every edit still applies, before anything runs
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        tree, ext_dir = Path(tmp) / "tree", Path(tmp) / "torch_extensions"
        copy_tree(tree)
        check_imports_from_copy(tree, ext_dir)
        outcomes = []
        for m in mutants:
            outcome = check_mutant(m, tree, ext_dir, args.timeout)
            print(f"{m.kind:13s} {m.path:8s} {outcome.seconds:6.0f}s  "
                  f"{outcome.caught_by or outcome.reason}", flush=True)  # fmt: skip
            outcomes.append(outcome)
        confirm(outcomes, tree, ext_dir, args.timeout)
    command = "python scripts/mutation_check.py" + "".join(
        f" {flag} {' '.join(values)}"
        for flag, values, default in (
            ("--paths", args.paths, list(SELECTIONS)),
            ("--kinds", args.kinds, list(KINDS)),
        )
        if values != default
    )
    text = report(outcomes, command, time.perf_counter() - start)
    print(text)
    if not args.no_write:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0 if all(o.confirmed for o in outcomes) else 1


def _triton_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


if __name__ == "__main__":
    sys.exit(main())
