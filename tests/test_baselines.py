"""The baselines against float64 numpy transcriptions of Atlas's code (facebookresearch/atlas:
``src/atlas.py`` ``logprob``, ``kldivloss``, ``perplexity_score``, ``loop_score``; ``src/fid.py``
``get_crossattention_scores`` for ``evalnormsum``) with the reader's outputs fixed as given
arrays; the named options against their own definitions and against Atlas's; the FiD reader's
statistics against the reader run by hand; gradient directions on hand-made cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from gumbel_jax import objectives
from gumbel_jax.models import FiDReader
from gumbel_jax.models.attention import document_masked_attention
from gumbel_jax.models.reader import Memory, aggregate_document_attention
from gumbel_jax.models.t5 import T5Attention, shift_right
from tests.models.conftest import TINY_T5

IGNORE = -100  # Atlas's (and PyTorch's) label of a padded answer position

# --- Atlas, transcribed to numpy (float64); names follow Atlas's code -------------------


def atlas_kldivloss(score, gold_score, temperature_score, temperature_gold):
    """``Atlas.kldivloss``: ``torch.nn.KLDivLoss()`` (reduction "mean": every element)."""
    gold = special.softmax(gold_score / temperature_gold, axis=-1)
    log_score = special.log_softmax(score / temperature_score, axis=-1)
    return np.mean(special.xlogy(gold, gold) - gold * log_score)


def atlas_logprob(score, gold_logits, labels, temperature_score, temperature_gold):
    """``Atlas.logprob`` (EMDR): ``gold_logits [bsz, n, tokens, vocab]`` are the reader's
    logits with each passage read alone (``emdr_score``); ``labels [bsz, tokens]``."""
    filled = np.where(labels == IGNORE, 0, labels)
    gold_log_prob = special.log_softmax(gold_logits / temperature_gold, axis=-1)
    gold_log_probs = np.take_along_axis(gold_log_prob, filled[:, None, :, None], axis=-1)[..., 0]
    log_score = special.log_softmax(score / temperature_score, axis=-1)
    logsumprobs = special.logsumexp(gold_log_probs + log_score[..., None], axis=1)
    mask_labels = labels >= 0
    return -np.sum(logsumprobs * mask_labels) / np.sum(mask_labels)


def atlas_perplexity_score(logits, labels):
    """``Atlas.perplexity_score`` (PDist's gold score): minus the mean token cross-entropy
    of the answer with each passage read alone, ``[bsz, n]``."""
    filled = np.where(labels == IGNORE, 0, labels)
    log_prob = special.log_softmax(logits, axis=-1)
    token_loss = -np.take_along_axis(log_prob, filled[:, None, :, None], axis=-1)[..., 0]
    token_loss = np.where(labels[:, None] == IGNORE, 0.0, token_loss)
    z = (labels > -1).sum(-1)[:, None]
    return -token_loss.sum(-1) / z


def atlas_normsum(probs, value_norms, mask, labels):
    """``get_crossattention_scores(mode="evalnormsum")["normsum"]``.

    Args:
      probs: ``[layers, bsz, heads, tokens, keys]`` cross-attention probabilities.
      value_norms: ``[layers, bsz, heads, keys]`` norms of the value vectors.
      mask: ``[bsz, n_passages, passage_len]`` passage token mask.
      labels: ``[bsz, tokens]`` with ``IGNORE`` on padding.
    """
    # cross_attention_forward's normalized_score_storage: mean over heads of norm x prob.
    norms = (value_norms[:, :, :, None, :] * probs).mean(axis=2)  # [layers, bsz, q, keys]
    n_layers, bsz, n_tokens, _ = norms.shape
    scores = norms.reshape(n_layers, bsz, n_tokens, mask.shape[1], -1)
    scores = np.where(mask[None, :, None], scores, 0.0)
    ntokens_sum = 256 * n_layers * (labels != IGNORE).sum(1)[:, None]
    scores = scores.sum(0)
    scores = np.where((labels == IGNORE)[:, :, None, None], 0.0, scores)
    return scores.sum(axis=(1, 3)) / ntokens_sum


# --- Fixed reader outputs -------------------------------------------------------------


class GivenLogitsReader:
    """A reader whose vocabulary logits are given: ``logits[b, i]`` ``[tokens, vocab]`` are
    its logits for question ``b`` with passage ``i`` read alone (the only call EMDR and PDist
    make: ``token_log_probs`` on ``Memory.split_documents``)."""

    def __init__(self, logits):
        self.logits = jnp.asarray(logits, jnp.float32)

    def token_log_probs(self, memory, answer_ids, answer_mask, doc_log_mask=None, *,
                        temperature=1.0):
        logits = self.logits.reshape(-1, *self.logits.shape[2:])
        assert memory.num_docs == 1 and logits.shape[0] == answer_ids.shape[0]
        log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
        picked = jnp.take_along_axis(log_probs, answer_ids[..., None], axis=-1)[..., 0]
        return jnp.where(answer_mask, picked, 0.0)


@pytest.fixture(scope="module")
def given():
    """Three questions, four passages, answers of 5, 3 and 1 tokens, vocabulary 11."""
    rng = np.random.default_rng(7)
    bsz, n, tokens, vocab = 3, 4, 5, 11
    logits = rng.normal(scale=3.0, size=(bsz, n, tokens, vocab))
    labels = rng.integers(0, vocab, size=(bsz, tokens))
    lengths = np.array([5, 3, 1])
    answer_mask = np.arange(tokens)[None] < lengths[:, None]
    labels = np.where(answer_mask, labels, IGNORE)
    scores = rng.normal(scale=2.0, size=(bsz, n))
    return logits, labels, answer_mask, scores


def _ours_per_doc(logits, labels, answer_mask, temperature_gold):
    bsz, n = logits.shape[:2]
    memory = Memory(jnp.zeros((bsz, n, 1)), jnp.ones((bsz, n), bool), num_docs=n)
    answers = jnp.asarray(np.where(answer_mask, labels, 0), jnp.int32)
    return objectives.per_document_token_log_probs(
        GivenLogitsReader(logits), memory, answers, jnp.asarray(answer_mask),
        temperature_gold=temperature_gold)


TEMPERATURES = [(0.01, 0.01), (0.5, 2.0)]  # (theta, temperature_gold): Atlas's, and others


@pytest.mark.parametrize(("theta", "temperature_gold"), TEMPERATURES)
def test_emdr_is_atlas_logprob(given, theta, temperature_gold):
    logits, labels, answer_mask, scores = given
    per_doc = _ours_per_doc(logits, labels, answer_mask, temperature_gold)
    valid = jnp.ones(scores.shape, bool)
    ours = objectives.emdr_loss(jnp.asarray(scores, jnp.float32), per_doc,
                                jnp.asarray(answer_mask), valid, theta=theta)
    atlas = atlas_logprob(scores, logits, labels, theta, temperature_gold)
    np.testing.assert_allclose(ours, atlas, rtol=1e-5)
    # The named option: each question's mean over its tokens, then the mean over questions.
    per_question = objectives.emdr_loss(jnp.asarray(scores, jnp.float32), per_doc,
                                        jnp.asarray(answer_mask), valid, theta=theta,
                                        reduction="per_question")
    alone = [atlas_logprob(scores[b:b + 1], logits[b:b + 1], labels[b:b + 1], theta,
                           temperature_gold) for b in range(3)]
    np.testing.assert_allclose(per_question, np.mean(alone), rtol=1e-5)
    assert not np.isclose(per_question, atlas, rtol=1e-3)  # the option is not Atlas's


def test_emdr_temperature_gold_applies_to_the_vocabulary_logits(given):
    """Atlas's default T = 0.01 sharpens the reader's vocabulary distribution 100-fold (a
    token that is not the reader's argmax costs its logit gap / T): the loss differs from
    the reader's own log-probabilities (T = 1) by far more than rounding."""
    logits, labels, answer_mask, scores = given
    valid, mask = jnp.ones(scores.shape, bool), jnp.asarray(answer_mask)
    losses = [float(objectives.emdr_loss(jnp.asarray(scores, jnp.float32),
                                         _ours_per_doc(logits, labels, answer_mask, t), mask,
                                         valid)) for t in (0.01, 1.0)]
    np.testing.assert_allclose(losses, [atlas_logprob(scores, logits, labels, 0.01, t)
                                        for t in (0.01, 1.0)], rtol=1e-5)
    assert losses[0] > 10 * losses[1]


def test_emdr_ignores_padded_candidates(given):
    """Atlas has no padded candidates; ours drop out of the logsumexp exactly."""
    logits, labels, answer_mask, scores = given
    valid = np.ones(scores.shape, bool)
    valid[1, 3] = valid[2, 0] = False
    per_doc = _ours_per_doc(logits, labels, answer_mask, 0.5)
    ours = objectives.emdr_loss(jnp.asarray(np.where(valid, scores, 9.0), jnp.float32),
                                per_doc, jnp.asarray(answer_mask), jnp.asarray(valid),
                                theta=0.3)
    total = sum(-atlas_logprob(scores[b:b + 1, valid[b]], logits[b:b + 1, valid[b]],
                               labels[b:b + 1], 0.3, 0.5) * answer_mask[b].sum()
                for b in range(3))
    np.testing.assert_allclose(ours, -total / answer_mask.sum(), rtol=1e-5)


def _np_kl_per_question(target_logits, score, theta):
    """The "per_question" option: KL summed over a question's passages, mean over
    questions (KLDivLoss's "batchmean")."""
    gold = special.softmax(target_logits, axis=-1)
    log_score = special.log_softmax(score / theta, axis=-1)
    return np.mean((special.xlogy(gold, gold) - gold * log_score).sum(-1))


@pytest.mark.parametrize(("theta", "temperature_gold"), TEMPERATURES)
def test_pdist_is_atlas_ppmean(given, theta, temperature_gold):
    logits, labels, answer_mask, scores = given
    per_doc = _ours_per_doc(logits, labels, answer_mask, 1.0)  # PDist: the reader's own
    valid, mask = jnp.ones(scores.shape, bool), jnp.asarray(answer_mask)
    pdist = lambda **kw: objectives.pdist_loss(jnp.asarray(scores, jnp.float32), per_doc,
                                               mask, valid, theta=theta,
                                               temperature_gold=temperature_gold, **kw)
    gold_score = atlas_perplexity_score(logits, labels)
    atlas = atlas_kldivloss(scores, gold_score, theta, temperature_gold)
    np.testing.assert_allclose(pdist(), atlas, rtol=1e-4)
    per_question = _np_kl_per_question(gold_score / temperature_gold, scores, theta)
    np.testing.assert_allclose(pdist(reduction="per_question"), per_question, rtol=1e-4)
    # KLDivLoss's "mean" divides by batch x passages, "batchmean" by the batch: n = 4 times.
    np.testing.assert_allclose(per_question, 4 * atlas, rtol=1e-9)


@pytest.mark.parametrize(("theta", "temperature_gold"), TEMPERATURES)
def test_loop_is_atlas_loop(given, theta, temperature_gold):
    """LOOP's gold score is the answer loss with passage i left out (given here; the FiD
    reader's is checked against reading without the passage below)."""
    scores = given[3]
    losses = np.random.default_rng(3).uniform(0.5, 4.0, size=scores.shape)
    valid = jnp.ones(scores.shape, bool)
    loop = lambda **kw: objectives.loop_loss(jnp.asarray(scores, jnp.float32),
                                             jnp.asarray(losses, jnp.float32), valid,
                                             theta=theta, temperature_gold=temperature_gold,
                                             **kw)
    np.testing.assert_allclose(loop(), atlas_kldivloss(scores, losses, theta,
                                                       temperature_gold), rtol=1e-4)
    np.testing.assert_allclose(loop(reduction="per_question"),
                               _np_kl_per_question(losses / temperature_gold, scores, theta),
                               rtol=1e-4)


def test_kl_reduction_with_padded_candidates_counts_them_as_zero_terms():
    """With padded candidates (Atlas never has them) the "atlas" reduction still divides by
    every [batch, docs] entry: the padded ones are KL terms of 0."""
    rng = np.random.default_rng(4)
    scores, losses = rng.normal(size=(2, 5)), rng.uniform(1, 3, size=(2, 5))
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    ours = objectives.loop_loss(jnp.asarray(scores, jnp.float32),
                                jnp.asarray(losses, jnp.float32), jnp.asarray(valid),
                                theta=0.5, temperature_gold=0.7)
    terms = sum(atlas_kldivloss(scores[b, valid[b]], losses[b, valid[b]], 0.5, 0.7)
                * valid[b].sum() for b in range(2))
    np.testing.assert_allclose(ours, terms / 10, rtol=1e-5)



def test_the_kl_objectives_without_settings_use_atlas_temperatures():
    """PDist, LOOP and ADist called without theta / temperature_gold use Atlas's 0.01 and
    0.01 (the configs' defaults): against Atlas's kldivloss at those temperatures, on hand-made
    inputs whose softmaxes at 0.01 are far from both uniform and one-hot."""
    scores = np.array([[0.01, 0.0, -0.02]])
    valid = jnp.ones((1, 3), bool)
    s32 = jnp.asarray(scores, jnp.float32)
    # PDist: mean log-probability of the answer's 2 real tokens (the third is padding).
    per_doc = np.array([[[-0.01, -0.03, 5.0], [-0.04, -0.02, 5.0], [0.0, -0.01, 5.0]]])
    answer_mask = jnp.array([[True, True, False]])
    pdist = objectives.pdist_loss(s32, jnp.asarray(per_doc, jnp.float32), answer_mask, valid)
    gold_means = np.array([[-0.02, -0.03, -0.005]])
    np.testing.assert_allclose(pdist, atlas_kldivloss(scores, gold_means, 0.01, 0.01),
                               rtol=1e-4)
    losses = np.array([[0.02, 0.0, 0.01]])
    loop = objectives.loop_loss(s32, jnp.asarray(losses, jnp.float32), valid)
    np.testing.assert_allclose(loop, atlas_kldivloss(scores, losses, 0.01, 0.01), rtol=1e-4)
    attention = np.array([[2.56, 0.0, 5.12]])  # evalnormsum g = attention / 256
    adist = objectives.adist_loss(s32, jnp.asarray(attention, jnp.float32), valid)
    np.testing.assert_allclose(adist, atlas_kldivloss(scores, attention / 256, 0.01, 0.01),
                               rtol=1e-4)


def test_adist_attention_mass_of_exactly_zero_is_a_zero_target():
    """A real passage whose attention mass underflowed to exactly 0 (float32 / bfloat16
    attention) gets target probability 0, a KL term of 0 (0 log 0 = 0), never NaN."""
    scores = np.array([[0.3, -0.2, 0.5, 0.0]])
    valid = np.array([[True, True, True, False]])
    mass = np.array([[0.25, 0.0, 0.75, 0.0]])
    for reduction, divisor in (("atlas", 4), ("per_question", 1)):
        ours = objectives.adist_loss(jnp.asarray(scores, jnp.float32),
                                     jnp.asarray(mass, jnp.float32), jnp.asarray(valid),
                                     theta=0.5, adist_signal="attention_mass",
                                     reduction=reduction)
        target = mass[0, :3]
        predicted = special.log_softmax(scores[0, :3] / 0.5)
        expected = (special.xlogy(target, target) - target * predicted).sum() / divisor
        np.testing.assert_allclose(ours, expected, rtol=1e-5)

@pytest.fixture(scope="module")
def attention_case():
    """Fixed cross-attention probabilities and value norms: 2 layers, 2 questions, 3 heads,
    4 answer positions (question 1's last is padding), 3 passages of 5 tokens (some padding
    tokens; question 1's last passage all padding)."""
    rng = np.random.default_rng(11)
    n_layers, bsz, heads, tokens, n, length = 2, 2, 3, 4, 3, 5
    mask = np.ones((bsz, n, length), bool)
    mask[0, 1, 3:] = mask[1, 0, 4:] = mask[1, 2] = False
    keys = mask.reshape(bsz, 1, 1, n * length)
    logits = rng.normal(scale=2.0, size=(n_layers, bsz, heads, tokens, n * length))
    probs = special.softmax(np.where(keys, logits, -np.inf), axis=-1)
    value_norms = rng.uniform(1.0, 30.0, size=(n_layers, bsz, heads, n * length))
    answer_mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    labels = np.where(answer_mask, 3, IGNORE)
    scores = rng.normal(size=(bsz, n))
    return probs, value_norms, mask, answer_mask, labels, scores


def _per_document(probs_times, mask):
    """``[layers, bsz, heads, tokens, keys]`` -> summed per passage ``[..., n]``."""
    return probs_times.reshape(*probs_times.shape[:-1], mask.shape[1], -1).sum(-1)


@pytest.mark.parametrize(("theta", "temperature_gold"), TEMPERATURES)
def test_adist_is_atlas_evalnormsum(attention_case, theta, temperature_gold):
    """Atlas's real passages (question 1 reads 2 of 3 here, so its KL mean counts the third
    as a zero term, as our reduction does)."""
    probs, value_norms, mask, answer_mask, labels, scores = attention_case
    # What the reader's blockwise attention returns per layer and head (tested below).
    statistic = _per_document(probs * value_norms[:, :, :, None, :], mask)
    attention = aggregate_document_attention(jnp.asarray(statistic, jnp.float32),
                                             jnp.asarray(answer_mask))
    gold_score = atlas_normsum(probs, value_norms, mask, labels)
    np.testing.assert_allclose(np.asarray(attention) / 256, gold_score, rtol=1e-5)
    valid = mask.any(-1)
    adist = objectives.adist_loss(jnp.asarray(scores, jnp.float32), attention,
                                  jnp.asarray(valid), theta=theta,
                                  temperature_gold=temperature_gold)
    atlas_terms = [atlas_kldivloss(scores[b, valid[b]], gold_score[b, valid[b]], theta,
                                   temperature_gold) * valid[b].sum() for b in range(2)]
    np.testing.assert_allclose(adist, sum(atlas_terms) / valid.size, rtol=1e-4)


def test_adist_attention_mass_option_is_the_mass_itself(attention_case):
    """The named option: the target is the plain attention mass (no value norms, no
    temperature), a different target from Atlas's."""
    probs, value_norms, mask, answer_mask, labels, scores = attention_case
    mass = aggregate_document_attention(jnp.asarray(_per_document(probs, mask), jnp.float32),
                                        jnp.asarray(answer_mask))
    valid = mask.any(-1)
    option = objectives.adist_loss(jnp.asarray(scores, jnp.float32), mass, jnp.asarray(valid),
                                   theta=0.5, adist_signal="attention_mass",
                                   reduction="per_question")
    expected = 0.0
    for b in range(2):
        target = np.asarray(mass, np.float64)[b][valid[b]]
        predicted = special.log_softmax(scores[b][valid[b]] / 0.5)
        expected += (target * (np.log(target) - predicted)).sum() / 2
    np.testing.assert_allclose(option, expected, rtol=1e-4)
    statistic = _per_document(probs * value_norms[:, :, :, None, :], mask)
    atlas = objectives.adist_loss(
        jnp.asarray(scores, jnp.float32),
        aggregate_document_attention(jnp.asarray(statistic, jnp.float32),
                                     jnp.asarray(answer_mask)),
        jnp.asarray(valid), theta=0.5, reduction="per_question")
    assert not np.isclose(option, atlas, rtol=1e-3)


def test_value_weighted_document_weights_are_probability_times_value_norm():
    """The blockwise attention's ``weight_by_value_norm`` statistic against one softmax over
    all keys in numpy: sum over a document's keys of probability x |value| (per head)."""
    rng = np.random.default_rng(2)
    batch, docs, length, heads, dim = 2, 3, 4, 2, 5
    q = rng.normal(size=(batch, 3, heads, dim))
    k, v = rng.normal(size=(2, batch, docs * length, heads, dim))
    valid = np.ones((batch, docs * length), bool)
    valid[0, 5:8] = valid[1, 8:] = False
    log_mask = np.log(np.array([[1.0, 0.5, 0.2], [0.9, 1.0, 1e-30]]))
    _, ours = document_masked_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)),
                                        jnp.asarray(log_mask, jnp.float32), jnp.asarray(valid),
                                        return_doc_weights=True, weight_by_value_norm=True)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) + np.repeat(log_mask, length, -1)[:, None,
                                                                                   None]
    probs = special.softmax(np.where(valid[:, None, None], logits, -np.inf), axis=-1)
    norms = np.linalg.norm(v, axis=-1).transpose(0, 2, 1)[:, :, None]  # [b, h, 1, keys]
    expected = (probs * norms).reshape(batch, heads, 3, docs, length).sum(-1)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)


