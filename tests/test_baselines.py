"""Baselines against direct numpy computations of their definitions on a tiny reader, and
the direction of their gradients on hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from gumbel_jax import objectives
from gumbel_jax.models import FiDReader
from tests.models.conftest import TINY_T5


@pytest.fixture(scope="module")
def case():
    reader = FiDReader.random(TINY_T5, seed=5)
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(2, 64, size=(2, 4, 6)), jnp.int32)
    mask = jnp.ones((2, 4, 6), bool).at[1, 3].set(False)
    answers = jnp.asarray(rng.integers(2, 64, size=(2, 3)), jnp.int32)
    answer_mask = jnp.ones((2, 3), bool).at[1, 2].set(False)
    memory = reader.encode(ids, mask)
    scores = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    return reader, ids, mask, answers, answer_mask, memory, scores, mask.any(-1)


def _alone(reader, ids, mask, answers, answer_mask):
    """Reference: the reader on each passage alone, through the public API."""
    out = np.zeros((2, 4, 3))
    for b in range(2):
        for i in range(4):
            memory = reader.encode(ids[b:b + 1, i:i + 1], mask[b:b + 1, i:i + 1])
            out[b, i] = reader.token_log_probs(memory, answers[b:b + 1],
                                               answer_mask[b:b + 1])[0]
    return out


def _np_kl(target_logits, scores, valid, theta):
    total = 0.0
    for b in range(len(scores)):
        v = valid[b]
        target = special.softmax(target_logits[b][v])
        predicted = special.log_softmax(scores[b][v] / theta)
        total += (target * (np.log(target) - predicted)).sum()
    return total / len(scores)


def test_per_document_log_probs_and_emdr_pdist_match_numpy(case):
    reader, ids, mask, answers, answer_mask, memory, scores, doc_valid = case
    per_doc = objectives.per_document_token_log_probs(reader, memory, answers, answer_mask)
    reference = _alone(reader, ids, mask, answers, answer_mask)
    real = np.asarray(doc_valid)
    np.testing.assert_allclose(np.asarray(per_doc)[real], reference[real], rtol=1e-5,
                               atol=1e-5)
    theta = 0.5
    s, am = np.asarray(scores, np.float64), np.asarray(answer_mask)
    expected = 0.0
    for b in range(2):
        prior = special.log_softmax(s[b][real[b]] / theta)
        per_token = special.logsumexp(prior[:, None] + reference[b][real[b]], axis=0)
        expected -= per_token[am[b]].sum() / am[b].sum()
    emdr = objectives.emdr_loss(scores, per_doc, answer_mask, doc_valid, theta=theta,
                                reduction="per_question")
    np.testing.assert_allclose(emdr, expected / 2, rtol=1e-5)
    mean_log_prob = (reference * am[:, None]).sum(-1) / am.sum(-1)[:, None]
    pdist = objectives.pdist_loss(scores, per_doc, answer_mask, doc_valid, theta=theta,
                                  temperature_gold=0.1, reduction="per_question")
    np.testing.assert_allclose(pdist, _np_kl(mean_log_prob / 0.1, s, real, theta), rtol=1e-4)


def test_loop_and_adist_match_numpy(case):
    reader, ids, mask, answers, answer_mask, memory, scores, doc_valid = case
    losses = objectives.leave_one_out_losses(reader, memory, answers, answer_mask,
                                             doc_valid)
    for b in range(2):
        for i in np.flatnonzero(np.asarray(doc_valid[b])):
            keep = [j for j in range(4) if j != i and bool(doc_valid[b, j])]
            loglik = reader.answer_log_likelihood(ids[b:b + 1, keep], mask[b:b + 1, keep],
                                                  answers[b:b + 1], answer_mask[b:b + 1])
            expected = -float(loglik[0]) / float(answer_mask[b].sum())
            np.testing.assert_allclose(losses[b, i], expected, rtol=1e-5)
    s, real = np.asarray(scores, np.float64), np.asarray(doc_valid)
    loop = objectives.loop_loss(scores, losses, doc_valid, theta=0.5, temperature_gold=0.2,
                                reduction="per_question")
    np.testing.assert_allclose(loop, _np_kl(np.asarray(losses) / 0.2, s, real, 0.5), rtol=1e-4)
    mass = np.asarray(reader.document_attention(memory, answers, answer_mask), np.float64)
    np.testing.assert_allclose(mass.sum(-1), 1.0, rtol=1e-5)
    assert (mass[~real] < 1e-20).all()  # a padded passage draws no attention
    adist = objectives.adist_loss(scores, jnp.asarray(mass, jnp.float32), doc_valid, theta=0.5,
                                  adist_signal="attention_mass", reduction="per_question")
    # ADist's definition: the target is the attention mass itself, renormalised over the
    # real passages: KL(mass || softmax(scores / theta)), mean over questions.
    expected = 0.0
    for b in range(2):
        target = mass[b][real[b]] / mass[b][real[b]].sum()
        predicted = special.log_softmax(s[b][real[b]] / 0.5)
        expected += (target * (np.log(target) - predicted)).sum() / 2
    np.testing.assert_allclose(adist, expected, rtol=1e-4)


def test_gradient_directions_on_hand_made_cases():
    valid = jnp.ones((1, 3), bool)
    scores = jnp.zeros((1, 3))
    answer_mask = jnp.ones((1, 2), bool)
    # Passage 2 gives the answer the highest likelihood: PDist and EMDR push its score up.
    per_doc = jnp.log(jnp.array([[[0.1, 0.1], [0.2, 0.2], [0.9, 0.8]]]))
    for loss in (lambda s: objectives.pdist_loss(s, per_doc, answer_mask, valid),
                 lambda s: objectives.emdr_loss(s, per_doc, answer_mask, valid, theta=1.0)):
        grad = jax.grad(loss)(scores)
        assert int(jnp.argmin(grad[0])) == 2 and float(grad[0, 2]) < 0
    # Removing passage 0 hurts most: LOOP prefers it.
    grad = jax.grad(lambda s: objectives.loop_loss(s, jnp.array([[3.0, 1.0, 1.1]]), valid))(
        scores)
    assert int(jnp.argmin(grad[0])) == 0
    # Most attention on passage 1: ADist prefers it.
    grad = jax.grad(lambda s: objectives.adist_loss(s, jnp.array([[0.2, 0.7, 0.1]]), valid))(
        scores)
    assert int(jnp.argmin(grad[0])) == 1
    # Supervised: gold passages up, the rest down; padded candidates untouched.
    gold = jnp.array([[True, False, False, True]])
    four = jnp.array([[True, True, True, False]])
    grad = jax.grad(lambda s: objectives.supervised_loss(s, gold, four))(jnp.zeros((1, 4)))
    assert float(grad[0, 0]) < 0 < float(grad[0, 1]) and float(grad[0, 3]) == 0


def test_supervised_loss_is_the_cross_entropy_to_the_gold_passages():
    """Three questions: two gold passages (one of them a padded candidate, which does not
    count), none (contributes 0), one; the mean over all three, by hand in numpy."""
    scores = np.array([[1.0, 0.5, -0.3, 2.0], [0.2, 0.1, 0.0, -1.0], [0.3, -0.7, 1.5, 0.4]])
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], bool)
    gold = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], bool)
    first = special.log_softmax(scores[0, :3])
    third = special.log_softmax(scores[2, :2])
    expected = (-(first[0] + first[2]) / 2 + 0.0 - third[1]) / 3
    loss = objectives.supervised_loss(jnp.asarray(scores, jnp.float32), jnp.asarray(gold),
                                      jnp.asarray(valid))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
