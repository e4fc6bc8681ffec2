"""An experiment = data + models + training settings, composed from one config and runnable
from the command line (``experiments/train.py``, ``experiments/evaluate.py``).

This module only composes: configs live in ``training.config``, models are built by
``training.factory``, the loop is ``training.loop`` and evaluation ``training.evaluation``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
from flax import nnx

from gumbel_jax.data.pipeline import FeatureSpec, Featurizer, as_record, make_dataset
from gumbel_jax.data.synthetic import make_records
from gumbel_jax.data.templates import cross_encoder_pair
from gumbel_jax.data.tokenizer import word_level_tokenizer
from gumbel_jax.training import multihost
from gumbel_jax.training.config import (
    DataConfig,
    ExperimentConfig,
    ReaderExperimentConfig,
    from_dict,
    validate,
)
from gumbel_jax.training.evaluation import evaluate, write_evaluation
from gumbel_jax.training.factory import build_models, validate_model
from gumbel_jax.training.hooks import held_out_eval_hook, load_best
from gumbel_jax.training.loop import (
    RankerState,
    check_reranker_packing,
    checkpoint_manager,
    restore_latest,
    train,
)
from gumbel_jax.training.run_folder import run_path, write_text
from gumbel_jax.training.step import make_optimizer


def load_records(config: DataConfig):
    """(train source, held-out records) of a data config: the synthetic world, or a dataset
    prepared by ``experiments.prepare_data`` (a missing one is an error naming the command)."""
    if config.source == "synthetic":
        return (make_records(config.world, config.num_train, split_seed=0, prefix="train"),
                make_records(config.world, config.num_eval, split_seed=1, prefix="eval"))
    if config.source.startswith("tfds:"):
        import tensorflow_datasets as tfds  # imported on use: slow to import

        name = config.source.removeprefix("tfds:")
        prepared = pathlib.Path(config.data_dir or tfds.core.constants.DATA_DIR) / name
        if not prepared.is_dir():
            raise FileNotFoundError(
                f"data.source={config.source!r}: not prepared in {prepared.parent} (run python "
                "-m experiments.prepare_data --dataset ... --data_dir DIR first, and pass "
                "--data_dir DIR / --set data.data_dir=DIR; see docs/data.md)")
        train = tfds.data_source(name, split=config.train_split, data_dir=config.data_dir)
        evaluation = tfds.data_source(name, split=config.eval_split, data_dir=config.data_dir)
        count = min(len(evaluation), config.num_eval)
        return train, [as_record(evaluation[i]) for i in range(count)]
    raise ValueError(f"data.source={config.source!r}: expected 'synthetic' or 'tfds:<name>'")


def _tokenizers(config: ExperimentConfig, train_records, eval_records):
    model = config.model
    if model.reader == "tiny":  # (validate_model: then the reranker is tiny too)

        # Tiny models read any records (synthetic or a prepared dataset) through a word
        # vocabulary built from them; a real checkpoint brings its own tokenizer.
        records = [as_record(r) for r in train_records] + list(eval_records)
        tokenizer = word_level_tokenizer(records)
        return tokenizer, tokenizer
    from transformers import AutoTokenizer  # imported on use: slow to import

    return (AutoTokenizer.from_pretrained(model.reader_tokenizer or model.reader),
            AutoTokenizer.from_pretrained(model.reranker_tokenizer or model.reranker))


def _featurizer(config: ExperimentConfig, reader_tokenizer, ranker_tokenizer) -> Featurizer:
    data = config.data
    options = {}
    if config.model.reranker_kind == "cross_encoder":
        options["ranker_template"] = cross_encoder_pair
    spec = FeatureSpec(data.num_candidates, data.reader_length, data.ranker_length,
                       data.answer_length)
    if config.model.reader_kind == "cepe":  # candidates to the encoder, the question prompt
        from gumbel_jax.data.cepe_inputs import CepeFeaturizer

        return CepeFeaturizer(reader_tokenizer, ranker_tokenizer, spec,
                              prompt_length=config.model.cepe_prompt_length, **options)
    return Featurizer(reader_tokenizer, ranker_tokenizer, spec, **options)


def build(config: ExperimentConfig, *, mesh=None):
    """(reader, ranker, train_source, eval_records, featurize) for a config; ``mesh`` places
    a pretrained CEPE reader's weights as they are read."""
    validate(config.train, num_candidates=config.data.num_candidates)
    validate_model(config.model)
    train_records, eval_records = load_records(config.data)
    reader_tokenizer, ranker_tokenizer = _tokenizers(config, train_records, eval_records)
    featurize = _featurizer(config, reader_tokenizer, ranker_tokenizer)
    reader, ranker = build_models(config.model, vocab_size=len(reader_tokenizer),
                                  seed=config.train.seed, mesh=mesh)
    if getattr(getattr(ranker, "config", None), "type_vocab_size", 1) > 1:
        # Training feeds (ids, mask) only; a BERT cross-encoder would silently read its
        # passage as segment 0.
        raise ValueError(f"{config.model.reranker}: a cross-encoder with segment (token type)"
                         " ids is not supported in training; XLM-R rerankers (BGE) have none")
    return reader, ranker, train_records, eval_records, featurize


