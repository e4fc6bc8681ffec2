"""Data: the record schema, readers for the official dataset formats with validation, the
synthetic multi-hop world, prompt templates, and the input pipeline (``data.pipeline``;
one question at a time: ``data.inputs``)."""

from gumbel_jax.data.formats import CONVERTERS, RANKING_LABELS, check_ranking_labels
from gumbel_jax.data.reading import read_records
from gumbel_jax.data.records import Passage, Record
from gumbel_jax.data.templates import cross_encoder_pair, fid_passage_text, rankt5_text
from gumbel_jax.data.validation import DataError, Problem, RecordError, ValidationReport

__all__ = [
    "CONVERTERS",
    "DataError",
    "Passage",
    "Problem",
    "RANKING_LABELS",
    "Record",
    "RecordError",
    "ValidationReport",
    "check_ranking_labels",
    "cross_encoder_pair",
    "fid_passage_text",
    "rankt5_text",
    "read_records",
]
