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
    reader_tokenizer: str = ""  # defaults to the reader's name
    reranker_tokenizer: str = ""  # defaults to the reranker's name
    score_token_id: int = 32089  # RankT5's <extra_id_10>; tiny models use 3
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 4
    dma: str = "bias"  # document-masked attention: bias | blockwise
    dtype: str = "float32"  # compute dtype (bfloat16 on accelerators); params stay float32


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
    if config.model.reader == "tiny" or config.data.source == "synthetic":
        if config.data.source != "synthetic":
            raise ValueError("tiny models use the synthetic word-level tokenizer; give "
                             "model.reader_tokenizer for real data")
        from gumbel_jax.data.tokenizer import word_level_tokenizer

        tokenizer = word_level_tokenizer(list(train_records) + list(eval_records))
        return tokenizer, tokenizer
    from transformers import AutoTokenizer

    model = config.model
    return (AutoTokenizer.from_pretrained(model.reader_tokenizer or model.reader),
            AutoTokenizer.from_pretrained(model.reranker_tokenizer or model.reranker))


def _models(config: ModelConfig, vocab_size: int):
    import jax.numpy as jnp

    from gumbel_jax.models import FiDReader, RankT5, T5Config

    dtype = jnp.dtype(config.dtype)
    tiny = dict(dtype=dtype, vocab_size=vocab_size, d_model=config.d_model,
                d_kv=config.d_model // config.num_heads, d_ff=2 * config.d_model,
                num_layers=config.num_layers, num_heads=config.num_heads)
    if config.reader == "tiny":
        reader = FiDReader.random(T5Config(**tiny, num_decoder_layers=config.num_layers),
                                  seed=0, method=config.dma)
    else:
        reader = FiDReader.from_pretrained(config.reader, dtype=dtype, method=config.dma)
    if config.reranker == "tiny":
        ranker_config = T5Config(**tiny, num_decoder_layers=1, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False)
        ranker = RankT5.random(ranker_config, seed=1, score_token_id=config.score_token_id)
    else:
        ranker = RankT5.from_pretrained(config.reranker, dtype=dtype,
                                        score_token_id=config.score_token_id)
    return reader, ranker


def build(config: ExperimentConfig):
    """(reader, ranker, train_source, eval_records, featurize) for a config."""
    validate(config.train, num_candidates=config.data.num_candidates)
    train_records, eval_records = _records(config.data)
    reader_tokenizer, ranker_tokenizer = _tokenizers(config, train_records, eval_records)
    data = config.data
    featurize = Featurizer(reader_tokenizer, ranker_tokenizer,
                           FeatureSpec(data.num_candidates, data.reader_length,
                                       data.ranker_length, data.answer_length))
    reader, ranker = _models(config.model, len(reader_tokenizer))
    return reader, ranker, train_records, eval_records, featurize


def run_training(config: ExperimentConfig, workdir, *, mesh=None) -> dict:
    from gumbel_jax.training.evaluation import evaluate, write_evaluation
    from gumbel_jax.training.loop import train

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "experiment.json").write_text(
        json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    reader, ranker, train_source, eval_records, featurize = build(config)
    dataset = make_dataset(train_source, featurize, batch_size=config.data.batch_size,
                           seed=config.train.seed)
    metrics = train(config.train, ranker=ranker, reader=reader, dataset=dataset,
                    workdir=workdir, mesh=mesh)
    if not metrics.get("preempted"):
        results = evaluate(ranker, reader, eval_records, featurize, k=config.train.objective.k,
                           batch_size=config.data.batch_size,
                           tokenizer=featurize.reader_tokenizer,
                           max_answer_length=config.data.answer_length)
        write_evaluation(workdir, results)
        metrics = {**metrics, **results["metrics"]}
    return metrics


def run_evaluation(workdir) -> dict:
    """Rebuild the experiment saved in ``workdir``, restore its latest reranker, evaluate."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from gumbel_jax.training.evaluation import evaluate, write_evaluation

    workdir = pathlib.Path(workdir)
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
    results = evaluate(ranker, reader, eval_records, featurize, k=config.train.objective.k,
                       batch_size=config.data.batch_size, tokenizer=featurize.reader_tokenizer,
                       max_answer_length=config.data.answer_length)
    write_evaluation(workdir, results)
    return {"step": step, **results["metrics"]}

