"""Device mesh and shardings: one mesh with axes (data, fsdp, tensor); batches split over
(data, fsdp); parameters by the logical axis names the models give them, through one rules
table (``PARAMETER_RULES``)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis (named in gumbel_jax/models) -> mesh axis. Unnamed axes replicate.
PARAMETER_RULES = {
    "embed": "fsdp",  # model width: split parameters (and optimizer state) over fsdp
    "mlp": "tensor",  # feed-forward width: tensor parallel
    "heads": "tensor",  # attention heads x head dim
    "vocab": "tensor",
}


def make_mesh(*, data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all, of every process); -1
    takes the rest.

    Over all devices the order comes from ``jax.make_mesh``, which knows the TPU topology
    (neighbouring chips on the axes that communicate most); given ``devices`` are used in
    their order. The axes are ``Auto`` (the compiler places what the rules leave open), as a
    plain ``Mesh`` has them.
    """
    every_device = devices is None
    devices = list(jax.devices() if every_device else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into fsdp x tensor = {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs "
                         f"{int(np.prod(sizes))} devices, have {len(devices)}")
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if every_device:
        return jax.make_mesh(sizes, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh | None) -> int:
    """How many blocks a batch's first axis is split into over the mesh (data x fsdp);
    1 without a mesh."""
    return 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """``batch_size`` is the global batch (every process's examples together)."""
    shards = batch_shards(mesh)
    if batch_size % shards:
        raise ValueError(f"batch size {batch_size} is not divisible by the {shards} batch "
                         "shards (data x fsdp) of the mesh")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """One global batch from this process's examples, split along the first axis over
    (data, fsdp). With several processes (multi-host) each passes its own part, in process
    order; with one process the host batch is the global batch."""
    local = len(next(iter(batch.values())))
    check_batch_size(local * jax.process_count(), mesh)
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)



def _mesh_spec(logical_spec, shape, mesh: Mesh) -> PartitionSpec:
    """Logical names -> mesh axes; an axis not divisible by its mesh axis stays whole."""
    axes = []
    for name, size in zip(tuple(logical_spec) + (None,) * len(shape), shape, strict=False):
        axis = PARAMETER_RULES.get(name) if name else None
        axes.append(axis if axis and size % mesh.shape[axis] == 0 else None)
    return PartitionSpec(*axes)


def parameter_shardings(state, mesh: Mesh):
    """NamedShardings for an ``nnx.State`` of parameters, from their logical axis names."""
    from flax import nnx

    specs = nnx.get_partition_spec(state)
    is_spec = lambda x: isinstance(x, PartitionSpec)
    return jax.tree.map(lambda spec, leaf: NamedSharding(mesh, _mesh_spec(spec, leaf.shape,
                                                                          mesh)),
                        specs, state, is_leaf=is_spec)


def shard_parameters(state, mesh: Mesh):
    """Place a parameter state on the mesh by ``PARAMETER_RULES``."""
    return jax.device_put(state, parameter_shardings(state, mesh))
