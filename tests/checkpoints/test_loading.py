"""Checkpoint import from model folders: safetensors, PyTorch .bin, FiD's wrapped keys, and
clear errors for anything that does not fit."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from gumbel_jax.checkpoints import (
    CheckpointError,
    load_cross_encoder,
    load_fid_reader,
    load_t5,
    resolve_model_dir,
    t5_from_tensors,
)
from gumbel_jax.models import T5Config
from tests.torch_reference import state_dict_numpy, torch

transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TINY = dict(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1,
            num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(2)
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY)).eval()


def _write_folder(path, config: dict, tensors: dict, *, as_bin=False):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if as_bin:
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()},
                   path / "pytorch_model.bin")
    else:
        safetensors_numpy.save_file(tensors, str(path / "model.safetensors"))
    return path


def _encode(model):
    ids = jnp.arange(2, 14).reshape(2, 6) % 50
    return np.asarray(model.encode(ids, jnp.ones((2, 6), bool)))


def test_save_pretrained_folder_loads(reference, tmp_path):
    reference.save_pretrained(tmp_path / "t5")
    model = load_t5(tmp_path / "t5")
    expected = t5_from_tensors(T5Config.from_hf(reference.config), state_dict_numpy(reference))
    np.testing.assert_array_equal(_encode(model), _encode(expected))


class _CheckpointWrapper(torch.nn.Module):
    """FiD's CheckpointWrapper (src/model.py): an encoder block held as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


class _EncoderWrapper(torch.nn.Module):
    """FiD's EncoderWrapper: the T5 encoder stack held as ``.encoder``, each of its blocks
    wrapped as above (FiD's apply_checkpoint_wrapper)."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        encoder.block = torch.nn.ModuleList(_CheckpointWrapper(b) for b in encoder.block)


# A T5 config.json as transformers 3.0.2 (FiD's version) wrote it for FiD's readers: no
# num_decoder_layers (the decoder is as deep as the encoder), no feed_forward_proj (relu),
# no tie_word_embeddings (tied), no relative_attention_max_distance (128).
OLD_STYLE = {"architectures": ["FiDT5"], "d_ff": 24, "d_kv": 4, "d_model": 16,
             "decoder_start_token_id": 0, "dropout_rate": 0.1, "eos_token_id": 1,
             "initializer_factor": 1.0, "is_encoder_decoder": True, "layer_norm_epsilon": 1e-6,
             "model_type": "t5", "n_positions": 512, "num_heads": 2, "num_layers": 2,
             "output_past": True, "pad_token_id": 0, "relative_attention_num_buckets": 8,
             "vocab_size": 50}


def test_an_old_config_without_num_decoder_layers_reads_a_decoder_as_deep_as_the_encoder():
    """The rule lives in ``T5Config.from_hf``, so every caller (not only ``load_t5``) gets it;
    an explicit ``num_decoder_layers`` still wins."""
    deep = {**OLD_STYLE, "num_layers": 24}
    assert T5Config.from_hf(deep).num_decoder_layers == 24
    assert T5Config.from_hf({**deep, "num_decoder_layers": 3}).num_decoder_layers == 3


def test_fid_wrapped_checkpoint_with_an_old_config_loads_and_equals_transformers(tmp_path):
    """A state dict saved from a T5 wrapped the way FiD wraps it (keys
    ``encoder.encoder.block.N.module.…``), next to an old-style config.json: the reader we
    load gives transformers' log-probabilities of the unwrapped model on each passage."""
    import copy

    torch.manual_seed(3)
    reference = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0)).eval()
    wrapped = copy.deepcopy(reference)
    wrapped.encoder = _EncoderWrapper(wrapped.encoder)
    state = wrapped.state_dict()
    assert "encoder.encoder.block.1.module.layer.0.SelfAttention.q.weight" in state
    assert not any(name.startswith("encoder.block.") for name in state)
    folder = tmp_path / "fid"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(OLD_STYLE))
    torch.save(state, folder / "pytorch_model.bin")
    reader = load_fid_reader(folder)
    assert reader.config.num_decoder_layers == 2 and not reader.config.is_gated

    rng = np.random.default_rng(4)
    ids = rng.integers(2, 50, size=(3, 7))
    mask = np.ones((3, 7), bool)
    mask[1, 5:] = False
    answers = rng.integers(2, 50, size=(3, 4))
    answer_mask = np.ones((3, 4), bool)
    answer_mask[2, 3] = False
    with torch.no_grad():
        logits = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                           labels=torch.from_numpy(answers)).logits
    expected = torch.log_softmax(logits, -1).gather(-1, torch.from_numpy(answers)[..., None])
    expected = np.where(answer_mask, expected[..., 0].numpy(), 0.0)
    memory = reader.encode(jnp.asarray(ids)[:, None], jnp.asarray(mask)[:, None])
    ours = reader.token_log_probs(memory, jnp.asarray(answers), jnp.asarray(answer_mask))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)


