"""CEPE (Yen, Gao & Chen, ACL 2024): a Llama-2 decoder that cross-attends, in every layer, to
a small bidirectional Llama encoder's states of passages encoded one by one.

The passages (contexts) are encoded on their own with rotary positions restarting at 0 and
laid end to end along the keys, FiD's memory layout, so the per-document log mask of the
Reader interface enters every cross-attention through the same kernels as FiD's. The decoder
reads the question prompt and the answer. The memory's cross-attention keys and values do
not depend on the mask: they are computed once per question (:meth:`CepeReader.encode`) and
read by every Gumbel draw, baseline variant and generation step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from gumbel_jax.models.attention import DmaMethod, padding_bias
from gumbel_jax.models.fid import beam_search, greedy_search
from gumbel_jax.models.layers import dense
from gumbel_jax.models.llama import (
    LlamaConfig,
    LlamaStack,
    causal_bias,
    lm_logits,
    valid_positions,
)
from gumbel_jax.models.reader import Memory, aggregate_document_attention
from gumbel_jax.ops import mask_value


@dataclasses.dataclass(frozen=True)
class CepeConfig:
    """A CEPE checkpoint's architecture: the decoder, the context encoder, and how many of
    the decoder's last layers cross-attend (None: all, as in CEPE's released models)."""

    decoder: LlamaConfig = LlamaConfig()
    encoder: LlamaConfig = LlamaConfig(vocab_size=32001, hidden_size=1024,
                                       intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, rms_norm_eps=1e-6,
                                       max_position_embeddings=512)
    num_cross_attn_layers: int | None = None

    def replace_compute(self, **options) -> CepeConfig:
        """The same architecture with compute options (``dtype``, ``remat``,
        ``attention_implementation``) set in both stacks."""
        return dataclasses.replace(self, decoder=dataclasses.replace(self.decoder, **options),
                                   encoder=dataclasses.replace(self.encoder, **options))

    @classmethod
    def from_hf(cls, raw: dict, **options) -> CepeConfig:
        """From a CEPE ``config.json`` (the decoder's Llama fields with a nested
        ``encoder_config``); a plain Llama config gives a decoder without cross-attention
        (``num_cross_attn_layers = 0``). Every encoder setting is read from
        ``encoder_config``, never from the decoder's."""
        decoder = LlamaConfig.from_hf(raw, **options)
        if not raw.get("do_cross_attention") or "encoder_config" not in raw:
            return cls(decoder=decoder, encoder=cls.encoder, num_cross_attn_layers=0)
        encoder = LlamaConfig.from_hf(raw["encoder_config"], **options)
        if raw.get("encoder_hidden_size", encoder.hidden_size) != encoder.hidden_size:
            raise ValueError(f"encoder_hidden_size {raw['encoder_hidden_size']} differs from "
                             f"the encoder's hidden_size {encoder.hidden_size}")
        if raw.get("num_cross_attn_hidden_states", 1) != 1:
            raise ValueError("only num_cross_attn_hidden_states = 1 (the encoder's last state) "
                             "is supported")
        layers = raw.get("num_cross_attn_layers", decoder.num_hidden_layers)
        return cls(decoder=decoder, encoder=encoder, num_cross_attn_layers=layers)


@struct.dataclass
class CepeMemory(Memory):
    """:class:`Memory` plus what CEPE's decoder reads besides the passages.

    Attributes (beyond ``states [batch, docs * doc_len, encoder_width]``, ``valid``,
    ``num_docs``):
      prompt_ids: ``[batch, prompt_len]`` the decoder's question prompt, left-padded.
      prompt_valid: ``[batch, prompt_len]`` boolean.
      cross_keys, cross_values: one ``[batch, docs * doc_len, kv_heads, head_dim]`` per
        cross-attention layer (empty when the reader recomputes them from ``states``).
    """

    prompt_ids: jax.Array
    prompt_valid: jax.Array
    cross_keys: tuple = ()
    cross_values: tuple = ()

    def split_documents(self) -> CepeMemory:
        """Each document as its own one-document question (row ``b * docs + i``), the prompt
        repeated for each."""
        base = Memory.split_documents(self)
        rows, length = base.states.shape[:2]
        split = lambda a: a.reshape(rows, length, *a.shape[2:])
        repeat = lambda a: jnp.repeat(a, self.num_docs, axis=0)
        return CepeMemory(base.states, base.valid, 1, repeat(self.prompt_ids),
                          repeat(self.prompt_valid), tuple(map(split, self.cross_keys)),
                          tuple(map(split, self.cross_values)))


