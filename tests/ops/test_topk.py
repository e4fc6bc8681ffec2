"""Relaxed top-k (L2X), its log twin, the subset relaxation and the hard top-k mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special

from gumbel_jax import ops

SCORES = jnp.array([[1.5, -0.3, 0.8, 0.0, 2.2, -1.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
WHERE = jnp.array([[True, True, True, True, True, False], [True, False, True, True, False, True]])


def test_relaxed_topk_shape_range_and_invalid_zero(strict_numerics):
    mask = jax.jit(ops.relaxed_topk, static_argnums=2)(jax.random.key(0), SCORES, 3,
                                                       where=WHERE)
    assert mask.shape == SCORES.shape and mask.dtype == SCORES.dtype
    valid = np.asarray(WHERE)
    values = np.asarray(mask)
    assert np.all(values[valid] > 0) and np.all(values[valid] <= 1)
    assert np.all(values[~valid] == 0)


def _numpy_relaxed_topk(scores, noise, *, tau, kappa, valid):
    """The paper's definition in float64 numpy: max over draws of softmax((kappa w + G)/tau)
    over the valid candidates; invalid candidates 0."""
    scores, noise, valid = (np.asarray(x, np.float64) for x in (scores, noise, valid))
    valid = valid.astype(bool)
    logits = np.where(valid, (kappa * scores + noise) / tau, -np.inf)
    draws = special.softmax(logits, axis=-1)  # [k, ..., n]
    return np.where(valid, draws.max(axis=0), 0.0)


def _numpy_subset_topk(scores, noise, k, *, tau, kappa, valid):
    """Xie & Ermon's k softmaxes, each suppressing what the previous one took (float64)."""
    scores, noise = np.asarray(scores, np.float64), np.asarray(noise, np.float64)
    valid = np.asarray(valid, bool)
    alpha, taken, total = kappa * scores + noise, np.zeros_like(scores), np.zeros_like(scores)
    for _ in range(k):
        alpha = alpha + np.log(np.maximum(1.0 - taken, 1e-20))
        taken = np.where(valid, special.softmax(np.where(valid, alpha / tau, -np.inf), -1), 0)
        total += taken
    return total


@pytest.mark.parametrize("tau,kappa", [(0.3, 2.0), (1.7, 0.6)])
def test_relaxed_topk_and_its_log_twin_equal_the_definition(tau, kappa):
    """Both against an independent float64 numpy computation on the documented noise
    (``sample_gumbel(key, (k, *scores.shape))``), not against each other."""
    key, k = jax.random.key(1), 3
    noise = ops.sample_gumbel(key, (k, *SCORES.shape))
    expected = _numpy_relaxed_topk(SCORES, noise, tau=tau, kappa=kappa, valid=WHERE)
    mask = ops.relaxed_topk(key, SCORES, k, tau=tau, kappa=kappa, where=WHERE)
    np.testing.assert_allclose(mask, expected, rtol=1e-5, atol=1e-7)
    log_mask = np.asarray(ops.log_relaxed_topk(key, SCORES, k, tau=tau, kappa=kappa,
                                               where=WHERE))
    valid = np.asarray(WHERE)
    np.testing.assert_allclose(log_mask[valid], np.log(expected[valid]), rtol=1e-5, atol=1e-6)
    assert np.all(log_mask[~valid] == ops.mask_value(jnp.float32))


