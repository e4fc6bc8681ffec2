"""The architectures of the paper's public checkpoints, known offline.

They let a config name a model's shape without downloading it: to build it abstractly
(``jax.eval_shape``: parameter counts, memory plans), to start a reranker from random
weights (the from-scratch ablation), and to estimate costs. Values are those of each
checkpoint's ``config.json``; ``PUBLIC_PARAMETER_COUNTS`` are the counts Hugging Face reports
for them, which the tests check our models against.
"""

from __future__ import annotations

from gumbel_jax.models.bert import BertConfig
from gumbel_jax.models.cepe import CepeConfig
from gumbel_jax.models.llama import LlamaConfig
from gumbel_jax.models.t5 import T5Config

# t5-large: the FiD-Large reader (original T5: ReLU feed-forward, tied output head).
T5_LARGE = T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=4096, num_layers=24,
                    num_decoder_layers=24, num_heads=16, feed_forward_proj="relu",
                    tie_word_embeddings=True)
# t5-base: FiD-Base.
T5_BASE = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                   num_decoder_layers=12, num_heads=12, feed_forward_proj="relu",
                   tie_word_embeddings=True)
# RankT5-base (Soyoung97/RankT5-base): T5 v1.1 base layout, gated GELU, untied head.
T5_V1_1_BASE = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                        num_decoder_layers=12, num_heads=12, feed_forward_proj="gated-gelu",
                        tie_word_embeddings=False)
# xlm-roberta-base: BAAI/bge-reranker-base's encoder (with a one-logit head).
XLM_ROBERTA_BASE = BertConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=3072,
                              max_position_embeddings=514, type_vocab_size=1,
                              layer_norm_eps=1e-5, pad_token_id=1, family="roberta")

# hyen/CEPE-LLaMA-2-7B: Llama-2-7B (32 layers, d 4096, 32 heads, SwiGLU 11008, eps 1e-5)
# cross-attending in every layer to hyen/LLaMA-MLM-Large (24 bidirectional Llama layers,
# d 1024, 16 heads, SwiGLU 4096, eps 1e-6, vocabulary 32001 in its config).
CEPE_LLAMA_2_7B = CepeConfig(
    decoder=LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                        num_hidden_layers=32, num_attention_heads=32, rms_norm_eps=1e-5,
                        max_position_embeddings=4096),
    encoder=LlamaConfig(vocab_size=32001, hidden_size=1024, intermediate_size=4096,
                        num_hidden_layers=24, num_attention_heads=16, rms_norm_eps=1e-6,
                        max_position_embeddings=512),
    num_cross_attn_layers=32)

ARCHITECTURES: dict[str, T5Config | BertConfig | CepeConfig] = {
    "t5-large": T5_LARGE,
    "t5-base": T5_BASE,
    "t5-v1_1-base": T5_V1_1_BASE,
    "xlm-roberta-base": XLM_ROBERTA_BASE,
    "cepe-llama-2-7b": CEPE_LLAMA_2_7B,
}

# Parameters as Hugging Face counts them (tied embeddings once): t5-large 737.67M,
# t5-base 222.90M, google/t5-v1_1-base 247.58M; BAAI/bge-reranker-base is listed as 278M
# (XLMRobertaForSequenceClassification: the encoder, a dense + tanh, one output logit).
PUBLIC_PARAMETER_COUNTS = {
    "t5-large": 737_668_096,
    "t5-base": 222_903_552,
    "t5-v1_1-base": 247_577_856,
    "xlm-roberta-base": 278_044_417,
    # Llama-2 6,738,415,616 + cross-attention 1,342,308,352 + encoder 435,472,384.
    "cepe-llama-2-7b": 8_516_196_352,
}


def architecture(name: str) -> T5Config | BertConfig | CepeConfig:
    """The preset called ``name``; an unknown name is an error listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None