def pack_inputs(context_ids, context_mask, prompt_ids, prompt_mask):
    """The Reader interface's ``[batch, docs, len]`` input of a CEPE reader: each candidate
    row holds its context (``context_len`` tokens, right-padded) followed by the question
    prompt (``prompt_len`` tokens, left-padded, the same in every row).

    Args:
      context_ids, context_mask: ``[batch, docs, context_len]``.
      prompt_ids, prompt_mask: ``[batch, prompt_len]``.

    Returns:
      ids and mask ``[batch, docs, context_len + prompt_len]``.
    """
    docs = context_ids.shape[1]
    tile = lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], docs, a.shape[1]))
    return (jnp.concatenate([context_ids, tile(prompt_ids).astype(context_ids.dtype)], -1),
            jnp.concatenate([context_mask.astype(bool), tile(prompt_mask).astype(bool)], -1))


@struct.dataclass
class CepeDecodeCache:
    """Incremental decoding state (``rows = batch * beams``; row ``b * beams + j`` is beam
    ``j`` of question ``b``).

    The buffers hold the prompt but its last token, then the fed tokens: generation step
    ``p`` feeds buffer index ``prefix + p`` (the prompt's last token at ``p = 0``).

    Attributes:
      self_keys, self_values: per layer ``[rows, prefix + max_length, kv_heads, head_dim]``.
      cross_keys, cross_values: per cross layer ``[batch, keys, kv_heads, head_dim]``.
      memory_valid: ``[batch, keys]``; key_valid: ``[rows, prefix + max_length]``.
      last_prompt_token: ``[rows]``; first_position: ``[rows]`` its rotary position.
      prefix: prompt tokens before the last (static).
    """

    self_keys: tuple
    self_values: tuple
    cross_keys: tuple
    cross_values: tuple
    memory_valid: jax.Array
    key_valid: jax.Array
    last_prompt_token: jax.Array
    first_position: jax.Array
    prefix: int = struct.field(pytree_node=False)

    @property
    def rows(self) -> int:
        return self.key_valid.shape[0]

    @property
    def batch_size(self) -> int:
        return self.memory_valid.shape[0]

    @property
    def max_length(self) -> int:
        return self.key_valid.shape[1] - self.prefix

    @property
    def num_beams(self) -> int:
        return self.rows // self.batch_size

    def reorder(self, rows) -> CepeDecodeCache:
        """Row ``i`` continues the history of row ``rows[i]`` (beams of one question; the
        other fields are equal across a question's beams)."""
        take = lambda buffers: tuple(jnp.take(b, rows, axis=0) for b in buffers)
        return self.replace(self_keys=take(self.self_keys), self_values=take(self.self_values))


