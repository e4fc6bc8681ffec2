"""Training objectives for the reranker. G-Rerank: reranker scores -> relaxed top-k mask ->
the frozen reader's document-masked cross-attention -> NLL of the gold answer."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from gumbel_jax import ops

Relaxation = Literal["l2x", "subset", "no_noise", "straight_through"]


def document_log_mask(key, scores, k: int, *, tau: float, kappa: float, candidate_valid,
                      relaxation: Relaxation = "l2x"):
    """The per-document log mask used for training, ``[batch, docs]``.

    ``l2x`` is the paper's relaxed top-k; the others are ablations: ``subset`` (Xie & Ermon),
    ``no_noise`` (the same max-of-k construction without Gumbel noise collapses to one
    softmax, so it is the deterministic ``softmax(kappa * scores / tau)`` mask) and
    ``straight_through`` (the Gumbel-top-k hard mask forward, the relaxed mask's gradient).
    """
    if relaxation == "l2x":
        return ops.log_relaxed_topk(key, scores, k, tau=tau, kappa=kappa, where=candidate_valid)
    if relaxation == "subset":
        mask = ops.subset_topk(key, scores, k, tau=tau, kappa=kappa, where=candidate_valid)
        return ops.mask_to_log_mask(mask)
    if relaxation == "no_noise":
        logits = jnp.where(candidate_valid, kappa * scores / tau, ops.mask_value(scores.dtype))
        log_mask = jax.nn.log_softmax(logits, axis=-1)
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


def g_rerank_loss(key, scores, reader, memory, memory_valid, answer_ids, answer_mask, *,
                  candidate_valid, k: int, tau: float = 0.5, kappa: float = 1.0,
                  num_samples: int = 1, relaxation: Relaxation = "l2x"):
    """Mean over questions (and Gumbel draws) of the answer's per-token NLL under the mask.

    Args:
      key: PRNG key for this batch (per-question keys are folded in by the caller if wanted).
      scores: ``[batch, docs]`` reranker scores; the only input that carries a gradient.
      reader: a frozen ``FiDReader``.
      memory, memory_valid: the reader's encoder output for the batch (computed once and
        shared by every draw).
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
        log_probs = reader.token_log_probs(memory, memory_valid, answer_ids, answer_mask,
                                           log_mask)
        return -(log_probs.sum(-1) / tokens).mean()

    if num_samples == 1:
        return one_draw(key)
    return jax.vmap(one_draw)(jax.random.split(key, num_samples)).mean()
