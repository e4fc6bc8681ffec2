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


def test_fid_wrapped_pytorch_checkpoint_loads(reference, tmp_path):
    """FiD saves encoder keys as encoder.encoder.block.N.module.…; both read the same."""
    tensors = state_dict_numpy(reference)
    wrapped = {}
    for name, value in tensors.items():
        if name.startswith("encoder."):
            name = "encoder." + name.replace("encoder.block.", "encoder.block.MOD.")
            parts = name.split(".")
            if "MOD" in parts:
                index = parts.index("MOD")
                parts[index], parts[index + 1] = parts[index + 1], "module"
            name = ".".join(parts)
        wrapped[name] = value
    assert "encoder.encoder.block.1.module.layer.0.SelfAttention.q.weight" in wrapped
    folder = _write_folder(tmp_path / "fid", reference.config.to_dict(), wrapped, as_bin=True)
    reader = load_fid_reader(folder)
    plain = t5_from_tensors(T5Config.from_hf(reference.config), tensors)
    np.testing.assert_array_equal(_encode(reader.t5), _encode(plain))


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
