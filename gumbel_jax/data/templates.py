"""Prompt templates: the text each model reads for one (question, passage) pair.

One place for them, used by the training pipeline and by interactive scoring
(``gumbel_jax.data.inputs``) alike, so a model reads the same text in both.
"""

from __future__ import annotations


def fid_passage_text(question: str, title: str, text: str) -> str:
    """The FiD reader's input for one passage (Izacard & Grave, 2021)."""
    return f"question: {question} title: {title} context: {text}"


def rankt5_text(question: str, title: str, text: str) -> str:
    """RankT5's input for one candidate (Zhuang et al., 2023)."""
    return f"Query: {question} Document: {title} {text}".strip()


def cross_encoder_pair(question: str, title: str, text: str) -> tuple[str, str]:
    """A BERT / XLM-R cross-encoder's input for one candidate: the sentence pair
    (question, "title text"), which its tokenizer joins with its own separators."""
    return question, f"{title} {text}".strip()
