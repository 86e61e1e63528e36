#!/usr/bin/env python
"""Write the tables of README.md and docs/*.md that quote results files, from those files.

A generated table sits between two markers; the opening one names a renderer and its inputs
(paths from the repository root)::

    <!-- doc_tables: step_time results/benchmarks/a.json results/benchmarks/b.json -->
    ...the renderer's output...
    <!-- /doc_tables -->

    python scripts/doc_tables.py           # rewrite every block (make doc-tables)
    python scripts/doc_tables.py --check   # list stale blocks, exit 1 if any (a test runs it)

So a number in the docs is either written by this script from a committed results file (which
records the command that measured it) or is not a measurement. To change a table, rerun its
benchmark and then this script; never edit between the markers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(?P<open><!-- doc_tables: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)(?P<close><!-- /doc_tables -->)",
    re.DOTALL,
)


def _load(root: Path, path: str) -> dict:
    return json.loads((root / path).read_text())


# ------------------------------------------------------------------ optimizer step time
_TORCH_LABELS = {
    "torch_adamw_fused": "torch AdamW `fused=True`",
    "torch_adamw_foreach": "torch AdamW `foreach=True`",
}
_PATH_LABELS = {
    "onepass_cpu": "one-pass C++ (`one_pass=True, fused=True` on CPU)",
    "onepass_compile": 'one-pass compiled (`one_pass=True, fused="compile"`)',
    "cpu": "C++ (`fused=True` on CPU)",
    "compile": 'compiled (`fused="compile"`)',
    "triton": 'Triton (`fused="triton"`)',
    "foreach": "foreach",
    "single": "single-tensor",
}


def variant_label(name: str) -> str:
    """``alphaadam_cpu`` -> ``AlphaAdam C++ (...)``; ``adamw_sm_foreach`` -> preset + path."""
    if name in _TORCH_LABELS:
        return _TORCH_LABELS[name]
    preset, _, path = name.rpartition("_")
    if preset.endswith("_onepass"):  # alphaadam_onepass_cpu -> alphaadam, onepass_cpu
        preset, path = preset.removesuffix("_onepass"), f"onepass_{path}"
    if path not in _PATH_LABELS:
        return f"`{name}`"
    who = "AlphaAdam" if preset == "alphaadam" else f"`{preset}` preset"
    return f"{who} {_PATH_LABELS[path]}"


def _threads(report: dict) -> str:
    n = report["torch_threads"]
    return f"{n} thread" + ("s" if n != 1 else "")


def _paired(report: dict) -> bool:
    # Reports of benchmarks/optimizer_step.py since it pairs steps (--pair-with).
    return report.get("pair_with") == "torch_adamw_fused"


def step_time(root: Path, *paths: str) -> str:
    """Rows of the first report; per report its ms/step and ratio to torch's fused AdamW
    (for a paired report, the median and 90th percentile of the per-pair ratios)."""
    reports = [_load(root, p) for p in paths]
    rows = [{r["variant"]: r for r in rep["results"]} for rep in reports]
    header = ["variant"]
    for rep in reports:
        header += [f"ms/step, {_threads(rep)}", "× torch fused AdamW"]
        if _paired(rep):
            header.append("× at the 90th percentile")
    header.append("extra memory: kept buffers + step peak")
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for variant in rows[0]:
        cells = [variant_label(variant)]
        for rep, by_variant in zip(reports, rows):
            r = by_variant.get(variant)
            width = 3 if _paired(rep) else 2
            if r is None:
                cells += ["—"] * width
                continue
            ratio = r["x_paired_median"] if _paired(rep) else r["x_torch_fused"]
            cells += [f"{r['median_ms']:.0f}", "—" if ratio is None else f"{ratio:.2f}"]
            if _paired(rep):
                cells.append(f"{r['x_paired_p90']:.2f}")
        first = rows[0][variant]
        cells.append(f"{first.get('workspace_mib', 0.0) + first['step_peak_mib']:.0f} MiB")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for path, rep in zip(paths, reports):
        how = f"median of {rep['repeats']} x {rep['steps']} steps"
        if _paired(rep):
            how += ", each paired with a step of torch's fused AdamW (ratios per pair)"
        lines.append(
            f"{_threads(rep)} of {rep['cpu_count']}, {rep['device']}, torch {rep['torch']}, "
            f"{rep['date']}, load average at the end {rep['load_average_at_end'][0]:.2f}; "
            f"{how}; `{path}`, measured by `{rep['command']}`."
        )
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


# ------------------------------------------------------------------ optimizer state memory
def _bytes_per_param(row: dict, digits: int) -> str:
    value = row["bytes_per_param"]
    return row["note"] if value is None else f"{value:.{digits}f}"


def _memory_footer(path: str, report: dict) -> str:
    meta = report["meta"]
    return (
        f"`{path}`, measured by `{meta['command']}` ({meta['date']}, torch {meta['torch']}, "
        f"GPT at GPT-2 small shapes, {meta['n_layer']} layers, after one step)."
    )


def memory(root: Path, path: str) -> str:
    """One row per optimizer config, with the package version that ran."""
    report = _load(root, path)
    lines = ["| config | source (version run) | state bytes/param |", "|---|---|---:|"]
    for r in report["rows"]:
        lines.append(f"| `{r['config']}` | {r['source']} | {_bytes_per_param(r, 3)} |")
    return "\n".join([*lines, "", _memory_footer(path, report)]) + "\n"


def memory_summary(root: Path, path: str) -> str:
    """Configs with the same source, devices and state size share a row."""
    report = _load(root, path)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in sorted(report["rows"], key=lambda r: r["config"]):
        key = (r["source"], r["devices"], _bytes_per_param(r, 1))
        groups.setdefault(key, []).append(f"`{r['config']}`")
    lines = ["| optimizer configs | source | devices | state bytes/param |", "|---|---|---|---:|"]
    for (source, devices, size), configs in groups.items():
        lines.append(f"| {', '.join(configs)} | {source} | {devices} | {size} |")
    return "\n".join([*lines, "", _memory_footer(path, report)]) + "\n"


def include(root: Path, path: str) -> str:
    """A generated Markdown file (e.g. a table `make tables` wrote), verbatim, so the docs
    show exactly what the committed results give."""
    text = (root / path).read_text()
    return text if text.endswith("\n") else text + "\n"


RENDERERS: dict[str, Callable[..., str]] = {
    "step_time": step_time,
    "memory": memory,
    "memory_summary": memory_summary,
    "include": include,
}


# ------------------------------------------------------------------ blocks in documents
def render(spec: str, root: Path) -> str:
    name, *args = spec.split()
    if name not in RENDERERS:
        raise ValueError(
            f"unknown doc_tables renderer {name!r}; valid choices are {', '.join(RENDERERS)}"
        )
    return RENDERERS[name](root, *args)


def refresh(text: str, root: Path) -> tuple[str, list[str]]:
    """``text`` with every block re-rendered, and the specs of the blocks that changed."""
    stale: list[str] = []

    def replace(m: re.Match) -> str:
        body = render(m["spec"], root)
        if body != m["body"]:
            stale.append(m["spec"])
        return m["open"] + body + m["close"]

    return BLOCK.sub(replace, text), stale


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, write nothing")
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    args = parser.parse_args(argv)
    stale_docs = []
    for doc in documents(args.root):
        text = doc.read_text()
        new, stale = refresh(text, args.root)
        for spec in stale:
            print(f"{doc.relative_to(args.root)}: stale table `{spec}`")
        if stale:
            stale_docs.append(doc)
            if not args.check:
                doc.write_text(new)
    if args.check and stale_docs:
        print(
            "run `python scripts/doc_tables.py` (make doc-tables) to rewrite them", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
