"""Attention kernels: plain dot-product attention and the reader's document-masked attention.

Document-masked attention (DMA) multiplies the attention to every token of document ``i`` by
``M_i`` and renormalises. Two equal implementations sit behind one switch:

* ``bias``: add ``log M_i`` to the logits of document ``i``'s keys (``ops.document_bias``) and
  run ``jax.nn.dot_product_attention`` (xla or cudnn);
* ``blockwise``: attend within each document, keep each document's log-sum-exp, and combine
  documents with ``softmax_i(lse_i + log M_i)``. It never asks a kernel for a bias gradient,
  and its combination weights are the attention mass per document (the ADist signal).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from gumbel_jax import ops
from gumbel_jax.models.layers import dropout

DmaMethod = Literal["bias", "blockwise"]
Implementation = Literal["xla", "cudnn"] | None


class RightPaddedBias(NamedTuple):
    """Self-attention's additive bias for right-padded rows, without the ``[batch, heads,
    queries, keys]`` tensor: a bias shared by the batch plus each row's length. Token ``t``
    of a row is real iff ``t < lengths``; keys past it are masked. A fused kernel takes the
    lengths directly, so neither the bias per row nor its gradient per row is formed.

    Attributes:
      bias: ``[1, heads, queries, keys]`` (T5's relative position bias).
      lengths: ``[batch]`` int, real tokens per row.
    """

    bias: jax.Array
    lengths: jax.Array

    def dense(self, dtype=jnp.float32):
        """The equal materialised bias ``[batch, heads, queries, keys]``."""
        key_valid = jnp.arange(self.bias.shape[-1]) < self.lengths[:, None]
        return self.bias.astype(dtype) + padding_bias(key_valid, dtype)


def _right_padded_attention(query, key, value, bias: RightPaddedBias, *, scale,
                            implementation: Implementation):
    """``dot_attention`` with a :class:`RightPaddedBias`: lengths to the kernel. Padded
    query rows may differ from the materialised form (cuDNN returns zeros there); real rows
    do not depend on them. A row without tokens attends to its first token (lengths of 0
    are not a kernel case), a row that is masked downstream."""
    implementation = supported_kernel(implementation, query, key, has_bias=True)
    if implementation is None:
        return dot_attention(query, key, value, bias.dense(), scale=scale)
    shared = bias.bias
    if implementation == "cudnn":
        shared = jnp.maximum(shared, ops.mask_value(query.dtype)).astype(query.dtype)
    lengths = jnp.maximum(bias.lengths, 1).astype(jnp.int32)
    return jax.nn.dot_product_attention(query, key, value, bias=shared, scale=scale,
                                        query_seq_lengths=lengths,
                                        key_value_seq_lengths=lengths,
                                        implementation=implementation)


def dot_attention(query, key, value, bias=None, *, scale: float = 1.0,
                  implementation: Implementation = None, dropout_key=None,
                  dropout_rate: float = 0.0):
    """Multi-head attention with an additive bias and a float32 softmax.

    Args:
      query: ``[batch, queries, heads, dim]``.
      key, value: ``[batch, keys, heads, dim]``.
      bias: optional additive bias broadcastable to ``[batch, heads, queries, keys]``, or a
        :class:`RightPaddedBias` (self-attention of right-padded rows).
      scale: logit scale (T5 uses 1, BERT ``dim ** -0.5``).
      implementation: None for our einsum path (float32 logits); ``"xla"`` or ``"cudnn"`` for
        ``jax.nn.dot_product_attention``.
      dropout_key, dropout_rate: dropout on the attention probabilities
        ``[batch, heads, queries, keys]`` (T5's training; ``layers.dropout``). A fused
        kernel has no such dropout, so while it is active the einsum path runs whatever
        ``implementation`` says.

    Returns:
      ``[batch, queries, heads, dim]`` in the dtype of ``query``.
    """
    if dropout_key is not None and dropout_rate:
        bias = bias.dense() if isinstance(bias, RightPaddedBias) else bias
        implementation = None
    if isinstance(bias, RightPaddedBias):
        return _right_padded_attention(query, key, value, bias, scale=scale,
                                       implementation=implementation)
    implementation = supported_kernel(implementation, query, key, has_bias=bias is not None)
    if implementation is not None:
        if bias is not None and implementation == "cudnn":
            # cuDNN wants a materialised [batch, 1, queries, keys] bias in the query dtype;
            # clip first so float16 cannot turn the mask value into -inf.
            shape = (query.shape[0], bias.shape[1], query.shape[1], key.shape[1])
            bias = jnp.maximum(bias, ops.mask_value(query.dtype)).astype(query.dtype)
            bias = jnp.broadcast_to(bias, shape)
        return jax.nn.dot_product_attention(query, key, value, bias=bias, scale=scale,
                                            implementation=implementation)
    accumulate = jnp.promote_types(query.dtype, jnp.float32)
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=accumulate)
    logits = logits * scale
    if bias is not None:
        logits = logits + bias.astype(accumulate)
    weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    weights = dropout(dropout_key, weights, rate=dropout_rate)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


def supported_kernel(implementation: Implementation, query, key, *, has_bias: bool
                     ) -> Implementation:
    """The kernel an attention of these shapes runs for a requested ``implementation``.

    ``"cudnn"`` means cuDNN's fused (flash) kernel wherever it supports the call, and XLA's
    ``jax.nn.dot_product_attention`` where it does not, decided from static shapes and
    dtypes: cuDNN needs bf16/fp16 inputs, a head dim that is a multiple of 8 (<= 128 before
    Hopper, 256 on it), and even query and key lengths when a bias is trained through
    (RankT5's one-token decoder is neither). So one setting can name the fast kernel for
    every attention of a model without failing on the few it cannot run.
    """
    if implementation != "cudnn":
        return implementation
    queries, keys, head_dim = query.shape[1], key.shape[1], query.shape[-1]
    fits = (query.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
            and head_dim <= 256 and not (has_bias and (queries % 2 or keys % 2)))
    return "cudnn" if fits else "xla"


def padding_bias(key_valid, dtype=jnp.float32):
    """``[batch, keys]`` boolean -> ``[batch, 1, 1, keys]`` additive bias (0 or mask_value)."""
    return jnp.where(key_valid, 0.0, ops.mask_value(dtype)).astype(dtype)[:, None, None, :]


def document_masked_attention(query, key, value, doc_log_mask, key_valid, *,
                              method: DmaMethod = "bias", implementation: Implementation = None,
                              scale: float = 1.0, return_doc_weights: bool = False,
                              weight_by_value_norm: bool = False, dropout_key=None,
                              dropout_rate: float = 0.0):
    """Attention over ``docs`` equal-length documents laid end to end, gated per document.

    Args:
      query: ``[batch, queries, heads, dim]``.
      key, value: ``[batch, docs * doc_len, heads, dim]`` (FiD's concatenated encoder output).
      doc_log_mask: ``[batch, docs]`` log mask (0 = full attention), or None for no gating.
      key_valid: ``[batch, docs * doc_len]`` boolean, False on padding tokens.
      method: ``"bias"`` or ``"blockwise"`` (see the module docstring).
      implementation: kernel for the ``bias`` method (None, ``"xla"``, ``"cudnn"``).
      scale: logit scale.
      return_doc_weights: also return the attention mass per document
        ``[batch, heads, queries, docs]`` (forces the blockwise computation).
      weight_by_value_norm: the returned document weights sum each key's attention
        probability times the norm of its value vector (per head) instead: Atlas's
        ``evalnormsum`` statistic (ADist), not a distribution over documents.
      dropout_key, dropout_rate: dropout on the attention probabilities (T5's training),
        one mask over ``[batch, heads, queries, docs * doc_len]`` whichever the method, so
        both methods stay equal under the same key. The document weights returned are
        those before dropout.

    Returns:
      ``[batch, queries, heads, dim]``, and the document weights if asked.
    """
    batch, num_keys = key_valid.shape
    num_docs = 1 if doc_log_mask is None else doc_log_mask.shape[-1]
    if doc_log_mask is None:
        doc_log_mask = jnp.zeros((batch, 1), query.dtype)
    if num_keys % num_docs:
        raise ValueError(f"keys ({num_keys}) must be docs ({num_docs}) x doc_len")
    if method == "blockwise" or return_doc_weights:
        out, weights = _blockwise_attention(query, key, value, doc_log_mask, key_valid, scale,
                                            weight_by_value_norm, dropout_key, dropout_rate)
        return (out, weights) if return_doc_weights else out
    if method != "bias":
        raise ValueError(f"method must be 'bias' or 'blockwise', got {method!r}")
    key_doc_ids = jnp.arange(num_keys, dtype=jnp.int32) // (num_keys // num_docs)
    accumulate = jnp.promote_types(query.dtype, jnp.float32)
    bias = ops.document_bias(doc_log_mask.astype(accumulate), key_doc_ids, key_valid)
    return dot_attention(query, key, value, bias, scale=scale, implementation=implementation,
                         dropout_key=dropout_key, dropout_rate=dropout_rate)


def _blockwise_attention(query, key, value, doc_log_mask, key_valid, scale,
                         weight_by_value_norm=False, dropout_key=None, dropout_rate=0.0):
    """Per-document softmax, then documents weighted by softmax(lse + log M). The second
    output is each document's attention mass, or with ``weight_by_value_norm`` the sum over
    its keys of probability x value norm (float32, padding keys count 0). Dropout drops a
    key's probability (document weight x within-document probability) by dropping its
    within-document factor, with the mask of the one-softmax path."""
    batch, num_keys, heads, dim = key.shape
    num_docs = doc_log_mask.shape[-1]
    doc_len = num_keys // num_docs
    key = key.reshape(batch, num_docs, doc_len, heads, dim)
    value = value.reshape(batch, num_docs, doc_len, heads, dim)
    accumulate = jnp.promote_types(query.dtype, jnp.float32)
    neg = ops.mask_value(accumulate)
    logits = jnp.einsum("bqhd,bnlhd->bhqnl", query, key, preferred_element_type=accumulate)
    valid = key_valid.reshape(batch, 1, 1, num_docs, doc_len)
    logits = jnp.where(valid, logits * scale, neg)
    doc_lse = jax.nn.logsumexp(logits, axis=-1)  # [b, h, q, n]
    within = jnp.exp(logits - doc_lse[..., None]).astype(value.dtype)
    if dropout_key is not None and dropout_rate:
        flat = within.shape[:3] + (num_keys,)
        within = dropout(dropout_key, within.reshape(flat), rate=dropout_rate).reshape(
            within.shape)
    doc_out = jnp.einsum("bhqnl,bnlhd->bhqnd", within, value)
    log_mask = jnp.clip(doc_log_mask.astype(accumulate), neg, 0.0)[:, None, None, :]
    # A fully padded document has lse = neg + log(doc_len): it weighs nothing next to any
    # real document, exactly as its keys would in one softmax over all keys.
    doc_weights = jax.nn.softmax(jnp.maximum(doc_lse + log_mask, neg), axis=-1)
    out = jnp.einsum("bhqn,bhqnd->bqhd", doc_weights.astype(value.dtype), doc_out)
    if weight_by_value_norm:
        # A key's probability in the one softmax over all keys is doc weight x within.
        norms = jnp.linalg.norm(value.astype(accumulate), axis=-1)  # [b, n, l, h]
        norms = jnp.where(valid.reshape(batch, num_docs, doc_len, 1), norms, 0.0)
        within = jnp.exp(logits - doc_lse[..., None])
        return out, doc_weights * jnp.einsum("bhqnl,bnlh->bhqn", within, norms)
    return out, doc_weights
