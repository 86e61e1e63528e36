"""rescale="active" (the extension), the warning where Algorithm 1's rescale is extreme, and
per-parameter settings from the config (``optimizer.param_overrides``)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from alphaadam import AlphaAdam, alphaadam_preset
from alphaadam.optim.registry import build_optimizer


class Bag(nn.Module):
    """A 100-row embedding and a dense layer: a batch touches only a few embedding rows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.word_embeddings = nn.Embedding(100, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.word_embeddings(ids)).sum()


def _step(model: nn.Module, opt, ids=(3, 7)) -> None:
    opt.zero_grad()
    model(torch.tensor(ids)).backward()
    opt.step()


def test_embedding_gradient_density_is_the_rows_in_the_batch():
    model = Bag()
    opt = AlphaAdam(model.parameters(), lr=1e-3, mask="sync")
    _step(model, opt)
    stats = opt.read_mask_statistics(model.named_parameters())
    # 2 of 100 rows have a gradient: 8 of 400 elements; the dense layer's are all nonzero.
    assert stats["word_embeddings.weight"]["grad_density"] == pytest.approx(8 / 400)
    assert stats["head.weight"]["grad_density"] == 1.0


def test_one_warning_per_tensor_where_the_papers_rescale_is_extreme(caplog):
    model = Bag()
    opt = AlphaAdam(model.parameters(), lr=1e-3, mask="sync")
    with caplog.at_level(logging.WARNING, logger="alphaadam.optim.masked_optimizer"):
        for _ in range(3):
            _step(model, opt)
            opt.read_mask_statistics(model.named_parameters())
    warnings = [r.getMessage() for r in caplog.records]
    # Only the embedding. At step 1 the synchronous mask keeps every element with a gradient
    # (h_1 = 0.1 g has g's signs): nnz = 8 of 400, alpha = 1 (u is 0 elsewhere), so the
    # multiplier is 400 / 9 = 44.4x; the dense layer's stays near 1-2x.
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert "word_embeddings.weight" in message and "(100, 4)" in message
    assert "2.00% of its elements have a nonzero gradient" in message
    assert "rescale='active'" in message
    assert "by 44.4x the lr (mask density 2.00%)" in message


def test_no_warning_with_the_active_rescale_and_its_multiplier_is_the_rows_only(caplog):
    model = Bag()
    opt = AlphaAdam(model.parameters(), lr=1e-3, mask="sync", rescale="active")
    with caplog.at_level(logging.WARNING, logger="alphaadam.optim.masked_optimizer"):
        _step(model, opt)
        stats = opt.read_mask_statistics(model.named_parameters())
    assert caplog.records == []
    emb = stats["word_embeddings.weight"]
    nnz = round(emb["mask_density"] * 400)
    # d_active = 8, so the multiplier is alpha * 8 / (nnz + 1), at most 2 * 8 / 1.
    assert emb["step_scale"] == pytest.approx(emb["alpha"] * 8 / (nnz + 1), rel=1e-6)


def test_param_overrides_give_the_embedding_a_group_of_its_own():
    model = Bag()
    opt = build_optimizer("alphaadam_embed_norescale", model, lr=1e-3, weight_decay=0.1)
    by_param = {
        name: group for group in opt.param_groups for p in group["params"]
        for name, q in model.named_parameters() if q is p
    }  # fmt: skip
    assert by_param["word_embeddings.weight"]["rescale"] is False
    assert by_param["head.weight"]["rescale"] is True
    assert by_param["head.bias"]["rescale"] is True
    # The decay split is kept: the embedding is a matrix (decayed), the bias is not.
    assert by_param["word_embeddings.weight"]["weight_decay"] == 0.1
    assert by_param["head.bias"]["weight_decay"] == 0.0


def test_param_overrides_that_match_nothing_or_overlap_are_errors():
    with pytest.raises(ValueError, match=r"\['embed_tokenz'\] match no parameter name"):
        build_optimizer(
            "alphaadam", Bag(), lr=1e-3, param_overrides={"embed_tokenz": {"rescale": False}}
        )
    with pytest.raises(ValueError, match="matches several patterns"):
        build_optimizer(
            "alphaadam",
            Bag(),
            lr=1e-3,
            param_overrides={"head": {"rescale": False}, "weight": {"rescale": False}},
        )


def test_masked_presets_take_a_rescale_the_plain_one_does_not():
    params = [nn.Parameter(torch.ones(3))]
    assert alphaadam_preset("adamw_sm", params, rescale="active").defaults["rescale"] == "active"
    assert alphaadam_preset("alphaadam", params, rescale=False).defaults["rescale"] is False
    with pytest.raises(ValueError, match=r"fixes \['rescale'\]"):
        alphaadam_preset("adamw", params, rescale="active")
    with pytest.raises(ValueError, match="valid choices are True, False, 'active'"):
        AlphaAdam(params, rescale="sparse")


@pytest.mark.parametrize("name", ["alphalion", "alphasgd"])
def test_lion_and_sgd_variants_count_active_elements(name):
    model = Bag()
    extra = {"momentum": 0.9} if name == "alphasgd" else {}
    opt = build_optimizer(name, model, lr=1e-3, mask="sync", rescale="active", **extra)
    _step(model, opt)
    emb = opt.read_mask_statistics(model.named_parameters())["word_embeddings.weight"]
    nnz = round(emb["mask_density"] * 400)
    assert emb["grad_density"] == pytest.approx(8 / 400)
    assert emb["step_scale"] == pytest.approx(emb["alpha"] * 8 / (nnz + 1), rel=1e-6)


def test_the_config_option_builds_the_active_rescale():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from trainer_helpers import CONFIG_DIR

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["optimizer=cadamw", "optimizer.rescale=active"])
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    opt = build_optimizer(opt_cfg.pop("name"), Bag(), **opt_cfg)
    assert {g["rescale"] for g in opt.param_groups} == {"active"}
    assert {g["mask"] for g in opt.param_groups} == {"sync"}
