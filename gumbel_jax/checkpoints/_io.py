"""Reading public checkpoints: locate a model folder, read its tensors, assign them to our
parameters with a complete report of anything missing, unexpected or mis-shaped."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message lists every offending tensor."""


def resolve_model_dir(name_or_path: str | os.PathLike) -> pathlib.Path:
    """A local folder as is; otherwise a Hugging Face hub name, downloaded (or taken from the
    local cache) with ``huggingface_hub``. Offline (``HF_HUB_OFFLINE=1``) only the cache is
    used, and a missing model is a clear error."""
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a model folder, found a file")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - huggingface_hub ships with transformers
        raise CheckpointError(f"{name_or_path}: not a folder, and huggingface_hub is missing"
                              ) from error
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt"]
    try:
        local = snapshot_download(str(name_or_path), allow_patterns=patterns)
        if not any(pathlib.Path(local).glob("*.safetensors")):
            local = snapshot_download(str(name_or_path), allow_patterns=[*patterns, "*.bin"])
    except Exception as error:
        raise CheckpointError(
            f"{name_or_path}: not a local folder and could not be fetched from the hub "
            f"({type(error).__name__}: {error})") from error
    return pathlib.Path(local)


def read_config(model_dir: pathlib.Path) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{model_dir}: no config.json")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_file}: invalid JSON at line {error.lineno}: "
                              f"{error.msg}") from error


def _weight_files(model_dir: pathlib.Path) -> list[pathlib.Path]:
    for index_name, pattern in (("model.safetensors.index.json", "*.safetensors"),
                                ("pytorch_model.bin.index.json", "*.bin")):
        index = model_dir / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [model_dir / name for name in names]
        found = sorted(model_dir.glob(pattern))
        if found:
            return found
    raise CheckpointError(f"{model_dir}: no *.safetensors or *.bin weight files")


def read_tensors(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a model folder as float32/int numpy arrays, by their checkpoint name."""
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(pathlib.Path(model_dir)):
        if file.suffix == ".safetensors":
            tensors.update(_read_safetensors(file))
        else:
            tensors.update(_read_torch_bin(file))
    return tensors


def _read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        # The flax reader returns jax arrays and handles bfloat16, which numpy cannot hold.
        with safe_open(str(file), framework="flax") as handle:
            for name in handle.keys():
                array = handle.get_tensor(name)
                if jnp.issubdtype(array.dtype, jnp.floating):
                    array = array.astype(jnp.float32)
                out[name] = np.asarray(array)
    except Exception as error:
        raise CheckpointError(f"{file}: cannot read safetensors ({error})") from error
    return out


def _read_torch_bin(file: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(f"{file}: a PyTorch .bin checkpoint needs torch installed "
                              "(or convert it to safetensors)") from error
    state = torch.load(str(file), map_location="cpu", weights_only=True)
    return {name: tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
            for name, tensor in state.items()}


def _set(variable, value) -> None:
    # Older flax has only the `.value` setter; newer ones deprecate it for set_value.
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:  # pragma: no cover
        variable.value = value


# One parameter of ours <- one checkpoint tensor, through an optional transform.
ParamSpec = tuple[tuple, str, Callable[[np.ndarray], np.ndarray] | None]


def transpose(array: np.ndarray) -> np.ndarray:
    """PyTorch Linear stores [out, in]; ours is [in, out]."""
    return array.T


def assign_params(model: nnx.Module, specs: Iterable[ParamSpec],
                  tensors: Mapping[str, np.ndarray], *, source: str,
                  ignore: Iterable[str] = ()) -> None:
    """Set every parameter of ``model`` from ``tensors`` or raise one error listing all
    missing, unexpected and mis-shaped tensors (nothing is left at its random init)."""
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    specs = list(specs)
    missing, misshaped, used = [], [], set()
    covered = {path for path, _, _ in specs}
    uncovered = sorted(".".join(map(str, p)) for p in flat if p not in covered)
    for path, name, transform in specs:
        if name not in tensors:
            missing.append(name)
            continue
        used.add(name)
        value = transform(tensors[name]) if transform else tensors[name]
        target = flat[path]
        if tuple(value.shape) != tuple(target.shape):
            misshaped.append(f"{name}: checkpoint {tuple(tensors[name].shape)} -> "
                             f"{tuple(value.shape)}, model expects {tuple(target.shape)}")
            continue
        _set(target, jnp.asarray(value, target.dtype))
    unexpected = sorted(set(tensors) - used - set(ignore))
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors ({len(misshaped)}): {'; '.join(misshaped)}")
    if uncovered:
        problems.append(f"model parameters with no checkpoint tensor: {', '.join(uncovered)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the model:\n  "
                              + "\n  ".join(problems))
    nnx.update(model, nnx.from_flat_state(flat))
