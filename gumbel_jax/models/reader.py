"""The Reader interface: what objectives, evaluation, the trainer and the benchmarks ask of a
frozen reader, and nothing more.

A reader reads ``docs`` candidate passages per question. It encodes them once
(:meth:`Reader.encode` -> :class:`Memory`) and everything else reads that memory under a
per-document log mask ``[batch, docs]`` (0 = read fully, very negative = not read; the
relaxed top-k of ``gumbel_jax.ops`` produces one). The mask acts inside the reader's
cross-attention, so it must enter every layer that attends to the passages.

Fusion-in-Decoder (:class:`gumbel_jax.models.FiDReader`) implements it; a CEPE-style reader
(a decoder-only LLM cross-attending to a context encoder) implements the same four methods
and plugs into every objective, the evaluation and the trainer unchanged.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Memory:
    """The encoded passages of a batch of questions, laid end to end along the keys.

    Attributes:
      states: ``[batch, docs * doc_len, width]`` encoder outputs (document ``i`` owns keys
        ``i * doc_len .. (i + 1) * doc_len - 1``).
      valid: ``[batch, docs * doc_len]`` boolean, False on padding tokens (a padded document
        is all False).
      num_docs: the number of documents (static), so the layout is never guessed.
    """

    states: jax.Array
    valid: jax.Array
    num_docs: int = struct.field(pytree_node=False)

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    @property
    def doc_len(self) -> int:
        return self.states.shape[1] // self.num_docs

    def split_documents(self) -> Memory:
        """Each document as its own one-document question: ``[batch * docs, doc_len, width]``
        (row ``b * docs + i`` is document ``i`` of question ``b``). Readers that encode
        passages independently (FiD, CEPE) reuse their encoder output this way."""
        batch, _, width = self.states.shape
        rows = batch * self.num_docs
        return Memory(self.states.reshape(rows, self.doc_len, width),
                      self.valid.reshape(rows, self.doc_len), num_docs=1)

    def full_log_mask(self) -> jax.Array:
        """``[batch, docs]`` zeros: every document read fully."""
        return jnp.zeros((self.batch_size, self.num_docs), jnp.float32)


@runtime_checkable
class Reader(Protocol):
    """A frozen reader that answers under a per-document log mask."""

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array) -> Memory:
        """``[batch, docs, doc_len]`` passage tokens and boolean mask -> :class:`Memory`.

        Passages are encoded once per question; the mask does not reach the encoder, so every
        Gumbel draw, baseline variant and generation step reuses the memory."""
        ...

    def token_log_probs(self, memory: Memory, answer_ids: jax.Array, answer_mask: jax.Array,
                        doc_log_mask: jax.Array | None = None, *,
                        temperature: float = 1.0) -> jax.Array:
        """Teacher-forced ``log p(answer_t | question, passages)``: float32 ``[batch,
        tgt_len]``, 0 on padding. Differentiable in ``doc_log_mask`` (G-Rerank's gradient
        path); ``None`` reads every document fully. ``temperature`` divides the vocabulary
        logits before the softmax (EMDR's ``temperature_gold``, as Atlas applies it)."""
        ...

    def document_attention(self, memory: Memory, answer_ids: jax.Array,
                           answer_mask: jax.Array,
                           doc_log_mask: jax.Array | None = None, *,
                           value_weighted: bool = False) -> jax.Array:
        """Cross-attention statistics per document, ``[batch, docs]``: the attention mass
        averaged over layers, heads and answer tokens (rows summing to 1); with
        ``value_weighted`` each key's probability times the norm of its value vector,
        summed over the document's keys and averaged the same way (Atlas's ADist signal,
        ``evalnormsum``, before its constant divisor)."""
        ...

    def generate(self, memory: Memory, doc_log_mask: jax.Array | None = None, *,
                 max_length: int, num_beams: int = 1) -> jax.Array:
        """Answer tokens ``[batch, max_length]`` int32 (padded after EOS) read under the
        mask: greedy for ``num_beams == 1``, else beam search. Jittable with static shapes."""
        ...


def aggregate_document_attention(weights: jax.Array, answer_mask: jax.Array) -> jax.Array:
    """Per-layer, per-head statistics ``[layers, batch, heads, tgt_len, docs]`` -> their mean
    over layers, heads and the real answer tokens, ``[batch, docs]`` (float32): how
    :meth:`Reader.document_attention` aggregates, as Atlas's ``get_crossattention_scores``
    does (its ``sum`` statistics further divide by a constant 256)."""
    per_token = weights.astype(jnp.float32).mean(axis=(0, 2))  # [batch, tgt_len, docs]
    mask = answer_mask.astype(jnp.float32)[..., None]
    return (per_token * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)


def check_reader(reader) -> None:
    """A clear error when an object lacks part of the :class:`Reader` interface."""
    missing = [name for name in ("encode", "token_log_probs", "document_attention", "generate")
               if not callable(getattr(reader, name, None))]
    if missing:
        raise TypeError(f"{type(reader).__name__} is not a Reader: it lacks "
                        f"{', '.join(missing)} (see gumbel_jax.models.reader)")
