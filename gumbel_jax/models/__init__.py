"""Flax NNX models: T5 / FiD reader with document-masked cross-attention, and rerankers."""

from gumbel_jax.models.attention import document_masked_attention, dot_attention
from gumbel_jax.models.bert import BertConfig, BertEncoder, CrossEncoder, mean_pooled_embedding
from gumbel_jax.models.fid import FiDReader, fid_passage_text
from gumbel_jax.models.inputs import tokenize_cross_encoder, tokenize_passages
from gumbel_jax.models.rankt5 import RANKT5_SCORE_TOKEN_ID, RankT5, rankt5_text
from gumbel_jax.models.reader import Memory, Reader
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder, shift_right

__all__ = [
    "RANKT5_SCORE_TOKEN_ID",
    "BertConfig",
    "BertEncoder",
    "CrossEncoder",
    "FiDReader",
    "Memory",
    "RankT5",
    "Reader",
    "T5Config",
    "T5EncoderDecoder",
    "document_masked_attention",
    "dot_attention",
    "fid_passage_text",
    "mean_pooled_embedding",
    "rankt5_text",
    "shift_right",
    "tokenize_cross_encoder",
    "tokenize_passages",
]
