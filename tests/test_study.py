"""The reduced study driver (alphaadam.study, scripts/reproduce_small.py): stages, grid
widening, seeds at the chosen lr, resumption, and a tiny end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from alphaadam.study import Progress, Study, describe_plan, group_state, run_local
from trainer_helpers import REPO


def _study(root: Path, lrs: str, *extra: str) -> Study:
    return Study.load(
        "reduced_table3",
        extra=[
            f"study.root={root}",
            "~study.methods",
            f"+study.methods={{adamw:{{lrs:{lrs},overrides:[]}}}}",
            "study.refine=false",
            *extra,
        ],
    )


def _complete(run_dir: Path, val_loss: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(
        json.dumps({"status": "completed", "final": {"val_loss": val_loss}, "best": {}})
    )


def test_grid_widens_at_an_edge_then_seeds_run_at_the_chosen_lr(tmp_path: Path):
    study = _study(tmp_path, "[0.001,0.002,0.004]", "study.seeds=[1,2,3]", "study.max_widenings=1")
    state = group_state(study, "adamw", None)
    assert [(j.lr, j.seed, j.stage) for j in state.waiting] == [
        (0.001, 1, "grid"),
        (0.002, 1, "grid"),
        (0.004, 1, "grid"),
    ]
    # Run directories are named by table, method, lr and seed.
    assert state.waiting[0].run_dir == tmp_path / "reduced_table3" / "adamw" / "lr0.001_seed1"
    for job, loss in zip(state.waiting, (3.0, 2.5, 2.0)):
        _complete(job.run_dir, loss)
    # The best lr (0.004) is the grid's largest: one more lr beyond it (x widen_factor 2).
    state = group_state(study, "adamw", None)
    assert not state.grid_final and state.grid == [0.001, 0.002, 0.004, 0.008]
    assert [(j.lr, j.stage) for j in state.waiting] == [(0.008, "grid")]
    _complete(state.waiting[0].run_dir, 2.2)
    # 0.004 is now inside the grid: seeds 2 and 3 there.
    state = group_state(study, "adamw", None)
    assert state.grid_final and state.choice.lr == 0.004
    assert [(j.lr, j.seed, j.stage) for j in state.waiting] == [
        (0.004, 2, "seeds"),
        (0.004, 3, "seeds"),
    ]
    assert "adamw: lrs ['0.001', '0.002', '0.004', '0.008'], chosen 0.004; 2 waiting" in (
        describe_plan([study], jobs=2)
    )


def test_widening_stops_at_max_widenings(tmp_path: Path):
    study = _study(tmp_path, "[0.001,0.002]", "study.seeds=[1,2]", "study.max_widenings=1")
    for lr, loss in ((0.001, 3.0), (0.002, 2.0), (0.004, 1.0)):
        _complete(study.run_dir("adamw", None, lr, 1), loss)
    state = group_state(study, "adamw", None)
    # Still at the edge after one widening, but the budget of widenings is spent.
    assert state.grid_final and state.choice.lr == 0.004 and state.choice.at_edge == "high"
    assert [(j.lr, j.seed) for j in state.waiting] == [(0.004, 2)]


@pytest.mark.slow
def test_tiny_study_runs_resumes_nothing_twice_and_prunes_checkpoints(tmp_path: Path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    study = _study(
        tmp_path / "study",
        "[0.001,0.01]",
        "study.seeds=[1,2]",
        "study.max_widenings=0",
        "model=gpt_tiny",
        f"data.path={text}",
        "data.block_size=32",
        "data.eval_iters=1",
        "data.eval_batch_size=2",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=4",
        "trainer.warmup_steps=1",
        "trainer.checkpoint_every=2",
        "trainer.mask_stats_every=0",
    )
    lines: list[str] = []
    failed = run_local([study], 2, Progress(print=lines.append), tmp_path / "logs")
    assert failed == [], lines
    runs = sorted(p.parent for p in (tmp_path / "study").rglob("summary.json"))
    state = group_state(study, "adamw", None)
    chosen = state.choice.lr
    assert [p.name for p in runs] == sorted(["lr0.001_seed1", "lr0.01_seed1", f"lr{chosen}_seed2"])
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == 4
        assert not (run / "checkpoints").exists()  # pruned once completed
    # The lr the study spent its second seed on is the one the table rule chooses.
    losses = {
        lr: json.loads((study.run_dir("adamw", None, lr, 1) / "summary.json").read_text())["final"][
            "val_loss"
        ]
        for lr in (0.001, 0.01)
    }
    assert chosen == min(losses, key=losses.get)
    assert sum(line.startswith("start") for line in lines) == 3
    # A second invocation finds everything completed and starts nothing.
    again: list[str] = []
    assert run_local([study], 2, Progress(print=again.append), tmp_path / "logs") == []
    assert again == []


def test_plan_of_the_committed_sweeps_composes():
    # Every reduced sweep config has a complete study block: the plan prints without running.
    from alphaadam.study import STUDY_SWEEPS

    for sweep in STUDY_SWEEPS:
        study = Study.load(sweep, extra=["study.root=/nonexistent/root"])
        text = describe_plan([study], jobs=2)
        assert sweep in text and "to run" in text
        for method in study.methods:
            lrs = list(study.spec.methods[method].lrs)
            # A grid has two lrs at least; a control (no widening) may run one by design.
            assert lrs == sorted(lrs)
            assert len(lrs) >= 2 or int(study.spec.max_widenings) == 0, (sweep, method)


def test_cli_dry_run_prints_the_plan(tmp_path: Path):
    import subprocess

    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "reproduce_small.py"),
            "--tables",
            "table3",
            "--dry-run",
            "--override",
            f"study.root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "reduced_table3: 5 methods" in out and "Estimated wall time" in out


def _refining_study(tmp_path: Path):
    """Grid 1e-3, 4e-3, 1.6e-2 at seed 1, refined once, then seed 2; no widening."""
    return _study(
        tmp_path,
        "[0.001,0.004,0.016]",
        "study.seeds=[1,2]",
        "study.max_widenings=0",
        "study.refine=true",
    )


def test_refine_adds_the_midpoints_around_the_chosen_lr_then_chooses_again(tmp_path: Path):
    study = _refining_study(tmp_path)
    for lr, loss in ((0.001, 3.0), (0.004, 2.0), (0.016, 2.5)):
        _complete(study.run_dir("adamw", None, lr, 1), loss)
    state = group_state(study, "adamw", None)
    # sqrt(0.004 * 0.001) = 0.002 and sqrt(0.004 * 0.016) = 0.008, by hand.
    assert not state.grid_final and state.grid == [0.001, 0.002, 0.004, 0.008, 0.016]
    assert sorted(j.lr for j in state.waiting) == [0.002, 0.008]
    _complete(study.run_dir("adamw", None, 0.002, 1), 2.2)
    _complete(study.run_dir("adamw", None, 0.008, 1), 1.9)
    # 0.008 wins now; no second refinement; seed 2 runs there, and at 0.004, the unrefined
    # grid's choice, because the move to 0.008 rests on seed 1 alone.
    state = group_state(study, "adamw", None)
    assert state.grid_final and state.choice.lr == 0.008
    assert [(j.lr, j.seed) for j in state.waiting] == [(0.008, 2), (0.004, 2)]


def test_refine_that_keeps_the_choice_runs_seeds_at_that_lr_only(tmp_path: Path):
    study = _refining_study(tmp_path)
    for lr, loss in ((0.001, 3.0), (0.004, 2.0), (0.016, 2.5), (0.002, 2.2), (0.008, 2.1)):
        _complete(study.run_dir("adamw", None, lr, 1), loss)
    state = group_state(study, "adamw", None)
    # 0.004 (2.0) still beats its midpoints 0.002 (2.2) and 0.008 (2.1).
    assert state.grid_final and state.choice.lr == 0.004
    assert [(j.lr, j.seed) for j in state.waiting] == [(0.004, 2)]


# ---------------------------------------------------- lattice, points, shared lr, tasks
def test_lattice_lrs_are_computed_from_their_index_so_steps_never_drift():
    from alphaadam.study import Lattice, refined, widened

    lattice = Lattice(1e-3, 2)
    # 1e-3 x 2^(k/2), 3 significant digits, by hand: k = 5 -> 5.657e-3, k = 11 -> 4.525e-2.
    assert [lattice.lr(k) for k in (-1, 0, 1, 5, 7, 11)] == [
        0.000707, 0.001, 0.00141, 0.00566, 0.0113, 0.0453,
    ]  # fmt: skip
    # Doubling the rounded 2.26e-2 would give 4.52e-2; the lattice's k = 11 is 4.53e-2.
    assert widened(0.0226, 2.0, "high", lattice) == 0.0453
    assert widened(0.0226, 2.0, "high") == 0.0452  # without a lattice: x2, then 3 digits
    assert widened(0.002, 2.0, "low", lattice) == 0.001
    # Refinement: the lattice points halfway (one sqrt(2) step) to each grid neighbour.
    assert refined([0.002, 0.004, 0.008], 0.004, lattice) == [0.00283, 0.00566]
    # A neighbour one step away has no lattice point between: nothing to add there.
    assert refined([0.00283, 0.004, 0.008], 0.004, lattice) == [0.00566]
    with pytest.raises(ValueError, match="not on the study's lattice"):
        lattice.index(0.003)
    with pytest.raises(ValueError, match="not a whole number of lattice steps"):
        lattice.steps(3.0)


def _lattice_study(root: Path, *extra: str) -> Study:
    return Study.load(
        "reduced_scaling",
        extra=[
            f"study.root={root}",
            "~study.methods",
            "+study.methods={adamw:{lrs:[0.002,0.004],overrides:[]},"
            "alphaadam:{lrs:[0.002,0.004],overrides:[]}}",
            "~study.points",
            "+study.points={d128_s500:{overrides:[],lr_shift:0},"
            "d64_s500:{overrides:['model.n_embd=64','model.n_head=2'],lr_shift:1,seeds:[1,2]}}",
            "study.max_widenings=0",
            "study.refine=false",
            *extra,
        ],
    )


def test_points_name_their_run_directories_by_what_they_set_and_shift_their_grid(tmp_path):
    study = _lattice_study(tmp_path)
    assert study.tasks == ["d128_s500", "d64_s500"]
    assert study.run_dir("adamw", "d64_s500", 0.00283, 1) == (
        tmp_path / "reduced_scaling" / "d64_s500" / "adamw" / "lr0.00283_seed1"
    )
    # lr_shift = +1 lattice step: 2e-3, 4e-3 -> 2.83e-3, 5.66e-3.
    assert study.start_grid("adamw", "d64_s500") == [0.00283, 0.00566]
    assert study.start_grid("adamw", "d128_s500") == [0.002, 0.004]
    assert study.seeds_for("d64_s500") == [1, 2] and study.seeds_for("d128_s500") == [1, 2, 3]
    job = study.job("adamw", "d64_s500", 0.00283, 1, "grid")
    assert "model.n_embd=64" in job.overrides and "model.n_head=2" in job.overrides


def test_a_point_whose_overrides_compose_to_another_name_is_refused(tmp_path):
    study = _lattice_study(
        tmp_path, "study.points.d64_s500.overrides=['model.n_embd=32','model.n_head=1']"
    )
    with pytest.raises(ValueError, match="composes to point='d32_s500'"):
        study.run_dir("adamw", "d64_s500", 0.00283, 1)


def test_shared_lr_every_method_runs_adamws_choice_with_every_seed(tmp_path):
    study = _lattice_study(tmp_path)
    point = "d128_s500"
    # AlphaAdam's grid finishes first: its seeds wait for AdamW's choice.
    for lr, loss in ((0.002, 2.0), (0.004, 2.1)):
        _complete(study.run_dir("alphaadam", point, lr, 1), loss)
    state = group_state(study, "alphaadam", point)
    assert not state.grid_final and state.waiting == []
    # AdamW chooses 4e-3, which AlphaAdam has run at seed 1: its seeds 2-3 run at its own
    # choice (2e-3) and, as the shared stage, at AdamW's.
    for lr, loss in ((0.002, 2.5), (0.004, 2.4)):
        _complete(study.run_dir("adamw", point, lr, 1), loss)
    state = group_state(study, "alphaadam", point)
    assert state.grid_final and state.choice.lr == 0.002
    assert [(j.lr, j.seed, j.stage) for j in state.waiting] == [
        (0.002, 2, "seeds"), (0.002, 3, "seeds"), (0.004, 2, "shared"), (0.004, 3, "shared"),
    ]  # fmt: skip


def test_a_shared_lr_outside_a_methods_grid_becomes_one_of_its_grid_points(tmp_path):
    study = _lattice_study(tmp_path)
    point = "d128_s500"
    for lr, loss in ((0.002, 2.6), (0.004, 2.4)):
        _complete(study.run_dir("adamw", point, lr, 1), loss)
    # AdamW's grid has no widening here (max_widenings=0): it keeps 4e-3. Give AlphaAdam a
    # grid without it, so the shared lr must be added at seed 1 first.
    study.spec.methods.alphaadam.lrs = [0.001, 0.002]
    for lr, loss in ((0.001, 2.2), (0.002, 2.0)):
        _complete(study.run_dir("alphaadam", point, lr, 1), loss)
    state = group_state(study, "alphaadam", point)
    assert state.grid == [0.001, 0.002, 0.004]
    assert [(j.lr, j.seed, j.stage) for j in state.waiting] == [(0.004, 1, "grid")]


def test_a_method_with_tasks_of_its_own_runs_only_those(tmp_path):
    study = Study.load(
        "reduced_table1",
        extra=[
            f"study.root={tmp_path}",
            "~study.methods",
            "+study.methods={adamw:{lrs:[0.0001],overrides:[]},"
            "alphaadam_norescale:{lrs:[0.0001],overrides:[],tasks:[stsb,mrpc]}}",
        ],
    )
    assert study.groups() == [
        ("adamw", "stsb"), ("alphaadam_norescale", "stsb"), ("adamw", "mrpc"),
        ("alphaadam_norescale", "mrpc"), ("adamw", "cola"),
    ]  # fmt: skip


def test_a_completed_run_of_another_design_is_refused_not_counted(tmp_path: Path):
    """``study.design_keys``: a completed run whose config.yaml differs there (an earlier
    design's run at the same path) stops the plan with an error naming the run and the key,
    instead of being counted as done."""
    from alphaadam.study import StudyDesignError

    study = _study(tmp_path, "[0.001,0.002]", "+study.design_keys=[trainer.max_steps]")
    steps = int(study.cfg.trainer.max_steps)
    same, other = (study.run_dir("adamw", None, lr, 1) for lr in (0.001, 0.002))
    _complete(same, 2.0)
    (same / "config.yaml").write_text(f"trainer:\n  max_steps: {steps}\n")
    _complete(other, 2.5)
    (other / "config.yaml").write_text(f"trainer:\n  max_steps: {steps - 100}\n")
    with pytest.raises(StudyDesignError) as err:
        group_state(study, "adamw", None)
    message = str(err.value)
    assert (
        str(other) in message and f"trainer.max_steps: run {steps - 100}, study {steps}" in message
    )
    # Of this design, both count: the grid is done and 0.001 is chosen (at an edge, widened).
    (other / "config.yaml").write_text(f"trainer:\n  max_steps: {steps}\n")
    state = group_state(study, "adamw", None)
    assert state.choice.lr == 0.001 and 0.0005 in state.grid


def test_cli_leaves_out_a_table_with_another_designs_runs_and_says_why(tmp_path: Path):
    import subprocess

    study = _study(tmp_path, "[0.001,0.002]")
    run_dir = tmp_path / "reduced_table3" / "adamw" / "lr0.001_seed1"
    _complete(run_dir, 2.0)
    (run_dir / "config.yaml").write_text("trainer:\n  max_steps: 1\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce_small.py"), "--tables", "table3",
         "--dry-run", "--override", f"study.root={tmp_path}",
         "--override", "+study.design_keys=[trainer.max_steps]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"reduced_table3: not run: {run_dir} was made under another design" in result.stderr
    assert f"trainer.max_steps: run 1, study {study.cfg.trainer.max_steps}" in result.stderr
