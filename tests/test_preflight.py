"""``trainer.preflight=true``: every experiment is checked in seconds on a CPU without
training or downloading weights; each kind of problem is a FAIL line and a non-zero exit.

Tiny stand-ins only where weights would be needed (GLUE's RoBERTa, GSM8K's Llama); the GPT-2
models are built at full size on the meta device. The GPT-2 tokenizer comes from tiktoken's
download, which these offline tests replace with a GPT-2-sized stand-in vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alphaadam import preflight as pf
from alphaadam.checks import check_model_source
from fake_hub import FakeHub
from test_openwebtext import write_raw_repo
from trainer_helpers import CONFIG_DIR, compose_config, subprocess_env

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
GPT2_VOCAB = 50257


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and empty Hugging Face caches, as on a fresh login node."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)


@pytest.fixture
def gpt2_sized_tiktoken(monkeypatch):
    """tiktoken's GPT-2 download replaced by an encoding of GPT-2's size (50,257 ids, EOT
    50256): the model's vocabulary, hence its parameter count, is GPT-2's."""
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({f"<t{i}>".encode(): i for i in range(256, GPT2_VOCAB - 1)})
    enc = tiktoken.Encoding(
        "gpt2-sized stand-in",
        pat_str=r"\S+|\s+",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_VOCAB - 1},
        explicit_n_vocab=GPT2_VOCAB,
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc)


def _stand_ins(experiment: str, tmp: Path) -> list[str]:
    """Local files for what each experiment would otherwise fetch."""
    from _finetune_fixtures import (
        write_glue_dir,
        write_gsm8k_dir,
        write_tiny_llama,
        write_tiny_roberta,
    )

    common = [f"trainer.output_root={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}"]
    if experiment == "reduced_table1":  # MiniLM's weights come with the [study] extra
        return [
            f"trainer.output_root={tmp / 'runs'}",
            f"data.glue_dir={write_glue_dir(tmp / 'glue')}",
            f"model.name_or_path={write_tiny_roberta(tmp / 'roberta')}",
        ]
    if experiment == "reduced_table2":  # a Llama built from its config: only a tokenizer
        return [
            f"trainer.output_root={tmp / 'runs'}",
            f"data.path={write_gsm8k_dir(tmp / 'gsm8k')}",
            f"model.tokenizer={write_tiny_llama(tmp / 'llama')}",
            "model.tokenizer_class=AutoTokenizer",
        ]
    if experiment in ("reduced_table3", "reduced_scaling"):
        (tmp / "input.txt").write_text("To be, or not to be.\n" * 100)
        return [*common, f"data.path={tmp / 'input.txt'}"]
    if experiment.startswith("roberta_glue"):
        return [
            f"trainer.output_root={tmp / 'runs'}",
            f"data.glue_dir={write_glue_dir(tmp / 'glue')}",
            f"model.name_or_path={write_tiny_roberta(tmp / 'roberta')}",
        ]
    if experiment == "llama2_gsm8k":
        return [
            f"trainer.output_root={tmp / 'runs'}",
            f"data.path={write_gsm8k_dir(tmp / 'gsm8k')}",
            f"model.name_or_path={write_tiny_llama(tmp / 'llama')}",
        ]
    if experiment == "shakespeare_cpu":
        (tmp / "input.txt").write_text("To be, or not to be.\n" * 100)
        return [*common, f"data.path={tmp / 'input.txt'}"]
    if experiment == "smoke":
        return [f"trainer.output_root={tmp / 'runs'}"]
    # OpenWebText experiments: a local copy of the repository, with a tiny expected size.
    write_raw_repo(tmp / "owt", shards=1, members=1, docs=2)
    return [*common, f"data.local_dir={tmp / 'owt'}", "data.expected_train_tokens=1000"]


def _preflight(overrides: list[str], **kw) -> pf.Report:
    return pf.preflight(compose_config(overrides), **kw)


def _by_name(report: pf.Report) -> dict[str, pf.Check]:
    return {c.name: c for c in report.checks}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_with_local_stand_ins(
    experiment, tmp_path, offline, gpt2_sized_tiktoken
):
    report = _preflight([f"experiment={experiment}", *_stand_ins(experiment, tmp_path)])
    print(report.render())
    assert report.ok, report.render()
    checks = _by_name(report)
    expected = {"config", "tokenizer", "data", "params", "optimizer", "memory", "batch", "output"}
    if experiment in ("shakespeare_cpu", "reduced_table3", "reduced_scaling"):
        expected.add("cache")  # where the text's tokens are cached
    if cfg_uses_hf_model(experiment):
        expected.add("model")  # the transformers model's files
    assert set(checks) == expected
    cfg = compose_config([f"experiment={experiment}"])
    global_batch = cfg.trainer.micro_batch_size * cfg.trainer.gradient_accumulation_steps
    assert f"global batch {global_batch} sequences" in checks["batch"].detail
    if cfg.model.name in ("gpt2_small", "gpt2_medium", "gpt2_large"):
        # Full size on the meta device: within 2% of the paper's Table 5.
        assert checks["params"].status == "ok" and "the paper's" in checks["params"].detail
    assert not (tmp_path / "runs").exists()  # nothing was created, let alone trained
    assert report.seconds < 60


def cfg_uses_hf_model(experiment: str) -> bool:
    return "name_or_path" in compose_config([f"experiment={experiment}"]).model


@pytest.mark.parametrize(
    ("experiment", "paper"),
    [("gpt2_small", 125e6), ("gpt2_medium", 355e6), ("gpt2_large", 770e6)],
)
def test_gpt2_sizes_on_the_meta_device_match_the_papers_table_5(
    experiment, paper, tmp_path, offline, gpt2_sized_tiktoken
):
    from alphaadam.tasks.lm import LMTask

    cfg = compose_config([f"experiment={experiment}"])
    task = LMTask(cfg.data, cfg.model)
    task.preflight()
    model = task.meta_model()
    n = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert abs(n - paper) / paper < 0.01, n  # Table 5: 125M / 355M / 770M


ROBERTA_BASE = {  # roberta-base's published config.json (architecture fields)
    "architectures": ["RobertaForMaskedLM"],
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-05,
}
LLAMA_2_7B = {  # meta-llama/Llama-2-7b-hf's published config.json (architecture fields)
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def _config_only(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_roberta_and_llama_from_their_configs_alone(tmp_path, offline):
    """The meta model needs config.json only: the paper's sizes without any weights."""
    from alphaadam.tasks.glue import GlueTask
    from alphaadam.tasks.gsm8k import GSM8KTask

    roberta = _config_only(tmp_path / "roberta-base", ROBERTA_BASE)
    glue = GlueTask(data={"task": "rte"}, model={"name_or_path": str(roberta)}).meta_model()
    n = sum(p.numel() for p in glue.parameters())
    assert abs(n - 125e6) / 125e6 < 0.01, n
    llama = _config_only(tmp_path / "llama", LLAMA_2_7B)
    causal = GSM8KTask(data={}, model={"name_or_path": str(llama)}).meta_model()
    # Llama-2-7B's exact count (Touvron et al. report "7B"; 6.74B is the usual figure).
    assert sum(p.numel() for p in causal.parameters()) == 6_738_415_616
    assert all(p.device.type == "meta" for p in causal.parameters())

    # Without weights the preflight says so (a run would fail to load them).
    check = check_model_source(str(llama), "hint")
    assert check.status == "FAIL" and "no complete weights" in check.detail


