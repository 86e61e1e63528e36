"""Which config keys decide a run's numbers: the keys a resume may change (they decide only
what is printed or logged, where files go, when checkpoints are written), and the
differences between two resolved configs outside them. A leaf module (no torch), shared by
the resume guard (``run_dir``) and the results tables' "same config and seed"."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

#: Config keys (a key, or a whole group by its prefix) a resumed run may change. They decide
#: what is printed or logged, where files go and when checkpoints are written, never the
#: numbers a run produces; every other difference is refused (docs/run_dir.md).
RESUME_MAY_CHANGE = (
    "trainer.resume",
    "trainer.run_dir",
    "trainer.output_root",
    "trainer.progress_bar",
    "trainer.log_every",
    "trainer.mask_stats_every",
    "trainer.mask_stats_steps",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "trainer.save_final",
    "trainer.nan_skip_budget",
    "trainer.cpu_allocator",  # where memory comes from; losses are bit-identical (tested)
    "trainer.preflight",  # only matter to a run that never trains; runs made before them
    "trainer.preflight_processes",  # have none
    "trainer.preflight_fsdp",
    "logger",  # the wandb mirror; the JSONL files are the record
    "study",  # a reduced-study sweep's plan (grids, seeds): which runs exist, not their numbers
    "scale",  # the experiment's description of its scale, printed by the tables
    "data.cache_dir",  # token caches are keyed by their inputs
    "data.num_proc",
)

_NOT_SET = "(not set)"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def may_change(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RESUME_MAY_CHANGE)


def config_differences(saved: DictConfig | dict, current: DictConfig | dict) -> list[tuple]:
    """``(key, saved value, current value)`` for every dotted key whose value differs and
    that :data:`RESUME_MAY_CHANGE` does not allow to change; a key only one side has shows
    ``"(not set)"`` on the other."""
    flat = [
        flatten(OmegaConf.to_container(c, resolve=True) if isinstance(c, DictConfig) else c)
        for c in (saved, current)
    ]
    return [
        (key, flat[0].get(key, _NOT_SET), flat[1].get(key, _NOT_SET))
        for key in sorted(flat[0].keys() | flat[1].keys())
        if not may_change(key) and flat[0].get(key, _NOT_SET) != flat[1].get(key, _NOT_SET)
    ]
