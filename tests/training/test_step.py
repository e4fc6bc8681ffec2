"""The trainer's step: each objective setting reaches the loss it names, and the optimizer's
learning-rate schedule has the values its docstring promises."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gumbel_jax import objectives
from gumbel_jax.data.batch import Batch
from gumbel_jax.models.reader import Memory
from gumbel_jax.training.config import (
    ExperimentConfig,
    ObjectiveConfig,
    OptimizerConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    validate,
)
from gumbel_jax.training.step import make_optimizer, objective_loss

VOCAB = 40


class StubReader:
    """A cheap stand-in for a frozen reader (the trainer only calls the Reader interface):
    each document carries a relevance (the mean of its token ids), and the answer's
    log-likelihood is a smooth function of the relevance the mask lets through."""

    def encode(self, input_ids, attention_mask):
        batch, docs, length = input_ids.shape
        states = (input_ids.astype(jnp.float32) / VOCAB).reshape(batch, docs * length, 1)
        return Memory(states, attention_mask.reshape(batch, docs * length), num_docs=docs)

    def _relevance(self, memory):
        states = memory.states[..., 0].reshape(memory.batch_size, memory.num_docs, -1)
        valid = memory.valid.reshape(states.shape)
        per_doc = jnp.where(valid, states, 0.0).sum(-1) / jnp.maximum(valid.sum(-1), 1)
        return per_doc, valid.any(-1)

    def token_log_probs(self, memory, answer_ids, answer_mask, doc_log_mask=None, *,
                        temperature=1.0):
        relevance, valid = self._relevance(memory)
        log_mask = memory.full_log_mask() if doc_log_mask is None else doc_log_mask
        weights = jax.nn.softmax(jnp.where(valid, 3 * relevance + log_mask, -1e9), axis=-1)
        read = (weights * relevance).sum(-1, keepdims=True)  # [batch, 1]
        position = jnp.arange(answer_ids.shape[-1]) + 1.0
        log_probs = jax.nn.log_sigmoid((4 * read - answer_ids / VOCAB * position) / temperature)
        return jnp.where(answer_mask, log_probs, 0.0)

    def document_attention(self, memory, answer_ids, answer_mask, *, value_weighted=False):
        relevance, valid = self._relevance(memory)
        mass = jax.nn.softmax(jnp.where(valid, 3 * relevance, -1e9), axis=-1)
        # value norms of the order of a real reader's (Atlas's divisor 256 then matters)
        return mass * (40.0 + 200.0 * relevance) if value_weighted else mass


def stub_ranker(ids, mask):
    """Scores from token ids: the mean id of each candidate."""
    return jnp.where(mask, ids / VOCAB, 0.0).sum(-1) / jnp.maximum(mask.sum(-1), 1)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    size, docs, length, answer = 2, 5, 6, 3
    reader_mask = np.ones((size, docs, length), bool)
    reader_mask[:, :, -1] = False
    reader_mask[1, 4] = False  # question 1 has 4 candidates
    answer_mask = np.ones((size, answer), bool)
    answer_mask[0, -1] = False
    gold = np.zeros((size, docs), bool)
    gold[:, 1] = True
    arrays = dict(
        reader_ids=rng.integers(4, VOCAB, (size, docs, length)).astype(np.int32),
        reader_mask=reader_mask,
        ranker_ids=rng.integers(4, VOCAB, (size, docs, length)).astype(np.int32),
        ranker_mask=reader_mask.copy(), doc_valid=reader_mask.any(-1),
        answer_ids=rng.integers(4, VOCAB, (size, answer)).astype(np.int32),
        answer_mask=answer_mask, gold=gold, indirect=np.zeros_like(gold),
        example_id=np.array([11, 4], np.int32))
    return Batch(**{k: jnp.asarray(v) for k, v in arrays.items()})


def _direct(config: ObjectiveConfig, ranker, reader, batch: Batch, step_key):
    """The objective function called by hand with every setting spelt out."""
    scores = ranker(batch.ranker_ids, batch.ranker_mask)
    memory = reader.encode(batch.reader_ids, batch.reader_mask)
    valid, answers, answer_mask = batch.doc_valid, batch.answer_ids, batch.answer_mask
    if config.name == "g_rerank":
        keys = objectives.per_example_keys(step_key, batch.example_id)
        return objectives.g_rerank_loss(keys, scores, reader, memory, answers, answer_mask,
                                        candidate_valid=valid, k=config.k, tau=config.tau,
                                        kappa=config.kappa, num_samples=config.num_samples,
                                        relaxation=config.relaxation)
    if config.name == "emdr":
        per_doc = objectives.per_document_token_log_probs(
            reader, memory, answers, answer_mask, temperature_gold=config.temperature_gold)
        return objectives.emdr_loss(scores, per_doc, answer_mask, valid, theta=config.theta,
                                    reduction=config.reduction)
    if config.name == "pdist":
        per_doc = objectives.per_document_token_log_probs(reader, memory, answers, answer_mask)
        return objectives.pdist_loss(scores, per_doc, answer_mask, valid, theta=config.theta,
                                     temperature_gold=config.temperature_gold,
                                     reduction=config.reduction)
    if config.name == "loop":
        losses = objectives.leave_one_out_losses(reader, memory, answers, answer_mask, valid)
        return objectives.loop_loss(scores, losses, valid, theta=config.theta,
                                    temperature_gold=config.temperature_gold,
                                    reduction=config.reduction)
    if config.name == "adist":
        attention = reader.document_attention(
            memory, answers, answer_mask,
            value_weighted=config.adist_signal == "value_norm_sum")
        return objectives.adist_loss(scores, attention, valid, theta=config.theta,
                                     temperature_gold=config.temperature_gold,
                                     adist_signal=config.adist_signal,
                                     reduction=config.reduction)
    return objectives.supervised_loss(scores, batch.gold, valid)


# Every setting the trainer must pass on, each changed on its own from the default.
VARIANTS = {
    "g_rerank": [{}, {"tau": 0.3}, {"kappa": 2.5}, {"k": 3}, {"num_samples": 3},
                 {"relaxation": "subset"}, {"relaxation": "no_noise"},
                 {"relaxation": "straight_through", "k": 3}],
    "emdr": [{}, {"theta": 0.7}, {"temperature_gold": 0.3}, {"reduction": "per_question"}],
    "pdist": [{}, {"theta": 0.7}, {"temperature_gold": 0.3}, {"reduction": "per_question"}],
    "loop": [{}, {"theta": 0.7}, {"temperature_gold": 0.3}, {"reduction": "per_question"}],
    "adist": [{}, {"theta": 0.7}, {"temperature_gold": 0.3}, {"reduction": "per_question"},
              {"adist_signal": "attention_mass"}],
    "supervised": [{}],
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_objective_setting_reaches_its_loss(batch, name):
    """The bug this guards: a setting dropped between the config and the loss (e.g.
    ``relaxation=``) silently trains every ablation as the default. The trainer's loss must
    equal the function called with the setting, and every setting must move the loss."""
    reader, key = StubReader(), jax.random.key(5)
    losses = []
    for changes in VARIANTS[name]:
        config = ObjectiveConfig(name=name, **{"k": 2, **changes})
        trained = float(objective_loss(config, stub_ranker, reader, batch.to_dict(), key))
        direct = float(_direct(config, stub_ranker, reader, batch, key))
        np.testing.assert_allclose(trained, direct, rtol=1e-6, err_msg=str(changes))
        assert math.isfinite(trained)
        losses.append(trained)
    assert len(set(losses)) == len(losses), dict(zip(map(str, VARIANTS[name]), losses,
                                                     strict=True))


def test_the_objectives_differ_from_each_other(batch):
    losses = {name: float(objective_loss(ObjectiveConfig(name=name, k=2), stub_ranker,
                                         StubReader(), batch, jax.random.key(5)))
              for name in VARIANTS}
    assert len(set(losses.values())) == len(losses), losses


def test_the_earlier_spelling_of_temperature_gold_is_still_read():
    """``objective.temperature`` (before it took Atlas's name) on the command line and in a
    saved experiment.json sets ``temperature_gold``."""
    config = apply_overrides(ExperimentConfig(), ["train.objective.temperature=0.3"])
    assert config.train.objective.temperature_gold == 0.3
    saved = dataclasses.asdict(ExperimentConfig())
    saved["train"]["objective"]["temperature"] = saved["train"]["objective"].pop(
        "temperature_gold") * 20
    assert from_dict(ExperimentConfig, saved).train.objective.temperature_gold == 0.2
    with pytest.raises(ValueError, match="objective.temperature_gold must be > 0"):
        validate(apply_overrides(TrainConfig(), ["objective.temperature=0"]),
                 num_candidates=10)


def _learning_rates(config: OptimizerConfig, num_steps: int, steps: int):
    """The rate of each update, read off AdamW: with a constant gradient g and no weight
    decay, Adam's bias-corrected update is -rate * g / (|g| + eps)."""
    tx = make_optimizer(config, num_steps)
    params = {"w": jnp.zeros(())}
    grads = {"w": jnp.asarray(0.5)}  # inside the clipping norm
    state = tx.init(params)
    rates = []
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        rates.append(-float(updates["w"]) * (0.5 + 1e-8) / 0.5)
    return np.array(rates)


def _cosine(step, *, peak, warmup, total):
    """The documented schedule: linear warm-up to ``peak``, cosine to ``peak / 10``."""
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return peak / 10 + (peak - peak / 10) * 0.5 * (1 + math.cos(math.pi * progress))


def test_learning_rate_schedule_warmup_and_cosine_to_a_tenth():
    peak, warmup, total = 2e-3, 3, 10
    rates = _learning_rates(OptimizerConfig(learning_rate=peak, warmup_steps=warmup), total,
                            total + 1)
    assert rates[0] == 0.0  # the first update of a warm-up does nothing
    np.testing.assert_allclose(rates[1], peak / 3, rtol=1e-5)
    np.testing.assert_allclose(rates[warmup], peak, rtol=1e-5)  # end of warm-up: the peak
    np.testing.assert_allclose(rates[total - 1], 2.8913e-4, rtol=1e-4)  # last step, by hand
    np.testing.assert_allclose(rates[total], peak / 10, rtol=1e-5)  # the end value
    expected = [_cosine(step, peak=peak, warmup=warmup, total=total) for step in range(total)]
    np.testing.assert_allclose(rates[:total], expected, rtol=1e-5, atol=1e-12)


def test_without_warmup_the_first_step_uses_the_full_rate():
    peak, total = 1e-3, 5
    rates = _learning_rates(OptimizerConfig(learning_rate=peak), total, total)
    np.testing.assert_allclose(rates[0], peak, rtol=1e-5)
    # Without warm-up the rate holds for one more step, then decays over the rest.
    expected = [_cosine(step, peak=peak, warmup=1, total=total) for step in range(1, total)]
    np.testing.assert_allclose(rates[1:], expected, rtol=1e-4)
    # A one-step run is not a division by zero: its single step runs at the peak.
    np.testing.assert_allclose(_learning_rates(OptimizerConfig(learning_rate=peak), 1, 1),
                               [peak], rtol=1e-5)


def test_weight_decay_and_clipping_are_applied():
    config = OptimizerConfig(learning_rate=0.1, weight_decay=0.5, clip_norm=1.0)
    tx = make_optimizer(config, 10)
    params = {"w": jnp.asarray(2.0)}
    # A zero gradient: only weight decay moves w, by -rate * decay * w.
    updates, _ = tx.update({"w": jnp.asarray(0.0)}, tx.init(params), params)
    np.testing.assert_allclose(float(updates["w"]), -0.1 * 0.5 * 2.0, rtol=1e-5)
    # Clipping to norm 1 scales a gradient of norm 10 down; Adam's first step is then
    # still -rate * sign, so read the clipped gradient off the first moment instead.
    tx = make_optimizer(dataclasses.replace(config, weight_decay=0.0), 10)
    _, state = tx.update({"w": jnp.asarray(10.0)}, tx.init(params), params)
    first_moment = jax.tree.leaves(state[1][0].mu)[0]
    np.testing.assert_allclose(float(first_moment), (1 - 0.9) * 1.0, rtol=1e-5)
