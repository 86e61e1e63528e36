"""``make run`` (alphaadam.results.quickstart): AdamW and AlphaAdam on the embedded default,
then a comparison of the two run directories."""

from __future__ import annotations

from pathlib import Path

from alphaadam.results.runs import load_run

REPO = Path(__file__).resolve().parents[1]


def test_make_run_trains_both_methods_and_compares_them(tmp_path: Path, monkeypatch):
    from alphaadam.results import quickstart

    root = tmp_path / "quickstart"
    root.mkdir()
    env_overrides = ["trainer.max_steps=6", "trainer.log_every=1", "trainer.eval_every=3",
                     "trainer.mask_stats_every=0"]  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))
    run_dirs = quickstart.train_both(env_overrides, root)
    assert set(run_dirs) == {"adamw", "alphaadam"}
    written = quickstart.compare(run_dirs, root)
    assert [p.name for p in written] == ["comparison.md", "loss.png"]
    text = (root / "comparison.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    # Each row's final val loss is its run's own, and only AlphaAdam has alpha and a step scale.
    for method in ("adamw", "alphaadam"):
        final = load_run(run_dirs[method]).summary["final"]["val_loss"]
        assert f"| {final:.4f} |" in rows[method]
    assert rows["adamw"].rstrip(" |").endswith("— | — | —")
    assert not rows["alphaadam"].rstrip(" |").endswith("—")
