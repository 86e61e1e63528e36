"""AlphaAdam inside the Hugging Face Trainer (README: "With the Hugging Face Trainer").

``Trainer(optimizer_cls_and_kwargs=(AlphaAdam, {...}))`` (transformers >= 4.38) builds the
optimizer from the Trainer's two parameter groups (with and without weight decay). A tiny GPT-2
trains a few CPU steps; the optimizer that stepped must be AlphaAdam with the given
settings, and its per-tensor mask statistics must be readable by parameter name afterwards.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from alphaadam import AlphaAdam

STEPS, LR = 6, 3e-3


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int, vocab: int):
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_steps_alphaadam_and_its_mask_statistics_are_readable(tmp_path):
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, tie_word_embeddings=True
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        weight_decay=0.1,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=RandomTokens(32, 16, config.vocab_size),
        optimizer_cls_and_kwargs=(AlphaAdam, {"lr": LR, "betas": (0.9, 0.95)}),
    )
    trainer.train()

    # accelerate wraps the optimizer; the one underneath is what stepped.
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(opt) is AlphaAdam
    assert {g["lr"] for g in opt.param_groups} == {LR}  # constant schedule: lr as given
    assert all(g["betas"] == (0.9, 0.95) and g["mask"] == "async" for g in opt.param_groups)
    # The Trainer's groups: weight decay on matrices, none on biases and LayerNorms.
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]
    named = dict(model.named_parameters())
    for p in named.values():
        assert opt.state[p]["step"].item() == STEPS  # every step went through this optimizer
    assert any(not torch.equal(before[n], p) for n, p in named.items())

    stats = opt.read_mask_statistics(model.named_parameters())
    assert set(stats) == set(named)  # the tied lm_head is the embedding: one entry
    for name, s in stats.items():
        assert set(s) == {"alpha", "mask_density", "grad_density", "step_scale"}, name
        assert 0.0 <= s["grad_density"] <= 1.0, (name, s)
        assert 1.0 <= s["alpha"] <= 2.0, (name, s)
        assert 0.0 <= s["mask_density"] <= 1.0, (name, s)
        # Algorithm 1's step multiplier: alpha * d / (||phi||_0 + 1).
        d = named[name].numel()
        kept = round(s["mask_density"] * d)
        assert s["step_scale"] == pytest.approx(s["alpha"] * d / (kept + 1), rel=1e-5), name
    # After the first step's empty mask, the async mask keeps some coordinates and drops some.
    assert any(0.0 < s["mask_density"] < 1.0 for s in stats.values())
    # The device-tensor form agrees with the floats.
    tensors = opt.mask_statistics(model.named_parameters())
    for name, s in stats.items():
        assert tensors[name]["alpha"].item() == pytest.approx(s["alpha"])
