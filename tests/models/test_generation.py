"""Cached generation (tracker issue 13): the incremental decoder step equals teacher forcing,
cached greedy equals an uncached reference token for token, a hard mask equals reading the
selected passages only, one compilation per shape, and greedy / beam search equal
transformers' ``generate`` on the same weights and encoder outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax import ops
from gumbel_jax.models import FiDReader, shift_right
from gumbel_jax.models.fid import beam_search, greedy_search
from tests.models.conftest import TINY_T5

MAX_LENGTH = 7


def _eager_to_stop(reader, factor: float = 4.0):
    """Scale the EOS column of the head so random models end answers at varied lengths."""
    reader.t5.lm_head.kernel[...] = reader.t5.lm_head.kernel[...].at[:, 1].multiply(factor)
    return reader


def _passages(seed: int, batch: int = 3, docs: int = 4, length: int = 6):
    """Random passages; question 0 has a short passage, question 1 a padded one."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, TINY_T5.vocab_size, size=(batch, docs, length)).astype(np.int32)
    mask = np.ones_like(ids, bool)
    mask[0, 1, 3:] = False
    mask[1, docs - 1] = False
    return jnp.asarray(ids), jnp.asarray(mask)


def _hard_log_mask(seed: int, batch: int = 3, docs: int = 4):
    """Two passages read per question, the rest masked out (some of them padded)."""
    rng = np.random.default_rng(seed + 100)
    hard = np.zeros((batch, docs), np.float32)
    for row in range(batch):
        hard[row, rng.choice(docs, 2, replace=False)] = 1.0
    return ops.mask_to_log_mask(jnp.asarray(hard))


def _uncached_greedy(reader, memory, doc_log_mask, max_length):
    """Independent reference: at every position rerun the whole decoder on the answer so far
    (teacher forcing through ``T5EncoderDecoder.decode``) and take the argmax."""
    config = reader.config
    decode = jax.jit(lambda tokens: reader.t5.decode(
        shift_right(tokens, config.decoder_start_token_id), memory.states, memory.valid,
        doc_log_mask, method=reader.method))
    tokens = np.full((memory.batch_size, max_length), config.pad_token_id, np.int32)
    done = np.zeros(memory.batch_size, bool)
    for position in range(max_length):
        logits = np.asarray(decode(jnp.asarray(tokens))[:, position])
        chosen = np.where(done, config.pad_token_id, logits.argmax(-1))
        tokens[:, position] = chosen
        done |= chosen == config.eos_token_id
    return tokens


_generate = nnx.jit(lambda reader, memory, log_mask, num_beams: reader.generate(
    memory, log_mask, max_length=MAX_LENGTH, num_beams=num_beams), static_argnums=3)


def test_decode_step_equals_teacher_forced_decode_for_every_beam():
    """Beams folded into rows share their question's memory keys and values and mask."""
    reader = FiDReader.random(TINY_T5, seed=1)
    input_ids, attention_mask = _passages(0, batch=2)
    memory = reader.encode(input_ids, attention_mask)
    log_mask = jax.nn.log_sigmoid(jax.random.normal(jax.random.key(0), (2, 4)) * 3)
    beams, length = 3, 5
    tokens = jax.random.randint(jax.random.key(1), (2 * beams, length), 2, 64)
    inputs = shift_right(tokens, 0)
    expected = jax.jit(reader.t5.decode)(inputs, jnp.repeat(memory.states, beams, 0),
                                jnp.repeat(memory.valid, beams, 0),
                                jnp.repeat(log_mask, beams, 0))
    cache = reader.t5.init_decode_cache(memory.states, memory.valid, max_length=length,
                                        num_beams=beams)
    assert len(cache.cross_keys) == len(cache.self_keys) == 2  # layers
    assert cache.cross_keys[0].shape == (2, 4, 8, 24)  # [batch, heads, d_kv, keys]
    assert cache.self_keys[0].shape == (6, 5, 4, 8)  # [batch * beams, length, heads, d_kv]
    step = jax.jit(lambda ids, position, cache: reader.t5.decode_step(ids, position, cache,
                                                                      log_mask))
    for position in range(length):
        logits, cache = step(inputs[:, position], position, cache)
        np.testing.assert_allclose(logits, expected[:, position], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("seed", "method", "mask_kind"),
                         [(0, "bias", "hard"), (1, "blockwise", "hard"), (2, "bias", "hard"),
                          (3, "bias", "soft"), (4, "blockwise", "soft"), (5, "bias", "none")])
