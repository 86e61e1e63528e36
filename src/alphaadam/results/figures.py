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
from .selection import choose_lr  # noqa: E402
from .tables import format_lr  # noqa: E402

ALPHA_MAX = 2.0  # the paper's clip (Appendix F.4), drawn as a reference line
# One colour per method in every figure (a variant: its method's colour, dashed).
METHOD_COLORS = {
    "adamw": "tab:blue",
    "adamw_sm": "tab:orange",
    "cadamw": "tab:orange",
    "adamw_am": "tab:purple",
    "alphaadam": "tab:green",
    "alphaadam_onepass": "tab:olive",
    "adam_mini": "tab:brown",
    "alphaadam_active": "tab:green",
    "cadamw_active": "tab:orange",
    "alphaadam_norescale": "tab:gray",
    "alphaadam_embed_norescale": "tab:pink",
}
DASHED = {"alphaadam_active", "cadamw_active", "alphaadam_onepass"}
# Chance-level references of the reduced Table 1 tasks' dev metrics: MRPC's dev split has 279
# paraphrases of 408 pairs (always "paraphrase" scores 68.4 %); Matthews correlation 0 is
# a constant prediction on CoLA.
REFERENCE_LINES = {"MRPC": (279 / 408, "majority class"), "COLA": (0.0, "MCC = 0")}
LOG_SCALE_RATIO = 4.0  # loss max/min from which the y axis is logarithmic
GPT2_SIZES = ("gpt2_small", "gpt2_medium", "gpt2_large")
TABLE3_EXPERIMENTS = ("ablation_table3", "reduced_table3")


@dataclass
class FigureReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def selection_value(run: Run) -> float:
    """What a run's lr is chosen on, as the tables choose it: the final (100%) validation
    loss of a Table 3 ablation, the held-out answer loss of a reduced GSM8K run, else the
    run's best primary metric."""
    from .tables import val_loss_at

    if run.experiment in TABLE3_EXPERIMENTS:
        return val_loss_at(run, 1.0)
    if run.summary["task"] == "gsm8k" and run.experiment.startswith("reduced_"):
        value = run.summary["final"].get("val_loss")
    else:
        value = run.summary["best"].get(run.summary["primary_metric"])
    return math.nan if value is None else float(value)


