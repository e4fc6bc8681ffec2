"""The one place models are built: reader and reranker from a ``ModelConfig``.

The trainer, evaluation, the paper grid, the demo's configs and the benchmarks all call
:func:`build_models`, so the step a benchmark times is the step training runs: same
architectures, same compute dtype, and one attention kernel (``ModelConfig.attention``) in
every attention layer of both models.

Three ways to get weights, one interface:
  * ``reader="tiny"`` (and ``reranker="tiny"``): small random models sized by
    ``d_model / num_layers / num_heads`` over the tokenizer's vocabulary (tests, smoke runs);
  * ``*_init="random"``: random weights of an architecture preset (``models.presets``);
  * ``*_init="pretrained"``: a checkpoint folder or hub name (``gumbel_jax.checkpoints``);
and ``abstract=True`` gives shapes and dtypes only (``nnx.eval_shape``: no memory, no
download) from the presets.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from gumbel_jax.models import (
    BertConfig,
    CepeConfig,
    CepeReader,
    CrossEncoder,
    FiDReader,
    LlamaConfig,
    RankT5,
    T5Config,
)
from gumbel_jax.models.fp8 import quantize_linears
from gumbel_jax.models.presets import architecture
from gumbel_jax.training.config import ModelConfig, check_choices


def compute_options(config: ModelConfig) -> dict:
    """The compute settings every model config gets: dtype and the attention kernel."""
    return {"dtype": jnp.dtype(config.dtype),
            "attention_implementation": config.attention or None}


def tiny_architectures(config: ModelConfig, vocab_size: int):
    """(reader, reranker) architectures of the "tiny" models over ``vocab_size`` tokens."""
    options = compute_options(config)
    tiny = dict(vocab_size=vocab_size, d_model=config.d_model,
                d_kv=config.d_model // config.num_heads, d_ff=2 * config.d_model,
                num_layers=config.num_layers, num_heads=config.num_heads, **options)
    reader = (tiny_cepe(config, vocab_size) if config.reader_kind == "cepe"
              else T5Config(**tiny, num_decoder_layers=config.num_layers))
    if config.reranker_kind == "cross_encoder":
        ranker = BertConfig(vocab_size=vocab_size, hidden_size=config.d_model,
                            num_hidden_layers=config.num_layers,
                            num_attention_heads=config.num_heads,
                            intermediate_size=2 * config.d_model, type_vocab_size=1,
                            pad_token_id=0, family="roberta", remat=config.remat, **options)
    else:
        ranker = T5Config(**tiny, num_decoder_layers=1, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, remat=config.remat)
    return reader, ranker


def tiny_cepe(config: ModelConfig, vocab_size: int) -> CepeConfig:
    """A tiny CEPE: a Llama decoder of ``d_model`` cross-attending in every layer to a
    Llama encoder of half the width (CEPE's encoder is the narrower stack)."""
    options = compute_options(config)
    decoder = LlamaConfig(vocab_size=vocab_size, hidden_size=config.d_model,
                          intermediate_size=2 * config.d_model,
                          num_hidden_layers=config.num_layers,
                          num_attention_heads=config.num_heads, bos_token_id=1,
                          eos_token_id=1, pad_token_id=0, **options)  # the word tokenizer's
    encoder = dataclasses.replace(decoder, hidden_size=config.d_model // 2,
                                  intermediate_size=config.d_model,
                                  num_attention_heads=max(config.num_heads // 2, 1))
    return CepeConfig(decoder=decoder, encoder=encoder)


def preset_architecture(config: ModelConfig, role: str):
    """The preset named by ``model.{role}_architecture`` with the config's compute options
    (role: "reader" or "reranker")."""
    name = getattr(config, f"{role}_architecture")
    if not name:
        raise ValueError(f"model.{role}_architecture must name an architecture preset here "
                         f"(model.{role}_init='random' or an abstract build)")
    options = compute_options(config)
    if role == "reranker":
        options["remat"] = config.remat
    preset = architecture(name)
    if isinstance(preset, CepeConfig):
        return preset.replace_compute(**options)
    return dataclasses.replace(preset, **options)


def model_architectures(config: ModelConfig, vocab_size: int | None = None):
    """(reader, reranker) architectures without building anything: the tiny ones, or the
    presets. Benchmarks use this for FLOP counts and PyTorch peers of the same shapes."""
    if config.reader == "tiny":
        if vocab_size is None:
            raise ValueError("tiny models need the tokenizer's vocab_size")
        return tiny_architectures(config, vocab_size)
    return preset_architecture(config, "reader"), preset_architecture(config, "reranker")


def _random_reader(architecture: T5Config | CepeConfig, config: ModelConfig):
    if isinstance(architecture, CepeConfig):
        return CepeReader.random(architecture, seed=0, method=config.dma,
                                 prompt_length=config.cepe_prompt_length,
                                 precompute_memory=config.cepe_precompute_memory)
    return FiDReader.random(architecture, seed=0, method=config.dma)


def _random_reranker(architecture, config: ModelConfig, seed: int):
    if config.reranker_kind == "cross_encoder":
        return CrossEncoder.random(architecture, seed=seed)
    return RankT5.random(architecture, seed=seed, score_token_id=config.score_token_id)


def load_reader(config: ModelConfig, *, mesh=None):
    """The pretrained reader ``config.reader`` names. A CEPE checkpoint is streamed shard by
    shard, its matrices cast to the compute dtype and, with ``mesh``, placed on their chips
    as they are read (a 7B reader never sits whole on one 16 GB chip); a FiD reader is small
    and is placed later (``training.loop``)."""
    from gumbel_jax.checkpoints import load_cepe, load_fid_reader

    if config.reader_kind == "cepe":
        return load_cepe(config.reader, method=config.dma, mesh=mesh,
                         prompt_length=config.cepe_prompt_length,
                         precompute_memory=config.cepe_precompute_memory,
                         **compute_options(config))
    return load_fid_reader(config.reader, method=config.dma, **compute_options(config))


def _pretrained_reranker(config: ModelConfig):
    from gumbel_jax.checkpoints import load_cross_encoder, load_rankt5

    options = {**compute_options(config), "remat": config.remat}
    if config.reranker_kind == "cross_encoder":
        return load_cross_encoder(config.reranker, **options)
    return load_rankt5(config.reranker, score_token_id=config.score_token_id, **options)


def store_frozen_weights_in_compute_dtype(reader, dtype) -> None:
    """The frozen reader needs no float32 master copy: its weight matrices and embeddings
    are stored in the compute dtype (half the memory and no per-step casts). Vectors (norm
    scales) stay float32, as the norms compute in float32."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return
    # 8-bit floats (an FP8 encoder's kernels, models.fp8) are already smaller: left as is.
    cast = lambda x: (x.astype(dtype) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating)
                      and x.dtype.itemsize > 1 else x)
    nnx.update(reader, jax.tree.map(cast, nnx.state(reader, nnx.Param)))


def build_models(config: ModelConfig, *, vocab_size: int | None = None, seed: int = 0,
                 abstract: bool = False, mesh=None):
    """(reader, reranker) for a model config.

    Args:
      config: the model settings.
      vocab_size: the tokenizer's size (tiny models only).
      seed: the run's seed; a randomly initialised reranker draws from ``seed + 1`` (seeds
        of a from-scratch run differ in their start too). A random reader uses seed 0.
      abstract: shapes and dtypes only (``nnx.eval_shape``), from the presets or tiny sizes.
      mesh: where a pretrained CEPE reader's weights go as they are read (``load_reader``).
    """
    validate_model(config)
    if abstract or config.reader == "tiny":
        reader_arch, ranker_arch = model_architectures(config, vocab_size)

        def random_models():
            reader = _random_reader(reader_arch, config)
            store_frozen_weights_in_compute_dtype(reader, config.dtype)
            return frozen_encoder_options(
                (reader, _random_reranker(ranker_arch, config, seed + 1)), config)

        return nnx.eval_shape(random_models) if abstract else random_models()
    reader = (_random_reader(preset_architecture(config, "reader"), config)
              if config.reader_init == "random" else load_reader(config, mesh=mesh))
    store_frozen_weights_in_compute_dtype(reader, config.dtype)
    ranker = (_random_reranker(preset_architecture(config, "reranker"), config, seed + 1)
              if config.reranker_init == "random" else _pretrained_reranker(config))
    return frozen_encoder_options((reader, ranker), config)


def frozen_encoder_options(models, config: ModelConfig):
    """The options for the frozen FiD reader's encoder of ``(reader, reranker)``, which runs
    forward only: ``token_capacity`` (packing) and ``reader_fp8`` (its matrix products in
    e4m3, ``models.fp8``). The trained reranker keeps its padded encoder: packing there needs
    a differentiated ``lax.cond``, which keeps both branches' activations (see
    ``T5EncoderDecoder.encode``); ``RankT5.token_capacity`` serves inference. Returns
    ``models``."""
    reader, _ = models
    if isinstance(reader, FiDReader):
        reader.token_capacity = config.token_capacity
        if config.reader_fp8:
            quantize_linears(reader.t5.encoder)
    return models


def build_trainable_reader(config: ModelConfig, *, vocab_size: int | None = None,
                           seed: int = 0, dropout_rate: float | None = None) -> FiDReader:
    """The reader that reader training starts from (``training.reader``): "tiny" (random,
    sized by ``d_model / num_layers / num_heads``), random weights of
    ``reader_architecture`` (``reader_init="random"``), or a checkpoint by folder or hub name
    (google-t5/t5-large, google/t5-v1_1-large, google/flan-t5-large, FiD's released readers,
    a reader exported here). Unlike the frozen reader of :func:`build_models` it keeps
    float32 parameters (``model.dtype`` is its compute dtype), its encoder gets gradients and
    ``model.remat`` rematerialises its layers. ``dropout_rate`` replaces the start's
    ``T5Config.dropout_rate`` (None keeps it: config.json's, as transformers reads it; 0.1
    for tiny and random starts). An unknown checkpoint is a ``CheckpointError`` (a
    ``ValueError``) naming it."""
    check_choices(config, "model.")
    if config.reader_fp8:
        raise ValueError("model.reader_fp8 quantizes a frozen reader's encoder; a reader that "
                         "trains keeps its weights (set false)")
    options = {**compute_options(config), "remat": config.remat}
    if dropout_rate is not None:
        options["dropout_rate"] = dropout_rate
    if config.reader == "tiny" or config.reader_init == "random":
        architecture = (tiny_architectures(config, vocab_size)[0] if config.reader == "tiny"
                        else preset_architecture(config, "reader"))
        return FiDReader.random(dataclasses.replace(architecture, **options), seed=seed,
                                method=config.dma, frozen=False)
    from gumbel_jax.checkpoints import load_fid_reader

    if config.reader.startswith(("/", ".", "~")) and not Path(config.reader).expanduser().is_dir():
        # A path, not a hub name: say so now rather than after a failed hub look-up.
        raise ValueError(f"model.reader={config.reader!r}: no such folder (a start checkpoint "
                         "is a folder, a hub name such as google-t5/t5-large, or 'tiny')")
    return load_fid_reader(config.reader, method=config.dma, frozen=False, **options)


def validate_model(config: ModelConfig) -> None:
    """Model settings that cannot work, named."""
    check_choices(config, "model.")
    if not 0.0 <= config.token_capacity <= 1.0:
        raise ValueError(f"model.token_capacity={config.token_capacity} must be in [0, 1] "
                         "(the fraction of a batch's token slots the packed tokens get; 0: "
                         "off)")
    if config.token_capacity and config.reader_kind != "fid":
        raise ValueError(f"model.token_capacity={config.token_capacity} packs a FiD reader's "
                         f"encoder; model.reader_kind={config.reader_kind!r} has none (set 0)")
    bucket = config.reranker_packing_bucket
    if not 0.0 <= bucket < 1.0:
        raise ValueError(f"model.reranker_packing_bucket={bucket} must be in [0, 1) (the "
                         "bucket width of the reranker's packed capacity, e.g. 0.05; 0: off)")
    if bucket and config.reranker_kind != "rankt5":
        raise ValueError(f"model.reranker_packing_bucket={bucket} packs a RankT5 encoder; "
                         f"model.reranker_kind={config.reranker_kind!r} (set 0)")
    if config.reader_fp8 and config.reader_kind != "fid":
        raise ValueError("model.reader_fp8 quantizes a FiD reader's encoder; "
                         f"model.reader_kind={config.reader_kind!r} has none (set false)")
    if config.num_beams < 1:
        raise ValueError(f"model.num_beams={config.num_beams} must be >= 1 (1: greedy)")
    if (config.reader == "tiny") != (config.reranker == "tiny"):
        raise ValueError("model.reader and model.reranker must both be 'tiny' or both "
                         "checkpoints (tiny models share a word-level tokenizer)")
    for field in ("reader_architecture", "reranker_architecture"):
        try:
            if getattr(config, field):
                architecture(getattr(config, field))
        except ValueError as error:
            raise ValueError(f"model.{field}: {error}") from None
    if config.reader_architecture:
        is_cepe = isinstance(architecture(config.reader_architecture), CepeConfig)
        if is_cepe != (config.reader_kind == "cepe"):
            raise ValueError(f"model.reader_architecture={config.reader_architecture!r} does "
                             f"not fit model.reader_kind={config.reader_kind!r}")
    if config.reader_kind == "cepe" and config.cepe_prompt_length < 1:
        raise ValueError(f"model.cepe_prompt_length={config.cepe_prompt_length} must be >= 1 "
                         "(the prompt holds at least BOS)")


def parameter_count(module) -> int:
    """Number of parameters (``nnx.Param`` elements) of a concrete or abstract module."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def attention_kernels(module) -> dict[str, object]:
    """``{path: kernel}`` of every attention layer in a model (T5 attention, BERT layers),
    so a test (or a user) can see which kernel each one runs."""
    kernels = {}
    for path, node in nnx.iter_graph(module):
        if hasattr(node, "implementation") and isinstance(node, nnx.Module):
            kernels["/".join(map(str, path))] = node.implementation
    return kernels
