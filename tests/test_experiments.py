"""Every experiment config composes and trains for 2 steps with tiny overrides.

New experiments are picked up automatically; one whose task needs other tiny overrides
(a small model, local data) gets a row in TINY_OVERRIDES: a list of overrides, or a
function of the test's tmp_path that writes tiny files there and returns the overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trainer_helpers import CONFIG_DIR, compose_config, run_training, summary

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))

# Applied to every experiment: CPU, fp32, 2 optimizer steps, one eval.
COMMON = [
    "trainer.device=cpu",
    "trainer.mixed_precision=no",
    "trainer.compile=false",
    "trainer.max_epochs=null",
    "trainer.max_steps=2",
    "trainer.micro_batch_size=2",
    "trainer.gradient_accumulation_steps=1",
    "trainer.eval_every=0",
    "trainer.eval_fractions=[]",
    "trainer.checkpoint_every=0",
]
# Tiny model and generated data for language-modelling experiments.
TINY_LM = ["model=gpt_tiny", "data=smoke", "data.eval_iters=1", "data.eval_batch_size=2"]


def _tiny_glue(tmp: Path) -> list[str]:
    from _finetune_fixtures import write_glue_dir, write_tiny_roberta

    return [
        f"data.glue_dir={write_glue_dir(tmp / 'glue')}",
        f"model.name_or_path={write_tiny_roberta(tmp / 'roberta')}",
        "data.max_length=32",
    ]


def _tiny_gsm8k(tmp: Path) -> list[str]:
    from _finetune_fixtures import write_gsm8k_dir, write_tiny_llama

    return [
        f"data.path={write_gsm8k_dir(tmp / 'gsm8k')}",
        f"model.name_or_path={write_tiny_llama(tmp / 'llama')}",
        "model.gradient_checkpointing=false",
        "data.max_length=64",
        "data.eval_examples=2",
    ]


def _tiny_gsm8k_from_scratch(tmp: Path) -> list[str]:
    # The reduced Table 2 builds its Llama from model.config: a tiny config with the
    # fixture's tokenizer (its vocabulary size read from it) instead of the real Llama-2 one.
    from transformers import AutoTokenizer

    from _finetune_fixtures import write_gsm8k_dir, write_tiny_llama

    model_dir = write_tiny_llama(tmp / "llama")
    vocab = len(AutoTokenizer.from_pretrained(model_dir))
    return [
        f"data.path={write_gsm8k_dir(tmp / 'gsm8k')}",
        f"model.tokenizer={model_dir}",
        "model.tokenizer_class=AutoTokenizer",
        f"model.config.vocab_size={vocab}",
        "model.config.hidden_size=16",
        "model.config.intermediate_size=32",
        "model.config.num_hidden_layers=1",
        "model.config.num_attention_heads=2",
        "model.config.num_key_value_heads=2",
        "data.max_length=64",
        "data.eval_examples=2",
        "data.eval_generate_examples=1",
        "data.max_new_tokens=4",
        "data.validation_examples=4",  # of the fixture's 16 training problems
    ]


#: experiment -> its tiny overrides (default: TINY_LM)
TINY_OVERRIDES: dict[str, list[str] | Callable[[Path], list[str]]] = {
    "roberta_glue": _tiny_glue,
    "roberta_glue_qqp": _tiny_glue,
    "llama2_gsm8k": _tiny_gsm8k,
    "reduced_table1": _tiny_glue,
    "reduced_table2": _tiny_gsm8k_from_scratch,
}


def test_experiments_are_found():
    assert {"smoke", "gpt2_small", "gpt2_medium", "gpt2_large", "ablation_table3"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_two_steps(experiment, tmp_path):
    tiny = TINY_OVERRIDES.get(experiment, TINY_LM)
    overrides = [f"experiment={experiment}", *COMMON, *(tiny(tmp_path) if callable(tiny) else tiny)]
    run_dir = run_training(overrides, tmp_path)
    s = summary(run_dir)
    assert s["status"] == "completed"
    assert s["steps"] == 2
    # (the scaling study's name interpolates the width and steps the overrides set)
    assert s["experiment"] == compose_config(overrides).experiment_name


@pytest.mark.parametrize(
    ("experiment", "model", "lr", "micro", "accum"),
    [
        ("gpt2_small", (12, 12, 768), 6e-4, 12, 40),
        ("gpt2_medium", (24, 16, 1024), 3e-4, 6, 40),
        ("gpt2_large", (36, 20, 1280), 2e-4, 4, 40),
    ],
)
def test_gpt2_experiments_follow_paper_table5(experiment, model, lr, micro, accum):
    cfg = compose_config([f"experiment={experiment}", "optimizer=alphaadam"])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == model
    assert cfg.optimizer.name == "alphaadam"
    assert cfg.optimizer.lr == lr
    assert list(cfg.optimizer.betas) == [0.9, 0.95]
    assert cfg.optimizer.eps == 1e-8 and cfg.optimizer.weight_decay == 0.1
    assert cfg.data.block_size == 1024 and cfg.data.name == "openwebtext"
    assert (cfg.trainer.micro_batch_size, cfg.trainer.gradient_accumulation_steps) == (micro, accum)


def test_ablation_table3_is_gpt2_small_for_10k_steps_with_fractional_evals():
    cfg = compose_config(["experiment=ablation_table3", "optimizer=adamw_am"])
    small = compose_config(["experiment=gpt2_small", "optimizer=adamw_am"])
    assert cfg.experiment_name == "ablation_table3"
    assert cfg.trainer.max_steps == 10_000
    assert list(cfg.trainer.eval_fractions) == [0.2, 0.4, 0.6, 1.0]
    assert cfg.model == small.model and cfg.optimizer == small.optimizer and cfg.data == small.data


def test_default_config_is_the_cpu_smoke_run():
    cfg = compose_config([])
    assert cfg.experiment_name == "smoke"
    assert cfg.data.source == "smoke" and cfg.trainer.device == "cpu"


@pytest.mark.parametrize(
    ("override", "valid"),
    [
        ("optimizer=adamx", ["adamw", "adamw_sm", "adamw_am", "alphaadam"]),
        ("experiment=gpt3", ["gpt2_small", "smoke", "ablation_table3"]),
        ("data=c4", ["openwebtext", "text", "smoke"]),
        ("model=gpt5", ["gpt2_small", "gpt2_large"]),
    ],
)
def test_unknown_group_option_lists_valid_choices(override, valid):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_config([override])
    message = str(err.value)
    assert "Available options" in message
    for choice in valid:
        assert choice in message


def _built(overrides: list[str]):
    import torch
    from omegaconf import OmegaConf

    from alphaadam.optim.registry import build_optimizer

    cfg = compose_config(overrides)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    return opt_cfg["fused"], build_optimizer(opt_cfg.pop("name"), torch.nn.Linear(3, 2), **opt_cfg)


@pytest.mark.parametrize("experiment", ["smoke", "shakespeare_cpu"])
def test_cpu_experiments_run_the_fused_step_of_each_optimizer(experiment):
    from alphaadam.optim.fused_cpu import cpu_alphaadam
    from alphaadam.optim.step_paths import select_fused_impl

    for name in ("alphaadam", "alphaadam_onepass", "adamw_sm", "adamw_am", "cadamw"):
        fused, opt = _built([f"experiment={experiment}", f"optimizer={name}"])
        assert fused is True, name
        for group in opt.param_groups:
            assert select_fused_impl(group["fused"], group["foreach"], group["params"]) is (
                cpu_alphaadam
            ), name
    fused, adamw = _built([f"experiment={experiment}", "optimizer=adamw"])
    assert fused is True and all(g["fused"] and not g["foreach"] for g in adamw.param_groups)
    # Optimizers without a fused step are untouched; an explicit choice still wins.
    assert "fused" not in compose_config([f"experiment={experiment}", "optimizer=lion"]).optimizer
    fused, adamw = _built([f"experiment={experiment}", "optimizer=adamw", "optimizer.fused=false"])
    assert fused is False and all(g["foreach"] and not g["fused"] for g in adamw.param_groups)


def test_other_experiments_keep_each_optimizers_default_path():
    fused, opt = _built(["experiment=gpt2_small", "optimizer=alphaadam", "trainer.device=cpu"])
    assert fused is None and opt.param_groups[0]["fused"] is None
    fused, adamw = _built(["experiment=gpt2_small", "optimizer=adamw"])
    # On CPU parameters (this Linear) torch's AdamW runs foreach unless asked for fused.
    assert fused is None and all(g["foreach"] and not g["fused"] for g in adamw.param_groups)
    with pytest.raises(ValueError, match=r"fused='yes'.*None, True, False"):
        _built(["optimizer=adamw", "optimizer.fused=yes"])
