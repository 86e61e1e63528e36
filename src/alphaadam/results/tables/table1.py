"""Table 1 (GLUE fine-tuning): per task and optimizer, the dev metric of ``summary.best``
(x100) at the lr chosen on equal seed counts, beside the paper's values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..runs import Problem, Run, RunSet
from .layout import (
    PAPER_EXPERIMENTS,
    extra_label,
    is_reduced,
    label_of,
    lr_grid_rows,
    ours_label,
    paper_note,
    scales_note,
    seeds_at_lr,
    title_of,
)
from .render import MISSING, Cell, Table, format_cell, format_paired, format_paper
from .stats import chosen_by_group, dedupe_seeds, paired_differences, scale_cell, step_scale_of


def canonical_glue_task(name: str) -> str:
    """``STS-B`` / ``sts_b`` / ``stsb`` all name one task."""
    return name.lower().replace("-", "").replace("_", "")


@dataclass
class GlueRecords:
    """Which runs count for one experiment's Table 1: one record per run (task, optimizer,
    lr, seed, value x percent, step scale), the runs left out and why, and per task its metric
    and whether it is maximised."""

    runs: list[Run]
    records: list[dict[str, Any]]
    problems: list[Problem]
    metric_of_task: dict[str, str]
    mode_by_task: dict[str, str]


# Methods that isolate a cause rather than compete: reduced Table 1's rescale ablation.
ABLATION_METHODS = ("alphaadam_norescale", "alphaadam_embed_norescale")
# The rescale ablation's rows: the methods it isolates against, then the variants.
ABLATION_ROWS = ("adamw", "alphaadam", "alphaadam_norescale", "alphaadam_embed_norescale",
                 "alphaadam_active", "cadamw", "cadamw_active")  # fmt: skip


def table1_records(
    runs: RunSet, tasks: list[str], experiment: str, value_source: str, percent: float
) -> GlueRecords:
    all_tasks = [canonical_glue_task(t) for t in tasks]
    problems: list[Problem] = []
    glue_runs, dup = dedupe_seeds(
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
                "value": value * percent,
                "step_scale": step_scale_of(run.summary),
            }
        )
    mode_by_task = {t: "max" for t in all_tasks}
    for run in glue_runs:
        mode_by_task[canonical_glue_task(run.summary["dataset"])] = run.summary["primary_mode"]
    return GlueRecords(glue_runs, records, problems, metric_of_task, mode_by_task)


def build_table1(
    runs: RunSet,
    paper: dict[str, Any],
    value_source: str = "best",
    percent: float = 100.0,
    experiment: str = PAPER_EXPERIMENTS["table1"],
) -> Table:
    spec = paper["table1"]
    paper_experiment = PAPER_EXPERIMENTS["table1"]
    reduced = is_reduced(experiment, paper_experiment)
    all_tasks = [canonical_glue_task(t) for t in spec["tasks"]]
    selected = table1_records(runs, spec["tasks"], experiment, value_source, percent)
    glue_runs, problems = selected.runs, selected.problems
    # The rescale ablation has a table of its own (build_rescale_ablation), never these rows.
    records = [r for r in selected.records if r["optimizer"] not in ABLATION_METHODS]
    metric_of_task, mode_by_task = selected.metric_of_task, selected.mode_by_task
    chosen: dict[tuple, tuple[float, pd.DataFrame]] = {}
    for task in all_tasks:
        sub = [r for r in records if r["task"] == task]
        chosen.update(chosen_by_group(sub, ["task", "optimizer"], mode_by_task[task]))

    labels = spec["task_labels"]
    # A reduced study shows the tasks it ran; the paper-scale table all seven.
    shown = [t for t in spec["tasks"] if not reduced or any(r["task"] == t for r in records)]
    ours = ours_label(experiment, paper_experiment)
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
            scales[task] = scale_cell(hit[1], hit[0]) if hit else None
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
            + [seeds_at_lr(cells[canonical_glue_task(t)]) for t in shown]
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
        scales_note([r for r in glue_runs if r.optimizer not in ABLATION_METHODS])
        + [
            f"{ours}: summary.{value_source}[primary_metric] x{percent:g}; per task and optimizer the lr "
            "chosen on equal seed counts, then mean ± sd over every seed at that lr. " + avg_note,
            "step scale: mean over seeds of the run's mean lr multiplier of the masked update "
            "(alpha * d / (nnz + 1)); 1 = the lr as given (no mask).",
        ]
        + paper_note(experiment, paper_experiment)
    )
    if metrics:
        notes.append(f"metrics: {metrics}")
    table = Table(
        "table1" if not reduced else experiment,
        title_of(spec["title"], experiment, paper_experiment),
        header,
        rows,
        notes,
        problems,
    )
    if records:
        task_keys = [canonical_glue_task(t) for t in shown]
        paired = paired_differences(
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
        table.parts.append(
            _grid_part(table.name, "Every lr of the grid", records, chosen, labels, spec)
        )
    return table


def build_rescale_ablation(
    runs: RunSet,
    paper: dict[str, Any],
    experiment: str,
    value_source: str = "best",
    percent: float = 100.0,
) -> Table | None:
    """Reduced Table 1's rescale ablation (docs/reproduction.md, "Sparse gradients and the
    rescale"): on the tasks its ablation methods ran, every row of :data:`ABLATION_ROWS` at
    its own chosen lr, its step scale and its paired difference from AdamW. ``None`` when no
    ablation method has runs."""
    spec = paper["table1"]
    selected = table1_records(runs, spec["tasks"], experiment, value_source, percent)
    records = selected.records
    tasks = [
        canonical_glue_task(t)
        for t in spec["tasks"]
        if any(r["task"] == t and r["optimizer"] in ABLATION_METHODS for r in records)
    ]
    if not tasks:
        return None
    chosen: dict[tuple, tuple[float, pd.DataFrame]] = {}
    for task in tasks:
        sub = [r for r in records if r["task"] == task]
        chosen.update(chosen_by_group(sub, ["task", "optimizer"], selected.mode_by_task[task]))
    paired = paired_differences(records, chosen, lambda key, base: (key[0], base), ["value"])
    labels = spec["task_labels"]
    header = ["Method"]
    for task in tasks:
        header += [labels[task], "seeds @ lr", "step scale", "vs AdamW"]
    rows = []
    for method in ABLATION_ROWS:
        if not any((t, method) in chosen for t in tasks):
            continue
        row = [label_of(spec["rows"], method)]
        for task in tasks:
            hit = chosen.get((task, method))
            cell = Cell(hit[1]["value"].tolist(), hit[0]) if hit else None
            row += [
                format_cell(cell, 2),
                seeds_at_lr(cell),
                format_cell(scale_cell(hit[1], hit[0]), 2) if hit else MISSING,
                format_paired(paired.get((task, method), {}).get("value"), 2),
            ]
        rows.append(row)
    table = Table(
        f"{experiment}_rescale_ablation",
        f"Rescale ablation beside reduced Table 1 ({experiment}): which part of the rescale "
        "fails on sparse gradients",
        header,
        rows,
        scales_note(
            [
                r
                for r in selected.runs
                if r.optimizer in ABLATION_ROWS
                and canonical_glue_task(r.summary["dataset"]) in tasks
            ]
        )
        + [
            "Each row at its own lr (the Table 1 grid, widened at an edge), mean ± sd over 3 "
            "seeds; vs AdamW: paired difference (same seed) with its 95% t interval, positive = "
            "better. No rescale: AlphaAdam without d/(nnz+1) on any tensor; ... on the word "
            "embedding: without it on that tensor alone (a param-group setting). "
            "rescale=active: d counts only the elements with a nonzero gradient (an extension).",
            "step scale: the mean over tensors and training of alpha * d / (nnz + 1), the lr "
            "multiplier of the masked update.",
        ],
        selected.problems,
    )
    # Each variant's whole grid, so that "chosen inside its grid" can be checked here too
    # (Table 1's grid part leaves the ablation methods out).
    ablation_records = [
        r for r in records if r["task"] in tasks and r["optimizer"] in ABLATION_ROWS
    ]
    order = {m: i for i, m in enumerate(ABLATION_ROWS)}
    ablation_records.sort(key=lambda r: (tasks.index(r["task"]), order[r["optimizer"]]))
    table.parts.append(
        _grid_part(
            table.name, "Every lr of each row's grid", ablation_records, chosen, labels, spec
        )
    )
    return table


def _grid_part(
    name: str,
    what: str,
    records: list[dict[str, Any]],
    chosen: dict[tuple, tuple[float, pd.DataFrame]],
    labels: dict[str, str],
    spec: dict[str, Any],
) -> Table:
    """The ``<name>_grid`` part: per (task, method), every lr tried and its mean."""
    grid_header, grid_rows, grid_notes = lr_grid_rows(
        records,
        chosen,
        ["task", "optimizer"],
        lambda key: [labels.get(key[0], key[0]), label_of(spec["rows"], key[1])],
        2,
    )
    return Table(
        f"{name}_grid",
        f"{what}: mean over its seeds (seed count); * = chosen",
        ["Task", "Method", *grid_header[2:]],
        grid_rows,
        grid_notes,
    )
