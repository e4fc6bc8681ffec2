"""Tokenising one question with its candidate passages, for scoring or reading it
interactively. The training pipeline batches many questions (``data.pipeline``); both use the
same templates (``data.templates``) and the same tokenisation policy
(``pipeline.encode_texts``), so a score computed here equals the score evaluation computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gumbel_jax.data.pipeline import encode_texts
from gumbel_jax.data.templates import cross_encoder_pair, fid_passage_text

Passage = tuple[str, str]  # (title, text)


def tokenize_passages(tokenizer, question: str, passages: Sequence[Passage], *,
                      max_length: int,
                      template: Callable[[str, str, str], str] = fid_passage_text) -> dict:
    """``[1, docs, max_length]`` ``input_ids`` and boolean ``attention_mask`` (numpy).

    Args:
      tokenizer: a Hugging Face tokenizer.
      question: the question.
      passages: (title, text) candidates.
      max_length: tokens per passage (truncated keeping the final EOS, padded).
      template: the text of one (question, passage) pair: ``fid_passage_text`` for the FiD
        reader, ``rankt5_text`` for RankT5 (``gumbel_jax.data.templates``).
    """
    texts = [template(question, title, text) for title, text in passages]
    ids, mask, _ = encode_texts(tokenizer, texts, max_length, len(texts))
    return {"input_ids": ids[None], "attention_mask": mask[None]}


def tokenize_cross_encoder(tokenizer, question: str, passages: Sequence[Passage], *,
                           max_length: int) -> dict:
    """Sentence pairs (question, "title text") for a BERT / XLM-R cross-encoder,
    ``[1, docs, max_length]`` arrays including ``token_type_ids`` when the tokenizer makes
    them (BERT). Cut as in training: the passage first, the question to at most half."""
    pairs = [cross_encoder_pair(question, title, text) for title, text in passages]
    ids, mask, types = encode_texts(tokenizer, pairs, max_length, len(pairs))
    out = {"input_ids": ids[None], "attention_mask": mask[None]}
    if "token_type_ids" in tokenizer.model_input_names:
        out["token_type_ids"] = types[None]
    return out
