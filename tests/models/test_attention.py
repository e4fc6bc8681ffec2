"""Document-masked attention: every implementation gives the same values and mask gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from gumbel_jax.models.attention import (
    RightPaddedBias,
    document_masked_attention,
    dot_attention,
    padding_bias,
)

# The lowest finite values: float32 -(2 - 2^-23) 2^127, bfloat16 -(2 - 2^-7) 2^127.
LOWEST = [(jnp.float32, -(2 - 2**-23) * 2.0**127), (jnp.bfloat16, -(2 - 2**-7) * 2.0**127)]


def _problem(dtype=jnp.float32, batch=2, queries=3, docs=4, doc_len=5, heads=2, dim=8):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (batch, queries, heads, dim), dtype)
    k = jax.random.normal(keys[1], (batch, docs * doc_len, heads, dim), dtype)
    v = jax.random.normal(keys[2], (batch, docs * doc_len, heads, dim), dtype)
    valid = jnp.ones((batch, docs, doc_len), bool).at[:, :, -1].set(False)
    valid = valid.at[1, -1].set(False).reshape(batch, docs * doc_len)  # a padded document
    log_mask = jax.nn.log_sigmoid(jax.random.normal(keys[3], (batch, docs)) * 3)
    return q, k, v, log_mask, valid


VARIANTS = [("bias", None), ("bias", "xla"), ("blockwise", None)]


def _run(variant, q, k, v, log_mask, valid):
    method, implementation = variant

    def loss(log_mask):
        out = document_masked_attention(q, k, v, log_mask, valid, method=method,
                                        implementation=implementation, scale=0.35)
        return (out.astype(jnp.float32) ** 2).sum(), out

    (_, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(log_mask)
    return np.asarray(out, np.float32), np.asarray(grad, np.float32)


@pytest.mark.parametrize("variant", VARIANTS[1:], ids=["bias-xla", "blockwise"])
def test_variants_agree_with_the_einsum_bias_path(variant):
    problem = _problem()
    out_ref, grad_ref = _run(VARIANTS[0], *problem)
    out, grad = _run(variant, *problem)
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-5)
    assert np.all(grad[1, -1] == 0)  # the padded document


def test_doc_weights_are_the_attention_mass_per_document():
    q, k, v, log_mask, valid = _problem()
    _, weights = document_masked_attention(q, k, v, log_mask, valid, method="blockwise",
                                           scale=0.35, return_doc_weights=True)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.35
    bias = jnp.repeat(jnp.clip(log_mask, -1e30, 0), 5, axis=-1)[:, None, None]
    probs = jax.nn.softmax(jnp.where(valid[:, None, None], logits + bias, -1e30), axis=-1)
    expected = probs.reshape(*probs.shape[:-1], 4, 5).sum(-1)
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)



def test_blockwise_bfloat16_logits_accumulate_in_float32():
    """bfloat16 queries and keys with logits of order 10: the document weights (float32)
    equal a float64 softmax over all keys of the same bfloat16 inputs to 1e-4, which needs
    the logits accumulated and kept in float32 (rounded to bfloat16, a logit near 10 is off
    by up to 0.03, a probability by up to 3%)."""
    q, k, v, log_mask, valid = _problem(jnp.bfloat16)
    _, weights = document_masked_attention(q, k, v, log_mask, valid, method="blockwise",
                                           scale=4.0, return_doc_weights=True)
    assert weights.dtype == jnp.float32
    out = document_masked_attention(q, k, v, log_mask, valid, method="blockwise", scale=4.0)
    assert out.dtype == jnp.bfloat16  # the values' dtype, as the bias path returns
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    logits = np.einsum("bqhd,bkhd->bhqk", q64, k64) * 4.0
    assert np.abs(logits).max() > 10
    bias = np.repeat(np.asarray(log_mask, np.float64), 5, axis=-1)[:, None, None]
    keys_valid = np.asarray(valid)[:, None, None]
    probs = special.softmax(np.where(keys_valid, logits + bias, -np.inf), axis=-1)
    expected = probs.reshape(*probs.shape[:-1], 4, 5).sum(-1)
    np.testing.assert_allclose(weights, expected, atol=1e-4)


def _np_softmax_attention(q, k, v, bias, scale, keep=None, rate=0.0):
    """float64 numpy: softmax over keys of ``q . k * scale + bias`` (``bias`` broadcastable
    to [batch, heads, queries, keys]); ``keep`` [batch, heads, queries, keys] drops
    probabilities (inverted dropout). Returns the output and the probabilities (before
    dropout)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    probs = special.softmax(np.einsum("bqhd,bkhd->bhqk", q, k) * scale + bias, -1)
    kept = probs if keep is None else np.where(keep, probs / (1.0 - rate), 0.0)
    return np.einsum("bhqk,bkhd->bqhd", kept, v), probs