def best_lr_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Per optimizer: the runs (seeds) at the lr the tables choose (``choose_lr`` on
    :func:`selection_value`, every lr on equal seed counts)."""
    chosen: dict[str, list[Run]] = {}
    by_opt: dict[str, list[Run]] = {}
    for run in runs:
        by_opt.setdefault(run.optimizer, []).append(run)
    for opt, opt_runs in sorted(by_opt.items()):
        mode = opt_runs[0].summary["primary_mode"]
        choice = choose_lr(((r.lr, r.seed, selection_value(r)) for r in opt_runs), mode)
        lr = choice.lr if choice is not None else min(r.lr for r in opt_runs)
        chosen[opt] = [r for r in opt_runs if r.lr == lr]
    return chosen


def mean_curve(runs: list[Run], column: str = "loss") -> pd.DataFrame:
    """Train-curve ``column`` averaged over runs at the steps all of them logged."""
    curves = [r.train_curve().set_index("step")[column].rename(i) for i, r in enumerate(runs)]
    joined = pd.concat(curves, axis=1, join="inner").sort_index()
    return pd.DataFrame({"step": joined.index, column: joined.mean(axis=1).to_numpy()})


def method_color(optimizer: str) -> str:
    """The colour of ``optimizer`` in every figure (a fixed cycle colour for others)."""
    if optimizer in METHOD_COLORS:
        return METHOD_COLORS[optimizer]
    return f"C{sum(map(ord, optimizer)) % 10}"


def method_style(optimizer: str) -> dict:
    return {"color": method_color(optimizer), "linestyle": "--" if optimizer in DASHED else "-"}


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


def _loss_panel(ax, runs: list[Run], title: str, from_fraction: float = 0.0) -> None:
    """Each method's training loss at its chosen lr (mean over seeds); ``from_fraction`` > 0
    draws only the steps from that fraction of training on, where the gaps are small."""
    losses: list[float] = []
    for opt, chosen in best_lr_runs(runs).items():
        curve = mean_curve(chosen)
        if from_fraction:
            curve = curve[curve["step"] >= from_fraction * chosen[0].summary["max_steps"]]
        label = f"{opt} (lr {chosen[0].lr:g}" + (
            f", {len(chosen)} seeds)" if len(chosen) > 1 else ")"
        )
        ax.plot(curve["step"], curve["loss"], label=label, linewidth=1.4, **method_style(opt))
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
    gsm = [r for r in runs.select(task="gsm8k") if r.scale == "paper"]
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


def _lr_panels(runs: list[Run]) -> dict[str, list[Run]]:
    """One panel per GLUE task (Table 1), else a single panel."""
    if runs and runs[0].summary["task"] == "glue":
        panels: dict[str, list[Run]] = {}
        for run in runs:
            panels.setdefault(str(run.summary["dataset"]).upper(), []).append(run)
        return dict(sorted(panels.items()))
    return {"": runs}


def _value_label(run: Run) -> str:
    if run.experiment in TABLE3_EXPERIMENTS:
        return "final validation loss"
    if run.summary["task"] == "gsm8k" and run.experiment.startswith("reduced_"):
        # With a validation split held out of training (a test_loss beside val_loss), the lr
        # is chosen on, and this draws, the validation split; without it val_loss is the test
        # split's (the superseded first design of reduced Table 2).
        if run.summary.get("final", {}).get("test_loss") is not None:
            return "answer loss (validation split)"
        return "answer loss (test split)"
    return f"best {run.summary['primary_metric']}"


def figure_lr_sensitivity(
    runs: list[Run], out_dir: Path, report: FigureReport, name: str, title: str
) -> None:
    """Each method's selection value against lr over its whole grid: every seed a dot, the
    mean over seeds a line, the chosen lr ringed. Masked methods take larger steps at the same
    nominal lr, so their optimum sits elsewhere; the curve shows how far, and how steeply
    each method falls off past it."""
    panels = _lr_panels(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for ax, (panel, panel_runs) in zip(axes[0], panels.items()):
        chosen = best_lr_runs(panel_runs)
        for opt, opt_runs in sorted(_group(panel_runs, lambda r: r.optimizer).items()):
            color = method_color(opt)
            points = pd.DataFrame(
                [{"lr": r.lr, "value": selection_value(r)} for r in opt_runs]
            ).sort_values("lr")
            finite = points[points["value"].map(math.isfinite)]
            ax.scatter(finite["lr"], finite["value"], color=color, s=12, alpha=0.6)
            means = finite.groupby("lr")["value"].mean()
            ax.plot(means.index, means.to_numpy(), label=opt, linewidth=1.3, **method_style(opt))
            best_lr = chosen[opt][0].lr
            if best_lr in means.index:
                ax.scatter(
                    [best_lr], [means[best_lr]], facecolors="none", edgecolors=color, s=90, lw=1.5
                )
        ax.set_xscale("log")
        # Label the lrs that were tried: a panel spanning less than a decade would otherwise
        # print crowded minor labels, or none at all.
        tried = sorted({r.lr for r in panel_runs})
        ax.set_xticks(tried, [format_lr(lr) for lr in tried], fontsize=7)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if panel in REFERENCE_LINES:
            level, what = REFERENCE_LINES[panel]
            ax.axhline(level, color="black", linewidth=0.8, linestyle=":", label=what)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(_value_label(panel_runs[0]))
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{title}\nlr sensitivity: dots = seeds, line = mean, ring = chosen lr (chosen on "
        "seed 1 over the grid; seeds 2-3 ran only at the chosen lr, so a ring may sit above a "
        "one-seed dot)",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, out_dir, name, report)


def _group(runs: list[Run], key) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(key(run), []).append(run)
    return out


def figure_step_scale(
    runs: list[Run], out_dir: Path, report: FigureReport, name: str, title: str
) -> None:
    """The effective step over training: the mean over tensors of the lr multiplier each
    masked method's update applied (``step_scale_mean``; band: min-max over tensors), at the
    chosen lr, averaged over seeds. An unmasked optimizer's multiplier is 1. Step 1 is not
    drawn: the asynchronous mask of step 1 is empty (``m_0 = 0``), its multiplier 0, which a
    log axis would show as a drop to nothing."""
    panels = _lr_panels(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    drawn = False
    for ax, (panel, panel_runs) in zip(axes[0], panels.items()):
        for opt, chosen in best_lr_runs(panel_runs).items():
            if not all("step_scale_mean" in r.train_curve() for r in chosen):
                continue
            curves = [
                (lambda c: c[c["step"] >= 2])(mean_curve(chosen, c))
                for c in ("step_scale_mean", "step_scale_min", "step_scale_max")
            ]
            step = curves[0]["step"]
            color = method_color(opt)
            ax.plot(
                step,
                curves[0]["step_scale_mean"],
                label=f"{opt} (lr {chosen[0].lr:g})",
                **method_style(opt),
            )
            ax.fill_between(
                step,
                curves[1]["step_scale_min"],
                curves[2]["step_scale_max"],
                color=color,
                alpha=0.12,
            )
            drawn = True
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="1 = the lr as given")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(_minor_log_label))
        ax.set_xlabel("training step")
        ax.set_ylabel("lr multiplier alpha * d / (nnz + 1)")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        report.skipped.append(f"{name}: no masked run logged step_scale")
        return
    fig.suptitle(
        f"{title}\neffective step of the masked methods: line = mean over tensors, "
        "band = min-max over tensors (from step 2: step 1's empty mask moves nothing)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, out_dir, name, report)


def figure_tensor_multipliers(
    run: Run, out_dir: Path, report: FigureReport, name: str, title: str, marked: str
) -> None:
    """One run's step multiplier ``alpha * d / (nnz + 1)`` of every tensor over training
    (``mask_stats.jsonl``), the tensors matching the regex ``marked`` (the token embedding)
    drawn in colour and named, the others grey; the mask density of the same tensors beside
    it. Step 1 (empty asynchronous mask, multiplier 0) is left out, as in the step-scale
    figures."""
    import re

    stats = run.mask_stats
    assert stats is not None
    stats = stats[stats["step"] >= 2]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    highlight = {p for p in stats["param"].unique() if re.search(marked, p)}
    colors = iter(["tab:red", "tab:purple", "tab:brown", "tab:cyan"])
    for param, sub in stats.groupby("param", sort=False):
        sub = sub.sort_values("step")
        if param in highlight:
            style = {
                "color": next(colors, "tab:red"),
                "linewidth": 2.0,
                "label": param,
                "zorder": 3,
            }
        else:
            style = {"color": "0.6", "linewidth": 0.6, "alpha": 0.6}
        # An empty mask (multiplier and density 0) has no place on a log axis: a gap.
        positive = sub.where(sub[["step_scale", "mask_density"]] > 0)
        left.plot(sub["step"], positive["step_scale"], **style)
        right.plot(sub["step"], positive["mask_density"], **style)
    median = stats.groupby("step")["step_scale"].median()
    left.plot(median.index, median.to_numpy(), color="black", linewidth=1.4, label="median tensor")
    left.axhline(1.0, color="black", linewidth=0.8, linestyle=":", label="1 = the lr as given")
    left.set_yscale("log")
    left.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    left.set_ylabel("lr multiplier alpha * d / (nnz + 1)")
    left.set_title(f"every tensor's multiplier ({stats['param'].nunique()} tensors, grey)")
    right.set_yscale("log")
    right.set_ylabel("mask density ||phi||_0 / d")
    right.set_title("the share of each tensor the mask kept")
    for ax in (left, right):
        ax.set_xlabel("training step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: {run.experiment} / {run.optimizer}, lr {run.lr:g}, seed {run.seed}")
    fig.tight_layout()
    _save(fig, out_dir, name, report)


#: The reduced study's experiments and the figures drawn from each.
REDUCED_FIGURES = {
    "reduced_table3": "Reduced Table 3 (GPT-2 arch, byte-level Tiny Shakespeare, CPU)",
    "reduced_table1": "Reduced Table 1 (MiniLM-L6 on GLUE, CPU)",
    "reduced_table2": "Reduced Table 2 (Llama arch from scratch on GSM8K, CPU)",
}


def reduced_figures(runs: RunSet, out_dir: Path, report: FigureReport, alpha_step_value=None):
    """Figures 2-5 at the reduced study's scale, the lr sensitivity and the effective step."""
    if not any(runs.select(experiment=e) for e in REDUCED_FIGURES):
        report.skipped.append(f"reduced-study figures: no runs of {', '.join(REDUCED_FIGURES)}")
        return
    for experiment, title in REDUCED_FIGURES.items():
        selected = runs.select(experiment=experiment)
        if not selected:
            report.skipped.append(f"{experiment} figures: no completed runs")
            continue
        figure_lr_sensitivity(selected, out_dir, report, f"lr_sensitivity_{experiment}", title)
        figure_step_scale(selected, out_dir, report, f"step_scale_{experiment}", title)
    t3 = runs.select(experiment="reduced_table3")
    if t3:
        # The late gaps are a few hundredths on a loss that falls from 5.5: a second panel
        # from 40 % of training on shows them.
        fig, (ax, late) = plt.subplots(1, 2, figsize=(11, 4))
        _loss_panel(ax, t3, REDUCED_FIGURES["reduced_table3"])
        _loss_panel(late, t3, "from 40 % of training", from_fraction=0.4)
        fig.suptitle("Figure 2 at reduced scale: training loss")
        fig.tight_layout()
        _save(fig, out_dir, "figure2_reduced_loss", report)
    t2 = runs.select(experiment="reduced_table2")
    if t2:
        fig, ax = plt.subplots(figsize=(6, 4))
        _loss_panel(ax, t2, REDUCED_FIGURES["reduced_table2"])
        fig.suptitle("Figure 3 at reduced scale: GSM8K training loss")
        fig.tight_layout()
        _save(fig, out_dir, "figure3_reduced_gsm8k_loss", report)
    for name, experiment, title in (
        (
            "figure4_reduced_alpha_gsm8k",
            "reduced_table2",
            "Figure 4 at reduced scale: alpha, GSM8K",
        ),
        (
            "figure5_reduced_alpha_gpt2",
            "reduced_table3",
            "Figure 5 at reduced scale: alpha, GPT-2 arch",
        ),
    ):
        chosen = best_lr_runs(runs.select(experiment=experiment)).get("alphaadam", [])
        run = pick_alpha_run(chosen)
        if run is None:
            report.skipped.append(
                f"{name}: no completed alphaadam run of {experiment} with mask_stats.jsonl"
            )
            continue
        figure_alpha(run, out_dir, report, name, title, alpha_step_value)
    # The sparse-gradient finding: on STS-B the word embedding's multiplier is in the hundreds.
    stsb = [r for r in runs.select(experiment="reduced_table1") if r.summary["dataset"] == "stsb"]
    chosen = best_lr_runs(stsb).get("alphaadam", [])
    first_seed = min((r.seed for r in chosen), default=None)
    run = pick_alpha_run([r for r in chosen if r.seed == first_seed])
    if run is None:
        report.skipped.append("step_scale_per_tensor_reduced_table1_stsb: no STS-B AlphaAdam run")
    else:
        figure_tensor_multipliers(
            run, out_dir, report, "step_scale_per_tensor_reduced_table1_stsb",
            "Per-tensor step multiplier, reduced Table 1 STS-B", r"word_embeddings",
        )  # fmt: skip
    from .figures_scaling import scaling_figures

    scaling_figures(runs, out_dir, report)


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
            else [r for r in runs.select(task="gsm8k") if r.scale == "paper"],
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
    reduced_figures(runs, out_dir, report, alpha_step_value)
    return report


__all__ = ["make_figures", "best_lr_runs", "mean_curve", "alpha_step"]
