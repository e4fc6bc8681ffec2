"""The architectures of the paper's public checkpoints, known offline.

They let a config name a model's shape without downloading it: to build it abstractly
(``jax.eval_shape``: parameter counts, memory plans), to start a reranker from random
weights (the from-scratch ablation), and to estimate costs. Values are those of each
checkpoint's ``config.json``; ``PUBLIC_PARAMETER_COUNTS`` are the counts Hugging Face reports
for them, which the tests check our models against.
"""

from __future__ import annotations

from gumbel_jax.models.bert import BertConfig
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

ARCHITECTURES: dict[str, T5Config | BertConfig] = {
    "t5-large": T5_LARGE,
    "t5-base": T5_BASE,
    "t5-v1_1-base": T5_V1_1_BASE,
    "xlm-roberta-base": XLM_ROBERTA_BASE,
}

# Parameters as Hugging Face counts them (tied embeddings once): t5-large 737.67M,
# t5-base 222.90M, google/t5-v1_1-base 247.58M; BAAI/bge-reranker-base is listed as 278M
# (XLMRobertaForSequenceClassification: the encoder, a dense + tanh, one output logit).
PUBLIC_PARAMETER_COUNTS = {
    "t5-large": 737_668_096,
    "t5-base": 222_903_552,
    "t5-v1_1-base": 247_577_856,
    "xlm-roberta-base": 278_044_417,
}


def architecture(name: str) -> T5Config | BertConfig:
    """The preset called ``name``; an unknown name is an error listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: "
                         f"{', '.join(sorted(ARCHITECTURES))}") from None
