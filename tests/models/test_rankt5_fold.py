"""RankT5's folded start-token decoder computes what the general decoder computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.models import RankT5, T5Config

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 64, size=(2, 3, 10)).astype(np.int32)
    lengths = np.array([[10, 4, 7], [1, 10, 0]])  # ragged, one fully padded candidate
    mask = np.arange(10)[None, None] < lengths[..., None]
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


def _scores_and_grads(ranker, ids, mask, fold):
    ranker.fold_cross_attention = fold
    graph, params = nnx.split(ranker)

    def total(params):
        scores = nnx.merge(graph, params)(ids, mask)
        return jnp.sum(jnp.where(mask.any(-1), scores, 0.0) * jnp.arange(1.0, 7.0).reshape(2, 3)
                       ), scores

    (_, scores), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    return scores, grads


@pytest.mark.parametrize("remat", [False, True])
def test_folded_decoder_equals_the_general_decoder_float32(remat):
    ranker = RankT5.random(T5Config(**TINY, remat=remat), seed=1, score_token_id=5)
    ids, mask = _inputs()
    with jax.default_matmul_precision("highest"):
        folded, folded_grads = _scores_and_grads(ranker, ids, mask, True)
        general, general_grads = _scores_and_grads(ranker, ids, mask, False)
    valid = np.asarray(mask.any(-1))
    np.testing.assert_allclose(np.asarray(folded)[valid], np.asarray(general)[valid],
                               rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(folded_grads), jax.tree.leaves(general_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # The cross-attention key/value kernels get a gradient through the fold.
    assert np.abs(np.asarray(
        folded_grads["t5"]["decoder"]["layers"][0]["cross_attention"]["k"]["kernel"][...])
    ).max() > 0


def test_folded_decoder_close_to_the_general_decoder_bfloat16():
    ranker = RankT5.random(T5Config(**TINY, dtype=jnp.bfloat16), seed=1, score_token_id=5)
    ids, mask = _inputs()
    valid = np.asarray(mask.any(-1))
    ranker.fold_cross_attention = True
    folded = np.asarray(ranker(ids, mask))[valid]
    ranker.fold_cross_attention = False
    general = np.asarray(ranker(ids, mask))[valid]
    np.testing.assert_allclose(folded, general, rtol=0.05, atol=0.05 * np.abs(general).max())


def test_right_padded_encoder_equals_the_materialised_bias():
    """Lengths instead of the [rows, heads, len, len] bias: the same scores and gradients
    for right-padded rows (a fully padded candidate is masked downstream, left out)."""
    ranker = RankT5.random(T5Config(**TINY), seed=2, score_token_id=5)
    ids, mask = _inputs()
    valid = np.asarray(mask.any(-1))
    with jax.default_matmul_precision("highest"):
        ranker.right_padded = True
        fast, fast_grads = _scores_and_grads(ranker, ids, mask, True)
        ranker.right_padded = False
        dense, dense_grads = _scores_and_grads(ranker, ids, mask, True)
    np.testing.assert_allclose(np.asarray(fast)[valid], np.asarray(dense)[valid], rtol=1e-5,
                               atol=1e-5)
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(dense_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("implementation", [None, "xla"])
def test_right_padded_bias_equals_the_dense_bias_in_attention(implementation):
    from gumbel_jax.models.attention import RightPaddedBias, dot_attention

    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 6, 2, 4)), jnp.float32) for _ in range(3))
    bias = RightPaddedBias(jnp.asarray(rng.normal(size=(1, 2, 6, 6)), jnp.float32),
                           jnp.asarray([6, 2, 4]))
    real = np.arange(6)[None] < np.asarray(bias.lengths)[:, None]
    out = dot_attention(q, k, v, bias, implementation=implementation)
    expected = dot_attention(q, k, v, bias.dense())
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(expected)[real], rtol=1e-5,
                               atol=1e-6)


def test_a_mask_that_is_not_a_prefix_scores_nan():
    """RankT5 assumes right padding; a row that breaks it fails loudly."""
    ranker = RankT5.random(T5Config(**TINY), seed=2, score_token_id=5)
    ids, mask = _inputs()
    mask = mask.at[0, 0, 0].set(False)  # a hole at the start of a full row
    scores = np.asarray(ranker(ids, mask))
    assert np.isnan(scores[0, 0]) and np.isfinite(scores[0, 1:]).all()
