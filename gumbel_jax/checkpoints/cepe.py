"""CEPE and Llama-2 checkpoints -> ``CepeReader`` / ``LlamaForCausalLM``, streamed.

A 7B checkpoint is 34 GB in float32, so it is never read whole: shards are read one after
the other (PyTorch ``.bin`` shards memory-mapped, safetensors tensor by tensor), each tensor
cast to its stored dtype (bfloat16 weight matrices for a frozen reader) and placed on its
devices with its sharding as it is read. Host memory stays at about one shard.

Our parameter names are Hugging Face's (``model.layers.3.self_attn.q_proj``,
``model.layers.3.cross_attn.layernorm``, ``encoder.layers.0.mlp.up_proj``, ``lm_head``), so
the mapping is mechanical: ``kernel`` <- ``weight`` transposed, ``embedding`` and norm
``scale`` <- ``weight``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gumbel_jax.checkpoints._io import CheckpointError, read_config, resolve_model_dir
from gumbel_jax.models.attention import DmaMethod
from gumbel_jax.models.cepe import CepeConfig, CepeReader
from gumbel_jax.models.llama import LlamaConfig, LlamaForCausalLM

# Buffers some Llama checkpoints saved beside the weights; derived from the config.
_DERIVED_SUFFIXES = ("rotary_emb.inv_freq",)


def checkpoint_names(model: nnx.Module) -> dict[tuple, str]:
    """``{our parameter path: checkpoint tensor name}`` for every parameter of ``model``."""
    names = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        *module, leaf = map(str, path)
        if leaf not in ("kernel", "embedding", "scale"):
            raise ValueError(f"no checkpoint name for parameter {'.'.join(map(str, path))}")
        names[tuple(path)] = ".".join([*module, "weight"])
    return names


def weight_files(model_dir: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str] | None]:
    """The shard files in order, and the index's ``{tensor name: file}`` if there is one."""
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "*.bin")):
        index = model_dir / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [model_dir / f for f in sorted(set(weight_map.values()))], weight_map
        found = sorted(model_dir.glob(pattern))
        if found:
            return found, None
    raise CheckpointError(f"{model_dir}: no *.safetensors or *.bin weight files")


def stream_shard(file: pathlib.Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, array)`` of one shard, one tensor at a time (arrays view the file's memory
    where the format allows, so a tensor costs nothing until it is converted)."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
        return
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(f"{file}: a PyTorch .bin checkpoint needs torch installed") from error
    try:  # memory-mapped: tensors are read from the page cache as they are converted
        state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the pre-zip serialisation cannot be mapped
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    for name in list(state):
        tensor = state.pop(name)
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits
            import ml_dtypes

            yield name, tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            yield name, tensor.numpy()
    del state


def _stored(array: np.ndarray, transpose: bool, dtype) -> np.ndarray:
    """The checkpoint array as we store it, made in one pass (cast and transposed into one
    contiguous copy at the stored dtype, the only host copy of the tensor)."""
    array = np.asarray(array)
    if transpose:
        array = array.T
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"
    return np.ascontiguousarray(array, dtype=dtype if floating else array.dtype)


def stream_parameters(model: nnx.Module, model_dir: pathlib.Path, *, weight_dtype=jnp.float32,
                      shardings=None, source: str = "checkpoint") -> None:
    """Fill every parameter of (an abstract or concrete) ``model`` from the checkpoint folder,
    shard by shard; one :class:`CheckpointError` lists every missing, unexpected and
    mis-shaped tensor.

    Args:
      model: its parameter shapes are the expected ones (``nnx.eval_shape`` builds it free).
      model_dir: folder with ``*.safetensors`` or ``*.bin`` shards (and their index json).
      weight_dtype: dtype of stored matrices and embeddings (bfloat16 for a frozen reader);
        vectors (norm scales) stay float32, as the norms compute in float32.
      shardings: None (default device) or an ``nnx.State`` of shardings matching the
        parameters (``gumbel_jax.sharding.parameter_shardings``): each tensor goes straight
        to its devices.
      source: names the checkpoint in errors.
    """
    files, weight_map = weight_files(model_dir)
    if weight_map is not None:  # names are known before any shard is read: fail fast
        by_name = {name: path for path, name in checkpoint_names(model).items()}
        _raise_problems(source, *_name_problems(set(weight_map), by_name), [])
    tensors = (item for file in files for item in stream_shard(file))
    assign_tensors(model, tensors, weight_dtype=weight_dtype, shardings=shardings,
                   source=source)