def test_memory_estimate_follows_the_layout(tmp_path, offline, gpt2_sized_tiktoken):
    owt = _stand_ins("gpt2_small", tmp_path)
    ddp = _by_name(_preflight(["experiment=gpt2_small", "optimizer=alphaadam", *owt]))["memory"]
    # 124,373,760 fp32 parameters: 4 B weights + 4 B gradients + 8 B AlphaAdam state.
    n = 124_373_760
    assert f"weights {n * 4 / 1e9:.2f} GB" in ddp.detail
    assert f"optimizer state {n * 8 / 1e9:.2f} GB (8 B/param)" in ddp.detail
    assert f"= {n * 16 / 1e9:.2f} GB per GPU" in ddp.detail and "every GPU holds all" in ddp.detail

    lion = _by_name(_preflight(["experiment=gpt2_small", "optimizer=lion", *owt]))["memory"]
    assert f"optimizer state {n * 4 / 1e9:.2f} GB (4 B/param)" in lion.detail

    fsdp = _by_name(
        _preflight(["experiment=gpt2_small", "optimizer=adamw", *owt], processes=4, fsdp=True)
    )["memory"]
    assert f"= {n * 16 / 4 / 1e9:.2f} GB per GPU" in fsdp.detail
    assert "each of 4 GPUs holds 1/4" in fsdp.detail
    assert "FSDP2 keeps unsharded gradients" in fsdp.detail  # 40 / 4 = 10 micro-batches each


