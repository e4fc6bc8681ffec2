"""Public checkpoint import: safetensors / PyTorch state dicts -> our Flax parameters."""

from gumbel_jax.checkpoints._io import CheckpointError, read_tensors, resolve_model_dir
from gumbel_jax.checkpoints.bert import (
    bert_encoder_from_tensors,
    cross_encoder_from_tensors,
    load_bert_encoder,
    load_cross_encoder,
)
from gumbel_jax.checkpoints.t5 import (
    load_fid_reader,
    load_rankt5,
    load_t5,
    normalize_t5_names,
    t5_from_tensors,
)

__all__ = [
    "CheckpointError",
    "bert_encoder_from_tensors",
    "cross_encoder_from_tensors",
    "load_bert_encoder",
    "load_cross_encoder",
    "load_fid_reader",
    "load_rankt5",
    "load_t5",
    "normalize_t5_names",
    "read_tensors",
    "resolve_model_dir",
    "t5_from_tensors",
]
