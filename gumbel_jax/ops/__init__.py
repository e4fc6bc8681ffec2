"""Pure, jittable JAX ops of Gumbel Reranking: Gumbel sampling, relaxed top-k, document masks.

Candidates lie along the last axis and leading axes are batch. Every op accepts an optional
boolean ``where`` mask of valid candidates and keeps values and gradients finite.
"""

from gumbel_jax.ops._checks import mask_value
from gumbel_jax.ops._gumbel import gumbel_softmax, gumbel_topk, sample_gumbel
from gumbel_jax.ops._masks import document_bias, mask_to_log_mask
from gumbel_jax.ops._topk import (
    log_relaxed_topk,
    log_relaxed_topk_from_noise,
    relaxed_topk,
    subset_topk,
    topk_mask,
)

__all__ = [
    "document_bias",
    "gumbel_softmax",
    "gumbel_topk",
    "log_relaxed_topk",
    "log_relaxed_topk_from_noise",
    "mask_to_log_mask",
    "mask_value",
    "relaxed_topk",
    "sample_gumbel",
    "subset_topk",
    "topk_mask",
]
