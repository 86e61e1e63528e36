"""The paper's Figures 2-5 from run directories (PNG and PDF, matplotlib Agg).

* Figure 2: GPT-2 training loss per model size, one line per optimizer.
* Figure 3: GSM8K fine-tuning training loss, one line per optimizer.
* Figures 4/5: AlphaAdam's per-tensor alpha at one step, by tensor (layer order), and the
  spread of alpha over training (from ``mask_stats.jsonl``). The paper shows Llama-2-7B
  (Figure 4) and GPT-2 small (Figure 5).

Per (experiment, optimizer) the plotted runs are those at the best lr (by the mean of
``summary.best[primary_metric]`` over seeds, as in the tables); several seeds are averaged
step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402

from .runs import Run, RunSet  # noqa: E402

ALPHA_MAX = 2.0  # the paper's clip (Appendix F.4), drawn as a reference line
LOG_SCALE_RATIO = 4.0  # loss max/min from which the y axis is logarithmic
GPT2_SIZES = ("gpt2_small", "gpt2_medium", "gpt2_large")


@dataclass
class FigureReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def best_lr_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Per optimizer: the runs (seeds) at the lr whose mean primary metric is best."""
    chosen: dict[str, list[Run]] = {}
    by_opt: dict[str, list[Run]] = {}
    for run in runs:
        by_opt.setdefault(run.optimizer, []).append(run)
    for opt, opt_runs in sorted(by_opt.items()):
        rows = [
            {"lr": r.lr, "value": r.summary["best"].get(r.summary["primary_metric"]), "run": r}
            for r in opt_runs
        ]
        frame = pd.DataFrame(rows)
        means = frame.groupby("lr")["value"].mean().dropna()
        if means.empty:
            lr = min(frame["lr"])
        else:
            mode = opt_runs[0].summary["primary_mode"]
            best = means.max() if mode == "max" else means.min()
            lr = float(means[means == best].index[0])
        chosen[opt] = [r for r in opt_runs if r.lr == lr]
    return chosen


def mean_curve(runs: list[Run], column: str = "loss") -> pd.DataFrame:
    """Train-curve ``column`` averaged over runs at the steps all of them logged."""
    curves = [r.train_curve().set_index("step")[column].rename(i) for i, r in enumerate(runs)]
    joined = pd.concat(curves, axis=1, join="inner").sort_index()
    return pd.DataFrame({"step": joined.index, column: joined.mean(axis=1).to_numpy()})


def _save(fig, out_dir: Path, name: str, report: FigureReport) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        path = out_dir / f"{name}.{ext}"
        tmp = out_dir / f".{name}.tmp.{ext}"
        # No creation date: re-rendering the same runs gives byte-identical PDFs.
        metadata = {"CreationDate": None} if ext == "pdf" else {}
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=ext, metadata=metadata)
        tmp.replace(path)
        report.written.append(path)
    plt.close(fig)


