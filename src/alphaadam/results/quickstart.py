"""``make run``: the embedded default trained twice, AdamW and AlphaAdam, side by side, and a
small comparison of the two run directories written with the same table and figure code that
``make tables figures`` use (``tables.render.Table``, ``figures._loss_panel``).

    python -m alphaadam.results.quickstart [HYDRA OVERRIDES...]

Both runs start at once (one torch thread each, so the two fit on 2 cores), into fresh
directories under ``results/runs/quickstart/<time>/``; nothing earlier is overwritten. Then
``comparison.md`` (final validation loss, tokens/s, AlphaAdam's alpha, mask density and step
scale) and ``loss.png`` are written beside them and the paths printed.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

from .figures import FigureReport, _loss_panel, _save
from .runs import Run, load_run
from .tables.render import MISSING, Table

REPO = Path(__file__).resolve().parents[3]
METHODS = ("adamw", "alphaadam")


def train_both(overrides: list[str], root: Path) -> dict[str, Path]:
    """Both methods at once, each in its own run directory under ``root``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for method in METHODS:
        run_dir = root / method
        cmd = [sys.executable, str(REPO / "train.py"), f"optimizer={method}",
               f"trainer.run_dir={run_dir}", "trainer.progress_bar=false", *overrides]  # fmt: skip
        log = (root / f"{method}.log").open("w")
        procs[method] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log), log)
        print(f"training {method}: {' '.join(cmd[1:])}", flush=True)
    failed = []
    for method, (proc, log) in procs.items():
        proc.wait()
        log.close()
        if proc.returncode != 0:
            failed.append(f"{method} (exit {proc.returncode}; log: {root / f'{method}.log'})")
    if failed:
        raise SystemExit(f"make run: training failed for {', '.join(failed)}")
    return {m: root / m for m in METHODS}


def _last(run: Run, key: str) -> float | None:
    curve = run.train_curve()
    if key not in curve:
        return None
    values = curve[key].dropna()
    return float(values.iloc[-1]) if len(values) else None


def _fmt(value: float | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def comparison_table(runs: dict[str, Run]) -> Table:
    rows = []
    for method, run in runs.items():
        final = run.summary.get("final") or {}
        curve = run.train_curve()
        rate = curve["tokens_per_s"].dropna().iloc[1:] if "tokens_per_s" in curve else []
        rows.append(
            [
                method,
                f"{run.lr:g}",
                _fmt(final.get("val_loss"), ".4f"),
                _fmt(float(rate.median()) if len(rate) else None, ",.0f"),
                _fmt(_last(run, "alpha_mean"), ".3f"),
                _fmt(_last(run, "mask_density_mean"), ".3f"),
                _fmt(run.summary.get("step_scale_mean"), ".2f"),
            ]
        )
    return Table(
        "comparison",
        "AdamW and AlphaAdam on the embedded default (one seed; a smoke run, not a result)",
        [
            "Method",
            "lr",
            "final val loss",
            "tokens/s (median)",
            "alpha (last, mean over tensors)",
            "mask density (last)",
            "step scale (mean)",
        ],  # fmt: skip
        rows,
        [
            "The default: a tiny GPT on a generated corpus, CPU (configs/experiment/smoke.yaml). "
            "One seed at one lr each: for a comparison that means something, see the reduced "
            "study (make reproduce-small, docs/reproduction.md).",
            "alpha: AlphaAdam's per-tensor ||u||^2 / ||phi u||^2 (clipped at 2); mask density: "
            "the share of each tensor the asynchronous mask kept; step scale: the lr multiplier "
            "of the masked update, alpha * d / (nnz + 1).",
        ],
    )


def compare(run_dirs: dict[str, Path], out_dir: Path) -> list[Path]:
    runs = {m: load_run(d) for m, d in run_dirs.items()}
    table = out_dir / "comparison.md"
    table.write_text(comparison_table(runs).to_markdown())
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    _loss_panel(ax, list(runs.values()), "embedded default: training loss")
    fig.tight_layout()
    report = FigureReport()
    _save(fig, out_dir, "loss", report)
    return [table, *(p for p in report.written if p.suffix == ".png")]


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root = REPO / "results" / "runs" / "quickstart" / stamp
    root.mkdir(parents=True, exist_ok=False)
    run_dirs = train_both(overrides, root)
    written = compare(run_dirs, root)
    print((root / "comparison.md").read_text())
    for method, path in run_dirs.items():
        print(f"run directory ({method}): {path}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
