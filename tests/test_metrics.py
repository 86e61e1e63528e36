"""GLUE metrics (local ``evaluate`` module) and the GSM8K answer extractor, against values
worked out by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from alphaadam.eval import load_glue_metric
from alphaadam.eval.gsm8k import extract_answer, gold_answer, is_correct

# refs/preds with TP=3, TN=2, FP=1, FN=2 (positive class 1)
REFS = [1, 1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 0, 1, 0, 0]


def test_matthews_from_a_hand_counted_confusion():
    tp, tn, fp, fn = 3, 2, 1, 2
    by_hand = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert by_hand == pytest.approx(4 / math.sqrt(240))
    out = load_glue_metric("cola").compute(predictions=PREDS, references=REFS)
    assert out == {"matthews_correlation": pytest.approx(by_hand)}


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_f1_and_accuracy_by_hand(task):
    # precision 3/4, recall 3/5 -> F1 = 2*3 / (2*3 + 1 + 2) = 2/3; accuracy 5/8
    out = load_glue_metric(task).compute(predictions=PREDS, references=REFS)
    assert out == {"accuracy": pytest.approx(5 / 8), "f1": pytest.approx(2 / 3)}


@pytest.mark.parametrize("task", ["sst2", "rte", "qnli"])
def test_accuracy_only_tasks(task):
    out = load_glue_metric(task).compute(predictions=PREDS, references=REFS)
    assert out == {"accuracy": pytest.approx(5 / 8)}


def test_pearson_and_spearman_by_hand():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [2.0, 5.0, 4.0, 9.0]
    # deviations dx = (-1.5, -.5, .5, 1.5), dy = (-3, 0, -1, 4): cov 10, sxx 5, syy 26
    pearson = 10 / math.sqrt(5 * 26)
    # ranks of y: 1, 3, 2, 4 vs 1, 2, 3, 4: sum d^2 = 2 -> 1 - 6*2 / (4*15)
    spearman = 1 - 6 * 2 / (4 * (16 - 1))
    out = load_glue_metric("stsb").compute(predictions=x, references=y)
    assert out["pearson"] == pytest.approx(pearson, rel=1e-6)
    assert out["spearmanr"] == pytest.approx(spearman)


def test_unknown_metric_config_names_choices():
    with pytest.raises(KeyError, match="valid: cola"):
        load_glue_metric("mnli-mm")


@pytest.mark.parametrize(
    "completion, strict, flexible",
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18", "18"),
        ("Total 1,000 + 234 = 1,234\n#### 1,234", "1234", "1234"),
        ("It drops by 5 degrees.\n#### -5", "-5", "-5"),
        ("Each costs $2.50, so\n#### 12.50", "12.5", "12.5"),
        ("The answer is\n#### $1,000.", "1000", "1000"),
        ("#### 7.\n\nQuestion: what about 99?", "7", "7"),
        ("No hash line here; the answer is 42.", None, "42"),
        ("She owes -$3 overall", None, "-3"),
        ("First 3, then 12 and finally 1,2,3", None, "3"),
        ("I cannot tell.", None, None),
    ],
)
def test_extract_answer_tricky_cases(completion, strict, flexible):
    def expect(value):
        return None if value is None else Decimal(value)

    assert extract_answer(completion, strict=True) == expect(strict)
    assert extract_answer(completion) == expect(flexible)


def test_is_correct_compares_numbers_not_strings():
    gold = "Some reasoning <<2*3=6>>6\n#### 1,500"
    assert gold_answer(gold) == Decimal(1500)
    assert is_correct("so the total is\n#### 1500.00", gold, strict=True)
    assert is_correct("the total is $1,500.", gold)
    assert not is_correct("the total is $1,500.", gold, strict=True)
    assert not is_correct("#### 150", gold)


def test_gold_without_hash_line_is_an_error():
    with pytest.raises(ValueError, match="no '####'"):
        gold_answer("just 5")
