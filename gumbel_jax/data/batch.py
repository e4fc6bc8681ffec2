"""The batch: one definition of the arrays a training or evaluation step reads.

The input pipeline hands grain plain dicts (grain batches and checkpoints them as such);
every step turns them into a :class:`Batch` on entry (``Batch.of``), so a misspelt or
missing field is an error naming it, and code reads ``batch.reader_ids`` rather than string
keys. The featurizer builds its examples through :class:`Batch` too, so the fields are
defined here alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flax import struct


@struct.dataclass
class Batch:
    """``batch`` questions, each with ``docs`` candidate passages (shapes below; one
    featurised example has the same fields without the leading ``batch``).

    Attributes:
      reader_ids: int32 ``[batch, docs, reader_len]`` (question, passage) tokens for the
        reader (FiD's template).
      reader_mask: bool, same shape; a padded candidate is all False.
      ranker_ids: int32 ``[batch, docs, ranker_len]`` tokens for the reranker.
      ranker_mask: bool, same shape.
      doc_valid: bool ``[batch, docs]``, False for padded candidates.
      answer_ids: int32 ``[batch, answer_len]`` the gold answer, EOS included.
      answer_mask: bool, same shape.
      gold: bool ``[batch, docs]`` gold passages (evaluation and the supervised reference).
      indirect: bool ``[batch, docs]`` gold passages without the answer (multi-hop bridges).
      example_id: int32 ``[batch]`` stable per-question ids (per-example Gumbel keys).
    """

    reader_ids: Any
    reader_mask: Any
    ranker_ids: Any
    ranker_mask: Any
    doc_valid: Any
    answer_ids: Any
    answer_mask: Any
    gold: Any
    indirect: Any
    example_id: Any

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def of(cls, arrays: Batch | Mapping) -> Batch:
        """A ``Batch`` from itself or from a mapping with exactly its fields (a pipeline
        batch); missing or unknown keys are an error that names them."""
        if isinstance(arrays, cls):
            return arrays
        missing = [name for name in cls.fields() if name not in arrays]
        unknown = sorted(set(arrays) - set(cls.fields()))
        if missing or unknown:
            raise ValueError(f"not a batch: missing {missing}, unknown {unknown}; the fields "
                             f"are {list(cls.fields())} (gumbel_jax.data.batch.Batch)")
        return cls(**{name: arrays[name] for name in cls.fields()})

    def to_dict(self) -> dict[str, Any]:
        """The pipeline's form (grain batches and checkpoints dicts)."""
        return {name: getattr(self, name) for name in self.fields()}
