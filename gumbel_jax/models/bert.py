"""BERT and XLM-RoBERTa encoders and the cross-encoder reranker built on them.

The BGE reranker family is XLM-RoBERTa with a one-logit classification head; MiniLM
(all-MiniLM-L6-v2) is a small BERT. Names follow Hugging Face's so checkpoints map one to one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.attention import Implementation, dot_attention, padding_bias
from gumbel_jax.models.layers import LayerNorm, activation, dense, embedding, remat_call

Family = Literal["bert", "roberta"]


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    family: Family = "bert"  # "roberta": positions start after the padding id, no pooler
    dtype: Any = jnp.float32
    remat: bool = False
    # Kernel of every self-attention: None (einsum), "xla" or "cudnn" (as T5Config).
    attention_implementation: Implementation = None

    @classmethod
    def from_hf(cls, hf_config, **overrides) -> BertConfig:
        raw = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
        model_type = raw.get("model_type", "bert")
        family = "roberta" if model_type in ("roberta", "xlm-roberta", "camembert") else "bert"
        if model_type not in ("bert", "roberta", "xlm-roberta", "camembert"):
            raise ValueError(f"unsupported model_type {model_type!r} for a BERT-style encoder")
        fields = {f.name for f in dataclasses.fields(cls)} - {"family"}
        values = {k: raw[k] for k in fields if raw.get(k) is not None}
        return cls(**{**values, "family": family, **overrides})


class BertLayer(nnx.Module):
    """Post-norm transformer layer with biases (BERT's convention)."""

    def __init__(self, config: BertConfig, rngs: nnx.Rngs):
        hidden, dt = config.hidden_size, config.dtype
        self.heads = config.num_attention_heads
        self.implementation = config.attention_implementation
        into, out_of = ("embed", "heads"), ("heads", "embed")
        self.query = dense(hidden, hidden, rngs, use_bias=True, dtype=dt, axes=into)
        self.key = dense(hidden, hidden, rngs, use_bias=True, dtype=dt, axes=into)
        self.value = dense(hidden, hidden, rngs, use_bias=True, dtype=dt, axes=into)
        self.attention_output = dense(hidden, hidden, rngs, use_bias=True, dtype=dt,
                                      axes=out_of)
        self.attention_norm = LayerNorm(hidden, eps=config.layer_norm_eps, dtype=dt)
        self.intermediate = dense(hidden, config.intermediate_size, rngs, use_bias=True,
                                  dtype=dt, axes=("embed", "mlp"))
        self.output = dense(config.intermediate_size, hidden, rngs, use_bias=True, dtype=dt,
                            axes=("mlp", "embed"))
        self.output_norm = LayerNorm(hidden, eps=config.layer_norm_eps, dtype=dt)
        self.act = activation(config.hidden_act)

    def __call__(self, x, bias):
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, -1)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attended = dot_attention(q, k, v, bias, scale=q.shape[-1] ** -0.5,
                                 implementation=self.implementation)
        attended = attended.reshape(*attended.shape[:-2], -1)
        x = self.attention_norm(x + self.attention_output(attended))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


def _run_layer(layer, x, bias):
    return layer(x, bias)


class BertEncoder(nnx.Module):
    """Embeddings + transformer layers; ``[batch, len]`` -> ``[batch, len, hidden]``."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        embed = lambda n, axes=None: embedding(n, config.hidden_size, rngs, dtype=config.dtype,
                                               std=0.02, axes=axes)
        self.word_embeddings = embed(config.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(config.max_position_embeddings)
        self.token_type_embeddings = embed(config.type_vocab_size)
        self.embedding_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps,
                                        dtype=config.dtype)
        self.layers = nnx.List([BertLayer(config, rngs)
                                for _ in range(config.num_hidden_layers)])

    def position_ids(self, attention_mask):
        length = attention_mask.shape[-1]
        if self.config.family == "roberta":
            # RoBERTa counts positions from pad_token_id + 1 and gives padding pad_token_id.
            mask = attention_mask.astype(jnp.int32)
            return jnp.cumsum(mask, axis=-1) * mask + self.config.pad_token_id
        return jnp.broadcast_to(jnp.arange(length), attention_mask.shape)

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        attention_mask = attention_mask.astype(bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids)
             + self.position_embeddings(self.position_ids(attention_mask))
             + self.token_type_embeddings(token_type_ids))
        x = self.embedding_norm(x)
        bias = padding_bias(attention_mask)
        run = remat_call(_run_layer) if self.config.remat else _run_layer
        for layer in self.layers:
            x = run(layer, x, bias)
        return x


def mean_pooled_embedding(hidden, attention_mask, *, normalize: bool = True):
    """Sentence embedding as in sentence-transformers: mean over real tokens, L2-normalised."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    pooled = (hidden.astype(jnp.float32) * mask).sum(-2) / jnp.maximum(mask.sum(-2), 1e-9)
    if normalize:
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


class CrossEncoder(nnx.Module):
    """(question, passage) -> one relevance logit, over a BERT or XLM-RoBERTa encoder.

    The head follows Hugging Face's sequence classification with one label: BERT pools the
    first token through ``pooler`` (dense + tanh) then ``classifier``; RoBERTa applies
    ``head_dense`` + tanh to the first token, then ``head_out``.
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = BertEncoder(config, rngs=rngs)
        hidden = config.hidden_size
        self.head_dense = dense(hidden, hidden, rngs, use_bias=True, dtype=config.dtype)
        self.head_out = dense(hidden, 1, rngs, use_bias=True, dtype=config.dtype)

    @classmethod
    def random(cls, config: BertConfig, *, seed: int = 0) -> CrossEncoder:
        return cls(config, rngs=nnx.Rngs(seed))

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        """``[..., len]`` tokens -> ``[...]`` float32 scores."""
        leading, length = input_ids.shape[:-1], input_ids.shape[-1]
        flat = lambda t: None if t is None else t.reshape(-1, length)
        hidden = self.encoder(flat(input_ids), flat(attention_mask), flat(token_type_ids))
        pooled = jnp.tanh(self.head_dense(hidden[:, 0]))
        return self.head_out(pooled)[:, 0].astype(jnp.float32).reshape(leading)
