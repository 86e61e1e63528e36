"""GSM8K SFT adapter: prompt masking, truncation, packing, loss, exact-match and lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _finetune_fixtures import GSM8K_PROBLEMS, write_gsm8k_dir, write_tiny_llama
from alphaadam.eval.gsm8k import main as gsm8k_cli
from alphaadam.eval.gsm8k import score_gsm8k
from alphaadam.tasks.gsm8k import GSM8KTask, pack_examples, tokenize_sft


@pytest.fixture(scope="module")
def gsm_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsm8k")
    return write_gsm8k_dir(root / "data"), write_tiny_llama(root / "llama", hidden=64)


def make_task(gsm_env, **data):
    data_dir, model_dir = gsm_env
    task = GSM8KTask(
        {"path": str(data_dir), "max_length": 128, **data}, {"name_or_path": str(model_dir)}
    )
    task.setup(None)
    return task


def test_prompt_is_masked_and_answer_is_trained(gsm_env):
    task = make_task(gsm_env)
    tok = task.tokenizer
    q, a = GSM8K_PROBLEMS[0]
    ex = tokenize_sft(tok, {"question": q, "answer": a}, 128)
    prompt_len = len(tok(f"Question: {q}\nAnswer:")["input_ids"])
    assert ex["labels"][:prompt_len] == [-100] * prompt_len
    assert ex["labels"][prompt_len:] == ex["input_ids"][prompt_len:]
    assert tok.decode(ex["input_ids"][prompt_len:]) == f" {a}</s>"
    assert ex["input_ids"][0] == tok.bos_token_id


def test_truncation_keeps_prompt_and_drops_answerless(gsm_env):
    tok = make_task(gsm_env).tokenizer
    q, a = GSM8K_PROBLEMS[1]
    prompt_len = len(tok(f"Question: {q}\nAnswer:")["input_ids"])
    cut = tokenize_sft(tok, {"question": q, "answer": a}, prompt_len + 2)
    assert len(cut["input_ids"]) == prompt_len + 2
    assert sum(label != -100 for label in cut["labels"]) == 2
    assert tokenize_sft(tok, {"question": q, "answer": a}, prompt_len) is None


def test_packing_keeps_whole_examples_and_restarts_positions(gsm_env):
    task = make_task(gsm_env)
    examples = task.train_examples
    packed = pack_examples(examples, 128)
    assert len(packed) < len(examples)
    assert all(len(p["input_ids"]) <= 128 for p in packed)
    assert sum(len(p["input_ids"]) for p in packed) == sum(len(e["input_ids"]) for e in examples)
    assert sum(p["input_ids"].count(task.tokenizer.bos_token_id) for p in packed) == len(examples)
    first = packed[0]
    starts = [i for i, pos in enumerate(first["position_ids"]) if pos == 0]
    assert len(starts) >= 2 and all(
        first["input_ids"][i] == task.tokenizer.bos_token_id for i in starts
    )
    batch = make_task(gsm_env, packing=True).collate(packed[:2])
    assert torch.equal(
        batch["position_ids"][0, : len(first["input_ids"])], torch.tensor(first["position_ids"])
    )


def test_loss_is_mean_over_answer_tokens(gsm_env):
    task = make_task(gsm_env)
    model = task.build_model()
    batch = next(task.train_stream(4, seed=0, rank=0, world_size=1))
    loss = task.compute_loss(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.float(), -1)
    total, count = 0.0, 0
    for b in range(batch["input_ids"].shape[0]):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][b, t] != -100:
                total -= float(logp[b, t - 1, batch["labels"][b, t]])
                count += 1
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-5)
    assert task.steps_per_epoch(32) == 1 and task.steps_per_epoch(5) == 4  # 16 examples


def overfit(task, steps=120):
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    stream = task.train_stream(4, seed=0, rank=0, world_size=1)
    for _ in range(steps):
        task.compute_loss(model, next(stream)).backward()
        opt.step()
        opt.zero_grad()
    return model


def test_sft_then_exact_match_and_val_loss(gsm_env, tmp_path):
    task = make_task(gsm_env, eval_generate_examples=4, max_new_tokens=24)
    before = task.evaluate(task.build_model(), None)
    assert before["exact_match_strict"] == 0.0
    model = overfit(task)
    after = task.evaluate(model, None)
    assert after["val_loss"] < 0.1 < before["val_loss"]
    # the test problems are the training problems: a memorising model answers them all
    assert after["exact_match_strict"] == 1.0 and after["exact_match_flexible"] == 1.0
    out = score_gsm8k(model, task.tokenizer, task.test_records, max_new_tokens=24)
    assert out["completions"][1].strip().endswith("#### 24")

    model.save_pretrained(tmp_path / "ft")
    task.tokenizer.save_pretrained(tmp_path / "ft")
    result = gsm8k_cli(
        [
            "--model",
            str(tmp_path / "ft"),
            "--data",
            str(gsm_env[0]),
            "--dtype",
            "float32",
            "--max-new-tokens",
            "24",
            "--output",
            str(tmp_path / "em.json"),
            "--device",
            "cpu",
        ]
    )
    assert result["exact_match_strict"] == 1.0
    assert json.loads((tmp_path / "em.json").read_text())["num_examples"] == 4


def overfit_run(gsm_env, tmp_path):
    """A run of the real experiment config that memorises the 4 fixture problems."""
    from _finetune_fixtures import compose
    from alphaadam.trainer import train

    data_dir, model_dir = gsm_env
    small = write_gsm8k_dir(tmp_path / "data4", n_train=4, n_test=4)
    cfg = compose(
        [
            "experiment=llama2_gsm8k",
            f"data.path={small}",
            f"model.name_or_path={model_dir}",
            "data.max_length=128",
            "model.gradient_checkpointing=false",
            "optimizer.lr=3e-3",
            "trainer.max_epochs=null",
            "trainer.max_steps=120",
            "trainer.warmup_steps=0",
            "trainer.lr_schedule=constant",
            "trainer.micro_batch_size=4",
            "trainer.gradient_accumulation_steps=1",
            "trainer.mixed_precision=no",
            "trainer.mask_stats_every=0",
            "trainer.log_every=40",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            f"trainer.output_root={tmp_path / 'runs'}",
        ]
    )
    return train(cfg), small


def test_run_scored_by_builtin_harness_records_accuracy(gsm_env, tmp_path):
    from alphaadam.eval.gsm8k_run import main as score_run
    from alphaadam.results.runs import load_run

    run_dir, data = overfit_run(gsm_env, tmp_path)
    args = [str(run_dir), "--data-dir", str(data), "--harness", "builtin", "--dtype", "float32"]
    result = score_run(args + ["--max-new-tokens", "24", "--device", "cpu"])
    assert result["accuracy"] == 1.0 and result["num_examples"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["accuracy"] == 1.0
    assert summary["accuracy_eval"]["harness"] == "builtin"
    assert (run_dir / "gsm8k_eval_builtin.json").is_file()
    load_run(run_dir)  # still a valid run directory for the tables code


@pytest.mark.slow
def test_lm_eval_local_task_scores_the_finetuned_run(gsm_env, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is in the eval extra (pip install -e '.[eval]')")
    from alphaadam.eval.gsm8k_run import main as score_run
    from alphaadam.eval.gsm8k_run import run_lm_eval

    run_dir, data = overfit_run(gsm_env, tmp_path)
    args = [str(run_dir), "--data-dir", str(data), "--num-fewshot", "0", "--dtype", "float32"]
    result = score_run(args + ["--batch-size", "4", "--max-new-tokens", "24", "--device", "cpu"])
    assert result["num_examples"] == 4 and result["num_fewshot"] == 0
    assert result["exact_match_strict"] == 1.0 and result["exact_match_flexible"] == 1.0
    assert json.loads((run_dir / "summary.json").read_text())["final"]["accuracy"] == 1.0
    # the untrained model answers nothing: the score depends on the weights
    untrained = run_lm_eval(gsm_env[1], str(data), 0, None, 4, "float32", "cpu", 24)
    assert untrained["exact_match_strict"] == 0.0


def test_lm_eval_task_needs_data_offline(monkeypatch, tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval is in the eval extra (pip install -e '.[eval]')")
    import importlib.util

    from alphaadam.eval import LM_EVAL_TASKS_DIR

    spec = importlib.util.spec_from_file_location(
        "u", LM_EVAL_TASKS_DIR / "gsm8k_local" / "utils.py"
    )
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    monkeypatch.delenv("GSM8K_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        utils.load_gsm8k(data_dir=str(tmp_path))
    write_gsm8k_dir(tmp_path, n_train=3, n_test=2)
    monkeypatch.setenv("GSM8K_DATA_DIR", str(tmp_path))
    ds = utils.load_gsm8k(version=3.0)
    assert ds["train"].num_rows == 3 and ds["test"].num_rows == 2
    assert ds["test"][0]["question"] == GSM8K_PROBLEMS[0][0]


@pytest.mark.parametrize("packing", [False, True])
def test_sft_through_the_shared_trainer(gsm_env, tmp_path, packing):
    """``python train.py experiment=llama2_gsm8k`` with a tiny local Llama, then the
    exported final checkpoint is scored by the built-in exact-match scorer."""
    from _finetune_fixtures import compose
    from alphaadam.eval.export import export_hf_model
    from alphaadam.trainer import train

    data_dir, model_dir = gsm_env
    cfg = compose(
        [
            "experiment=llama2_gsm8k",
            "optimizer=alphaadam",
            f"data.path={data_dir}",
            f"model.name_or_path={model_dir}",
            f"data.packing={packing}",
            "data.max_length=128",
            "data.eval_generate_examples=2",
            "data.max_new_tokens=8",
            "optimizer.lr=3e-3",
            "trainer.max_epochs=2",
            "trainer.warmup_steps=1",
            "trainer.micro_batch_size=2",
            "trainer.gradient_accumulation_steps=2",
            "trainer.mixed_precision=no",
            "trainer.mask_stats_every=1",
            "trainer.device=cpu",
            "trainer.progress_bar=false",
            f"trainer.output_root={tmp_path}",
        ]
    )
    run_dir = train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    sequences = 16 if not packing else len(pack_examples(make_task(gsm_env).train_examples, 128))
    per_epoch = -(-sequences // 4)
    assert summary["status"] == "completed" and summary["max_steps"] == 2 * per_epoch
    assert summary["task"] == "gsm8k" and summary["dataset"] == "gsm8k"
    # Figure 3 needs the loss at every step
    assert [r["step"] for r in train_records] == list(range(1, 2 * per_epoch + 1))
    assert [e["step"] for e in evals] == [per_epoch, 2 * per_epoch]
    assert {"val_loss", "exact_match_strict", "exact_match_flexible"} <= set(summary["final"])
    assert (run_dir / "mask_stats.jsonl").stat().st_size > 0

    hf_dir = export_hf_model(run_dir)
    exported = GSM8KTask({"path": str(data_dir), "max_length": 128}, {"name_or_path": str(hf_dir)})
    exported.setup(None)
    model = exported.build_model()
    # the exported weights are the trained ones: same val_loss as the run's final eval
    assert exported.evaluate(model, None)["val_loss"] == pytest.approx(
        summary["final"]["val_loss"], rel=1e-4
    )


SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


@pytest.mark.data
@pytest.mark.skipif(not SHARED_GSM8K.is_dir(), reason="../shared/data/gsm8k is absent")
def test_real_gsm8k_gives_the_papers_702_steps(gsm_env):
    from _finetune_fixtures import compose
    from alphaadam.eval.gsm8k import gold_answer

    cfg = compose(["experiment=llama2_gsm8k"])
    tc = cfg.trainer
    assert cfg.data.max_length == 512
    # The test's tokenizer is a byte-level toy (far more tokens per word than Llama's), so
    # the length limit is lifted here: every problem must be kept.
    data = {**cfg.data, "path": str(SHARED_GSM8K), "max_length": 100_000}
    task = GSM8KTask(data, {"name_or_path": str(gsm_env[1])})
    task.setup(None)
    assert len(task.train_examples) == 7473 and len(task.test_records) == 1319
    global_batch = tc.micro_batch_size * tc.gradient_accumulation_steps
    assert global_batch == 32
    # Table 6: 3 epochs = 702 steps, 20 warm-up, lr 5e-5, betas (0.9, 0.999), max length 512
    assert tc.max_epochs * task.steps_per_epoch(global_batch) == 702
    assert (tc.warmup_steps, cfg.optimizer.lr, list(cfg.optimizer.betas)) == (
        20,
        5e-5,
        [0.9, 0.999],
    )
    # every gold answer parses as a number
    assert all(gold_answer(r["answer"]) is not None for r in task.test_records)


def test_validation_split_is_the_last_training_problems_held_out(gsm_env, tmp_path):
    data_dir, model_dir = gsm_env
    train = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    task = make_task(gsm_env, validation_examples=4)
    assert len(task.train_examples) == len(train) - 4
    # The same 4 problems as the test split of another task: its answer loss must be the
    # first task's val_loss; the first task's test_loss is its own test split's.
    other = tmp_path / "held_out"
    other.mkdir()
    (other / "train.jsonl").write_text((data_dir / "train.jsonl").read_text())
    (other / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[-4:]))
    reference = GSM8KTask({"path": str(other), "max_length": 128}, {"name_or_path": str(model_dir)})
    reference.setup(None)
    plain = make_task(gsm_env)
    torch.manual_seed(0)
    model = task.build_model()
    metrics = task.evaluate(model)
    assert set(metrics) == {"val_loss", "test_loss"}
    assert metrics["val_loss"] == pytest.approx(reference.evaluate(model)["val_loss"], rel=1e-12)
    assert metrics["test_loss"] == pytest.approx(plain.evaluate(model)["val_loss"], rel=1e-12)


def test_validation_split_that_leaves_no_training_problem_is_refused(gsm_env):
    with pytest.raises(ValueError, match="validation_examples=16 leaves no training problem"):
        make_task(gsm_env, validation_examples=16)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "answer": "1 #### 1"', r"train.jsonl:3: not valid JSON \(.* at column"),
        (
            '{"question": "q", "answer": "no final answer"}',
            r"train.jsonl:3: GSM8K answer has no '####'",
        ),
        ('{"question": "q"}', r"train.jsonl:3: expected keys 'question' and 'answer'"),
    ],
    ids=["malformed", "no-gold-answer", "no-answer-key"],
)
def test_a_bad_gsm8k_line_is_named_by_file_and_line_at_load(tmp_path, line, message):
    from alphaadam.eval.gsm8k import read_gsm8k_jsonl

    good = json.dumps({"question": "q", "answer": "2 #### 2"})
    path = tmp_path / "train.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n")  # line 2 is blank, line 3 the bad one
    with pytest.raises(ValueError, match=message):
        read_gsm8k_jsonl(path)
