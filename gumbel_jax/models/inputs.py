"""Tokenising one question with its candidate passages for a reader or a reranker.

The training input pipeline batches many questions (``gumbel_jax.data``); these helpers are
for scoring or reading a single question interactively.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gumbel_jax.models.fid import fid_passage_text
from gumbel_jax.models.rankt5 import rankt5_text

Passage = tuple[str, str]  # (title, text)


def tokenize_passages(tokenizer, question: str, passages: Sequence[Passage], *,
                      max_length: int,
                      template: Callable[[str, str, str], str] = fid_passage_text) -> dict:
    """``[1, docs, max_length]`` ``input_ids`` and boolean ``attention_mask`` (numpy).

    Args:
      tokenizer: a Hugging Face tokenizer.
      question: the question.
      passages: (title, text) candidates.
      max_length: tokens per passage (truncated / padded).
      template: the text of one (question, passage) pair: ``fid_passage_text`` for the FiD
        reader, ``rankt5_text`` for RankT5.
    """
    texts = [template(question, title, text) for title, text in passages]
    encoded = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length",
                        return_tensors="np")
    return {"input_ids": encoded["input_ids"][None].astype(np.int32),
            "attention_mask": encoded["attention_mask"][None].astype(bool)}


def cross_encoder_pair(question: str, title: str, text: str) -> tuple[str, str]:
    """A BERT / XLM-R cross-encoder's input for one candidate: the sentence pair
    (question, "title text"), which its tokenizer joins with its own separators."""
    return question, f"{title} {text}".strip()


def tokenize_cross_encoder(tokenizer, question: str, passages: Sequence[Passage], *,
                           max_length: int) -> dict:
    """Sentence pairs (question, "title text") for a BERT / XLM-R cross-encoder,
    ``[1, docs, max_length]`` arrays including ``token_type_ids`` when the model uses them."""
    pairs = [cross_encoder_pair(question, title, text) for title, text in passages]
    encoded = tokenizer([q for q, _ in pairs], [p for _, p in pairs],
                        max_length=max_length, truncation="only_second", padding="max_length",
                        return_tensors="np")
    out = {"input_ids": encoded["input_ids"][None].astype(np.int32),
           "attention_mask": encoded["attention_mask"][None].astype(bool)}
    if "token_type_ids" in encoded:
        out["token_type_ids"] = encoded["token_type_ids"][None].astype(np.int32)
    return out


__all__ = ["cross_encoder_pair", "rankt5_text", "tokenize_cross_encoder", "tokenize_passages"]