def _np_attention(q, k, v, log_mask, valid, scale, keep=None, rate=0.0):
    """float64 numpy: one softmax over all keys with each document's log mask (capped at 0)
    added to its keys' logits, padding keys left out. Returns the output and the attention
    mass per document (before dropout)."""
    docs = log_mask.shape[-1]
    doc_len = k.shape[1] // docs
    bias = np.repeat(np.minimum(np.asarray(log_mask, np.float64), 0.0), doc_len, axis=-1)
    bias = np.where(np.asarray(valid), bias, -np.inf)[:, None, None]
    out, probs = _np_softmax_attention(q, k, v, bias, scale, keep, rate)
    return out, probs.reshape(*probs.shape[:-1], docs, doc_len).sum(-1)


def test_blockwise_dropout_and_log_mask_cap_against_one_softmax():
    """Blockwise attention with dropout drops the probabilities of the documented mask (one
    Bernoulli(1 - rate) draw over [batch, heads, queries, keys] from the key), returns the
    document masses before dropout, and caps a positive log mask at 0 (subset_topk's masks
    can exceed 0): against float64 numpy."""
    q, k, v, log_mask, valid = _problem()
    log_mask = log_mask.at[0, 1].set(0.7).at[1, 2].set(1.5)
    dropout_key, rate = jax.random.key(9), 0.3
    out, weights = document_masked_attention(q, k, v, log_mask, valid, method="blockwise",
                                             scale=0.35, return_doc_weights=True,
                                             dropout_key=dropout_key, dropout_rate=rate)
    keep = np.asarray(jax.random.bernoulli(dropout_key, 1.0 - rate, (2, 2, 3, 20)))
    assert 0.5 < keep.mean() < 0.9
    expected_out, expected_mass = _np_attention(q, k, v, log_mask, valid, 0.35, keep, rate)
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights, expected_mass, rtol=1e-5, atol=1e-6)


def test_value_weighted_statistic_counts_padding_keys_as_zero():
    """A question whose keys are all padding (a batch's padding row) has a value-weighted
    statistic of 0 for every document: padding keys count 0."""
    q, k, v, log_mask, valid = _problem()
    valid = valid.at[0].set(False)
    _, statistic = document_masked_attention(q, k, v, log_mask, valid, method="blockwise",
                                             scale=0.35, return_doc_weights=True,
                                             weight_by_value_norm=True)
    assert np.all(np.asarray(statistic[0]) == 0)
    assert np.all(np.asarray(statistic[1]).sum(-1) > 0)

def test_bfloat16_is_finite_and_close_to_float32():
    problem32 = _problem(jnp.float32)
    problem16 = tuple(x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x
                      for x in problem32[:3]) + problem32[3:]
    for variant in VARIANTS:
        out, grad = _run(variant, *problem16)
        out_ref, grad_ref = _run(variant, *problem32)
        assert np.isfinite(out).all() and np.isfinite(grad).all()
        np.testing.assert_allclose(out, out_ref, atol=0.08)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_cudnn_bias_gradient_matches_xla_on_gpu(dtype):
    """cuDNN fused attention with a document bias: values and d(loss)/d(log mask) equal xla's
    (reported in the issue note with the card)."""
    problem = _problem(dtype, batch=2, queries=16, docs=4, doc_len=64, heads=4, dim=64)
    problem = problem[:3] + (problem[3].astype(dtype),) + problem[4:]
    out_xla, grad_xla = _run(("bias", "xla"), *problem)
    out_cudnn, grad_cudnn = _run(("bias", "cudnn"), *problem)
    np.testing.assert_allclose(out_cudnn, out_xla, atol=2e-2, rtol=2e-2)
    scale = np.abs(grad_xla).max()
    np.testing.assert_allclose(grad_cudnn / scale, grad_xla / scale, atol=2e-2)


