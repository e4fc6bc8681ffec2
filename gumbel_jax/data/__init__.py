"""Data: the record schema, readers for the official dataset formats with validation, the
synthetic multi-hop world, prompt templates, and the input pipeline (``data.pipeline``;
one question at a time: ``data.inputs``)."""

from gumbel_jax.data.formats import CONVERTERS
from gumbel_jax.data.reading import read_records
from gumbel_jax.data.records import Passage, Record
from gumbel_jax.data.templates import cross_encoder_pair, fid_passage_text, rankt5_text
from gumbel_jax.data.validation import DataError, Problem, RecordError, ValidationReport

__all__ = [
    "CONVERTERS",
    "DataError",
    "Passage",
    "Problem",
    "Record",
    "RecordError",
    "ValidationReport",
    "cross_encoder_pair",
    "fid_passage_text",
    "rankt5_text",
    "read_records",
]
