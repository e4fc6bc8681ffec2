"""CEPE / Llama checkpoints (checkpoints.cepe): sharded PyTorch and safetensors folders with
their index, streamed into our parameters, cast and placed as read; errors that name every
offending tensor; host memory bounded by about one shard."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.checkpoints import CheckpointError
from gumbel_jax.checkpoints.cepe import checkpoint_names, load_cepe, load_llama
from gumbel_jax.models.cepe import CepeConfig, CepeReader
from tests.models.test_cepe import (
    DECODER,
    ENCODER,
    PROMPT,
    _cross_attention_tensors,
    _torch_llama,
    build_reader,
    hf_cepe_config,
)
from tests.torch_reference import to_torch, torch

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    decoder = _torch_llama(transformers.LlamaForCausalLM, DECODER, 0)
    encoder = _torch_llama(transformers.LlamaModel, ENCODER, 1)
    out = {k: v.detach().numpy().copy() for k, v in decoder.state_dict().items()}
    out.update({f"encoder.{k}": v.detach().numpy().copy()
                for k, v in encoder.state_dict().items()})
    out.update(_cross_attention_tensors(np.random.default_rng(2)))
    return out


def write_checkpoint(folder: pathlib.Path, tensors: dict, config: dict, *, shards: int = 4,
                     kind: str = "bin", index: bool = True) -> pathlib.Path:
    """A Hugging Face style sharded folder: ``shards`` files of about equal size (largest
    tensors placed first), their index json, and config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    groups, sizes = [dict() for _ in range(shards)], [0] * shards
    for name in sorted(tensors, key=lambda n: -tensors[n].nbytes):
        smallest = sizes.index(min(sizes))
        groups[smallest][name] = tensors[name]
        sizes[smallest] += tensors[name].nbytes
    weight_map = {}
    for number, group in enumerate(groups, 1):
        if kind == "bin":
            file = f"pytorch_model-{number:05d}-of-{shards:05d}.bin"
            torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in group.items()},
                       folder / file)
        else:
            from safetensors.numpy import save_file

            file = f"model-{number:05d}-of-{shards:05d}.safetensors"
            save_file({k: np.ascontiguousarray(v) for k, v in group.items()}, folder / file)
        weight_map.update(dict.fromkeys(group, file))
    if index:
        name = "pytorch_model.bin.index.json" if kind == "bin" else "model.safetensors.index.json"
        (folder / name).write_text(json.dumps({"metadata": {"total_size": sum(sizes)},
                                               "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _flat(model):
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_sharded_checkpoint_loads_every_tensor_as_in_memory(tmp_path, tensors, kind):
    folder = write_checkpoint(tmp_path / kind, tensors, hf_cepe_config(), kind=kind)
    loaded = load_cepe(folder, prompt_length=PROMPT)
    expected = build_reader(tensors)
    assert isinstance(loaded, CepeReader) and loaded.prompt_length == PROMPT
    ours, theirs = _flat(loaded), _flat(expected)
    assert ours.keys() == theirs.keys()
    for path in ours:
        np.testing.assert_array_equal(ours[path], theirs[path], err_msg=str(path))


def test_bfloat16_load_casts_matrices_keeps_norms_float32_and_places_by_mesh(tmp_path,
                                                                             tensors):
    from gumbel_jax.sharding import make_mesh

    folder = write_checkpoint(tmp_path / "ckpt", tensors, hf_cepe_config(), kind="safetensors")
    mesh = make_mesh(data=1, fsdp=1, tensor=2, devices=jax.devices()[:2])
    reader = load_cepe(folder, prompt_length=PROMPT, dtype=jnp.bfloat16, mesh=mesh)
    layer = reader.model.layers[0]
    q = layer.cross_attn.q_proj.kernel[...]
    assert q.dtype == jnp.bfloat16 and layer.cross_attn.layernorm.scale[...].dtype == jnp.float32
    np.testing.assert_array_equal(
        np.asarray(q, np.float32),
        np.asarray(jnp.asarray(tensors["model.layers.0.cross_attn.q_proj.weight"].T,
                               jnp.bfloat16), np.float32))
    assert q.sharding.spec[1] == "tensor"  # heads split over the tensor axis
    assert {shard.data.shape for shard in q.addressable_shards} == {(32, 16)}
    assert reader.config.decoder.dtype == jnp.bfloat16


def test_the_factory_loads_a_cepe_reader_onto_the_mesh_as_it_reads(tmp_path, tensors):
    from gumbel_jax.sharding import make_mesh
    from gumbel_jax.training.config import ModelConfig
    from gumbel_jax.training.factory import load_reader

    folder = write_checkpoint(tmp_path / "ckpt", tensors, hf_cepe_config(), kind="bin")
    config = ModelConfig(reader=str(folder), reader_kind="cepe", reranker="unused",
                         cepe_prompt_length=PROMPT, dtype="bfloat16", dma="blockwise")
    mesh = make_mesh(data=1, fsdp=1, tensor=2, devices=jax.devices()[:2])
    reader = load_reader(config, mesh=mesh)
    assert reader.method == "blockwise" and reader.prompt_length == PROMPT
    up = reader.encoder.layers[1].mlp.up_proj.kernel[...]
    assert up.dtype == jnp.bfloat16 and up.sharding.spec[1] == "tensor"
    assert {shard.data.shape for shard in up.addressable_shards} == {(16, 20)}


def test_every_missing_unexpected_and_misshaped_tensor_is_named(tmp_path, tensors):
    broken = dict(tensors)
    del broken["model.layers.1.cross_attn.k_proj.weight"]
    broken["encoder.layers.0.extra.weight"] = np.zeros((2, 2), np.float32)
    broken["encoder.norm.weight"] = np.ones(ENCODER["hidden_size"] + 1, np.float32)
    # Without an index the names are known only as shards are read: one error for all.
    folder = write_checkpoint(tmp_path / "noindex", broken, hf_cepe_config(), shards=1,
                              kind="safetensors", index=False)
    with pytest.raises(CheckpointError) as error:
        load_cepe(folder, prompt_length=PROMPT)
    message = str(error.value)
    for name in ("model.layers.1.cross_attn.k_proj.weight", "encoder.layers.0.extra.weight",
                 "encoder.norm.weight: checkpoint (17,)"):
        assert name in message, message
    # With an index, missing and unexpected names fail before any shard is read.
    folder = write_checkpoint(tmp_path / "index", broken, hf_cepe_config(), kind="bin")
    with pytest.raises(CheckpointError, match="missing tensors.*k_proj(.|\n)*unexpected"):
        load_cepe(folder, prompt_length=PROMPT)


def test_plain_llama_checkpoint_loads_as_the_decoder_alone(tmp_path):
    """A transformers-saved, sharded Llama (safetensors + index): logits equal; CEPE's
    loader refuses it with a pointer to load_llama."""
    reference = _torch_llama(transformers.LlamaForCausalLM, DECODER, 3)
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = load_llama(tmp_path)
    ids = np.random.default_rng(0).integers(3, 97, (2, 9))
    with torch.no_grad():
        expected = reference(input_ids=to_torch(ids)).logits.numpy()
    np.testing.assert_allclose(model(jnp.asarray(ids)), expected, atol=1e-5)
    with pytest.raises(CheckpointError, match="load_llama"):
        load_cepe(tmp_path)


def _rss_kb(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_streaming_keeps_host_memory_near_one_shard(tmp_path):
    """Peak resident memory while loading a 4-shard float32 checkpoint (86 MiB, largest
    shard 31 MiB) into a bfloat16 model (43 MiB) grows by at most model + largest shard +
    16 MiB (measured: 80 MiB), below model + whole checkpoint, which reading every shard
    first must hold (measured: 148 MiB). Linux: the peak is reset via /proc/self/clear_refs.
    """
    clear = pathlib.Path("/proc/self/clear_refs")
    if not clear.exists():
        pytest.skip("needs Linux /proc peak-RSS reset")
    wide = dict(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, tie_word_embeddings=False)
    encoder = dict(vocab_size=32001, hidden_size=128, intermediate_size=256,
                   num_hidden_layers=2, num_attention_heads=2)
    config = {**wide, "do_cross_attention": True, "encoder_hidden_size": 128,
              "encoder_config": encoder}
    abstract = nnx.eval_shape(lambda: CepeReader(CepeConfig.from_hf(config),
                                                 rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    shapes = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    tensors = {name: rng.standard_normal(tuple(reversed(shapes[path].shape)) if
                                         path[-1] == "kernel" else shapes[path].shape,
                                         np.float32)
               for path, name in checkpoint_names(abstract).items()}
    folder = write_checkpoint(tmp_path / "wide", tensors, config, kind="bin")
    total = sum(t.nbytes for t in tensors.values())
    largest_shard = max(f.stat().st_size for f in folder.glob("*.bin"))
    model_bytes = sum(t.nbytes // (2 if t.ndim >= 2 else 1) for t in tensors.values())
    del tensors
    jax.device_put(np.zeros(3)).block_until_ready()  # the runtime's own start-up is not ours
    clear.write_text("5")
    before = _rss_kb("VmRSS") * 1024
    reader = load_cepe(folder, dtype=jnp.bfloat16)
    growth = _rss_kb("VmHWM") * 1024 - before
    assert reader.lm_head.kernel[...].dtype == jnp.bfloat16
    bound = model_bytes + largest_shard + 16 * 2**20
    assert bound < model_bytes + total  # the bound says something
    assert growth <= bound, (growth / 2**20, bound / 2**20, total / 2**20)
