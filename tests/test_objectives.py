"""G-Rerank loss: equals its definition, every relaxation trains, draws share the encoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gumbel_jax import ops
from gumbel_jax.models import FiDReader, T5Config
from gumbel_jax.objectives import document_log_mask, g_rerank_loss
from tests.models.conftest import TINY_T5


def setup_inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(2, 64, size=(2, 5, 6)), jnp.int32)
    mask = jnp.ones((2, 5, 6), bool).at[1, 4:].set(False)
    return ids, mask


@pytest.fixture(scope="module")
def setup():
    reader = FiDReader.random(TINY_T5, seed=3)
    ids, mask = setup_inputs()
    rng = np.random.default_rng(0)
    rng.integers(2, 64, size=(2, 5, 6))  # the draws of setup_inputs
    answers = jnp.asarray(rng.integers(2, 64, size=(2, 3)), jnp.int32)
    answer_mask = jnp.ones((2, 3), bool).at[0, 2].set(False)
    memory = reader.encode(ids, mask)
    return reader, memory, answers, answer_mask, mask.any(-1)


def _loss(setup, scores, key, **kwargs):
    reader, memory, answers, answer_mask, candidate_valid = setup
    return g_rerank_loss(key, scores, reader, memory, answers, answer_mask,
                         candidate_valid=candidate_valid, k=2, **kwargs)


def test_at_small_tau_the_loss_is_the_nll_of_reading_the_sampled_passages_only(setup):
    """An independent reference: as tau -> 0 the relaxed mask is the union of k hard
    Gumbel-max draws (noise ``sample_gumbel(key, (k, batch, docs))``, as documented), and the
    masked reader equals the reader given only those passages, re-encoded on their own."""
    reader, memory, answers, answer_mask, candidate_valid = setup
    ids, mask = setup_inputs()
    scores, key, kappa = jnp.array([[0.5, -1.0, 2.0, 0.0, 1.0], [0.3, 0.1, -0.4, 1.2, 9.0]]), \
        jax.random.key(4), 1.5
    noise = np.asarray(ops.sample_gumbel(key, (2, 2, 5)))
    perturbed = np.where(np.asarray(candidate_valid), kappa * np.asarray(scores) + noise, -np.inf)
    ordered = -np.sort(-perturbed, axis=-1)
    assert (ordered[..., 0] - ordered[..., 1] > 0.01).all()  # every draw is clearly hard
    expected = []
    for b in range(2):
        chosen = sorted(set(perturbed[:, b].argmax(-1).tolist()))
        loglik = reader.answer_log_likelihood(ids[b:b + 1, chosen], mask[b:b + 1, chosen],
                                              answers[b:b + 1], answer_mask[b:b + 1])
        expected.append(-float(loglik[0]) / int(answer_mask[b].sum()))
    loss = _loss(setup, scores, key, tau=1e-4, kappa=kappa)
    np.testing.assert_allclose(loss, np.mean(expected), rtol=1e-4)


@pytest.mark.parametrize("relaxation", ["l2x", "subset", "no_noise", "straight_through"])
def test_every_relaxation_gives_finite_reranker_gradients(setup, relaxation):
    scores = jax.random.normal(jax.random.key(5), (2, 5))
    grads = jax.jit(jax.grad(lambda s: _loss(setup, s, jax.random.key(6),
                                             relaxation=relaxation)))(scores)
    assert np.isfinite(np.asarray(grads)).all() and float(jnp.abs(grads).max()) > 0
    assert float(grads[1, 4]) == 0.0  # the padded candidate


def test_no_noise_is_deterministic_and_straight_through_is_hard(setup):
    scores = jax.random.normal(jax.random.key(7), (2, 5))
    valid = setup[-1]
    a = document_log_mask(jax.random.key(0), scores, 2, tau=0.5, kappa=1.0,
                          candidate_valid=valid, relaxation="no_noise")
    b = document_log_mask(jax.random.key(1), scores, 2, tau=0.5, kappa=1.0,
                          candidate_valid=valid, relaxation="no_noise")
    np.testing.assert_array_equal(a, b)
    hard = document_log_mask(jax.random.key(0), scores, 2, tau=0.5, kappa=1.0,
                             candidate_valid=valid, relaxation="straight_through")
    chosen = np.asarray(hard) > -1e-5
    assert (chosen.sum(-1) == 2).all()
    with pytest.raises(ValueError, match="unknown relaxation"):
        document_log_mask(jax.random.key(0), scores, 2, tau=0.5, kappa=1.0,
                          candidate_valid=valid, relaxation="gumbel")


def test_several_draws_average_single_draws(setup):
    scores, key = jax.random.normal(jax.random.key(8), (2, 5)), jax.random.key(9)
    many = _loss(setup, scores, key, num_samples=3)
    singles = [_loss(setup, scores, k) for k in jax.random.split(key, 3)]
    np.testing.assert_allclose(many, np.mean(singles), rtol=1e-5)


def test_remat_changes_nothing(setup):
    reader, memory, answers, answer_mask, candidate_valid = setup
    remat_reader = FiDReader.random(T5Config(**{**TINY_T5.__dict__, "remat": True}), seed=3)
    scores = jax.random.normal(jax.random.key(10), (2, 5))

    def loss(reader, scores):
        log_mask = ops.log_relaxed_topk(jax.random.key(1), scores, 2, where=candidate_valid)
        return -reader.token_log_probs(memory, answers, answer_mask, log_mask).sum()

    plain = jax.value_and_grad(lambda s: loss(reader, s))(scores)
    rematted = jax.value_and_grad(lambda s: loss(remat_reader, s))(scores)
    np.testing.assert_allclose(rematted[0], plain[0], rtol=1e-6)
    np.testing.assert_allclose(rematted[1], plain[1], rtol=1e-5, atol=1e-7)


def test_per_example_noise_does_not_depend_on_batch_composition(setup):
    from gumbel_jax.objectives import per_example_keys

    scores = jax.random.normal(jax.random.key(11), (2, 5))
    valid = setup[-1]
    step_key = jax.random.key(12)
    keys = per_example_keys(step_key, jnp.array([7, 3]))
    both = document_log_mask(keys, scores, 2, tau=0.5, kappa=1.0, candidate_valid=valid)
    swapped = document_log_mask(keys[::-1], scores[::-1], 2, tau=0.5, kappa=1.0,
                                candidate_valid=valid[::-1])
    np.testing.assert_array_equal(both, swapped[::-1])
    alone = document_log_mask(per_example_keys(step_key, jnp.array([3])), scores[1:], 2,
                              tau=0.5, kappa=1.0, candidate_valid=valid[1:])
    np.testing.assert_array_equal(both[1:], alone)
    loss = _loss(setup, scores, keys, num_samples=2)
    assert np.isfinite(float(loss))


def test_several_draws_per_question_with_per_example_keys(setup):
    """3 draws, batch 2: the key array is not square, so the draws and the questions cannot
    be confused (with 2 x 2 they could: the swap of the two axes went untested). The loss is
    the mean of per-question losses and does not depend on the order of the batch."""
    from gumbel_jax.models.reader import Memory
    from gumbel_jax.objectives import per_example_keys

    reader, memory, answers, answer_mask, candidate_valid = setup
    scores = jax.random.normal(jax.random.key(13), (2, 5))
    keys = per_example_keys(jax.random.key(14), jnp.array([7, 3]))
    loss = _loss(setup, scores, keys, num_samples=3)

    def question(b):
        one = Memory(memory.states[b:b + 1], memory.valid[b:b + 1], num_docs=memory.num_docs)
        return g_rerank_loss(keys[b:b + 1], scores[b:b + 1], reader, one, answers[b:b + 1],
                             answer_mask[b:b + 1], candidate_valid=candidate_valid[b:b + 1],
                             k=2, num_samples=3)

    per_question = [float(question(b)) for b in range(2)]
    np.testing.assert_allclose(loss, np.mean(per_question), rtol=1e-5)
    assert per_question[0] != per_question[1]
    reverse = lambda x: x[::-1]
    reversed_memory = Memory(reverse(memory.states), reverse(memory.valid), memory.num_docs)
    swapped = g_rerank_loss(reverse(keys), reverse(scores), reader, reversed_memory,
                            reverse(answers), reverse(answer_mask),
                            candidate_valid=reverse(candidate_valid), k=2, num_samples=3)
    np.testing.assert_allclose(swapped, loss, rtol=1e-5)
    # Each question's 3 draws are the single draws of its own key, split 3 ways.
    singles = [float(g_rerank_loss(draw[None], scores[:1], reader,
                                   Memory(memory.states[:1], memory.valid[:1], memory.num_docs),
                                   answers[:1], answer_mask[:1],
                                   candidate_valid=candidate_valid[:1], k=2))
               for draw in jax.random.split(keys[0], 3)]
    np.testing.assert_allclose(per_question[0], np.mean(singles), rtol=1e-5)


def test_straight_through_samples_only_real_candidates():
    """The hard top-k of the straight-through relaxation draws among valid candidates only:
    a padded candidate with the highest score never takes one of the k places."""
    valid = jnp.array([[True, True, False, True, False], [False, True, True, True, True]])
    scores = jnp.where(valid, jax.random.normal(jax.random.key(15), (2, 5)), 50.0)
    for seed in range(5):
        log_mask = document_log_mask(jax.random.key(seed), scores, 2, tau=0.5, kappa=1.0,
                                     candidate_valid=valid, relaxation="straight_through")
        chosen = np.asarray(log_mask) > -1e-5
        assert not (chosen & ~np.asarray(valid)).any()
        np.testing.assert_array_equal(chosen.sum(-1), [2, 2])


def test_library_defaults_are_the_configs():
    """Calling an objective without a setting uses the same value as a config without it
    (the paper's tau / kappa, Atlas's theta and target temperature)."""
    import inspect

    from gumbel_jax import objectives
    from gumbel_jax.training.config import ObjectiveConfig

    defaults = ObjectiveConfig()
    for function in (objectives.g_rerank_loss, objectives.emdr_loss, objectives.pdist_loss,
                     objectives.loop_loss, objectives.adist_loss,
                     objectives.document_log_mask):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.default is not inspect.Parameter.empty and hasattr(defaults, name):
                assert parameter.default == getattr(defaults, name), (function.__name__, name)


class _LogMaskReader:
    """A stand-in reader whose per-token log-probability is the sum of the log mask it is
    given (every answer token alike): the loss then reads the mask directly, no model."""

    def token_log_probs(self, memory, answer_ids, answer_mask, log_mask):
        return jnp.where(answer_mask, log_mask.sum(-1, keepdims=True), 0.0)


def test_g_rerank_without_tau_and_kappa_uses_the_papers_settings():
    """g_rerank_loss without ``tau`` / ``kappa`` is its definition at the paper's tau = 0.5,
    kappa = 1: minus the mean over questions of sum_i max_j log softmax((w + G_j) / 0.5)_i,
    float64 numpy on the documented noise ``sample_gumbel(key, (k, *scores.shape))``."""
    from scipy import special

    key, k = jax.random.key(8), 2
    scores = jnp.array([[0.9, -0.4, 0.3, 1.6], [0.2, 0.1, -1.2, 0.5]])
    answer_mask = jnp.array([[True, True, False], [True, True, True]])
    loss = g_rerank_loss(key, scores, _LogMaskReader(), None, jnp.zeros((2, 3), jnp.int32),
                         answer_mask, candidate_valid=jnp.ones((2, 4), bool), k=k)
    noise = np.asarray(ops.sample_gumbel(key, (k, 2, 4)), np.float64)
    log_mask = special.log_softmax((np.asarray(scores, np.float64) + noise) / 0.5, -1).max(0)
    np.testing.assert_allclose(loss, -log_mask.sum(-1).mean(), rtol=1e-5)


def test_raw_uint32_keys_one_for_the_batch_or_one_per_question():
    """Legacy ``jax.random.PRNGKey`` keys: a ``[2]`` key draws the batch's noise at once, a
    ``[batch, 2]`` array gives question b the noise of its own key; against float64 numpy on
    the documented noise ``sample_gumbel(key, (k, *scores.shape))``."""
    from scipy import special

    k, tau = 2, 0.5
    scores = jnp.array([[0.9, -0.4, 0.3, 1.6], [0.2, 0.1, -1.2, 0.5]])
    valid = jnp.ones((2, 4), bool)

    def definition(key, rows):
        noise = np.asarray(ops.sample_gumbel(key, (k, *rows.shape)), np.float64)
        return special.log_softmax((np.asarray(rows, np.float64) + noise) / tau, -1).max(0)

    one = jax.random.PRNGKey(6)
    np.testing.assert_allclose(
        document_log_mask(one, scores, k, tau=tau, kappa=1.0, candidate_valid=valid),
        definition(one, scores), rtol=1e-5, atol=1e-6)
    per_question = jax.random.split(jax.random.PRNGKey(7), 2)
    assert per_question.shape == (2, 2) and per_question.dtype == jnp.uint32
    mask = document_log_mask(per_question, scores, k, tau=tau, kappa=1.0, candidate_valid=valid)
    for b in range(2):
        np.testing.assert_allclose(mask[b], definition(per_question[b], scores[b]), rtol=1e-5,
                                   atol=1e-6)


def test_ablation_relaxations_use_the_tau_and_kappa_given():
    """``subset``, ``no_noise`` and ``straight_through`` at tau = 0.3, kappa = 1.7 against
    float64 numpy definitions on the documented noise: the subset mask's log, the masked
    log-softmax of kappa w / tau (padding at the finite mask value), and the straight-through
    gradient (the relaxed mask's, by central differences of its definition)."""
    from scipy import special

    from tests.ops.test_topk import _numpy_relaxed_topk, _numpy_subset_topk

    key, k, tau, kappa = jax.random.key(21), 2, 0.3, 1.7
    scores = jnp.array([[0.9, -0.4, 0.3, 1.6], [0.2, 0.1, -1.2, 0.5]])
    valid = jnp.array([[True, True, True, True], [True, True, False, True]])
    settings = dict(tau=tau, kappa=kappa, candidate_valid=valid)
    w, ok = np.asarray(scores, np.float64), np.asarray(valid)

    subset = document_log_mask(key, scores, k, relaxation="subset", **settings)
    expected = _numpy_subset_topk(w, ops.sample_gumbel(key, scores.shape), k, tau=tau,
                                  kappa=kappa, valid=ok)
    np.testing.assert_allclose(np.asarray(subset)[ok], np.log(expected[ok]), rtol=1e-5,
                               atol=1e-6)

    no_noise = np.asarray(document_log_mask(key, scores, k, relaxation="no_noise", **settings))
    for b in range(2):
        np.testing.assert_allclose(no_noise[b, ok[b]],
                                   special.log_softmax(kappa * w[b, ok[b]] / tau), rtol=1e-5)
    assert no_noise[1, 2] == -(2 - 2**-23) * 2.0**127 / 2  # float32's lowest / 2, not -inf

    weights = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    straight = lambda s: jnp.where(valid, document_log_mask(
        key, s, k, relaxation="straight_through", **settings), 0.0)
    hard = np.asarray(straight(scores)) == 0  # the sampled top-k: log 1 = 0
    grad = np.asarray(jax.grad(lambda s: (straight(s) * weights).sum())(scores))
    noise = ops.sample_gumbel(key, (k, *scores.shape))

    def relaxed_term(w):  # log of a selected entry's mask: its gradient is d soft / soft = d soft
        return (np.where(hard, np.asarray(weights), 0.0)
                * _numpy_relaxed_topk(w, noise, tau=tau, kappa=kappa, valid=ok)).sum()

    step, numeric = 1e-6, np.zeros_like(w)
    for index in np.ndindex(w.shape):
        shift = np.zeros_like(w)
        shift[index] = step
        numeric[index] = (relaxed_term(w + shift) - relaxed_term(w - shift)) / (2 * step)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)
