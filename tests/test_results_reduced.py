"""The lr rule shared by the tables and the study, reduced-scale tables, paired differences,
step scales and Table 2's scorers: every expected cell computed by hand here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from alphaadam.results import load_runs
from alphaadam.results.selection import choose_lr
from alphaadam.results.tables import build_all, build_table1, build_table2, load_paper
from test_results_tables import PAPER, row_after, write_run


# ------------------------------------------------------------------------- choose_lr
def test_choose_lr_compares_every_lr_on_the_same_number_of_seeds():
    # lr 1e-4 has three seeds (mean 0.833), lr 3e-4 one (0.70). On equal footing (each lr's
    # lowest-numbered seed) 3e-4 wins 0.70 > 0.60; a plain mean would pick 1e-4.
    records = [(1e-4, 1, 0.60), (1e-4, 2, 0.95), (1e-4, 3, 0.95), (3e-4, 1, 0.70)]
    choice = choose_lr(records, "max")
    assert choice.lr == 3e-4
    assert choice.seeds_compared == 1
    assert choice.means == {1e-4: 0.60, 3e-4: 0.70}
    assert choice.at_edge == "high"


def test_choose_lr_ties_divergence_and_edges():
    assert choose_lr([(2e-3, 1, 1.5), (1e-3, 1, 1.5)], "min").lr == 1e-3  # tie: smaller lr
    # A diverged (NaN) lr is never chosen but stays in the grid: 4e-3 is inside it.
    choice = choose_lr([(1e-3, 1, 2.0), (4e-3, 1, 1.0), (8e-3, 1, math.nan)], "min")
    assert choice.lr == 4e-3 and choice.at_edge is None and choice.grid == (1e-3, 4e-3, 8e-3)
    assert choose_lr([(1e-3, 1, math.nan)], "min") is None
    assert choose_lr([(1e-3, 1, 2.0)], "min").at_edge is None  # a single lr has no edge
    with pytest.raises(ValueError, match="'min' or 'max'"):
        choose_lr([(1e-3, 1, 2.0)], "best")


# ------------------------------------------------------------------- reduced Table 1
def _reduced_glue(root, name, task, metric, value, optimizer, lr, seed, step_scale):
    run = write_run(
        root,
        name,
        task="glue",
        experiment="reduced_table1",
        dataset=task,
        optimizer=optimizer,
        lr=lr,
        seed=seed,
        primary_metric=metric,
        primary_mode="max",
        best={"step": 10, metric: value},
        final={"train_loss": 0.1, metric: value},
    )
    (run / "config.yaml").write_text(
        yaml.safe_dump({"optimizer": {"name": optimizer}, "scale": "reduced: tiny, 1 epoch"})
    )
    summary = json.loads((run / "summary.json").read_text())
    summary["step_scale_mean"] = step_scale
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def reduced_glue_root(tmp_path: Path) -> Path:
    # STS-B: adamw at lr 1e-4 (seeds 1, 2: 0.80, 0.84) beats 3e-4 (seed 1: 0.70).
    _reduced_glue(tmp_path, "s/a1", "stsb", "pearson", 0.80, "adamw", 1e-4, 1, None)
    _reduced_glue(tmp_path, "s/a2", "stsb", "pearson", 0.84, "adamw", 1e-4, 2, None)
    _reduced_glue(tmp_path, "s/a3", "stsb", "pearson", 0.70, "adamw", 3e-4, 1, None)
    # alphaadam at 3e-5, seeds 1, 2: 0.83, 0.86; step scales 2.0 and 3.0.
    _reduced_glue(tmp_path, "s/b1", "stsb", "pearson", 0.83, "alphaadam", 3e-5, 1, 2.0)
    _reduced_glue(tmp_path, "s/b2", "stsb", "pearson", 0.86, "alphaadam", 3e-5, 2, 3.0)
    # CoLA, one seed each.
    _reduced_glue(tmp_path, "c/a1", "cola", "matthews_correlation", 0.30, "adamw", 1e-4, 1, None)
    _reduced_glue(tmp_path, "c/b1", "cola", "matthews_correlation", 0.20, "alphaadam", 1e-4, 1, 2.5)
    # A paper-scale run of the same task must stay in its own table.
    write_run(
        tmp_path,
        "paper_scale",
        task="glue",
        experiment="roberta_glue",
        dataset="stsb",
        optimizer="adamw",
        lr=2e-5,
        primary_metric="pearson",
        primary_mode="max",
        best={"pearson": 0.90},
    )
    return tmp_path


def test_reduced_glue_table_is_its_own_table_with_its_scale(reduced_glue_root: Path):
    tables = {t.name: t for t in build_all(load_runs(reduced_glue_root), load_paper(PAPER))}
    assert {"table1", "reduced_table1", "table2", "table3"} <= set(tables)
    paper_scale = tables["table1"]
    # Only the roberta_glue run: 90.00 in the STS-B column (the 2nd task).
    assert row_after(paper_scale, "AdamW", "ours")[3] == "90.00"
    reduced = tables["reduced_table1"]
    assert "reduced scale" in reduced.title
    assert "scale: reduced: tiny, 1 epoch" in reduced.notes
    # Only the tasks that ran, in the paper's column order (MRPC, STS-B, CoLA, ...).
    assert reduced.header == ["Method", "", "STS-B", "CoLA", "Avg (2 tasks)"]
    # adamw: STS-B mean(80, 84) = 82.00 ± 2.83; CoLA 30.00; Avg = (82 + 30) / 2 = 56.00.
    assert row_after(reduced, "AdamW", "reduced")[2:] == ["82.00 ± 2.83", "30.00", "56.00"]
    assert row_after(reduced, "AdamW", "seeds @ lr")[2:4] == ["2 @ 1e-4", "1 @ 1e-4"]
    # No mask: the lr as given.
    assert row_after(reduced, "AdamW", "step scale")[2:4] == ["1.00 ± 0.00", "1.00"]
    # alphaadam: STS-B mean(83, 86) = 84.50 ± 2.12; step scale mean(2, 3) = 2.50 ± 0.71.
    assert row_after(reduced, "AlphaAdam", "reduced")[2:] == ["84.50 ± 2.12", "20.00", "52.25"]
    assert row_after(reduced, "AlphaAdam", "step scale")[2:4] == ["2.50 ± 0.71", "2.50"]
    # Only methods with runs get rows.
    assert {r[0] for r in reduced.rows} - {""} == {"AdamW", "AlphaAdam"}


def test_paired_differences_and_grid(reduced_glue_root: Path):
    reduced = build_table1(
        load_runs(reduced_glue_root), load_paper(PAPER), experiment="reduced_table1"
    )
    paired = next(p for p in reduced.parts if p.name.endswith("_paired"))
    # STS-B, seeds 1 and 2: 83 - 80 = +3, 86 - 84 = +2 -> +2.50 ± 0.71; t(0.975, 1) = 12.706,
    # half-width 12.706 * 0.7071 / sqrt(2) = 6.35 -> [-3.85, +8.85]. CoLA: 20 - 30 = -10, n=1.
    assert paired.rows == [
        ["AlphaAdam", "+2.50 ± 0.71 (n=2; 95% CI -3.85 to +8.85)", "-10.00 (n=1)"]
    ]
    grid = next(p for p in reduced.parts if p.name.endswith("_grid"))
    assert grid.header == ["Task", "Method", "3e-5", "1e-4", "3e-4"]
    # AdamW's chosen 1e-4 is the smallest lr it tried: flagged (its optimum may be lower).
    # AlphaAdam tried one lr only: nothing to flag.
    assert ["STS-B", "AdamW", "", "82.00 (2) *†", "70.00 (1)"] in grid.rows
    assert ["STS-B", "AlphaAdam", "84.50 (2) *", "", ""] in grid.rows
    assert any(note.startswith("† the chosen lr is the smallest or largest") for note in grid.notes)
    assert "82.00 (2) *\\dag{}" in grid.to_latex()
    text = reduced.to_markdown()
    assert "#### Paired difference from AdamW" in text and "#### Every lr of the grid" in text


def test_grid_flags_no_edge_when_the_chosen_lr_is_inside(tmp_path: Path):
    # 1e-4 (0.80) beats both neighbours 3e-5 (0.60) and 3e-4 (0.70): an interior choice.
    for name, value, lr in (("a", 0.60, 3e-5), ("b", 0.80, 1e-4), ("c", 0.70, 3e-4)):
        _reduced_glue(tmp_path, name, "stsb", "pearson", value, "adamw", lr, 1, None)
    reduced = build_table1(load_runs(tmp_path), load_paper(PAPER), experiment="reduced_table1")
    grid = next(p for p in reduced.parts if p.name.endswith("_grid"))
    assert grid.rows == [["STS-B", "AdamW", "60.00 (1)", "80.00 (1) *", "70.00 (1)"]]
    assert not any("†" in note for note in grid.notes)
    assert "\\dag" not in grid.to_latex()


# -------------------------------------------------------------------- Table 2 scorers
def _scored_gsm(root, name, optimizer, acc, harness, shots, limit, seed=1):
    run = write_run(
        root,
        name,
        task="gsm8k",
        experiment="llama2_gsm8k",
        dataset="gsm8k",
        optimizer=optimizer,
        lr=5e-5,
        seed=seed,
        primary_metric="val_loss",
        primary_mode="min",
        final={"train_loss": 0.05, "accuracy": acc},
    )
    summary = json.loads((run / "summary.json").read_text())
    summary["accuracy_eval"] = {"harness": harness, "num_fewshot": shots, "limit": limit}
    (run / "summary.json").write_text(json.dumps(summary))


def test_table2_never_averages_accuracies_of_different_scorers(tmp_path: Path):
    _scored_gsm(tmp_path, "a", "alphaadam", 0.30, "lm_eval", 5, None, seed=1)
    _scored_gsm(tmp_path, "b", "alphaadam", 0.10, "builtin", 0, None, seed=2)
    table = build_table2(load_runs(tmp_path), load_paper(PAPER))
    rows = {tuple(r[:2]): dict(zip(table.header, r)) for r in table.rows}
    # Two rows, one per scorer, each with its own value (a mixed mean would be 20.00).
    assert rows[("Accuracy (builtin, 0-shot, all test problems)", "ours")]["AlphaAdam"] == "10.00"
    assert rows[("Accuracy (lm_eval, 5-shot, all test problems)", "ours")]["AlphaAdam"] == "30.00"
    assert any("different scorers" in n for n in table.notes)


def test_table2_names_its_single_scorer(tmp_path: Path):
    _scored_gsm(tmp_path, "a", "adamw", 0.25, "lm_eval", 5, 100)
    table = build_table2(load_runs(tmp_path), load_paper(PAPER))
    assert "accuracy scorer: lm_eval, 5-shot, first 100 test problems" in table.notes
    assert dict(zip(table.header, table.rows[1]))["AdamW"] == "25.00"


def test_format_lr_keeps_the_digits_an_lr_has():
    from alphaadam.results.tables import format_lr

    assert [format_lr(x) for x in (0.016, 0.008, 3e-5, 2.5e-4, 1.0)] == [
        "1.6e-2",
        "8e-3",
        "3e-5",
        "2.5e-4",
        "1e0",
    ]


def test_write_tables_writes_each_part_on_its_own_too(reduced_glue_root: Path, tmp_path: Path):
    from alphaadam.results.tables import write_tables

    table = build_table1(
        load_runs(reduced_glue_root), load_paper(PAPER), experiment="reduced_table1"
    )
    out = tmp_path / "tables"
    write_tables([table], out)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"reduced_table1{part}.{ext}" for part in ("", "_grid", "_paired") for ext in ("md", "tex")
    ]
    # The part on its own is the section of the whole table's file.
    whole = (out / "reduced_table1.md").read_text()
    paired = (out / "reduced_table1_paired.md").read_text().replace("### ", "#### ", 1)
    assert paired in whole


def test_a_method_the_paper_does_not_list_is_labelled_as_an_extension(reduced_glue_root: Path):
    _reduced_glue(reduced_glue_root, "s/o1", "stsb", "pearson", 0.81, "alphaadam_onepass", 1e-4,
                  1, 2.2)  # fmt: skip
    reduced = build_table1(
        load_runs(reduced_glue_root), load_paper(PAPER), experiment="reduced_table1"
    )
    label = "AlphaAdam one-pass (extension, not in the paper)"
    assert row_after(reduced, label, "reduced")[2] == "81.00"


def test_reduced_table2_with_a_validation_split_chooses_on_it_and_reports_test(tmp_path: Path):
    def run(name, lr, seed, val, test):
        path = write_run(
            tmp_path, name, task="gsm8k", experiment="reduced_table2", dataset="gsm8k",
            optimizer="adamw", lr=lr, seed=seed,
            final={"train_loss": 3.0, "val_loss": val, "test_loss": test},
        )  # fmt: skip
        (path / "config.yaml").write_text(
            "optimizer:\n  name: adamw\ndata:\n  validation_examples: 500\n"
        )

    # 3e-3 is better on validation (2.0 < 2.5) though worse on test at seed 1: test never
    # decides, so 3e-3 is chosen and its test losses are what the table reports.
    run("a", 1e-3, 1, val=2.5, test=2.9)
    run("b", 3e-3, 1, val=2.0, test=3.1)
    run("c", 3e-3, 2, val=2.2, test=3.3)
    table = build_table2(load_runs(tmp_path), load_paper(PAPER), experiment="reduced_table2")
    rows = {tuple(r[:2]): r[2] for r in table.rows}
    assert rows[("Answer loss (test)", "reduced")] == "3.200 ± 0.141"
    assert rows[("Answer loss (validation)", "reduced")] == "2.100 ± 0.141"
    assert any("last 500 training problems" in note for note in table.notes)
    grid = next(p for p in table.parts if p.name.endswith("_grid"))
    assert grid.title.startswith("Every lr of the grid: validation answer loss")


def test_rescale_ablation_has_its_own_table_and_never_a_row_of_table1(reduced_glue_root: Path):
    # STS-B: AlphaAdam without the rescale, seeds 1, 2 at 1e-4: 0.79, 0.81 (2 seeds, like the
    # fixture's AdamW at 1e-4: 0.80, 0.84); the extension at 3e-5: 0.85, 0.87.
    _reduced_glue(
        reduced_glue_root, "s/n1", "stsb", "pearson", 0.79, "alphaadam_norescale", 1e-4, 1, 2.0
    )
    _reduced_glue(
        reduced_glue_root, "s/n2", "stsb", "pearson", 0.81, "alphaadam_norescale", 1e-4, 2, 2.0
    )
    _reduced_glue(
        reduced_glue_root, "s/x1", "stsb", "pearson", 0.85, "alphaadam_active", 3e-5, 1, 2.2
    )
    _reduced_glue(
        reduced_glue_root, "s/x2", "stsb", "pearson", 0.87, "alphaadam_active", 3e-5, 2, 2.4
    )
    tables = {t.name: t for t in build_all(load_runs(reduced_glue_root), load_paper(PAPER))}
    reduced = tables["reduced_table1"]
    labels = {r[0] for r in reduced.rows} - {""}
    assert labels == {"AdamW", "AlphaAdam", "AlphaAdam, rescale=active (extension)"}
    ablation = tables["reduced_table1_rescale_ablation"]
    assert ablation.header == ["Method", "STS-B", "seeds @ lr", "step scale", "vs AdamW"]
    rows = {r[0]: r[1:] for r in ablation.rows}
    assert list(rows) == [
        "AdamW", "AlphaAdam", "AlphaAdam, no rescale (ablation)",
        "AlphaAdam, rescale=active (extension)",
    ]  # fmt: skip
    # 79 - 80 = -1, 81 - 84 = -3: mean -2.00 ± 1.41 over 2 pairs.
    norescale = rows["AlphaAdam, no rescale (ablation)"]
    assert norescale[:3] == ["80.00 ± 1.41", "2 @ 1e-4", "2.00 ± 0.00"]
    assert norescale[3].startswith("-2.00 ± 1.41 (n=2;")
    # Its grid part: every lr a row's runs tried, in the table's row order. The fixture's
    # AdamW and AlphaAdam STS-B runs are read back from the fixture, the ablation's from above.
    grid = next(p for p in ablation.parts if p.name == "reduced_table1_rescale_ablation_grid")
    grid_rows = {r[1]: dict(zip(grid.header[2:], r[2:])) for r in grid.rows}
    assert list(grid_rows)[2:] == [
        "AlphaAdam, no rescale (ablation)", "AlphaAdam, rescale=active (extension)",
    ]  # fmt: skip
    assert grid_rows["AlphaAdam, no rescale (ablation)"]["1e-4"] == "80.00 (2) *"
    assert grid_rows["AlphaAdam, rescale=active (extension)"]["3e-5"].startswith("86.00 (2) *")


def test_a_reduced_table3_control_is_its_own_table_beside_reduced_table3(tmp_path: Path):
    """A control of reduced Table 3 (the weight-decay one: reduced_table3_wd0) gets its own
    table, and none of its runs enters reduced Table 3's cells."""
    evals = {0.2: 2.5, 0.4: 2.4, 0.6: 2.2, 1.0: 2.0}
    write_run(tmp_path, "t3/a", experiment="reduced_table3", evals=evals)
    write_run(
        tmp_path,
        "wd0/a",
        experiment="reduced_table3_wd0",
        evals={f: v + 0.5 for f, v in evals.items()},
    )
    tables = {t.name: t for t in build_all(load_runs(tmp_path), load_paper(PAPER))}
    assert row_after(tables["reduced_table3"], "AdamW (baseline)", "reduced")[6] == "2.000"
    assert row_after(tables["reduced_table3_wd0"], "AdamW (baseline)", "reduced")[6] == "2.500"


