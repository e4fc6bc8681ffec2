"""Fusion-in-Decoder reader whose cross-attention reads a per-document mask.

Each (question, passage) pair is encoded on its own with the same positions; the encoder
outputs are laid end to end and the decoder cross-attends over all of them. Adding
``log M_i`` to the logits of passage ``i``'s keys in every cross-attention layer is the
paper's differentiable masked attention; a 0/1 mask equals reading only the chosen passages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.attention import DmaMethod
from gumbel_jax.models.reader import Memory
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder, shift_right


def fid_passage_text(question: str, title: str, text: str) -> str:
    """The reader's input for one passage, as in FiD."""
    return f"question: {question} title: {title} context: {text}"


class FiDReader(nnx.Module):
    """A T5 reader in the Fusion-in-Decoder layout.

    Args:
      t5: the encoder-decoder.
      method: document-masked attention, ``"bias"`` or ``"blockwise"`` (equal results).
        The attention kernel is the T5 config's ``attention_implementation`` (every layer).
      frozen: the reader is not trained; its encoder output is put under stop_gradient, so
        no backward pass runs through the encoder (the mask never reaches it anyway).
    """

    def __init__(self, t5: T5EncoderDecoder, *, method: DmaMethod = "bias",
                 frozen: bool = True):
        if method not in ("bias", "blockwise"):
            raise ValueError(f"method must be 'bias' or 'blockwise', got {method!r}")
        self.t5 = t5
        self.method = method
        self.frozen = frozen

    @classmethod
    def random(cls, config: T5Config, *, seed: int = 0, **options) -> FiDReader:
        return cls(T5EncoderDecoder(config, rngs=nnx.Rngs(seed)), **options)

    @property
    def config(self) -> T5Config:
        return self.t5.config

    def encode(self, input_ids, attention_mask) -> Memory:
        """Encode every passage on its own.

        Args:
          input_ids: ``[batch, docs, doc_len]`` token ids.
          attention_mask: ``[batch, docs, doc_len]`` boolean (a padded passage is all False).

        Returns:
          :class:`Memory` with ``states [batch, docs * doc_len, d_model]``.
        """
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError("input_ids and attention_mask must both be [batch, docs, doc_len], "
                             f"got {input_ids.shape} and {attention_mask.shape}")
        batch, docs, length = input_ids.shape
        flat_mask = attention_mask.reshape(batch * docs, length).astype(bool)
        states = self.t5.encode(input_ids.reshape(batch * docs, length), flat_mask)
        states = states.reshape(batch, docs * length, -1)
        if self.frozen:
            states = jax.lax.stop_gradient(states)
        return Memory(states, flat_mask.reshape(batch, docs * length), num_docs=docs)

    def token_log_probs(self, memory: Memory, answer_ids, answer_mask, doc_log_mask=None):
        """Teacher-forced log p(answer token | question, passages), ``[batch, tgt_len]``.

        Args:
          memory: from :meth:`encode`.
          answer_ids: ``[batch, tgt_len]`` gold answer tokens (ending with EOS).
          answer_mask: ``[batch, tgt_len]`` boolean, False on padding.
          doc_log_mask: ``[batch, docs]`` log mask (e.g. ``ops.log_relaxed_topk``) or None.

        Returns:
          float32 ``[batch, tgt_len]``, 0 on padding.
        """
        inputs = shift_right(answer_ids, self.config.decoder_start_token_id)
        logits = self.t5.decode(inputs, memory.states, memory.valid, doc_log_mask,
                                method=self.method)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
        return jnp.where(answer_mask, picked, 0.0)

    def answer_log_likelihood(self, input_ids, attention_mask, answer_ids, answer_mask,
                              doc_log_mask=None):
        """Summed log-likelihood of each gold answer, ``[batch]``: encode, then decode."""
        memory = self.encode(input_ids, attention_mask)
        return self.token_log_probs(memory, answer_ids, answer_mask, doc_log_mask).sum(-1)

    def document_attention(self, memory: Memory, answer_ids, answer_mask, doc_log_mask=None):
        """Cross-attention mass on each document, averaged over layers, heads and answer
        tokens: ``[batch, docs]``, rows summing to 1 (the ADist signal)."""
        inputs = shift_right(answer_ids, self.config.decoder_start_token_id)
        _, weights = self.t5.decode_hidden(inputs, memory.states, memory.valid,
                                           memory.full_log_mask() if doc_log_mask is None
                                           else doc_log_mask,
                                           method="blockwise", return_doc_weights=True)
        # weights: [layers, batch, heads, tgt_len, docs]
        per_token = weights.mean(axis=(0, 2))
        mask = answer_mask.astype(jnp.float32)[..., None]
        return (per_token * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)

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
    rows, max_length = cache.self_keys.shape[1], cache.max_length

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
# as there, so ties and sums behave the same).
_EXCLUDED = -1.0e9


