"""From per-document masks to the additive attention bias the reader's cross-attention reads."""

from __future__ import annotations

import jax.numpy as jnp

from gumbel_jax.ops._checks import mask_value


def mask_to_log_mask(mask):
    """Log of a nonnegative per-document mask, with exact zeros mapped to ``mask_value``.

    Use it for masks that are not produced in log space: a hard :func:`topk_mask` or a
    :func:`subset_topk` mask. Zeros get zero gradient (no NaN from log(0)).

    Args:
      mask: ``[..., docs]`` nonnegative floats.

    Returns:
      ``[..., docs]`` in the dtype of ``mask``.

    Examples:
      >>> import jax.numpy as jnp
      >>> mask_to_log_mask(jnp.array([1.0, 0.0]))[0].item()
      0.0
    """
    mask = jnp.asarray(mask)
    positive = mask > 0
    # The inner where keeps log's argument positive so the gradient at zeros is 0, not NaN.
    log_mask = jnp.log(jnp.where(positive, mask, 1.0))
    return jnp.where(positive, log_mask, mask_value(mask.dtype))


def document_bias(doc_log_mask, key_doc_ids, key_valid=None):
    r"""Additive attention bias that multiplies attention to document :math:`i` by :math:`M_i`.

    Adding :math:`\log M_i` to the logits of every key of document :math:`i` (all heads, all
    queries) and renormalising is the paper's differentiable masked attention; with a 0/1 mask
    it equals attending to the selected documents only. The log mask is capped at 0 (a
    document never gets more than full attention, which matters for :func:`subset_topk`
    masks) and floored at ``mask_value`` so the bias is always finite.

    Args:
      doc_log_mask: ``[..., docs]`` per-document log mask.
      key_doc_ids: ``[..., keys]`` (or ``[keys]``, shared by the batch) int document index of
        every key token; ids outside ``[0, docs)`` (use -1 for padding) are masked.
      key_valid: optional ``[..., keys]`` (or ``[keys]``) boolean, False for padded keys.

    Returns:
      ``[..., 1, 1, keys]`` bias in the dtype of ``doc_log_mask``, broadcastable to
      ``[..., heads, queries, keys]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> bias = document_bias(jnp.array([[0.0, -1.0]]), jnp.array([0, 0, 1, -1]))
      >>> bias.shape, bias[0, 0, 0, :3].tolist()
      ((1, 1, 1, 4), [0.0, 0.0, -1.0])
    """
    doc_log_mask = jnp.asarray(doc_log_mask)
    key_doc_ids = jnp.asarray(key_doc_ids)
    if doc_log_mask.ndim < 1 or not jnp.issubdtype(doc_log_mask.dtype, jnp.floating):
        raise ValueError(f"doc_log_mask must be float [..., docs], got {doc_log_mask.shape} "
                         f"{doc_log_mask.dtype}")
    if not jnp.issubdtype(key_doc_ids.dtype, jnp.integer):
        raise ValueError(f"key_doc_ids must be integer, got {key_doc_ids.dtype}")
    batch_shape = doc_log_mask.shape[:-1]
    num_docs = doc_log_mask.shape[-1]
    if key_doc_ids.ndim != 1 and key_doc_ids.shape[:-1] != batch_shape:
        raise ValueError(
            f"key_doc_ids must be [keys] or [{', '.join(map(str, batch_shape))}, keys] to match "
            f"doc_log_mask {doc_log_mask.shape}, got {key_doc_ids.shape}"
        )
    num_keys = key_doc_ids.shape[-1]
    ids = jnp.broadcast_to(key_doc_ids, (*batch_shape, num_keys))
    if key_valid is not None and jnp.shape(key_valid) not in ((num_keys,), ids.shape):
        raise ValueError(f"key_valid must be [keys] or {ids.shape}, got {jnp.shape(key_valid)}")
    neg = mask_value(doc_log_mask.dtype)
    capped = jnp.clip(doc_log_mask, neg, 0.0)
    in_range = (ids >= 0) & (ids < num_docs)
    bias = jnp.take_along_axis(capped, jnp.clip(ids, 0, num_docs - 1), axis=-1)
    keep = in_range if key_valid is None else in_range & jnp.asarray(key_valid, bool)
    bias = jnp.where(keep, bias, neg)
    return bias[..., None, None, :]
