"""Training objectives for the reranker. G-Rerank: reranker scores -> relaxed top-k mask ->
the frozen reader's document-masked cross-attention -> NLL of the gold answer."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from gumbel_jax import ops

Relaxation = Literal["l2x", "subset", "no_noise", "straight_through"]


def per_example_keys(step_key, example_ids):
    """``[batch]`` keys ``fold_in(step_key, example_id)``: an example's noise depends on the
    step and on the example, never on the batch it sits in or on the device mesh."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, example_ids)


def _is_batched_key(key) -> bool:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim >= 1
    return key.ndim == 2  # raw uint32 keys: [2] for one key, [batch, 2] for several


def document_log_mask(key, scores, k: int, *, tau: float, kappa: float, candidate_valid,
                      relaxation: Relaxation = "l2x"):
    """The per-document log mask used for training, ``[batch, docs]``.

    ``key`` is one key for the batch or ``[batch]`` keys, one per question (see
    :func:`per_example_keys`).

    ``l2x`` is the paper's relaxed top-k; the others are ablations: ``subset`` (Xie & Ermon),
    ``no_noise`` (the same max-of-k construction without Gumbel noise collapses to one
    softmax, so it is the deterministic ``softmax(kappa * scores / tau)`` mask) and
    ``straight_through`` (the Gumbel-top-k hard mask forward, the relaxed mask's gradient).
    """
    if _is_batched_key(key):
        one = lambda key, s, v: document_log_mask(key, s, k, tau=tau, kappa=kappa,
                                                  candidate_valid=v, relaxation=relaxation)
        return jax.vmap(one)(key, scores, candidate_valid)
    if relaxation == "l2x":
        return ops.log_relaxed_topk(key, scores, k, tau=tau, kappa=kappa, where=candidate_valid)
    if relaxation == "subset":
        mask = ops.subset_topk(key, scores, k, tau=tau, kappa=kappa, where=candidate_valid)
        return ops.mask_to_log_mask(mask)
    if relaxation == "no_noise":
        log_mask = _masked_log_softmax(kappa * scores / tau, candidate_valid)
        return jnp.where(candidate_valid, log_mask, ops.mask_value(scores.dtype))
    if relaxation == "straight_through":
        soft = ops.relaxed_topk(key, scores, k, tau=tau, kappa=kappa, where=candidate_valid)
        hard = _sampled_topk_mask(key, scores, k, candidate_valid)
        return ops.mask_to_log_mask(soft + jax.lax.stop_gradient(hard - soft))
    raise ValueError(f"unknown relaxation {relaxation!r}; expected l2x, subset, no_noise or "
                     "straight_through")


def _sampled_topk_mask(key, scores, k, candidate_valid):
    indices = ops.gumbel_topk(key, scores, min(k, scores.shape[-1]), where=candidate_valid)
    hard = jax.nn.one_hot(indices, scores.shape[-1], dtype=scores.dtype).sum(-2)
    return jnp.where(candidate_valid, hard, 0.0)


def g_rerank_loss(key, scores, reader, memory, answer_ids, answer_mask, *,
                  candidate_valid, k: int, tau: float = 0.5, kappa: float = 1.0,
                  num_samples: int = 1, relaxation: Relaxation = "l2x"):
    """Mean over questions (and Gumbel draws) of the answer's per-token NLL under the mask.

    Args:
      key: one PRNG key for the batch, or ``[batch]`` per-question keys.
      scores: ``[batch, docs]`` reranker scores; the only input that carries a gradient.
      reader: a frozen reader (``gumbel_jax.models.reader.Reader``, e.g. ``FiDReader``).
      memory: the reader's encoded passages for the batch (``Reader.encode``: computed once
        and shared by every draw).
      answer_ids, answer_mask: ``[batch, tgt_len]`` gold answers.
      candidate_valid: ``[batch, docs]`` boolean, False for padded candidates.
      k, tau, kappa: relaxed top-k settings (paper: k = 5, tau = 0.5, kappa = 1).
      num_samples: Gumbel draws per question; the decoder runs once per draw on the shared
        encoder output.
      relaxation: see :func:`document_log_mask`.

    Returns:
      scalar float32 loss.
    """
    tokens = jnp.maximum(answer_mask.sum(-1), 1)

    def one_draw(draw_key):
        log_mask = document_log_mask(draw_key, scores, k, tau=tau, kappa=kappa,
                                     candidate_valid=candidate_valid, relaxation=relaxation)
        log_probs = reader.token_log_probs(memory, answer_ids, answer_mask, log_mask)
        return -(log_probs.sum(-1) / tokens).mean()

    if num_samples == 1:
        return one_draw(key)
    if _is_batched_key(key):  # [batch] -> [samples, batch]
        draw_keys = jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num_samples))(key),
                                 0, 1)
    else:
        draw_keys = jax.random.split(key, num_samples)
    return jax.vmap(one_draw)(draw_keys).mean()


