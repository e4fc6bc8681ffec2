"""An experiment = data + models + training settings, built from one config and runnable from
the command line (``experiments/train.py``, ``experiments/evaluate.py``)."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from gumbel_jax.data.pipeline import FeatureSpec, Featurizer, make_dataset
from gumbel_jax.data.synthetic import WorldConfig, make_records
from gumbel_jax.training.config import TrainConfig, validate


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic", or "tfds:<name>" prepared by prepare_data
    data_dir: str = ""  # tfds data_dir
    train_split: str = "train"
    eval_split: str = "validation"
    num_train: int = 512  # synthetic only
    num_eval: int = 128  # synthetic only; for tfds, at most this many evaluation questions
    # "Mining" (the paper's term): after training, rank this many training questions'
    # candidates (no labels were used in training) -> mining.json. 0: skip.
    num_mining: int = 0
    world: WorldConfig = dataclasses.field(default_factory=WorldConfig)
    num_candidates: int = 10
    reader_length: int = 24
    ranker_length: int = 24
    answer_length: int = 4
    batch_size: int = 16


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Checkpoints by folder or hub name; "tiny" builds small random models (tests, smoke
    runs) whose sizes follow below."""

    reader: str = "tiny"
    reranker: str = "tiny"
    reranker_kind: str = "rankt5"  # rankt5 | cross_encoder (BERT / XLM-R, e.g. BGE)
    # "pretrained" loads ``reranker``; "random" starts from random weights of
    # ``reranker_architecture`` (the from-scratch ablation; ``reranker`` still names the
    # tokenizer).
    reranker_init: str = "pretrained"
    # Presets of gumbel_jax.models.presets ("t5-large", "t5-v1_1-base", "xlm-roberta-base"):
    # the shapes of the checkpoints above, for abstract builds and from-scratch starts.
    reader_architecture: str = ""
    reranker_architecture: str = ""
    reader_tokenizer: str = ""  # defaults to the reader's name
    reranker_tokenizer: str = ""  # defaults to the reranker's name
    score_token_id: int = 32089  # RankT5's <extra_id_10>; tiny models use 3
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 4
    dma: str = "bias"  # document-masked attention: bias | blockwise
    # Attention kernel of the reader (encoder self-attention and masked cross-attention):
    # "" (einsum), "xla" or "cudnn" (GPU; its bias gradient is verified in the tests).
    attention: str = ""
    remat: bool = False  # rematerialise the reranker's layers (batch for memory)
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators); params stay float32


RERANKER_KINDS = ("rankt5", "cross_encoder")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def config_from_json(raw: dict) -> ExperimentConfig:
    from gumbel_jax.training.config import ObjectiveConfig, OptimizerConfig

    data = dict(raw["data"])
    data["world"] = WorldConfig(**data["world"])
    train = dict(raw["train"])
    train["objective"] = ObjectiveConfig(**train["objective"])
    train["optimizer"] = OptimizerConfig(**train["optimizer"])
    return ExperimentConfig(raw["name"], DataConfig(**data), ModelConfig(**raw["model"]),
                            TrainConfig(**train))


def _records(config: DataConfig):
    if config.source == "synthetic":
        return (make_records(config.world, config.num_train, split_seed=0, prefix="train"),
                make_records(config.world, config.num_eval, split_seed=1, prefix="eval"))
    if config.source.startswith("tfds:"):
        import tensorflow_datasets as tfds

        from gumbel_jax.data.pipeline import as_record

        name = config.source.removeprefix("tfds:")
        train = tfds.data_source(name, split=config.train_split, data_dir=config.data_dir)
        evaluation = tfds.data_source(name, split=config.eval_split, data_dir=config.data_dir)
        count = min(len(evaluation), config.num_eval)
        return train, [as_record(evaluation[i]) for i in range(count)]
    raise ValueError(f"data.source={config.source!r}: expected 'synthetic' or 'tfds:<name>'")


def _tokenizers(config: ExperimentConfig, train_records, eval_records):
    model = config.model
    if model.reader == "tiny" or model.reranker == "tiny":
        if model.reader != model.reranker:
            raise ValueError("model.reader and model.reranker must both be 'tiny' or both "
                             "checkpoints (tiny models share a word-level tokenizer)")
        from gumbel_jax.data.pipeline import as_record
        from gumbel_jax.data.tokenizer import word_level_tokenizer

        # Tiny models read any records (synthetic or a prepared dataset) through a word
        # vocabulary built from them; a real checkpoint brings its own tokenizer.
        records = [as_record(r) for r in train_records] + list(eval_records)
        tokenizer = word_level_tokenizer(records)
        return tokenizer, tokenizer
    from transformers import AutoTokenizer

    return (AutoTokenizer.from_pretrained(model.reader_tokenizer or model.reader),
            AutoTokenizer.from_pretrained(model.reranker_tokenizer or model.reranker))