def test_llama_7b_memory_matches_the_finetuning_docs(tmp_path, offline):
    """docs/finetuning.md: 16 B per parameter, 107.8 GB, i.e. 107.8 / N GB per GPU under
    FSDP; the meta model comes from Llama-2-7B's config alone."""
    from alphaadam.preflight import _check_memory
    from alphaadam.tasks.gsm8k import GSM8KTask

    llama = _config_only(tmp_path / "llama", LLAMA_2_7B)
    model = GSM8KTask(data={}, model={"name_or_path": str(llama)}).meta_model()
    cfg = compose_config(["experiment=llama2_gsm8k", "optimizer=alphaadam"])
    check = _check_memory(model, cfg, processes=4, fsdp=True)
    assert "= 26.95 GB per GPU" in check.detail  # 107.8 GB / 4
    single = _check_memory(model, cfg, processes=1, fsdp=False)
    assert "= 107.81 GB per GPU" in single.detail
    assert "With FSDP (trainer.preflight_fsdp=true): 2 GPUs 53.91 GB" in single.detail


def test_state_bytes_are_the_benchmarks_measurements():
    rows = json.loads((REPO / "results/benchmarks/optimizer_memory.json").read_text())["rows"]
    measured = {
        (r["name"], r["options"].get("rank") if r["name"] in pf.SHAPE_DEPENDENT else None): r[
            "bytes_per_param"
        ]
        for r in rows
        if isinstance(r["bytes_per_param"], float)
    }
    assert pf.STATE_BYTES_PER_PARAM == measured


@pytest.mark.parametrize(
    ("overrides", "check", "words"),
    [
        (
            ["trainer.gradient_accumulation_steps=3", "trainer.preflight_processes=2"],
            "config",
            "must be divisible by the 2 processes",
        ),
        (["trainer.mixed_precision=fp8"], "config", "valid: no, bf16, fp16"),
        (["trainer.max_steps=-5"], "config", "trainer.max_steps=-5 must be a whole number >= 1"),
        (["optimizer=alphaadam", "optimizer.betas=[0.9,1.5]"], "optimizer", "beta"),
        (["data=text", "data.path=/no/such/file.txt"], "task", "/no/such/file.txt"),
        (["+data.extra=${no_such_key}"], "config", "Interpolation key 'no_such_key' not found"),
    ],
)
def test_each_problem_is_a_fail_line(overrides, check, words, tmp_path, offline):
    report = _preflight(["experiment=smoke", f"trainer.output_root={tmp_path}", *overrides])
    failed = {c.name: c.detail for c in report.failed}
    assert list(failed) == [check], report.render()
    assert words in failed[check]


def test_an_unwritable_output_root_fails(tmp_path, offline):
    (tmp_path / "file").write_text("in the way")
    report = _preflight(["experiment=smoke", f"trainer.output_root={tmp_path / 'file' / 'runs'}"])
    assert [c.name for c in report.failed] == ["output"]
    assert "is not a directory" in report.failed[0].detail


def test_gated_llama_fails_with_the_licence_message(tmp_path, offline, monkeypatch):
    from huggingface_hub import constants

    from _finetune_fixtures import write_gsm8k_dir
    from alphaadam.hub import _endpoint_answers

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _endpoint_answers.cache_clear()
    with FakeHub() as hub:
        hub.gate("model", "meta-llama/Llama-2-7b-hf")
        hub.serve(monkeypatch)
        report = _preflight(
            [
                "experiment=llama2_gsm8k",
                f"data.path={write_gsm8k_dir(tmp_path / 'gsm8k')}",
                f"trainer.output_root={tmp_path}",
            ]
        )
    failed = {c.name: c.detail for c in report.failed}
    assert set(failed) == {"tokenizer", "model"}
    for detail in failed.values():
        assert "is gated" in detail and "hf auth login" in detail
        assert "model.name_or_path=<local dir>" in detail


