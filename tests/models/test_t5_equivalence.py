"""Our T5 equals transformers' PyTorch T5 on the same weights (reliability R9)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gumbel_jax.checkpoints.t5 import t5_from_tensors
from gumbel_jax.models.t5 import T5Config, shift_right
from tests.torch_reference import state_dict_numpy, to_torch, torch

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            dropout_rate=0.0, decoder_start_token_id=0)


def _reference(feed_forward_proj, tie):
    torch.manual_seed(0)
    config = transformers.T5Config(feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie,
                                   **TINY)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # random norms, so a wrong norm placement cannot hide
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.uniform_(0.5, 1.5)
    return config, model


@pytest.mark.parametrize("feed_forward_proj,tie", [("relu", True), ("gated-gelu", False)],
                         ids=["t5-v1.0", "t5-v1.1"])
def test_t5_matches_transformers(feed_forward_proj, tie):
    hf_config, reference = _reference(feed_forward_proj, tie)
    config = T5Config.from_hf(hf_config)
    assert config.tie_word_embeddings == tie
    model = t5_from_tensors(config, state_dict_numpy(reference))
    rng = np.random.default_rng(0)
    input_ids = rng.integers(2, 99, size=(2, 30))
    attention_mask = np.ones((2, 30), bool)
    attention_mask[1, 21:] = False  # padding
    labels = rng.integers(2, 99, size=(2, 7))
    with torch.no_grad():
        out = reference(input_ids=to_torch(input_ids), attention_mask=to_torch(attention_mask),
                        labels=to_torch(labels), output_hidden_states=True)
    memory = model.encode(jnp.asarray(input_ids), jnp.asarray(attention_mask))
    valid = np.asarray(attention_mask)
    np.testing.assert_allclose(np.asarray(memory)[valid],
                               out.encoder_last_hidden_state.numpy()[valid], atol=2e-5)
    logits = model.decode(shift_right(jnp.asarray(labels), 0), memory,
                          jnp.asarray(attention_mask))
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=2e-4, rtol=1e-4)
    log_probs = jnp.take_along_axis(
        jax.nn.log_softmax(logits, axis=-1), jnp.asarray(labels)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(-float(log_probs.mean()), float(out.loss), rtol=1e-5)

