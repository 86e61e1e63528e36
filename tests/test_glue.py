"""GLUE task adapter: tsv layouts, labels, dynamic padding, resumable stream, train + eval."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _finetune_fixtures import write_glue_dir, write_tiny_roberta
from alphaadam.tasks.glue import GLUE_TASKS, GlueTask, glue_spec, read_glue_tsv


@pytest.fixture(scope="module")
def glue_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    return write_glue_dir(root / "glue"), write_tiny_roberta(root / "roberta")


def make_task(glue_env, task, **data):
    glue_dir, model_dir = glue_env
    cfg = {"task": task, "glue_dir": str(glue_dir), "max_length": 64, **data}
    t = GlueTask(cfg, {"name_or_path": str(model_dir)})
    t.setup(None)
    return t


def test_tsv_quirks_are_parsed(tmp_path):
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "dev.tsv").write_text(
        '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said " hi .\tShe "\n',
        encoding="utf-8",
    )
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "dev.tsv").write_text("gj04\t0\t*\tBad sentence .\n")
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tnot_entailment\n1\tC\tD\tentailment\n"
    )
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "dev.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tg\tf\ty\t0\tn\tn\tA man.\tA guy.\t3.800\n"
    )
    assert read_glue_tsv(tmp_path / "MRPC" / "dev.tsv", glue_spec("mrpc")) == [
        {"sentence1": 'He said " hi .', "sentence2": 'She "', "label": 1}
    ]
    assert read_glue_tsv(tmp_path / "CoLA" / "dev.tsv", glue_spec("CoLA")) == [
        {"sentence": "Bad sentence .", "label": 0}
    ]
    # hub ids: entailment = 0, not_entailment = 1
    rte = read_glue_tsv(tmp_path / "RTE" / "dev.tsv", glue_spec("RTE"))
    assert [r["label"] for r in rte] == [1, 0]
    assert read_glue_tsv(tmp_path / "STS-B" / "dev.tsv", glue_spec("STS-B")) == [
        {"sentence1": "A man.", "sentence2": "A guy.", "label": pytest.approx(3.8)}
    ]


def test_bad_task_and_bad_label_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"'mnli'.*valid: cola, sst2"):
        glue_spec("mnli")
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tmaybe\n"
    )
    with pytest.raises(ValueError, match=r"dev.tsv:2: label 'maybe' not in \['entailment'"):
        read_glue_tsv(tmp_path / "RTE" / "dev.tsv", glue_spec("rte"))


STSB_HEADER = (
    "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
)


@pytest.mark.parametrize(
    "score, message",
    [
        ("high", r"dev.tsv:3: STS-B label 'high' is not a number"),
        ("7.5", r"dev.tsv:3: STS-B label '7.5' is outside 0 to 5"),
        ("nan", r"dev.tsv:3: STS-B label 'nan' is outside 0 to 5"),
    ],
)
def test_a_bad_stsb_score_is_named_by_file_and_line(tmp_path, score, message):
    (tmp_path / "dev.tsv").write_text(
        STSB_HEADER + f"0\tg\tf\ty\t0\tn\tn\tA.\tB.\t1.0\n1\tg\tf\ty\t1\tn\tn\tC.\tD.\t{score}\n"
    )
    with pytest.raises(ValueError, match=message):
        read_glue_tsv(tmp_path / "dev.tsv", glue_spec("stsb"))


def test_a_row_with_too_many_fields_is_refused_by_file_and_line(tmp_path):
    # a tab inside sentence1 of line 3 shifts sentence2 and the label one field right
    (tmp_path / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tC\tpart\tD\tentailment\n"
    )
    with pytest.raises(ValueError, match=r"dev.tsv:3: 5 tab-separated fields, expected 4 for rte"):
        read_glue_tsv(tmp_path / "dev.tsv", glue_spec("rte"))


def test_short_rows_are_skipped_and_their_lines_named(tmp_path, caplog):
    (tmp_path / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA\tB\tentailment\n1\tC\n"
        "2\tE\tF\tnot_entailment\n3\tG\tH\n"
    )
    with caplog.at_level("WARNING"):
        rows = read_glue_tsv(tmp_path / "dev.tsv", glue_spec("rte"))
    assert [r["sentence1"] for r in rows] == ["A", "E"]
    assert "skipped 2 rows with fewer than 4 fields (lines 3, 5)" in caplog.text


def test_primary_metrics_are_the_table1_numbers():
    assert {n: s.primary_metric for n, s in GLUE_TASKS.items()} == {
        "cola": "matthews_correlation",
        "sst2": "accuracy",
        "mrpc": "accuracy",
        "stsb": "pearson",
        "qqp": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
    }


def test_dynamic_padding_and_pair_encoding(glue_env):
    task = make_task(glue_env, "rte")
    stream = task.train_stream(micro_batch_size=4, seed=0, rank=0, world_size=1)
    batch = next(stream)
    lengths = batch["attention_mask"].sum(dim=1)
    # padded to this batch's longest sequence only, not to max_length
    assert batch["input_ids"].shape[1] == int(lengths.max()) < 64
    pad = task.tokenizer.pad_token_id
    for row, n in zip(batch["input_ids"], lengths):
        assert (row[n:] == pad).all()
        # <s> A </s> </s> B </s>: two sentences joined by the tokenizer's pair template
        assert int((row[:n] == task.tokenizer.eos_token_id).sum()) == 3
        assert int(row[0]) == task.tokenizer.bos_token_id


def test_stream_resumes_exactly_and_shards(glue_env):
    task = make_task(glue_env, "sst2")
    a = task.train_stream(4, seed=3, rank=0, world_size=1)
    for _ in range(17):  # crosses the epoch boundary (48 examples / 4 = 12 per epoch)
        next(a)
    state = a.state_dict()
    assert a.epoch == pytest.approx(17 / 12)
    expected = [next(a)["input_ids"] for _ in range(5)]
    b = task.train_stream(4, seed=3, rank=0, world_size=1)
    b.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(b)["input_ids"], want)
    # two ranks cover one epoch exactly once between them
    seen = []
    for rank in (0, 1):
        s = task.train_stream(8, seed=3, rank=rank, world_size=2)
        seen += [tuple(ex) for _ in range(3) for ex in next(s)["input_ids"].tolist()]
    all_rows = sorted(tuple(ex["input_ids"]) for ex in task.train_examples)
    assert sorted(tuple(t for t in r if t != task.tokenizer.pad_token_id) for r in seen) == all_rows
    assert task.steps_per_epoch(32) == 2  # ceil(48 / 32)


@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_each_task_trains_and_evaluates(glue_env, name):
    task = make_task(glue_env, name)
    torch.manual_seed(0)
    model = task.build_model()
    assert model.config.num_labels == (1 if name == "stsb" else 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = task.train_stream(16, seed=0, rank=0, world_size=1)
    before = task.evaluate(model, None)
    for _ in range(12):
        loss = task.compute_loss(model, next(stream))
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = task.evaluate(model, None)
    expected_keys = {
        "cola": {"matthews_correlation"},
        "stsb": {"pearson", "spearmanr"},
        "mrpc": {"accuracy", "f1"},
        "qqp": {"accuracy", "f1"},
    }.get(name, {"accuracy"})
    assert set(after) == {"val_loss"} | expected_keys
    assert after[task.primary_metric] == after[GLUE_TASKS[name].primary_metric]
    # the fixture's labels follow one sentiment word: a few steps must learn something
    assert after["val_loss"] < before["val_loss"]


def test_eval_metric_matches_a_recomputation(glue_env):
    task = make_task(glue_env, "mrpc")
    model = task.build_model()
    metrics = task.evaluate(model, None)
    model.eval()
    with torch.no_grad():
        batch = task.collate(task.dev_examples)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    pred = logits.argmax(-1)
    labels = batch["labels"]
    tp = int(((pred == 1) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    assert metrics["accuracy"] == pytest.approx(float((pred == labels).float().mean()))
    assert metrics["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert metrics["val_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5
    )


@pytest.mark.parametrize(
    "task, optimizer", [("rte", "adamw"), ("stsb", "alphaadam"), ("cola", "alphaadam")]
)
def test_trains_through_the_shared_trainer(glue_env, tmp_path, task, optimizer):
    """``python train.py experiment=roberta_glue data.task=... `` with a tiny local model."""
    import json

    from _finetune_fixtures import compose
    from alphaadam.trainer import train

    glue_dir, model_dir = glue_env
    cfg = compose(
        [
            "experiment=roberta_glue",
            f"data.task={task}",
            f"optimizer={optimizer}",
            f"data.glue_dir={glue_dir}",
            f"model.name_or_path={model_dir}",
            "data.max_length=64",
            "optimizer.lr=3e-3",
            "trainer.max_epochs=2",
            "trainer.micro_batch_size=8",
            "trainer.gradient_accumulation_steps=2",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            f"trainer.output_root={tmp_path}",
        ]
    )
    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    metric = GLUE_TASKS[task].primary_metric
    # 48 examples / (8 x 2) = 3 steps per epoch; dev evaluated at both epoch ends
    assert summary["status"] == "completed" and summary["max_steps"] == 6
    assert [e["step"] for e in evals] == [3, 6]
    assert summary["task"] == "glue" and summary["dataset"] == task
    assert summary["primary_metric"] == metric and summary["primary_mode"] == "max"
    assert summary["best"][metric] == max(e[metric] for e in evals)
    assert summary["final"][metric] == evals[-1][metric]
    assert summary["best"]["step"] in (3, 6)
    if optimizer == "alphaadam":
        assert "alpha_mean" in next(r for r in records if r["kind"] == "train")


SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


@pytest.mark.data
@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="../shared/data/glue is absent")
@pytest.mark.parametrize(
    "task, split, rows, label_counts",
    [
        # row and label counts as published (../shared/data/README.md)
        ("rte", "train", 2490, {0: 1249, 1: 1241}),
        ("rte", "dev", 277, None),
        ("mrpc", "train", 3668, {0: 1194, 1: 2474}),
        ("mrpc", "dev", 408, None),
        ("cola", "train", 8551, {0: 2528, 1: 6023}),
        ("cola", "dev", 1043, None),
        ("sst2", "train", 67349, {0: 29780, 1: 37569}),
        ("sst2", "dev", 872, None),
        ("stsb", "train", 5749, None),
        ("stsb", "dev", 1500, None),
        ("qnli", "dev", 5463, {0: 2702, 1: 2761}),
    ],
)
def test_real_glue_files_parse_completely(task, split, rows, label_counts):
    from collections import Counter

    from alphaadam.tasks.glue import load_glue_split

    records = load_glue_split(glue_spec(task), split, str(SHARED_GLUE), "unused")
    assert len(records) == rows
    if label_counts is not None:
        assert dict(Counter(r["label"] for r in records)) == label_counts
    if task == "stsb":
        assert all(0.0 <= r["label"] <= 5.0 for r in records)
    assert all(r[c].strip() for r in records for c in glue_spec(task).text_columns)