def assign_tensors(model: nnx.Module, tensors: Iterable[tuple[str, np.ndarray]] | Mapping, *,
                   weight_dtype=jnp.float32, shardings=None, source: str = "tensors") -> None:
    """Fill ``model``'s parameters from ``(name, array)`` pairs (or a mapping), each cast and
    placed as it comes (arguments as :func:`stream_parameters`)."""
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    by_name = {name: path for path, name in checkpoint_names(model).items()}
    # Each leaf of a sharding state is a Param holding one sharding: unwrap it.
    placement = ({path: jax.tree.leaves(leaf)[0]
                  for path, leaf in nnx.to_flat_state(shardings)}
                 if shardings is not None else {})
    seen, misshaped, unexpected = set(), [], set()
    for name, array in (tensors.items() if isinstance(tensors, Mapping) else tensors):
        path = by_name.get(name)
        if path is None:
            if not name.endswith(_DERIVED_SUFFIXES):
                unexpected.add(name)
            continue
        seen.add(name)
        target = flat[path]
        transpose = path[-1] == "kernel"
        shape = tuple(reversed(array.shape)) if transpose else tuple(array.shape)
        if shape != tuple(target.shape):
            misshaped.append(f"{name}: checkpoint {tuple(array.shape)} -> {shape}, model "
                             f"expects {tuple(target.shape)}")
            continue
        value = _stored(array, transpose, weight_dtype if len(shape) >= 2 else jnp.float32)
        target.set_value(jax.device_put(value, placement.get(path)))
        del array, value  # the shard's memory is released tensor by tensor
    _raise_problems(source, sorted(set(by_name) - seen), sorted(unexpected), misshaped)
    nnx.update(model, nnx.from_flat_state(flat))


def _name_problems(present: set[str], by_name: dict) -> tuple[list[str], list[str]]:
    missing = sorted(set(by_name) - present)
    unexpected = sorted(n for n in present - set(by_name) if not n.endswith(_DERIVED_SUFFIXES))
    return missing, unexpected


def _raise_problems(source: str, missing, unexpected, misshaped) -> None:
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors ({len(misshaped)}): {'; '.join(misshaped)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the model:\n  "
                              + "\n  ".join(problems))


def _shardings(model, mesh):
    if mesh is None:
        return None
    from gumbel_jax.sharding import parameter_shardings

    return parameter_shardings(nnx.state(model, nnx.Param), mesh)


def _compute_options(options: dict) -> dict:
    known = {"dtype", "remat", "attention_implementation"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown compute options {sorted(unknown)}; expected {sorted(known)}")
    return options


def load_cepe(name_or_path: str | os.PathLike, *, mesh=None, prompt_length: int = 64,
              method: DmaMethod = "bias", frozen: bool = True, precompute_memory: bool = True,
              **compute) -> CepeReader:
    """A CEPE reader (``hyen/CEPE-LLaMA-2-7B``, ``hyen/CEPED-LLaMA-2-Chat-7B`` or a folder),
    streamed shard by shard; matrices stored in the compute dtype (``dtype=jnp.bfloat16``
    for the 7B), placed by ``mesh`` (``gumbel_jax.sharding``) if given.

    ``compute`` sets ``dtype``, ``remat`` or ``attention_implementation`` of both stacks. The
    decoder is causal and the encoder bidirectional whatever the config's ``is_decoder``
    says. A config without ``do_cross_attention`` is a plain Llama: use :func:`load_llama`.
    """
    model_dir = resolve_model_dir(name_or_path)
    raw = read_config(model_dir)
    if not raw.get("do_cross_attention") or "encoder_config" not in raw:
        raise CheckpointError(f"{model_dir}: not a CEPE checkpoint (no do_cross_attention / "
                              "encoder_config); a plain Llama loads with load_llama")
    config = CepeConfig.from_hf(raw, **_compute_options(compute))
    model = nnx.eval_shape(lambda: CepeReader(config, rngs=nnx.Rngs(0),
                                              prompt_length=prompt_length, method=method,
                                              frozen=frozen,
                                              precompute_memory=precompute_memory))
    stream_parameters(model, model_dir, weight_dtype=config.decoder.dtype,
                      shardings=_shardings(model, mesh), source=str(model_dir))
    return model


def load_llama(name_or_path: str | os.PathLike, *, mesh=None, **compute) -> LlamaForCausalLM:
    """A plain Llama-2 checkpoint as ``LlamaForCausalLM`` (streamed as :func:`load_cepe`);
    a CEPE checkpoint is refused (its encoder and cross-attention would be unexpected)."""
    model_dir = resolve_model_dir(name_or_path)
    config = LlamaConfig.from_hf(read_config(model_dir), **_compute_options(compute))
    model = nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0)))
    stream_parameters(model, model_dir, weight_dtype=config.dtype,
                      shardings=_shardings(model, mesh), source=str(model_dir))
    return model