def test_cudnn_is_used_only_where_its_fused_kernel_supports_the_shape():
    from gumbel_jax.models.attention import supported_kernel

    def kernel(queries, keys, dtype=jnp.bfloat16, dim=64, bias=True):
        q = jax.ShapeDtypeStruct((2, queries, 4, dim), dtype)
        k = jax.ShapeDtypeStruct((2, keys, 4, dim), dtype)
        return supported_kernel("cudnn", q, k, has_bias=bias)

    assert kernel(256, 256) == "cudnn"  # encoders
    assert kernel(32, 2560) == "cudnn"  # the reader's masked cross-attention
    assert kernel(1, 1) == "xla"  # RankT5's one-token decoder (cuDNN: odd lengths + bias)
    assert kernel(1, 256) == "xla"
    assert kernel(1, 1, bias=False) == "cudnn"
    assert kernel(256, 256, dtype=jnp.float32) == "xla"  # cuDNN's kernel is bf16/fp16 only
    assert kernel(256, 256, dim=12) == "xla"
    assert kernel(256, 256, dim=256) == "cudnn"  # Hopper's largest head dim
    assert kernel(256, 255) == "xla"  # an odd key length with a bias (4 heads: even)
    assert supported_kernel("xla", None, None, has_bias=True) == "xla"
    assert supported_kernel(None, None, None, has_bias=True) is None


@pytest.mark.parametrize(("dtype", "lowest"), LOWEST)
def test_padding_bias_is_zero_or_the_mask_value_in_the_dtype_asked(dtype, lowest):
    """[batch, keys] -> [batch, 1, 1, keys]: exactly 0 on real keys, half the dtype's lowest
    finite value on padding."""
    bias = padding_bias(jnp.array([[True, False, True], [False, False, True]]), dtype)
    assert bias.shape == (2, 1, 1, 3) and bias.dtype == dtype
    half_lowest = lowest / 2
    expected = np.array([[0.0, half_lowest, 0.0], [half_lowest, half_lowest, 0.0]])
    np.testing.assert_array_equal(np.asarray(bias, np.float64)[:, 0, 0], expected)


def test_dot_attention_default_scale_dropout_and_right_padded_rows():
    """``dot_attention`` against a float64 softmax: the default scale is 1; dropout (the
    documented Bernoulli(1 - rate) mask over [batch, heads, queries, keys]) keeps the bias and
    also applies when a fused kernel is asked for; a RightPaddedBias masks each row's keys
    past its length, with and without dropout; a key without a rate drops nothing."""
    keys = jax.random.split(jax.random.key(30), 4)
    q, k, v = (jax.random.normal(kk, (2, 5, 2, 4)) for kk in keys[:3])
    bias = jax.random.normal(keys[3], (1, 2, 5, 5))

    def reference(bias64, scale=1.0, keep=None, rate=0.0):
        return _np_softmax_attention(q, k, v, bias64, scale, keep, rate)[0]

    dense = np.asarray(bias, np.float64)
    np.testing.assert_allclose(dot_attention(q, k, v, bias), reference(dense), atol=1e-5)
    drop_key, rate = jax.random.key(31), 0.4
    keep = np.asarray(jax.random.bernoulli(drop_key, 1 - rate, (2, 2, 5, 5)))
    np.testing.assert_allclose(dot_attention(q, k, v, bias, dropout_key=drop_key),
                               reference(dense), atol=1e-5)
    for implementation in (None, "xla"):
        out = dot_attention(q, k, v, bias, implementation=implementation, dropout_key=drop_key,
                            dropout_rate=rate)
        np.testing.assert_allclose(out, reference(dense, keep=keep, rate=rate), atol=1e-5)
    lengths = jnp.array([5, 3])
    padded = dense + np.where(np.arange(5) < np.asarray(lengths)[:, None], 0.0,
                              -np.inf)[:, None, None, :]
    right = RightPaddedBias(bias, lengths)
    np.testing.assert_allclose(dot_attention(q, k, v, right, scale=0.5),
                               reference(padded, scale=0.5), atol=1e-5)
    np.testing.assert_allclose(
        dot_attention(q, k, v, right, scale=0.5, dropout_key=drop_key, dropout_rate=rate),
        reference(padded, scale=0.5, keep=keep, rate=rate), atol=1e-5)


