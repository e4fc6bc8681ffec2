"""CEPE reader (models.cepe, models.llama): equal to transformers' PyTorch Llama where CEPE is
Llama, equal to a few lines of our own torch where it is not (cross-attention), and the
document-mask oracle of the Reader interface. Tiny random configs, CPU, offline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from gumbel_jax import objectives, ops
from gumbel_jax.checkpoints.cepe import assign_tensors
from gumbel_jax.models import Memory, Reader
from gumbel_jax.models.cepe import CepeConfig, CepeMemory, CepeReader, pack_inputs
from gumbel_jax.models.llama import causal_bias, lm_logits, valid_positions
from gumbel_jax.models.reader import check_reader
from tests.models.conftest import cast_params
from tests.torch_reference import to_torch, torch

transformers = pytest.importorskip("transformers")

# Decoder and encoder differ in every setting CEPE reads separately (eps, rope theta, widths,
# heads), so reading one stack's setting from the other's config cannot pass. The decoder
# groups its key/value heads (Llama-2-70B style) to cover grouped-query attention.
DECODER = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
               rope_theta=10000.0, max_position_embeddings=64, tie_word_embeddings=False,
               bos_token_id=1, eos_token_id=2)
ENCODER = dict(vocab_size=97, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, rms_norm_eps=1e-6,
               rope_theta=500.0, max_position_embeddings=32, tie_word_embeddings=False)
PROMPT, DOCS, CONTEXT, ANSWER = 5, 4, 7, 4


def hf_cepe_config() -> dict:
    """A CEPE config.json of the tiny architecture (CEPE's field names)."""
    return {**DECODER, "do_cross_attention": True, "num_cross_attn_layers": 2,
            "num_cross_attn_hidden_states": 1, "encoder_hidden_size": ENCODER["hidden_size"],
            "is_decoder": True, "encoder_config": {**ENCODER, "is_decoder": False}}


def _torch_llama(cls, fields, seed):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**fields, attn_implementation="eager")
    model = cls(config).eval()
    with torch.no_grad():  # random norms, so a misplaced norm cannot hide
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def torch_models():
    return (_torch_llama(transformers.LlamaForCausalLM, DECODER, 0),
            _torch_llama(transformers.LlamaModel, ENCODER, 1))


def _cross_attention_tensors(rng) -> dict[str, np.ndarray]:
    width, heads = DECODER["hidden_size"], DECODER["num_attention_heads"]
    head_dim, kv = width // heads, DECODER["num_key_value_heads"] * width // heads
    out = {}
    for layer in range(DECODER["num_hidden_layers"]):
        prefix = f"model.layers.{layer}.cross_attn."
        shapes = {"q_proj": (width, width), "k_proj": (kv, ENCODER["hidden_size"]),
                  "v_proj": (kv, ENCODER["hidden_size"]), "o_proj": (width, heads * head_dim)}
        for name, shape in shapes.items():
            out[f"{prefix}{name}.weight"] = rng.normal(0, 0.2, shape).astype(np.float32)
        out[f"{prefix}layernorm.weight"] = rng.uniform(0.5, 1.5, width).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def cepe_tensors(torch_models) -> dict[str, np.ndarray]:
    """A CEPE state dict: the torch decoder's, the torch encoder's under ``encoder.``, and
    random cross-attention weights."""
    decoder, encoder = torch_models
    tensors = {k: v.detach().numpy().copy() for k, v in decoder.state_dict().items()}
    tensors.update({f"encoder.{k}": v.detach().numpy().copy()
                    for k, v in encoder.state_dict().items()})
    tensors.update(_cross_attention_tensors(np.random.default_rng(2)))
    return tensors


def build_reader(tensors, **options) -> CepeReader:
    config = CepeConfig.from_hf(hf_cepe_config(), **options.pop("compute", {}))
    reader = CepeReader(config, rngs=nnx.Rngs(0), prompt_length=PROMPT,
                        **options)
    assign_tensors(reader, tensors)
    return reader


@pytest.fixture(scope="module")
def reader(cepe_tensors) -> CepeReader:
    return build_reader(cepe_tensors)


