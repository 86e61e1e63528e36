"""The scaling study (configs/sweep/reduced_scaling.yaml): reduced Table 3's ablation at
several widths and training lengths, each method's lr chosen on the validation half of the
held-out text and every number reported on the test half.

One table per point (``reduced_scaling_<point>``), in reduced Table 3's format but of test
loss, with the effective step (lr x step scale), the paired differences from AdamW (also on
seeds 2-3 alone: seed 1 chose the lr), the smallest difference the seeds could have detected,
the "shared lr" comparison (every method at AdamW's chosen lr, the paper's protocol), the
last two validation evaluations (does the loss still fall at the end?) and the lr grid; and one
summary table across points (``reduced_scaling``), with AlphaAdam paired against CAdamW.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..runs import Problem, Run, RunSet
from .layout import extra_label, lr_grid_rows, scales_note, seeds_at_lr, versions_note
from .render import MISSING, Cell, Table, format_cell, format_lr, format_paired
from .stats import (
    chosen_by_group,
    dedupe_seeds,
    detectable_difference,
    paired_differences,
    scale_cell,
    step_scale_of,
)
from .table3 import FRACTION_TOL, table3_run_values

PREFIX = "reduced_scaling_"
METHODS = ("adamw", "adamw_sm", "adamw_am", "alphaadam")
LABELS = {"adamw": "AdamW", "adamw_sm": "CAdamW (+SM)", "adamw_am": "AdamW + AM",
          "alphaadam": "AlphaAdam"}  # fmt: skip
GRID_SEED = 1  # the seed every lr of a grid ran with, and so the one that chose the lr
COLUMNS = ["20%", "40%", "avg_early", "60%", "100%", "avg_late"]


def label(optimizer: str) -> str:
    return LABELS.get(optimizer, extra_label(optimizer))


def scaling_experiments(runs: RunSet) -> list[str]:
    """The study's points with runs, smallest model first, then shortest training."""
    found = {r.experiment for r in runs.runs if r.experiment.startswith(PREFIX)}
    return sorted(found, key=lambda e: point_order(e.removeprefix(PREFIX)))


def point_order(point: str) -> tuple[int, int]:
    match = re.fullmatch(r"d(\d+)_s(\d+)", point)
    return (int(match[1]), int(match[2])) if match else (10**9, 10**9)


@functools.cache
def _parameter_count(block: int, vocab: int, layers: int, heads: int, width: int) -> int:
    import torch

    from ...models.gpt import build_gpt

    with torch.device("meta"):
        model = build_gpt(
            block_size=block, vocab_size=vocab, n_layer=layers, n_head=heads, n_embd=width
        )
    return sum(p.numel() for p in model.parameters())


