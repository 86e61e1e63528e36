"""Algorithm 1 of the AlphaAdam paper, transcribed line by line, one tensor, float64.

Written from ``/work/shared/paper/PAPER.md`` (Algorithm 1 as printed) without reading the
optimizer's code, so that the tests compare the package against an independent expectation.
Deliberately naive: plain float64 arithmetic on fresh tensors, Python floats for the
scalars, no in-place tricks, no foreach, nothing shared with ``alphaadam.optim``.

The paper's Algorithm 1, per parameter tensor of ``d`` elements::

    g_t     = grad L(theta_t)
    d_t     = g_t * h_{t-1}
    h_t     = b1 h_{t-1} + (1 - b1) g_t
    v_t     = b2 v_{t-1} + (1 - b2) g_t^2
    u_t     = h_t / (sqrt(v_t) + eps)
    phi_t   = 1[d_t > 0]
    alpha_t = ||u_t||^2 / ||phi_t * u_t||^2
    eta^    = eta * d / (||phi_t||_0 + 1)
    theta   = theta - eta^ * alpha_t * phi_t * u_t

Options and the semantics the package documents (alphaadam.py module docstring) for
what the paper leaves open:

* ``mask="async"``: ``phi = 1[g_t * h_{t-1} > 0]`` (strict ``>``: a zero gradient or a
  zero momentum never passes). ``"sync"``: ``phi = 1[g_t * h_t > 0]`` with the updated
  momentum (Cautious). ``"none"``: no mask, and then neither alpha nor the rescale is
  applied either: the step is plain Adam(W), ``theta -= eta * u_t``.
* ``alpha="ratio"``: ``min(||u||^2 / ||phi u||^2, alpha_max)``; ``"sqrt_ratio"``: the square
  root of the ratio (Section 3.2.2), then clipped at ``alpha_max``; ``"none"``: 1.
* Empty mask (``||phi u||^2 == 0``, e.g. every async step 1 because ``h_0 = 0``): nothing
  moves through the masked update; alpha is *reported* as ``alpha_max`` (the limit of the
  clipped ratio), never NaN/inf.
* ``rescale``: multiply the step by ``d / (nnz + 1)`` with ``nnz = ||phi||_0``; the ``+ 1``
  is kept as printed (so a full mask scales by ``d / (d + 1)``, not 1). ``rescale="active"``
  (the package's extension, docs/optimizer.md): ``d`` is replaced by the number of the
  tensor's elements whose gradient is nonzero this step (after ``maximize``'s negation, which
  changes no zero).
* Gradient density reported: that nonzero count over ``d`` (0 for a zero-size tensor).
* ``bias_correction=True``: ``h_t`` and ``v_t`` are replaced by ``h_t / (1 - b1^t)`` and
  ``v_t / (1 - b2^t)`` inside ``u_t`` (AdamW's form; the mask still reads the raw momenta,
  which have the same signs). ``False`` is the pseudo-code as printed.
* ``weight_decay``: decoupled, ``theta *= 1 - eta * wd`` on every coordinate (masked or
  not) with the un-rescaled ``eta``, before the masked update, like AdamW.
* ``maximize``: the gradient is negated first.
* Mask density reported: ``nnz / d`` (0 for a zero-size tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Hyper:
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    mask: str = "async"
    alpha: str = "ratio"
    alpha_max: float = 2.0
    rescale: bool | str = True
    bias_correction: bool = True
    maximize: bool = False


class Algorithm1:
    """The state of one tensor under Algorithm 1: ``theta``, ``h``, ``v`` and ``t``."""

    def __init__(self, theta: Tensor, hp: Hyper) -> None:
        self.hp = hp
        self.theta = theta.detach().to(torch.float64).clone()
        self.h = torch.zeros_like(self.theta)
        self.v = torch.zeros_like(self.theta)
        self.t = 0
        self.alpha: float | None = None
        self.mask_density: float | None = None
        self.grad_density: float | None = None

    def step(self, grad: Tensor) -> Tensor:
        hp = self.hp
        g = grad.detach().to(torch.float64)
        if hp.maximize:
            g = -g
        self.t += 1
        t = self.t
        d = self.theta.numel()

        # d_t = g_t * h_{t-1}, read before h is updated.
        d_t = g * self.h
        h_prev = self.h

        # h_t, v_t
        self.h = hp.beta1 * h_prev + (1.0 - hp.beta1) * g
        self.v = hp.beta2 * self.v + (1.0 - hp.beta2) * g * g

        # u_t = h_t / (sqrt(v_t) + eps), optionally with AdamW's bias correction.
        if hp.bias_correction:
            h_hat = self.h / (1.0 - hp.beta1**t)
            v_hat = self.v / (1.0 - hp.beta2**t)
        else:
            h_hat = self.h
            v_hat = self.v
        u = h_hat / (torch.sqrt(v_hat) + hp.eps)

        # decoupled weight decay on every coordinate, with the plain eta.
        theta = self.theta * (1.0 - hp.lr * hp.weight_decay)

        if hp.mask == "none":
            self.theta = theta - hp.lr * u
            self.alpha = None
            self.mask_density = None
            return self.theta

        # phi_t
        if hp.mask == "async":
            phi = (d_t > 0).to(torch.float64)
        elif hp.mask == "sync":
            phi = (g * self.h > 0).to(torch.float64)
        else:
            raise ValueError(hp.mask)

        # alpha_t = ||u||^2 / ||phi u||^2, clipped; alpha_max when the mask keeps nothing.
        total = float((u * u).sum())
        kept = float(((phi * u) * (phi * u)).sum())
        if hp.alpha == "none":
            alpha = 1.0
        elif kept == 0.0:
            alpha = hp.alpha_max
        elif hp.alpha == "ratio":
            alpha = min(total / kept, hp.alpha_max)
        elif hp.alpha == "sqrt_ratio":
            alpha = min(math.sqrt(total / kept), hp.alpha_max)
        else:
            raise ValueError(hp.alpha)

        # eta^ = eta * d / (||phi||_0 + 1); "active": d = #{i : g_i != 0}
        nnz = float(phi.sum())
        d_active = float((g != 0).sum())
        if hp.rescale == "active":
            eta_hat = hp.lr * d_active / (nnz + 1.0)
        elif hp.rescale:
            eta_hat = hp.lr * d / (nnz + 1.0)
        else:
            eta_hat = hp.lr

        # theta_{t+1} = theta_t - eta^ * alpha_t * phi_t * u_t
        self.theta = theta - eta_hat * alpha * phi * u
        self.alpha = alpha
        self.mask_density = nnz / d if d > 0 else 0.0
        self.grad_density = d_active / d if d > 0 else 0.0
        return self.theta
