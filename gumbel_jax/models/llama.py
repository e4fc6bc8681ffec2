"""Llama-2 in Flax NNX: RMSNorm, rotary positions, SwiGLU, grouped-query attention, untied
head; optionally a cross-attention after each self-attention (CEPE's decoder layers).

Parameter names follow Hugging Face's (``self_attn.q_proj``, ``mlp.gate_proj``, ...) so a
checkpoint maps one to one (``gumbel_jax.checkpoints.cepe``). Weights compute in the config's
dtype; norms, rotary angles and softmax in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.attention import (
    DmaMethod,
    Implementation,
    document_masked_attention,
    dot_attention,
)
from gumbel_jax.models.layers import RMSNorm, dense, embedding, remat_call, upcast
from gumbel_jax.ops import mask_value


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """The architecture of a Llama checkpoint (``config.json`` names), plus how we compute."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 0  # 0: as many as num_attention_heads (no grouping)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    dtype: Any = jnp.float32  # compute dtype; norms and softmax stay float32
    remat: bool = False  # rematerialise each layer in the backward pass
    attention_implementation: Implementation = None  # None (einsum), "xla" or "cudnn"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads {self.kv_heads}")

    @classmethod
    def from_hf(cls, hf_config, **overrides) -> LlamaConfig:
        """From a transformers ``LlamaConfig`` or the dict of a ``config.json`` (keys we do
        not model, such as ``is_decoder``, are ignored: causality is the caller's choice)."""
        raw = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        # What this module does not implement is refused, not silently computed otherwise.
        if raw.get("rope_scaling"):
            raise ValueError(f"rope_scaling {raw['rope_scaling']!r} is not supported")
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {raw['hidden_act']!r}: only SwiGLU (silu) is supported")
        if raw.get("attention_bias") or raw.get("mlp_bias"):
            raise ValueError("attention_bias / mlp_bias: Llama-2 has no biases; not supported")
        theta = raw.get("rope_theta") or (raw.get("rope_parameters") or {}).get("rope_theta")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: raw[k] for k in fields if raw.get(k) is not None}
        if theta:
            values["rope_theta"] = float(theta)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(values.get(name), list):  # some configs list several
                values[name] = values[name][0]
        return cls(**{**values, **overrides})


def rotate(x, positions, theta: float):
    """Rotary position embedding (Hugging Face's half-split layout).

    Args:
      x: ``[batch, len, heads, head_dim]``.
      positions: ``[batch, len]`` int positions.
      theta: the rotary base.

    Returns:
      ``x`` rotated, in its dtype (angles and products in float32).
    """
    half = x.shape[-1] // 2
    inverse = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions.astype(jnp.float32)[..., None] * inverse  # [batch, len, half]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = upcast(x)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos.astype(x32.dtype) + rotated * sin.astype(x32.dtype)).astype(x.dtype)


def repeat_heads(x, heads: int):
    """``[batch, len, kv_heads, dim]`` -> ``[batch, len, heads, dim]`` (grouped-query
    attention: each key/value head serves ``heads // kv_heads`` query heads)."""
    groups = heads // x.shape[2]
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def causal_bias(key_valid, query_len: int, dtype=jnp.float32):
    """``[batch, 1, query_len, keys]`` additive bias: query ``i`` (the last ``query_len``
    positions of the keys) sees valid keys up to its own position."""
    keys = key_valid.shape[-1]
    query_index = jnp.arange(keys - query_len, keys)[:, None]
    allowed = (jnp.arange(keys)[None, :] <= query_index)[None] & key_valid[:, None, :]
    return jnp.where(allowed, 0.0, mask_value(dtype)).astype(dtype)[:, None]


