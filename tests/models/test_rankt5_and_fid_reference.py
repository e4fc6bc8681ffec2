"""RankT5 scores and the FiD reader against transformers' PyTorch T5 on the same weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from gumbel_jax.checkpoints import t5_from_tensors
from gumbel_jax.models import FiDReader, RankT5, T5Config
from tests.torch_reference import state_dict_numpy, to_torch, torch

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            dropout_rate=0.0, decoder_start_token_id=0, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(1)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY)).eval()


@pytest.fixture(scope="module")
def t5(reference):
    return t5_from_tensors(T5Config.from_hf(reference.config), state_dict_numpy(reference))


def test_rankt5_score_is_the_first_step_logit_of_the_score_token(reference, t5):
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 99, size=(2, 3, 12))
    mask = np.ones_like(ids, bool)
    mask[1, 2, 7:] = False
    ranker = RankT5(t5, score_token_id=42)
    scores = ranker(jnp.asarray(ids), jnp.asarray(mask))
    assert scores.shape == (2, 3)
    with torch.no_grad():
        logits = reference(input_ids=to_torch(ids.reshape(6, 12)),
                           attention_mask=to_torch(mask.reshape(6, 12)),
                           decoder_input_ids=torch.zeros((6, 1), dtype=torch.long)).logits
    np.testing.assert_allclose(scores.reshape(6), logits[:, 0, 42].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        RankT5(t5, score_token_id=99)


def test_fid_reader_equals_transformers_t5_on_concatenated_passage_encodings(reference, t5):
    """FiD in PyTorch: encode each passage alone, concatenate, decode over everything."""
    rng = np.random.default_rng(1)
    ids = rng.integers(2, 99, size=(2, 4, 9))
    mask = np.ones_like(ids, bool)
    mask[0, 1, 6:] = False
    labels = rng.integers(2, 99, size=(2, 5))
    reader = FiDReader(t5)
    ours = reader.answer_log_likelihood(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels),
                                        jnp.ones((2, 5), bool))
    with torch.no_grad():
        encoded = reference.encoder(input_ids=to_torch(ids.reshape(8, 9)),
                                    attention_mask=to_torch(mask.reshape(8, 9))).last_hidden_state
        memory = encoded.reshape(2, 36, -1)
        out = reference(encoder_outputs=(memory,), attention_mask=to_torch(mask.reshape(2, 36)),
                        labels=to_torch(labels))
        log_probs = torch.log_softmax(out.logits, -1)
        expected = log_probs.gather(-1, to_torch(labels)[..., None])[..., 0].sum(-1)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_fid_greedy_generation_equals_transformers_generate(reference, t5):
    rng = np.random.default_rng(2)
    ids = rng.integers(2, 99, size=(2, 1, 10))
    mask = np.ones_like(ids, bool)
    reader = FiDReader(t5)
    tokens = reader.generate(reader.encode(jnp.asarray(ids), jnp.asarray(mask)), max_length=6)
    with torch.no_grad():
        expected = reference.generate(input_ids=to_torch(ids[:, 0]),
                                      attention_mask=to_torch(mask[:, 0]), max_new_tokens=6,
                                      do_sample=False, num_beams=1)[:, 1:]
    expected = expected.numpy()
    padded = np.zeros((2, 6), np.int64)
    padded[:, : expected.shape[1]] = expected
    np.testing.assert_array_equal(tokens, padded)
