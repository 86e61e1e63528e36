"""Table 2 (GSM8K): accuracy per scorer at the paper's scale; the held-out answer loss and
the in-training exact match at reduced scale."""

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


def describe_scorer(run: Run) -> str | None:
    """Which scorer produced ``final.accuracy``: harness, few-shot count, test problems."""
    info = run.summary.get("accuracy_eval")
    if not isinstance(info, dict):
        return None
    shots = info.get("num_fewshot")
    limit = info.get("limit")
    problems = "all test problems" if limit in (None, 0) else f"first {limit} test problems"
    return f"{info.get('harness', '?')}, {shots if shots is not None else '?'}-shot, {problems}"


def table2_records(
    runs: RunSet, experiment: str, reduced: bool, accuracy_key: str, percent: float
) -> tuple[list[Run], dict[str, list[dict[str, Any]]], list[dict[str, Any]], list[Problem]]:
    """Which runs count for one experiment's Table 2: at the paper's scale, accuracy records
    per scorer; reduced, answer-loss records (``value`` = final.val_loss, the choice;
    ``test_loss`` where a validation split was held out; ``em`` = exact match x percent)."""
    problems: list[Problem] = []
    gsm_runs, dup = dedupe_seeds(runs.select(task="gsm8k", experiment=experiment), ("optimizer",))
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
            "test_loss": float("nan") if final.get("test_loss") is None else final["test_loss"],
            "step_scale": step_scale_of(run.summary),
        }
        if reduced:
            em = final.get("exact_match_strict")
            loss_records.append(
                {
                    **base,
                    "value": base["val_loss"],
                    "em": float("nan") if em is None else em * percent,
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
        by_scorer.setdefault(scorer, []).append({**base, "value": acc * percent})
    return gsm_runs, by_scorer, loss_records, problems


def build_table2(
    runs: RunSet,
    paper: dict[str, Any],
    accuracy_key: str = "accuracy",
    percent: float = 100.0,
    experiment: str = PAPER_EXPERIMENTS["table2"],
) -> Table:
    """Accuracy is never averaged across scorers: one accuracy row per scorer, and the lr of
    each is chosen on that scorer's runs. A reduced experiment is chosen on the held-out answer
    loss and shows the in-training exact match as its own row."""
    spec = paper["table2"]
    paper_experiment = PAPER_EXPERIMENTS["table2"]
    reduced = is_reduced(experiment, paper_experiment)
    ours = ours_label(experiment, paper_experiment)
    gsm_runs, by_scorer, loss_records, problems = table2_records(
        runs, experiment, reduced, accuracy_key, percent
    )
    # A validation split (data.validation_examples): chosen on val_loss, reported on test_loss.
    held_out = any(not math.isnan(r["test_loss"]) for r in loss_records)
    reported = "test_loss" if held_out else "value"
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
    header = ["Metric", ""] + [c.get("name", c["label"]) for c in columns]

    def cells(chosen, column: str) -> list[Cell | None]:
        out = []
        for col in columns:
            hit = chosen.get((col["optimizer"],))
            values = hit[1][column].dropna().tolist() if hit else []
            out.append(Cell(values, hit[0]) if values else None)
        return out

    def scale_cells(chosen) -> list[Cell | None]:
        return [
            scale_cell(chosen[(c["optimizer"],)][1], chosen[(c["optimizer"],)][0])
            if (c["optimizer"],) in chosen
            else None
            for c in columns
        ]

    rows = [["Accuracy", "paper"] + [format_paper(c["values"].get("accuracy"), 2) for c in columns]]
    notes = scales_note(gsm_runs)
    if reduced:
        chosen = chosen_by_group(loss_records, ["optimizer"], "min")
        n_em = {r.config.get("data", {}).get("eval_generate_examples") for r in gsm_runs} - {
            None,
            0,
        }
        rows += [
            ["Answer loss (test)", ours] + [format_cell(c, 3) for c in cells(chosen, reported)],
            *(
                [
                    ["Answer loss (validation)", ours]
                    + [format_cell(c, 3) for c in cells(chosen, "value")]
                ]
                if held_out
                else []
            ),
            ["Exact match", ours] + [format_cell(c, 2) for c in cells(chosen, "em")],
            ["Train loss", "paper"]
            + [format_paper(c["values"].get("train_loss"), 3) for c in columns],
            ["", ours] + [format_cell(c, 3) for c in cells(chosen, "train_loss")],
            ["", "seeds @ lr"] + [seeds_at_lr(c) for c in cells(chosen, "value")],
            ["Step scale", ours] + [format_cell(c, 2) for c in scale_cells(chosen)],
        ]
        n_val = {r.config.get("data", {}).get("validation_examples") for r in gsm_runs} - {
            None,
            0,
        }
        notes += [
            f"{ours}: lr chosen on the answer loss (token-averaged loss of the answer tokens) of "
            f"the validation split (final.val_loss: the last {', '.join(map(str, sorted(n_val)))} "
            "training problems, held out of training), not on accuracy; reported on all test "
            "problems (final.test_loss), which never took part in the choice."
            if held_out
            else f"{ours}: lr chosen on the held-out answer loss (final.val_loss: token-averaged "
            "loss of the answer tokens of all test problems), not on accuracy; the same split is "
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
            chosen = chosen_by_group(records, ["optimizer"], "max")
            rows.append(
                [f"Accuracy ({scorer})" if len(by_scorer) > 1 else "", ours]
                + [format_cell(c, 2) for c in cells(chosen, "value")]
            )
            train_rows.append(["", ours] + [format_cell(c, 3) for c in cells(chosen, "train_loss")])
            seed_rows.append(["", "seeds @ lr"] + [seeds_at_lr(c) for c in cells(chosen, "value")])
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
            f"{ours}: summary.final.{accuracy_key} x{percent:g} and summary.final.train_loss; lr "
            "chosen on accuracy (equal seed counts); mean ± sd over seeds."
        )
        table_name = "table2"
        grid_source = [r for rs in by_scorer.values() for r in rs] if len(by_scorer) == 1 else []
        grid_digits = 2
    notes += paper_note(experiment, paper_experiment)
    table = Table(
        table_name,
        title_of(spec["title"], experiment, paper_experiment),
        header,
        rows,
        notes,
        problems,
    )
    if reduced and loss_records:
        paired = paired_differences(
            loss_records, chosen, lambda key, base: (base,), [reported, "em"]
        )
        paired_rows = [
            [c.get("name", c["label"]), format_paired(paired[(c["optimizer"],)][reported], 3),
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
        grid_header, grid_rows, grid_notes = lr_grid_rows(
            grid_source,
            chosen,
            ["optimizer"],
            lambda key: [label_of(spec["columns"], key[0])],
            grid_digits,
        )
        table.parts.append(
            Table(
                f"{table_name}_grid",
                (
                    "Every lr of the grid: validation answer loss (the lr choice), mean over its "
                    "seeds (seed count); * = chosen"
                    if held_out
                    else "Every lr of the grid: mean over its seeds (seed count); * = chosen"
                ),
                ["Method", *grid_header[1:]],
                grid_rows,
                grid_notes,
            )
        )
    return table
