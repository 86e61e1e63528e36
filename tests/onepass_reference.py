"""The one-pass rule (``AlphaAdam(one_pass=True)``), transcribed literally, one tensor, float64.

Not the paper's algorithm: an extension that lets a fused step run in one pass over memory.
Written from its specification (docs/optimizer.md, "One-pass AlphaAdam"), without the
optimizer's code, in the style of ``algorithm1_reference.py``: plain float64 arithmetic on
fresh tensors, Python floats for the scalars, nothing shared with ``alphaadam.optim``.

Per tensor of ``d`` elements, step ``t``: everything of Algorithm 1 (see that file) up to
``u_t``, ``phi_t``, ``alpha_t`` and ``nnz_t = ||phi_t||_0``; then::

    usable  = a previous step exists and nnz_{t-1} > 0
    c_t     = alpha_{t-1} * d / (nnz_{t-1} + 1)   if usable      (the previous multiplier)
            = alpha_t     * d / (nnz_t + 1)       otherwise      (the exact step)
    theta   = theta * (1 - lr * wd) - lr * c_t * phi_t * u_t

(``d / (nnz + 1)`` is 1 without ``rescale``; with ``rescale="active"`` ``d`` is that step's
count of nonzero gradient elements, kept for step ``t + 1`` like ``nnz``.) ``alpha_t`` and
``nnz_t`` are kept for step
``t + 1``. The exact step at ``t = 1`` matters: the asynchronous mask of step 1 is empty
(``h_0 = 0``), and its count would scale step 2 by ``d / 1``. ``mask="none"`` is AdamW.
Reported: ``alpha_t``, ``nnz_t / d`` and the multiplier applied, ``step_scale``: ``c_t``, or
0 when the exact step's mask is empty (it moved nothing).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from algorithm1_reference import Hyper


class OnePass:
    """The state of one tensor under the one-pass rule."""

    def __init__(self, theta: Tensor, hp: Hyper) -> None:
        self.hp = hp
        self.theta = theta.detach().to(torch.float64).clone()
        self.h = torch.zeros_like(self.theta)
        self.v = torch.zeros_like(self.theta)
        self.t = 0
        self.prev_alpha: float | None = None  # None: no previous step
        self.prev_nnz: float | None = None
        self.prev_active: float | None = None
        self.alpha: float | None = None
        self.mask_density: float | None = None
        self.step_scale: float | None = None

    def step(self, grad: Tensor) -> Tensor:
        hp = self.hp
        g = grad.detach().to(torch.float64)
        if hp.maximize:
            g = -g
        self.t += 1
        t = self.t
        d = self.theta.numel()

        d_t = g * self.h  # with h_{t-1}
        self.h = hp.beta1 * self.h + (1.0 - hp.beta1) * g
        self.v = hp.beta2 * self.v + (1.0 - hp.beta2) * g * g
        if hp.bias_correction:
            u = (self.h / (1.0 - hp.beta1**t)) / (torch.sqrt(self.v / (1.0 - hp.beta2**t)) + hp.eps)
        else:
            u = self.h / (torch.sqrt(self.v) + hp.eps)
        theta = self.theta * (1.0 - hp.lr * hp.weight_decay)

        if hp.mask == "none":
            self.theta = theta - hp.lr * u
            return self.theta

        if hp.mask == "async":
            phi = (d_t > 0).to(torch.float64)
        else:
            phi = (g * self.h > 0).to(torch.float64)
        total = float((u * u).sum())
        kept = float(((phi * u) * (phi * u)).sum())
        if hp.alpha == "none":
            alpha = 1.0
        elif kept == 0.0:
            alpha = hp.alpha_max
        elif hp.alpha == "ratio":
            alpha = min(total / kept, hp.alpha_max)
        else:
            alpha = min(math.sqrt(total / kept), hp.alpha_max)
        nnz = float(phi.sum())
        active = float((g != 0).sum())

        def multiplier(a: float, count: float, d_active: float) -> float:
            if hp.rescale == "active":
                return a * d_active / (count + 1.0)
            return a * d / (count + 1.0) if hp.rescale else a

        usable = self.prev_nnz is not None and self.prev_nnz > 0
        if usable:
            c = multiplier(self.prev_alpha, self.prev_nnz, self.prev_active)
            self.step_scale = c
        else:
            c = multiplier(alpha, nnz, active)
            self.step_scale = c if nnz > 0 else 0.0
        self.theta = theta - hp.lr * c * phi * u

        self.prev_alpha, self.prev_nnz, self.prev_active = alpha, nnz, active
        self.alpha = alpha
        self.mask_density = nnz / d if d > 0 else 0.0
        self.grad_density = active / d if d > 0 else 0.0
        return self.theta
