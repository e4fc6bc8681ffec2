"""document_bias and mask_to_log_mask: gathering, capping, padding, and the filtering oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gumbel_jax import ops

# The lowest finite values: float32 -(2 - 2^-23) 2^127, bfloat16 -(2 - 2^-7) 2^127.
LOWEST = [(jnp.float32, -(2 - 2**-23) * 2.0**127), (jnp.bfloat16, -(2 - 2**-7) * 2.0**127)]


def _reference_bias(doc_log_mask, key_doc_ids, key_valid):
    """Per-key loop over the definition."""
    neg = ops.mask_value(jnp.float32)
    out = np.full(key_doc_ids.shape, neg, np.float32)
    for b in range(key_doc_ids.shape[0]):
        for t in range(key_doc_ids.shape[1]):
            doc = key_doc_ids[b, t]
            if key_valid[b, t] and 0 <= doc < doc_log_mask.shape[1]:
                out[b, t] = min(doc_log_mask[b, doc], 0.0)
    return out


def test_document_bias_matches_a_loop_over_keys(strict_numerics):
    rng = np.random.default_rng(0)
    doc_log_mask = rng.normal(size=(3, 4)).astype(np.float32)  # includes values > 0: capped
    key_doc_ids = rng.integers(-1, 5, size=(3, 11)).astype(np.int32)  # -1 and 4 out of range
    key_valid = rng.random((3, 11)) > 0.2
    bias = jax.jit(ops.document_bias)(doc_log_mask, key_doc_ids, key_valid)
    assert bias.shape == (3, 1, 1, 11) and bias.dtype == jnp.float32
    np.testing.assert_array_equal(bias[:, 0, 0], _reference_bias(doc_log_mask, key_doc_ids,
                                                                 key_valid))


def test_document_bias_shared_key_layout_and_dtype():
    doc_log_mask = jnp.zeros((2, 3), jnp.bfloat16).at[1, 2].set(-2.0)
    key_doc_ids = jnp.repeat(jnp.arange(3), 2)  # FiD layout: documents concatenated
    bias = ops.document_bias(doc_log_mask, key_doc_ids)
    assert bias.shape == (2, 1, 1, 6) and bias.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(bias[1, 0, 0], np.float32), [0, 0, 0, 0, -2, -2])


def test_document_bias_shape_errors():
    with pytest.raises(ValueError, match="key_doc_ids must be"):
        ops.document_bias(jnp.zeros((2, 3)), jnp.zeros((3, 5), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        ops.document_bias(jnp.zeros((2, 3)), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="key_valid"):
        ops.document_bias(jnp.zeros((2, 3)), jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 4), bool))


def _attention(query, key, value, bias=None):
    return jax.nn.dot_product_attention(query, key, value, bias=bias)


def test_hard_mask_bias_equals_attending_to_the_selected_documents_only():
    """The oracle of differentiable masked attention (reliability R8) at the attention level."""
    rng = jax.random.split(jax.random.key(0), 4)
    docs, tokens, heads, dim = 5, 3, 2, 8
    keys = jax.random.normal(rng[0], (1, docs * tokens, heads, dim))
    values = jax.random.normal(rng[1], (1, docs * tokens, heads, dim))
    queries = jax.random.normal(rng[2], (1, 4, heads, dim))
    hard = jnp.array([[1.0, 0.0, 1.0, 0.0, 1.0]])
    key_doc_ids = jnp.repeat(jnp.arange(docs), tokens)
    bias = ops.document_bias(ops.mask_to_log_mask(hard), key_doc_ids)
    masked = _attention(queries, keys, values, bias)
    selected = np.flatnonzero(np.repeat(np.asarray(hard[0]), tokens))
    filtered = _attention(queries, keys[:, selected], values[:, selected])
    np.testing.assert_allclose(masked, filtered, rtol=1e-5, atol=1e-6)
    # A masked document's keys and values can be anything: the output does not move.
    dropped = np.setdiff1d(np.arange(docs * tokens), selected)
    noisy_keys = keys.at[:, dropped].set(jax.random.normal(rng[3], (1, len(dropped), heads, dim)))
    np.testing.assert_array_equal(_attention(queries, noisy_keys, values * 1.0, bias), masked)
    # A zero log mask is the unmasked attention.
    zero_bias = ops.document_bias(jnp.zeros((1, docs)), key_doc_ids)
    np.testing.assert_allclose(_attention(queries, keys, values, zero_bias),
                               _attention(queries, keys, values), rtol=1e-6)


def test_mask_to_log_mask_and_bias_gradients_float64(float64):
    mask = jnp.array([[0.3, 0.0, 1.0, 0.7]], jnp.float64)
    log_mask = ops.mask_to_log_mask(mask)
    assert log_mask[0, 1] == ops.mask_value(jnp.float64)
    grads = jax.grad(lambda m: ops.mask_to_log_mask(m)[0, 0] + ops.mask_to_log_mask(m)[0, 1])(mask)
    np.testing.assert_allclose(grads, [[1 / 0.3, 0.0, 0.0, 0.0]])
    positive = jnp.array([[0.3, 0.5, 0.9]], jnp.float64)
    check_grads(ops.mask_to_log_mask, (positive,), order=1, modes=("fwd", "rev"))
    ids = jnp.array([0, 1, 1, 2, 2, 2])
    check_grads(lambda m: ops.document_bias(m, ids), (jnp.log(positive),), order=1,
                modes=("fwd", "rev"))


@pytest.mark.parametrize(("dtype", "lowest"), LOWEST)
def test_mask_to_log_mask_maps_zeros_to_the_finite_mask_value(dtype, lowest):
    """Zeros become half the dtype's lowest finite value, never -inf; positive entries their
    log, in the mask's dtype."""
    log_mask = ops.mask_to_log_mask(jnp.array([[1.0, 0.0, 0.5], [0.0, 0.0, 2.0]], dtype))
    assert log_mask.dtype == dtype
    values = np.asarray(log_mask, np.float64)
    half_lowest = lowest / 2
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(values[[0, 1, 1], [1, 0, 1]], half_lowest)
    np.testing.assert_allclose(values[[0, 0, 1], [0, 2, 2]], np.log([1.0, 0.5, 2.0]),
                               rtol=2**-8)