class LlamaAttention(nnx.Module):
    """Multi-head attention with grouped key/value heads; ``key_width`` differs from the
    model width in a cross-attention that reads another model's states."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, key_width: int | None = None):
        heads, kv_heads, head_dim = config.num_attention_heads, config.kv_heads, config.head_dim
        width, key_width = config.hidden_size, key_width or config.hidden_size
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.implementation = config.attention_implementation
        options = dict(dtype=config.dtype, std=0.02)
        self.q_proj = dense(width, heads * head_dim, rngs, axes=("embed", "heads"), **options)
        self.k_proj = dense(key_width, kv_heads * head_dim, rngs, axes=("embed", "heads"),
                            **options)
        self.v_proj = dense(key_width, kv_heads * head_dim, rngs, axes=("embed", "heads"),
                            **options)
        self.o_proj = dense(heads * head_dim, width, rngs, axes=("heads", "embed"), **options)

    @property
    def scale(self) -> float:
        return self.head_dim**-0.5

    def query(self, x):
        """``[batch, len, width]`` -> ``[batch, len, heads, head_dim]``."""
        return self.q_proj(x).reshape(*x.shape[:-1], self.heads, self.head_dim)

    def key_values(self, x):
        """``[batch, keys, key_width]`` -> keys and values ``[batch, keys, kv_heads,
        head_dim]``."""
        split = lambda y: y.reshape(*x.shape[:-1], self.kv_heads, self.head_dim)
        return split(self.k_proj(x)), split(self.v_proj(x))

    def output(self, out):
        """``[batch, len, heads, head_dim]`` -> ``[batch, len, width]``."""
        return self.o_proj(out.reshape(*out.shape[:-2], self.heads * self.head_dim))

    def attend(self, query, keys, values, bias):
        """Softmax attention of ``query`` to (grouped) ``keys``/``values`` with ``bias``."""
        out = dot_attention(query, repeat_heads(keys, self.heads),
                            repeat_heads(values, self.heads), bias, scale=self.scale,
                            implementation=self.implementation)
        return self.output(out)


class CrossAttention(LlamaAttention):
    """CEPE's cross-attention: its own RMSNorm on the query stream, q from the decoder, k/v
    from the encoder's width, no rotary positions, no gate; the per-document log mask enters
    through :func:`document_masked_attention` (``bias`` or ``blockwise``)."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, key_width: int):
        super().__init__(config, rngs, key_width=key_width)
        self.layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype)

    def __call__(self, x, keys, values, doc_log_mask, memory_valid, *, method: DmaMethod,
                 return_doc_weights: bool = False, weight_by_value_norm: bool = False):
        """``x [batch, queries, width]``; ``keys``/``values`` ``[batch, docs * doc_len,
        kv_heads, head_dim]`` (:meth:`key_values` of the memory); ``doc_log_mask [batch,
        docs]`` or None. Returns the update ``[batch, queries, width]`` and, if asked, the
        attention mass per document ``[batch, heads, queries, docs]`` (else None), or with
        ``weight_by_value_norm`` Atlas's value-norm-weighted sum (``attention``)."""
        query = self.query(self.layernorm(x))
        out = document_masked_attention(
            query, repeat_heads(keys, self.heads), repeat_heads(values, self.heads),
            doc_log_mask, memory_valid, method=method, implementation=self.implementation,
            scale=self.scale, return_doc_weights=return_doc_weights,
            weight_by_value_norm=weight_by_value_norm)
        out, weights = out if return_doc_weights else (out, None)
        return self.output(out), weights


class LlamaMLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs):
        width, inner = config.hidden_size, config.intermediate_size
        options = dict(dtype=config.dtype, std=0.02)
        self.gate_proj = dense(width, inner, rngs, axes=("embed", "mlp"), **options)
        self.up_proj = dense(width, inner, rngs, axes=("embed", "mlp"), **options)
        self.down_proj = dense(inner, width, rngs, axes=("mlp", "embed"), **options)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nnx.Module):
    """Pre-norm residual layer: self-attention, (cross-attention), SwiGLU."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, cross_width: int = 0):
        norm = lambda: RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype)
        self.theta = config.rope_theta
        self.input_layernorm = norm()
        self.self_attn = LlamaAttention(config, rngs)
        self.cross_attn = (CrossAttention(config, rngs, key_width=cross_width)
                           if cross_width else None)
        self.post_attention_layernorm = norm()
        self.mlp = LlamaMLP(config, rngs)

    def __call__(self, x, positions, self_bias, cross=None, past=None):
        """One layer.

        Args:
          x: ``[batch, len, width]``; positions: ``[batch, len]`` rotary positions.
          self_bias: ``[batch, 1, len, keys]`` (causal and padding, or padding only).
          cross: None, or ``(keys, values, doc_log_mask, memory_valid, options)`` for the
            cross-attention (ignored by a layer without one).
          past: None, or ``(keys, values, index)``: buffers ``[batch, keys, kv_heads,
            head_dim]`` into which this call's keys and values are written at ``index``
            before attending to the whole buffer (incremental decoding).

        Returns:
          ``(x, (keys, values), doc_weights)``: the new states, the self-attention keys and
          values (the updated buffers when ``past`` is given), and the cross-attention mass
          per document (None unless asked for in the options).
        """
        normed = self.input_layernorm(x)
        keys, values = self.self_attn.key_values(normed)
        keys = rotate(keys, positions, self.theta)
        if past is not None:
            past_keys, past_values, index = past
            keys = jax.lax.dynamic_update_slice_in_dim(past_keys, keys, index, axis=1)
            values = jax.lax.dynamic_update_slice_in_dim(past_values, values, index, axis=1)
        query = rotate(self.self_attn.query(normed), positions, self.theta)
        x = x + self.self_attn.attend(query, keys, values, self_bias)
        weights = None
        if self.cross_attn is not None and cross is not None:
            cross_keys, cross_values, doc_log_mask, memory_valid, options = cross
            # Rows of one question (its beams when decoding) are queries of one attention
            # call, so the memory is never copied per row.
            queries = x.reshape(cross_keys.shape[0], -1, x.shape[-1])
            update, weights = self.cross_attn(queries, cross_keys, cross_values, doc_log_mask,
                                              memory_valid, **options)
            x = x + update.reshape(x.shape)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, (keys, values), weights


class LlamaStack(nnx.Module):
    """Embeddings, layers, final norm: Llama's ``model`` (decoder, or CEPE's bidirectional
    context encoder; causality is the caller's bias). With ``cross_width``, the last
    ``num_cross_layers`` layers (default all) cross-attend to states of that width."""

    def __init__(self, config: LlamaConfig, rngs: nnx.Rngs, *, cross_width: int = 0,
                 num_cross_layers: int | None = None):
        self.config = config
        layers = config.num_hidden_layers
        crossed = layers if num_cross_layers is None else num_cross_layers
        if not 0 <= crossed <= layers:
            raise ValueError(f"num_cross_layers must be in [0, {layers}], got {crossed}")
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size, rngs,
                                      dtype=config.dtype, std=0.02, axes=("vocab", "embed"))
        self.layers = nnx.List([
            LlamaLayer(config, rngs, cross_width=cross_width if i >= layers - crossed else 0)
            for i in range(layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype)

    @property
    def cross_layers(self) -> tuple[int, ...]:
        """Indices of the layers with a cross-attention."""
        return tuple(i for i, layer in enumerate(self.layers) if layer.cross_attn is not None)

    def __call__(self, input_ids, positions, self_bias, cross_kv=None, doc_log_mask=None,
                 memory_valid=None, *, method: DmaMethod = "bias",
                 return_doc_weights: bool = False, weight_by_value_norm: bool = False,
                 return_key_values: bool = False):
        """Final-normed states ``[batch, len, width]``.

        Args:
          input_ids: ``[batch, len]``; positions: ``[batch, len]``; self_bias: ``[batch, 1,
            len, len]``.
          cross_kv: None (no cross-attention), or one ``(keys, values)`` per layer of
            :attr:`cross_layers`, each ``[batch, keys, kv_heads, head_dim]``.
          doc_log_mask: ``[batch, docs]`` or None; memory_valid: ``[batch, keys]`` boolean.
          method: document-masked attention, ``"bias"`` or ``"blockwise"``.
          return_doc_weights: also return the cross-attention mass per document, ``[cross
            layers, batch, heads, len, docs]``.
          weight_by_value_norm: those statistics weight each key by its value norm.
          return_key_values: also return each layer's self-attention keys and values.
        """
        options = {"method": method, "return_doc_weights": return_doc_weights,
                   "weight_by_value_norm": weight_by_value_norm}
        per_layer = dict(zip(self.cross_layers, cross_kv or (), strict=False))

        def run_layer(layer, x, positions, self_bias, kv, doc_log_mask, memory_valid):
            cross = None if kv is None else (*kv, doc_log_mask, memory_valid, options)
            return layer(x, positions, self_bias, cross)

        run = remat_call(run_layer) if self.config.remat else run_layer
        x, weights, key_values = self.embed_tokens(input_ids), [], []
        for index, layer in enumerate(self.layers):
            x, kv, doc_weights = run(layer, x, positions, self_bias, per_layer.get(index),
                                     doc_log_mask, memory_valid)
            key_values.append(kv)
            if doc_weights is not None:
                weights.append(doc_weights)
        out = (self.norm(x),)
        if return_doc_weights:
            out += (jnp.stack(weights),)
        if return_key_values:
            out += (tuple(key_values),)
        return out if len(out) > 1 else out[0]

    def step(self, token_ids, position, index, self_bias, buffers, cross_kv, doc_log_mask,
             memory_valid, *, method: DmaMethod):
        """One incremental step of ``rows`` new tokens against key/value buffers.

        Args:
          token_ids: ``[rows]``; position: ``[rows]`` their rotary positions.
          index: int (may be traced), where the new keys go in the buffers.
          self_bias: ``[rows, 1, 1, buffer_len]``.
          buffers: one ``(keys, values)`` per layer, ``[rows, buffer_len, kv_heads, dim]``.
          cross_kv: one ``(keys, values)`` per cross layer, ``[batch, keys, kv_heads, dim]``,
            shared by a question's ``rows // batch`` rows (its beams).
          doc_log_mask: ``[batch, docs]`` or None; memory_valid: ``[batch, keys]``.

        Returns:
          Final-normed states ``[rows, width]`` and the updated buffers.
        """
        x = self.embed_tokens(token_ids[:, None])
        per_layer = dict(zip(self.cross_layers, cross_kv, strict=True))
        options = {"method": method}
        updated = []
        for i, layer in enumerate(self.layers):
            cross = (*per_layer[i], doc_log_mask, memory_valid, options) if i in per_layer \
                else None
            x, kv, _ = layer(x, position[:, None], self_bias, cross, (*buffers[i], index))
            updated.append(kv)
        return self.norm(x)[:, 0], tuple(updated)


class LlamaForCausalLM(nnx.Module):
    """Llama with its language-model head (``model`` and ``lm_head``, as Hugging Face)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = LlamaStack(config, rngs)
        if not config.tie_word_embeddings:
            self.lm_head = dense(config.hidden_size, config.vocab_size, rngs, dtype=config.dtype,
                                 std=0.02, axes=("embed", "vocab"))

    def __call__(self, input_ids, attention_mask=None):
        """Causal logits ``[batch, len, vocab]`` float32 of right- or left-padded inputs
        (positions count valid tokens, as Hugging Face's with ``position_ids`` from the mask).
        """
        valid = (jnp.ones(input_ids.shape, bool) if attention_mask is None
                 else attention_mask.astype(bool))
        positions = valid_positions(valid)
        hidden = self.model(input_ids, positions, causal_bias(valid, input_ids.shape[-1]))
        return lm_logits(self, hidden)


def valid_positions(valid):
    """``[batch, len]`` boolean -> rotary positions: the count of valid tokens before each
    (so left padding does not shift a sequence's positions)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def lm_logits(owner, hidden):
    """float32 logits of ``hidden`` through ``owner``'s head (``lm_head``, or the tied
    embedding of ``owner.model``)."""
    if getattr(owner, "lm_head", None) is not None:
        return upcast(owner.lm_head(hidden))
    return upcast(owner.model.embed_tokens.attend(hidden))
