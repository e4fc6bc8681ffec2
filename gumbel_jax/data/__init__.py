"""Data: the record schema, readers for the official dataset formats with validation, the
synthetic multi-hop world, and the input pipeline."""

from gumbel_jax.data.formats import CONVERTERS
from gumbel_jax.data.reading import read_records
from gumbel_jax.data.records import Passage, Record
from gumbel_jax.data.validation import DataError, Problem, RecordError, ValidationReport

__all__ = [
    "CONVERTERS",
    "DataError",
    "Passage",
    "Problem",
    "Record",
    "RecordError",
    "ValidationReport",
    "read_records",
]