def test_dot_attention_bfloat16_keeps_logits_in_float32_and_returns_bfloat16():
    """bfloat16 inputs on the einsum path: logits near 10 whose differences are of order 1,
    accumulated and kept in float32, give probabilities within bfloat16's rounding of a
    float64 softmax of the same inputs (logits rounded to bfloat16 move by up to 0.03, a
    probability of 0.2 by about 0.006). The values are one-hot rows, so the output is the
    attention probabilities themselves, in the values' dtype."""
    rng = np.random.default_rng(3)
    batch, queries, keys, heads = 2, 3, 8, 2
    # logit(q, k) = query . key: a shared component of 10 plus per-key offsets in [-1, 1].
    offsets = rng.uniform(-1.0, 1.0, (batch, keys, heads, 1))
    query = np.concatenate([np.full((batch, queries, heads, 1), 10.0),
                            rng.uniform(0.5, 1.0, (batch, queries, heads, 1))], axis=-1)
    key = np.concatenate([np.ones((batch, keys, heads, 1)), offsets], axis=-1)
    query, key = jnp.asarray(query, jnp.bfloat16), jnp.asarray(key, jnp.bfloat16)
    value = jnp.broadcast_to(jnp.eye(keys, dtype=jnp.bfloat16)[None, :, None, :],
                             (batch, keys, heads, keys))
    out = dot_attention(query, key, value)
    assert out.dtype == jnp.bfloat16
    logits = np.einsum("bqhd,bkhd->bhqk", np.asarray(query, np.float64),
                       np.asarray(key, np.float64))
    assert logits.min() > 8
    expected = special.softmax(logits, axis=-1).transpose(0, 2, 1, 3)  # [b, q, h, k]
    assert expected.max() > 0.15
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=1.5e-3)


