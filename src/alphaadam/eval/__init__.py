"""Offline evaluation helpers: the local GLUE ``evaluate`` metric, the GSM8K exact-match
scorer and the lm-evaluation-harness task configs that read local files."""

from __future__ import annotations

from pathlib import Path

GLUE_METRIC_PATH = Path(__file__).parent / "glue_metric" / "glue_metric.py"
LM_EVAL_TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"


def load_glue_metric(task: str):
    """The GLUE metric for ``task`` (``"rte"``, ``"stsb"``, ...) through ``evaluate.load``,
    from the module shipped in this package: no hub access."""
    import evaluate

    # In memory: every process computes on the gathered predictions, and evaluate's
    # on-disk cache would make concurrent processes contend for one lock file.
    return evaluate.load(str(GLUE_METRIC_PATH), task, keep_in_memory=True)
