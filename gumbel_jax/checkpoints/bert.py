"""BERT / MiniLM / XLM-RoBERTa (BGE reranker) checkpoints -> our encoders and cross-encoder."""

from __future__ import annotations

import os

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
from gumbel_jax.models.bert import BertConfig, BertEncoder, CrossEncoder

_OLD_NORM_NAMES = {".gamma": ".weight", ".beta": ".bias"}


def normalize_bert_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the ``bert.`` / ``roberta.`` prefix of task models and rename the old TF-era
    LayerNorm ``gamma``/``beta``; the classification head keeps its names."""
    out = {}
    for name, value in tensors.items():
        for prefix in ("bert.", "roberta."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        for old, new in _OLD_NORM_NAMES.items():
            if name.endswith(old) and "LayerNorm" in name:
                name = name[: -len(old)] + new
        out[name] = value
    return out


def _linear(ours: tuple, theirs: str) -> list[ParamSpec]:
    return [((*ours, "kernel"), f"{theirs}.weight", transpose),
            ((*ours, "bias"), f"{theirs}.bias", None)]


def _norm(ours: tuple, theirs: str) -> list[ParamSpec]:
    return [((*ours, "scale"), f"{theirs}.weight", None), ((*ours, "bias"), f"{theirs}.bias", None)]


def bert_encoder_specs(config: BertConfig, prefix: tuple = ()) -> list[ParamSpec]:
    specs: list[ParamSpec] = [
        ((*prefix, f"{kind}_embeddings", "embedding"), f"embeddings.{kind}_embeddings.weight",
         None) for kind in ("word", "position", "token_type")]
    specs += _norm((*prefix, "embedding_norm"), "embeddings.LayerNorm")
    for index in range(config.num_hidden_layers):
        ours, theirs = (*prefix, "layers", index), f"encoder.layer.{index}"
        for name in ("query", "key", "value"):
            specs += _linear((*ours, name), f"{theirs}.attention.self.{name}")
        specs += _linear((*ours, "attention_output"), f"{theirs}.attention.output.dense")
        specs += _norm((*ours, "attention_norm"), f"{theirs}.attention.output.LayerNorm")
        specs += _linear((*ours, "intermediate"), f"{theirs}.intermediate.dense")
        specs += _linear((*ours, "output"), f"{theirs}.output.dense")
        specs += _norm((*ours, "output_norm"), f"{theirs}.output.LayerNorm")
    return specs


def cross_encoder_specs(config: BertConfig) -> list[ParamSpec]:
    specs = bert_encoder_specs(config, ("encoder",))
    if config.family == "roberta":
        specs += _linear(("head_dense",), "classifier.dense")
        specs += _linear(("head_out",), "classifier.out_proj")
    else:
        specs += _linear(("head_dense",), "pooler.dense")
        specs += _linear(("head_out",), "classifier")
    return specs


def _buffers(tensors) -> list[str]:
    # Non-parameter buffers some checkpoints carry.
    return [n for n in tensors if n.endswith("position_ids") or n.endswith("token_type_ids")]


def bert_encoder_from_tensors(config: BertConfig, tensors: dict[str, np.ndarray], *,
                              source: str = "checkpoint") -> BertEncoder:
    """A bare encoder (e.g. MiniLM for embeddings); a pooler, if present, is not used."""
    tensors = normalize_bert_names(tensors)
    model = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))
    ignore = _buffers(tensors) + [n for n in tensors if n.startswith(("pooler.", "classifier."))]
    assign_params(model, bert_encoder_specs(config), tensors, source=source, ignore=ignore)
    return model


def cross_encoder_from_tensors(config: BertConfig, tensors: dict[str, np.ndarray], *,
                               source: str = "checkpoint") -> CrossEncoder:
    tensors = normalize_bert_names(tensors)
    head = "classifier.out_proj.weight" if config.family == "roberta" else "classifier.weight"
    if head in tensors and tensors[head].shape[0] != 1:
        raise CheckpointError(f"{source}: the classification head has "
                              f"{tensors[head].shape[0]} outputs; a reranker needs exactly 1")
    model = nnx.eval_shape(lambda: CrossEncoder(config, rngs=nnx.Rngs(0)))
    ignore = _buffers(tensors)
    if config.family == "roberta":
        ignore += [n for n in tensors if n.startswith("pooler.")]
    assign_params(model, cross_encoder_specs(config), tensors, source=source, ignore=ignore)
    return model


def load_bert_encoder(name_or_path: str | os.PathLike, **config_overrides) -> BertEncoder:
    model_dir = resolve_model_dir(name_or_path)
    config = BertConfig.from_hf(read_config(model_dir), **config_overrides)
    return bert_encoder_from_tensors(config, read_tensors(model_dir), source=str(model_dir))


def load_cross_encoder(name_or_path: str | os.PathLike, **config_overrides) -> CrossEncoder:
    """A BERT or XLM-RoBERTa sequence-classification checkpoint with one label (e.g.
    ``BAAI/bge-reranker-base``, ``cross-encoder/ms-marco-MiniLM-L-6-v2``)."""
    model_dir = resolve_model_dir(name_or_path)
    config = BertConfig.from_hf(read_config(model_dir), **config_overrides)
    return cross_encoder_from_tensors(config, read_tensors(model_dir), source=str(model_dir))