def test_dot_attention_hands_each_kernel_the_bias_it_needs(monkeypatch):
    """Which kernel ``dot_attention`` calls, and with what: observed by recording the calls to
    ``jax.nn.dot_product_attention`` (computed with "xla", the CPU's kernel, so the values are
    checked too). cuDNN gets a materialised ``[batch, 1, queries, keys]`` bias in the query
    dtype, clipped so a float32 mask value stays finite; "xla" gets the float32 bias as given;
    None never calls the fused API; a shape cuDNN cannot run falls back to "xla"; right-padded
    rows give cuDNN the shared bias (clipped, query dtype) and the lengths."""
    calls = []
    real = jax.nn.dot_product_attention

    def recording(query, key, value, bias=None, **kwargs):
        calls.append(dict(kwargs, bias=bias))
        return real(query, key, value, bias=bias, **dict(kwargs, implementation="xla"))

    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    keys = jax.random.split(jax.random.key(40), 3)
    batch, queries, length, heads, dim = 2, 4, 6, 2, 8
    q = jax.random.normal(keys[0], (batch, queries, heads, dim), jnp.bfloat16)
    k, v = (jax.random.normal(kk, (batch, length, heads, dim), jnp.bfloat16) for kk in keys[1:])
    valid = np.ones((batch, length), bool)
    valid[1, 4:] = False
    bias = padding_bias(jnp.asarray(valid))  # float32, mask value -1.7e38: -inf in bfloat16
    expected = _np_softmax_attention(q, k, v, np.asarray(bias, np.float64), 0.5)[0]

    def check(out):
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=2e-2)

    check(dot_attention(q, k, v, bias, scale=0.5, implementation="cudnn"))
    call = calls.pop()
    assert call["implementation"] == "cudnn" and call["scale"] == 0.5
    assert call["bias"].shape == (batch, 1, queries, length)
    assert call["bias"].dtype == jnp.bfloat16
    cudnn_bias = np.asarray(call["bias"], np.float64)
    assert np.isfinite(cudnn_bias).all() and cudnn_bias[1, 0, :, 4:].max() < -1e38
    assert np.all(cudnn_bias[0] == 0) and np.all(cudnn_bias[1, 0, :, :4] == 0)

    # float16 cannot hold float32's mask value: unclipped, it would become -inf.
    dot_attention(q.astype(jnp.float16), k.astype(jnp.float16), v.astype(jnp.float16), bias,
                  scale=0.5, implementation="cudnn")
    call = calls.pop()
    assert call["bias"].dtype == jnp.float16
    assert np.isfinite(np.asarray(call["bias"], np.float64)).all()

    # A dropout rate without a key (evaluation of a model trained with dropout) keeps the
    # fused kernel.
    check(dot_attention(q, k, v, bias, scale=0.5, implementation="cudnn", dropout_rate=0.1))
    assert calls.pop()["implementation"] == "cudnn"
    # A bias per head ([1, heads, q, k], T5's position bias) is broadcast over the batch.
    per_head = jnp.zeros((1, heads, queries, length)).at[:, 1].set(0.5)
    dot_attention(q, k, v, per_head, implementation="cudnn")
    assert calls.pop()["bias"].shape == (batch, heads, queries, length)

    check(dot_attention(q, k, v, bias, scale=0.5, implementation="xla"))
    call = calls.pop()
    assert call["implementation"] == "xla" and call["bias"] is bias

    check(dot_attention(q, k, v, bias, scale=0.5))
    assert not calls  # the einsum path

    # The reader's masked cross-attention passes its kernel on (one document per key here).
    document_masked_attention(q, k, v, jnp.zeros((batch, 2)), jnp.asarray(valid),
                              implementation="xla")
    assert calls.pop()["implementation"] == "xla"

    one_query = q[:, :1]
    dot_attention(one_query, k, v, bias, implementation="cudnn")
    assert calls.pop()["implementation"] == "xla"  # cuDNN: an odd query length with a bias

    shared = jnp.full((1, heads, length, length), -3e38, jnp.float32).at[..., :3].set(0.5)
    right = RightPaddedBias(shared, jnp.array([6, 0]))
    dot_attention(q[:, :1].repeat(length, 1), k, v, right, implementation="cudnn")
    call = calls.pop()
    assert call["implementation"] == "cudnn" and call["bias"].dtype == jnp.bfloat16
    assert call["bias"].shape == (1, heads, length, length)
    half = [x.astype(jnp.float16) for x in (q[:, :1].repeat(length, 1), k, v)]
    dot_attention(*half, right, implementation="cudnn")
    assert np.isfinite(np.asarray(calls.pop()["bias"], np.float64)).all()
    assert np.isfinite(np.asarray(call["bias"], np.float64)).all()
    np.testing.assert_array_equal(call["query_seq_lengths"], [6, 1])  # 0 -> 1: see docstring
    np.testing.assert_array_equal(call["key_value_seq_lengths"], [6, 1])
    assert call["query_seq_lengths"].dtype == jnp.int32
    # cuDNN trains a bias only through even lengths: an odd one runs "xla".
    odd = RightPaddedBias(shared[..., :5, :5], jnp.array([5, 3]))
    dot_attention(q[:, :1].repeat(5, 1), k[:, :5], v[:, :5], odd, implementation="cudnn")
    assert calls.pop()["implementation"] == "xla"


def test_document_masked_attention_defaults_and_dense_right_padded_bias_dtype():
    """The defaults: the bias method, and a dropout key without a rate drops nothing.
    ``RightPaddedBias.dense`` returns the dtype asked for."""
    q, k, v, log_mask, valid = _problem()
    explicit = document_masked_attention(q, k, v, log_mask, valid, method="bias", scale=0.35)
    default = document_masked_attention(q, k, v, log_mask, valid, scale=0.35)
    keyed = document_masked_attention(q, k, v, log_mask, valid, scale=0.35,
                                      dropout_key=jax.random.key(3))
    np.testing.assert_array_equal(default, explicit)
    np.testing.assert_array_equal(keyed, explicit)
    # Dropout reaches the bias path's kernel: the same mask as the blockwise path draws.
    dropped = {method: document_masked_attention(
        q, k, v, log_mask, valid, method=method, scale=0.35, dropout_key=jax.random.key(4),
        dropout_rate=0.3) for method in ("bias", "blockwise")}
    np.testing.assert_allclose(dropped["bias"], dropped["blockwise"], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(dropped["bias"]) - np.asarray(explicit)).max() > 1e-2
    bias = RightPaddedBias(jnp.zeros((1, 2, 4, 4)), jnp.array([4, 2]))
    dense = bias.dense(jnp.bfloat16)
    assert dense.dtype == jnp.bfloat16 and dense.shape == (2, 2, 4, 4)
    assert float(dense[1, 0, 0, 3]) < -1e38 and float(dense[1, 0, 0, 1]) == 0.0
