"""Public checkpoint import: safetensors / PyTorch state dicts -> our Flax parameters."""

from gumbel_jax.checkpoints._io import CheckpointError, read_tensors, resolve_model_dir
from gumbel_jax.checkpoints.bert import (
    bert_encoder_from_tensors,
    cross_encoder_from_tensors,
    load_bert_encoder,
    load_cross_encoder,
)
from gumbel_jax.checkpoints.cepe import load_cepe, load_llama
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
    "load_cepe",
    "load_cross_encoder",
    "load_fid_reader",
    "load_llama",
    "load_rankt5",
    "load_t5",
    "normalize_t5_names",
    "read_tensors",
    "resolve_model_dir",
    "t5_from_tensors",
]

# Export (the inverse of the import above) and reading an export back.
from gumbel_jax.checkpoints.export import (  # noqa: E402
    ExportError,
    LoadedModel,
    bert_config_to_hf,
    cross_encoder_to_tensors,
    export_reader,
    export_reranker,
    load_exported_reader,
    load_exported_reranker,
    t5_config_to_hf,
    t5_to_tensors,
)

__all__ += [
    "ExportError",
    "LoadedModel",
    "bert_config_to_hf",
    "cross_encoder_to_tensors",
    "export_reader",
    "export_reranker",
    "load_exported_reader",
    "load_exported_reranker",
    "t5_config_to_hf",
    "t5_to_tensors",
]
