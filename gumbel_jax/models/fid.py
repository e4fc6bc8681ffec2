"""Fusion-in-Decoder reader whose cross-attention reads a per-document mask.

Each (question, passage) pair is encoded on its own with the same positions; the encoder
outputs are laid end to end and the decoder cross-attends over all of them. Adding
``log M_i`` to the logits of passage ``i``'s keys in every cross-attention layer is the
paper's differentiable masked attention; a 0/1 mask equals reading only the chosen passages.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.attention import DmaMethod
from gumbel_jax.models.reader import Memory, aggregate_document_attention
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder, shift_right


class FiDReader(nnx.Module):
    """A T5 reader in the Fusion-in-Decoder layout.

    Args:
      t5: the encoder-decoder.
      method: document-masked attention, ``"bias"`` or ``"blockwise"`` (equal results).
        The attention kernel is the T5 config's ``attention_implementation`` (every layer).
      frozen: the reader is not trained; its encoder output is put under stop_gradient, so
        no backward pass runs through the encoder (the mask never reaches it anyway).
      token_capacity: the encoder's position-wise work on real tokens only, packed into
        this fraction of the ``[batch * docs, doc_len]`` slots (``T5EncoderDecoder.encode``);
        0: off.
      packing_groups: questions split into this many consecutive blocks, each packed on its
        own (one per device of a mesh's batch axes; ``training.loop`` sets it).
    """

    def __init__(self, t5: T5EncoderDecoder, *, method: DmaMethod = "bias",
                 frozen: bool = True, token_capacity: float = 0.0, packing_groups: int = 1):
        if method not in ("bias", "blockwise"):
            raise ValueError(f"method must be 'bias' or 'blockwise', got {method!r}")
        self.t5 = t5
        self.method = method
        self.frozen = frozen
        self.token_capacity = token_capacity
        self.packing_groups = packing_groups

    @classmethod
    def random(cls, config: T5Config, *, seed: int = 0, **options) -> FiDReader:
        return cls(T5EncoderDecoder(config, rngs=nnx.Rngs(seed)), **options)

    @property
    def config(self) -> T5Config:
        return self.t5.config

    def encode(self, input_ids, attention_mask, *, dropout_key=None) -> Memory:
        """Encode every passage on its own.

        Args:
          input_ids: ``[batch, docs, doc_len]`` token ids.
          attention_mask: ``[batch, docs, doc_len]`` boolean (a padded passage is all False).
          dropout_key: T5's dropout (``config.dropout_rate``) in a training step; None: none.

        Returns:
          :class:`Memory` with ``states [batch, docs * doc_len, d_model]``.
        """
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError("input_ids and attention_mask must both be [batch, docs, doc_len], "
                             f"got {input_ids.shape} and {attention_mask.shape}")
        batch, docs, length = input_ids.shape
        flat_mask = attention_mask.reshape(batch * docs, length).astype(bool)
        states = self.t5.encode(input_ids.reshape(batch * docs, length), flat_mask,
                                token_capacity=self.token_capacity,
                                packing_groups=self.packing_groups, dropout_key=dropout_key)
        states = states.reshape(batch, docs * length, -1)
        if self.frozen:
            states = jax.lax.stop_gradient(states)
        return Memory(states, flat_mask.reshape(batch, docs * length), num_docs=docs)

    def token_log_probs(self, memory: Memory, answer_ids, answer_mask, doc_log_mask=None, *,
                        temperature: float = 1.0, dropout_key=None):
        """Teacher-forced log p(answer token | question, passages), ``[batch, tgt_len]``.

        Args:
          memory: from :meth:`encode`.
          answer_ids: ``[batch, tgt_len]`` gold answer tokens (ending with EOS).
          answer_mask: ``[batch, tgt_len]`` boolean, False on padding.
          doc_log_mask: ``[batch, docs]`` log mask (e.g. ``ops.log_relaxed_topk``) or None.
          temperature: the vocabulary softmax reads ``logits / temperature`` (1: the
            reader's own distribution; EMDR's ``temperature_gold`` otherwise).
          dropout_key: the decoder's dropout in a training step (reader training); None:
            none (a frozen reader never drops).

        Returns:
          float32 ``[batch, tgt_len]``, 0 on padding.
        """
        inputs = shift_right(answer_ids, self.config.decoder_start_token_id)
        logits = self.t5.decode(inputs, memory.states, memory.valid, doc_log_mask,
                                method=self.method, dropout_key=dropout_key)
        log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
        picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
        return jnp.where(answer_mask, picked, 0.0)

    def answer_log_likelihood(self, input_ids, attention_mask, answer_ids, answer_mask,
                              doc_log_mask=None):
        """Summed log-likelihood of each gold answer, ``[batch]``: encode, then decode."""
        memory = self.encode(input_ids, attention_mask)
        return self.token_log_probs(memory, answer_ids, answer_mask, doc_log_mask).sum(-1)

    def document_attention(self, memory: Memory, answer_ids, answer_mask, doc_log_mask=None,
                           *, value_weighted: bool = False):
        """Cross-attention mass on each document, averaged over layers, heads and answer
        tokens: ``[batch, docs]``, rows summing to 1. With ``value_weighted`` each key's
        probability is first multiplied by the norm of its value vector (per head), as
        Atlas's ``evalnormsum`` (ADist) aggregates it; rows then no longer sum to 1."""
        inputs = shift_right(answer_ids, self.config.decoder_start_token_id)
        _, weights = self.t5.decode_hidden(inputs, memory.states, memory.valid,
                                           memory.full_log_mask() if doc_log_mask is None
                                           else doc_log_mask,
                                           method="blockwise", return_doc_weights=True,
                                           weight_by_value_norm=value_weighted)
        return aggregate_document_attention(weights, answer_mask)

    def generate(self, memory: Memory, doc_log_mask=None, *, max_length: int = 32,
                 num_beams: int = 1):
        """Answer tokens ``[batch, max_length]`` int32, padded after EOS, decoded
        incrementally (key/value cache): greedy for ``num_beams == 1``, else beam search
        (:func:`beam_search`, Hugging Face's with ``early_stopping=True``).

        Each decoder layer's memory keys and values are computed once per question and read
        by every step and every beam; the document mask enters the cross-attention exactly as
        in :meth:`token_log_probs`. Jittable: ``max_length`` and ``num_beams`` are static.

        Args:
          memory: from :meth:`encode`.
          doc_log_mask: ``[batch, docs]`` log mask or None (every document read fully).
          max_length: answer tokens to produce at most (EOS included).
          num_beams: hypotheses kept per question.
        """
        if doc_log_mask is not None and doc_log_mask.shape != (memory.batch_size,
                                                               memory.num_docs):
            raise ValueError(f"doc_log_mask must be [batch, docs] = [{memory.batch_size}, "
                             f"{memory.num_docs}], got {doc_log_mask.shape}")
        cache = self.t5.init_decode_cache(memory.states, memory.valid, max_length=max_length,
                                          num_beams=num_beams)

        def step(token_ids, position, cache):
            return self.t5.decode_step(token_ids, position, cache, doc_log_mask,
                                       method=self.method)

        config = self.config
        tokens = {"start_id": config.decoder_start_token_id, "eos_id": config.eos_token_id,
                  "pad_id": config.pad_token_id}
        if num_beams == 1:
            return greedy_search(step, cache, **tokens)
        return beam_search(step, cache, **tokens)


def greedy_search(step, cache, *, start_id: int, eos_id: int, pad_id: int):
    """Greedy decoding with a step function, stopping once every row has produced EOS.

    Args:
      step: ``(token_ids [rows], position, cache) -> (logits [rows, vocab], cache)``.
      cache: the initial cache (a :class:`~gumbel_jax.models.t5.DecodeCache`).
      start_id, eos_id, pad_id: the decoder start, end and padding tokens.

    Returns:
      ``[rows, max_length]`` int32 tokens, ``pad_id`` after each row's EOS.
    """
    rows, max_length = cache.rows, cache.max_length

    def unfinished(state):
        position, _, done, _, _ = state
        return (position < max_length) & ~jnp.all(done)

    def advance(state):
        position, tokens, done, previous, cache = state
        logits, cache = step(previous, position, cache)
        chosen = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, chosen, position, axis=1)
        return position + 1, tokens, done | (chosen == eos_id), chosen, cache

    state = (jnp.int32(0), jnp.full((rows, max_length), pad_id, jnp.int32),
             jnp.zeros((rows,), bool), jnp.full((rows,), start_id, jnp.int32), cache)
    return jax.lax.while_loop(unfinished, advance, state)[1]


