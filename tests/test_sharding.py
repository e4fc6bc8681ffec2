"""The mesh from the command line (--mesh, multi-host flags) and batches split over it."""

import argparse
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from experiments.cli import add_parallel_arguments, start_parallel
from gumbel_jax.sharding import make_mesh, shard_batch

needs_8_devices = pytest.mark.skipif(
    len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py simulates 8 on a CPU)")


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_parallel_arguments(parser)
    return parser.parse_args(list(argv))


@needs_8_devices
def test_shard_batch_splits_the_first_axis_over_data_and_fsdp():
    mesh = make_mesh(data=4, fsdp=2)
    batch = {"ids": np.arange(8 * 3, dtype=np.int32).reshape(8, 3),
             "valid": np.arange(8) % 3 == 0}
    sharded = shard_batch(batch, mesh)
    for name, array in sharded.items():
        np.testing.assert_array_equal(np.asarray(array), batch[name])  # the same global batch
        assert array.sharding.spec == PartitionSpec(("data", "fsdp"))
        rows = sorted(int(shard.index[0].start) for shard in array.addressable_shards)
        assert rows == list(range(8))  # one question on each of the 8 devices
        for shard in array.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), batch[name][shard.index])
    # tensor-parallel devices hold the same rows: 8 questions over data=2 x fsdp=2
    sharded = shard_batch(batch, make_mesh(data=2, fsdp=2, tensor=2))
    assert {shard.data.shape for shard in sharded["ids"].addressable_shards} == {(2, 3)}
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the 8 batch shards"):
        shard_batch({"ids": np.zeros((6, 3))}, mesh)


@needs_8_devices
def test_make_mesh_over_every_device_is_jax_make_mesh_with_auto_axes():
    """Over all devices the order is jax.make_mesh's (topology-aware on TPUs), with Auto axes
    as a plain Mesh has (jax.make_mesh's default is Explicit); given devices keep their
    order."""
    from jax.sharding import AxisType

    from gumbel_jax.sharding import MESH_AXES

    auto = (AxisType.Auto,) * 3
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    reference = jax.make_mesh((2, 2, 2), MESH_AXES, axis_types=auto)
    assert mesh.devices.tolist() == reference.devices.tolist() and mesh.axis_types == auto
    given = make_mesh(data=8, devices=jax.devices()[::-1])
    assert list(given.devices.flat) == jax.devices()[::-1] and given.axis_types == auto
    with pytest.raises(ValueError, match="needs 4 devices, have 8"):
        make_mesh(data=4)


@needs_8_devices
def test_start_parallel_builds_the_mesh_of_the_flag(monkeypatch):
    assert start_parallel(_args()) is None  # no --mesh: one device, no mesh
    assert dict(start_parallel(_args("--mesh", "8,1,1")).shape) == {
        "data": 8, "fsdp": 1, "tensor": 1}
    assert dict(start_parallel(_args("--mesh=-1,2,2")).shape) == {
        "data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="expected three integers DATA,FSDP,TENSOR"):
        start_parallel(_args("--mesh", "8,1"))
    with pytest.raises(ValueError, match="needs 16 devices, have 8"):
        start_parallel(_args("--mesh", "16,1,1"))
    # --distributed initialises multi-host JAX with the given flags, before the mesh.
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    mesh = start_parallel(_args("--distributed", "--coordinator", "10.0.0.1:1234",
                                "--num_processes", "2", "--process_id", "1",
                                "--mesh=-1,1,1"))
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                      "process_id": 1}]
    assert mesh.shape["data"] == 8
    start_parallel(_args("--distributed"))  # TPU VMs / SLURM: the coordinator is found
    assert calls[-1] == {"coordinator_address": None, "num_processes": None,
                         "process_id": None}


CONFIG = "experiments/configs/synthetic_g_rerank.py"
# Two steps of tiny models, eight questions a batch: every mesh below divides it.
SMALL = ["data.num_train=16", "data.num_eval=8", "data.batch_size=8", "train.num_steps=2",
         "train.checkpoint_every=2", "model.d_model=16", "model.num_layers=1"]


