"""Token packing in the T5 encoders: the real tokens' position-wise work only, the same
outputs and gradients at real tokens as the padded path (issue 17's packing lever)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.models import FiDReader, RankT5, T5Config
from gumbel_jax.models.t5 import packing_capacity, packing_fits, token_packing

TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20)
RANKER = dict(TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def test_pack_and_unpack_by_hand():
    """Rows [a b . .], [. . . .], [c d e .]: slots a b c d e, then empty slots read 0;
    unpacking puts each token back and zeros on padding."""
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], bool)
    packing = token_packing(mask, 7)
    np.testing.assert_array_equal(packing.take, [[0, 1, 8, 9, 10, 12, 12]])
    np.testing.assert_array_equal(packing.place, [[0, 1, 7, 7, 7, 7, 7, 7, 2, 3, 4, 7]])
    x = jnp.arange(1.0, 13.0).reshape(3, 4, 1) * jnp.array([1.0, -1.0])  # [3, 4, 2]
    packed = packing.pack(x)
    np.testing.assert_array_equal(packed[:, 0], [1, 2, 9, 10, 11, 0, 0])
    np.testing.assert_array_equal(packing.unpack(packed, 4), np.where(mask[..., None], x, 0))
    # The transposes (gradients) are scatter-adds: d(sum(pack(x) * w))/dx puts w back.
    weights = jnp.arange(1.0, 8.0)[:, None] * jnp.ones((1, 2))
    grad = jax.grad(lambda x: jnp.sum(packing.pack(x) * weights))(x)
    np.testing.assert_array_equal(grad[..., 0], [[1, 2, 0, 0], [0, 0, 0, 0], [3, 4, 5, 0]])


def test_two_groups_pack_each_block_of_rows_on_its_own():
    """Rows [a b . .], [. . . .] | [c d e .], [f . . .] in 2 groups of 4 slots: group 0
    holds a b and 2 empty slots, group 1 holds c d e f; indices count within the group."""
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
    packing = token_packing(mask, 4, groups=2)
    np.testing.assert_array_equal(packing.take, [[0, 1, 8, 8], [0, 1, 2, 4]])
    np.testing.assert_array_equal(packing.place, [[0, 1, 4, 4, 4, 4, 4, 4],
                                                  [0, 1, 2, 4, 3, 4, 4, 4]])
    x = jnp.arange(1.0, 17.0).reshape(4, 4, 1)
    np.testing.assert_array_equal(packing.pack(x)[:, 0], [1, 2, 0, 0, 9, 10, 11, 13])
    np.testing.assert_array_equal(packing.unpack(packing.pack(x), 4), np.where(mask[..., None],
                                                                              x, 0))
    assert bool(packing_fits(mask, 4, groups=2)) and not bool(packing_fits(mask, 3, groups=2))
    assert bool(packing_fits(mask, 6, groups=1)) and not bool(packing_fits(mask, 5, groups=1))
    assert packing_capacity(0.5, 4, 4, groups=2) == 4
    with pytest.raises(ValueError, match="3 rows do not split into 2 packing groups"):
        packing_capacity(0.5, 3, 4, groups=2)


def test_capacity_rounds_up_and_turns_off_where_it_saves_nothing():
    assert packing_capacity(0.75, 3, 4) == 9
    assert packing_capacity(0.7, 3, 4) == 9  # ceil(8.4)
    assert packing_capacity(0.0, 3, 4) is None
    assert packing_capacity(1.0, 3, 4) is None
    with pytest.raises(ValueError, match="token_capacity=1.5 must be in"):
        packing_capacity(1.5, 3, 4)


def _inputs(lengths):
    rng = np.random.default_rng(0)
    lengths = np.asarray(lengths)
    ids = rng.integers(2, 64, size=(*lengths.shape, 10)).astype(np.int32)
    mask = np.arange(10)[None, None] < lengths[..., None]
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


def _ranker_scores_and_grads(ranker, ids, mask, capacity):
    ranker.token_capacity = capacity
    graph, params = nnx.split(ranker)
    weights = jnp.arange(1.0, 1.0 + mask.shape[0] * mask.shape[1]).reshape(mask.shape[:2])

    def total(params):
        scores = nnx.merge(graph, params)(ids, mask)
        return jnp.sum(jnp.where(mask.any(-1), scores, 0.0) * weights), scores

    (_, scores), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    return np.asarray(scores), grads


# 2 x 3 candidates x 10 slots = 60; the first batch has 32 real tokens (fits 0.6 = 36
# slots), the second 53 (does not: the padded path runs).
FITS, OVERFLOWS = [[10, 4, 7], [1, 10, 0]], [[10, 9, 7], [10, 10, 7]]


@pytest.mark.parametrize(("lengths", "right_padded", "remat"), [
    (FITS, True, False), (FITS, False, True), (OVERFLOWS, True, True)],
    ids=["fits", "fits-dense-bias-remat", "overflows-remat"])
def test_rankt5_with_packed_encoder_equals_padded_float32(lengths, right_padded, remat):
    ranker = RankT5.random(T5Config(**RANKER, remat=remat), seed=1, score_token_id=5)
    ranker.right_padded = right_padded
    ids, mask = _inputs(lengths)
    valid = np.asarray(mask.any(-1))
    with jax.default_matmul_precision("highest"):
        packed, packed_grads = _ranker_scores_and_grads(ranker, ids, mask, 0.6)
        padded, padded_grads = _ranker_scores_and_grads(ranker, ids, mask, 0.0)
    np.testing.assert_allclose(packed[valid], padded[valid], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(packed_grads), jax.tree.leaves(padded_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    ffn = packed_grads["t5"]["encoder"]["layers"][1]["mlp"]["wi_0"]["kernel"][...]
    assert np.abs(np.asarray(ffn)).max() > 0  # the packed feed-forward is trained


def test_rankt5_with_a_checked_capacity_equals_padded_and_fails_loudly_when_it_overflows():
    """capacity_checked (training.packing: the host checked the batch fits) compiles only
    the packed path: the same scores and gradients as padded where the batch fits, NaN scores
    where it does not (never silently dropped tokens)."""
    ranker = RankT5.random(T5Config(**RANKER), seed=1, score_token_id=5)
    ids, mask = _inputs(FITS)
    valid = np.asarray(mask.any(-1))
    with jax.default_matmul_precision("highest"):
        padded, padded_grads = _ranker_scores_and_grads(ranker, ids, mask, 0.0)
        ranker.capacity_checked = True
        packed, packed_grads = _ranker_scores_and_grads(ranker, ids, mask, 0.6)
        overflow, _ = _ranker_scores_and_grads(ranker, *_inputs(OVERFLOWS), 0.6)
    np.testing.assert_allclose(packed[valid], padded[valid], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(packed_grads), jax.tree.leaves(padded_grads), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert np.all(np.isnan(overflow))


@pytest.mark.parametrize("implementation", [None, "xla"])
def test_fid_encoder_packed_equals_padded_at_real_tokens_and_zero_at_padding(implementation):
    reader = FiDReader.random(T5Config(**TINY, attention_implementation=implementation),
                              seed=3)
    ids, mask = _inputs(FITS)
    encode = nnx.jit(lambda r, i, m: r.encode(i, m))
    with jax.default_matmul_precision("highest"):
        padded = encode(reader, ids, mask)
        reader.token_capacity = 0.6
        packed = encode(reader, ids, mask)
    valid = np.asarray(padded.valid)
    np.testing.assert_array_equal(valid, np.asarray(packed.valid))
    np.testing.assert_allclose(np.asarray(packed.states)[valid],
                               np.asarray(padded.states)[valid], rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(packed.states)[~valid] == 0)
    assert np.abs(np.asarray(padded.states)[~valid]).max() > 0  # the padded path's garbage


def test_factory_sets_the_capacity_and_rejects_a_bad_one():
    from gumbel_jax.training.config import ModelConfig
    from gumbel_jax.training.factory import build_models

    reader, ranker = build_models(ModelConfig(token_capacity=0.8, score_token_id=3),
                                  vocab_size=64)
    assert reader.token_capacity == 0.8
    assert ranker.token_capacity == 0.0  # trained: packing there would cost memory
    with pytest.raises(ValueError, match=r"model.token_capacity=-0.1 must be in \[0, 1\]"):
        build_models(ModelConfig(token_capacity=-0.1, score_token_id=3), vocab_size=64)
    with pytest.raises(ValueError, match="packs a FiD reader's encoder; model.reader_kind="):
        build_models(ModelConfig(token_capacity=0.8, reader_kind="cepe", score_token_id=3),
                     vocab_size=64)
