"""The scaling study's figures (configs/sweep/reduced_scaling.yaml), from the same numbers as
its tables (``tables.scaling``):

* ``scaling_summary``: the paired test-loss difference from AdamW (95 % t interval) of CAdamW
  and AlphaAdam, each at its own chosen lr (filled) and all at AdamW's chosen lr (hollow, the
  paper's protocol), against parameters (the 500-step points) and against training tokens
  (the d = 128 points);
* ``scaling_lr_sensitivity``: per method, final validation loss against lr, one colour per
  width (the style of Wortsman et al. 2023), and the chosen lr against width.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib import ticker

from .figures import FigureReport, _save, method_color
from .runs import RunSet
from .tables.render import Cell
from .tables.scaling import (
    Point,
    label,
    paired_with_seeds,
    parameter_count,
    point_order,
    scaling_experiments,
    scaling_point,
    shared_paired,
)

MASKED = ("adamw_sm", "alphaadam")
BASE_STEPS = 500  # the width axis's training length
BASE_WIDTH = 128  # the length axis's width


def _interval(cell: Cell) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t interval (0 for one pair)."""
    if cell.n < 2:
        return cell.mean, 0.0
    from scipy.stats import t

    return cell.mean, float(t.ppf(0.975, cell.n - 1) * cell.sd / math.sqrt(cell.n))


def _axis_points(
    points: list[Point],
) -> tuple[list[tuple[Point, float]], list[tuple[Point, float]]]:
    """(point, x) for the width axis (x = parameters) and the length axis (x = tokens)."""
    width, length = [], []
    for point in points:
        d, steps = point_order(point.name)
        if steps == BASE_STEPS:
            params = parameter_count(point.runs[0])
            if params:
                width.append((point, float(params)))
        if d == BASE_WIDTH:
            length.append((point, float(point.runs[0].summary.get("tokens") or 0)))
    return width, length


def _difference_panel(ax, axis: list[tuple[Point, float]], xlabel: str) -> None:
    for k, method in enumerate(MASKED):
        offset = 1.0 + 0.06 * (2 * k - 1)  # side by side on the log axis
        for shared in (False, True):
            xs, ys, errs = [], [], []
            for point, x in axis:
                if shared:
                    cell = shared_paired(point).get(method)
                else:
                    cell = paired_with_seeds(point, "100%").get(method, (None, None))[0]
                if cell is None or cell.n == 0:
                    continue
                mean, half = _interval(cell)
                xs.append(x * offset * (1.03 if shared else 1.0))
                ys.append(mean)
                errs.append(half)
            if not xs:
                continue
            color = method_color(method)
            ax.errorbar(
                xs, ys, yerr=errs, fmt="o" if not shared else "s", color=color,
                markerfacecolor=color if not shared else "white", capsize=3, linewidth=1.2,
                linestyle="-" if not shared else ":",
                label=f"{label(method)}, {'AdamW’s lr (shared)' if shared else 'own lr (tuned)'}",
            )  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    # Ticks at the points themselves (a few, spanning less than two decades).
    ax.set_xticks([x for _, x in axis], [f"{x / 1e6:.2g}M" for _, x in axis])
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if axis:
        low, high = min(x for _, x in axis), max(x for _, x in axis)
        ax.set_xlim(low / 1.6, high * 1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test loss minus AdamW's (same seed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def figure_scaling_summary(points: list[Point], out_dir: Path, report: FigureReport) -> None:
    width, length = _axis_points(points)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    _difference_panel(left, width, f"parameters ({BASE_STEPS} steps)")
    left.set_title("against model size")
    _difference_panel(right, length, f"training tokens (d = {BASE_WIDTH})")
    right.set_title("against training length")
    fig.suptitle(
        "Scaling study (reduced, CPU; not the paper's setting): paired difference from AdamW "
        "at the end of training, 95 % t interval; below 0 = better than AdamW",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out_dir, "scaling_summary", report)


def figure_scaling_lr(points: list[Point], out_dir: Path, report: FigureReport) -> None:
    base = [p for p in points if point_order(p.name)[1] == BASE_STEPS]
    methods = [m for m in ("adamw", *MASKED) if any(m in p.methods for p in base)]
    if not base or not methods:
        report.skipped.append("scaling_lr_sensitivity: no 500-step points")
        return
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(4.2 * (len(methods) + 1), 3.8))
    cmap = plt.get_cmap("viridis")
    for ax, method in zip(axes, methods):
        for i, point in enumerate(base):
            frame = pd.DataFrame([r for r in point.records if r["optimizer"] == method])
            if frame.empty:
                continue
            seed1 = frame[frame["seed"] == frame["seed"].min()].groupby("lr")["value"].mean()
            color = cmap(i / max(len(base) - 1, 1))
            ax.plot(seed1.index, seed1.to_numpy(), marker="o", ms=3, color=color,
                    label=f"d = {point_order(point.name)[0]}")  # fmt: skip
            if (method,) in point.chosen:
                lr = point.chosen[(method,)][0]
                if lr in seed1.index:
                    ax.scatter([lr], [seed1[lr]], s=80, facecolors="none", edgecolors=color)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss (seed 1)")
        ax.set_title(label(method))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    chosen_ax = axes[-1]
    for method in methods:
        xs, ys = [], []
        for point in base:
            if (method,) in point.chosen:
                xs.append(point_order(point.name)[0])
                ys.append(point.chosen[(method,)][0])
        chosen_ax.plot(xs, ys, marker="o", color=method_color(method), label=label(method))
    chosen_ax.set_xscale("log", base=2)
    chosen_ax.set_yscale("log")
    widths = sorted({point_order(p.name)[0] for p in base})
    chosen_ax.set_xticks(widths, [str(w) for w in widths])
    chosen_ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    chosen_ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    chosen_ax.set_xlabel("width d")
    chosen_ax.set_ylabel("chosen lr")
    chosen_ax.set_title("chosen lr against width")
    chosen_ax.grid(True, which="both", alpha=0.3)
    chosen_ax.legend(fontsize=7)
    fig.suptitle(
        f"Scaling study: lr sensitivity per method ({BASE_STEPS} steps), one colour per width; "
        "ring = chosen lr (chosen on seed 1, the lattice 1e-3 x 2^(k/2))",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out_dir, "scaling_lr_sensitivity", report)


def scaling_figures(runs: RunSet, out_dir: Path, report: FigureReport) -> None:
    points = [scaling_point(runs, e) for e in scaling_experiments(runs)]
    if not points:
        report.skipped.append("scaling figures: no runs of the scaling study")
        return
    figure_scaling_summary(points, out_dir, report)
    figure_scaling_lr(points, out_dir, report)