# --- Baselines (Atlas semantics; Izacard et al., 2023) -----------------------------------
# Each trains the reranker on a target computed from the frozen reader; the reader terms
# carry no gradient. theta is the reranker's softmax temperature, temperature the target's.


def _masked_log_softmax(logits, valid):
    logits = jnp.where(valid, logits, ops.mask_value(logits.dtype))
    return jnp.where(valid, jax.nn.log_softmax(logits, axis=-1), 0.0)


def _kl_to_reranker(target_logits, scores, valid, theta):
    """KL(softmax(target_logits) || softmax(scores / theta)) over valid candidates, mean over
    the batch; the target carries no gradient."""
    target_log = jax.lax.stop_gradient(_masked_log_softmax(target_logits, valid))
    predicted_log = _masked_log_softmax(scores / theta, valid)
    target = jnp.where(valid, jnp.exp(target_log), 0.0)
    return (target * (target_log - predicted_log)).sum(-1).mean()


def per_document_token_log_probs(reader, memory, answer_ids, answer_mask):
    """log p(answer token | question, passage i read alone): ``[batch, docs, tgt_len]``.

    Each passage becomes its own one-passage question (``Memory.split_documents``: passages
    are encoded independently, so the encoder output is reused, not recomputed)."""
    num_docs = memory.num_docs
    repeat = lambda x: jnp.repeat(x, num_docs, axis=0)
    log_probs = reader.token_log_probs(memory.split_documents(), repeat(answer_ids),
                                       repeat(answer_mask))
    return jax.lax.stop_gradient(log_probs.reshape(memory.batch_size, num_docs, -1))


def emdr_loss(scores, per_doc_log_probs, answer_mask, candidate_valid, *, theta=0.01):
    r"""EMDR: :math:`-\sum_t \log \sum_i \mathrm{softmax}(w/\theta)_i\, p(a_t | q, d_i)`,
    averaged over answer tokens and questions.

    Args:
      scores: ``[batch, docs]``; per_doc_log_probs: ``[batch, docs, tgt_len]`` (no gradient).
    """
    prior = _masked_log_softmax(scores / theta, candidate_valid)[..., None]
    joint = jnp.where(candidate_valid[..., None], prior + per_doc_log_probs,
                      ops.mask_value(scores.dtype))
    per_token = jax.nn.logsumexp(joint, axis=1)  # [batch, tgt_len]
    tokens = jnp.maximum(answer_mask.sum(-1), 1)
    return -(jnp.where(answer_mask, per_token, 0.0).sum(-1) / tokens).mean()


def pdist_loss(scores, per_doc_log_probs, answer_mask, candidate_valid, *, theta=0.01,
               temperature=0.01):
    """PDist: target ∝ exp(mean-token log p(a | q, d_i) / temperature); KL to the reranker."""
    tokens = jnp.maximum(answer_mask.sum(-1), 1)[:, None]
    mean_log_prob = jnp.where(answer_mask[:, None], per_doc_log_probs, 0.0).sum(-1) / tokens
    return _kl_to_reranker(mean_log_prob / temperature, scores, candidate_valid, theta)


def leave_one_out_losses(reader, memory, answer_ids, answer_mask, candidate_valid):
    """Answer NLL (mean over tokens) with all passages but ``i``: ``[batch, docs]``."""
    num_docs = candidate_valid.shape[-1]
    tokens = jnp.maximum(answer_mask.sum(-1), 1)

    def without(i):
        drop = jax.nn.one_hot(i, num_docs, dtype=bool)[None]
        log_mask = jnp.where(drop | ~candidate_valid, ops.mask_value(jnp.float32), 0.0)
        log_probs = reader.token_log_probs(memory, answer_ids, answer_mask, log_mask)
        return -log_probs.sum(-1) / tokens

    return jax.lax.stop_gradient(jax.lax.map(without, jnp.arange(num_docs)).T)


def loop_loss(scores, losses_without, candidate_valid, *, theta=0.01, temperature=0.01):
    """LOOP: a passage whose removal hurts the answer most gets the most target mass:
    target ∝ exp(loss_without_i / temperature); KL to the reranker."""
    return _kl_to_reranker(losses_without / temperature, scores, candidate_valid, theta)


def adist_loss(scores, attention_mass, candidate_valid, *, theta=0.01):
    """ADist: the target is the frozen reader's cross-attention mass per passage (averaged
    over layers, heads and answer tokens); KL to the reranker."""
    log_mass = jnp.log(jnp.maximum(attention_mass, jnp.finfo(jnp.float32).tiny))
    return _kl_to_reranker(log_mass, scores, candidate_valid, theta)


def supervised_loss(scores, gold, candidate_valid):
    """Cross-entropy to the uniform distribution over gold passages (an upper reference where
    labels exist); questions without a gold passage contribute 0."""
    log_probs = _masked_log_softmax(scores, candidate_valid)
    gold = gold & candidate_valid
    count = gold.sum(-1)
    per_question = -jnp.where(gold, log_probs, 0.0).sum(-1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, per_question, 0.0).mean()
