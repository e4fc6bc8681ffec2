"""RankT5: an encoder-decoder reranker scoring (query, document) by one decoder logit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.layers import remat_call
from gumbel_jax.models.t5 import T5Attention, T5Block, T5Config, T5EncoderDecoder
from gumbel_jax.ops import mask_value

# "<extra_id_10>" in the T5 vocabulary, the token whose first-step logit RankT5 was trained
# to use as the relevance score (Zhuang et al., 2023; checkpoint Soyoung97/RankT5-base).
RANKT5_SCORE_TOKEN_ID = 32089


class RankT5(nnx.Module):
    """Scores ``[..., len]`` tokenised (query, document) pairs -> ``[...]`` float32 scores."""

    def __init__(self, t5: T5EncoderDecoder, *, score_token_id: int = RANKT5_SCORE_TOKEN_ID,
                 fold_cross_attention: bool = True, right_padded: bool = True,
                 token_capacity: float = 0.0, capacity_checked: bool = False,
                 packing_groups: int = 1):
        if not 0 <= score_token_id < t5.config.vocab_size:
            raise ValueError(f"score_token_id {score_token_id} is outside the vocabulary "
                             f"(size {t5.config.vocab_size})")
        self.t5 = t5
        self.score_token_id = score_token_id
        # The decoder's one query read through folded projections (see
        # start_token_decoder); False runs the general decoder (the same function).
        self.fold_cross_attention = fold_cross_attention
        # Masks are prefixes (the pipeline pads on the right): the encoder's kernel gets the
        # row lengths, not a [rows, heads, len, len] bias and its gradient. A row whose mask
        # is not a prefix scores NaN (a loud failure, not a wrong score).
        self.right_padded = right_padded
        # The encoder's position-wise work on real tokens only (T5EncoderDecoder.encode):
        # the fraction of [rows, len] slots the packed tokens get; 0: off. Differentiated, it
        # keeps both of its paths' activations (the padded fallback's too), unless
        # capacity_checked: the caller checked on the host that each batch fits (training:
        # training.packing compiles one step per capacity and picks it per batch).
        self.token_capacity = token_capacity
        self.capacity_checked = capacity_checked
        # Each of this many consecutive blocks of rows packs on its own (one per device of a
        # mesh's batch axes: see TokenPacking).
        self.packing_groups = packing_groups

    @classmethod
    def random(cls, config: T5Config, *, seed: int = 0, **options) -> RankT5:
        return cls(T5EncoderDecoder(config, rngs=nnx.Rngs(seed)), **options)

    def __call__(self, input_ids, attention_mask):
        leading, length = input_ids.shape[:-1], input_ids.shape[-1]
        flat_ids = input_ids.reshape(-1, length)
        flat_mask = attention_mask.reshape(-1, length).astype(bool)
        memory = self.t5.encode(flat_ids, flat_mask, right_padded=self.right_padded,
                                token_capacity=self.token_capacity,
                                capacity_checked=self.capacity_checked,
                                packing_groups=self.packing_groups)
        start = jnp.full((flat_ids.shape[0], 1), self.t5.config.decoder_start_token_id,
                         jnp.int32)
        if self.fold_cross_attention:
            hidden = start_token_decoder(self.t5, memory, flat_mask)
        else:
            hidden = self.t5.decode_hidden(start, memory, flat_mask)[:, 0]
        scores = self.t5.token_logit(hidden, self.score_token_id)
        if self.right_padded:
            scores = jnp.where(is_prefix(flat_mask), scores, jnp.nan)
        return scores.reshape(leading)


def is_prefix(mask):
    """``[rows, len]`` boolean -> ``[rows]``: whether each row's True entries come first."""
    lengths = jnp.sum(mask, axis=-1, keepdims=True)
    return jnp.all(mask == (jnp.arange(mask.shape[-1]) < lengths), axis=-1)


def start_token_decoder(t5: T5EncoderDecoder, memory, memory_valid):
    """The decoder's output state at its first position (the start token), ``[rows,
    d_model]``: what ``t5.decode_hidden(start, memory, memory_valid)[:, 0]`` computes, with
    less work.

    With one query, self-attention has one key, so its softmax is exactly 1 and the block
    returns its value projection; and cross-attention can fold the key and value projections
    into the query side (:func:`folded_cross_attention`), so the memory's keys and values
    ``[rows, len, heads, d_kv]`` are never formed. RankT5 reads only this state.

    Args:
      t5: the reranker's encoder-decoder.
      memory: ``[rows, len, d_model]`` encoder output.
      memory_valid: ``[rows, len]`` boolean.
    """
    config = t5.config
    start = jnp.full((memory.shape[0], 1), config.decoder_start_token_id, jnp.int32)
    run = remat_call(_start_token_block) if config.remat else _start_token_block
    x = t5.shared(start)[:, 0]
    for block in t5.decoder.layers:
        x = run(block, x, memory, memory_valid)
    return t5.decoder.final_norm(x)


def _start_token_block(block: T5Block, x, memory, memory_valid):
    """One decoder block on the start token's state ``x [rows, d_model]``."""
    attention = block.self_attention
    x = x + attention.o(attention.v(block.self_attention_norm(x)))  # softmax over 1 key = 1
    x = x + folded_cross_attention(block.cross_attention, block.cross_attention_norm(x),
                                   memory, memory_valid)
    return x + block.mlp(block.mlp_norm(x))


def folded_cross_attention(attention: T5Attention, x, memory, memory_valid):
    r"""Cross-attention of one query per row, ``x [rows, d_model]``, to ``memory [rows, len,
    d_model]``, with the projections moved to the query side:

    .. math:: q_h^\top (W_k^h m_l) = (W_k^{h\top} q_h)^\top m_l, \qquad
              \sum_l p_{hl} W_v^h m_l = W_v^h \sum_l p_{hl} m_l.

    Exact algebra (only the rounding order differs): ``rows x heads x d_model`` numbers per
    layer instead of the keys and values of every memory token, whose projections cost
    ``4 len d_model heads d_kv`` FLOPs per row, the most of a one-query cross-attention.
    """
    rows, model_dim = memory.shape[0], memory.shape[-1]
    heads, head_dim = attention.heads, attention.head_dim
    key_kernel = attention.k.kernel[...].astype(x.dtype).reshape(model_dim, heads, head_dim)
    value_kernel = attention.v.kernel[...].astype(x.dtype).reshape(model_dim, heads, head_dim)
    query = attention.q(x).reshape(rows, heads, head_dim)
    folded_query = jnp.einsum("rhk,dhk->rhd", query, key_kernel)
    logits = jnp.einsum("rhd,rld->rhl", folded_query, memory,
                        preferred_element_type=jnp.float32)
    logits = jnp.where(memory_valid[:, None, :], logits, mask_value(jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1).astype(memory.dtype)
    context = jnp.einsum("rhl,rld->rhd", weights, memory)
    heads_out = jnp.einsum("rhd,dhk->rhk", context, value_kernel)
    return attention.o(heads_out.reshape(rows, heads * head_dim))
