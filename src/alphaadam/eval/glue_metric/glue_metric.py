"""GLUE metrics as a local ``evaluate`` module: ``evaluate.load(<this file>, "<task>")``.

The hub's ``glue`` metric needs a download; this one is loaded from the installed package
and computes the same standard numbers with scikit-learn and scipy:

* CoLA: Matthews correlation
* STS-B: Pearson and Spearman correlation (regression scores)
* MRPC, QQP: accuracy and F1 (positive class = paraphrase / duplicate = label 1)
* SST-2, RTE, QNLI, MNLI, WNLI: accuracy
"""

from __future__ import annotations

import datasets
import evaluate
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_CONFIGS = ("cola", "sst2", "mrpc", "stsb", "qqp", "qnli", "rte", "mnli", "wnli")

_DESCRIPTION = "Standard GLUE dev-set metrics, computed offline with scikit-learn/scipy."
_CITATION = """@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={ICLR}, year={2019}}"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (ints), or predicted scores (floats) for stsb.
    references: gold labels (ints), or gold scores (floats) for stsb.
Returns:
    cola: {"matthews_correlation"}; stsb: {"pearson", "spearmanr"};
    mrpc, qqp: {"accuracy", "f1"}; otherwise {"accuracy"}. Values are fractions in [0, 1]
    (correlations in [-1, 1]).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise KeyError(
                f"unknown GLUE metric config {self.config_name!r}; valid: {', '.join(_CONFIGS)}"
            )
        value = datasets.Value("float32" if self.config_name == "stsb" else "int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return {
                "pearson": float(pearsonr(predictions, references)[0]),
                "spearmanr": float(spearmanr(predictions, references)[0]),
            }
        result = {"accuracy": float(accuracy_score(references, predictions))}
        if self.config_name in ("mrpc", "qqp"):
            result["f1"] = float(f1_score(references, predictions))
        return result
