"""Top-k over candidates: the paper's relaxed top-k (L2X), its log-space twin, the Xie & Ermon
subset relaxation (an ablation) and the deterministic hard top-k used at inference."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gumbel_jax.ops._checks import (
    check_candidates,
    check_k,
    check_positive,
    compute_dtype,
    mask_value,
    valid_or_all,
)
from gumbel_jax.ops._gumbel import sample_gumbel

# Floor inside log(1 - p) of the subset relaxation, as in Xie & Ermon's reference code: a
# candidate already taken with probability 1 gets a large finite penalty, never log(0).
_SUBSET_EPSILON = 1e-20


def log_relaxed_topk_from_noise(scores, noise, *, tau, kappa, valid):
    r"""The log relaxed top-k mask for given noise; float32 ``[..., n]``.

    ``noise`` has shape ``[k, ..., n]``: one Gumbel vector per draw. Exposed so that callers
    (and tests) can fix the noise, e.g. to check permutation equivariance or to reuse draws.
    Computes in float32 (or float64 for float64 scores) and returns that dtype.
    """
    dtype = compute_dtype(scores)
    scaled = kappa * jnp.asarray(scores, dtype)[None]
    # Mask after dividing by tau, so a tiny tau cannot turn the mask value into -inf.
    perturbed = jnp.where(valid[None], (scaled + noise.astype(dtype)) / tau, mask_value(dtype))
    draws = jax.nn.log_softmax(perturbed, axis=-1)  # [k, ..., n]
    # The max over draws, taken by index rather than with jnp.max: max's gradient divides by
    # the count of entries equal to the maximum, and under jit XLA may recompute the draws
    # in two fusions that round differently, so that count can be 0 (inf / NaN gradients,
    # seen on CPU at tau = 0.1). Selecting the argmax routes the gradient to the winning
    # draw, which is max's gradient whenever the maximum is unique.
    best = jnp.argmax(draws, axis=0)
    log_mask = jnp.take_along_axis(draws, best[None], axis=0)[0]
    return jnp.where(valid, log_mask, mask_value(dtype))


def log_relaxed_topk(key, scores, k: int, *, tau=0.5, kappa=1.0, where=None):
    r"""Log of the paper's relaxed top-k mask, computed stably in log space.

    .. math::
       \log \hat M_i = \max_{j=1..k} \log \mathrm{softmax}\big((\kappa w + G^{(j)})/\tau\big)_i

    with :math:`k` independent Gumbel vectors :math:`G^{(j)}` (the noise is
    ``sample_gumbel(key, (k, *scores.shape))``, row ``j`` for draw ``j``). This is what the reader's
    document bias consumes (:func:`document_bias`): a log mask of 0 is full attention.

    Args:
      key: PRNG key; the same key gives the same noise.
      scores: ``[..., n]`` reranker scores :math:`w`.
      k: number of relaxed draws (the top-k size).
      tau: temperature > 0 (paper default 0.5).
      kappa: score scale (paper default 1.0).
      where: optional ``[..., n]`` boolean mask of valid candidates.

    Returns:
      ``[..., n]`` in the dtype of ``scores``: values in (-inf, 0] for valid candidates, and
      ``mask_value(dtype)`` (finite, half the dtype's lowest value) for invalid ones, whose
      gradient is exactly 0.

    References:
      Huang et al. (2025), Gumbel Reranking, Eq. for the relaxed top-k;
      Chen et al. (2018), "Learning to Explain" (L2X).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> log_m = log_relaxed_topk(jax.random.key(0), jnp.array([2.0, 0.0, -1.0]), 2)
      >>> bool((log_m <= 0).all())
      True
    """
    check_candidates(scores, where)
    check_k(k, jnp.shape(scores)[-1])
    check_positive(tau, "tau")
    valid = valid_or_all(scores, where)
    noise = sample_gumbel(key, (k, *jnp.shape(scores)), compute_dtype(scores))
    log_mask = log_relaxed_topk_from_noise(scores, noise, tau=tau, kappa=kappa, valid=valid)
    dtype = jnp.result_type(scores)
    return jnp.where(valid, log_mask, mask_value(dtype)).astype(dtype)


def relaxed_topk(key, scores, k: int, *, tau=0.5, kappa=1.0, where=None):
    r"""The paper's relaxed top-k mask: element-wise max of ``k`` Gumbel-softmax draws.

    .. math::
       \hat M_i = \max_{j=1..k} \mathrm{softmax}\big((\kappa w + G^{(j)})/\tau\big)_i

    The draws are independent (sampling *with* replacement), so as :math:`\tau \to 0` the mask
    is the indicator of the union of ``k`` categorical draws from
    :math:`\mathrm{softmax}(\kappa w)` and :math:`E[\hat M_i] \to 1 - (1 - p_i)^k`.

    Args:
      key: PRNG key.
      scores: ``[..., n]`` reranker scores.
      k: number of relaxed draws.
      tau: temperature > 0.
      kappa: score scale.
      where: optional ``[..., n]`` boolean mask of valid candidates.

    Returns:
      ``[..., n]`` in the dtype of ``scores``, values in [0, 1]; invalid candidates exactly 0.
      Equal to ``exp(log_relaxed_topk(...))`` on valid candidates for the same key.

    References:
      Huang et al. (2025); Chen et al. (2018), L2X.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = relaxed_topk(jax.random.key(0), jnp.array([2.0, 0.0, -1.0, 0.5]), 2,
      ...                  where=jnp.array([True, True, True, False]))
      >>> float(m[3])
      0.0
    """
    check_candidates(scores, where)
    check_k(k, jnp.shape(scores)[-1])
    check_positive(tau, "tau")
    valid = valid_or_all(scores, where)
    noise = sample_gumbel(key, (k, *jnp.shape(scores)), compute_dtype(scores))
    log_mask = log_relaxed_topk_from_noise(scores, noise, tau=tau, kappa=kappa, valid=valid)
    return jnp.where(valid, jnp.exp(log_mask), 0.0).astype(jnp.result_type(scores))


def subset_topk(key, scores, k: int, *, tau=0.5, kappa=1.0, where=None):
    r"""Xie & Ermon's relaxed subset sampling: ``k`` successive softmaxes without replacement.

    Starting from :math:`\alpha = \kappa w + G`, step :math:`j` adds
    :math:`\log \max(1 - a^{(j-1)}, \epsilon)` to :math:`\alpha` (suppressing what the
    previous step took) and takes :math:`a^{(j)} = \mathrm{softmax}(\alpha / \tau)`; the mask
    is :math:`\sum_j a^{(j)}`, which sums to ``k`` over valid candidates. The noise is
    ``sample_gumbel(key, scores.shape)``; as ``tau -> 0`` the mask is the hard top-k of
    :math:`\kappa w + G`.

    Unlike :func:`relaxed_topk`, an entry can exceed 1 at moderate ``tau`` (two steps can both
    put weight on one candidate); that is intrinsic to the relaxation. :func:`document_bias`
    caps any log mask at 0, so such a document gets full attention, never more. Used as an
    ablation of the paper's L2X construction.

    Args:
      key: PRNG key.
      scores: ``[..., n]`` scores.
      k: number of steps, ``1 <= k``.
      tau: temperature > 0.
      kappa: score scale.
      where: optional ``[..., n]`` boolean mask of valid candidates.

    Returns:
      ``[..., n]`` in the dtype of ``scores``, entries >= 0, invalid candidates exactly 0.

    References:
      Xie & Ermon (2019), "Reparameterizable Subset Sampling via Continuous Relaxations".

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = subset_topk(jax.random.key(0), jnp.array([1.0, 0.0, -1.0, 2.0]), 2, tau=0.5)
      >>> round(float(m.sum()), 4)
      2.0
    """
    check_candidates(scores, where)
    check_k(k, jnp.shape(scores)[-1])
    check_positive(tau, "tau")
    valid = valid_or_all(scores, where)
    dtype = compute_dtype(scores)
    noise = sample_gumbel(key, jnp.shape(scores), dtype)
    alpha = jnp.where(valid, kappa * jnp.asarray(scores, dtype) + noise, 0.0)

    def step(carry, _):
        alpha, previous = carry
        alpha = alpha + jnp.log(jnp.maximum(1.0 - previous, _SUBSET_EPSILON))
        taken = jax.nn.softmax(jnp.where(valid, alpha / tau, mask_value(dtype)), axis=-1)
        taken = jnp.where(valid, taken, 0.0)
        return (alpha, taken), taken

    _, steps = jax.lax.scan(step, (alpha, jnp.zeros_like(alpha)), None, length=k)
    return steps.sum(axis=0).astype(jnp.result_type(scores))


def topk_mask(scores, k: int, *, where=None):
    """Deterministic hard top-k 0/1 mask (inference): the ``k`` highest valid scores.

    Ties are broken by position (the lower index wins). At most the number of valid
    candidates is selected, so ``k`` may exceed the number of candidates. The result carries
    no gradient.

    Args:
      scores: ``[..., n]`` scores.
      k: how many to select, ``k >= 1``.
      where: optional ``[..., n]`` boolean mask of valid candidates.

    Returns:
      ``[..., n]`` 0/1 mask in the dtype of ``scores``.

    Examples:
      >>> import jax.numpy as jnp
      >>> topk_mask(jnp.array([0.1, 0.9, 0.9, 0.5]), 2).tolist()
      [0.0, 1.0, 1.0, 0.0]
    """
    check_candidates(scores, where)
    check_k(k, jnp.shape(scores)[-1])
    valid = valid_or_all(scores, where)
    num_candidates = jnp.shape(scores)[-1]
    dtype = compute_dtype(scores)
    ranked = jnp.where(valid, jnp.asarray(scores, dtype), -jnp.inf)
    _, indices = jax.lax.top_k(jax.lax.stop_gradient(ranked), min(k, num_candidates))
    chosen = jax.nn.one_hot(indices, num_candidates, dtype=dtype).sum(axis=-2)
    return jnp.where(valid, chosen, 0.0).astype(jnp.result_type(scores))