# --- The FiD reader: its statistics and per-passage scores ----------------------------


@pytest.fixture(scope="module")
def case():
    reader = FiDReader.random(TINY_T5, seed=5)
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(2, 64, size=(2, 4, 6)), jnp.int32)
    mask = jnp.ones((2, 4, 6), bool).at[1, 3].set(False).at[0, 2, 4:].set(False)
    answers = jnp.asarray(rng.integers(2, 64, size=(2, 3)), jnp.int32)
    answer_mask = jnp.ones((2, 3), bool).at[1, 2].set(False)
    memory = reader.encode(ids, mask)
    scores = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    return reader, ids, mask, answers, answer_mask, memory, scores, mask.any(-1)


def test_fid_value_weighted_attention_is_atlas_normsum(case, monkeypatch):
    """Atlas's statistic from the reader's own cross-attention queries, keys and values
    (recorded as each decoder layer runs), recomputed in float64 numpy, equals
    ``document_attention(value_weighted=True) / 256``."""
    reader, ids, mask, answers, answer_mask, memory, _, _ = case
    recorded, cross = [], T5Attention.cross

    def recording(self, x, memory, doc_log_mask, memory_valid, **options):
        recorded.append([np.asarray(a, np.float64) for a in
                         (self._split(self.q(x)), self._split(self.k(memory)),
                          self._split(self.v(memory)))])
        return cross(self, x, memory, doc_log_mask, memory_valid, **options)

    monkeypatch.setattr(T5Attention, "cross", recording)
    ours = reader.document_attention(memory, answers, answer_mask, value_weighted=True)
    assert len(recorded) == TINY_T5.num_decoder_layers
    keys = np.asarray(mask).reshape(2, 1, 1, -1)
    probs, value_norms = [], []
    for q, k, v in recorded:  # T5: no logit scaling, no position bias in cross-attention
        logits = np.einsum("bqhd,bkhd->bhqk", q, k)
        probs.append(special.softmax(np.where(keys, logits, -np.inf), axis=-1))
        value_norms.append(np.linalg.norm(v, axis=-1).transpose(0, 2, 1))
    labels = np.where(np.asarray(answer_mask), np.asarray(answers), IGNORE)
    atlas = atlas_normsum(np.stack(probs), np.stack(value_norms), np.asarray(mask), labels)
    np.testing.assert_allclose(np.asarray(ours) / 256, atlas, rtol=1e-5, atol=1e-9)