def _tiny_configs(config: ModelConfig, vocab_size: int, dtype):
    from gumbel_jax.models import BertConfig, T5Config

    tiny = dict(dtype=dtype, vocab_size=vocab_size, d_model=config.d_model,
                d_kv=config.d_model // config.num_heads, d_ff=2 * config.d_model,
                num_layers=config.num_layers, num_heads=config.num_heads)
    reader = T5Config(**tiny, num_decoder_layers=config.num_layers)
    if config.reranker_kind == "cross_encoder":
        ranker = BertConfig(vocab_size=vocab_size, hidden_size=config.d_model,
                            num_hidden_layers=config.num_layers,
                            num_attention_heads=config.num_heads,
                            intermediate_size=2 * config.d_model, type_vocab_size=1,
                            pad_token_id=0, family="roberta", dtype=dtype,
                            remat=config.remat)
    else:
        ranker = T5Config(**tiny, num_decoder_layers=1, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, remat=config.remat)
    return reader, ranker


def _preset(name: str, field: str, **options):
    from gumbel_jax.models.presets import architecture

    if not name:
        raise ValueError(f"model.{field} must name an architecture preset here")
    return dataclasses.replace(architecture(name), **options)


def _random_reranker(kind: str, ranker_config, seed: int, score_token_id: int):
    from flax import nnx

    from gumbel_jax.models import CrossEncoder, RankT5

    if kind == "cross_encoder":
        return CrossEncoder(ranker_config, rngs=nnx.Rngs(seed))
    return RankT5.random(ranker_config, seed=seed, score_token_id=score_token_id)


def _models(config: ModelConfig, vocab_size: int, seed: int = 0):
    """(reader, reranker); a randomly initialised reranker draws from ``seed`` + 1 (the
    run's seed: seeds of a from-scratch run differ in their start too)."""
    import jax.numpy as jnp

    from gumbel_jax.models import CrossEncoder, FiDReader, RankT5

    dtype = jnp.dtype(config.dtype)
    kernel = config.attention or None
    if config.reader == "tiny":
        reader_config, ranker_config = _tiny_configs(config, vocab_size, dtype)
        reader = FiDReader.random(reader_config, seed=0, method=config.dma,
                                  implementation=kernel)
        return reader, _random_reranker(config.reranker_kind, ranker_config, seed + 1,
                                        config.score_token_id)
    reader = FiDReader.from_pretrained(config.reader, dtype=dtype, method=config.dma,
                                       implementation=kernel)
    if config.reranker_init == "random":
        ranker_config = _preset(config.reranker_architecture, "reranker_architecture",
                                dtype=dtype, remat=config.remat)
        return reader, _random_reranker(config.reranker_kind, ranker_config, seed + 1,
                                        config.score_token_id)
    if config.reranker_kind == "cross_encoder":
        ranker = CrossEncoder.from_pretrained(config.reranker, dtype=dtype,
                                              remat=config.remat)
    else:
        ranker = RankT5.from_pretrained(config.reranker, dtype=dtype, remat=config.remat,
                                        score_token_id=config.score_token_id)
    return reader, ranker


def abstract_models(config: ModelConfig):
    """(reader, reranker) built abstractly (``nnx.eval_shape``: shapes and dtypes, no
    memory, no download) from the architecture presets the config names."""
    import jax.numpy as jnp
    from flax import nnx

    from gumbel_jax.models import FiDReader

    dtype = jnp.dtype(config.dtype)
    reader_config = _preset(config.reader_architecture, "reader_architecture", dtype=dtype)
    ranker_config = _preset(config.reranker_architecture, "reranker_architecture",
                            dtype=dtype, remat=config.remat)
    reader = nnx.eval_shape(lambda: FiDReader.random(reader_config, method=config.dma))
    ranker = nnx.eval_shape(lambda: _random_reranker(config.reranker_kind, ranker_config, 1,
                                                     config.score_token_id))
    return reader, ranker


def parameter_count(module) -> int:
    """Number of parameters (``nnx.Param`` elements) of a concrete or abstract module."""
    import math

    import jax
    from flax import nnx

    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def validate_model(config: ModelConfig) -> None:
    """Model settings that cannot work, named."""
    if config.reranker_kind not in RERANKER_KINDS:
        raise ValueError(f"model.reranker_kind={config.reranker_kind!r}; expected one of "
                         f"{RERANKER_KINDS}")
    if config.reranker_init not in ("pretrained", "random"):
        raise ValueError(f"model.reranker_init={config.reranker_init!r}; expected "
                         "'pretrained' or 'random'")
    if config.attention not in ("", "xla", "cudnn"):
        raise ValueError(f"model.attention={config.attention!r}; expected '', 'xla' or "
                         "'cudnn'")
    from gumbel_jax.models.presets import architecture

    for field in ("reader_architecture", "reranker_architecture"):
        try:
            if getattr(config, field):
                architecture(getattr(config, field))
        except ValueError as error:
            raise ValueError(f"model.{field}: {error}") from None