def test_hub_model_is_checked_without_downloading_its_weights(tmp_path, offline, monkeypatch):
    """roberta-base on a (fake) Hub: access and config are checked, the weights are not
    fetched."""
    from huggingface_hub import constants

    from _finetune_fixtures import write_glue_dir, write_tiny_roberta
    from alphaadam.hub import _endpoint_answers

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    _endpoint_answers.cache_clear()
    with FakeHub() as hub:
        hub.add("model", "roberta-base", write_tiny_roberta(tmp_path / "roberta"))
        hub.serve(monkeypatch)
        report = _preflight(
            [
                "experiment=roberta_glue",
                f"data.glue_dir={write_glue_dir(tmp_path / 'glue')}",
                f"trainer.output_root={tmp_path / 'runs'}",
            ]
        )
        fetched = [r for r in hub.requests if r.startswith("GET /roberta-base/resolve/")]
    assert report.ok, report.render()
    assert "readable on the Hub" in _by_name(report)["model"].detail
    assert "weights are downloaded when the run starts" in _by_name(report)["model"].detail
    assert fetched and not [r for r in fetched if r.endswith((".safetensors", ".bin"))]
    # The tiny stand-in is not the paper's RoBERTa-base: a warning, not a failure.
    assert _by_name(report)["params"].status == "warn"
    assert "the paper's roberta-base: 125.0M" in _by_name(report)["params"].detail


def _run_train_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *overrides],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_train_py_preflight_exits_0_or_1_and_trains_nothing(tmp_path):
    good = _run_train_py(tmp_path, "trainer.preflight=true", f"trainer.output_root={tmp_path}/r")
    assert good.returncode == 0, good.stderr[-2000:]
    assert "Preflight passed" in good.stdout and "ok    params" in good.stdout
    bad = _run_train_py(
        tmp_path,
        "trainer.preflight=true",
        f"trainer.output_root={tmp_path}/r",
        "trainer.gradient_accumulation_steps=3",
        "trainer.preflight_processes=2",
    )
    assert bad.returncode == 1
    assert "FAIL  config" in bad.stdout and "Preflight FAILED (config)" in bad.stdout
    assert not (tmp_path / "r").exists()


def test_the_cuda_capacity_is_compared_when_a_gpu_is_visible(monkeypatch, tmp_path, offline):
    class Props:
        total_memory = 1_000_000

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
    report = _preflight(["experiment=smoke", f"trainer.output_root={tmp_path}"])
    assert [c.name for c in report.failed] == ["memory"]
    assert "more than this GPU's 1.0 MB" in report.failed[0].detail


def test_runs_saved_before_the_preflight_keys_still_resume(tmp_path):
    """resume=auto matches a run by its saved config; one written before the preflight keys
    existed lacks them, and must still be found (they never change what a run computes)."""
    from omegaconf import OmegaConf

    from alphaadam import run_dir as rd

    cfg = compose_config(["experiment=smoke", f"trainer.output_root={tmp_path}"])
    old = OmegaConf.to_container(cfg, resolve=True)
    for key in ("preflight", "preflight_processes", "preflight_fsdp"):
        del old["trainer"][key]
    # the run tree is <experiment>/<optimizer>/<stamp>; the optimizer is whatever the default is
    run = tmp_path / "smoke" / cfg.optimizer.name / "2026-01-01_00-00-00_abcdef"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "checkpoints" / "latest").symlink_to("step-00000002")
    OmegaConf.save(OmegaConf.create(old), run / rd.CONFIG)
    resumed = compose_config(
        ["experiment=smoke", f"trainer.output_root={tmp_path}", "trainer.resume=auto"]
    )
    assert rd.resolve_run_dir(resumed) == (run.resolve(), "resume")