def test_xlm_roberta_cross_encoder_loads_from_a_folder(tmp_path):
    """save_pretrained of an XLM-R sequence classifier (config.json model_type xlm-roberta,
    safetensors): the loaded cross-encoder scores as transformers does, positions offset
    past the padding id included."""
    torch.manual_seed(1)
    config = transformers.XLMRobertaConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=40, type_vocab_size=1, num_labels=1,
        pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = transformers.XLMRobertaForSequenceClassification(config).eval()
    reference.save_pretrained(tmp_path / "xlmr")
    assert json.loads((tmp_path / "xlmr" / "config.json").read_text())["model_type"] == \
        "xlm-roberta"
    model = load_cross_encoder(tmp_path / "xlmr")
    ids = np.random.default_rng(2).integers(3, 60, size=(2, 9))
    mask = np.ones((2, 9), bool)
    mask[1, 6:] = False
    ids[~mask] = 1
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids),
                             attention_mask=torch.from_numpy(mask)).logits[:, 0].numpy()
    np.testing.assert_allclose(model(jnp.asarray(ids), jnp.asarray(mask)), expected,
                               rtol=1e-5, atol=1e-5)


def test_missing_unexpected_and_misshaped_tensors_are_listed(reference, tmp_path):
    tensors = state_dict_numpy(reference)
    del tensors["decoder.block.0.layer.2.DenseReluDense.wo.weight"]
    tensors["encoder.block.0.layer.0.SelfAttention.q.weight"] = np.zeros((3, 3), np.float32)
    tensors["extra.weight"] = np.zeros(2, np.float32)
    folder = _write_folder(tmp_path / "bad", reference.config.to_dict(), tensors)
    with pytest.raises(CheckpointError) as error:
        load_t5(folder)
    message = str(error.value)
    assert str(folder) in message
    assert "missing tensors (1): decoder.block.0.layer.2.DenseReluDense.wo.weight" in message
    assert "unexpected tensors (1): extra.weight" in message
    assert "encoder.block.0.layer.0.SelfAttention.q.weight: checkpoint (3, 3)" in message


def test_untied_config_without_lm_head_is_an_error(reference, tmp_path):
    config = {**reference.config.to_dict(), "tie_word_embeddings": False,
              "feed_forward_proj": "relu"}
    config.pop("scale_decoder_outputs", None)
    tensors = {k: v for k, v in state_dict_numpy(reference).items() if k != "lm_head.weight"}
    folder = _write_folder(tmp_path / "untied", config, tensors)
    with pytest.raises(CheckpointError, match="missing tensors \\(1\\): lm_head.weight"):
        load_t5(folder)


def test_folder_problems_are_clear(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_t5(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: invalid JSON at line 1"):
        load_t5(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no \\*.safetensors or \\*.bin"):
        load_t5(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not be fetched from the hub"):
        resolve_model_dir("no-such-user/no-such-model")


def test_cross_encoder_with_several_labels_is_refused(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=8, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(tmp_path / "bert")
    with pytest.raises(CheckpointError, match="has 3 outputs; a reranker needs exactly 1"):
        load_cross_encoder(tmp_path / "bert")
