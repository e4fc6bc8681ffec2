"""RankT5: an encoder-decoder reranker scoring (query, document) by one decoder logit."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder

# "<extra_id_10>" in the T5 vocabulary, the token whose first-step logit RankT5 was trained
# to use as the relevance score (Zhuang et al., 2023; checkpoint Soyoung97/RankT5-base).
RANKT5_SCORE_TOKEN_ID = 32089


class RankT5(nnx.Module):
    """Scores ``[..., len]`` tokenised (query, document) pairs -> ``[...]`` float32 scores."""

    def __init__(self, t5: T5EncoderDecoder, *, score_token_id: int = RANKT5_SCORE_TOKEN_ID):
        if not 0 <= score_token_id < t5.config.vocab_size:
            raise ValueError(f"score_token_id {score_token_id} is outside the vocabulary "
                             f"(size {t5.config.vocab_size})")
        self.t5 = t5
        self.score_token_id = score_token_id

    @classmethod
    def random(cls, config: T5Config, *, seed: int = 0, **options) -> RankT5:
        return cls(T5EncoderDecoder(config, rngs=nnx.Rngs(seed)), **options)

    def __call__(self, input_ids, attention_mask):
        leading, length = input_ids.shape[:-1], input_ids.shape[-1]
        flat_ids = input_ids.reshape(-1, length)
        flat_mask = attention_mask.reshape(-1, length).astype(bool)
        memory = self.t5.encode(flat_ids, flat_mask)
        start = jnp.full((flat_ids.shape[0], 1), self.t5.config.decoder_start_token_id,
                         jnp.int32)
        hidden = self.t5.decode_hidden(start, memory, flat_mask)
        return self.t5.token_logit(hidden[:, 0], self.score_token_id).reshape(leading)