def _mining_records(train_source, count: int):
    return [as_record(train_source[i]) for i in range(min(count, len(train_source)))]


def _evaluate_held_out(config: ExperimentConfig, ranker, reader, eval_records, featurize):
    """Rank the held-out questions and let the reader answer from the top k."""
    return evaluate(ranker, reader, eval_records, featurize, k=config.train.objective.k,
                    batch_size=config.data.batch_size, tokenizer=featurize.reader_tokenizer,
                    max_answer_length=config.data.answer_length,
                    num_beams=config.model.num_beams)


def check_best_metric(best_metric: str, eval_records) -> None:
    """Refuse, before training, a ``best_metric`` on gold passages when no held-out record
    marks any (FiD's NQ / TriviaQA): the evaluation leaves those metrics out, and the run
    would otherwise fail at its first held-out evaluation."""
    gold_metric = best_metric.startswith(("recall@", "ndcg@", "mrr", "indirect_"))
    if gold_metric and not any(record.has_gold_labels for record in eval_records):
        raise ValueError(f"train.best_metric={best_metric!r} needs gold passages, and no "
                         "held-out record marks any (FiD's NQ / TriviaQA data): use "
                         "answer_recall@<k>, em or f1")


def _hooks(config: ExperimentConfig, eval_records, featurize) -> list:
    """Periodic held-out evaluation (and best-checkpoint keeping) when the config asks."""
    train_config = config.train
    if not train_config.eval_every:
        return []
    return [held_out_eval_hook(
        eval_records, featurize, k=train_config.objective.k,
        batch_size=config.data.batch_size, every=train_config.eval_every,
        best_metric=train_config.best_metric,
        tokenizer=featurize.reader_tokenizer if train_config.eval_answers else None,
        max_answer_length=config.data.answer_length, num_beams=config.model.num_beams)]