def _cli_runs(tmp_path, capsys, settings, meshes):
    """The train CLI on CONFIG with SMALL + ``settings``, once per ``meshes`` entry
    (``{name: --mesh value or None}``) in ``tmp_path / name``: ``(losses, printed)``, each a
    dict by name, the training losses from metrics.jsonl and the held-out metrics printed."""
    from experiments import train as train_cli

    overrides = sum((["--set", s] for s in SMALL + settings), [])
    losses, printed = {}, {}
    for name, mesh in meshes.items():
        flags = ["--mesh", mesh] if mesh else []
        assert train_cli.main(["--config", CONFIG, "--workdir", str(tmp_path / name),
                               *overrides, *flags]) == 0, capsys.readouterr().err
        printed[name] = json.loads(capsys.readouterr().out)
        losses[name] = [json.loads(line)["loss"] for line in
                        (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    return losses, printed


@pytest.mark.slow
@needs_8_devices
def test_train_cli_with_mesh_8_1_1_equals_one_device(tmp_path, capsys, monkeypatch):
    """The --mesh flag reaches training: batches are split over 8 simulated devices, and the
    losses and held-out numbers equal one device's (sharded sums round differently: 1e-5)."""
    from experiments import train as train_cli
    from gumbel_jax import sharding

    placed = []

    def spy(batch, mesh):
        placed.append(dict(mesh.shape))
        return shard_batch(batch, mesh)

    monkeypatch.setattr(sharding, "shard_batch", spy)
    losses, outputs = _cli_runs(tmp_path, capsys, [], {"single": None, "mesh": "8,1,1"})
    assert len(losses["mesh"]) == 2
    assert placed and all(shape == {"data": 8, "fsdp": 1, "tensor": 1} for shape in placed)
    np.testing.assert_allclose(losses["mesh"], losses["single"], rtol=1e-5)
    assert outputs["mesh"]["recall@5"] == pytest.approx(outputs["single"]["recall@5"])
    overrides = sum((["--set", s] for s in SMALL), [])
    assert train_cli.main(["--config", CONFIG, "--workdir", str(tmp_path / "bad"),
                           *overrides, "--mesh", "8,1"]) == 2
    assert "expected three integers" in capsys.readouterr().err


@pytest.mark.slow
@needs_8_devices
def test_fp8_reader_trains_on_a_mesh_with_its_kernels_split_as_before(tmp_path, capsys):
    """model.reader_fp8 on data=2 x fsdp=2 x tensor=2: the e4m3 kernels shard by their
    original logical axes (transposed with them), the activation scales (maxima) are the
    same on any mesh, and the losses equal one device's (sums round differently; a rounding
    that crosses an e4m3 step may move a loss more than plain float32 would: 1e-3)."""
    from flax import nnx

    from gumbel_jax.models.fp8 import Fp8Linear
    from gumbel_jax.sharding import parameter_shardings
    from gumbel_jax.training.config import ModelConfig
    from gumbel_jax.training.factory import build_models

    reader, _ = build_models(ModelConfig(reader_fp8=True, score_token_id=3, d_model=16,
                                         num_layers=1), vocab_size=64)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    shardings = parameter_shardings(nnx.state(reader.t5.encoder), mesh)
    query = shardings["layers"][0]["self_attention"]["q"]
    assert isinstance(reader.t5.encoder.layers[0].self_attention.q, Fp8Linear)
    # Stored [out, in], its logical axes reversed with it: (heads, embed).
    assert query["kernel"].spec == PartitionSpec("tensor", "fsdp")
    assert query["kernel_scale"].spec == PartitionSpec()

    losses, _ = _cli_runs(tmp_path, capsys, ["model.reader_fp8=True"],
                          {"single": None, "mesh": "2,2,2"})
    assert len(losses["mesh"]) == 2
    np.testing.assert_allclose(losses["mesh"], losses["single"], rtol=1e-3)


@needs_8_devices
def test_packing_on_a_mesh_packs_each_devices_block_of_questions_where_it_is():
    """A packed encoder on a data-parallel mesh (4 devices) packs each device's block of
    rows on its own (packing_groups = the mesh's batch shards, as training.loop sets it):
    each device multiplies only its own block's capacity, with no all-gather, and the
    gradients equal the padded encoder's. One group over the sharded batch would gather
    every device's tokens onto each and repeat the whole capacity there (measured)."""
    import re

    import jax.numpy as jnp
    from flax import nnx

    from gumbel_jax.models import RankT5, T5Config
    from gumbel_jax.sharding import batch_sharding
    from gumbel_jax.training.packing import host_capacity

    ranker = RankT5.random(T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_decoder_layers=1,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False), seed=1, score_token_id=5)
    rng = np.random.default_rng(0)
    mask = np.arange(32)[None] < rng.integers(16, 33, size=64)[:, None]  # 64 rows x 32
    ids = np.where(mask, rng.integers(2, 64, size=mask.shape), 0).astype(np.int32)
    mesh = make_mesh(data=4, devices=jax.devices()[:4])
    ids, mask = (jax.device_put(a, batch_sharding(mesh)) for a in (ids, mask))

    def compiled_gradient(capacity, groups):
        ranker.token_capacity, ranker.capacity_checked = capacity, capacity > 0
        ranker.packing_groups = groups
        graph, state = nnx.split(ranker)
        grad = jax.jit(jax.grad(lambda s, i, m: jnp.sum(nnx.merge(graph, s)(i, m))))
        with jax.default_matmul_precision("highest"):
            text = grad.lower(state, ids, mask).compile().as_text()
            value = grad(state, ids, mask)
        # Rows of the encoder's projections on one device: [tokens, d_model or d_ff] dots.
        rows = max(int(r) for r, c in re.findall(r"= f32\[(\d+),(\d+)\]\S* dot\(", text)
                   if int(c) in (32, 48))
        return rows, text.count(" all-gather("), value

    # The blocks hold 75%, 78%, 66% and 83% real tokens: the fullest sets the capacity.
    capacity = host_capacity({"ranker_mask": np.asarray(mask)}, 0.05, groups=4)
    assert capacity == 0.85
    padded_rows, _, padded = compiled_gradient(0.0, 1)
    packed_rows, gathers, packed = compiled_gradient(capacity, 4)
    one_group_rows, _, _ = compiled_gradient(capacity, 1)
    assert padded_rows == 16 * 32  # each device's 16 rows
    assert packed_rows == 436 and gathers == 0  # ceil(0.85 x 512), its own tokens only
    assert one_group_rows == 1741  # ceil(0.85 x 2048): every device packs the whole batch
    for a, b in zip(jax.tree.leaves(packed), jax.tree.leaves(padded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@needs_8_devices
def test_packed_training_on_a_mesh_equals_one_device(tmp_path, capsys):
    """Both encoders packed (the reader at model.token_capacity, the reranker at the host's
    bucket) on data=4 x fsdp=2: the losses equal one device's (1e-5)."""
    losses, _ = _cli_runs(tmp_path, capsys,
                          ["model.token_capacity=0.9", "model.reranker_packing_bucket=0.05"],
                          {"single": None, "mesh": "4,2,1"})
    assert len(losses["mesh"]) == 2
    np.testing.assert_allclose(losses["mesh"], losses["single"], rtol=1e-5)
