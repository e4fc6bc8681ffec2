"""T5 / Flan-T5 / RankT5 / FiD checkpoints -> ``T5EncoderDecoder`` parameters."""

from __future__ import annotations

import os
import re

import numpy as np
from flax import nnx

from gumbel_jax.checkpoints._io import (
    CheckpointError,
    ParamSpec,
    assign_params,
    read_config,
    read_tensors,
    resolve_model_dir,
    transpose,
)
from gumbel_jax.models.attention import DmaMethod
from gumbel_jax.models.fid import FiDReader
from gumbel_jax.models.rankt5 import RANKT5_SCORE_TOKEN_ID, RankT5
from gumbel_jax.models.t5 import T5Config, T5EncoderDecoder

# FiD's reader wraps the encoder (EncoderWrapper.encoder) and each encoder block
# (CheckpointWrapper.module) before saving, so its keys read "encoder.encoder.block.3.module.…".
_FID_ENCODER = re.compile(r"^encoder\.encoder\.")
_FID_BLOCK = re.compile(r"^(encoder\.block\.\d+)\.module\.")


def normalize_t5_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map FiD-wrapped names to plain T5 names; plain checkpoints pass through."""
    out = {}
    for name, value in tensors.items():
        plain = _FID_BLOCK.sub(r"\1.", _FID_ENCODER.sub("encoder.", name))
        out[plain] = value
    return out


def _attention_specs(ours: tuple, theirs: str) -> list[ParamSpec]:
    return [((*ours, p, "kernel"), f"{theirs}.{p}.weight", transpose) for p in "qkvo"]


def _block_specs(stack: str, index: int, config: T5Config) -> list[ParamSpec]:
    ours = (stack, "layers", index)
    theirs = f"{stack}.block.{index}.layer"
    specs = _attention_specs((*ours, "self_attention"), f"{theirs}.0.SelfAttention")
    specs.append(((*ours, "self_attention_norm", "scale"), f"{theirs}.0.layer_norm.weight", None))
    mlp_index = 1
    if stack == "decoder":
        specs += _attention_specs((*ours, "cross_attention"), f"{theirs}.1.EncDecAttention")
        specs.append(((*ours, "cross_attention_norm", "scale"), f"{theirs}.1.layer_norm.weight",
                      None))
        mlp_index = 2
    names = ["wi_0", "wi_1", "wo"] if config.is_gated else ["wi", "wo"]
    for name in names:
        specs.append(((*ours, "mlp", name, "kernel"),
                      f"{theirs}.{mlp_index}.DenseReluDense.{name}.weight", transpose))
    specs.append(((*ours, "mlp_norm", "scale"), f"{theirs}.{mlp_index}.layer_norm.weight", None))
    return specs


def t5_param_specs(config: T5Config) -> list[ParamSpec]:
    """Every parameter of ``T5EncoderDecoder(config)`` with its Hugging Face tensor name."""
    specs: list[ParamSpec] = [(("shared", "embedding"), "shared.weight", None)]
    for stack, num_layers in (("encoder", config.num_layers),
                              ("decoder", config.num_decoder_layers)):
        for index in range(num_layers):
            specs += _block_specs(stack, index, config)
        specs.append(((stack, "relative_attention_bias", "embedding"),
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      None))
        specs.append(((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", None))
    if not config.tie_word_embeddings:
        specs.append((("lm_head", "kernel"), "lm_head.weight", transpose))
    return specs


def _tied_copies(tensors: dict[str, np.ndarray], config: T5Config) -> list[str]:
    """Names that repeat the shared embedding (checked equal) and may be ignored."""
    names = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if config.tie_word_embeddings:
        names.append("lm_head.weight")
    shared = tensors.get("shared.weight")
    for name in names:
        if name in tensors and shared is not None and not np.array_equal(tensors[name], shared):
            raise CheckpointError(f"{name} differs from shared.weight, but T5 ties them")
    # Some old checkpoints carry an unused relative bias in the decoder's cross-attention.
    unused = [n for n in tensors if n.endswith("EncDecAttention.relative_attention_bias.weight")]
    return names + unused


def t5_from_tensors(config: T5Config, tensors: dict[str, np.ndarray], *,
                    source: str = "checkpoint") -> T5EncoderDecoder:
    """Build ``T5EncoderDecoder`` from checkpoint tensors without a random initialisation."""
    tensors = normalize_t5_names(tensors)
    model = nnx.eval_shape(lambda: T5EncoderDecoder(config, rngs=nnx.Rngs(0)))
    assign_params(model, t5_param_specs(config), tensors, source=source,
                  ignore=_tied_copies(tensors, config))
    return model


def load_t5(name_or_path: str | os.PathLike, **config_overrides) -> T5EncoderDecoder:
    """Load a T5-family checkpoint (T5, T5 v1.1, Flan-T5, RankT5, FiD readers) by folder or
    hub name. ``config_overrides`` set compute options such as ``dtype``, ``remat`` or
    ``attention_implementation``."""
    model_dir = resolve_model_dir(name_or_path)
    config = T5Config.from_hf(read_config(model_dir), **config_overrides)
    return t5_from_tensors(config, read_tensors(model_dir), source=str(model_dir))


def load_fid_reader(name_or_path: str | os.PathLike, *, method: DmaMethod = "bias",
                    frozen: bool = True, **config_overrides) -> FiDReader:
    """A FiD reader (FiD's wrapped keys accepted) or any T5 checkpoint read as one."""
    return FiDReader(load_t5(name_or_path, **config_overrides), method=method, frozen=frozen)


def load_rankt5(name_or_path: str | os.PathLike, *,
                score_token_id: int = RANKT5_SCORE_TOKEN_ID, **config_overrides) -> RankT5:
    """A RankT5 reranker (e.g. ``Soyoung97/RankT5-base``)."""
    return RankT5(load_t5(name_or_path, **config_overrides), score_token_id=score_token_id)
