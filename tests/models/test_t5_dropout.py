"""T5's training dropout: off without a key (the model as before, no operation for it), and
with one a reproducible mask that drops about ``dropout_rate`` of the activations."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.models.fid import FiDReader
from gumbel_jax.models.layers import dropout
from gumbel_jax.models.t5 import T5Config

CONFIG = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                  num_decoder_layers=2, num_heads=4, dropout_rate=0.1)


def test_dropout_drops_about_rate_and_rescales_the_rest():
    """Statistical (fixed seed, so deterministic here): 200,000 draws at rate 0.1 have a
    zeroed fraction with standard deviation 0.00067; the bound 0.005 is 7.4 of them, a
    false failure for fewer than 1 in 10^12 seeds."""
    x = jnp.ones((400, 500))
    out = jax.jit(lambda key, x: dropout(key, x, rate=0.1))(jax.random.key(0), x)
    zeroed = np.asarray(out == 0.0)
    assert abs(zeroed.mean() - 0.1) < 0.005
    np.testing.assert_allclose(np.asarray(out)[~zeroed], 1.0 / 0.9, rtol=1e-6)


def test_dropout_without_key_or_rate_is_the_input_itself():
    x = jnp.arange(6.0)
    assert dropout(None, x, rate=0.1) is x
    assert dropout(jax.random.key(0), x, rate=0.0) is x


def _reader(**changes):
    return FiDReader.random(dataclasses.replace(CONFIG, **{k: v for k, v in changes.items()
                                                           if k != "method"}),
                            seed=0, method=changes.get("method", "bias"), frozen=False)


def _inputs():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(2, CONFIG.vocab_size, (2, 3, 6)), jnp.int32)
    mask = jnp.asarray(np.arange(6)[None, None, :] < rng.integers(2, 7, (2, 3, 1)))
    answer = jnp.asarray(rng.integers(2, CONFIG.vocab_size, (2, 4)), jnp.int32)
    return ids, mask, answer, jnp.ones((2, 4), bool)


@functools.partial(jax.jit, static_argnums=0)
def _run(graph, state, key):
    reader = nnx.merge(graph, state)
    ids, mask, answer, answer_mask = _inputs()
    fold = (lambda n: None) if key is None else (lambda n: jax.random.fold_in(key, n))
    memory = reader.encode(ids, mask, dropout_key=fold(0))
    return reader.token_log_probs(memory, answer, answer_mask, jnp.zeros((2, 3)),
                                  dropout_key=fold(1))


def _log_probs(reader, key):
    """Teacher-forced log-probabilities ``[2, 4]`` under jit; ``key`` None: no dropout."""
    return np.asarray(_run(*nnx.split(reader), key))


def test_no_key_or_rate_zero_is_todays_model_and_traces_no_random_op():
    reader, key = _reader(), jax.random.key(3)
    without = _log_probs(reader, None)
    np.testing.assert_array_equal(_log_probs(_reader(dropout_rate=0.0), key), without)
    ids, mask, *_ = _inputs()
    jaxpr = str(jax.make_jaxpr(lambda i, m: reader.encode(i, m).states)(ids, mask))
    assert "random_bits" not in jaxpr and "threefry" not in jaxpr


def test_a_key_drops_reproducibly_and_keys_differ():
    reader = _reader()
    without = _log_probs(reader, None)
    first, again = _log_probs(reader, jax.random.key(1)), _log_probs(reader, jax.random.key(1))
    other = _log_probs(reader, jax.random.key(2))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, without, atol=1e-4)
    assert not np.allclose(first, other, atol=1e-4)


@pytest.mark.parametrize("changes", [{"method": "blockwise"}, {"remat": True},
                                     {"attention_implementation": "xla"}])
def test_the_same_key_drops_the_same_whatever_the_computation(changes):
    """Blockwise document attention drops the keys the one-softmax path drops, remat
    recomputes the forward's masks, and a fused kernel gives way to the einsum path (it
    has no probability dropout)."""
    key = jax.random.key(5)
    np.testing.assert_allclose(_log_probs(_reader(**changes), key),
                               _log_probs(_reader(), key), rtol=1e-5, atol=1e-5)