def _minor_log_label(value: float, _pos) -> str:
    """Label the 2, 3, 4 and 6 ticks of each decade; the rest would crowd the axis."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return (
        f"{value:g}"
        if round(mantissa) in (2, 3, 4, 6) and abs(mantissa - round(mantissa)) < 1e-6
        else ""
    )


def _loss_panel(ax, runs: list[Run], title: str) -> None:
    losses: list[float] = []
    for opt, chosen in best_lr_runs(runs).items():
        curve = mean_curve(chosen)
        label = f"{opt} (lr {chosen[0].lr:g}" + (
            f", {len(chosen)} seeds)" if len(chosen) > 1 else ")"
        )
        ax.plot(curve["step"], curve["loss"], label=label, linewidth=1.4)
        losses.extend(curve["loss"].dropna().tolist())
    ax.set_title(title)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    # Pretraining losses fall by an order of magnitude early on; a log axis keeps the late
    # gaps visible. Over less than ~4x (a short fine-tune) a log axis only loses tick labels.
    if losses and min(losses) > 0 and max(losses) / min(losses) >= LOG_SCALE_RATIO:
        ax.set_yscale("log")
        # Plain numbers (0.6, 2, 4) instead of 6x10^-1 on the log axis.
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_log_label))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def figure2(runs: RunSet, out_dir: Path, report: FigureReport, experiments=GPT2_SIZES) -> None:
    present = [e for e in experiments if runs.select(experiment=e)]
    if not present:
        report.skipped.append(
            f"figure2: no completed runs of experiment(s) {', '.join(experiments)}"
        )
        return
    fig, axes = plt.subplots(1, len(present), figsize=(5.2 * len(present), 4), squeeze=False)
    for ax, exp in zip(axes[0], present):
        _loss_panel(ax, runs.select(experiment=exp), exp)
    fig.suptitle("Figure 2: GPT-2 pretraining, training loss")
    fig.tight_layout()
    _save(fig, out_dir, "figure2_gpt2_loss", report)


def figure3(runs: RunSet, out_dir: Path, report: FigureReport) -> None:
    gsm = runs.select(task="gsm8k")
    if not gsm:
        report.skipped.append("figure3: no completed runs with task=gsm8k")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    _loss_panel(ax, gsm, "Figure 3: GSM8K fine-tuning, training loss")
    fig.tight_layout()
    _save(fig, out_dir, "figure3_gsm8k_loss", report)


def pick_alpha_run(runs: list[Run], optimizer: str = "alphaadam") -> Run | None:
    """The first (by path) run of ``optimizer`` with mask statistics."""
    with_stats = [
        r
        for r in runs
        if r.optimizer == optimizer and r.mask_stats is not None and not r.mask_stats.empty
    ]
    return sorted(with_stats, key=lambda r: str(r.path))[0] if with_stats else None


def alpha_step(stats: pd.DataFrame, step: int | None) -> int:
    """The recorded step to show: ``step`` if given (must be recorded), else the middle one."""
    steps = sorted(stats["step"].unique())
    if step is None:
        return int(steps[len(steps) // 2])
    if step not in steps:
        raise ValueError(f"alpha step {step} was not recorded; recorded steps: {steps}")
    return int(step)


def figure_alpha(
    run: Run, out_dir: Path, report: FigureReport, name: str, title: str, step: int | None = None
) -> None:
    stats = run.mask_stats
    assert stats is not None
    chosen = alpha_step(stats, step)
    # Tensor order of first appearance is the model's parameter (layer) order.
    order = {p: i for i, p in enumerate(dict.fromkeys(stats["param"]))}
    at = stats[stats["step"] == chosen].copy()
    at["index"] = at["param"].map(order)
    at = at.sort_values("index")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.bar(at["index"], at["alpha"], width=0.8, color="tab:blue")
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="alpha = 1 (no mask)")
    left.axhline(ALPHA_MAX, color="tab:red", linewidth=0.8, linestyle="--", label="alpha_max = 2")
    left.set_title(f"alpha per tensor at step {chosen} ({len(at)} tensors)")
    left.set_xlabel("tensor index (layer order)")
    left.set_ylabel("alpha")
    left.set_ylim(0.9, max(ALPHA_MAX, float(at["alpha"].max())) * 1.05)
    # Below the axes: inside, it would hide the bars of the last tensors.
    left.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)

    grouped = stats.groupby("step")["alpha"]
    q = grouped.quantile([0.05, 0.5, 0.95]).unstack()
    lo, hi = grouped.min(), grouped.max()
    right.fill_between(lo.index, lo, hi, color="tab:blue", alpha=0.15, label="min-max")
    right.fill_between(q.index, q[0.05], q[0.95], color="tab:blue", alpha=0.35, label="5-95%")
    right.plot(q.index, q[0.5], color="tab:blue", label="median")
    right.axvline(chosen, color="black", linewidth=0.8, linestyle=":", label=f"step {chosen}")
    right.axhline(ALPHA_MAX, color="tab:red", linewidth=0.8, linestyle="--")
    right.set_title("alpha across tensors over training")
    right.set_xlabel("training step")
    right.set_ylabel("alpha")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{title} — {run.experiment} / {run.optimizer} ({run.path.name})")
    fig.tight_layout()
    _save(fig, out_dir, name, report)


def make_figures(
    runs: RunSet,
    out_dir: str | Path,
    gpt2_experiments=GPT2_SIZES,
    alpha_experiment_fig4: str | None = None,
    alpha_experiment_fig5: str = "gpt2_small",
    alpha_step_value: int | None = None,
    alpha_optimizer: str = "alphaadam",
) -> FigureReport:
    out_dir = Path(out_dir)
    report = FigureReport()
    figure2(runs, out_dir, report, gpt2_experiments)
    figure3(runs, out_dir, report)
    for name, selection, title in (
        (
            "figure4_alpha_gsm8k",
            runs.select(experiment=alpha_experiment_fig4)
            if alpha_experiment_fig4
            else runs.select(task="gsm8k"),
            "Figure 4: alpha, GSM8K fine-tuning",
        ),
        (
            "figure5_alpha_gpt2",
            runs.select(experiment=alpha_experiment_fig5),
            "Figure 5: alpha, GPT-2 pretraining",
        ),
    ):
        run = pick_alpha_run(selection, alpha_optimizer)
        if run is None:
            report.skipped.append(
                f"{name}: no completed {alpha_optimizer} run with mask_stats.jsonl"
            )
            continue
        figure_alpha(run, out_dir, report, name, title, alpha_step_value)
    return report


__all__ = ["make_figures", "best_lr_runs", "mean_curve", "alpha_step"]