class CepeReader(nnx.Module):
    """CEPE as a frozen reader (the :class:`~gumbel_jax.models.reader.Reader` interface).

    Submodules carry the checkpoint's names: ``model`` (the decoder, with ``cross_attn`` in
    its layers), ``lm_head``, ``encoder``.

    Args:
      config: the architecture (and compute options of both stacks).
      rngs: initialisation randomness (random weights; checkpoints overwrite them).
      prompt_length: prompt tokens at the end of every input row (:func:`pack_inputs`).
      method: document-masked attention, ``"bias"`` or ``"blockwise"`` (equal results).
      frozen: the encoder output and memory keys/values are put under stop_gradient.
      precompute_memory: compute every layer's memory keys and values once in
        :meth:`encode` (fast; ``2 * layers * keys * heads * head_dim`` values per question)
        or from the encoder states at each call (small memory, e.g. 16 GB chips).
    """

    def __init__(self, config: CepeConfig, *, rngs: nnx.Rngs, prompt_length: int = 64,
                 method: DmaMethod = "bias", frozen: bool = True,
                 precompute_memory: bool = True):
        if method not in ("bias", "blockwise"):
            raise ValueError(f"method must be 'bias' or 'blockwise', got {method!r}")
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1 (at least BOS), got {prompt_length}")
        self.config = config
        self.prompt_length = prompt_length
        self.method, self.frozen, self.precompute_memory = method, frozen, precompute_memory
        decoder, encoder = config.decoder, config.encoder
        self.model = LlamaStack(decoder, rngs, cross_width=encoder.hidden_size,
                                num_cross_layers=config.num_cross_attn_layers)
        self.lm_head = dense(decoder.hidden_size, decoder.vocab_size, rngs, dtype=decoder.dtype,
                             std=0.02, axes=("embed", "vocab"))
        self.encoder = LlamaStack(encoder, rngs)

    @classmethod
    def random(cls, config: CepeConfig, *, seed: int = 0, **options) -> CepeReader:
        return cls(config, rngs=nnx.Rngs(seed), **options)

    # --- Encoding ----------------------------------------------------------------------

    def encode_contexts(self, context_ids, context_mask):
        """The context encoder: ``[batch, docs, len]`` -> ``[batch, docs * len, width]``,
        each context alone and bidirectionally, positions from 0 in every one."""
        batch, docs, length = context_ids.shape
        ids = context_ids.reshape(batch * docs, length)
        valid = context_mask.reshape(batch * docs, length).astype(bool)
        positions = jnp.broadcast_to(jnp.arange(length), ids.shape)
        states = self.encoder(ids, positions, padding_bias(valid))
        return states.reshape(batch, docs * length, -1)

    def encode(self, input_ids, attention_mask) -> CepeMemory:
        """Inputs of :func:`pack_inputs` (``[batch, docs, context_len + prompt_len]``) ->
        :class:`CepeMemory`.

        A padded candidate's context is all False; its prompt part may be either (the prompt
        is read from the rows where it is valid)."""
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError("input_ids and attention_mask must both be [batch, docs, "
                             f"context_len + prompt_len], got {input_ids.shape} and "
                             f"{attention_mask.shape}")
        prompt = self.prompt_length
        if input_ids.shape[-1] <= prompt:
            raise ValueError(f"rows of {input_ids.shape[-1]} tokens leave no room for contexts "
                             f"beside the {prompt}-token prompt")
        mask = attention_mask.astype(bool)
        prompt_valid = mask[..., -prompt:].any(axis=1)
        prompt_ids = jnp.where(mask[..., -prompt:], input_ids[..., -prompt:], 0).max(axis=1)
        return self.encode_parts(input_ids[..., :-prompt], mask[..., :-prompt], prompt_ids,
                                 prompt_valid)

    def encode_parts(self, context_ids, context_mask, prompt_ids, prompt_valid) -> CepeMemory:
        """Contexts ``[batch, docs, context_len]`` and a left-padded prompt ``[batch,
        prompt_len]`` -> :class:`CepeMemory` (the memory keys and values included when
        ``precompute_memory``)."""
        batch, docs, length = context_ids.shape
        states = self.encode_contexts(context_ids, context_mask)
        if self.frozen:
            states = jax.lax.stop_gradient(states)
        valid = context_mask.reshape(batch, docs * length).astype(bool)
        memory = CepeMemory(states, valid, docs, prompt_ids.astype(jnp.int32),
                            prompt_valid.astype(bool))
        if not self.precompute_memory:
            return memory
        pairs = self._memory_key_values(memory)
        return memory.replace(cross_keys=tuple(k for k, _ in pairs),
                              cross_values=tuple(v for _, v in pairs))

    def _memory_key_values(self, memory: CepeMemory):
        """One ``(keys, values)`` per cross-attention layer: the precomputed ones, or
        projected now from the encoder states."""
        if memory.cross_keys:
            return tuple(zip(memory.cross_keys, memory.cross_values, strict=True))
        pairs = tuple(self.model.layers[i].cross_attn.key_values(memory.states)
                      for i in self.model.cross_layers)
        return jax.lax.stop_gradient(pairs) if self.frozen else pairs

    # --- Teacher-forced decoding ------------------------------------------------------

    def decode_hidden(self, memory: CepeMemory, answer_ids, doc_log_mask=None, *,
                      method: DmaMethod | None = None, return_doc_weights: bool = False,
                      weight_by_value_norm: bool = False):
        """Decoder states at the positions that predict each answer token, ``[batch,
        tgt_len, width]`` (and the cross-attention mass per document at those positions,
        ``[cross layers, batch, heads, tgt_len, docs]``, if asked).

        The decoder reads ``prompt + answer[:-1]``; the state at the prompt's last token
        predicts ``answer[0]``."""
        prompt = memory.prompt_ids.shape[-1]
        sequence = jnp.concatenate([memory.prompt_ids, answer_ids[:, :-1].astype(jnp.int32)], -1)
        valid = jnp.concatenate([memory.prompt_valid,
                                 jnp.ones((answer_ids.shape[0], answer_ids.shape[1] - 1), bool)],
                                -1)
        out = self.model(sequence, valid_positions(valid),
                         causal_bias(valid, sequence.shape[-1]), self._memory_key_values(memory),
                         doc_log_mask, memory.valid, method=method or self.method,
                         return_doc_weights=return_doc_weights,
                         weight_by_value_norm=weight_by_value_norm)
        if return_doc_weights:
            hidden, weights = out
            return hidden[:, prompt - 1:], weights[..., prompt - 1:, :]
        return out[:, prompt - 1:]

    def answer_logits(self, memory: CepeMemory, answer_ids, doc_log_mask=None):
        """float32 ``[batch, tgt_len, vocab]``: the logits of each answer token (teacher
        forcing on ``answer_ids``)."""
        return lm_logits(self, self.decode_hidden(memory, answer_ids, doc_log_mask))

    def token_log_probs(self, memory: CepeMemory, answer_ids, answer_mask, doc_log_mask=None,
                        *, temperature: float = 1.0):
        """Teacher-forced log p(answer token | prompt, contexts): float32 ``[batch,
        tgt_len]``, 0 on padding; differentiable in ``doc_log_mask [batch, docs]``.
        ``temperature`` divides the vocabulary logits (EMDR's ``temperature_gold``)."""
        _check_mask(memory, doc_log_mask)
        logits = self.answer_logits(memory, answer_ids, doc_log_mask)
        log_probs = jax.nn.log_softmax(logits / temperature, -1)
        picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
        return jnp.where(answer_mask, picked, 0.0)

    def document_attention(self, memory: CepeMemory, answer_ids, answer_mask,
                           doc_log_mask=None, *, value_weighted: bool = False):
        """Cross-attention mass on each document averaged over cross-attention layers, heads
        and the positions that predict answer tokens: ``[batch, docs]``, rows summing to 1.
        With ``value_weighted`` each key's probability is first multiplied by the norm of
        its value vector (Atlas's ``evalnormsum``, ADist's signal); rows then do not sum
        to 1."""
        _check_mask(memory, doc_log_mask)
        log_mask = memory.full_log_mask() if doc_log_mask is None else doc_log_mask
        _, weights = self.decode_hidden(memory, answer_ids, log_mask, method="blockwise",
                                        return_doc_weights=True,
                                        weight_by_value_norm=value_weighted)
        return aggregate_document_attention(weights, answer_mask)

    # --- Generation ---------------------------------------------------------------------

    def init_decode_cache(self, memory: CepeMemory, doc_log_mask=None, *, max_length: int,
                          num_beams: int = 1) -> CepeDecodeCache:
        """Run the prompt but its last token through the decoder (under the mask) and keep
        its keys and values; buffers for ``max_length`` more tokens, ``num_beams`` rows per
        question."""
        if max_length < 1 or num_beams < 1:
            raise ValueError(f"max_length and num_beams must be >= 1, got {max_length} and "
                             f"{num_beams}")
        batch, prompt = memory.prompt_ids.shape
        cross_kv = self._memory_key_values(memory)
        config = self.config.decoder
        buffer_shape = (batch, prompt - 1 + max_length, config.kv_heads, config.head_dim)
        keys = [jnp.zeros(buffer_shape, config.dtype)] * len(self.model.layers)
        values = list(keys)
        if prompt > 1:
            valid = memory.prompt_valid[:, :-1]
            _, prefix_kv = self.model(memory.prompt_ids[:, :-1], valid_positions(valid),
                                      causal_bias(valid, prompt - 1), cross_kv, doc_log_mask,
                                      memory.valid, method=self.method,
                                      return_key_values=True)
            put = lambda buffer, new: jax.lax.dynamic_update_slice_in_dim(
                buffer, new.astype(buffer.dtype), 0, axis=1)
            keys = [put(b, k) for b, (k, _) in zip(keys, prefix_kv, strict=True)]
            values = [put(b, v) for b, (_, v) in zip(values, prefix_kv, strict=True)]
        beams = lambda a: jnp.repeat(a, num_beams, axis=0)
        key_valid = jnp.concatenate([memory.prompt_valid[:, :-1],
                                     jnp.ones((batch, max_length), bool)], -1)
        first_position = memory.prompt_valid.sum(-1).astype(jnp.int32) - 1
        return CepeDecodeCache(tuple(map(beams, keys)), tuple(map(beams, values)),
                               tuple(k for k, _ in cross_kv), tuple(v for _, v in cross_kv),
                               memory.valid, beams(key_valid),
                               beams(memory.prompt_ids[:, -1].astype(jnp.int32)),
                               beams(first_position), prompt - 1)

    def decode_step(self, token_ids, position, cache: CepeDecodeCache, doc_log_mask=None):
        """The logits ``[rows, vocab]`` (float32) after feeding generation step
        ``position``'s token (at step 0 the prompt's last token, whatever ``token_ids``
        holds), and the cache with its keys and values written."""
        token_ids = jnp.where(position == 0, cache.last_prompt_token, token_ids)
        index = cache.prefix + position
        buffer_len = cache.key_valid.shape[-1]
        allowed = (jnp.arange(buffer_len) <= index)[None] & cache.key_valid
        bias = jnp.where(allowed, 0.0, mask_value(jnp.float32))[:, None, None, :]
        hidden, buffers = self.model.step(
            token_ids, cache.first_position + position, index, bias,
            tuple(zip(cache.self_keys, cache.self_values, strict=True)),
            tuple(zip(cache.cross_keys, cache.cross_values, strict=True)), doc_log_mask,
            cache.memory_valid, method=self.method)
        return lm_logits(self, hidden), cache.replace(
            self_keys=tuple(k for k, _ in buffers), self_values=tuple(v for _, v in buffers))

    def generate(self, memory: CepeMemory, doc_log_mask=None, *, max_length: int = 32,
                 num_beams: int = 1):
        """Answer tokens ``[batch, max_length]`` int32 after the prompt, ``pad_token_id``
        after EOS, decoded with a key/value cache under the mask: greedy for
        ``num_beams == 1`` (CEPE's QA evaluation), else beam search. Jittable."""
        _check_mask(memory, doc_log_mask)
        cache = self.init_decode_cache(memory, doc_log_mask, max_length=max_length,
                                       num_beams=num_beams)
        step = lambda ids, position, cache: self.decode_step(ids, position, cache, doc_log_mask)
        config = self.config.decoder
        tokens = {"start_id": config.bos_token_id, "eos_id": config.eos_token_id,
                  "pad_id": config.pad_token_id}
        if num_beams == 1:
            return greedy_search(step, cache, **tokens)
        return beam_search(step, cache, **tokens)


def _check_mask(memory: Memory, doc_log_mask) -> None:
    if doc_log_mask is not None and doc_log_mask.shape != (memory.batch_size, memory.num_docs):
        raise ValueError(f"doc_log_mask must be [batch, docs] = [{memory.batch_size}, "
                         f"{memory.num_docs}], got {doc_log_mask.shape}")
