"""Gumbel noise, Gumbel-softmax and Gumbel-top-k: laws (statistical), masks, gradients."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special, stats

from gumbel_jax import ops

EULER_GAMMA = 0.5772156649015329


def _chi_square_pvalue(counts, probabilities):
    counts = np.asarray(counts, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    expected = probabilities / probabilities.sum() * counts.sum()
    return stats.chisquare(counts, expected).pvalue


@pytest.mark.statistical
@pytest.mark.parametrize("dtype,num_draws", [(jnp.float32, 10_000), (jnp.bfloat16, 2_000)])
def test_sample_gumbel_follows_gumbel_law(dtype, num_draws):
    """KS test against scipy's gumbel_r and the first two moments.

    Fixed seed, so deterministic; for a random seed the KS test fails with probability 0.1%
    (p < 0.001) and each moment check (5 standard errors) with probability < 1e-6.
    bfloat16 uses fewer draws because its rounding (relative 2^-8) is visible to KS at 10k.
    """
    draws = jax.jit(ops.sample_gumbel, static_argnums=(1, 2))(
        jax.random.key(0), (num_draws,), dtype)
    assert draws.dtype == dtype
    values = np.asarray(draws, np.float64)
    assert np.isfinite(values).all()
    assert stats.kstest(values, stats.gumbel_r.cdf).pvalue > 1e-3
    variance = math.pi**2 / 6
    assert abs(values.mean() - EULER_GAMMA) < 5 * math.sqrt(variance / num_draws)
    # Var of the sample variance of a Gumbel: (kurtosis + 2) var^2 / n, excess kurtosis 12/5.
    assert abs(values.var() - variance) < 5 * variance * math.sqrt((12 / 5 + 2) / num_draws)


def test_sample_gumbel_key_determinism_and_finiteness():
    key = jax.random.key(3)
    a = ops.sample_gumbel(key, (1000,))
    np.testing.assert_array_equal(a, ops.sample_gumbel(key, (1000,)))
    assert not np.array_equal(a, ops.sample_gumbel(jax.random.key(4), (1000,)))
    with pytest.raises(ValueError, match="floating"):
        ops.sample_gumbel(key, (3,), jnp.int32)


@pytest.mark.statistical
@pytest.mark.parametrize(
    "logits",
    [
        [0.0, 1.0, 2.0, -1.0],
        [103.0, 101.0, 100.0, 98.0, 105.0],  # unnormalised
        [2.0, 2.0, -12.0, 0.5],  # one tiny probability (about 1e-6)
    ],
)
def test_gumbel_max_is_categorical(logits):
    """argmax(logits + G), drawn by gumbel_topk(k=1) and hard gumbel_softmax, has law softmax.

    chi-square over cells with enough expected mass; false-failure rate 0.1% per check for a
    random seed (fixed seed here). Cells with expected count < 5 are checked to be rare.
    """
    logits = jnp.asarray(logits, jnp.float32)
    probabilities = special.softmax(np.asarray(logits, np.float64))
    num_draws = 20_000
    batch = jnp.broadcast_to(logits, (num_draws, logits.shape[0]))
    first = ops.gumbel_topk(jax.random.key(11), batch, 1)[:, 0]
    hard = ops.gumbel_softmax(jax.random.key(12), batch, hard=True).argmax(-1)
    big = probabilities * num_draws >= 5
    for draws in (first, hard):
        counts = np.bincount(np.asarray(draws), minlength=len(probabilities))
        merged_counts = np.append(counts[big], counts[~big].sum())
        merged_probs = np.append(probabilities[big], probabilities[~big].sum())
        if merged_probs[-1] == 0:
            merged_counts, merged_probs = merged_counts[:-1], merged_probs[:-1]
        assert _chi_square_pvalue(merged_counts, merged_probs) > 1e-3
        assert counts[~big].sum() <= 5


@pytest.mark.statistical
def test_gumbel_topk_pairs_follow_plackett_luce():
    """Ordered pairs (first, second) of gumbel_topk(k=2) follow Plackett–Luce.

    P(a, b) = p_a p_b / (1 - p_a). chi-square over the 12 ordered pairs of 4 candidates;
    false-failure rate 0.1% for a random seed (fixed seed here).
    """
    logits = jnp.array([1.0, 0.5, 0.0, -1.0])
    p = special.softmax(np.asarray(logits, np.float64))
    num_draws = 30_000
    draws = ops.gumbel_topk(jax.random.key(5), jnp.broadcast_to(logits, (num_draws, 4)), 2)
    draws = np.asarray(draws)
    pairs = list(itertools.permutations(range(4), 2))
    counts = [np.sum((draws[:, 0] == a) & (draws[:, 1] == b)) for a, b in pairs]
    expected = [p[a] * p[b] / (1 - p[a]) for a, b in pairs]
    assert _chi_square_pvalue(counts, expected) > 1e-3


def test_gumbel_topk_distinct_and_never_invalid_while_valid_remain():
    scores = jax.random.normal(jax.random.key(0), (500, 6))
    full = np.asarray(ops.gumbel_topk(jax.random.key(1), scores, 6))
    assert all(len(set(row)) == 6 for row in full)
    where = jnp.array([True, False, True, False, True, False])
    where = jnp.broadcast_to(where, scores.shape)
    three = np.asarray(ops.gumbel_topk(jax.random.key(2), scores, 3, where=where))
    assert set(three.ravel()) <= {0, 2, 4}
    five = np.asarray(ops.gumbel_topk(jax.random.key(3), scores, 5, where=where))
    assert all(set(row[:3]) == {0, 2, 4} and set(row[3:]) <= {1, 3, 5} for row in five)
    with pytest.raises(ValueError, match="exceeds"):
        ops.gumbel_topk(jax.random.key(0), scores, 7)


@pytest.mark.statistical
def test_gumbel_softmax_mean_of_hard_samples_is_softmax():
    """Monte-Carlo mean of straight-through one-hots equals softmax (R5).

    Each coordinate within 5 standard errors: false-failure rate < 1e-5 for a random seed.
    """
    logits = jnp.array([0.3, -1.0, 2.0, 0.0, 1.0])
    num_draws = 20_000
    one_hots = ops.gumbel_softmax(
        jax.random.key(7), jnp.broadcast_to(logits, (num_draws, 5)), tau=0.7, hard=True)
    p = np.asarray(jax.nn.softmax(logits))
    standard_error = np.sqrt(p * (1 - p) / num_draws)
    assert np.all(np.abs(np.asarray(one_hots.mean(0)) - p) < 5 * standard_error)


def test_gumbel_softmax_masks_and_straight_through_gradient():
    key = jax.random.key(0)
    logits = jnp.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    where = jnp.array([[True, True, False, True], [False, False, False, False]])
    soft = ops.gumbel_softmax(key, logits, tau=0.5, where=where)
    np.testing.assert_allclose(soft.sum(-1), [1.0, 0.0], atol=1e-6)
    assert soft[0, 2] == 0 and np.all(np.asarray(soft[1]) == 0)
    hard = ops.gumbel_softmax(key, logits, tau=0.5, hard=True, where=where)
    assert set(np.asarray(hard[0]).tolist()) == {0.0, 1.0} and hard[0, 2] == 0
    np.testing.assert_array_equal(hard[0], jax.nn.one_hot(jnp.argmax(soft[0]), 4))

    def weighted(logits, hard):
        y = ops.gumbel_softmax(key, logits, tau=0.5, hard=hard, where=where)
        return (y * jnp.arange(4.0)).sum()

    # Straight-through: the hard sample's gradient is the soft sample's gradient.
    np.testing.assert_allclose(jax.grad(weighted)(logits, True),
                               jax.grad(weighted)(logits, False), atol=1e-6)
    grads = jax.grad(weighted)(logits, True)
    assert grads[0, 2] == 0 and np.all(np.asarray(grads[1]) == 0)


def test_gumbel_softmax_gradients_float64(float64):
    key = jax.random.key(0)
    logits = jnp.array([[0.2, -0.3, 1.1, 0.4]], jnp.float64)
    where = jnp.array([[True, True, True, False]])
    check_grads(lambda x: ops.gumbel_softmax(key, x, tau=0.7, where=where), (logits,),
                order=1, modes=("fwd", "rev"))


def _np_gumbel_softmax(logits, noise, valid, tau):
    """float64 numpy transcription of the definition: softmax((logits + G) / tau) over a row's
    valid candidates, 0 elsewhere; the hard sample is the one-hot of argmax(logits + G)."""
    logits, noise = np.asarray(logits, np.float64), np.asarray(noise, np.float64)
    perturbed = np.where(valid, (logits + noise) / tau, -np.inf)
    soft, hard = np.zeros_like(perturbed), np.zeros_like(perturbed)
    for index in np.ndindex(perturbed.shape[:-1]):
        row = valid[index]
        if row.any():
            soft[index][row] = special.softmax(perturbed[index][row])
            hard[index][np.argmax(perturbed[index])] = 1.0
    return soft, hard


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gumbel_softmax_equals_its_definition_over_the_last_axis(dtype):
    """Three axes (candidates last, the middle axis shorter), a mask with a fully masked row,
    the default temperature (1) and another: values against the definition in float64 with the
    documented noise ``sample_gumbel(key, logits.shape)``, in the dtype of the logits."""
    key = jax.random.key(5)
    logits = jnp.asarray(jax.random.normal(jax.random.key(6), (2, 3, 5)) * 2.0, dtype)
    valid = np.ones((2, 3, 5), bool)
    valid[0, 1, [1, 3]] = False
    valid[1, 2] = False
    valid[1, 0, 4] = False
    noise = ops.sample_gumbel(key, (2, 3, 5))
    for tau, kwargs in ((1.0, {}), (0.3, {"tau": 0.3})):
        soft_expected, hard_expected = _np_gumbel_softmax(logits, noise, valid, tau)
        soft = ops.gumbel_softmax(key, logits, where=jnp.asarray(valid), **kwargs)
        hard = ops.gumbel_softmax(key, logits, hard=True, where=jnp.asarray(valid), **kwargs)
        assert soft.dtype == dtype and hard.dtype == dtype
        atol = 1e-5 if dtype == jnp.float32 else 1e-2  # bfloat16 rounds the output (2^-8)
        np.testing.assert_allclose(np.asarray(soft, np.float64), soft_expected, atol=atol)
        np.testing.assert_array_equal(np.asarray(hard, np.float64), hard_expected)


def test_gumbel_softmax_checks_its_arguments():
    """Errors name the argument: logits without a candidate axis, a ``where`` of another shape
    (even one that would broadcast), a temperature that is not > 0."""
    key = jax.random.key(0)
    logits = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="^logits must have at least one axis"):
        ops.gumbel_softmax(key, jnp.float32(1.0))
    shape_error = r"^where must have the shape of logits: expected \(2, 4\)"
    with pytest.raises(ValueError, match=shape_error):
        ops.gumbel_softmax(key, logits, where=jnp.array([True, True, False, True]))
    for tau in (0.0, -1.0, 0):
        with pytest.raises(ValueError, match="^tau must be > 0"):
            ops.gumbel_softmax(key, logits, tau=tau)


def test_gumbel_topk_checks_the_shape_of_where():
    """A ``where`` that would broadcast against the scores is an error, not a silent mask."""
    scores = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match=r"^where must have the shape of scores: expected"):
        ops.gumbel_topk(jax.random.key(0), scores, 2, where=jnp.array([True, True, False, True]))


def test_sample_gumbel_is_finite_where_the_uniform_draw_is_exactly_zero():
    """Key 4 and 2^22 draws: the float32 uniform bits of one draw are all zero (an exact 0 on
    [0, 1)); the open interval (tiny, 1) turns it into float32's tiny, whose Gumbel value is
    finite. A lower bound of 0 (or float64's tiny, 0 in float32) would give -inf there."""
    u = jax.random.uniform(jax.random.key(4), (2**22,), jnp.float32, minval=0.0, maxval=1.0)
    assert int((u == 0).sum()) == 1  # the draw this test is about
    noise = ops.sample_gumbel(jax.random.key(4), (2**22,))
    assert noise.dtype == jnp.float32 and bool(jnp.isfinite(noise).all())
    tiny = float(jnp.finfo(jnp.float32).tiny)
    assert float(noise.min()) == pytest.approx(-np.log(-np.log(tiny)), rel=1e-6)
