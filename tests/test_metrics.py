"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from gumbel_jax import metrics


def test_squad_normalisation_em_f1():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.exact_match("the Beatles", ["Beatles", "x"]) == 1.0
    assert metrics.f1_score("new york city", ["New York"]) == pytest.approx(0.8)
    assert metrics.f1_score("paris", ["london"]) == 0.0
    assert metrics.contains_answer("Born in New York City.", ["new york"])
    assert not metrics.contains_answer("Newark, New Jersey", ["new york"])


def test_ranking_metrics():
    scores, relevant = [0.9, 0.1, 0.8, 0.3], [False, True, True, False]
    assert metrics.recall_at_k(scores, relevant, 2) == 0.5
    assert metrics.mrr(scores, relevant) == 0.5
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics.ndcg_at_k(scores, relevant, 2) == pytest.approx(expected)
    # A padded candidate never ranks; ties go to the earlier position.
    assert metrics.recall_at_k([1, 1, 1], [False, True, False], 1, valid=[False, True, True]) == 1
    assert math.isnan(metrics.mrr(scores, [False] * 4))


def test_answer_recall_is_top_k_accuracy():
    scores = [0.9, 0.1, 0.8, 0.3]
    # An answer passage at rank 3 (score 0.3): a miss in the top 2, a hit in the top 3.
    assert metrics.answer_recall_at_k(scores, [False, False, False, True], 2) == 0.0
    assert metrics.answer_recall_at_k(scores, [False, False, False, True], 3) == 1.0
    # Two answer passages in the top 2 still count once (accuracy, not a fraction).
    assert metrics.answer_recall_at_k(scores, [True, False, True, False], 2) == 1.0
    # No answer passage at all is a miss, never NaN (DPR's top-k accuracy).
    assert metrics.answer_recall_at_k(scores, [False] * 4, 4) == 0.0
    # A padded candidate never ranks, even with the best score.
    assert metrics.answer_recall_at_k([5, 1, 0], [True, False, True], 1,
                                      valid=[False, True, True]) == 0.0


def test_mrr_is_not_cut_at_k_and_cutoffs_add_the_papers_5():
    scores = list(range(10, 0, -1))  # candidate i at rank i + 1
    relevant = [False] * 7 + [True, False, False]
    assert metrics.mrr(scores, relevant) == 1 / 8  # rank 8, beyond any k = 5
    assert metrics.recall_at_k(scores, relevant, 5) == 0.0
    assert metrics.ranking_cutoffs(2) == (2, 5)
    assert metrics.ranking_cutoffs(5) == (5,)
    assert metrics.ranking_cutoffs(10) == (5, 10)


def test_question_metrics_without_gold_labels_are_absent_not_nan():
    from gumbel_jax.training.evaluation import ranking_metrics

    scores, valid = np.array([0.2, 0.9, 0.5]), np.array([True, True, True])
    answer = np.array([True, False, False])
    unlabelled = ranking_metrics(scores, valid, k=2, answer=answer)
    assert unlabelled == {"answer_recall@2": 0.0, "answer_recall@5": 1.0}
    gold = np.array([False, False, True])
    labelled = ranking_metrics(scores, valid, k=2, gold=gold, indirect=~gold, answer=answer)
    assert labelled["recall@2"] == 1.0 and labelled["mrr"] == 0.5
    assert labelled["indirect_recall@2"] == 0.5 and labelled["indirect_mrr"] == 1.0
    assert labelled["ndcg@5"] == pytest.approx(1 / math.log2(3))
    assert not any(math.isnan(v) for v in labelled.values())