@pytest.mark.parametrize("tau,kappa,k", [(0.7, 1.0, 3), (2.0, 0.5, 2)])
def test_subset_topk_equals_the_definition(tau, kappa, k):
    key = jax.random.key(13)
    noise = ops.sample_gumbel(key, SCORES.shape)
    expected = _numpy_subset_topk(SCORES, noise, k, tau=tau, kappa=kappa, valid=WHERE)
    mask = ops.subset_topk(key, SCORES, k, tau=tau, kappa=kappa, where=WHERE)
    np.testing.assert_allclose(mask, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_bfloat16_scores_are_scaled_in_float32(tau):
    """bfloat16 scores of order 10 with kappa = 1.3: kappa * w is computed in float32, so the
    relaxations equal their float64 definitions up to the bfloat16 rounding of the output
    (relative 2^-9; checked at 2^-8). Rounding kappa * w to bfloat16 first (an error of up to
    0.03 at 12) moves entries by up to 2%."""
    scores = jnp.array([[9.7, -3.3, 6.1, 0.4, 11.3, -1.0], [5.1, 7.3, -6.9, 3.3, 2.2, 8.9]],
                       jnp.bfloat16)
    key, k = jax.random.key(4), 3
    subset = ops.subset_topk(key, scores, k, tau=tau, kappa=1.3, where=WHERE)
    relaxed = ops.relaxed_topk(key, scores, k, tau=tau, kappa=1.3, where=WHERE)
    assert subset.dtype == relaxed.dtype == jnp.bfloat16
    expected = _numpy_subset_topk(scores, ops.sample_gumbel(key, scores.shape), k, tau=tau,
                                  kappa=1.3, valid=WHERE)
    np.testing.assert_allclose(np.asarray(subset, np.float64), expected, rtol=2**-8, atol=1e-6)
    expected = _numpy_relaxed_topk(scores, ops.sample_gumbel(key, (k, *scores.shape)), tau=tau,
                                   kappa=1.3, valid=WHERE)
    np.testing.assert_allclose(np.asarray(relaxed, np.float64), expected, rtol=2**-8, atol=1e-6)


def test_relaxations_without_settings_use_the_papers_tau_and_kappa():
    """Called without ``tau`` / ``kappa``, the three relaxations are their definitions at the
    paper's tau = 0.5 and kappa = 1 (float64 numpy on the documented noise)."""
    key, k = jax.random.key(2), 3
    noise = ops.sample_gumbel(key, (k, *SCORES.shape))
    expected = _numpy_relaxed_topk(SCORES, noise, tau=0.5, kappa=1.0, valid=WHERE)
    np.testing.assert_allclose(ops.relaxed_topk(key, SCORES, k, where=WHERE), expected,
                               rtol=1e-5, atol=1e-7)
    log_mask = np.asarray(ops.log_relaxed_topk(key, SCORES, k, where=WHERE))
    valid = np.asarray(WHERE)
    np.testing.assert_allclose(log_mask[valid], np.log(expected[valid]), rtol=1e-5, atol=1e-6)
    subset_noise = ops.sample_gumbel(key, SCORES.shape)
    subset = _numpy_subset_topk(SCORES, subset_noise, k, tau=0.5, kappa=1.0, valid=WHERE)
    np.testing.assert_allclose(ops.subset_topk(key, SCORES, k, where=WHERE), subset,
                               rtol=1e-5, atol=1e-6)


def test_relaxed_topk_is_permutation_equivariant_with_the_same_noise():
    noise = ops.sample_gumbel(jax.random.key(2), (3, *SCORES.shape))
    permutation = jnp.array([4, 0, 5, 2, 1, 3])
    compute = lambda s, g, w: ops.log_relaxed_topk_from_noise(s, g, tau=0.5, kappa=1.0, valid=w)
    original = compute(SCORES, noise, WHERE)
    permuted = compute(SCORES[:, permutation], noise[..., permutation], WHERE[:, permutation])
    np.testing.assert_allclose(permuted, original[:, permutation], rtol=1e-6)


def test_relaxed_topk_small_tau_is_the_union_of_hard_draws():
    """As tau -> 0 each draw is the one-hot of argmax(kappa*w + G_j): the mask is their union."""
    key = jax.random.key(3)
    scores = jax.random.normal(jax.random.key(4), (200, 8))
    noise = ops.sample_gumbel(key, (3, *scores.shape))  # the noise relaxed_topk documents
    perturbed = 2.0 * scores[None] + noise
    union = jax.nn.one_hot(jnp.argmax(perturbed, axis=-1), 8).max(axis=0)
    mask = ops.relaxed_topk(key, scores, 3, tau=1e-3, kappa=2.0)
    # A draw whose two best candidates are within 20 tau of each other is not yet hard.
    top_two = jax.lax.top_k(perturbed, 2)[0]
    clear = np.asarray((top_two[..., 0] - top_two[..., 1] > 0.02).all(axis=0))
    assert clear.mean() > 0.9
    np.testing.assert_allclose(np.asarray(mask)[clear], np.asarray(union)[clear], atol=1e-3)


@pytest.mark.statistical
def test_relaxed_topk_mean_is_the_law_of_k_draws_with_replacement():
    """E[mask_i] -> 1 - (1 - p_i)^k with p = softmax(kappa * w) as tau -> 0.

    20k draws; each coordinate within 5 standard errors (+ 2e-3 for the tau=1e-3 relaxation).
    False-failure rate < 1e-5 for a random seed (fixed seed here).
    """
    scores = jnp.array([1.0, 0.0, -0.5, 0.7, -2.0])
    kappa, k, num_draws = 1.5, 2, 20_000
    masks = ops.relaxed_topk(jax.random.key(5), jnp.broadcast_to(scores, (num_draws, 5)), k,
                             tau=1e-3, kappa=kappa)
    p = np.asarray(jax.nn.softmax(kappa * scores), np.float64)
    expected = 1 - (1 - p) ** k
    standard_error = np.sqrt(expected * (1 - expected) / num_draws)
    assert np.all(np.abs(np.asarray(masks.mean(0)) - expected) < 5 * standard_error + 2e-3)


def test_subset_topk_sums_to_k_and_is_nonnegative():
    mask = ops.subset_topk(jax.random.key(6), SCORES, 3, tau=0.7, where=WHERE)
    np.testing.assert_allclose(mask.sum(-1), [3.0, 3.0], rtol=1e-5)
    assert np.all(np.asarray(mask) >= 0)
    assert np.all(np.asarray(mask)[~np.asarray(WHERE)] == 0)


def test_subset_topk_can_exceed_one_and_the_bias_caps_it():
    """At moderate tau two steps can share a candidate: entries above 1 occur (documented)."""
    scores = jnp.broadcast_to(jnp.array([3.0, 0.0, 0.0, 0.0]), (500, 4))
    mask = ops.subset_topk(jax.random.key(7), scores, 2, tau=2.0)
    assert float(mask.max()) > 1.0
    bias = ops.document_bias(ops.mask_to_log_mask(mask), jnp.arange(4))
    assert float(bias.max()) == 0.0


def test_subset_topk_small_tau_is_the_hard_topk_of_the_same_perturbed_scores():
    key = jax.random.key(8)
    scores = jax.random.normal(jax.random.key(9), (100, 7))
    noise = ops.sample_gumbel(key, scores.shape)  # the noise subset_topk documents
    perturbed = 0.5 * scores + noise
    expected = ops.topk_mask(perturbed, 3)
    mask = ops.subset_topk(key, scores, 3, tau=1e-3, kappa=0.5)
    # Rows with two of their 4 best perturbed scores within 20 tau are not yet hard.
    ordered = np.asarray(jax.lax.top_k(perturbed, 4)[0])
    clear = (-np.diff(ordered, axis=-1) > 0.02).all(axis=-1)
    assert clear.mean() > 0.9
    np.testing.assert_allclose(np.asarray(mask)[clear], np.asarray(expected)[clear], atol=1e-3)


def test_topk_mask_ties_by_position_and_at_most_the_valid_count():
    scores = jnp.array([[0.5, 0.9, 0.9, 0.9, 0.1]])
    np.testing.assert_array_equal(ops.topk_mask(scores, 2), [[0, 1, 1, 0, 0]])
    where = jnp.array([[True, False, False, True, False]])
    np.testing.assert_array_equal(ops.topk_mask(scores, 3, where=where), [[1, 0, 0, 1, 0]])
    np.testing.assert_array_equal(ops.topk_mask(scores, 9), [[1, 1, 1, 1, 1]])
    assert np.all(np.asarray(jax.grad(lambda s: ops.topk_mask(s, 2).sum())(scores)) == 0)


def test_topk_mask_over_three_axes_is_per_row():
    """Candidates on the last axis whatever the leading axes (a 2-D test cannot tell axis -1
    from axis 1); a ``where`` of the wrong shape is refused."""
    scores = jax.random.normal(jax.random.key(21), (2, 3, 5))
    where = jax.random.bernoulli(jax.random.key(22), 0.7, (2, 3, 5))
    mask = np.asarray(ops.topk_mask(scores, 2, where=where))
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(mask[i, j],
                                          ops.topk_mask(scores[i, j], 2, where=where[i, j]))
    np.testing.assert_array_equal(mask.sum(-1), np.minimum(np.asarray(where).sum(-1), 2))
    with pytest.raises(ValueError, match="where must have the shape of scores"):
        ops.topk_mask(scores, 2, where=where[..., :4])
    rounded = scores.astype(jnp.bfloat16)
    half = ops.topk_mask(rounded, 2, where=where)
    assert half.dtype == jnp.bfloat16  # the dtype of the scores, as documented
    np.testing.assert_array_equal(np.asarray(half, np.float32),
                                  ops.topk_mask(rounded.astype(jnp.float32), 2, where=where))


@pytest.mark.parametrize("op", ["relaxed_topk", "log_relaxed_topk", "subset_topk"])
def test_gradients_match_finite_differences_float64(op, float64):
    key = jax.random.key(10)
    scores = jnp.asarray(SCORES, jnp.float64)
    fn = getattr(ops, op)
    check_grads(lambda s: fn(key, s, 2, tau=0.8, kappa=1.3, where=WHERE), (scores,), order=1,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("op", ["relaxed_topk", "log_relaxed_topk", "subset_topk"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extreme_inputs_stay_finite(op, dtype):
    """Scores of +-1e4, tau = 1e-3, a fully padded row and bfloat16 (reliability R7)."""
    scores = jnp.array([[1e4, -1e4, 0.0, 5.0], [1e4, 1e4, -1e4, 0.0], [1.0, 2.0, 3.0, 4.0]],
                       dtype)
    where = jnp.array([[True, True, True, False], [True, True, True, True], [False] * 4])
    fn = getattr(ops, op)
    key = jax.random.key(11)
    values = fn(key, scores, 2, tau=1e-3, where=where)
    assert values.dtype == dtype and np.isfinite(np.asarray(values, np.float32)).all()
    weights = jnp.arange(12.0).reshape(3, 4)

    def loss(s):
        out = fn(key, s, 2, tau=1e-3, where=where).astype(jnp.float32)
        out = jnp.where(where, out, 0.0)  # the log twin's padding value is not a loss term
        return (out * weights).sum()

    grads = np.asarray(jax.grad(loss)(scores), np.float32)
    assert np.isfinite(grads).all()
    assert np.all(grads[~np.asarray(where)] == 0)


@pytest.mark.parametrize("op", ["relaxed_topk", "log_relaxed_topk", "subset_topk"])
def test_vmap_over_keys_and_rows_equals_per_row_calls(op):
    fn = getattr(ops, op)
    keys = jax.random.split(jax.random.key(12), 2)
    batched = jax.vmap(lambda k, s, w: fn(k, s, 2, where=w))(keys, SCORES, WHERE)
    for row in range(2):
        np.testing.assert_allclose(batched[row], fn(keys[row], SCORES[row], 2, where=WHERE[row]),
                                   rtol=1e-6)


def test_argument_errors_are_clear():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="k must be a Python int"):
        ops.relaxed_topk(key, SCORES, 2.0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        ops.log_relaxed_topk(key, SCORES, 0)
    with pytest.raises(ValueError, match="tau must be > 0"):
        ops.subset_topk(key, SCORES, 2, tau=0.0)
    with pytest.raises(ValueError, match=r"where must have the shape of scores: expected \(2, 6\)"):
        ops.relaxed_topk(key, SCORES, 2, where=WHERE[:, :3])
    for op in (ops.log_relaxed_topk, ops.subset_topk):  # a where that would broadcast
        with pytest.raises(ValueError, match="where must have the shape of scores"):
            op(key, SCORES, 2, where=WHERE[0])
    for op in (ops.relaxed_topk, ops.log_relaxed_topk):
        with pytest.raises(ValueError, match="^tau must be > 0"):
            op(key, SCORES, 2, tau=-0.5)
    with pytest.raises(ValueError, match="at least one axis"):
        ops.topk_mask(jnp.float32(1.0), 1)
    with pytest.raises(ValueError, match="floating point"):
        ops.topk_mask(jnp.arange(3), 1)


def test_log_relaxed_topk_gradient_under_jit_equals_eager_at_small_tau():
    """Regression: the max over draws once went through jnp.max, whose gradient divides by
    the number of entries equal to the maximum; under jit XLA recomputed the draws with
    different rounding and that number became 0 (inf / NaN gradients at tau = 0.1, found by
    the paper grid's tau sweep). Deterministic: fixed keys."""
    from gumbel_jax.ops import log_relaxed_topk

    valid = jnp.array([[True, True, True, False], [True, True, True, True]])

    def total(scores, key, tau):
        return log_relaxed_topk(key, scores, 2, tau=tau, where=valid).clip(-1e4).sum()

    jitted = jax.jit(jax.grad(total), static_argnums=2)
    for seed in range(20):
        scores = 0.05 * jax.random.normal(jax.random.key(100 + seed), (2, 4)) - 0.2
        for tau in (0.1, 0.05):
            key = jax.random.key(seed)
            eager = jax.grad(total)(scores, key, tau)
            fast = jitted(scores, key, tau)
            assert bool(jnp.isfinite(fast).all()), (seed, tau)
            np.testing.assert_allclose(fast, eager, rtol=1e-4, atol=1e-4)