def test_document_bias_leading_dims_one_question_and_extreme_masks():
    """``[..., docs]`` masks: two leading dims (each question its own key layout), a single
    question without a batch dim, and masks of -inf (floored at the finite mask value) and
    above 0 (capped at 0); a non-float mask is refused."""
    rng = np.random.default_rng(5)
    doc_log_mask = rng.normal(size=(2, 3, 4)).astype(np.float32)
    doc_log_mask[0, 1, 2], doc_log_mask[1, 2, 0] = -np.inf, 0.7
    key_doc_ids = rng.integers(-1, 5, size=(2, 3, 9)).astype(np.int32)
    key_doc_ids[0, 1, :2], key_doc_ids[1, 2, :2] = 2, 0
    key_valid = rng.random((2, 3, 9)) > 0.2
    key_valid[0, 1, :2] = key_valid[1, 2, :2] = True
    bias = np.asarray(ops.document_bias(doc_log_mask, key_doc_ids, key_valid))
    assert bias.shape == (2, 3, 1, 1, 9)
    expected = _reference_bias(doc_log_mask.reshape(6, 4), key_doc_ids.reshape(6, 9),
                               key_valid.reshape(6, 9)).reshape(2, 3, 9)
    neg = float(ops.mask_value(jnp.float32))
    np.testing.assert_array_equal(bias[:, :, 0, 0], np.maximum(expected, neg))  # -inf floored
    assert np.all(bias[0, 1, 0, 0, :2] == neg) and np.all(bias[1, 2, 0, 0, :2] == 0.0)
    one = np.asarray(ops.document_bias(doc_log_mask[1, 1], key_doc_ids[1, 1]))
    assert one.shape == (1, 1, 9)
    np.testing.assert_array_equal(
        one[0, 0], _reference_bias(doc_log_mask[1, 1][None], key_doc_ids[1, 1][None],
                                   np.ones((1, 9), bool))[0])
    with pytest.raises(ValueError, match="doc_log_mask must be float"):
        ops.document_bias(jnp.zeros((2, 3), jnp.int32), jnp.zeros((5,), jnp.int32))
