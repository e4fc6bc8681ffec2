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
