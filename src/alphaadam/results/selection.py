"""Choosing a method's learning rate from a grid, the same way everywhere.

``make tables``, the figures and ``make reproduce-small`` (which runs extra seeds only at the
chosen lr) all call :func:`choose_lr`, so the lr a table reports is the lr the study spent its
seeds on.

The rule puts every lr on an equal footing: each lr is represented by the same number of
seeds, its ``n`` lowest-numbered ones, where ``n`` is the smallest seed count of any lr in the
grid. Without it, a study that runs three seeds at the chosen lr and one elsewhere would
compare a three-seed mean with single seeds, and a lucky single seed at another lr could win
the next selection. With equal seed counts everywhere (a full grid of seeds) this is the plain
best mean. Ties go to the smaller lr. Every seed at the chosen lr is then reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LrChoice:
    """The chosen lr and how it was chosen."""

    lr: float
    seeds_compared: int  # seeds per lr in the comparison
    means: dict[float, float]  # lr -> mean over its compared seeds
    grid: tuple[float, ...]  # every lr of the grid (diverged ones too), ascending

    @property
    def at_edge(self) -> str | None:
        """``"low"``/``"high"`` when the chosen lr is the grid's smallest/largest (and the
        grid has more than one lr), else ``None``."""
        return edge_of(self.lr, self.grid)


def edge_of(lr: float, grid: Iterable[float]) -> str | None:
    """``"low"``/``"high"`` when ``lr`` is the smallest/largest of ``grid`` (and the grid has
    more than one lr), else ``None``."""
    tried = sorted(set(grid))
    if len(tried) < 2:
        return None
    if lr == tried[0]:
        return "low"
    if lr == tried[-1]:
        return "high"
    return None


def choose_lr(records: Iterable[tuple[float, int, float]], mode: str) -> LrChoice | None:
    """``records`` are ``(lr, seed, value)``; ``mode`` is ``"min"`` or ``"max"``.

    Non-finite values (a diverged run) count as the worst possible value of their lr, so a
    grid point that blew up can never be chosen but still narrows nothing. Returns ``None``
    when no lr has a finite value.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    by_lr: dict[float, dict[int, float]] = {}
    for lr, seed, value in records:
        by_lr.setdefault(float(lr), {})[int(seed)] = float(value)
    if not by_lr:
        return None
    n = min(len(seeds) for seeds in by_lr.values())
    worst = math.inf if mode == "min" else -math.inf
    means: dict[float, float] = {}
    for lr, seeds in by_lr.items():
        compared = [seeds[s] for s in sorted(seeds)[:n]]
        if not all(math.isfinite(v) for v in compared):
            means[lr] = worst
        else:
            means[lr] = sum(compared) / n
    finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
    if not finite:
        return None
    best = min(finite.values()) if mode == "min" else max(finite.values())
    lr = min(lr for lr, m in finite.items() if m == best)
    return LrChoice(lr=lr, seeds_compared=n, means=means, grid=tuple(sorted(by_lr)))