def test_fid_token_log_probs_at_a_temperature(case):
    """EMDR's per-passage log-probabilities: log_softmax(decoder logits / T) at the gold
    tokens, from the reader's logits in float64."""
    reader, _, _, answers, answer_mask, memory, _, _ = case
    inputs = shift_right(answers, TINY_T5.decoder_start_token_id)
    logits = np.asarray(reader.t5.decode(inputs, memory.states, memory.valid), np.float64)
    for temperature in (0.01, 1.0, 3.0):
        ours = reader.token_log_probs(memory, answers, answer_mask, temperature=temperature)
        expected = np.take_along_axis(special.log_softmax(logits / temperature, axis=-1),
                                      np.asarray(answers)[..., None], axis=-1)[..., 0]
        expected = np.where(np.asarray(answer_mask), expected, 0.0)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def _alone(reader, ids, mask, answers, answer_mask, temperature):
    """Reference: the reader on each passage alone, through the public API."""
    out = np.zeros((2, 4, 3))
    for b in range(2):
        for i in range(4):
            memory = reader.encode(ids[b:b + 1, i:i + 1], mask[b:b + 1, i:i + 1])
            out[b, i] = reader.token_log_probs(memory, answers[b:b + 1], answer_mask[b:b + 1],
                                               temperature=temperature)[0]
    return out


