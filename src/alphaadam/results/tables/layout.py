"""Row layout shared by the table builders: labels, titles, notes and the lr-grid part."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..runs import Run
from ..selection import edge_of
from .render import EDGE_MARK, EDGE_NOTE, MISSING, Cell, format_lr

# Methods a table shows that the paper's tables do not list (results/paper/tables.yaml names
# the others); any other such method is shown by its registry name.
EXTRA_LABELS = {
    "alphaadam_onepass": "AlphaAdam one-pass (extension, not in the paper)",
    "alphaadam_active": "AlphaAdam, rescale=active (extension)",
    "cadamw_active": "CAdamW, rescale=active (extension)",
    "alphaadam_norescale": "AlphaAdam, no rescale (ablation)",
    "alphaadam_embed_norescale": "AlphaAdam, no rescale on the word embedding (ablation)",
}


def extra_label(optimizer: str) -> str:
    return EXTRA_LABELS.get(optimizer, optimizer)


def scales_note(runs: list[Run]) -> list[str]:
    """The runs' scale (reduced ones), then the code versions that made them."""
    scales = sorted({r.scale for r in runs})
    return [f"scale: {s}" for s in scales if s != "paper"] + versions_note(runs)


def versions_note(runs: list[Run]) -> list[str]:
    """Which commits made the runs, with counts (``git_sha`` of each summary: the code a run
    started with), most runs first; "uncommitted changes" where a run recorded a dirty tree."""
    counts: dict[str, int] = {}
    for run in runs:
        sha = str(run.summary.get("git_sha") or "unknown")[:7]
        if run.summary.get("git_dirty"):
            sha += " + uncommitted changes"
        counts[sha] = counts.get(sha, 0) + 1
    if not counts:
        return []
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    listed = ", ".join(f"{sha} ({n} run{'s' if n > 1 else ''})" for sha, n in ordered)
    return [f"code versions (git_sha in summary.json): {listed}"]


def is_reduced(experiment: str, paper_experiment: str) -> bool:
    return experiment != paper_experiment


def lr_grid_rows(
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


def title_of(spec_title: str, experiment: str, paper_experiment: str) -> str:
    if not is_reduced(experiment, paper_experiment):
        return spec_title
    return f"{spec_title.split(':')[0]} at reduced scale ({experiment})"


def ours_label(experiment: str, paper_experiment: str) -> str:
    return "reduced" if is_reduced(experiment, paper_experiment) else "ours"


def paper_note(experiment: str, paper_experiment: str) -> list[str]:
    if not is_reduced(experiment, paper_experiment):
        return []
    return [
        "paper rows: the paper's numbers at its own, much larger scale, for orientation only: "
        "compare orderings, not values."
    ]


def label_of(entries: list[dict[str, Any]], optimizer: str) -> str:
    """Our name for ``optimizer``: an entry's ``name`` where ours differs from the paper's
    ``label`` (Table 2's "Adam" is our AdamW), else its label."""
    return next(
        (e.get("name", e["label"]) for e in entries if e["optimizer"] == optimizer),
        extra_label(optimizer),
    )


def seeds_at_lr(cell: Cell | None) -> str:
    if cell is None:
        return MISSING
    return f"{cell.n} @ {format_lr(cell.lr)}"
