"""Which runs count and how they are grouped: one run per (config, seed), the lr chosen on
equal seed counts per group, the step scale, paired differences from the baseline."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ...config_keys import flatten, may_change
from ..runs import Problem, Run
from ..selection import choose_lr
from .render import Cell


def config_identity(run: Run) -> tuple:
    """The run's resolved config (config.yaml) as sorted ``(dotted key, value)`` pairs, less
    the keys that cannot change its numbers (output paths, logging, checkpoint schedule:
    :data:`~alphaadam.config_keys.RESUME_MAY_CHANGE`); empty for a run without config.yaml."""
    try:
        config = run.config
    except FileNotFoundError:
        return ()
    flat = flatten(config)
    return tuple(sorted((k, repr(v)) for k, v in flat.items() if not may_change(k)))


def dedupe_seeds(runs: list[Run], key_fields: tuple[str, ...]) -> tuple[list[Run], list[Problem]]:
    """One run per (config, seed): a rerun of the same seed must not count as a second seed.
    Two runs are the same when their summaries agree on ``key_fields``, lr and seed and their
    full resolved configs agree (:func:`config_identity`): runs that differ in
    ``trainer.max_steps``, say, are not reruns of each other."""
    kept: dict[tuple, Run] = {}
    problems = []
    for run in sorted(runs, key=lambda r: str(r.path)):
        key = tuple(run.summary.get(f) for f in key_fields) + (run.lr, run.seed)
        key += config_identity(run)
        if key in kept:
            old = kept[key]
            problems.append(
                Problem(
                    old.path,
                    "summary.json",
                    f"same config and seed as {run.path}; the later run dir is used",
                )
            )
        kept[key] = run
    return list(kept.values()), problems


def chosen_by_group(
    records: list[dict[str, Any]], group: list[str], mode: str
) -> dict[tuple, tuple[float, pd.DataFrame]]:
    """Per group: the lr chosen on equal seed counts (``choose_lr``) and that lr's rows."""
    if not records:
        return {}
    frame = pd.DataFrame(records)
    chosen = {}
    for key, sub in frame.groupby(group, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        usable = sub.dropna(subset=["value"])
        choice = choose_lr(zip(usable["lr"], usable["seed"], usable["value"]), mode)
        if choice is None:
            continue
        chosen[key] = (choice.lr, sub[sub["lr"] == choice.lr])
    return chosen


def step_scale_of(summary: dict[str, Any]) -> float | None:
    """The run's mean effective lr multiplier; 1 for an optimizer without a mask (the key is
    null), ``None`` for runs from before the key existed."""
    if "step_scale_mean" not in summary:
        return None
    value = summary["step_scale_mean"]
    return 1.0 if value is None else float(value)


def scale_cell(sub: pd.DataFrame, lr: float) -> Cell | None:
    values = [v for v in sub["step_scale"].tolist() if v is not None and not pd.isna(v)]
    return Cell(values, lr) if values else None


def detectable_difference(differences: Cell, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` would detect
    with probability ``power``, given the pairs' observed sd and count:
    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the usual approximation; NaN
    below 2 pairs). With 3 seeds this is 5.4 sd / sqrt(3), about 3.1 sd."""
    n = differences.n
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float((t.ppf(1 - alpha / 2, n - 1) + t.ppf(power, n - 1)) * differences.sd / n**0.5)


def paired_differences(
    records: list[dict[str, Any]],
    chosen: dict[tuple, tuple[float, pd.DataFrame]],
    key_of: Any,
    columns: list[str],
    baseline: str = "adamw",
) -> dict[tuple, dict[str, Cell]]:
    """Per group (other than the baseline's): per column, the per-seed differences from the
    baseline, each at its own chosen lr (seeds both have)."""
    out: dict[tuple, dict[str, Cell]] = {}
    for key, (lr, sub) in chosen.items():
        base_key = key_of(key, baseline)
        if key == base_key or base_key not in chosen:
            continue
        base = chosen[base_key][1].set_index("seed")
        mine = sub.set_index("seed")
        seeds = sorted(set(base.index) & set(mine.index))
        out[key] = {
            c: Cell([float(mine.loc[s, c] - base.loc[s, c]) for s in seeds], lr) for c in columns
        }
    return out