@pytest.fixture(scope="module")
def batch():
    """2 questions x 4 contexts x 7 tokens (question 1's last context is padding, every
    context has padded tokens), prompts of 5 (question 1 left-padded by 2), answers of 4."""
    rng = np.random.default_rng(0)
    context_ids = rng.integers(3, 97, (2, DOCS, CONTEXT)).astype(np.int32)
    context_mask = np.ones((2, DOCS, CONTEXT), bool)
    context_mask[:, :, 5:] = False
    context_mask[0, 1, 3:] = False
    context_mask[1, 3] = False
    prompt_ids = rng.integers(3, 97, (2, PROMPT)).astype(np.int32)
    prompt_ids[:, 0] = 1  # BOS
    prompt_mask = np.ones((2, PROMPT), bool)
    prompt_ids[1, :2], prompt_mask[1, :2] = 0, False
    prompt_ids[1, 2] = 1
    answer_ids = rng.integers(3, 97, (2, ANSWER)).astype(np.int32)
    answer_mask = np.ones((2, ANSWER), bool)
    answer_ids[0, 3], answer_mask[0, 3] = 0, False
    answer_ids[1, 3] = 2
    arrays = dict(context_ids=context_ids, context_mask=context_mask, prompt_ids=prompt_ids,
                  prompt_mask=prompt_mask, answer_ids=answer_ids, answer_mask=answer_mask)
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def packed(batch):
    return pack_inputs(batch["context_ids"], batch["context_mask"], batch["prompt_ids"],
                       batch["prompt_mask"])


@pytest.fixture(scope="module")
def memory(reader, batch) -> CepeMemory:
    return jax.jit(lambda ids, mask: reader.encode(ids, mask))(*packed(batch))


def _log_probs(reader, memory, batch, log_mask=None):
    return reader.token_log_probs(memory, batch["answer_ids"], batch["answer_mask"], log_mask)


# --- Equivalence with transformers' Llama -------------------------------------------------


def test_decoder_without_context_equals_transformers_llama(reader, torch_models):
    """CEPE's decoder reading no context is Llama-2: logits and loss of
    ``LlamaForCausalLM`` on the same weights, right and left padding included."""
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 97, (2, 11))
    mask = np.ones((2, 11), bool)
    mask[1, :3] = False  # left padding: positions count valid tokens (HF: position_ids)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = torch_models[0](input_ids=to_torch(ids), attention_mask=to_torch(mask, torch.long),
                              position_ids=to_torch(positions))
        loss = torch_models[0](input_ids=to_torch(ids[:1]), labels=to_torch(ids[:1])).loss
    valid = jnp.asarray(mask)
    hidden = reader.model(jnp.asarray(ids), valid_positions(valid), causal_bias(valid, 11))
    logits = np.asarray(lm_logits(reader, hidden))
    diff = np.abs(logits[mask] - out.logits.numpy()[mask]).max()
    assert diff < 1e-5, diff
    log_probs = jax.nn.log_softmax(logits[0, :-1], -1)
    nll = -np.take_along_axis(np.asarray(log_probs), ids[0, 1:, None], -1).mean()
    np.testing.assert_allclose(nll, float(loss), rtol=1e-5)


def test_context_encoder_equals_bidirectional_transformers_llama(reader, torch_models, batch):
    """Each context alone through a Llama stack with no causal mask (an all-zero additive
    mask in eager attention, finfo.min on padded keys), positions from 0."""
    ids = np.asarray(batch["context_ids"]).reshape(-1, CONTEXT)
    mask = np.asarray(batch["context_mask"]).reshape(-1, CONTEXT)
    additive = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)
    additive = np.broadcast_to(additive[:, None, None, :], (len(ids), 1, CONTEXT, CONTEXT))
    with torch.no_grad():
        expected = torch_models[1](input_ids=to_torch(ids),
                                   attention_mask=to_torch(additive)).last_hidden_state.numpy()
    ours = np.asarray(reader.encode_contexts(batch["context_ids"], batch["context_mask"]))
    ours = ours.reshape(-1, CONTEXT, ENCODER["hidden_size"])
    rows = mask.any(-1)  # a fully padded context is masked out wherever it is read
    diff = np.abs(ours[rows][mask[rows]] - expected[rows][mask[rows]]).max()
    assert diff < 1e-5, diff