def test_cached_greedy_equals_uncached_reference(seed, method, mask_kind):
    reader = _eager_to_stop(FiDReader.random(TINY_T5, seed=seed, method=method))
    memory = reader.encode(*_passages(seed))
    log_mask = {"hard": _hard_log_mask(seed),
                "soft": jax.nn.log_sigmoid(jax.random.normal(jax.random.key(seed), (3, 4))),
                "none": None}[mask_kind]
    cached = np.asarray(_generate(reader, memory, log_mask, 1))
    np.testing.assert_array_equal(cached, _uncached_greedy(reader, memory, log_mask,
                                                           MAX_LENGTH))


def test_random_answers_end_at_varied_lengths():
    """The fixtures exercise early EOS, padding after it and answers cut at max_length."""
    lengths = set()
    for seed in range(3):
        reader = _eager_to_stop(FiDReader.random(TINY_T5, seed=seed))
        tokens = np.asarray(_generate(reader, reader.encode(*_passages(seed)), None, 1))
        for row in tokens:
            ends = np.flatnonzero(row == 1)
            lengths.add(int(ends[0]) + 1 if len(ends) else MAX_LENGTH + 1)
            if len(ends):
                assert np.all(row[ends[0] + 1:] == 0)
    assert len(lengths) >= 3 and MAX_LENGTH + 1 in lengths


@pytest.mark.parametrize("num_beams", [1, 3])
def test_hard_mask_equals_generating_from_the_selected_passages_only(num_beams):
    reader = _eager_to_stop(FiDReader.random(TINY_T5, seed=3))
    input_ids, attention_mask = _passages(3)
    selected = [[0, 2], [1, 3], [2]]  # question 1's passage 3 is padded: one passage read
    hard = np.zeros((3, 4), np.float32)
    for row, docs in enumerate(selected):
        hard[row, docs] = 1.0
    masked = _generate(reader, reader.encode(input_ids, attention_mask),
                       ops.mask_to_log_mask(jnp.asarray(hard)), num_beams)
    for row, docs in enumerate(selected):
        alone = reader.encode(input_ids[row:row + 1, docs], attention_mask[row:row + 1, docs])
        np.testing.assert_array_equal(masked[row], _generate(reader, alone, None, num_beams)[0])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_compiles_once_per_shape(num_beams):
    reader = FiDReader.random(TINY_T5, seed=0)
    traces = []

    @nnx.jit
    def generate(reader, input_ids, attention_mask, log_mask):
        traces.append(1)
        return reader.generate(reader.encode(input_ids, attention_mask), log_mask,
                               max_length=MAX_LENGTH, num_beams=num_beams)

    input_ids, attention_mask = _passages(0)
    generate(reader, input_ids, attention_mask, _hard_log_mask(0))
    generate(reader, input_ids, attention_mask, _hard_log_mask(1))
    generate(reader, (input_ids + 1) % 64, attention_mask, jnp.zeros((3, 4)))
    assert len(traces) == 1
    generate(reader, input_ids[:2], attention_mask[:2], jnp.zeros((2, 4)))
    assert len(traces) == 2


def test_beam_search_with_one_beam_is_greedy():
    tokens = {"start_id": 0, "eos_id": 1, "pad_id": 0}
    for seed in range(3):
        reader = _eager_to_stop(FiDReader.random(TINY_T5, seed=seed))
        memory = reader.encode(*_passages(seed))
        log_mask = _hard_log_mask(seed)
        cache = reader.t5.init_decode_cache(memory.states, memory.valid,
                                            max_length=MAX_LENGTH)

        def step(ids, position, cache, reader=reader, log_mask=log_mask):
            return reader.t5.decode_step(ids, position, cache, log_mask)

        np.testing.assert_array_equal(jax.jit(lambda c: beam_search(step, c, **tokens))(cache),
                                      jax.jit(lambda c: greedy_search(step, c, **tokens))(cache))


def test_generate_rejects_a_mask_of_the_wrong_shape():
    reader = FiDReader.random(TINY_T5, seed=0)
    memory = reader.encode(*_passages(0))
    with pytest.raises(ValueError, match=r"doc_log_mask must be \[batch, docs\]"):
        reader.generate(memory, jnp.zeros((3, 5)), max_length=4)
    with pytest.raises(ValueError, match=r"max_length and num_beams must be >= 1"):
        reader.generate(memory, max_length=4, num_beams=0)


# --- against transformers' PyTorch T5 ----------------------------------------------------

