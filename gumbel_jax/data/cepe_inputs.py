"""A CEPE reader's inputs: candidates to the context encoder, the question prompt to the
decoder, packed into the Reader interface's ``[docs, context_len + prompt_len]`` rows
(``models.cepe.pack_inputs``'s layout), and the answer as the decoder continues it.

Defaults follow CEPE's QA evaluation (``data.templates``): contexts without BOS, at most 256
tokens in CEPE, truncated on the left as CEPE does (a long context keeps its end); the prompt
starts with BOS; generation is greedy. CEPE also pads contexts on the left; here they are
right-padded (rotary positions are relative, so the padding side does not change the
encoding), and the prompt is left-padded so the answer follows it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gumbel_jax.data.pipeline import FeatureSpec, Featurizer, as_record
from gumbel_jax.data.templates import cepe_context_text, cepe_question_prompt


def right_padded(rows: Sequence[Sequence[int]], length: int, count: int, *,
                 keep_end: bool = False):
    """``count`` rows of ``length`` tokens, each cut at the end (or, with ``keep_end``, at the
    start), right-padded: ids and mask."""
    ids, mask = np.zeros((count, length), np.int32), np.zeros((count, length), bool)
    for row, tokens in enumerate(rows):
        tokens = list(tokens)
        kept = tokens[max(len(tokens) - length, 0):] if keep_end else tokens[:length]
        ids[row, :len(kept)], mask[row, :len(kept)] = kept, True
    return ids, mask


def prompt_tokens(tokenizer, question: str, length: int, *,
                  template: Callable[[str], str] = cepe_question_prompt):
    """The decoder's prompt, ``[length]`` ids and mask, left-padded: BOS (if the tokenizer
    has one) then the prompt's last tokens (a long question loses its start, never
    "Answer:")."""
    tokens = tokenizer(template(question), add_special_tokens=False)["input_ids"]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    room = max(length - len(bos), 0)
    kept = bos + tokens[max(len(tokens) - room, 0):]
    ids, mask = np.zeros(length, np.int32), np.zeros(length, bool)
    ids[length - len(kept):], mask[length - len(kept):] = kept, True
    return ids, mask


def answer_tokens(tokenizer, answer: str, length: int):
    """The answer as the decoder continues the prompt: its tokens (no BOS) and EOS, cut to
    ``length`` keeping the EOS; ``[length]`` ids and mask."""
    tokens = tokenizer(answer, add_special_tokens=False)["input_ids"][:length - 1]
    ids, mask = right_padded([[*tokens, tokenizer.eos_token_id]], length, 1)
    return ids[0], mask[0]


class CepeFeaturizer(Featurizer):
    """:class:`Featurizer` for a CEPE reader: the reranker's fields and the labels as for
    FiD; ``reader_ids`` / ``reader_mask`` ``[n, reader_length + prompt_length]`` (each
    candidate's context, then the prompt) and the answer from the Llama-style tokenizer.

    Args:
      reader_tokenizer, ranker_tokenizer, spec: as :class:`Featurizer`; ``spec.reader_length``
        is the context length (tokens per candidate in the encoder).
      prompt_length: the decoder prompt's tokens (``model.cepe_prompt_length``).
      context_template, prompt_template: the texts (CEPE's by default).
    """

    def __init__(self, reader_tokenizer, ranker_tokenizer, spec: FeatureSpec, *,
                 prompt_length: int, context_template: Callable = cepe_context_text,
                 prompt_template: Callable[[str], str] = cepe_question_prompt, **options):
        super().__init__(reader_tokenizer, ranker_tokenizer, spec,
                         reader_template=context_template, **options)
        self.prompt_length, self.prompt_template = prompt_length, prompt_template

    def __call__(self, item) -> dict[str, np.ndarray]:
        record = as_record(item)
        # The reranker's fields and the labels; the reader's are replaced below.
        example = super().__call__(record)
        spec, tokenizer = self.spec, self.reader_tokenizer
        passages = record.ctxs[: spec.num_candidates]
        texts = [self.reader_template(record.question, p.title, p.text) for p in passages]
        contexts = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        context_ids, context_mask = right_padded(contexts, spec.reader_length,
                                                 spec.num_candidates, keep_end=True)
        prompt_ids, prompt_mask = prompt_tokens(tokenizer, record.question,
                                                self.prompt_length,
                                                template=self.prompt_template)
        tile = lambda a: np.broadcast_to(a, (spec.num_candidates, self.prompt_length))
        example["reader_ids"] = np.concatenate([context_ids, tile(prompt_ids)], -1)
        example["reader_mask"] = np.concatenate([context_mask, tile(prompt_mask)], -1)
        example["answer_ids"], example["answer_mask"] = answer_tokens(
            tokenizer, record.answers[0], spec.answer_length)
        return example
