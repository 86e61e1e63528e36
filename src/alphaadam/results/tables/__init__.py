"""The paper's Tables 1-3 rebuilt from run directories, beside the paper's own numbers.

One module per job: ``render`` (cells, formatting, Markdown/LaTeX), ``stats`` (which runs
count, grouping, the lr choice, paired differences), ``layout`` (labels, notes, the lr-grid
part) and one builder per table (``table1``, ``table2``, ``table3``).

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

from pathlib import Path
from typing import Any

import yaml

from ..runs import RunSet
from .layout import PAPER_EXPERIMENTS, extra_label
from .render import Cell, Table, format_cell, format_lr, format_paired
from .scaling import build_scaling_tables
from .table1 import build_rescale_ablation, build_table1, canonical_glue_task
from .table2 import build_table2, describe_scorer
from .table3 import FRACTION_TOL, TABLE3_FRACTIONS, build_table3, table3_run_values, val_loss_at

__all__ = [
    "FRACTION_TOL", "PAPER_EXPERIMENTS", "TABLE3_FRACTIONS", "Cell", "Table", "build_all",
    "build_table1", "build_table2", "build_table3", "canonical_glue_task", "describe_scorer",
    "experiments_of", "extra_label", "format_cell", "format_lr", "format_paired", "load_paper",
    "table3_run_values", "val_loss_at", "write_tables",
]  # fmt: skip


def load_paper(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh)


def experiments_of(runs: RunSet, table: str) -> list[str]:
    """The paper-scale experiment of ``table`` and every other experiment with runs of its
    kind (GLUE, GSM8K, or a Table 3 ablation: ``reduced_table3`` and its controls such as
    ``reduced_table3_wd0`` and ``reduced_table3_bf16``), paper first."""
    paper_experiment = PAPER_EXPERIMENTS[table]
    if table == "table1":
        found = {r.experiment for r in runs.select(task="glue")}
    elif table == "table2":
        found = {r.experiment for r in runs.select(task="gsm8k")}
    else:
        found = {r.experiment for r in runs.runs if r.experiment.startswith("reduced_table3")}
    return [paper_experiment] + sorted(found - {paper_experiment})


def build_all(runs: RunSet, paper: dict[str, Any], **options: Any) -> list[Table]:
    tables = []
    for experiment in experiments_of(runs, "table1"):
        value_source = options.get("glue_value", "best")
        tables.append(build_table1(runs, paper, value_source=value_source, experiment=experiment))
        ablation = build_rescale_ablation(runs, paper, experiment, value_source=value_source)
        if ablation is not None:
            tables.append(ablation)
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
    tables += build_scaling_tables(runs)
    return tables


def write_tables(tables: list[Table], out_dir: str | Path) -> list[Path]:
    """Each table to ``<name>.md``/``.tex`` (with its parts under it), and each part again on
    its own (``<name>paired_differences``, ``<name>_grid``) for documents that show only some."""
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
