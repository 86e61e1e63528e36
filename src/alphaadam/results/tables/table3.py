"""Table 3 (the ablation): validation loss at 20/40/60/100 % of training, Avg(Early) and
Avg(Late), per method at its chosen lr."""

from __future__ import annotations

import math
from typing import Any

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

FRACTION_TOL = 0.01
TABLE3_FRACTIONS = (0.2, 0.4, 0.6, 1.0)


def val_loss_at(
    run: Run, fraction: float, tol: float = FRACTION_TOL, key: str = "val_loss"
) -> float:
    """``key`` (validation loss by default) of the eval record nearest to ``fraction`` of the
    run (NaN if none)."""
    evals = run.eval_curve()
    if evals.empty or key not in evals:
        return float("nan")
    evals = evals.dropna(subset=[key])
    distance = (evals["fraction"] - fraction).abs()
    if evals.empty or distance.min() > tol:
        return float("nan")
    return float(evals.loc[distance.idxmin(), key])


def table3_run_values(run: Run, key: str = "val_loss") -> dict[str, float]:
    """``key`` at 20/40/60/100 % of the run, Avg(Early) and Avg(Late)."""
    v = {f"{round(f * 100)}%": val_loss_at(run, f, key=key) for f in TABLE3_FRACTIONS}
    v["avg_early"] = (v["20%"] + v["40%"]) / 2
    v["avg_late"] = (v["60%"] + v["100%"]) / 2
    return v


def build_table3(runs: RunSet, paper: dict[str, Any], experiment: str = "ablation_table3") -> Table:
    spec = paper["table3"]
    paper_experiment = PAPER_EXPERIMENTS["table3"]
    reduced = is_reduced(experiment, paper_experiment)
    ours = ours_label(experiment, paper_experiment)
    problems: list[Problem] = []
    abl_runs, dup = dedupe_seeds(runs.select(experiment=experiment), ("optimizer",))
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
                "step_scale": step_scale_of(run.summary),
                **values,
            }
        )
    chosen = chosen_by_group(records, ["optimizer"], "min")
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
                    format_cell(scale_cell(sub, lr), 2),
                    seeds_at_lr(Cell(sub["value"].tolist(), lr)),
                ]
            )
        else:
            rows.append(["", ours] + [MISSING] * (len(columns) + 2))
    # A control that runs each method at one fixed lr chose nothing; saying it did would
    # misdescribe the table.
    one_lr_each = bool(records) and all(
        len({r["lr"] for r in records if r["optimizer"] == o}) == 1 for o in present
    )
    selection = (
        "each method ran one lr, fixed by the study's design (no grid, nothing chosen)."
        if one_lr_each
        else "lr chosen on the final (100%) val loss, every lr compared on equal seed counts."
    )
    notes = (
        scales_note(abl_runs)
        + [
            f"{ours}: val_loss of experiment={experiment!r} at 20/40/60/100% of max_steps "
            f"(eval record within {FRACTION_TOL:g}); Avg(Early)=mean(20%,40%), "
            f"Avg(Late)=mean(60%,100%) per run, then mean ± sd over seeds; {selection}",
            "step scale: mean over seeds of the run's mean lr multiplier of the masked update "
            "(alpha * d / (nnz + 1)); 1 = the lr as given (no mask).",
        ]
        + paper_note(experiment, paper_experiment)
    )
    table = Table(
        "table3" if not reduced else experiment,
        title_of(spec["title"], experiment, paper_experiment),
        header,
        rows,
        notes,
        problems,
    )
    if records:
        paired = paired_differences(
            records, chosen, lambda key, base: (base,), ["100%", "avg_early"]
        )
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
        grid_header, grid_rows, grid_notes = lr_grid_rows(
            records, chosen, ["optimizer"], lambda key: [label_of(spec["rows"], key[0])], 3
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
