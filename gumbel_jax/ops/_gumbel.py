"""Gumbel noise and the samplers built directly on it: Gumbel-softmax and Gumbel-top-k."""

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


def sample_gumbel(key, shape, dtype=jnp.float32):
    r"""Standard Gumbel(0, 1) noise, :math:`G = -\log(-\log U)` with :math:`U \sim U(0, 1)`.

    The uniform draw is always float32 on the open interval (tiny, 1) and the result is cast
    to ``dtype`` afterwards, so bfloat16 noise has the float32 law rounded to bfloat16 rather
    than the coarse law of a bfloat16 uniform, and is never infinite.

    Args:
      key: a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
      shape: output shape.
      dtype: floating output dtype.

    Returns:
      Array of ``shape`` and ``dtype``, finite everywhere.

    Examples:
      >>> import jax
      >>> g = sample_gumbel(jax.random.key(0), (3,))
      >>> g.shape, g.dtype
      ((3,), dtype('float32'))
    """
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be floating point, got {dtype}")
    tiny = jnp.finfo(jnp.float32).tiny
    uniform = jax.random.uniform(key, shape, jnp.float32, minval=tiny, maxval=1.0)
    return (-jnp.log(-jnp.log(uniform))).astype(dtype)


def _masked_logits(logits, valid):
    """Logits in compute dtype, invalid entries replaced by a finite large negative value."""
    dtype = compute_dtype(logits)
    return jnp.where(valid, jnp.asarray(logits, dtype), mask_value(dtype))


def gumbel_softmax(key, logits, *, tau=1.0, hard: bool = False, where=None):
    r"""Gumbel-softmax (Concrete) relaxation of one categorical draw over the last axis.

    .. math:: y = \mathrm{softmax}((\ell + G) / \tau)

    With ``hard=True`` the forward value is the one-hot of :math:`\arg\max(\ell + G)` and the
    gradient is that of the soft sample (straight-through estimator).

    Args:
      key: PRNG key.
      logits: ``[..., n]`` unnormalised log-probabilities.
      tau: temperature > 0.
      hard: straight-through one-hot output.
      where: optional ``[..., n]`` boolean mask of valid candidates.

    The noise is ``sample_gumbel(key, logits.shape)``: the same key gives the same draw.

    Returns:
      ``[..., n]`` in the dtype of ``logits``; each row sums to 1 over valid candidates,
      invalid candidates are exactly 0 (a row with no valid candidate is all 0).

    References:
      Jang, Gu & Poole (2017); Maddison, Mnih & Teh (2017).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> y = gumbel_softmax(jax.random.key(0), jnp.zeros(4), tau=0.5)
      >>> bool(jnp.isclose(y.sum(), 1.0))
      True
    """
    check_candidates(logits, where, name="logits")
    check_positive(tau, "tau")
    valid = valid_or_all(logits, where)
    dtype = compute_dtype(logits)
    noise = sample_gumbel(key, jnp.shape(logits), dtype)
    perturbed = jnp.where(valid, (jnp.asarray(logits, dtype) + noise) / tau, mask_value(dtype))
    soft = jnp.where(valid, jax.nn.softmax(perturbed, axis=-1), 0.0)
    if hard:
        index = jnp.argmax(perturbed, axis=-1)
        one_hot = jax.nn.one_hot(index, jnp.shape(logits)[-1], dtype=dtype)
        one_hot = jnp.where(valid, one_hot, 0.0)
        soft = soft + jax.lax.stop_gradient(one_hot - soft)
    return soft.astype(jnp.result_type(logits))


def gumbel_topk(key, scores, k: int, *, where=None):
    r"""Exact sample of ``k`` distinct candidates from the Plackett–Luce law of ``scores``.

    The indices of the ``k`` largest :math:`s_i + G_i` (the Gumbel-top-k trick) are an ordered
    sample without replacement with :math:`P(i_1) = \mathrm{softmax}(s)_{i_1}`, then
    renormalised over what remains.

    Args:
      key: PRNG key.
      scores: ``[..., n]`` logits.
      k: number of candidates to draw, ``1 <= k <= n``.
      where: optional ``[..., n]`` boolean mask of valid candidates.

    Returns:
      ``[..., k]`` int32 indices in sampling order. Valid candidates always come before
      invalid ones, so an invalid index appears only when a row has fewer than ``k`` valid
      candidates (check with ``jnp.take_along_axis(where, indices, -1)``).

    References:
      Kool, van Hoof & Welling (2019), "Stochastic Beams and Where to Find Them".

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> idx = gumbel_topk(jax.random.key(0), jnp.zeros(5), 3)
      >>> idx.shape, len(set(idx.tolist()))
      ((3,), 3)
    """
    check_candidates(scores, where)
    check_k(k, jnp.shape(scores)[-1], allow_more=False)
    valid = valid_or_all(scores, where)
    noise = sample_gumbel(key, jnp.shape(scores), compute_dtype(scores))
    # Valid perturbed scores are finite and far above mask_value, so they always rank first.
    perturbed = _masked_logits(scores, valid) + jnp.where(valid, noise, 0.0)
    _, indices = jax.lax.top_k(jax.lax.stop_gradient(perturbed), k)
    return indices.astype(jnp.int32)
