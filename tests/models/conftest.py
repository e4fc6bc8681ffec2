"""Tiny model configs shared by the model tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.models import FiDReader, T5Config

TINY_T5 = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                   num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False)


def cast_params(module, dtype):
    """Cast every parameter (for float64 finite-difference checks)."""
    state = nnx.state(module, nnx.Param)
    nnx.update(module, jax.tree.map(lambda x: x.astype(dtype), state))
    return module


@pytest.fixture
def fid_batch():
    """2 questions x 5 passages x 6 tokens (question 1 has 2 padded passages), answers of 4."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(2, 64, size=(2, 5, 6)).astype(np.int32)
    attention_mask = np.ones((2, 5, 6), bool)
    attention_mask[:, :, 5] = False  # a padded token in every passage
    attention_mask[1, 3:] = False  # question 1 has only 3 passages
    answer_ids = rng.integers(2, 64, size=(2, 4)).astype(np.int32)
    answer_ids[:, -1] = 1
    answer_mask = np.ones((2, 4), bool)
    answer_mask[0, 3] = False
    return tuple(jnp.asarray(a) for a in (input_ids, attention_mask, answer_ids, answer_mask))


@pytest.fixture
def reader():
    return FiDReader.random(TINY_T5, seed=0)
