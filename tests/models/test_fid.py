"""FiD reader with document-masked attention: the filtering oracle (R8), bias == blockwise,
gradients to the reranker scores, one compilation per shape (R10), generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from gumbel_jax import ops
from gumbel_jax.models import FiDReader
from tests.models.conftest import TINY_T5, cast_params


def _log_likelihood(reader, batch, doc_log_mask=None):
    input_ids, attention_mask, answer_ids, answer_mask = batch
    return reader.answer_log_likelihood(input_ids, attention_mask, answer_ids, answer_mask,
                                        doc_log_mask)


_jit_log_likelihood = nnx.jit(_log_likelihood)


@pytest.mark.parametrize("method", ["bias", "blockwise"])
def test_hard_mask_equals_reading_only_the_selected_passages(reader, fid_batch, method):
    reader.method = method
    input_ids, attention_mask, answer_ids, answer_mask = fid_batch
    selected = [[0, 2, 4], [1, 2]]
    hard = np.zeros((2, 5), np.float32)
    for row, docs in enumerate(selected):
        hard[row, docs] = 1.0
    masked = _jit_log_likelihood(reader, fid_batch, ops.mask_to_log_mask(jnp.asarray(hard)))
    for row, docs in enumerate(selected):
        alone = _jit_log_likelihood(reader, (input_ids[row:row + 1, docs],
                                             attention_mask[row:row + 1, docs],
                                             answer_ids[row:row + 1], answer_mask[row:row + 1]))
        np.testing.assert_allclose(masked[row], alone[0], rtol=1e-5, atol=1e-5)


def test_masked_passage_content_does_not_matter(reader, fid_batch):
    input_ids, attention_mask, answer_ids, answer_mask = fid_batch
    hard = jnp.array([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0, 0.0]])
    log_mask = ops.mask_to_log_mask(hard)
    scrambled = input_ids.at[0, 1].set(jax.random.randint(jax.random.key(0), (6,), 2, 64))
    scrambled = scrambled.at[1, 0].set(jax.random.randint(jax.random.key(1), (6,), 2, 64))
    before = _log_likelihood(reader, fid_batch, log_mask)
    after = reader.answer_log_likelihood(scrambled, attention_mask, answer_ids, answer_mask,
                                         log_mask)
    np.testing.assert_allclose(after, before, rtol=1e-6)
    unmasked = _log_likelihood(reader, fid_batch)
    changed = reader.answer_log_likelihood(scrambled, attention_mask, answer_ids, answer_mask)
    assert not np.allclose(changed, unmasked)  # without the mask the scramble is visible


@pytest.mark.parametrize("method", ["bias", "blockwise"])
def test_zero_log_mask_is_the_unmasked_reader(reader, fid_batch, method):
    reader.method = method
    np.testing.assert_allclose(_log_likelihood(reader, fid_batch, jnp.zeros((2, 5))),
                               _log_likelihood(reader, fid_batch), rtol=1e-6)


def test_bias_and_blockwise_agree_in_values_and_mask_gradients(reader, fid_batch):
    log_mask = jax.nn.log_sigmoid(jax.random.normal(jax.random.key(3), (2, 5)) * 2)

    def loss(log_mask):
        return _log_likelihood(reader, fid_batch, log_mask).sum()

    reader.method = "bias"
    value_bias, grad_bias = jax.jit(jax.value_and_grad(loss))(log_mask)
    reader.method = "blockwise"
    value_block, grad_block = jax.jit(jax.value_and_grad(loss))(log_mask)
    np.testing.assert_allclose(value_block, value_bias, rtol=1e-5)
    np.testing.assert_allclose(grad_block, grad_bias, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad_bias)[1, 3:] == 0)  # padded passages get no gradient
    assert np.all(np.abs(np.asarray(grad_bias)[0]) > 0)


def test_gradient_to_reranker_scores_matches_finite_differences(fid_batch, float64):
    """scores -> log_relaxed_topk (fixed noise) -> reader -> answer NLL, in float64 (R6)."""
    reader = FiDReader.random(TINY_T5.__class__(**{**TINY_T5.__dict__, "dtype": jnp.float64}))
    cast_params(reader, jnp.float64)
    key = jax.random.key(4)
    where = fid_batch[1].any(-1)
    scores = jax.random.normal(jax.random.key(5), (2, 5), jnp.float64)

    def negative_log_likelihood(scores):
        log_mask = ops.log_relaxed_topk(key, scores, 2, tau=0.5, where=where)
        return -_log_likelihood(reader, fid_batch, log_mask).sum()

    negative_log_likelihood = jax.jit(negative_log_likelihood)
    check_grads(negative_log_likelihood, (scores,), order=1, modes=("rev",), atol=1e-6,
                rtol=1e-6)
    grads = jax.jit(jax.grad(negative_log_likelihood))(scores)
    assert np.all(np.asarray(grads)[1, 3:] == 0)


def test_reader_parameters_and_encoder_receive_no_gradient_when_frozen(reader, fid_batch):
    input_ids, attention_mask, answer_ids, answer_mask = fid_batch

    def loss(model):
        memory = model.encode(input_ids, attention_mask)
        return model.token_log_probs(memory, answer_ids, answer_mask).sum()

    grads = nnx.jit(nnx.grad(loss))(reader)
    encoder_grads = jax.tree.leaves(nnx.state(grads)["t5"]["encoder"])
    assert all(float(jnp.abs(g).max()) == 0 for g in encoder_grads)


def test_one_compilation_per_shape(reader, fid_batch):
    traces = []

    @nnx.jit
    def log_likelihood(reader, batch, log_mask):
        traces.append(1)
        return _log_likelihood(reader, batch, log_mask)

    log_likelihood(reader, fid_batch, jnp.zeros((2, 5), jnp.float32))
    log_likelihood(reader, fid_batch, -jnp.ones((2, 5), jnp.float32))
    other_answers = (*fid_batch[:2], (fid_batch[2] + 1) % 64, fid_batch[3])
    log_likelihood(reader, other_answers, jnp.zeros((2, 5), jnp.float32))
    assert len(traces) == 1
    log_likelihood(reader, tuple(x[:1] for x in fid_batch), jnp.zeros((1, 5), jnp.float32))
    assert len(traces) == 2


def test_document_attention_is_a_distribution_that_respects_the_mask(reader, fid_batch):
    input_ids, attention_mask, answer_ids, answer_mask = fid_batch
    memory = reader.encode(input_ids, attention_mask)
    assert memory.num_docs == 5  # the memory records its layout: no num_docs to pass
    mass = reader.document_attention(memory, answer_ids, answer_mask)
    assert mass.shape == (2, 5)
    np.testing.assert_allclose(mass.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(mass)[0] > 1e-3)  # every real passage gets some attention
    assert np.all(np.asarray(mass)[1, 3:] < 1e-6)  # padded passages
    hard = ops.mask_to_log_mask(jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0]] * 2))
    gated = reader.document_attention(memory, answer_ids, answer_mask, hard)
    assert gated.shape == (2, 5)
    assert np.all(np.asarray(gated)[:, 2:] < 1e-6)


def test_greedy_generation_is_consistent_with_teacher_forcing(reader, fid_batch):
    input_ids, attention_mask, _, _ = fid_batch
    tokens = nnx.jit(lambda r, i, m: r.generate(r.encode(i, m), max_length=6))(
        reader, input_ids, attention_mask)
    assert tokens.shape == (2, 6)
    memory = reader.encode(input_ids, attention_mask)
    from gumbel_jax.models import shift_right

    logits = reader.t5.decode(shift_right(tokens, 0), memory.states, memory.valid)
    greedy = np.asarray(jnp.argmax(logits, -1))
    tokens = np.asarray(tokens)
    for row in range(2):
        for position in range(6):
            assert tokens[row, position] == greedy[row, position]
            if tokens[row, position] == 1:  # EOS: the rest is padding
                assert np.all(tokens[row, position + 1:] == 0)
                break
