"""Flax NNX models: T5 / FiD and CEPE (Llama-2) readers with document-masked
cross-attention, and rerankers."""

from gumbel_jax.models.attention import document_masked_attention, dot_attention
from gumbel_jax.models.bert import BertConfig, BertEncoder, CrossEncoder, mean_pooled_embedding
from gumbel_jax.models.cepe import CepeConfig, CepeReader
from gumbel_jax.models.fid import FiDReader
from gumbel_jax.models.llama import LlamaConfig, LlamaForCausalLM
from gumbel_jax.models.rankt5 import RANKT5_SCORE_TOKEN_ID, RankT5
from gumbel_jax.models.reader import Memory, Reader
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder, shift_right

__all__ = [
    "RANKT5_SCORE_TOKEN_ID",
    "BertConfig",
    "BertEncoder",
    "CepeConfig",
    "CepeReader",
    "CrossEncoder",
    "FiDReader",
    "LlamaConfig",
    "LlamaForCausalLM",
    "Memory",
    "RankT5",
    "Reader",
    "T5Config",
    "T5EncoderDecoder",
    "document_masked_attention",
    "dot_attention",
    "mean_pooled_embedding",
    "shift_right",
]