def test_a_one_lr_control_says_no_lr_was_chosen(tmp_path: Path):
    """A control that runs each method at one fixed lr (the bf16 and weight-decay controls)
    must not claim an lr was chosen; a table with a grid still says how it chose."""
    evals = {0.2: 2.5, 0.4: 2.4, 0.6: 2.2, 1.0: 2.0}
    write_run(tmp_path, "ctl/a", experiment="reduced_table3_bf16", lr=1e-2, evals=evals)
    write_run(tmp_path, "ctl/b", experiment="reduced_table3_bf16", lr=1e-2, seed=2, evals=evals)
    write_run(
        tmp_path, "ctl/c", experiment="reduced_table3_bf16", optimizer="alphaadam", lr=4e-3,
        evals=evals,
    )  # fmt: skip
    write_run(tmp_path, "t3/a", experiment="reduced_table3", lr=1e-2, evals=evals)
    write_run(tmp_path, "t3/b", experiment="reduced_table3", lr=2e-2, evals=evals)
    tables = {t.name: t for t in build_all(load_runs(tmp_path), load_paper(PAPER))}
    control_notes = " ".join(tables["reduced_table3_bf16"].notes)
    assert "nothing chosen" in control_notes
    assert "lr chosen on" not in control_notes
    grid_notes = " ".join(tables["reduced_table3"].notes)
    assert "lr chosen on the final (100%) val loss" in grid_notes
    assert "nothing chosen" not in grid_notes