# Hugging Face's stand-in score of a candidate that must not be chosen (added, not assigned,
# as there, so the order of the candidates it pushes down is the same).
_EXCLUDED = -1.0e9


class _Beams(NamedTuple):
    """Beam search state; ``hypotheses = beams`` per question."""

    position: jax.Array  # int32: tokens generated so far
    running: jax.Array  # [batch, beams, max_length] hypotheses still extended
    running_scores: jax.Array  # [batch, beams] their summed log-probabilities
    best: jax.Array  # [batch, beams, max_length] finished hypotheses, best first
    best_scores: jax.Array  # [batch, beams] their length-normalised scores
    finished: jax.Array  # [batch, beams] which slots of `best` hold a finished hypothesis
    improvable: jax.Array  # [batch] whether HF's heuristic lets finished ones still change
    cache: Any


def beam_search(step, cache, *, start_id: int, eos_id: int, pad_id: int,
                length_penalty: float = 1.0, early_stopping: bool = True):
    """Hugging Face's beam search (``generate(num_beams=beams, ...)``, transformers 5).

    Per question, ``beams`` running hypotheses (the first starts alone, the others at
    :data:`_EXCLUDED`). At each step every running hypothesis is extended by every token and
    the ``2 * beams`` best continuations by summed log-probability are kept. A continuation
    that ends (EOS, or the last position) and ranks among the first ``beams`` is a finished
    hypothesis scored ``sum log p / length ** length_penalty`` (length: generated tokens, EOS
    included); one ranked lower is dropped. The ``beams`` best continuations that did not end
    run on, and the ``beams`` best finished hypotheses are kept. The answer is the best
    finished hypothesis.

    A question stops taking finished hypotheses once it holds ``beams`` of them
    (``early_stopping=True``), or once HF's heuristic says the best running hypothesis,
    normalised by its current length, cannot beat the worst finished one (both settings;
    ``early_stopping=False`` relies on it alone). The loop ends when no question can change
    or after ``max_length`` tokens.

    The cache rows follow their hypotheses (:meth:`DecodeCache.reorder`); the memory keys and
    values are shared by a question's beams (they are its queries), never copied per beam.

    Args:
      step: ``(token_ids [batch * beams], position, cache) -> (logits, cache)``.
      cache: the initial cache, with ``batch * beams`` self-attention rows.
      start_id, eos_id, pad_id: the decoder start, end and padding tokens.
      length_penalty: exponent of the length dividing a finished hypothesis's score.
      early_stopping: stop a question at ``beams`` finished hypotheses (HF's ``True``), or
        only by the heuristic (HF's default ``False``).

    Returns:
      ``[batch, max_length]`` int32 tokens of each question's best hypothesis, padded.
    """
    beams, max_length, batch = cache.num_beams, cache.max_length, cache.batch_size

    def unfinished(state: _Beams):
        open_slots = ~jnp.all(state.finished) if early_stopping else True
        return (state.position < max_length) & jnp.any(state.improvable) & open_slots

    def advance(state: _Beams) -> _Beams:
        previous = jnp.where(state.position == 0, start_id,
                             _column(state.running, state.position - 1).reshape(-1))
        logits, cache = step(previous, state.position, state.cache)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        totals = state.running_scores[..., None] + log_probs.reshape(batch, beams, -1)
        scores, origin, extended = _top_continuations(totals, state, 2 * beams)
        ends = (_column(extended, state.position) == eos_id) | (
            state.position + 1 == max_length)

        going_on = scores + _EXCLUDED * ends
        _, keep = jax.lax.top_k(going_on, beams)
        origin = jnp.take_along_axis(origin, keep, axis=1)
        cache = cache.reorder((origin + beams * jnp.arange(batch)[:, None]).reshape(-1))
        running_scores = jnp.take_along_axis(going_on, keep, axis=1)
        state = state._replace(running=_gather(extended, keep), running_scores=running_scores,
                               cache=cache, position=state.position + 1)
        return _take_finished(state, extended, scores, ends, length_penalty, early_stopping)

    empty = jnp.full((batch, beams, max_length), pad_id, jnp.int32)
    first_only = jnp.where(jnp.arange(beams) == 0, 0.0, _EXCLUDED).astype(jnp.float32)
    state = _Beams(jnp.int32(0), empty, jnp.broadcast_to(first_only, (batch, beams)), empty,
                   jnp.full((batch, beams), _EXCLUDED, jnp.float32),
                   jnp.zeros((batch, beams), bool), jnp.ones((batch,), bool), cache)
    return jax.lax.while_loop(unfinished, advance, state).best[:, 0]