@pytest.mark.parametrize("temperature_gold", [1.0, 0.01])
def test_per_document_log_probs_read_each_passage_alone(case, temperature_gold):
    """Atlas's emdr_score / perplexity_score read each passage as a one-passage question;
    ours reuse the encoder output (passages are encoded independently)."""
    reader, ids, mask, answers, answer_mask, memory, _, doc_valid = case
    per_doc = objectives.per_document_token_log_probs(reader, memory, answers, answer_mask,
                                                      temperature_gold=temperature_gold)
    reference = _alone(reader, ids, mask, answers, answer_mask, temperature_gold)
    real = np.asarray(doc_valid)
    np.testing.assert_allclose(np.asarray(per_doc)[real], reference[real], rtol=1e-5,
                               atol=1e-4)


def test_leave_one_out_losses_read_without_the_passage(case):
    """Atlas's loop_score: the mean token loss with passage i masked out of the reader."""
    reader, ids, mask, answers, answer_mask, memory, _, doc_valid = case
    losses = objectives.leave_one_out_losses(reader, memory, answers, answer_mask,
                                             doc_valid)
    for b in range(2):
        for i in np.flatnonzero(np.asarray(doc_valid[b])):
            keep = [j for j in range(4) if j != i and bool(doc_valid[b, j])]
            loglik = reader.answer_log_likelihood(ids[b:b + 1, keep], mask[b:b + 1, keep],
                                                  answers[b:b + 1], answer_mask[b:b + 1])
            expected = -float(loglik[0]) / float(answer_mask[b].sum())
            np.testing.assert_allclose(losses[b, i], expected, rtol=1e-5)


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
    # Most (value-weighted) attention on passage 1: ADist prefers it, with either signal.
    for signal in ("value_norm_sum", "attention_mass"):
        grad = jax.grad(lambda s, signal=signal: objectives.adist_loss(
            s, jnp.array([[0.2, 0.7, 0.1]]), valid, adist_signal=signal))(scores)
        assert int(jnp.argmin(grad[0])) == 1
    # Supervised: gold passages up, the rest down; padded candidates untouched.
    gold = jnp.array([[True, False, False, True]])
    four = jnp.array([[True, True, True, False]])
    grad = jax.grad(lambda s: objectives.supervised_loss(s, gold, four))(jnp.zeros((1, 4)))
    assert float(grad[0, 0]) < 0 < float(grad[0, 1]) and float(grad[0, 3]) == 0


def test_unknown_settings_are_errors():
    valid, scores = jnp.ones((1, 3), bool), jnp.zeros((1, 3))
    with pytest.raises(ValueError, match="unknown reduction 'sum'"):
        objectives.loop_loss(scores, scores, valid, reduction="sum")
    with pytest.raises(ValueError, match="unknown adist_signal 'probs'"):
        objectives.adist_loss(scores, scores, valid, adist_signal="probs")


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