def _torch_cross_attention(x, states, valid, log_mask, tensors, layer):
    """CEPE's eager cross-attention, written from its description with an additive
    per-document bias in place of its 0/1 mask: float64 torch."""
    w = {name: to_torch(tensors[f"model.layers.{layer}.cross_attn.{name}.weight"],
                        torch.float64) for name in ("q_proj", "k_proj", "v_proj", "o_proj",
                                                    "layernorm")}
    heads, kv_heads = DECODER["num_attention_heads"], DECODER["num_key_value_heads"]
    head_dim = DECODER["hidden_size"] // heads
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + DECODER["rms_norm_eps"])
    q = (w["layernorm"] * normed) @ w["q_proj"].T
    k, v = states @ w["k_proj"].T, states @ w["v_proj"].T
    split = lambda t, n: t.view(*t.shape[:2], n, head_dim).transpose(1, 2)
    q = split(q, heads)
    k = split(k, kv_heads).repeat_interleave(heads // kv_heads, 1)
    v = split(v, kv_heads).repeat_interleave(heads // kv_heads, 1)
    bias = log_mask.repeat_interleave(states.shape[1] // log_mask.shape[1], 1)
    bias = torch.where(valid, bias, torch.finfo(torch.float64).min / 2)
    attention = torch.softmax(q @ k.transpose(2, 3) / head_dim**0.5 + bias[:, None, None], -1)
    out = (attention @ v).transpose(1, 2).reshape(*x.shape[:2], heads * head_dim)
    return out @ w["o_proj"].T


@pytest.mark.parametrize("method", ["bias", "blockwise"])
def test_cross_attention_equals_torch_reference_in_values_and_mask_gradients(
        reader, cepe_tensors, memory, method):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, DECODER["hidden_size"])).astype(np.float32)
    log_mask = np.log(rng.uniform(0.05, 1.0, (2, DOCS))).astype(np.float32)
    cotangent = rng.normal(size=(2, 3, DECODER["hidden_size"])).astype(np.float32)
    layer = reader.model.layers[1].cross_attn
    states, valid = np.asarray(memory.states), np.asarray(memory.valid)

    def ours(log_mask):
        keys, values = layer.key_values(jnp.asarray(states))
        out, _ = layer(jnp.asarray(x), keys, values, log_mask, jnp.asarray(valid), method=method)
        return (out * cotangent).sum(), out

    (_, out), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(log_mask))
    mask_t = to_torch(log_mask, torch.float64).requires_grad_(True)
    expected = _torch_cross_attention(to_torch(x, torch.float64), to_torch(states, torch.float64),
                                      to_torch(valid), mask_t, cepe_tensors, 1)
    (expected * to_torch(cotangent, torch.float64)).sum().backward()
    value_diff = np.abs(np.asarray(out) - expected.detach().numpy()).max()
    grad_diff = np.abs(np.asarray(grad) - mask_t.grad.numpy()).max()
    assert value_diff < 1e-5 and grad_diff < 1e-5, (value_diff, grad_diff)
    assert np.all(np.asarray(grad)[1, 3] == 0)  # the padded context gets no gradient


# --- The Reader interface and the document-mask oracle ----------------------------------


def test_cepe_is_a_reader_with_fids_memory_layout(reader, memory, batch):
    assert isinstance(reader, Reader) and isinstance(memory, Memory)
    check_reader(reader)
    assert memory.num_docs == DOCS and memory.doc_len == CONTEXT
    assert len(memory.cross_keys) == DECODER["num_hidden_layers"]
    np.testing.assert_array_equal(memory.prompt_ids, batch["prompt_ids"])
    np.testing.assert_array_equal(memory.prompt_valid, batch["prompt_mask"])
    # Every document split into its own question equals reading that document alone.
    alone = memory.split_documents()
    per_doc = jax.jit(lambda m: reader.token_log_probs(
        m, jnp.repeat(batch["answer_ids"], DOCS, 0), jnp.repeat(batch["answer_mask"], DOCS, 0)))(
        alone)
    only_first = jnp.where(jnp.arange(DOCS) == 0, 0.0, ops.mask_value(jnp.float32))
    first = jax.jit(lambda m: _log_probs(reader, memory, batch, m))(
        jnp.broadcast_to(only_first, (2, DOCS)))
    np.testing.assert_allclose(per_doc.reshape(2, DOCS, -1)[:, 0], first, atol=2e-5)