def _column(tokens, position):
    """``tokens[..., position]`` for a traced position."""
    return jax.lax.dynamic_index_in_dim(tokens, position, axis=-1, keepdims=False)


def _gather(hypotheses, index):
    """``[batch, n, length]`` hypotheses, ``[batch, m]`` indices -> ``[batch, m, length]``."""
    return jnp.take_along_axis(hypotheses, index[..., None], axis=1)


def _top_continuations(totals, state: _Beams, count: int):
    """The ``count`` best (hypothesis, token) pairs of ``totals [batch, beams, vocab]``: their
    scores, the hypothesis each extends and the extended hypotheses."""
    batch, beams, vocab = totals.shape
    scores, flat = jax.lax.top_k(totals.reshape(batch, beams * vocab), count)
    origin, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    extended = jax.lax.dynamic_update_index_in_dim(_gather(state.running, origin), token,
                                                   state.position, axis=2)
    return scores, origin, extended


def _take_finished(state: _Beams, extended, scores, ends, length_penalty: float,
                   early_stopping: bool) -> _Beams:
    """Merge the continuations that just ended (if they rank among the first ``beams``) into
    the finished hypotheses, then update HF's early-stop heuristic."""
    beams = state.best.shape[1]
    length = state.position.astype(jnp.float32)  # tokens of the extended hypotheses
    new_scores = scores / length**length_penalty
    closed = ~state.improvable[:, None]
    if early_stopping:
        closed |= jnp.all(state.finished, axis=-1, keepdims=True)
    new_finished = ends & (jnp.arange(scores.shape[1]) < beams)
    new_scores += _EXCLUDED * closed + _EXCLUDED * ~new_finished
    merged_scores = jnp.concatenate([state.best_scores, new_scores], axis=1)
    _, pick = jax.lax.top_k(merged_scores, beams)
    best_scores = jnp.take_along_axis(merged_scores, pick, axis=1)
    finished = jnp.take_along_axis(jnp.concatenate([state.finished, new_finished], axis=1),
                                   pick, axis=1)
    best_possible = state.running_scores[:, :1] / length**length_penalty
    worst = jnp.where(finished, jnp.min(best_scores, axis=1, keepdims=True), _EXCLUDED)
    improvable = state.improvable & jnp.any(best_possible > worst, axis=1)
    return state._replace(best=_gather(jnp.concatenate([state.best, extended], axis=1), pick),
                          best_scores=best_scores, finished=finished, improvable=improvable)