def parameter_count(run: Run) -> int | None:
    """The run's GPT parameters (embeddings included, the tied head once), from its config."""
    model, data = run.config.get("model", {}), run.config.get("data", {})
    try:
        # Byte-level: 256 tokens, padded to the config's multiple (256).
        multiple = int(model.get("pad_vocab_multiple", 64))
        vocab = model.get("vocab_size") or math.ceil(256 / multiple) * multiple
        return _parameter_count(
            int(data["block_size"]), int(vocab), int(model["n_layer"]), int(model["n_head"]),
            int(model["n_embd"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Point:
    """One point of the study: its runs' records and the choices made on them."""

    experiment: str
    runs: list[Run]
    records: list[dict[str, Any]]
    problems: list[Problem]
    chosen: dict[tuple, tuple[float, pd.DataFrame]]

    @property
    def name(self) -> str:
        return self.experiment.removeprefix(PREFIX)

    @property
    def methods(self) -> list[str]:
        present = {r["optimizer"] for r in self.records}
        return [m for m in METHODS if m in present] + sorted(present - set(METHODS))

    def shared_rows(self, baseline: str = "adamw") -> dict[str, pd.DataFrame]:
        """Every method's runs at the baseline's chosen lr (the paper's one-lr protocol)."""
        if (baseline,) not in self.chosen:
            return {}
        lr = self.chosen[(baseline,)][0]
        frame = pd.DataFrame(self.records)
        return {
            m: frame[(frame["optimizer"] == m) & (frame["lr"] == lr)]
            for m in self.methods
            if ((frame["optimizer"] == m) & (frame["lr"] == lr)).any()
        }


def scaling_point(runs: RunSet, experiment: str) -> Point:
    """Which runs count for one point: one per (method, lr, seed); its records carry the test
    loss at 20/40/60/100 % and the final validation loss (``value``, the lr choice)."""
    point_runs, problems = dedupe_seeds(runs.select(experiment=experiment), ("optimizer",))
    records = []
    for run in point_runs:
        test = table3_run_values(run, key="test_loss")
        missing = [k for k in ("20%", "40%", "60%", "100%") if math.isnan(test[k])]
        if missing:
            problems.append(
                Problem(
                    run.path,
                    "metrics.jsonl",
                    f"no test_loss eval record within {FRACTION_TOL:g} of fraction(s) "
                    f"{', '.join(missing)} (a run without data.test_fraction?)",
                )
            )
        value = (run.summary.get("final") or {}).get("val_loss")
        records.append(
            {
                "optimizer": run.optimizer,
                "lr": run.lr,
                "seed": run.seed,
                "value": math.nan if value is None else float(value),
                "step_scale": step_scale_of(run.summary),
                **test,
                **last_two_evals(run),
            }
        )
    chosen = chosen_by_group(records, ["optimizer"], "min")
    return Point(experiment, point_runs, records, problems, chosen)


def last_two_evals(run: Run) -> dict[str, float]:
    """The validation loss at the run's last two evaluations and their steps, to show
    whether it still falls at the end (the long point runs ~8 passes over its data)."""
    metrics = run.metrics
    keys = ("tail_from_step", "tail_to_step", "tail_from", "tail_to")
    if "val_loss" not in metrics or "step" not in metrics:
        return dict.fromkeys(keys, math.nan)
    evals = metrics.dropna(subset=["val_loss"]).drop_duplicates("step", keep="last")
    if len(evals) < 2:
        return dict.fromkeys(keys, math.nan)
    before, last = evals.sort_values("step").iloc[-2:].itertuples()
    return dict(
        zip(
            keys,
            (float(before.step), float(last.step), float(before.val_loss), float(last.val_loss)),
        )
    )


def _effective(lr: float, scale: Cell | None) -> str:
    return MISSING if scale is None else format_lr(lr * scale.mean)


def _seeds_2_3(cell: Cell | None, seeds: list[int]) -> Cell | None:
    """The paired differences without the grid seed's pair (that seed chose the lr)."""
    if cell is None:
        return None
    kept = [v for v, s in zip(cell.values, seeds) if s != GRID_SEED]
    return Cell(kept, cell.lr) if kept else None


def paired_with_seeds(
    point: Point, column: str, baseline: str = "adamw"
) -> dict[str, tuple[Cell, list[int]]]:
    """Per method, its per-seed differences from ``baseline`` (each at its chosen lr) and the
    seeds they pair."""
    paired = paired_differences(
        point.records, point.chosen, lambda key, b: (b,), [column], baseline=baseline
    )
    out = {}
    for (method,), cells in paired.items():
        base = set(point.chosen[(baseline,)][1]["seed"])
        mine = set(point.chosen[(method,)][1]["seed"])
        out[method] = (cells[column], sorted(base & mine))
    return out


def _format_detectable(cell: Cell | None) -> str:
    if cell is None or cell.n < 2:
        return MISSING
    return f"{detectable_difference(cell):.3f} (n={cell.n})"


def shared_paired(point: Point) -> dict[str, Cell]:
    """Per method, the per-seed test-loss differences from AdamW, all at AdamW's chosen lr."""
    shared = point.shared_rows()
    if "adamw" not in shared:
        return {}
    base = shared["adamw"].set_index("seed")["100%"]
    out = {}
    for method, sub in shared.items():
        if method == "adamw":
            continue
        mine = sub.set_index("seed")["100%"]
        seeds = sorted(set(base.index) & set(mine.index))
        out[method] = Cell([float(mine[s] - base[s]) for s in seeds], float(sub["lr"].iloc[0]))
    return out


def build_point_table(point: Point) -> Table:
    header = ["Method", "20%", "40%", "Avg(Early)", "60%", "100%", "Avg(Late)", "step scale",
              "lr x step scale", "seeds @ lr"]  # fmt: skip
    rows = []
    for method in point.methods:
        hit = point.chosen.get((method,))
        if not hit:
            rows.append([label(method)] + [MISSING] * (len(header) - 1))
            continue
        lr, sub = hit
        scale = scale_cell(sub, lr)
        rows.append(
            [label(method)]
            + [format_cell(Cell(sub[c].dropna().tolist(), lr), 3) for c in COLUMNS]
            + [format_cell(scale, 2), _effective(lr, scale), seeds_at_lr(Cell(sub["value"].tolist(), lr))]
        )  # fmt: skip
    table = Table(
        point.experiment,
        f"Scaling study, point {point.name}: test loss at each method's chosen lr",
        header,
        rows,
        scales_note(point.runs)
        + [
            "test_loss (the test half of the held-out text) at 20/40/60/100% of the run, mean ± "
            "sd over the seeds at the chosen lr; the lr was chosen on the final val_loss (the "
            "validation half) at seed 1, every lr compared on equal seed counts.",
            "step scale: the mean lr multiplier of the masked update (alpha * d / (nnz + 1)); "
            "lr x step scale: the effective step on the kept coordinates (AdamW: the lr).",
        ],
        point.problems,
    )
    final = paired_with_seeds(point, "100%")
    early = paired_with_seeds(point, "avg_early")
    paired_rows = []
    for method in point.methods:
        if method not in final:
            continue
        cell, seeds = final[method]
        paired_rows.append(
            [
                label(method),
                format_paired(cell, 3),
                format_paired(_seeds_2_3(cell, seeds), 3),
                _format_detectable(cell),
                format_paired(early[method][0], 3),
            ]
        )
    if paired_rows:
        table.parts.append(
            Table(
                f"{point.experiment}_paired",
                "Paired difference from AdamW in test loss (same seed, each at its chosen lr)",
                [
                    "Method",
                    "100%",
                    "100%, seeds 2-3 only",
                    "detectable at 80% power",
                    "Avg(Early)",
                ],  # fmt: skip
                paired_rows,
                [
                    "negative = lower test loss than AdamW; mean ± sd over seeds with the 95% t "
                    "interval.",
                    "seeds 2-3 only: without seed 1, whose grid chose every lr, so the "
                    "difference cannot come from picking a lucky seed (the winner's curse).",
                    "detectable at 80% power: the smallest true difference a two-sided paired "
                    "t-test (5%) on these pairs would find 4 times in 5, (t_.975 + t_.80) x sd / "
                    "sqrt(n); an interval that spans 0 leaves smaller differences unresolved.",
                ],
            )
        )
    shared = point.shared_rows()
    shared_diff = shared_paired(point)
    if shared:
        lr = point.chosen[("adamw",)][0]
        shared_rows = []
        for method in point.methods:
            if method not in shared:
                continue
            sub = shared[method]
            scale = scale_cell(sub, lr)
            shared_rows.append(
                [
                    label(method),
                    format_cell(Cell(sub["100%"].dropna().tolist(), lr), 3),
                    format_paired(shared_diff.get(method), 3) if method != "adamw" else MISSING,
                    format_cell(scale, 2),
                    _effective(lr, scale),
                    f"{len(sub)} @ {format_lr(lr)}",
                ]
            )
        table.parts.append(
            Table(
                f"{point.experiment}_shared",
                f"Shared lr: every method at AdamW's chosen lr ({format_lr(lr)}), the paper's "
                "protocol",
                [
                    "Method",
                    "100% test loss",
                    "paired difference from AdamW",
                    "step scale",
                    "lr x step scale",
                    "seeds @ lr",
                ],  # fmt: skip
                shared_rows,
                [
                    "At one nominal lr the masked methods take larger steps (step scale), so this "
                    "comparison partly measures step size; the tuned one above does not."
                ],
            )
        )
    tail = tail_table(point)
    if tail is not None:
        table.parts.append(tail)
    header_g, rows_g, notes_g = lr_grid_rows(
        point.records, point.chosen, ["optimizer"], lambda key: [label(key[0])], 3
    )
    table.parts.append(
        Table(
            f"{point.experiment}_grid",
            "Every lr of the grid: final val loss (the lr choice), mean over its seeds (seed "
            "count); * = chosen",
            ["Method", *header_g[1:]],
            rows_g,
            notes_g,
        )
    )
    return table


def tail_table(point: Point) -> Table | None:
    """The validation loss at the last two evaluations of each method's chosen-lr runs."""
    tail_rows = []
    for method in point.methods:
        hit = point.chosen.get((method,))
        if not hit:
            continue
        lr, sub = hit
        sub = sub.dropna(subset=["tail_from", "tail_to"])
        if sub.empty:
            continue
        steps = sorted(
            {(int(a), int(b)) for a, b in zip(sub["tail_from_step"], sub["tail_to_step"])}
        )
        tail_rows.append(
            [
                label(method),
                ", ".join(f"{a} -> {b}" for a, b in steps),
                format_cell(Cell(sub["tail_from"].tolist(), lr), 3),
                format_cell(Cell(sub["tail_to"].tolist(), lr), 3),
                format_paired(Cell((sub["tail_to"] - sub["tail_from"]).tolist(), lr), 3),
            ]
        )
    if not tail_rows:
        return None
    return Table(
        f"{point.experiment}_tail",
        "Does validation loss still fall at the end? The last two evaluations, at each "
        "method's chosen lr",
        ["Method", "steps", "val loss, earlier", "val loss, last", "change (same run)"],
        tail_rows,
        [
            "mean ± sd over the seeds at the chosen lr; change: last minus earlier "
            "evaluation within each run, with its 95% t interval (negative = still "
            "falling)."
        ],
    )


def _tokens(point: Point) -> str:
    run = point.runs[0]
    tokens = run.summary.get("tokens")
    steps = run.summary.get("max_steps")
    return f"{tokens / 1e6:.1f}M ({steps} steps)" if tokens else MISSING


def build_summary_table(points: list[Point]) -> Table:
    header = ["Point", "params", "tokens", "Method", "test loss", "vs AdamW (tuned)",
              "seeds 2-3 only", "detectable", "vs AdamW (shared lr)", "chosen lr",
              "step scale", "lr x step scale"]  # fmt: skip
    rows = []
    for point in points:
        params = parameter_count(point.runs[0])
        final = paired_with_seeds(point, "100%")
        shared = shared_paired(point)
        for i, method in enumerate(point.methods):
            hit = point.chosen.get((method,))
            if not hit:
                continue
            lr, sub = hit
            scale = scale_cell(sub, lr)
            cell, seeds = final.get(method, (None, []))
            rows.append(
                [
                    point.name if i == 0 else "",
                    (f"{params / 1e6:.2f}M" if params else MISSING) if i == 0 else "",
                    _tokens(point) if i == 0 else "",
                    label(method),
                    format_cell(Cell(sub["100%"].dropna().tolist(), lr), 3),
                    format_paired(cell, 3) if cell is not None else MISSING,
                    format_paired(_seeds_2_3(cell, seeds), 3) if cell is not None else MISSING,
                    _format_detectable(cell),
                    format_paired(shared.get(method), 3) if method in shared else MISSING,
                    seeds_at_lr(Cell(sub["value"].tolist(), lr)),
                    format_cell(scale, 2),
                    _effective(lr, scale),
                ]
            )
    summary = Table(
        "reduced_scaling",
        "Scaling study: the reduced Table 3 ablation across width and training length",
        header,
        rows,
        [
            "reduced: GPT-2 architecture, 4 layers, byte-level Tiny Shakespeare, block 256, "
            "batch 16, fp32, CPU; NOT the paper's setting. Every number is test loss (the test "
            "half of the held-out text) at the end of training; the lr of each method and point "
            "was chosen on the validation half (seed 1, equal seed counts).",
            "vs AdamW: paired difference (same seed) with its 95% t interval, negative = better "
            "than AdamW; tuned = each method at its own chosen lr, shared lr = every method at "
            "AdamW's (the paper's protocol). detectable: the smallest true difference the tuned "
            "pairs would detect at 80% power.",
            "params: the model's parameters (embeddings included, the tied head once); tokens: "
            "16 x 256 per step.",
            *versions_note([r for point in points for r in point.runs]),
        ],
        [p for point in points for p in point.problems],
    )
    versus = alphaadam_vs_cadamw_rows(points)
    if versus:
        summary.parts.append(
            Table(
                "reduced_scaling_alphaadam_vs_cadamw",
                "AlphaAdam against CAdamW (the paper: AlphaAdam ahead), test loss, same seed, "
                "each at its own chosen lr",
                [
                    "Point",
                    "100%",
                    "100%, seeds 2-3 only",
                    "detectable at 80% power",
                    "Avg(Early)",
                ],  # fmt: skip
                versus,
                [
                    "AlphaAdam minus CAdamW (+SM): negative = AlphaAdam lower; mean ± sd over "
                    "seeds with the 95% t interval; detectable as above."
                ],
            )
        )
    return summary


def alphaadam_vs_cadamw_rows(points: list[Point]) -> list[list[str]]:
    rows = []
    for point in points:
        final = paired_with_seeds(point, "100%", baseline="adamw_sm")
        if "alphaadam" not in final:
            continue
        cell, seeds = final["alphaadam"]
        early = paired_with_seeds(point, "avg_early", baseline="adamw_sm")["alphaadam"][0]
        rows.append(
            [
                point.name,
                format_paired(cell, 3),
                format_paired(_seeds_2_3(cell, seeds), 3),
                _format_detectable(cell),
                format_paired(early, 3),
            ]
        )
    return rows


def build_scaling_tables(runs: RunSet) -> list[Table]:
    points = [scaling_point(runs, e) for e in scaling_experiments(runs)]
    if not points:
        return []
    return [build_summary_table(points)] + [build_point_table(p) for p in points]