def test_hard_mask_equals_reading_the_selected_contexts_only(reader, memory, batch):
    keep = np.array([[True, False, True, False], [False, True, True, False]])
    log_mask = jnp.where(keep, 0.0, ops.mask_value(jnp.float32))
    masked = jax.jit(lambda m: _log_probs(reader, memory, batch, m))(log_mask)
    read = jax.jit(lambda sub: _log_probs(reader, reader.encode(*packed(sub)), sub))
    for row in range(2):
        chosen = np.flatnonzero(keep[row])
        sub = {k: v[row:row + 1] for k, v in batch.items()}
        sub["context_ids"] = sub["context_ids"][:, chosen]
        sub["context_mask"] = sub["context_mask"][:, chosen]
        selected = read(sub)
        diff = np.abs(np.asarray(masked[row]) - np.asarray(selected[0])).max()
        assert diff < 2e-5, diff


def test_masked_context_content_changes_nothing_and_zero_mask_is_unmasked(reader, memory,
                                                                          batch):
    log_mask = jnp.asarray([[0.0, -2.0, ops.mask_value(jnp.float32), -0.5],
                            [-1.0, 0.0, ops.mask_value(jnp.float32), 0.0]])
    changed = dict(batch)
    noise = np.random.default_rng(5).integers(3, 97, (2, CONTEXT))
    changed["context_ids"] = batch["context_ids"].at[:, 2].set(noise)
    other = reader.encode(*packed(changed))
    np.testing.assert_allclose(_log_probs(reader, memory, batch, log_mask),
                               _log_probs(reader, other, batch, log_mask), atol=1e-6)
    np.testing.assert_allclose(_log_probs(reader, memory, batch, jnp.zeros((2, DOCS))),
                               _log_probs(reader, memory, batch), atol=1e-6)


def test_bias_equals_blockwise_in_values_and_mask_gradients(cepe_tensors, reader, memory,
                                                            batch):
    blockwise = build_reader(cepe_tensors, method="blockwise")
    log_mask = jnp.log(jax.random.uniform(jax.random.key(6), (2, DOCS), minval=0.05))

    def nll(model, log_mask):
        return -_log_probs(model, memory, batch, log_mask).sum()

    value_b, grad_b = jax.jit(jax.value_and_grad(lambda m: nll(reader, m)))(log_mask)
    value_w, grad_w = jax.jit(jax.value_and_grad(lambda m: nll(blockwise, m)))(log_mask)
    np.testing.assert_allclose(value_b, value_w, rtol=1e-5)
    np.testing.assert_allclose(grad_b, grad_w, atol=1e-5)
    assert np.all(np.asarray(grad_b)[1, 3] == 0) and np.all(np.asarray(grad_b)[0] != 0)


def test_memory_recomputed_from_states_equals_precomputed(cepe_tensors, memory, reader, batch):
    lean = build_reader(cepe_tensors, precompute_memory=False)
    lean_memory = lean.encode(*packed(batch))
    assert lean_memory.cross_keys == ()
    log_mask = jnp.log(jnp.full((2, DOCS), 0.5))
    np.testing.assert_allclose(_log_probs(lean, lean_memory, batch, log_mask),
                               _log_probs(reader, memory, batch, log_mask), atol=1e-6)
    # With the keys and values precomputed, decoding never reads the encoder states again.
    poisoned = memory.replace(states=jnp.full_like(memory.states, jnp.nan))
    np.testing.assert_array_equal(_log_probs(reader, poisoned, batch, log_mask),
                                  _log_probs(reader, memory, batch, log_mask))


