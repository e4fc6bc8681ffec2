"""Evaluation metrics (host-side numpy): answer EM / F1 with SQuAD normalisation, ranking
metrics over gold passages (Recall@k, NDCG@k, MRR), and answer recall (top-k accuracy) where a
dataset has no gold passages (FiD's NQ / TriviaQA).

MRR is not cut at k: it is the reciprocal rank of the first relevant passage in the whole
ranked candidate list (a relevant passage at rank 8 of 10 counts 1/8)."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np

# The paper reports every ranking metric @5 (its k); evaluation adds this cut-off to the k a
# run trains with, since a ranking metric does not depend on what the reader reads.
PAPER_CUTOFF = 5
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = collections.Counter(predicted) & collections.Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Iterable[str]) -> float:
    """Token F1 against the best-matching answer alias."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def contains_answer(text: str, answers: Iterable[str]) -> bool:
    """Whether any normalised answer alias occurs as a whole-token span of the text."""
    padded = f" {normalize_answer(text)} "
    return any(f" {n} " in padded for n in map(normalize_answer, answers) if n)


def ranking(scores: Sequence[float], valid: Sequence[bool] | None = None) -> np.ndarray:
    """Candidate indices from best to worst; invalid candidates last."""
    scores = np.asarray(scores, np.float64)
    if valid is not None:
        scores = np.where(np.asarray(valid, bool), scores, -np.inf)
    return np.argsort(-scores, kind="stable")  # ties broken by position, as ops.topk_mask


def recall_at_k(scores, relevant, k: int, valid=None) -> float:
    """Fraction of relevant candidates ranked in the top k (NaN when none is relevant)."""
    relevant = np.asarray(relevant, bool)
    if not relevant.any():
        return float("nan")
    return float(relevant[ranking(scores, valid)[:k]].sum() / relevant.sum())


def ndcg_at_k(scores, relevant, k: int, valid=None) -> float:
    relevant = np.asarray(relevant, bool)
    if not relevant.any():
        return float("nan")
    gains = relevant[ranking(scores, valid)[:k]].astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    ideal = (discounts[: min(k, int(relevant.sum()))]).sum()
    return float((gains * discounts).sum() / ideal)


def mrr(scores, relevant, valid=None) -> float:
    """Reciprocal rank of the first relevant candidate in the whole ranking, not cut at any k
    (NaN when none is relevant)."""
    relevant = np.asarray(relevant, bool)
    if not relevant.any():
        return float("nan")
    hits = np.flatnonzero(relevant[ranking(scores, valid)])
    return float(1.0 / (hits[0] + 1))


def answer_recall_at_k(scores, has_answer, k: int, valid=None) -> float:
    """Answer recall, or top-k accuracy, as DPR and FiD report retrieval on NQ / TriviaQA:
    1.0 if a candidate containing an answer is among the top k, else 0.0.

    Defined for every question: one whose candidates contain no answer counts as a miss,
    as in DPR's top-k accuracy (so its mean is bounded by the pool's answer coverage).
    """
    has_answer = np.asarray(has_answer, bool)
    return float(has_answer[ranking(scores, valid)[:k]].any())


def ranking_cutoffs(k: int) -> tuple[int, ...]:
    """The cut-offs ranking metrics are reported at: the run's k and the paper's 5."""
    return tuple(sorted({k, PAPER_CUTOFF}))
