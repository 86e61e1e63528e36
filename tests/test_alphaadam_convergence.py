"""Every preset trains small real problems (scikit-learn's bundled datasets, no network).

Thresholds were set after measuring (seed 0, full batch, weight decay 0.01, 1 thread):

* logistic regression on breast cancer (569 x 30, standardised), lr 0.05: loss 0.684 at
  step 1; after 100 steps 0.0556 (adamw_sm) .. 0.0576 (adamw). Threshold: < 0.08.
* MLP 64-32-10 (tanh) on digits (1797 x 64, standardised), lr 0.01: loss 2.35 at step 1;
  after 100 steps 0.019 (adamw_sm) .. 0.024 (adamw). Threshold: < 0.05 and training
  accuracy > 99%.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

from alphaadam import PRESETS, alphaadam_preset


def standardised(loader):
    x, y = loader(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / (x.std(0) + 1e-6), torch.tensor(y)


def train(model, loss_fn, preset, lr, steps, foreach):
    opt = alphaadam_preset(preset, model.parameters(), lr=lr, weight_decay=0.01, foreach=foreach)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        return first, loss_fn().item(), opt


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_logistic_regression_breast_cancer(preset, foreach):
    torch.manual_seed(0)
    x, y = standardised(load_breast_cancer)
    model = nn.Linear(30, 1)

    def loss_fn():
        return nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())

    first, final, opt = train(model, loss_fn, preset, lr=0.05, steps=100, foreach=foreach)
    assert first > 0.6
    assert final < 0.08, f"{preset}: loss {final:.4f} after 100 steps"
    if PRESETS[preset]["mask"] != "none":
        stats = opt.read_mask_statistics(model.named_parameters())
        assert set(stats) == {"weight", "bias"}


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_mlp_digits(preset, foreach):
    torch.manual_seed(0)
    x, y = standardised(load_digits)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    first, final, _ = train(model, loss_fn, preset, lr=0.01, steps=100, foreach=foreach)
    assert first > 2.0
    assert final < 0.05, f"{preset}: loss {final:.4f} after 100 steps"
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.99