def beam_search(step, cache, *, start_id: int, eos_id: int, pad_id: int,
                length_penalty: float = 1.0):
    """Beam search as Hugging Face's ``generate(num_beams=..., early_stopping=True)``.

    Per question, ``beams`` running hypotheses (the first starts alone, the others at
    :data:`_EXCLUDED`). At each step every running hypothesis is extended by every token; the
    ``2 * beams`` best continuations by summed log-probability are kept. A continuation that
    ends (EOS, or the last position) and ranks among the first ``beams`` becomes a finished
    hypothesis scored ``sum log p / length ** length_penalty`` (length = generated tokens,
    EOS included); one ranked lower is dropped. The ``beams`` best continuations that did not
    end run on. A question is done once it holds ``beams`` finished hypotheses (HF's
    ``early_stopping=True``: later, possibly better ones are not looked for); the loop stops
    when every question is done or the last position is written. The answer is the best
    finished hypothesis.

    The cache rows follow their hypotheses (:meth:`DecodeCache.reorder`); the memory keys and
    values are shared by a question's beams, never copied.

    Args:
      step: ``(token_ids [batch * beams], position, cache) -> (logits, cache)``.
      cache: the initial cache, with ``batch * beams`` self-attention rows.
      start_id, eos_id, pad_id: the decoder start, end and padding tokens.
      length_penalty: exponent of the length that divides a finished hypothesis's score.

    Returns:
      ``[batch, max_length]`` int32 tokens of each question's best hypothesis, padded.
    """
    beams, max_length = cache.num_beams, cache.max_length
    batch = cache.cross_keys.shape[1]
    candidates = 2 * beams
    top_beams = jnp.arange(candidates) < beams

    def unfinished(state):
        position, finished = state[0], state[5]
        return (position < max_length) & ~jnp.all(finished)

    def advance(state):
        (position, running, running_scores, best, best_scores, finished, previous,
         cache) = state
        logits, cache = step(previous, position, cache)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        log_probs = log_probs.reshape(batch, beams, -1)
        vocab = log_probs.shape[-1]
        totals = (running_scores[..., None] + log_probs).reshape(batch, beams * vocab)
        scores, flat = jax.lax.top_k(totals, candidates)  # [batch, candidates]
        origin, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        extended = jax.lax.dynamic_update_index_in_dim(
            jnp.take_along_axis(running, origin[..., None], axis=1), token, position, axis=2)
        ends = (token == eos_id) | (position + 1 == max_length)

        # The best continuations that go on.
        going_on = scores + _EXCLUDED * ends
        _, keep = jax.lax.top_k(going_on, beams)
        running = jnp.take_along_axis(extended, keep[..., None], axis=1)
        running_scores = jnp.take_along_axis(going_on, keep, axis=1)
        origin = jnp.take_along_axis(origin, keep, axis=1)
        cache = cache.reorder((origin + beams * jnp.arange(batch)[:, None]).reshape(-1))

        # The finished hypotheses: merge the new ones, keep the best `beams`.
        length = (position + 1).astype(jnp.float32)
        new_scores = scores / length**length_penalty
        new_scores += _EXCLUDED * jnp.all(finished, axis=-1, keepdims=True)
        new_finished = ends & top_beams
        new_scores += _EXCLUDED * ~new_finished
        merged_scores = jnp.concatenate([best_scores, new_scores], axis=1)
        _, pick = jax.lax.top_k(merged_scores, beams)
        best = jnp.take_along_axis(jnp.concatenate([best, extended], axis=1), pick[..., None],
                                   axis=1)
        best_scores = jnp.take_along_axis(merged_scores, pick, axis=1)
        finished = jnp.take_along_axis(jnp.concatenate([finished, new_finished], axis=1), pick,
                                       axis=1)
        previous = running[:, :, position].reshape(-1)
        return (position + 1, running, running_scores, best, best_scores, finished, previous,
                cache)

    empty = jnp.full((batch, beams, max_length), pad_id, jnp.int32)
    first_only = jnp.where(jnp.arange(beams) == 0, 0.0, _EXCLUDED).astype(jnp.float32)
    state = (jnp.int32(0), empty, jnp.broadcast_to(first_only, (batch, beams)), empty,
             jnp.full((batch, beams), _EXCLUDED, jnp.float32), jnp.zeros((batch, beams), bool),
             jnp.full((batch * beams,), start_id, jnp.int32), cache)
    best = jax.lax.while_loop(unfinished, advance, state)[3]
    return best[:, 0]
