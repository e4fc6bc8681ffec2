"""Metrics against hand-computed values."""

import math

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
