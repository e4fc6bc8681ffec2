"""Pure training and evaluation steps. The reader is frozen: it enters as state and gets no
gradient and no optimizer state; only the reranker's parameters are differentiated."""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

from gumbel_jax import objectives
from gumbel_jax.training.config import ObjectiveConfig, OptimizerConfig


def make_optimizer(config: OptimizerConfig, num_steps: int) -> optax.GradientTransformation:
    """AdamW after global-norm clipping; linear warm-up (none by default: the first step
    already uses the full rate) then cosine decay to a tenth over the run."""
    start = 0.0 if config.warmup_steps else config.learning_rate
    schedule = optax.warmup_cosine_decay_schedule(
        start, config.learning_rate, max(config.warmup_steps, 1), max(num_steps, 2),
        end_value=config.learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(config.clip_norm),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def objective_loss(config: ObjectiveConfig, ranker, reader, batch, step_key):
    """The scalar loss of one batch for any objective (see ``gumbel_jax.objectives``)."""
    scores = ranker(batch["ranker_ids"], batch["ranker_mask"])
    valid = batch["doc_valid"]
    if config.name == "supervised":
        return objectives.supervised_loss(scores, batch["gold"], valid)
    memory, memory_valid = reader.encode(batch["reader_ids"], batch["reader_mask"])
    answers, answer_mask = batch["answer_ids"], batch["answer_mask"]
    if config.name == "g_rerank":
        keys = objectives.per_example_keys(step_key, batch["example_id"])
        return objectives.g_rerank_loss(keys, scores, reader, memory, memory_valid, answers,
                                        answer_mask, candidate_valid=valid, k=config.k,
                                        tau=config.tau, kappa=config.kappa,
                                        num_samples=config.num_samples,
                                        relaxation=config.relaxation)
    if config.name in ("emdr", "pdist"):
        per_doc = objectives.per_document_token_log_probs(reader, memory, memory_valid, answers,
                                                          answer_mask, valid.shape[-1])
        if config.name == "emdr":
            return objectives.emdr_loss(scores, per_doc, answer_mask, valid, theta=config.theta)
        return objectives.pdist_loss(scores, per_doc, answer_mask, valid, theta=config.theta,
                                     temperature=config.temperature)
    if config.name == "loop":
        losses = objectives.leave_one_out_losses(reader, memory, memory_valid, answers,
                                                 answer_mask, valid)
        return objectives.loop_loss(scores, losses, valid, theta=config.theta,
                                    temperature=config.temperature)
    if config.name == "adist":
        mass = reader.document_attention(memory, memory_valid, answers, answer_mask,
                                         num_docs=valid.shape[-1])
        return objectives.adist_loss(scores, jax.lax.stop_gradient(mass), valid,
                                     theta=config.theta)
    raise ValueError(f"unknown objective {config.name!r}")


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

