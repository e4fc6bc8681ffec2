"""T5 encoder-decoder in Flax NNX: original T5 (ReLU, tied head) and T5 v1.1 / Flan-T5 (gated
GELU, untied head). Parameter names follow Hugging Face's so checkpoints map one to one."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from gumbel_jax.models.attention import (
    DmaMethod,
    Implementation,
    RightPaddedBias,
    document_masked_attention,
    dot_attention,
    padding_bias,
)
from gumbel_jax.models.layers import (
    RMSNorm,
    activation,
    dense,
    dropout,
    embedding,
    fold_key,
    remat_call,
    upcast,
)
from gumbel_jax.ops import mask_value


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The architecture of a T5 checkpoint, plus how we compute with it."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (T5) or "gated-gelu" (T5 v1.1, Flan-T5)
    tie_word_embeddings: bool = True  # tied head, decoder output scaled by d_model ** -0.5
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    # Dropout of a training step given a dropout key (transformers' T5 places: embedding
    # output, attention probabilities, feed-forward hidden, each sublayer's output before
    # the residual add, final norm output); without a key there is none. 0.1 is
    # transformers' default and every public T5 / Flan-T5 / FiD config.json's value.
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32  # compute dtype; parameters, norms and softmax stay float32
    remat: bool = False  # rematerialise each layer in the backward pass
    # The kernel of every attention of the model (encoder self-attention, decoder
    # self-attention, decoder cross-attention with the document mask): None (einsum, float32
    # logits), "xla" or "cudnn" (jax.nn.dot_product_attention with the bias materialised per
    # batch). One setting, so a config cannot run one kernel in one place and another
    # elsewhere; the factory (training.factory) sets it from ModelConfig.attention.
    attention_implementation: Implementation = None

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation_name(self) -> str:
        name = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else name

    @classmethod
    def from_hf(cls, hf_config, **overrides) -> T5Config:
        """From a transformers ``T5Config`` or the dict of a ``config.json``.

        transformers 5 always reports ``tie_word_embeddings=True`` for T5 and keeps the real
        flag as ``scale_decoder_outputs``; a raw config.json has the real flag.
        """
        raw = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        if raw.get("num_decoder_layers") is None and "num_layers" in raw:
            # Configs written before transformers 4 (t5-base/large's own, FiD's readers) have
            # no num_decoder_layers; transformers reads them as a decoder as deep as the
            # encoder (our dataclass default, 6, would silently drop layers).
            raw = {**raw, "num_decoder_layers": raw["num_layers"]}
        tied = raw.get("scale_decoder_outputs", raw.get("tie_word_embeddings", True))
        fields = {f.name for f in dataclasses.fields(cls)} - {"tie_word_embeddings"}
        values = {k: raw[k] for k in fields if k in raw and raw[k] is not None}
        if values.get("decoder_start_token_id") is None:
            values["decoder_start_token_id"] = raw.get("pad_token_id", 0)
        values["tie_word_embeddings"] = bool(tied)
        return cls(**{**values, **overrides})


# Dropout sites of a block: each gets fold_in(layer key, site) (layers.fold_key).
_SELF_PROBS, _SELF_OUT, _CROSS_PROBS, _CROSS_OUT, _MLP_HIDDEN, _MLP_OUT = range(6)


def relative_position_buckets(query_len: int, key_len: int, *, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bucketed relative positions ``[query_len, key_len]`` (a static numpy constant).

    Half the buckets hold exact small distances, the rest grow logarithmically up to
    ``max_distance``; bidirectional attention splits the buckets by the sign of the offset.
    """
    offset = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]
    buckets = np.zeros_like(offset)
    if bidirectional:
        num_buckets //= 2
        buckets += (offset > 0) * num_buckets
        distance = np.abs(offset)
    else:
        distance = -np.minimum(offset, 0)
    max_exact = num_buckets // 2
    scaled = np.log(np.maximum(distance, 1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


class TokenPacking(NamedTuple):
    """The real tokens of a ``[rows, len]`` batch laid end to end in ``capacity`` slots per
    group of rows, in order, so that position-wise work (norms, projections, feed-forward)
    skips padding. The rows split into ``groups`` equal, consecutive blocks, each packed on
    its own: on a mesh whose batch axes hold one block per device, packing then moves no
    token between devices (one group over a sharded batch would gather every device's tokens
    onto each, and repeat the packed work there). Both directions are gathers whose empty
    slots read zeros; their gradients are scatter-adds. Made by :func:`token_packing`.

    Attributes:
      take: ``[groups, capacity]`` int32, the token (``row * len + t`` within the group) in
        each slot; the group's token count (out of range: reads zeros) for a slot past its
        last real token.
      place: ``[groups, group_rows * len]`` int32, the slot of each real token; ``capacity``
        (out of range) for padding, which unpacks to zeros.
    """

    take: jax.Array
    place: jax.Array

    def pack(self, x):
        """``[rows, len, ...]`` -> ``[groups * capacity, ...]``."""
        groups, features = self.take.shape[0], x.shape[2:]
        grouped = x.reshape(groups, -1, *features)
        index = self.take.reshape(*self.take.shape, *(1,) * len(features))
        packed = jnp.take_along_axis(grouped, index, axis=1, mode="fill", fill_value=0)
        return packed.reshape(-1, *features)

    def unpack(self, x, length: int):
        """``[groups * capacity, ...]`` -> ``[rows, length, ...]``, zeros at padding."""
        groups, features = self.take.shape[0], x.shape[1:]
        grouped = x.reshape(groups, -1, *features)
        index = self.place.reshape(*self.place.shape, *(1,) * len(features))
        flat = jnp.take_along_axis(grouped, index, axis=1, mode="fill", fill_value=0)
        return flat.reshape(-1, length, *features)


def token_packing(mask, capacity: int, groups: int = 1) -> TokenPacking:
    """``[rows, len]`` boolean -> :class:`TokenPacking` into ``capacity`` slots per group
    (``rows`` divisible by ``groups``). Real tokens beyond a group's capacity are dropped:
    callers check :func:`packing_fits` first."""
    flat = mask.reshape(groups, -1)
    size = flat.shape[1]
    take = jax.vmap(lambda row: jnp.nonzero(row, size=capacity, fill_value=size)[0])(flat)
    place = jnp.where(flat, jnp.cumsum(flat, axis=1, dtype=jnp.int32) - 1, capacity)
    return TokenPacking(take.astype(jnp.int32), place.astype(jnp.int32))


def packing_fits(mask, capacity: int, groups: int = 1):
    """Whether every group's real tokens fit ``capacity`` slots (a traced boolean)."""
    counts = jnp.sum(mask.reshape(groups, -1).astype(jnp.int32), axis=1)
    return jnp.all(counts <= capacity)


def packing_capacity(token_capacity: float, rows: int, length: int, groups: int = 1
                     ) -> int | None:
    """Slots per group for a ``token_capacity`` fraction of a group's ``rows / groups x
    length`` tokens; None when packing is off (0) or would not save a slot."""
    if not 0.0 <= token_capacity <= 1.0:
        raise ValueError(f"token_capacity={token_capacity} must be in [0, 1] (0: off)")
    if rows % groups:
        raise ValueError(f"{rows} rows do not split into {groups} packing groups (one per "
                         "device of the batch axes: make the batch divisible)")
    group_tokens = rows // groups * length
    capacity = math.ceil(token_capacity * group_tokens)
    return capacity if 0 < capacity < group_tokens else None


class T5Attention(nnx.Module):
    """Multi-head attention without biases or logit scaling (T5's convention)."""

    def __init__(self, config: T5Config, rngs: nnx.Rngs):
        inner = config.num_heads * config.d_kv
        self.heads, self.head_dim = config.num_heads, config.d_kv
        self.implementation = config.attention_implementation
        self.dropout_rate = config.dropout_rate
        into, out_of = ("embed", "heads"), ("heads", "embed")
        self.q = dense(config.d_model, inner, rngs, dtype=config.dtype,
                       std=(config.d_model * config.d_kv) ** -0.5, axes=into)
        self.k = dense(config.d_model, inner, rngs, dtype=config.dtype, axes=into)
        self.v = dense(config.d_model, inner, rngs, dtype=config.dtype, axes=into)
        self.o = dense(inner, config.d_model, rngs, dtype=config.dtype, axes=out_of)

    def _split(self, x):
        return x.reshape(*x.shape[:-1], self.heads, self.head_dim)

    def _merge(self, x):
        return self.o(x.reshape(*x.shape[:-2], self.heads * self.head_dim))

    def __call__(self, x, bias, *, dropout_key=None):
        """Self-attention; ``dropout_key`` drops attention probabilities (training)."""
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        return self._merge(dot_attention(q, k, v, bias, scale=1.0,
                                         implementation=self.implementation,
                                         dropout_key=dropout_key,
                                         dropout_rate=self.dropout_rate))

    def cross(self, x, memory, doc_log_mask, memory_valid, *, method,
              return_doc_weights=False, weight_by_value_norm=False, dropout_key=None):
        """Cross-attention to the encoder output with the per-document log mask."""
        q, k, v = self._split(self.q(x)), self._split(self.k(memory)), self._split(self.v(memory))
        out = document_masked_attention(q, k, v, doc_log_mask, memory_valid, method=method,
                                        implementation=self.implementation, scale=1.0,
                                        return_doc_weights=return_doc_weights,
                                        weight_by_value_norm=weight_by_value_norm,
                                        dropout_key=dropout_key,
                                        dropout_rate=self.dropout_rate)
        if return_doc_weights:
            return self._merge(out[0]), out[1]
        return self._merge(out), None

    def key_values(self, memory):
        """``[batch, keys, d_model]`` -> keys and values ``[batch, keys, heads, d_kv]``."""
        return self._split(self.k(memory)), self._split(self.v(memory))

    def cached(self, x, keys, values, position, bias):
        """Self-attention of one new token per row on a key/value buffer.

        Args:
          x: ``[rows, 1, d_model]`` the new tokens' states.
          keys, values: ``[rows, max_length, heads, d_kv]`` buffers holding positions
            ``0 .. position - 1``.
          position: int (traced) position of the new token.
          bias: broadcastable to ``[rows, heads, 1, max_length]``; masks keys after
            ``position``.

        Returns:
          The output ``[rows, 1, d_model]`` and the buffers with this token written at
          ``position``.
        """
        new_keys, new_values = self.key_values(x)
        keys = jax.lax.dynamic_update_slice_in_dim(keys, new_keys, position, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, new_values, position, axis=1)
        query = self._split(self.q(x))
        out = dot_attention(query, keys, values, bias, scale=1.0,
                            implementation=self.implementation)
        return self._merge(out), keys, values

    def cross_cached(self, x, keys, values, doc_log_mask, memory_valid, *, method):
        """Cross-attention of ``rows = batch * beams`` new tokens to precomputed memory keys.

        The beams of a question are the queries of that question's attention call, so the
        memory keys and values (``[batch, heads, d_kv, keys]``, :class:`DecodeCache`'s layout)
        are never copied per beam and the document mask ``[batch, docs]`` enters exactly as in
        :meth:`cross`.
        """
        rows, batch = x.shape[0], keys.shape[0]
        keys, values = (jnp.transpose(a, (0, 3, 1, 2)) for a in (keys, values))
        query = self._split(self.q(x)).reshape(batch, rows // batch, self.heads, self.head_dim)
        out = document_masked_attention(query, keys, values, doc_log_mask, memory_valid,
                                        method=method, implementation=self.implementation,
                                        scale=1.0)
        return self._merge(out.reshape(rows, 1, self.heads, self.head_dim))


class T5FeedForward(nnx.Module):
    def __init__(self, config: T5Config, rngs: nnx.Rngs):
        into = ("embed", "mlp")
        self.gated = config.is_gated
        self.act = activation(config.activation_name)
        self.dropout_rate = config.dropout_rate
        if self.gated:
            self.wi_0 = dense(config.d_model, config.d_ff, rngs, dtype=config.dtype, axes=into)
            self.wi_1 = dense(config.d_model, config.d_ff, rngs, dtype=config.dtype, axes=into)
        else:
            self.wi = dense(config.d_model, config.d_ff, rngs, dtype=config.dtype, axes=into)
        self.wo = dense(config.d_ff, config.d_model, rngs, dtype=config.dtype,
                        axes=("mlp", "embed"))

    def __call__(self, x, *, dropout_key=None):
        hidden = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(dropout(dropout_key, hidden, rate=self.dropout_rate))


class T5Block(nnx.Module):
    """Pre-norm residual block: self-attention, (cross-attention), feed-forward."""

    def __init__(self, config: T5Config, rngs: nnx.Rngs, *, is_decoder: bool):
        norm = lambda: RMSNorm(config.d_model, eps=config.layer_norm_epsilon, dtype=config.dtype)
        self.self_attention_norm = norm()
        self.self_attention = T5Attention(config, rngs)
        self.is_decoder = is_decoder
        if is_decoder:
            self.cross_attention_norm = norm()
            self.cross_attention = T5Attention(config, rngs)
        self.mlp_norm = norm()
        self.mlp = T5FeedForward(config, rngs)
        self.dropout_rate = config.dropout_rate

    def __call__(self, x, self_bias, cross=None, dropout_key=None):
        """``dropout_key`` (None: no dropout) is this layer's: each site folds in its own
        number."""
        site = lambda number: fold_key(dropout_key, number)
        drop = lambda number, update: dropout(site(number), update, rate=self.dropout_rate)
        x = x + drop(_SELF_OUT, self.self_attention(self.self_attention_norm(x), self_bias,
                                                    dropout_key=site(_SELF_PROBS)))
        doc_weights = None
        if self.is_decoder:
            memory, doc_log_mask, memory_valid, options = cross
            update, doc_weights = self.cross_attention.cross(
                self.cross_attention_norm(x), memory, doc_log_mask, memory_valid, **options,
                dropout_key=site(_CROSS_PROBS))
            x = x + drop(_CROSS_OUT, update)
        x = x + drop(_MLP_OUT, self.mlp(self.mlp_norm(x), dropout_key=site(_MLP_HIDDEN)))
        return x, doc_weights

    def packed(self, x, self_bias, packing: TokenPacking, *, length: int):
        """An encoder block on packed tokens ``x [capacity, d_model]`` (no dropout): norms,
        projections and feed-forward on real tokens only; the attention itself in the
        ``[rows, length]`` layout, whose padding rows are zeros and masked by ``self_bias``.
        Equals :meth:`__call__` at every real token."""
        attention = self.self_attention
        normed = self.self_attention_norm(x)
        q, k, v = (attention._split(packing.unpack(projection(normed), length))
                   for projection in (attention.q, attention.k, attention.v))
        out = dot_attention(q, k, v, self_bias, scale=1.0,
                            implementation=attention.implementation)
        x = x + attention.o(packing.pack(out.reshape(*out.shape[:2], -1)))
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x, self_bias, position, self_kv, cross_kv, doc_log_mask, memory_valid, *,
             method):
        """One decoding step of a decoder block: ``x [rows, 1, d_model]``, ``self_kv`` the
        block's self-attention buffers, ``cross_kv`` its memory keys and values. Returns the
        new states and the updated buffers."""
        update, keys, values = self.self_attention.cached(self.self_attention_norm(x), *self_kv,
                                                          position, self_bias)
        x = x + update
        x = x + self.cross_attention.cross_cached(self.cross_attention_norm(x), *cross_kv,
                                                  doc_log_mask, memory_valid, method=method)
        x = x + self.mlp(self.mlp_norm(x))
        return x, keys, values


class T5Stack(nnx.Module):
    """An encoder or decoder stack; the relative position bias lives in the stack (HF: in the
    first block) and is shared by all layers."""

    def __init__(self, config: T5Config, rngs: nnx.Rngs, *, is_decoder: bool):
        self.config = config
        self.is_decoder = is_decoder
        num_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.layers = nnx.List([T5Block(config, rngs, is_decoder=is_decoder)
                                for _ in range(num_layers)])
        self.relative_attention_bias = embedding(
            config.relative_attention_num_buckets, config.num_heads, rngs,
            std=config.d_model**-0.5)
        self.final_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon,
                                  dtype=config.dtype)

    def position_bias(self, query_len: int, key_len: int):
        """``[1, heads, query_len, key_len]`` float32."""
        buckets = relative_position_buckets(
            query_len, key_len, bidirectional=not self.is_decoder,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance)
        bias = self.relative_attention_bias.embedding[...][jnp.asarray(buckets)]
        return upcast(jnp.transpose(bias, (2, 0, 1))[None])

    def position_bias_row(self, position, key_len: int):
        """Row ``position`` (an int, may be traced) of :meth:`position_bias`, ``[1, heads,
        1, key_len]`` float32: the bias of one query against keys ``0 .. key_len - 1``."""
        buckets = relative_position_buckets(
            key_len, key_len, bidirectional=not self.is_decoder,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance)
        row = jnp.asarray(buckets)[position]
        bias = self.relative_attention_bias.embedding[...][row]  # [key_len, heads]
        return upcast(jnp.transpose(bias)[None, :, None, :])

    def __call__(self, embeddings, self_bias, cross=None, *, collect_doc_weights=False,
                 dropout_key=None):
        """``dropout_key``: dropout of a training step (``T5Config.dropout_rate``); layer
        ``i`` gets ``fold_in(key, i)``, the embedding output and the final norm output the
        next two numbers. None: no dropout, and no operation for it."""
        # Array arguments go through remat; the attention options stay static in the closure.
        memory, doc_log_mask, memory_valid, options = cross if cross else (None,) * 4

        def run_block(block, x, self_bias, memory, doc_log_mask, memory_valid, layer_key):
            cross = (memory, doc_log_mask, memory_valid, options) if options else None
            return block(x, self_bias, cross, layer_key)

        run = remat_call(run_block) if self.config.remat else run_block
        depth, rate = len(self.layers), self.config.dropout_rate
        x, all_weights = dropout(fold_key(dropout_key, depth), embeddings, rate=rate), []
        for index, block in enumerate(self.layers):
            x, weights = run(block, x, self_bias, memory, doc_log_mask, memory_valid,
                             fold_key(dropout_key, index))
            all_weights.append(weights)
        out = dropout(fold_key(dropout_key, depth + 1), self.final_norm(x), rate=rate)
        if collect_doc_weights:
            return out, jnp.stack(all_weights)
        return out


def _packed_stack(stack: T5Stack, x, self_bias, packing: TokenPacking, *, length: int):
    """An encoder stack on packed embeddings ``[capacity, d_model]`` -> its packed output
    (final norm applied). No dropout: the frozen reader and the reranker of a G-Rerank step
    run without it."""
    run_block = functools.partial(T5Block.packed, length=length)
    run = remat_call(run_block) if stack.config.remat else run_block
    for block in stack.layers:
        x = run(block, x, self_bias, packing)
    return stack.final_norm(x)


@struct.dataclass
class DecodeCache:
    """What incremental decoding keeps between steps (see :meth:`T5EncoderDecoder.decode_step`).

    ``rows = batch * beams``: row ``b * beams + j`` is beam ``j`` of question ``b``.

    Attributes (one array per decoder layer, so each step updates its buffers in place):
      self_keys, self_values: ``[rows, max_length, heads, d_kv]`` the decoder's
        self-attention keys and values of the tokens fed so far (zeros after them).
      cross_keys, cross_values: ``[batch, heads, d_kv, keys]`` the memory's keys and values,
        computed once per question and shared by its beams.
      memory_valid: ``[batch, keys]`` boolean.
    """

    self_keys: tuple[jax.Array, ...]
    self_values: tuple[jax.Array, ...]
    cross_keys: tuple[jax.Array, ...]
    cross_values: tuple[jax.Array, ...]
    memory_valid: jax.Array

    @property
    def rows(self) -> int:
        return self.self_keys[0].shape[0]

    @property
    def batch_size(self) -> int:
        return self.memory_valid.shape[0]

    @property
    def max_length(self) -> int:
        return self.self_keys[0].shape[1]

    @property
    def num_beams(self) -> int:
        return self.rows // self.batch_size

    def reorder(self, rows) -> DecodeCache:
        """Row ``i`` of the self-attention buffers becomes row ``rows[i]`` (``[rows]`` int):
        a beam continues the history of the beam it extends."""
        take = lambda buffers: tuple(jnp.take(buffer, rows, axis=0) for buffer in buffers)
        return self.replace(self_keys=take(self.self_keys), self_values=take(self.self_values))


class T5EncoderDecoder(nnx.Module):
    """T5 with the decoder's cross-attention gated per document (FiD layout of the memory).

    ``encode`` maps ``[batch, len]`` tokens to ``[batch, len, d_model]``; ``decode`` runs the
    decoder on a memory of ``docs * doc_len`` keys with an optional per-document log mask.
    """

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.shared = embedding(config.vocab_size, config.d_model, rngs, dtype=config.dtype,
                                std=1.0, axes=("vocab", "embed"))
        self.encoder = T5Stack(config, rngs, is_decoder=False)
        self.decoder = T5Stack(config, rngs, is_decoder=True)
        if not config.tie_word_embeddings:
            self.lm_head = dense(config.d_model, config.vocab_size, rngs, dtype=config.dtype,
                                 axes=("embed", "vocab"))

    def encode(self, input_ids, attention_mask, *, right_padded: bool = False,
               token_capacity: float = 0.0, capacity_checked: bool = False,
               packing_groups: int = 1, dropout_key=None):
        """``[batch, len]`` ids and boolean mask -> ``[batch, len, d_model]``.

        ``right_padded``: the caller guarantees every mask row is a prefix (the data
        pipeline's padding); the kernel then gets the row lengths and the position bias
        shared by the batch (``attention.RightPaddedBias``) instead of a ``[batch, heads,
        len, len]`` bias, the same outputs at real tokens.

        ``token_capacity``: in (0, 1), the position-wise work runs on the real tokens only,
        packed into ``ceil(token_capacity * batch * len)`` slots (:class:`TokenPacking`;
        per group, with ``packing_groups``);
        a batch with more real tokens takes the padded path (``lax.cond``: both are
        compiled). The same outputs at real tokens; padding tokens' outputs are zeros
        instead of the padded path's (unread) values. 0: off. Not with dropout. Meant for
        encoders that are not differentiated (a frozen reader, inference): under a gradient
        the cond keeps activations for both branches (the tiny benchmark's training step
        at batch 6 on a CPU: 36.7 MB of temporary memory, against 17.5 padded; out of
        memory for the paper's batch 32 on an H100), which ``capacity_checked`` avoids.

        ``packing_groups``: pack each of this many equal, consecutive blocks of rows on its
        own (:class:`TokenPacking`), ``token_capacity`` of each block's slots: one block per
        device of a mesh's batch axes keeps packing on each device.

        ``capacity_checked``: the caller has checked on the host that this batch's real
        tokens fit ``token_capacity`` (``training.packing`` picks a capacity per batch), so
        only the packed path is compiled: no ``lax.cond``, and a gradient keeps one path's
        activations. A batch that does not fit gets NaN outputs (a loud failure, not dropped
        tokens).

        ``dropout_key``: T5's dropout with ``config.dropout_rate`` (a training step); None
        (evaluation, frozen models): none.
        """
        length = input_ids.shape[-1]
        position = self.encoder.position_bias(length, length)
        if right_padded:
            lengths = jnp.sum(attention_mask, axis=-1, dtype=jnp.int32)
            bias = RightPaddedBias(position, lengths)
        else:
            bias = position + padding_bias(attention_mask, position.dtype)

        def padded():
            return self.encoder(self.shared(input_ids), bias, dropout_key=dropout_key)

        capacity = packing_capacity(token_capacity, input_ids.shape[0], length,
                                    packing_groups)
        if capacity is None or dropout_key is not None:
            return padded()
        packing = token_packing(attention_mask.astype(bool), capacity, packing_groups)

        def packed():
            embeddings = self.shared(packing.pack(input_ids[..., None])[:, 0])
            out = _packed_stack(self.encoder, embeddings, bias, packing, length=length)
            return packing.unpack(out, length)

        fits = packing_fits(attention_mask, capacity, packing_groups)
        if capacity_checked:
            return jnp.where(fits, packed(), jnp.nan)
        return jax.lax.cond(fits, packed, padded)

    def decode_hidden(self, decoder_input_ids, memory, memory_valid, doc_log_mask=None, *,
                      method: DmaMethod = "bias", return_doc_weights: bool = False,
                      weight_by_value_norm: bool = False, dropout_key=None):
        """Decoder output states ``[batch, tgt_len, d_model]`` (and document weights if asked).

        Args:
          decoder_input_ids: ``[batch, tgt_len]`` (the answer shifted right).
          memory: ``[batch, docs * doc_len, d_model]`` encoder output.
          memory_valid: ``[batch, docs * doc_len]`` boolean.
          doc_log_mask: ``[batch, docs]`` log mask or None (all documents fully visible).
          method: document-masked attention, ``"bias"`` (through the configured kernel) or
            ``"blockwise"`` (see ``attention``).
          return_doc_weights: also return the cross-attention mass per document,
            ``[layers, batch, heads, tgt_len, docs]``.
          weight_by_value_norm: those weights multiply each key's probability by the norm
            of its value vector (``attention.document_masked_attention``).
          dropout_key: T5's dropout with ``config.dropout_rate`` (a training step); None:
            none.
        """
        length = decoder_input_ids.shape[-1]
        causal = jnp.tril(jnp.ones((length, length), bool))
        position = self.decoder.position_bias(length, length)
        self_bias = position + jnp.where(causal, 0.0, mask_value(position.dtype))[None, None]
        options = {"method": method, "return_doc_weights": return_doc_weights}
        if weight_by_value_norm:
            options["weight_by_value_norm"] = True
        cross = (memory, doc_log_mask, memory_valid, options)
        return self.decoder(self.shared(decoder_input_ids), self_bias, cross,
                            collect_doc_weights=return_doc_weights, dropout_key=dropout_key)

    def decode(self, decoder_input_ids, memory, memory_valid, doc_log_mask=None, **options):
        """Decoder logits ``[batch, tgt_len, vocab]`` in float32; arguments as
        :meth:`decode_hidden` (without ``return_doc_weights``)."""
        hidden = self.decode_hidden(decoder_input_ids, memory, memory_valid, doc_log_mask,
                                    **options)
        return self.lm_logits(hidden)

    def init_decode_cache(self, memory, memory_valid, *, max_length: int,
                          num_beams: int = 1) -> DecodeCache:
        """The cache :meth:`decode_step` starts from: every decoder layer's memory keys and
        values (computed here, once per question) and empty self-attention buffers.

        Args:
          memory: ``[batch, docs * doc_len, d_model]`` encoder output.
          memory_valid: ``[batch, docs * doc_len]`` boolean.
          max_length: the number of decoding steps the buffers hold (static).
          num_beams: hypotheses per question (static); the buffers get ``batch * num_beams``
            rows.
        """
        if memory.ndim != 3 or memory_valid.shape != memory.shape[:2]:
            raise ValueError("memory must be [batch, keys, d_model] and memory_valid [batch, "
                             f"keys], got {memory.shape} and {memory_valid.shape}")
        if max_length < 1 or num_beams < 1:
            raise ValueError(f"max_length and num_beams must be >= 1, got {max_length} and "
                             f"{num_beams}")
        # Stored [batch, heads, d_kv, keys], the layout XLA's dot reads, behind a barrier:
        # otherwise XLA moves the transpose into the decoding loop and transposes the whole
        # memory again at every step (2.5x slower generation on CPU).
        cross = jax.lax.optimization_barrier([
            tuple(jnp.transpose(a, (0, 2, 3, 1))
                  for a in block.cross_attention.key_values(memory))
            for block in self.decoder.layers])
        shape = (memory.shape[0] * num_beams, max_length, self.config.num_heads,
                 self.config.d_kv)
        empty = tuple(jnp.zeros(shape, keys.dtype) for keys, _ in cross)
        return DecodeCache(empty, empty, tuple(keys for keys, _ in cross),
                           tuple(values for _, values in cross), memory_valid.astype(bool))

    def decode_step(self, token_ids, position, cache: DecodeCache, doc_log_mask=None, *,
                    method: DmaMethod = "bias"):
        """One incremental decoder step: the logits of the next token after ``token_ids``.

        Computes what :meth:`decode` computes at query ``position`` of a ``max_length``
        buffer: the same relative position bias row, future keys masked with the same value,
        the same document mask through the same attention function.

        Args:
          token_ids: ``[batch * beams]`` int, the token at ``position`` (the start token at 0).
          position: int (may be traced), ``0 <= position < cache.max_length``.
          cache: from :meth:`init_decode_cache` or the previous step.
          doc_log_mask: ``[batch, docs]`` log mask or None, shared by a question's beams.
          method: document-masked attention, ``"bias"`` or ``"blockwise"``.

        Returns:
          float32 logits ``[batch * beams, vocab]`` and the cache with this step's keys and
          values written at ``position``.
        """
        rows, max_length = cache.rows, cache.max_length
        if token_ids.shape != (rows,):
            raise ValueError(f"token_ids must be [batch * beams] = [{rows}], got "
                             f"{token_ids.shape}")
        bias = self.decoder.position_bias_row(position, max_length)
        future = jnp.arange(max_length) > position
        bias = bias + jnp.where(future, mask_value(bias.dtype), 0.0)[None, None, None]
        x = self.shared(token_ids[:, None])
        self_keys, self_values = [], []
        for layer, block in enumerate(self.decoder.layers):
            x, keys, values = block.step(
                x, bias, position, (cache.self_keys[layer], cache.self_values[layer]),
                (cache.cross_keys[layer], cache.cross_values[layer]), doc_log_mask,
                cache.memory_valid, method=method)
            self_keys.append(keys)
            self_values.append(values)
        logits = self.lm_logits(self.decoder.final_norm(x)[:, 0])
        return logits, cache.replace(self_keys=tuple(self_keys), self_values=tuple(self_values))

    def lm_logits(self, hidden):
        """``[..., d_model]`` decoder states -> ``[..., vocab]`` float32 logits."""
        if self.config.tie_word_embeddings:
            hidden = hidden * (self.config.d_model**-0.5)
            return upcast(self.shared.attend(hidden))
        return upcast(self.lm_head(hidden))

    def token_logit(self, hidden, token_id: int):
        """The logit of one vocabulary entry, ``[...]``, without the full-vocabulary product."""
        if self.config.tie_word_embeddings:
            row = self.shared.embedding[...][token_id] * (self.config.d_model**-0.5)
        else:
            row = self.lm_head.kernel[...][:, token_id]
        return jnp.einsum("...d,d->...", upcast(hidden), upcast(row))


def shift_right(ids, start_token_id: int):
    """Teacher forcing: ``[batch, len]`` targets -> decoder inputs starting with the start id."""
    start = jnp.full((*ids.shape[:-1], 1), start_token_id, ids.dtype)
    return jnp.concatenate([start, ids[..., :-1]], axis=-1)
