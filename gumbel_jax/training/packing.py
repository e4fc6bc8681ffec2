"""Packing the trained reranker's encoder, with the capacity chosen per batch on the host
(``model.reranker_packing_bucket``; issue 17's padding lever for the model that trains).

The frozen reader packs inside its step (``T5EncoderDecoder.encode`` with a ``lax.cond``
fallback to the padded path). The reranker cannot: under a gradient the cond keeps both
paths' activations (out of memory at the paper's batch 32). Here the host counts each
batch's real reranker tokens before the batch goes to the devices, rounds the count up to
the next multiple of ``width`` (a fraction of the batch's token slots), and runs the step
compiled for that capacity with ``RankT5.capacity_checked``: the packed path only. A
training run compiles one step per capacity its batches need (a few: real-token shares of a
dataset's batches vary little); a batch with almost no padding runs the padded step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from flax import nnx


class PlannedBatch(NamedTuple):
    """A placed batch and the reranker capacity the host chose for it (0.0: padded)."""

    batch: Any
    capacity: float


def capacity_bucket(real_tokens: int, slots: int, width: float) -> float:
    """The smallest multiple of ``width`` whose share of ``slots`` holds ``real_tokens``;
    0.0 (the padded step) when that share would be the whole batch.

    >>> capacity_bucket(700, 1000, 0.05)
    0.7
    >>> capacity_bucket(701, 1000, 0.05)
    0.75
    >>> capacity_bucket(990, 1000, 0.05)
    0.0
    """
    if not 0.0 < width < 1.0:
        raise ValueError(f"reranker_packing_bucket={width} must be in (0, 1) (the bucket width)")
    buckets = math.ceil(real_tokens / slots / width - 1e-9)  # 1e-9: 0.7 / 0.05 is 13.99..
    share = round(max(buckets, 1) * width, 10)
    return share if share < 1.0 and math.ceil(share * slots) < slots else 0.0


def host_capacity(batch: dict, width: float, groups: int = 1) -> float:
    """:func:`capacity_bucket` of a host batch's reranker tokens (``ranker_mask``): the
    fullest of its ``groups`` consecutive blocks of questions (each packs on its own, one per
    device of the mesh's batch axes) sets the capacity."""
    mask = np.asarray(batch["ranker_mask"]).reshape(groups, -1)
    return capacity_bucket(int(mask.sum(axis=1).max()), mask.shape[1], width)


def graph_with(module, **attributes):
    """``module``'s graph with these (static) attributes set; the module is left as it was.
    Attributes are part of the graph, so each setting is its own compiled program."""
    saved = {name: getattr(module, name) for name in attributes}
    try:
        for name, value in attributes.items():
            setattr(module, name, value)
        return nnx.split(module)[0]
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def packed_graph(ranker, capacity: float, groups: int = 1):
    """The reranker's graph packing its encoder at ``capacity`` with no fallback
    (``RankT5.capacity_checked``; 0.0: padded), each of ``groups`` blocks on its own."""
    return graph_with(ranker, token_capacity=capacity, capacity_checked=capacity > 0,
                      packing_groups=groups)


class PackedRankerSteps:
    """The reranker's train step per capacity, compiled on first use.

    Args:
      ranker: the RankT5 being trained (left as it is: see :func:`graph_with`).
      make_step: ``graph -> train_step`` (``loop._optimizer_and_step``'s step for that graph).
      groups: the packing groups (``sharding.batch_shards`` of the mesh).
    """

    def __init__(self, ranker, make_step, groups: int = 1):
        self.ranker, self.make_step, self.groups, self.steps = ranker, make_step, groups, {}

    def graph(self, capacity: float):
        """:func:`packed_graph` of the reranker at ``capacity``."""
        return packed_graph(self.ranker, capacity, self.groups)

    def __call__(self, capacity: float):
        if capacity not in self.steps:
            self.steps[capacity] = self.make_step(self.graph(capacity))
        return self.steps[capacity]
