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
    config = "experiments/configs/synthetic_g_rerank.py"
    small = ["data.num_train=16", "data.num_eval=8", "data.batch_size=8", "train.num_steps=2",
             "train.checkpoint_every=2", "model.d_model=16", "model.num_layers=1"]
    overrides = sum((["--set", s] for s in small), [])
    outputs = {}
    for name, mesh in (("single", []), ("mesh", ["--mesh", "8,1,1"])):
        assert train_cli.main(["--config", config, "--workdir", str(tmp_path / name),
                               *overrides, *mesh]) == 0
        outputs[name] = json.loads(capsys.readouterr().out)
    losses = {name: [json.loads(line)["loss"] for line in
                     (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                     if "loss" in json.loads(line)] for name in outputs}
    assert len(losses["mesh"]) == 2
    assert placed and all(shape == {"data": 8, "fsdp": 1, "tensor": 1} for shape in placed)
    np.testing.assert_allclose(losses["mesh"], losses["single"], rtol=1e-5)
    assert outputs["mesh"]["recall@5"] == pytest.approx(outputs["single"]["recall@5"])
    assert train_cli.main(["--config", config, "--workdir", str(tmp_path / "bad"),
                           *overrides, "--mesh", "8,1"]) == 2
    assert "expected three integers" in capsys.readouterr().err


@pytest.mark.slow
@needs_8_devices
def test_fp8_reader_trains_on_a_mesh_with_its_kernels_split_as_before(tmp_path, capsys):
    """model.reader_fp8 on data=2 x fsdp=2 x tensor=2: the e4m3 kernels shard by their
    original logical axes, the activation scales (maxima) are the same on any mesh, and the
    losses equal one device's (sums round differently; a rounding that crosses an e4m3 step
    may move a loss more than plain float32 would: 1e-3)."""
    from flax import nnx

    from experiments import train as train_cli
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
    assert query["kernel"].spec == PartitionSpec("fsdp", "tensor")  # (embed, heads)
    assert query["kernel_scale"].spec == PartitionSpec()

    config = "experiments/configs/synthetic_g_rerank.py"
    small = ["data.num_train=16", "data.num_eval=8", "data.batch_size=8", "train.num_steps=2",
             "train.checkpoint_every=2", "model.d_model=16", "model.num_layers=1",
             "model.reader_fp8=True"]
    overrides = sum((["--set", s] for s in small), [])
    losses = {}
    for name, flags in (("single", []), ("mesh", ["--mesh", "2,2,2"])):
        assert train_cli.main(["--config", config, "--workdir", str(tmp_path / name),
                               *overrides, *flags]) == 0, capsys.readouterr().err
        capsys.readouterr()
        losses[name] = [json.loads(line)["loss"] for line in
                        (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                        if "loss" in json.loads(line)]
    assert len(losses["mesh"]) == 2
    np.testing.assert_allclose(losses["mesh"], losses["single"], rtol=1e-3)
