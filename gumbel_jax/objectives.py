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


# --- Baselines, as Atlas computes them (Izacard et al., 2023; facebookresearch/atlas) ----
# Each trains the reranker on a target computed from the frozen reader; the reader terms
# carry no gradient. theta is Atlas's temperature_score (the reranker's softmax temperature),
# temperature_gold its temperature of the target. The defaults reproduce Atlas; every other
# choice is a named setting (docs/baselines.md lists them and why they exist).

# "atlas": the reductions of Atlas (EMDR: mean over every answer token of the batch; KL
# forms: torch.nn.KLDivLoss()'s "mean", over batch x passages). "per_question": each
# question's loss (mean over its tokens / KL summed over its passages), then the mean over
# questions (this project's reduction before it followed Atlas; KLDivLoss's "batchmean").
Reduction = Literal["atlas", "per_question"]
# ADist's signal: "value_norm_sum" is Atlas's evalnormsum; "attention_mass" the plain
# cross-attention mass used as the target distribution itself (no temperature).
AdistSignal = Literal["value_norm_sum", "attention_mass"]
# Atlas's fid.py divides the summed cross-attention statistic by a fixed 256 (besides the
# layers and answer tokens): a scale temperature_gold sees, so it is kept.
ATLAS_ATTENTION_DIVISOR = 256.0


def _masked_log_softmax(logits, valid):
    logits = jnp.where(valid, logits, ops.mask_value(logits.dtype))
    return jnp.where(valid, jax.nn.log_softmax(logits, axis=-1), 0.0)


def _check_reduction(reduction):
    if reduction not in ("atlas", "per_question"):
        raise ValueError(f"unknown reduction {reduction!r}; expected atlas or per_question")


def _kl_to_reranker(target_logits, scores, valid, theta, reduction: Reduction):
    r"""Atlas's ``kldivloss`` with the target already divided by its temperature:
    :math:`\sum_i p_i (\log p_i - \log \mathrm{softmax}(s/\theta)_i)`, ``p =
    softmax(target_logits)`` over a question's valid candidates (no gradient), reduced as
    ``reduction`` says ("atlas": divided by every ``[batch, docs]`` entry, padded
    candidates counted as the zero terms they are; "per_question": mean over questions).

    Args:
      target_logits, scores: ``[batch, docs]``; valid: ``[batch, docs]`` boolean.
    """
    _check_reduction(reduction)
    target_log = jax.lax.stop_gradient(_masked_log_softmax(target_logits, valid))
    predicted_log = _masked_log_softmax(scores / theta, valid)
    target = jnp.where(valid, jnp.exp(target_log), 0.0)
    terms = target * (target_log - predicted_log)
    return terms.mean() if reduction == "atlas" else terms.sum(-1).mean()


def per_document_token_log_probs(reader, memory, answer_ids, answer_mask, *,
                                 temperature_gold: float = 1.0):
    """log softmax(logits / temperature_gold) at each gold answer token with passage ``i``
    read alone: ``[batch, docs, tgt_len]`` (no gradient). ``temperature_gold = 1`` gives
    the reader's own log-probabilities (PDist); EMDR uses its temperature, as Atlas does.

    Each passage becomes its own one-passage question (``Memory.split_documents``: passages
    are encoded independently, so the encoder output is reused, not recomputed)."""
    num_docs = memory.num_docs
    repeat = lambda x: jnp.repeat(x, num_docs, axis=0)
    log_probs = reader.token_log_probs(memory.split_documents(), repeat(answer_ids),
                                       repeat(answer_mask), temperature=temperature_gold)
    return jax.lax.stop_gradient(log_probs.reshape(memory.batch_size, num_docs, -1))