def run_training(config: ExperimentConfig | ReaderExperimentConfig, workdir, *,
                 mesh=None) -> dict:
    """Train, then evaluate on the held-out questions (and mine training questions), in
    ``workdir`` (local or ``gs://``). With several processes every one calls it: they train
    together, each evaluates its share of the questions, the first one writes the files, and
    all return the same metrics after it has (a barrier). A
    ``ReaderExperimentConfig`` trains its reader instead (``training.reader``), so the paper
    grid runs its readers stage through the same call."""
    if isinstance(config, ReaderExperimentConfig):
        from gumbel_jax.training.reader import run_reader_training

        return run_reader_training(config, workdir, mesh=mesh)
    workdir = run_path(workdir)
    processes = jax.process_count()
    if config.data.batch_size % processes:
        raise ValueError(f"data.batch_size={config.data.batch_size} (the global batch) is not "
                         f"divisible by the {processes} processes")
    # Built (and so validated) before anything is written: a bad setting leaves no run
    # folder behind.
    reader, ranker, train_source, eval_records, featurize = build(config, mesh=mesh)
    if config.model.reranker_packing_bucket:
        check_reranker_packing(ranker, config.model.reranker_packing_bucket)
    if config.train.eval_every:  # before anything is written
        check_best_metric(config.train.best_metric, eval_records)
    workdir.mkdir(parents=True, exist_ok=True)
    if multihost.is_writer():
        write_text(workdir / "experiment.json",
                   json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    dataset = make_dataset(train_source, featurize, seed=config.train.seed,
                           batch_size=config.data.batch_size // processes)
    metrics = train(config.train, ranker=ranker, reader=reader, dataset=dataset,
                    workdir=workdir, mesh=mesh, hooks=_hooks(config, eval_records, featurize),
                    reranker_packing_bucket=config.model.reranker_packing_bucket)
    if not metrics.get("preempted"):  # (evaluate and write_evaluation: see multi-host above)
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
    multihost.barrier(f"run written: {workdir}")
    return metrics


@dataclasses.dataclass
class RestoredRun:
    """A training run rebuilt from its folder, its reranker parameters restored."""

    config: ExperimentConfig
    reader: object
    ranker: object
    eval_records: list
    featurize: Featurizer
    step: int
    evaluation: dict | None  # the run's eval.json, if it finished

    @property
    def ranker_tokenizer(self):
        return self.featurize.ranker_tokenizer

    @property
    def reader_tokenizer(self):
        return self.featurize.reader_tokenizer


def restore_run(workdir, *, checkpoint: str = "latest") -> RestoredRun:
    """Rebuild the experiment saved in ``workdir`` and restore its latest (or, with
    ``checkpoint="best"``, its best: ``train.best_metric``) reranker parameters. The reader is
    rebuilt from its source, as training does (a frozen reader is not checkpointed)."""
    workdir = run_path(workdir)  # absolute (orbax needs it), or gs://
    saved = workdir / "experiment.json"
    if not saved.is_file():
        raise FileNotFoundError(f"{workdir}: no experiment.json (not a training run folder)")
    if checkpoint not in ("latest", "best"):
        raise ValueError(f"checkpoint={checkpoint!r}: expected 'latest' or 'best'")
    raw = json.loads(saved.read_text())
    if raw.get("stage") == "reader":  # training.reader's run folder
        raise ValueError(f"{workdir}: a reader training run; its reader is exported when it "
                         "finishes (python -m experiments.train_reader --config FILE --workdir "
                         f"{workdir} --export OUT exports it again)")
    config = from_dict(ExperimentConfig, raw)
    reader, ranker, _, eval_records, featurize = build(config)
    if checkpoint == "best":
        step = int(load_best(workdir, ranker)["step"])
    else:
        _, params = nnx.split(ranker)
        opt_state = make_optimizer(config.train.optimizer, config.train.num_steps).init(params)
        manager = checkpoint_manager(workdir)
        try:
            step, state = restore_latest(manager, RankerState(params, opt_state))
        finally:
            manager.close()
        if not step:
            raise FileNotFoundError(f"{workdir}: no checkpoint to restore")
        nnx.update(ranker, state.params)
    evaluation_file = workdir / "eval.json"
    evaluation = (json.loads(evaluation_file.read_text()) if evaluation_file.is_file()
                  else None)
    return RestoredRun(config, reader, ranker, eval_records, featurize, int(step), evaluation)


def run_evaluation(workdir) -> dict:
    """Rebuild the experiment saved in ``workdir``, restore its latest reranker, evaluate."""
    run = restore_run(workdir)
    results = _evaluate_held_out(run.config, run.ranker, run.reader, run.eval_records,
                                 run.featurize)
    write_evaluation(run_path(workdir), results)
    return {"step": run.step, **results["metrics"]}