HF_TINY = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
               num_heads=4, relative_attention_num_buckets=8,
               relative_attention_max_distance=20, dropout_rate=0.0, decoder_start_token_id=0,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def hf_pair():
    """transformers' T5 and our FiD reader on the same weights. HF's initialisation makes the
    tiny model answer the start token almost surely, so every matrix is redrawn with unit
    fan-in variance (varied answers) and the EOS row is scaled by 4 (answers of varied
    length)."""
    transformers = pytest.importorskip("transformers")
    from gumbel_jax.checkpoints import t5_from_tensors
    from gumbel_jax.models import T5Config
    from tests.torch_reference import state_dict_numpy, torch

    torch.manual_seed(1)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_TINY)).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2:
                embedding = "shared" in name or "relative_attention_bias" in name
                weight.normal_(0.0, 1.0 if embedding else weight.shape[1] ** -0.5)
        model.lm_head.weight[1] *= 4.0
    reader = FiDReader(t5_from_tensors(T5Config.from_hf(model.config),
                                       state_dict_numpy(model)))
    return model, reader


def _hf_generate(model, ids, mask, **options):
    """transformers' answers from FiD encoder outputs (each passage encoded alone, then laid
    end to end), as ``[batch, MAX_LENGTH]`` with our padding: HF's beam search fills the
    tail with EOS (its fill value is ``pad_token_id or eos_token_id``, and the pad id is 0),
    so everything after the first EOS is set to the pad id."""
    from transformers.modeling_outputs import BaseModelOutput

    from tests.torch_reference import to_torch, torch

    batch, docs, length = ids.shape
    with torch.no_grad():
        states = model.encoder(input_ids=to_torch(ids.reshape(-1, length)),
                               attention_mask=to_torch(mask.reshape(-1, length)))
        states = states.last_hidden_state.reshape(batch, docs * length, -1)
        out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states),
                             attention_mask=to_torch(mask.reshape(batch, -1)),
                             max_new_tokens=MAX_LENGTH, do_sample=False, **options)
    tokens = np.zeros((batch, MAX_LENGTH), np.int64)
    tokens[:, :out.shape[1] - 1] = out[:, 1:].numpy()  # drop the start token
    for row in tokens:
        ends = np.flatnonzero(row == 1)
        if len(ends):
            row[ends[0] + 1:] = 0
    return tokens


def _hf_inputs(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 99, size=(4, 3, 7))
    mask = np.ones_like(ids, bool)
    mask[0, 2, 4:] = False
    mask[1, 2] = False  # a padded passage
    return ids, mask


def test_cached_greedy_equals_transformers_greedy(hf_pair):
    model, reader = hf_pair
    for seed in range(4):
        ids, mask = _hf_inputs(seed)
        ours = _generate(reader, reader.encode(jnp.asarray(ids), jnp.asarray(mask)), None, 1)
        np.testing.assert_array_equal(ours, _hf_generate(model, ids, mask, num_beams=1))


@pytest.mark.parametrize(("num_beams", "early_stopping", "length_penalty"),
                         [(3, True, 1.0), (3, False, 1.0), (4, True, 2.0), (2, False, 0.0)])
def test_beam_search_equals_transformers_beam_search(hf_pair, num_beams, early_stopping,
                                                     length_penalty):
    """``FiDReader.generate`` is the first setting; ``beam_search`` takes the others."""
    model, reader = hf_pair

    @jax.jit
    def search(memory):
        cache = reader.t5.init_decode_cache(memory.states, memory.valid,
                                            max_length=MAX_LENGTH, num_beams=num_beams)
        return beam_search(lambda ids, position, cache: reader.t5.decode_step(ids, position,
                                                                             cache),
                           cache, start_id=0, eos_id=1, pad_id=0,
                           length_penalty=length_penalty, early_stopping=early_stopping)

    differs_from_greedy = 0
    for seed in range(4):
        ids, mask = _hf_inputs(seed)
        memory = reader.encode(jnp.asarray(ids), jnp.asarray(mask))
        ours = np.asarray(search(memory))
        expected = _hf_generate(model, ids, mask, num_beams=num_beams,
                                early_stopping=early_stopping, length_penalty=length_penalty)
        np.testing.assert_array_equal(ours, expected)
        if (num_beams, early_stopping, length_penalty) == (3, True, 1.0):
            np.testing.assert_array_equal(_generate(reader, memory, None, 3), ours)
        differs_from_greedy += int(np.sum(np.any(ours != _generate(reader, memory, None, 1),
                                                 axis=1)))
    assert differs_from_greedy >= 1  # the search is not greedy in disguise
