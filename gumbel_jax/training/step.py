"""Pure training and evaluation steps. The reader is frozen: it enters as state and gets no
gradient and no optimizer state; only the reranker's parameters are differentiated."""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

from gumbel_jax import objectives
from gumbel_jax.data.batch import Batch
from gumbel_jax.training.config import OBJECTIVES, ObjectiveConfig, OptimizerConfig


def learning_rate_schedule(config: OptimizerConfig, num_steps: int) -> optax.Schedule:
    """Linear warm-up (none by default: the first step already uses the full rate), then
    ``config.schedule``: cosine decay to a tenth over the run, or linear decay to zero at
    ``num_steps`` (FiD's reader recipe)."""
    rate, warmup = config.learning_rate, config.warmup_steps
    start = 0.0 if warmup else rate
    if config.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(start, rate, max(warmup, 1)),
             optax.linear_schedule(rate, 0.0, max(num_steps - warmup, 1))], [warmup])
    return optax.warmup_cosine_decay_schedule(start, rate, max(warmup, 1), max(num_steps, 2),
                                              end_value=rate * 0.1)


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, at :func:`learning_rate_schedule`."""
    return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                       optax.adamw(learning_rate_schedule(config, num_steps),
                                   weight_decay=config.weight_decay))


# --- The objective registry: name -> loss of one batch --------------------------------
# Each takes (config, scores [batch, docs], reader, batch, step_key); the reranker's scores
# are the only input that carries a gradient. Its keys are exactly config.OBJECTIVES.


def _supervised(config: ObjectiveConfig, scores, reader, batch, step_key):
    return objectives.supervised_loss(scores, batch.gold, batch.doc_valid)


def _g_rerank(config: ObjectiveConfig, scores, reader, batch, step_key):
    memory = reader.encode(batch.reader_ids, batch.reader_mask)
    keys = objectives.per_example_keys(step_key, batch.example_id)
    return objectives.g_rerank_loss(keys, scores, reader, memory, batch.answer_ids,
                                    batch.answer_mask, candidate_valid=batch.doc_valid,
                                    k=config.k, tau=config.tau, kappa=config.kappa,
                                    num_samples=config.num_samples,
                                    relaxation=config.relaxation)


def _per_document(reader, batch, temperature_gold=1.0):
    memory = reader.encode(batch.reader_ids, batch.reader_mask)
    return objectives.per_document_token_log_probs(reader, memory, batch.answer_ids,
                                                   batch.answer_mask,
                                                   temperature_gold=temperature_gold)


def _emdr(config: ObjectiveConfig, scores, reader, batch, step_key):
    # Atlas's EMDR reads the reader's logits at temperature_gold; PDist at temperature 1.
    per_doc = _per_document(reader, batch, config.temperature_gold)
    return objectives.emdr_loss(scores, per_doc, batch.answer_mask, batch.doc_valid,
                                theta=config.theta, reduction=config.reduction)


def _pdist(config: ObjectiveConfig, scores, reader, batch, step_key):
    return objectives.pdist_loss(scores, _per_document(reader, batch), batch.answer_mask,
                                 batch.doc_valid, theta=config.theta,
                                 temperature_gold=config.temperature_gold,
                                 reduction=config.reduction)


def _loop(config: ObjectiveConfig, scores, reader, batch, step_key):
    memory = reader.encode(batch.reader_ids, batch.reader_mask)
    losses = objectives.leave_one_out_losses(reader, memory, batch.answer_ids,
                                             batch.answer_mask, batch.doc_valid)
    return objectives.loop_loss(scores, losses, batch.doc_valid, theta=config.theta,
                                temperature_gold=config.temperature_gold,
                                reduction=config.reduction)


def _adist(config: ObjectiveConfig, scores, reader, batch, step_key):
    memory = reader.encode(batch.reader_ids, batch.reader_mask)
    attention = reader.document_attention(
        memory, batch.answer_ids, batch.answer_mask,
        value_weighted=config.adist_signal == "value_norm_sum")
    return objectives.adist_loss(scores, jax.lax.stop_gradient(attention), batch.doc_valid,
                                 theta=config.theta, temperature_gold=config.temperature_gold,
                                 adist_signal=config.adist_signal, reduction=config.reduction)


OBJECTIVE_LOSSES = {"g_rerank": _g_rerank, "emdr": _emdr, "pdist": _pdist, "loop": _loop,
                    "adist": _adist, "supervised": _supervised}
assert tuple(OBJECTIVE_LOSSES) == OBJECTIVES, "the registry and config.ObjectiveName differ"


def objective_loss(config: ObjectiveConfig, ranker, reader, batch: Batch | dict, step_key):
    """The scalar loss of one batch (a ``Batch`` or the pipeline's dict of its fields) for
    any objective (see ``gumbel_jax.objectives``)."""
    if config.name not in OBJECTIVE_LOSSES:
        raise ValueError(f"unknown objective {config.name!r}; expected one of {OBJECTIVES}")
    batch = Batch.of(batch)
    scores = ranker(batch.ranker_ids, batch.ranker_mask)
    return OBJECTIVE_LOSSES[config.name](config, scores, reader, batch, step_key)


def _tree_norm(tree):
    # optax.tree.norm replaced optax.global_norm; keep both optax generations working.
    tree_module = getattr(optax, "tree", None)
    return tree_module.norm(tree) if hasattr(tree_module, "norm") else optax.global_norm(tree)


def make_train_step(ranker_graph, reader_graph, tx, config: ObjectiveConfig):
    """``step(params, opt_state, reader_state, batch, step_key) -> (params, opt_state,
    metrics)``, jitted with the parameters and optimizer state donated."""

    def loss_fn(params, reader_state, batch, step_key):
        ranker = nnx.merge(ranker_graph, params)
        reader = nnx.merge(reader_graph, reader_state)
        return objective_loss(config, ranker, reader, batch, step_key)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, reader_state, batch, step_key):
        loss, grads = jax.value_and_grad(loss_fn)(params, reader_state, batch, step_key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": _tree_norm(grads)}

    return train_step

