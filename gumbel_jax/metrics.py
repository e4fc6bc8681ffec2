"""Evaluation metrics (host-side numpy): answer EM / F1 with SQuAD normalisation, and
ranking metrics over gold passages (Recall@k, NDCG@k, MRR)."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np

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
    """Reciprocal rank of the first relevant candidate (NaN when none is relevant)."""
    relevant = np.asarray(relevant, bool)
    if not relevant.any():
        return float("nan")
    hits = np.flatnonzero(relevant[ranking(scores, valid)])
    return float(1.0 / (hits[0] + 1))
