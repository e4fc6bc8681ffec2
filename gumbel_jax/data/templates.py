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


# CEPE's QA prompt (princeton-nlp/CEPE, eval_downstream.py with configs/test_qa.yaml): passages
# read as "Document (Title: ...): ..." and the decoder ends with "Question: ...\nAnswer:". CEPE
# puts its top passages in the decoder and further ones in the encoder; here every candidate
# goes to the encoder, one per context, so the document mask selects among all of them, and
# the decoder reads the question prompt and the answer (the paper does not say how it split
# them).


def cepe_context_text(question: str, title: str, text: str) -> str:
    """One candidate as CEPE's encoder reads it (the question is in the decoder's prompt)."""
    return f"Document (Title: {title}): {text}"


def cepe_question_prompt(question: str) -> str:
    """The decoder's prompt after BOS; the answer follows it."""
    return f"Question: {question}\nAnswer:"