def _featurizer(config: ExperimentConfig, reader_tokenizer, ranker_tokenizer) -> Featurizer:
    from gumbel_jax.models.inputs import cross_encoder_pair

    data = config.data
    options = {}
    if config.model.reranker_kind == "cross_encoder":
        options["ranker_template"] = cross_encoder_pair
    return Featurizer(reader_tokenizer, ranker_tokenizer,
                      FeatureSpec(data.num_candidates, data.reader_length, data.ranker_length,
                                  data.answer_length), **options)


def build(config: ExperimentConfig):
    """(reader, ranker, train_source, eval_records, featurize) for a config."""
    validate(config.train, num_candidates=config.data.num_candidates)
    validate_model(config.model)
    train_records, eval_records = _records(config.data)
    reader_tokenizer, ranker_tokenizer = _tokenizers(config, train_records, eval_records)
    featurize = _featurizer(config, reader_tokenizer, ranker_tokenizer)
    reader, ranker = _models(config.model, len(reader_tokenizer), config.train.seed)
    if getattr(getattr(ranker, "config", None), "type_vocab_size", 1) > 1:
        # Training feeds (ids, mask) only; a BERT cross-encoder would silently read its
        # passage as segment 0.
        raise ValueError(f"{config.model.reranker}: a cross-encoder with segment (token type)"
                         " ids is not supported in training; XLM-R rerankers (BGE) have none")
    return reader, ranker, train_records, eval_records, featurize


def _mining_records(train_source, count: int):
    from gumbel_jax.data.pipeline import as_record

    return [as_record(train_source[i]) for i in range(min(count, len(train_source)))]


def _evaluate_held_out(config: ExperimentConfig, ranker, reader, eval_records, featurize):
    """Rank the held-out questions and let the reader answer from the top k."""
    from gumbel_jax.training.evaluation import evaluate

    return evaluate(ranker, reader, eval_records, featurize, k=config.train.objective.k,
                    batch_size=config.data.batch_size, tokenizer=featurize.reader_tokenizer,
                    max_answer_length=config.data.answer_length)


def run_training(config: ExperimentConfig, workdir, *, mesh=None) -> dict:
    from gumbel_jax.training.evaluation import evaluate, write_evaluation
    from gumbel_jax.training.loop import train

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "experiment.json").write_text(
        json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    import jax

    processes = jax.process_count()
    if config.data.batch_size % processes:
        raise ValueError(f"data.batch_size={config.data.batch_size} (the global batch) is not "
                         f"divisible by the {processes} processes")
    reader, ranker, train_source, eval_records, featurize = build(config)
    dataset = make_dataset(train_source, featurize, seed=config.train.seed,
                           batch_size=config.data.batch_size // processes)
    metrics = train(config.train, ranker=ranker, reader=reader, dataset=dataset,
                    workdir=workdir, mesh=mesh)
    if processes > 1:
        # Multi-host: every process evaluates on its own devices from a full copy of the
        # trained parameters; the first one writes the files.
        from flax import nnx
        from jax.experimental import multihost_utils

        nnx.update(ranker, multihost_utils.process_allgather(nnx.state(ranker)))
        if jax.process_index() != 0:
            return metrics
    if not metrics.get("preempted"):
        results = _evaluate_held_out(config, ranker, reader, eval_records, featurize)
        if config.data.num_mining:
            mining = evaluate(ranker, reader, _mining_records(train_source,
                                                              config.data.num_mining),
                              featurize, k=config.train.objective.k,
                              batch_size=config.data.batch_size)
            write_evaluation(workdir, mining, name="mining")
            metrics.update({f"mining_{key}": value
                            for key, value in mining["metrics"].items()})
        # eval.json last: its presence marks a finished run (experiments.reproduce).
        write_evaluation(workdir, results)
        metrics = {**metrics, **results["metrics"]}
    return metrics


def run_evaluation(workdir) -> dict:
    """Rebuild the experiment saved in ``workdir``, restore its latest reranker, evaluate."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from gumbel_jax.training.evaluation import write_evaluation

    workdir = pathlib.Path(workdir).absolute()  # orbax needs an absolute path
    saved = workdir / "experiment.json"
    if not saved.is_file():
        raise FileNotFoundError(f"{workdir}: no experiment.json (not a training run folder)")
    config = config_from_json(json.loads(saved.read_text()))
    reader, ranker, _, eval_records, featurize = build(config)
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data",
                                                                         "config"))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate")
    from gumbel_jax.training.step import make_optimizer

    _, params = nnx.split(ranker)
    opt_state = make_optimizer(config.train.optimizer, config.train.num_steps).init(params)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"params": params, "opt_state": opt_state})))
    nnx.update(ranker, restored["state"]["params"])
    results = _evaluate_held_out(config, ranker, reader, eval_records, featurize)
    write_evaluation(workdir, results)
    return {"step": step, **results["metrics"]}

