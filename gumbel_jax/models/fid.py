"""Fusion-in-Decoder reader whose cross-attention reads a per-document mask.

Each (question, passage) pair is encoded on its own with the same positions; the encoder
outputs are laid end to end and the decoder cross-attends over all of them. Adding
``log M_i`` to the logits of passage ``i``'s keys in every cross-attention layer is the
paper's differentiable masked attention; a 0/1 mask equals reading only the chosen passages.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.attention import DmaMethod, Implementation
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder, shift_right


def fid_passage_text(question: str, title: str, text: str) -> str:
    """The reader's input for one passage, as in FiD."""
    return f"question: {question} title: {title} context: {text}"


class FiDReader(nnx.Module):
    """A T5 reader in the Fusion-in-Decoder layout.

    Args:
      t5: the encoder-decoder.
      method: document-masked attention, ``"bias"`` or ``"blockwise"`` (equal results).
      implementation: kernel for ``"bias"``: None (einsum), ``"xla"`` or ``"cudnn"``.
      frozen: the reader is not trained; its encoder output is put under stop_gradient, so
        no backward pass runs through the encoder (the mask never reaches it anyway).
    """

    def __init__(self, t5: T5EncoderDecoder, *, method: DmaMethod = "bias",
                 implementation: Implementation = None, frozen: bool = True):
        if method not in ("bias", "blockwise"):
            raise ValueError(f"method must be 'bias' or 'blockwise', got {method!r}")
        self.t5 = t5
        self.method = method
        self.implementation = implementation
        self.frozen = frozen

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, dtype=jnp.float32,
                        remat: bool = False, **options) -> FiDReader:
        """A FiD or plain T5 checkpoint, by folder or hub name (FiD's wrapped keys accepted)."""
        from gumbel_jax.checkpoints.t5 import load_t5

        return cls(load_t5(name_or_path, dtype=dtype, remat=remat), **options)

    @classmethod
    def random(cls, config: T5Config, *, seed: int = 0, **options) -> FiDReader:
        return cls(T5EncoderDecoder(config, rngs=nnx.Rngs(seed)), **options)

    @property
    def config(self) -> T5Config:
        return self.t5.config

    def encode(self, input_ids, attention_mask):
        """Encode every passage on its own.

        Args:
          input_ids: ``[batch, docs, doc_len]`` token ids.
          attention_mask: ``[batch, docs, doc_len]`` boolean (a padded passage is all False).

        Returns:
          ``(memory [batch, docs * doc_len, d_model], memory_valid [batch, docs * doc_len])``.
        """
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError("input_ids and attention_mask must both be [batch, docs, doc_len], "
                             f"got {input_ids.shape} and {attention_mask.shape}")
        batch, docs, length = input_ids.shape
        flat_mask = attention_mask.reshape(batch * docs, length).astype(bool)
        memory = self.t5.encode(input_ids.reshape(batch * docs, length), flat_mask)
        memory = memory.reshape(batch, docs * length, -1)
        if self.frozen:
            memory = jax.lax.stop_gradient(memory)
        return memory, flat_mask.reshape(batch, docs * length)

    def _decode_options(self):
        return {"method": self.method, "implementation": self.implementation}

    def token_log_probs(self, memory, memory_valid, answer_ids, answer_mask, doc_log_mask=None):
        """Teacher-forced log p(answer token | question, passages), ``[batch, tgt_len]``.

        Args:
          memory, memory_valid: from :meth:`encode`.
          answer_ids: ``[batch, tgt_len]`` gold answer tokens (ending with EOS).
          answer_mask: ``[batch, tgt_len]`` boolean, False on padding.
          doc_log_mask: ``[batch, docs]`` log mask (e.g. ``ops.log_relaxed_topk``) or None.

        Returns:
          float32 ``[batch, tgt_len]``, 0 on padding.
        """
        inputs = shift_right(answer_ids, self.config.decoder_start_token_id)
        logits = self.t5.decode(inputs, memory, memory_valid, doc_log_mask,
                                **self._decode_options())
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
        return jnp.where(answer_mask, picked, 0.0)

    def answer_log_likelihood(self, input_ids, attention_mask, answer_ids, answer_mask,
                              doc_log_mask=None):
        """Summed log-likelihood of each gold answer, ``[batch]``: encode, then decode."""
        memory, valid = self.encode(input_ids, attention_mask)
        return self.token_log_probs(memory, valid, answer_ids, answer_mask, doc_log_mask).sum(-1)

    def document_attention(self, memory, memory_valid, answer_ids, answer_mask,
                           doc_log_mask=None, *, num_docs: int | None = None):
        """Cross-attention mass on each document, averaged over layers, heads and answer
        tokens: ``[batch, docs]``, rows summing to 1 (the ADist signal).

        The memory does not record where documents start, so without a ``doc_log_mask``
        give ``num_docs``.
        """
        if doc_log_mask is None:
            if num_docs is None:
                raise ValueError("document_attention needs doc_log_mask or num_docs")
            doc_log_mask = jnp.zeros((memory.shape[0], num_docs), jnp.float32)
        inputs = shift_right(answer_ids, self.config.decoder_start_token_id)
        _, weights = self.t5.decode_hidden(inputs, memory, memory_valid, doc_log_mask,
                                           method="blockwise", return_doc_weights=True)
        # weights: [layers, batch, heads, tgt_len, docs]
        per_token = weights.mean(axis=(0, 2))
        mask = answer_mask.astype(jnp.float32)[..., None]
        return (per_token * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)

    def generate(self, input_ids, attention_mask, doc_log_mask=None, *, max_length: int = 32):
        """Greedy decoding, ``[batch, max_length]`` token ids, padded after EOS.

        Without a key/value cache each step reruns the decoder on the fixed-size buffer (the
        causal mask makes later positions irrelevant): fine for short answers.
        """
        memory, valid = self.encode(input_ids, attention_mask)
        batch = input_ids.shape[0]
        pad, eos = self.config.pad_token_id, self.config.eos_token_id
        tokens = jnp.full((batch, max_length), pad, jnp.int32)
        done = jnp.zeros((batch,), bool)

        def step(position, carry):
            tokens, done = carry
            inputs = shift_right(tokens, self.config.decoder_start_token_id)
            hidden = self.t5.decode_hidden(inputs, memory, valid, doc_log_mask,
                                           **self._decode_options())
            logits = self.t5.lm_logits(jax.lax.dynamic_index_in_dim(hidden, position, 1, False))
            chosen = jnp.where(done, pad, jnp.argmax(logits, axis=-1).astype(jnp.int32))
            tokens = jax.lax.dynamic_update_index_in_dim(tokens, chosen, position, axis=1)
            return tokens, done | (chosen == eos)

        tokens, _ = jax.lax.fori_loop(0, max_length, step, (tokens, done))
        return tokens