def test_gradient_to_reranker_scores_matches_finite_differences(cepe_tensors, batch, float64):
    """scores -> relaxed top-k (fixed Gumbel noise) -> CEPE -> answer NLL, float64."""
    reader64 = build_reader(cepe_tensors, compute={"dtype": jnp.float64})
    cast_params(reader64, jnp.float64)
    memory64 = reader64.encode(*packed(batch))
    where = batch["context_mask"].any(-1)
    scores = jax.random.normal(jax.random.key(7), (2, DOCS), jnp.float64)

    @jax.jit
    def loss(scores):
        return objectives.g_rerank_loss(jax.random.key(8), scores, reader64, memory64,
                                        batch["answer_ids"], batch["answer_mask"],
                                        candidate_valid=where, k=2, tau=0.5)

    check_grads(loss, (scores,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    grads = np.asarray(jax.grad(loss)(scores))
    assert np.all(grads[1, 3] == 0) and np.all(grads[0] != 0)


def test_document_attention_sums_to_one_and_follows_the_mask(reader, memory, batch):
    mass = reader.document_attention(memory, batch["answer_ids"], batch["answer_mask"])
    np.testing.assert_allclose(mass.sum(-1), 1.0, atol=1e-5)
    assert mass[1, 3] < 1e-6  # the padded context
    log_mask = jnp.asarray([[0.0, ops.mask_value(jnp.float32), 0.0, 0.0]] * 2)
    masked = reader.document_attention(memory, batch["answer_ids"], batch["answer_mask"],
                                       log_mask)
    assert float(masked[0, 1]) < 1e-6 and float(masked[0, 0]) > float(mass[0, 0])


def test_value_weighted_statistic_and_temperature(reader, memory, batch):
    """ADist's value-norm statistic follows the mask too; EMDR's temperature divides the
    vocabulary logits."""
    log_mask = jnp.asarray([[0.0, ops.mask_value(jnp.float32), 0.0, 0.0]] * 2)
    weighted = reader.document_attention(memory, batch["answer_ids"], batch["answer_mask"],
                                         log_mask, value_weighted=True)
    mass = reader.document_attention(memory, batch["answer_ids"], batch["answer_mask"],
                                     log_mask)
    assert float(weighted[0, 1]) < 1e-6 and np.all(np.asarray(weighted)[:, [0, 2]] > 0)
    assert not np.allclose(weighted, mass)
    hot = reader.token_log_probs(memory, batch["answer_ids"], batch["answer_mask"],
                                 temperature=2.0)
    logits = reader.answer_logits(memory, batch["answer_ids"]) / 2.0
    expected = jnp.take_along_axis(jax.nn.log_softmax(logits, -1),
                                   batch["answer_ids"][..., None], -1)[..., 0]
    np.testing.assert_allclose(hot, jnp.where(batch["answer_mask"], expected, 0.0), atol=1e-6)


@pytest.mark.slow
def test_every_objective_trains_a_reranker_through_a_cepe_reader(reader, batch):
    """Each loss of the trainer's registry, with CEPE as the frozen reader: finite, and a
    gradient to the reranker scores that only padded candidates lack."""
    from gumbel_jax.data.batch import Batch
    from gumbel_jax.training.config import ObjectiveConfig
    from gumbel_jax.training.step import OBJECTIVE_LOSSES

    ids, mask = packed(batch)
    doc_valid = batch["context_mask"].any(-1)
    gold = jnp.asarray([[True, False, False, True], [False, True, False, False]])
    data = Batch(reader_ids=ids, reader_mask=mask, ranker_ids=ids, ranker_mask=mask,
                 doc_valid=doc_valid, answer_ids=batch["answer_ids"],
                 answer_mask=batch["answer_mask"], gold=gold, indirect=gold & False,
                 example_id=jnp.asarray([3, 9], jnp.int32))
    # Small scores: the baselines' reranker softmax at theta = 0.01 must not saturate.
    scores = 0.005 * jax.random.normal(jax.random.key(9), (2, DOCS))
    for name, loss_fn in OBJECTIVE_LOSSES.items():
        config = ObjectiveConfig(name=name, k=2)
        loss, grad = jax.jit(jax.value_and_grad(
            lambda s, loss_fn=loss_fn, config=config: loss_fn(config, s, reader, data,
                                                              jax.random.key(1))))(scores)
        assert np.isfinite(float(loss)), name
        assert np.all(np.asarray(grad)[1, 3] == 0), name
        assert np.any(np.asarray(grad)[0] != 0), name


def test_remat_changes_no_value_or_mask_gradient(cepe_tensors, reader, memory, batch):
    remat = build_reader(cepe_tensors, compute={"remat": True})
    log_mask = jnp.log(jnp.asarray([[1.0, 0.3, 0.6, 0.9], [0.5, 1.0, 0.2, 1.0]]))
    nll = lambda model: jax.jit(jax.value_and_grad(
        lambda m: -_log_probs(model, memory, batch, m).sum()))(log_mask)
    (value, grad), (value_r, grad_r) = nll(reader), nll(remat)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    np.testing.assert_allclose(grad_r, grad, atol=1e-6)


def test_every_weight_names_its_logical_axes_for_the_sharding_rules():
    """Matrices carry (in, out) logical names that sharding.PARAMETER_RULES maps: heads and
    SwiGLU width to ``tensor``, vocabulary to ``tensor``, widths to ``fsdp``; norm scales
    stay replicated."""
    from gumbel_jax.sharding import PARAMETER_RULES

    config = CepeConfig.from_hf(hf_cepe_config())
    state = nnx.state(nnx.eval_shape(lambda: CepeReader.random(config)), nnx.Param)
    names = {path: tuple(spec.get_value())
             for path, spec in nnx.to_flat_state(nnx.get_partition_spec(state))}
    for path, axes in names.items():
        expected = 0 if path[-1] == "scale" else 2
        assert len(axes) == expected and set(axes) <= set(PARAMETER_RULES), (path, axes)
    layer = ("model", "layers", 0)
    assert names[(*layer, "self_attn", "q_proj", "kernel")] == ("embed", "heads")
    assert names[(*layer, "cross_attn", "k_proj", "kernel")] == ("embed", "heads")
    assert names[(*layer, "cross_attn", "o_proj", "kernel")] == ("heads", "embed")
    assert names[(*layer, "mlp", "down_proj", "kernel")] == ("mlp", "embed")
    assert names[("lm_head", "kernel")] == ("embed", "vocab")


def test_only_the_last_layers_cross_attend_when_configured():
    config = CepeConfig.from_hf({**hf_cepe_config(), "num_cross_attn_layers": 1})
    reader = nnx.eval_shape(lambda: CepeReader.random(config))
    assert reader.model.cross_layers == (1,)
    assert reader.config.encoder.rope_theta == 500.0 and reader.config.decoder.rope_theta == 1e4


# --- Generation -----------------------------------------------------------------------------


def _uncached_greedy(reader, memory, log_mask, length):
    """Greedy decoding by re-running the whole decoder for every token."""
    batch = memory.batch_size
    tokens = jnp.zeros((batch, length), jnp.int32)
    done = jnp.zeros((batch,), bool)
    eos, pad = reader.config.decoder.eos_token_id, reader.config.decoder.pad_token_id
    logits_of = jax.jit(lambda tokens: reader.answer_logits(memory, tokens, log_mask))
    for t in range(length):
        logits = logits_of(tokens)[:, t]
        chosen = jnp.where(done, pad, jnp.argmax(logits, -1))
        tokens, done = tokens.at[:, t].set(chosen), done | (chosen == eos)
    return tokens


def test_cached_generation_equals_uncached(reader, memory):
    log_mask = jnp.log(jnp.asarray([[1.0, 0.2, 0.7, 0.4], [0.3, 1.0, 0.9, 1e-3]]))
    generate = jax.jit(lambda m: reader.generate(memory, m, max_length=6))
    cached = generate(log_mask)
    np.testing.assert_array_equal(cached, _uncached_greedy(reader, memory, log_mask, 6))
    generate(jnp.zeros((2, DOCS)))
    assert generate._cache_size() == 1  # one compile per shape, whatever the mask
    # Step by step, the cached logits are the teacher-forced ones of the same tokens.
    cache = jax.jit(lambda m: reader.init_decode_cache(memory, m, max_length=6))(log_mask)
    forced = reader.answer_logits(memory, cached, log_mask)
    step = jax.jit(lambda ids, p, cache: reader.decode_step(ids, p, cache, log_mask))
    previous = jnp.zeros((2,), jnp.int32)
    for position in range(6):
        logits, cache = step(previous, position, cache)
        np.testing.assert_allclose(logits, forced[:, position], atol=2e-5)
        previous = cached[:, position]
    beams = jax.jit(lambda m: reader.generate(memory, m, max_length=6, num_beams=3))(log_mask)
    assert beams.shape == (2, 6) and beams.dtype == jnp.int32


def test_parameter_count_of_the_released_architecture():
    """``hyen/CEPE-LLaMA-2-7B``: Llama-2-7B + 32 cross-attentions + the 24-layer encoder
    (vocabulary 32001) = 8,516,196,352 parameters, counted on abstract shapes."""
    from gumbel_jax.models.presets import architecture
    from gumbel_jax.training.factory import parameter_count

    config = architecture("cepe-llama-2-7b")
    model = nnx.eval_shape(lambda: CepeReader.random(config))
    assert parameter_count(model) == 8_516_196_352
    assert model.model.cross_layers == tuple(range(32))
