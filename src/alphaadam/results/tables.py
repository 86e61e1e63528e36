"""The paper's Tables 1-3 rebuilt from run directories, beside the paper's own numbers.

One table per experiment: the paper-scale experiments (``roberta_glue``, ``llama2_gsm8k``,
``ablation_table3``) give ``table1``/``table2``/``table3``; every other experiment with runs of
that kind (the reduced study's ``reduced_table1``/``2``/``3``) gets its own table named after
it, titled and annotated with the runs' ``scale``, so runs of different scales never share a
cell and a reduced row never passes for the paper's setting.

Values per run and selection (``docs/results.md``):

* Table 1 (GLUE): per task and optimizer, each run's ``summary.best[primary_metric]`` (x100).
* Table 2 (GSM8K): accuracy ``summary.final.accuracy`` (x100) with the scorer that produced it
  (``summary.accuracy_eval``: harness, few-shot count, problems): one row per scorer, never
  averaged across scorers; the lr is chosen on accuracy. Reduced experiments (from-scratch
  models, accuracy ~0) are chosen on the held-out answer loss ``final.val_loss`` instead and
  show the in-training greedy exact match (``final.exact_match_strict``) as its own row.
* Table 3 (ablation): validation loss at 20/40/60/100% of the run (eval records whose
  ``fraction`` is within ``FRACTION_TOL``); Avg(Early) = mean(20%, 40%), Avg(Late) =
  mean(60%, 100%) per run; the lr is chosen on the final (100%) value.

The lr is chosen by :func:`alphaadam.results.selection.choose_lr`: every lr compared on the
same number of seeds (its lowest-numbered ones), then every seed at the chosen lr reported as
``mean ± sd`` (sample sd, ddof=1) with the seed count. Masked optimizers also show their
effective step (``summary.step_scale_mean``, the lr multiplier the masked update applied;
1 for unmasked ones). Each table can add the paired differences against AdamW (same seed,
each method at its own chosen lr) and the whole lr grid. Missing cells are "—".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .runs import Problem, Run, RunSet
from .selection import choose_lr, edge_of

MISSING = "—"
# Methods a table shows that the paper's tables do not list (results/paper/tables.yaml names
# the others); any other such method is shown by its registry name.
EXTRA_LABELS = {"alphaadam_onepass": "AlphaAdam one-pass (extension, not in the paper)"}
FRACTION_TOL = 0.01
TABLE3_FRACTIONS = (0.2, 0.4, 0.6, 1.0)


def extra_label(optimizer: str) -> str:
    return EXTRA_LABELS.get(optimizer, optimizer)


def canonical_glue_task(name: str) -> str:
    """``STS-B`` / ``sts_b`` / ``stsb`` all name one task."""
    return name.lower().replace("-", "").replace("_", "")


@dataclass
class Cell:
    """One reproduced number: the seed values behind it and the lr they were run at."""

    values: list[float]
    lr: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(pd.Series(self.values, dtype=float).mean())

    @property
    def sd(self) -> float:
        return float(pd.Series(self.values, dtype=float).std(ddof=1)) if self.n > 1 else 0.0


def format_cell(cell: Cell | None, digits: int) -> str:
    if cell is None or cell.n == 0 or math.isnan(cell.mean):
        return MISSING
    text = f"{cell.mean:.{digits}f}"
    if cell.n > 1:
        text += f" ± {cell.sd:.{digits}f}"
    return text


def format_paper(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def format_lr(lr: float | None) -> str:
    """``3e-5``, ``1.6e-2``: scientific with the digits the lr has (up to three)."""
    if lr is None:
        return MISSING
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@dataclass
class Table:
    """A rendered-agnostic table: header, rows of strings, notes under it."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Further tables under this one (paired differences, the lr grid), in the same file.
    parts: list[Table] = field(default_factory=list)

    def to_markdown(self, level: int = 3) -> str:
        lines = [f"{'#' * level} {self.title}", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        text = "\n".join(lines) + "\n"
        for part in self.parts:
            text += "\n" + part.to_markdown(level + 1)
        return text

    def to_latex(self) -> str:
        spec = "l" + "c" * (len(self.header) - 1)
        lines = [
            "% Generated by `make tables` from run directories; do not edit.",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{_latex_escape(self.title)}}}",
            f"\\label{{tab:{self.name}}}",
            "\\resizebox{\\linewidth}{!}{%",
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(_latex_escape(h) for h in self.header) + " \\\\",
            "\\midrule",
        ]
        lines += [" & ".join(_latex_escape(c) for c in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
        if self.notes:
            lines += [f"% {note}" for note in self.notes]
        return "\n".join(lines) + "\n" + "".join("\n" + part.to_latex() for part in self.parts)


def _latex_escape(text: str) -> str:
    out = text
    for old, new in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("_", "\\_"),
        ("#", "\\#"),
    ):
        out = out.replace(old, new)
    return out.replace("±", "$\\pm$").replace("—", "---").replace("†", "\\dag{}")


def load_paper(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


# --- grouping and selection -------------------------------------------------------------


def _dedupe_seeds(runs: list[Run], key_fields: tuple[str, ...]) -> tuple[list[Run], list[Problem]]:
    """One run per (config, seed): a rerun of the same seed must not count as a second seed."""
    kept: dict[tuple, Run] = {}
    problems = []
    for run in sorted(runs, key=lambda r: str(r.path)):
        key = tuple(run.summary.get(f) for f in key_fields) + (run.lr, run.seed)
        if key in kept:
            old = kept[key]
            problems.append(
                Problem(
                    old.path,
                    "summary.json",
                    f"same config and seed as {run.path}; the later run dir is used",
                )
            )
        kept[key] = run
    return list(kept.values()), problems


def _cells_by_group(
    records: list[dict[str, Any]], group: list[str], mode: str
) -> dict[tuple, tuple[float, pd.DataFrame]]:
    """Per group: the lr chosen on equal seed counts (``choose_lr``) and that lr's rows."""
    if not records:
        return {}
    frame = pd.DataFrame(records)
    chosen = {}
    for key, sub in frame.groupby(group, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        usable = sub.dropna(subset=["value"])
        choice = choose_lr(zip(usable["lr"], usable["seed"], usable["value"]), mode)
        if choice is None:
            continue
        chosen[key] = (choice.lr, sub[sub["lr"] == choice.lr])
    return chosen


def _step_scale(summary: dict[str, Any]) -> float | None:
    """The run's mean effective lr multiplier; 1 for an optimizer without a mask (the key is
    null), ``None`` for runs from before the key existed."""
    if "step_scale_mean" not in summary:
        return None
    value = summary["step_scale_mean"]
    return 1.0 if value is None else float(value)


def _scale_cell(sub: pd.DataFrame, lr: float) -> Cell | None:
    values = [v for v in sub["step_scale"].tolist() if v is not None and not pd.isna(v)]
    return Cell(values, lr) if values else None


def _scales_note(runs: list[Run]) -> list[str]:
    scales = sorted({r.scale for r in runs})
    return [f"scale: {s}" for s in scales if s != "paper"]


def _is_reduced(experiment: str, paper_experiment: str) -> bool:
    return experiment != paper_experiment


def _paired(
    records: list[dict[str, Any]],
    chosen: dict[tuple, tuple[float, pd.DataFrame]],
    key_of: Any,
    columns: list[str],
    baseline: str = "adamw",
) -> dict[tuple, dict[str, Cell]]:
    """Per group (other than the baseline's): per column, the per-seed differences from the
    baseline, each at its own chosen lr (seeds both have)."""
    out: dict[tuple, dict[str, Cell]] = {}
    for key, (lr, sub) in chosen.items():
        base_key = key_of(key, baseline)
        if key == base_key or base_key not in chosen:
            continue
        base = chosen[base_key][1].set_index("seed")
        mine = sub.set_index("seed")
        seeds = sorted(set(base.index) & set(mine.index))
        out[key] = {
            c: Cell([float(mine.loc[s, c] - base.loc[s, c]) for s in seeds], lr) for c in columns
        }
    return out


def format_paired(cell: Cell | None, digits: int) -> str:
    """``mean ± sd (n)`` and, from 2 seeds on, the 95% t interval of the mean difference."""
    if cell is None or cell.n == 0:
        return MISSING
    text = f"{cell.mean:+.{digits}f}"
    if cell.n > 1:
        from scipy.stats import t

        half = t.ppf(0.975, cell.n - 1) * cell.sd / math.sqrt(cell.n)
        text += f" ± {cell.sd:.{digits}f} (n={cell.n}; 95% CI {cell.mean - half:+.{digits}f}"
        text += f" to {cell.mean + half:+.{digits}f})"
    else:
        text += " (n=1)"
    return text


EDGE_MARK = "†"
EDGE_NOTE = (
    f"{EDGE_MARK} the chosen lr is the smallest or largest lr tried for its row: the optimum may "
    "lie beyond the grid (the study widens a grid only up to its max_widenings; lrs that tie "
    "go to the smaller one)."
)


def _grid_rows(
    records: list[dict[str, Any]],
    chosen: dict[tuple, tuple[float, pd.DataFrame]],
    group: list[str],
    label_of: Any,
    digits: int,
) -> tuple[list[str], list[list[str]], list[str]]:
    """The whole lr grid: per group, each lr's mean over all its seeds (seed count), the
    chosen lr marked with *, and with a dagger when it is the smallest or largest lr its group
    tried; then the notes (the dagger's meaning, when one is shown)."""
    frame = pd.DataFrame(records)
    lrs = sorted(frame["lr"].unique())
    header = [*["" for _ in group], *[format_lr(lr) for lr in lrs]]
    rows = []
    any_edge = False
    for key, sub in frame.groupby(group, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        chosen_lr = chosen.get(key, (None, None))[0]
        at_edge = edge_of(chosen_lr, sub["lr"]) is not None
        any_edge = any_edge or at_edge
        mark = " *" + (EDGE_MARK if at_edge else "")
        cells = []
        for lr in lrs:
            values = sub[sub["lr"] == lr]["value"].dropna().tolist()
            if not values and not (sub["lr"] == lr).any():
                cells.append("")
                continue
            text = (
                f"{sum(values) / len(values):.{digits}f} ({len(values)})" if values else "diverged"
            )
            cells.append(text + (mark if lr == chosen_lr else ""))
        rows.append([*label_of(key), *cells])
    return header, rows, [EDGE_NOTE] if any_edge else []


# --- experiments ----------------------------------------------------------------------

#: The paper-scale experiment behind each table (its file is ``table<N>``).
PAPER_EXPERIMENTS = {
    "table1": "roberta_glue",
    "table2": "llama2_gsm8k",
    "table3": "ablation_table3",
}


def _title(spec_title: str, experiment: str, paper_experiment: str) -> str:
    if not _is_reduced(experiment, paper_experiment):
        return spec_title
    return f"{spec_title.split(':')[0]} at reduced scale ({experiment})"


def _ours(experiment: str, paper_experiment: str) -> str:
    return "reduced" if _is_reduced(experiment, paper_experiment) else "ours"


def _paper_note(experiment: str, paper_experiment: str) -> list[str]:
    if not _is_reduced(experiment, paper_experiment):
        return []
    return [
        "paper rows: the paper's numbers at its own, much larger scale, for orientation only: "
        "compare orderings, not values."
    ]


# --- Table 1 --------------------------------------------------------------------------


def build_table1(
    runs: RunSet,
    paper: dict[str, Any],
    value_source: str = "best",
    scale: float = 100.0,
    experiment: str = PAPER_EXPERIMENTS["table1"],
) -> Table:
    spec = paper["table1"]
    paper_experiment = PAPER_EXPERIMENTS["table1"]
    reduced = _is_reduced(experiment, paper_experiment)
    all_tasks = [canonical_glue_task(t) for t in spec["tasks"]]
    problems: list[Problem] = []
    glue_runs, dup = _dedupe_seeds(
        runs.select(task="glue", experiment=experiment), ("dataset", "optimizer")
    )
    problems += dup
    records = []
    metrics_seen: dict[str, set[str]] = {}
    for run in glue_runs:
        task = canonical_glue_task(run.summary["dataset"])
        metrics_seen.setdefault(task, set()).add(run.summary["primary_metric"])
    conflicting = {t for t, m in metrics_seen.items() if len(m) > 1}
    metric_of_task = {t: next(iter(m)) for t, m in metrics_seen.items() if t not in conflicting}
    for run in glue_runs:
        task = canonical_glue_task(run.summary["dataset"])
        metric = run.summary["primary_metric"]
        value = run.summary[value_source].get(metric)
        if task not in all_tasks:
            problems.append(
                Problem(run.path, "summary.json", f"dataset={task!r} is not a Table 1 task")
            )
            continue
        if task in conflicting:
            problems.append(
                Problem(
                    run.path,
                    "summary.json",
                    f"{task} runs disagree on primary_metric ({', '.join(sorted(metrics_seen[task]))}); "
                    "the task is left out rather than mixing metrics",
                )
            )
            continue
        if value is None:
            problems.append(
                Problem(run.path, "summary.json", f"{value_source}.{metric} missing; run skipped")
            )
            continue
        if not -1.0 <= value <= 1.0:
            problems.append(
                Problem(
                    run.path,
                    "summary.json",
                    f"{value_source}.{metric}={value} is outside [-1, 1]: GLUE metrics must be "
                    "fractions; run skipped",
                )
            )
            continue
        records.append(
            {
                "task": task,
                "optimizer": run.optimizer,
                "lr": run.lr,
                "seed": run.seed,
                "value": value * scale,
                "step_scale": _step_scale(run.summary),
            }
        )
    mode_by_task = {t: "max" for t in all_tasks}
    for run in glue_runs:
        mode_by_task[canonical_glue_task(run.summary["dataset"])] = run.summary["primary_mode"]
    chosen: dict[tuple, tuple[float, pd.DataFrame]] = {}
    for task in all_tasks:
        sub = [r for r in records if r["task"] == task]
        chosen.update(_cells_by_group(sub, ["task", "optimizer"], mode_by_task[task]))

    labels = spec["task_labels"]
    # A reduced study shows the tasks it ran; the paper-scale table all seven.
    shown = [t for t in spec["tasks"] if not reduced or any(r["task"] == t for r in records)]
    ours = _ours(experiment, paper_experiment)
    avg_label = "Avg" if not reduced else f"Avg ({len(shown)} tasks)"
    header = ["Method", ""] + [labels[t] for t in shown] + [avg_label]
    rows = []
    known = [row["optimizer"] for row in spec["rows"]]
    present = {r["optimizer"] for r in records}
    extra = sorted(present - set(known))
    entries = [e for e in spec["rows"] if not reduced or e["optimizer"] in present]
    for entry in entries + [{"optimizer": o, "label": extra_label(o), "values": {}} for o in extra]:
        opt = entry["optimizer"]
        paper_vals = entry["values"]
        cells: dict[str, Cell | None] = {}
        scales: dict[str, Cell | None] = {}
        for task_name in shown:
            task = canonical_glue_task(task_name)
            hit = chosen.get((task, opt))
            cells[task] = Cell(hit[1]["value"].tolist(), hit[0]) if hit else None
            scales[task] = _scale_cell(hit[1], hit[0]) if hit else None
        found = [c for c in cells.values() if c is not None]
        avg = (
            Cell([sum(c.mean for c in found) / len(found)])
            if found and len(found) == len(shown)
            else None
        )
        paper_avg = paper_vals.get("avg") if not reduced else None
        rows.append(
            [entry["label"], "paper"]
            + [format_paper(paper_vals.get(t), 2) for t in shown]
            + [format_paper(paper_avg, 2)]
        )
        rows.append(
            ["", ours]
            + [format_cell(cells[canonical_glue_task(t)], 2) for t in shown]
            + [format_cell(avg, 2)]
        )
        rows.append(
            ["", "seeds @ lr"]
            + [_seeds_at_lr(cells[canonical_glue_task(t)]) for t in shown]
            + [MISSING]
        )
        if any(c is not None for c in scales.values()):
            rows.append(
                ["", "step scale"]
                + [format_cell(scales[canonical_glue_task(t)], 2) for t in shown]
                + [MISSING]
            )
    metrics = ", ".join(f"{labels.get(t, t)}: {m}" for t, m in sorted(metric_of_task.items()))
    avg_note = (
        "Avg = mean of the seven selected values."
        if not reduced
        else f"Avg = mean of the {len(shown)} selected task values (not the paper's 7-task Avg)."
    )
    notes = (
        _scales_note(glue_runs)
        + [
            f"{ours}: summary.{value_source}[primary_metric] x{scale:g}; per task and optimizer the lr "
            "chosen on equal seed counts, then mean ± sd over every seed at that lr. " + avg_note,
            "step scale: mean over seeds of the run's mean lr multiplier of the masked update "
            "(alpha * d / (nnz + 1)); 1 = the lr as given (no mask).",
        ]
        + _paper_note(experiment, paper_experiment)
    )
    if metrics:
        notes.append(f"metrics: {metrics}")
    table = Table(
        "table1" if not reduced else experiment,
        _title(spec["title"], experiment, paper_experiment),
        header,
        rows,
        notes,
        problems,
    )
    if records:
        task_keys = [canonical_glue_task(t) for t in shown]
        paired = _paired(
            [r for r in records],
            chosen,
            lambda key, base: (key[0], base),
            ["value"],
        )
        paired_rows = []
        for entry in entries + [{"optimizer": o, "label": extra_label(o)} for o in extra]:
            if entry["optimizer"] == "adamw":
                continue
            cells_p = [paired.get((t, entry["optimizer"]), {}).get("value") for t in task_keys]
            if any(c is not None for c in cells_p):
                paired_rows.append([entry["label"]] + [format_paired(c, 2) for c in cells_p])
        if paired_rows:
            table.parts.append(
                Table(
                    f"{table.name}_paired",
                    "Paired difference from AdamW (same seed, each at its chosen lr)",
                    ["Method"] + [labels[t] for t in shown],
                    paired_rows,
                    ["positive = better than AdamW; mean ± sd over seeds with the 95% t interval."],
                )
            )
        grid_header, grid_rows, grid_notes = _grid_rows(
            records,
            chosen,
            ["task", "optimizer"],
            lambda key: [labels.get(key[0], key[0]), _label(spec["rows"], key[1])],
            2,
        )
        table.parts.append(
            Table(
                f"{table.name}_grid",
                "Every lr of the grid: mean over its seeds (seed count); * = chosen",
                ["Task", "Method", *grid_header[2:]],
                grid_rows,
                grid_notes,
            )
        )
    return table


def _label(entries: list[dict[str, Any]], optimizer: str) -> str:
    return next(
        (e["label"] for e in entries if e["optimizer"] == optimizer), extra_label(optimizer)
    )


def _seeds_at_lr(cell: Cell | None) -> str:
    if cell is None:
        return MISSING
    return f"{cell.n} @ {format_lr(cell.lr)}"


# --- Table 2 --------------------------------------------------------------------------


def describe_scorer(run: Run) -> str | None:
    """Which scorer produced ``final.accuracy``: harness, few-shot count, test problems."""
    info = run.summary.get("accuracy_eval")
    if not isinstance(info, dict):
        return None
    shots = info.get("num_fewshot")
    limit = info.get("limit")
    problems = "all test problems" if limit in (None, 0) else f"first {limit} test problems"
    return f"{info.get('harness', '?')}, {shots if shots is not None else '?'}-shot, {problems}"


def build_table2(
    runs: RunSet,
    paper: dict[str, Any],
    accuracy_key: str = "accuracy",
    scale: float = 100.0,
    experiment: str = PAPER_EXPERIMENTS["table2"],
) -> Table:
    """Accuracy is never averaged across scorers: one accuracy row per scorer, and the lr of
    each is chosen on that scorer's runs. A reduced experiment is chosen on the held-out answer
    loss and shows the in-training exact match as its own row."""
    spec = paper["table2"]
    paper_experiment = PAPER_EXPERIMENTS["table2"]
    reduced = _is_reduced(experiment, paper_experiment)
    ours = _ours(experiment, paper_experiment)
    problems: list[Problem] = []
    gsm_runs, dup = _dedupe_seeds(runs.select(task="gsm8k", experiment=experiment), ("optimizer",))
    problems += dup
    by_scorer: dict[str, list[dict[str, Any]]] = {}
    loss_records: list[dict[str, Any]] = []
    for run in gsm_runs:
        final = run.summary["final"]
        base = {
            "optimizer": run.optimizer,
            "lr": run.lr,
            "seed": run.seed,
            "train_loss": float("nan") if final.get("train_loss") is None else final["train_loss"],
            "val_loss": float("nan") if final.get("val_loss") is None else final["val_loss"],
            "step_scale": _step_scale(run.summary),
        }
        if reduced:
            em = final.get("exact_match_strict")
            loss_records.append(
                {
                    **base,
                    "value": base["val_loss"],
                    "em": float("nan") if em is None else em * scale,
                }
            )
            continue
        acc = final.get(accuracy_key)
        if acc is None:
            problems.append(
                Problem(
                    run.path,
                    "summary.json",
                    f"final.{accuracy_key} missing (evaluate with `python -m "
                    "alphaadam.eval.gsm8k_run RUN_DIR`); run skipped",
                )
            )
            continue
        if not 0.0 <= acc <= 1.0:
            problems.append(
                Problem(
                    run.path,
                    "summary.json",
                    f"final.{accuracy_key}={acc} is outside [0, 1]; run skipped",
                )
            )
            continue
        scorer = describe_scorer(run) or "scorer not recorded"
        by_scorer.setdefault(scorer, []).append({**base, "value": acc * scale})

    columns = list(spec["columns"])
    present = {r["optimizer"] for rs in by_scorer.values() for r in rs} | {
        r["optimizer"] for r in loss_records
    }
    if reduced:
        columns = [c for c in columns if c["optimizer"] in present]
    known = [c["optimizer"] for c in columns]
    columns += [
        {"optimizer": o, "label": extra_label(o), "values": {}}
        for o in sorted(present - set(known))
    ]
    header = ["Metric", ""] + [c["label"] for c in columns]

    def cells(chosen, column: str) -> list[Cell | None]:
        out = []
        for col in columns:
            hit = chosen.get((col["optimizer"],))
            values = hit[1][column].dropna().tolist() if hit else []
            out.append(Cell(values, hit[0]) if values else None)
        return out

    def scale_cells(chosen) -> list[Cell | None]:
        return [
            _scale_cell(chosen[(c["optimizer"],)][1], chosen[(c["optimizer"],)][0])
            if (c["optimizer"],) in chosen
            else None
            for c in columns
        ]

    rows = [["Accuracy", "paper"] + [format_paper(c["values"].get("accuracy"), 2) for c in columns]]
    notes = _scales_note(gsm_runs)
    if reduced:
        chosen = _cells_by_group(loss_records, ["optimizer"], "min")
        n_em = {r.config.get("data", {}).get("eval_generate_examples") for r in gsm_runs} - {
            None,
            0,
        }
        rows += [
            ["Answer loss (test)", ours] + [format_cell(c, 3) for c in cells(chosen, "value")],
            ["Exact match", ours] + [format_cell(c, 2) for c in cells(chosen, "em")],
            ["Train loss", "paper"]
            + [format_paper(c["values"].get("train_loss"), 3) for c in columns],
            ["", ours] + [format_cell(c, 3) for c in cells(chosen, "train_loss")],
            ["", "seeds @ lr"] + [_seeds_at_lr(c) for c in cells(chosen, "value")],
            ["Step scale", ours] + [format_cell(c, 2) for c in scale_cells(chosen)],
        ]
        notes += [
            f"{ours}: lr chosen on the held-out answer loss (final.val_loss: token-averaged loss "
            "of the answer tokens of all test problems), not on accuracy; the same split is "
            "reported, so the loss is optimistic for every method alike.",
            "Exact match: the trainer's built-in greedy scorer (strict `#### <number>` match), "
            f"0-shot, first {', '.join(str(n) for n in sorted(n_em)) or '?'} test problems, "
            "x100; not comparable to the paper's lm-eval accuracy.",
        ]
        table_name = experiment
        grid_source = loss_records
        grid_digits = 3
    else:
        train_rows: list[list[str]] = []
        seed_rows: list[list[str]] = []
        chosen = {}
        for scorer, records in sorted(by_scorer.items()):
            chosen = _cells_by_group(records, ["optimizer"], "max")
            rows.append(
                [f"Accuracy ({scorer})" if len(by_scorer) > 1 else "", ours]
                + [format_cell(c, 2) for c in cells(chosen, "value")]
            )
            train_rows.append(["", ours] + [format_cell(c, 3) for c in cells(chosen, "train_loss")])
            seed_rows.append(["", "seeds @ lr"] + [_seeds_at_lr(c) for c in cells(chosen, "value")])
        if not by_scorer:
            rows.append(["", ours] + [MISSING] * len(columns))
            train_rows.append(["", ours] + [MISSING] * len(columns))
            seed_rows.append(["", "seeds @ lr"] + [MISSING] * len(columns))
        rows.append(
            ["Train loss", "paper"]
            + [format_paper(c["values"].get("train_loss"), 3) for c in columns]
        )
        rows += train_rows + seed_rows
        if len(by_scorer) == 1:
            notes.append(f"accuracy scorer: {next(iter(by_scorer))}")
        elif len(by_scorer) > 1:
            notes.append(
                "runs were scored by different scorers; each has its own accuracy row (never "
                "averaged together): " + "; ".join(sorted(by_scorer))
            )
        notes.append(
            f"{ours}: summary.final.{accuracy_key} x{scale:g} and summary.final.train_loss; lr "
            "chosen on accuracy (equal seed counts); mean ± sd over seeds."
        )
        table_name = "table2"
        grid_source = [r for rs in by_scorer.values() for r in rs] if len(by_scorer) == 1 else []
        grid_digits = 2
    notes += _paper_note(experiment, paper_experiment)
    table = Table(
        table_name,
        _title(spec["title"], experiment, paper_experiment),
        header,
        rows,
        notes,
        problems,
    )
    if reduced and loss_records:
        paired = _paired(loss_records, chosen, lambda key, base: (base,), ["value", "em"])
        paired_rows = [
            [c["label"], format_paired(paired[(c["optimizer"],)]["value"], 3),
             format_paired(paired[(c["optimizer"],)]["em"], 2)]
            for c in columns
            if (c["optimizer"],) in paired
        ]  # fmt: skip
        if paired_rows:
            table.parts.append(
                Table(
                    f"{table_name}_paired",
                    "Paired difference from AdamW (same seed, each at its chosen lr)",
                    ["Method", "Answer loss (test)", "Exact match"],
                    paired_rows,
                    ["negative loss / positive exact match = better than AdamW."],
                )
            )
    if grid_source:
        grid_header, grid_rows, grid_notes = _grid_rows(
            grid_source,
            chosen,
            ["optimizer"],
            lambda key: [_label(spec["columns"], key[0])],
            grid_digits,
        )
        table.parts.append(
            Table(
                f"{table_name}_grid",
                "Every lr of the grid: mean over its seeds (seed count); * = chosen",
                ["Method", *grid_header[1:]],
                grid_rows,
                grid_notes,
            )
        )
    return table


# --- Table 3 --------------------------------------------------------------------------


def val_loss_at(run: Run, fraction: float, tol: float = FRACTION_TOL) -> float:
    """Validation loss of the eval record nearest to ``fraction`` of the run (NaN if none)."""
    evals = run.eval_curve()
    if evals.empty or "val_loss" not in evals:
        return float("nan")
    evals = evals.dropna(subset=["val_loss"])
    distance = (evals["fraction"] - fraction).abs()
    if evals.empty or distance.min() > tol:
        return float("nan")
    return float(evals.loc[distance.idxmin(), "val_loss"])


def table3_run_values(run: Run) -> dict[str, float]:
    v = {f"{round(f * 100)}%": val_loss_at(run, f) for f in TABLE3_FRACTIONS}
    v["avg_early"] = (v["20%"] + v["40%"]) / 2
    v["avg_late"] = (v["60%"] + v["100%"]) / 2
    return v


def build_table3(runs: RunSet, paper: dict[str, Any], experiment: str = "ablation_table3") -> Table:
    spec = paper["table3"]
    paper_experiment = PAPER_EXPERIMENTS["table3"]
    reduced = _is_reduced(experiment, paper_experiment)
    ours = _ours(experiment, paper_experiment)
    problems: list[Problem] = []
    abl_runs, dup = _dedupe_seeds(runs.select(experiment=experiment), ("optimizer",))
    problems += dup
    records = []
    for run in abl_runs:
        values = table3_run_values(run)
        missing = [k for k in ("20%", "40%", "60%", "100%") if math.isnan(values[k])]
        if missing:
            problems.append(
                Problem(
                    run.path,
                    "metrics.jsonl",
                    f"no eval record within {FRACTION_TOL:g} of fraction(s) {', '.join(missing)}; "
                    "those cells use the other seeds only",
                )
            )
        records.append(
            {
                "optimizer": run.optimizer,
                "lr": run.lr,
                "seed": run.seed,
                "value": values["100%"],
                "step_scale": _step_scale(run.summary),
                **values,
            }
        )
    chosen = _cells_by_group(records, ["optimizer"], "min")
    columns = ["20%", "40%", "avg_early", "60%", "100%", "avg_late"]
    header = [
        "Method", "", "20%", "40%", "Avg(Early)", "60%", "100%", "Avg(Late)", "step scale",
        "seeds @ lr",
    ]  # fmt: skip
    present = {r["optimizer"] for r in records}
    entries = [e for e in spec["rows"] if not reduced or e["optimizer"] in present]
    known = [e["optimizer"] for e in spec["rows"]]
    entries += [
        {"optimizer": o, "label": extra_label(o), "values": {}}
        for o in sorted(present - set(known))
    ]
    rows = []
    for entry in entries:
        hit = chosen.get((entry["optimizer"],))
        rows.append(
            [entry["label"], "paper"]
            + [format_paper(entry["values"].get(c), 3) for c in columns]
            + [MISSING, MISSING]
        )
        if hit:
            lr, sub = hit
            cells = [Cell(sub[c].dropna().tolist(), lr) for c in columns]
            rows.append(
                ["", ours]
                + [format_cell(c, 3) for c in cells]
                + [
                    format_cell(_scale_cell(sub, lr), 2),
                    _seeds_at_lr(Cell(sub["value"].tolist(), lr)),
                ]
            )
        else:
            rows.append(["", ours] + [MISSING] * (len(columns) + 2))
    notes = (
        _scales_note(abl_runs)
        + [
            f"{ours}: val_loss of experiment={experiment!r} at 20/40/60/100% of max_steps "
            f"(eval record within {FRACTION_TOL:g}); Avg(Early)=mean(20%,40%), "
            "Avg(Late)=mean(60%,100%) per run, then mean ± sd over seeds; lr chosen on the final "
            "(100%) val loss, every lr compared on equal seed counts.",
            "step scale: mean over seeds of the run's mean lr multiplier of the masked update "
            "(alpha * d / (nnz + 1)); 1 = the lr as given (no mask).",
        ]
        + _paper_note(experiment, paper_experiment)
    )
    table = Table(
        "table3" if not reduced else experiment,
        _title(spec["title"], experiment, paper_experiment),
        header,
        rows,
        notes,
        problems,
    )
    if records:
        paired = _paired(records, chosen, lambda key, base: (base,), ["100%", "avg_early"])
        paired_rows = [
            [e["label"], format_paired(paired[(e["optimizer"],)]["100%"], 3),
             format_paired(paired[(e["optimizer"],)]["avg_early"], 3)]
            for e in entries
            if (e["optimizer"],) in paired
        ]  # fmt: skip
        if paired_rows:
            table.parts.append(
                Table(
                    f"{table.name}_paired",
                    "Paired difference from AdamW (same seed, each at its chosen lr)",
                    ["Method", "100%", "Avg(Early)"],
                    paired_rows,
                    ["negative = lower validation loss than AdamW."],
                )
            )
        grid_header, grid_rows, grid_notes = _grid_rows(
            records, chosen, ["optimizer"], lambda key: [_label(spec["rows"], key[0])], 3
        )
        table.parts.append(
            Table(
                f"{table.name}_grid",
                "Every lr of the grid: final (100%) val loss, mean over its seeds (seed count); "
                "* = chosen",
                ["Method", *grid_header[1:]],
                grid_rows,
                grid_notes,
            )
        )
    return table


def experiments_of(runs: RunSet, table: str) -> list[str]:
    """The paper-scale experiment of ``table`` and every other experiment with runs of its
    kind (GLUE, GSM8K, or a Table 3 ablation: ``reduced_table3``), paper first."""
    paper_experiment = PAPER_EXPERIMENTS[table]
    if table == "table1":
        found = {r.experiment for r in runs.select(task="glue")}
    elif table == "table2":
        found = {r.experiment for r in runs.select(task="gsm8k")}
    else:
        found = {r.experiment for r in runs.runs if r.experiment == "reduced_table3"}
    return [paper_experiment] + sorted(found - {paper_experiment})


def build_all(runs: RunSet, paper: dict[str, Any], **options: Any) -> list[Table]:
    tables = []
    for experiment in experiments_of(runs, "table1"):
        tables.append(
            build_table1(
                runs, paper, value_source=options.get("glue_value", "best"), experiment=experiment
            )
        )
    for experiment in experiments_of(runs, "table2"):
        tables.append(
            build_table2(
                runs,
                paper,
                accuracy_key=options.get("gsm8k_accuracy_key", "accuracy"),
                experiment=experiment,
            )
        )
    table3 = options.get("table3_experiment", PAPER_EXPERIMENTS["table3"])
    for experiment in [table3] + [e for e in experiments_of(runs, "table3")[1:] if e != table3]:
        tables.append(build_table3(runs, paper, experiment=experiment))
    return tables


def write_tables(tables: list[Table], out_dir: str | Path) -> list[Path]:
    """Each table to ``<name>.md``/``.tex`` (with its parts under it), and each part again on
    its own (``<name>_paired``, ``<name>_grid``) for documents that show only some."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in [*tables, *(part for t in tables for part in t.parts)]:
        for suffix, text in ((".md", table.to_markdown()), (".tex", table.to_latex())):
            path = out_dir / f"{table.name}{suffix}"
            tmp = path.with_suffix(suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            written.append(path)
    return written