def emdr_loss(scores, per_doc_log_probs, answer_mask, candidate_valid, *, theta=0.01,
              reduction: Reduction = "atlas"):
    r"""EMDR (Atlas's ``logprob``): per answer token :math:`t`,
    :math:`-\log \sum_i \mathrm{softmax}(s/\theta)_i\, p_i(a_t)`, with
    :math:`\log p_i` from :func:`per_document_token_log_probs` (Atlas: at
    ``temperature_gold``).

    Args:
      scores: ``[batch, docs]`` reranker scores.
      per_doc_log_probs: ``[batch, docs, tgt_len]`` (no gradient).
      answer_mask: ``[batch, tgt_len]``; candidate_valid: ``[batch, docs]``.
      theta: Atlas's ``temperature_score``.
      reduction: "atlas" averages over every answer token of the batch (a question weighs
        by its answer length); "per_question" over each question's tokens, then questions.

    Returns:
      scalar float32 loss.
    """
    _check_reduction(reduction)
    prior = _masked_log_softmax(scores / theta, candidate_valid)[..., None]
    joint = jnp.where(candidate_valid[..., None], prior + per_doc_log_probs,
                      ops.mask_value(scores.dtype))
    per_token = jnp.where(answer_mask, jax.nn.logsumexp(joint, axis=1), 0.0)  # [b, tgt]
    if reduction == "atlas":
        return -per_token.sum() / jnp.maximum(answer_mask.sum(), 1)
    tokens = jnp.maximum(answer_mask.sum(-1), 1)
    return -(per_token.sum(-1) / tokens).mean()


def pdist_loss(scores, per_doc_log_probs, answer_mask, candidate_valid, *, theta=0.01,
               temperature_gold=0.01, reduction: Reduction = "atlas"):
    """PDist (Atlas's ``ppmean``): ``g_i`` = mean over answer tokens of log p(a_t | q, d_i)
    (passage ``i`` read alone, vocabulary temperature 1); target softmax(g / temperature_gold);
    KL to softmax(scores / theta). Shapes as :func:`emdr_loss`."""
    tokens = jnp.maximum(answer_mask.sum(-1), 1)[:, None]
    mean_log_prob = jnp.where(answer_mask[:, None], per_doc_log_probs, 0.0).sum(-1) / tokens
    return _kl_to_reranker(mean_log_prob / temperature_gold, scores, candidate_valid, theta,
                           reduction)


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


def loop_loss(scores, losses_without, candidate_valid, *, theta=0.01, temperature_gold=0.01,
              reduction: Reduction = "atlas"):
    """LOOP (Atlas's ``loop``): a passage whose removal hurts the answer most gets the most
    target mass: target softmax(loss_without_i / temperature_gold); KL to the reranker.

    Args:
      losses_without: ``[batch, docs]`` from :func:`leave_one_out_losses`.
    """
    return _kl_to_reranker(losses_without / temperature_gold, scores, candidate_valid, theta,
                           reduction)


def adist_loss(scores, attention, candidate_valid, *, theta=0.01, temperature_gold=0.01,
               adist_signal: AdistSignal = "value_norm_sum", reduction: Reduction = "atlas"):
    """ADist: KL from a cross-attention target to the reranker.

    Args:
      scores: ``[batch, docs]``.
      attention: ``[batch, docs]`` from ``Reader.document_attention`` (no gradient):
        ``value_weighted=True`` for "value_norm_sum", the plain mass for "attention_mass".
      adist_signal: "value_norm_sum" is Atlas's ``evalnormsum``: ``g = attention / 256``
        (Atlas's divisor), target softmax(g / temperature_gold). "attention_mass": the
        target is the attention mass itself (temperature_gold does not enter).
    """
    if adist_signal == "value_norm_sum":
        target_logits = attention / ATLAS_ATTENTION_DIVISOR / temperature_gold
    elif adist_signal == "attention_mass":
        target_logits = jnp.log(jnp.maximum(attention, jnp.finfo(jnp.float32).tiny))
    else:
        raise ValueError(f"unknown adist_signal {adist_signal!r}; expected value_norm_sum "
                         "or attention_mass")
    return _kl_to_reranker(target_logits, scores, candidate_valid, theta, reduction)


def supervised_loss(scores, gold, candidate_valid):
    """Cross-entropy to the uniform distribution over gold passages (an upper reference where
    labels exist); questions without a gold passage contribute 0."""
    log_probs = _masked_log_softmax(scores, candidate_valid)
    gold = gold & candidate_valid
    count = gold.sum(-1)
    per_question = -jnp.where(gold, log_probs, 0.0).sum(-1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, per_question, 0.0).mean()
