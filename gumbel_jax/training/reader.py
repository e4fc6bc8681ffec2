"""Training a Fusion-in-Decoder reader: the readers the paper's tables read (FiD-Large from
public T5 weights, ``experiments.train_reader``) and the demo's tiny one. The reader learns
p(answer | question, passages) by teacher forcing, reading every candidate of a question
together as FiD does (or, for the demo, subsets of them that contain every gold passage); it
trains in the same shell as the reranker (``loop.train_model``: exact resume, preemption,
metrics, a mesh), its held-out EM / F1 chooses the best checkpoint, and it is exported as a
Hugging Face T5 folder. Afterwards it is frozen and only the reranker trains.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gumbel_jax import metrics, ops
from gumbel_jax.data.batch import Batch
from gumbel_jax.data.pipeline import (
    FeatureSpec,
    Featurizer,
    as_record,
    encode_texts,
    make_dataset,
    stack_examples,
)
from gumbel_jax.models.layers import fold_key
from gumbel_jax.training import multihost
from gumbel_jax.training.config import ReaderExperimentConfig, validate_reader
from gumbel_jax.training.hooks import HeldOutEval, load_best
from gumbel_jax.training.loop import RankerState, run_steps, train_model
from gumbel_jax.training.run_folder import is_remote, run_path, upload_folder, write_text
from gumbel_jax.training.step import _tree_norm, make_optimizer


def gold_subsets(key, batch: Batch, *, num_slots: int, drop_indirect: float = 0.0) -> Batch:
    """Cut each question's candidates down to ``num_slots`` passages the reader trains on:
    every gold passage plus a uniformly random number (at least one, when there are any) of
    the other valid candidates, chosen at random; unused slots are padding. With probability
    ``drop_indirect`` a question's indirect gold passages (those without the answer) are left
    out, as a retriever would sometimes miss them: the reader then learns to answer from the
    answer passage alone when it is all there is, and to guess when it is not.

    Reading a few passages in slots rather than masking most of them keeps the encoder's cost
    at ``num_slots`` passages. Varying the number of distractors teaches the reader to answer
    from a handful of passages (the reranker's top k) and from many (a soft mask spreads over
    all of them); FiD's decoder has no notion of passage order, so order does not matter.

    Args:
      key: a PRNG key.
      batch: a ``Batch`` (or the pipeline's dict of its fields).
      num_slots: passages kept per question (>= the number of gold passages).
      drop_indirect: the probability of leaving out a question's indirect passages.

    Returns:
      ``batch`` with those four entries cut to ``num_slots`` candidates.
    """
    batch = Batch.of(batch)
    order_key, count_key, drop_key = jax.random.split(key, 3)
    drop = jax.random.bernoulli(drop_key, drop_indirect, batch.gold.shape[:1])[:, None]
    available = batch.doc_valid & ~(drop & batch.indirect)
    gold = batch.gold & available
    others = available & ~gold
    noise = jax.random.uniform(order_key, gold.shape)
    # Golds first, then the other valid candidates in random order, padding last.
    priority = jnp.where(gold, 2.0, jnp.where(others, noise, -1.0))
    order = jnp.argsort(-priority, axis=-1)[:, :num_slots]
    room = jnp.clip(num_slots - gold.sum(-1), 0, others.sum(-1))
    low = jnp.minimum(room, 1)
    count = gold.sum(-1) + low + jnp.floor(
        jax.random.uniform(count_key, room.shape) * (room - low + 1)).astype(room.dtype)
    keep = jnp.arange(num_slots)[None, :] < count[:, None]
    pick = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)),
                                         axis=1)
    valid = pick(available) & keep
    return batch.replace(reader_ids=pick(batch.reader_ids),
                         reader_mask=pick(batch.reader_mask) & valid[..., None],
                         doc_valid=valid, gold=pick(gold) & valid)


# What a reader step draws, each from fold_in(step key, stream); gold_subsets reads the step
# key itself (the demo's reader, unchanged).
_DROPOUT, _TARGET = 1, 2
# The training batch's extra fields: up to ReaderExperimentConfig.target_answers answers per
# question, tokenised ([batch, choices, answer_len]), among which each step draws the target.
ANSWER_CHOICES = ("answer_choice_ids", "answer_choice_mask")


def sample_answers(key, batch: Batch, choice_ids, choice_mask) -> Batch:
    """FiD's training target: each question's answer drawn uniformly among its answers at
    every step (FiD's ``Dataset.get_target``: ``random.choice(answers)``).

    Args:
      key: the step's target key; question ``b`` draws with ``fold_in(key,
        example_id[b])``, so the draw depends on the step and the question only (exact
        resume; the same on any number of devices).
      batch: a ``Batch``.
      choice_ids: int32 ``[batch, choices, answer_len]`` the answers, EOS included.
      choice_mask: bool, same shape; the answers are the first rows, padding rows all False.

    Returns:
      ``batch`` with ``answer_ids`` / ``answer_mask`` those of the drawn answers.
    """
    count = jnp.maximum(choice_mask.any(-1).sum(-1), 1)  # [batch]
    draw = lambda example, n: jax.random.randint(jax.random.fold_in(key, example), (), 0, n)
    pick = jax.vmap(draw)(batch.example_id, count)[:, None, None]
    take = lambda x: jnp.take_along_axis(x, pick, axis=1)[:, 0]
    return batch.replace(answer_ids=take(choice_ids), answer_mask=take(choice_mask))


def reader_loss(reader, batch: Batch, doc_log_mask, *, dropout_key=None):
    """Mean over questions of the answer's per-token negative log-likelihood;
    ``dropout_key`` (a training step) turns on T5's dropout in the encoder and decoder."""
    batch = Batch.of(batch)
    memory = reader.encode(batch.reader_ids, batch.reader_mask,
                           dropout_key=fold_key(dropout_key, 0))
    token_log_probs = reader.token_log_probs(memory, batch.answer_ids, batch.answer_mask,
                                             doc_log_mask, dropout_key=fold_key(dropout_key, 1))
    tokens = jnp.maximum(batch.answer_mask.sum(-1), 1)
    return -(token_log_probs.sum(-1) / tokens).mean()


def make_reader_step(reader_graph, tx, *, num_slots: int = 0, drop_indirect: float = 0.0,
                     dropout: bool = False):
    """``step(state, batch, key) -> (state, {"loss", "grad_norm"})`` for ``loop.run_steps``:
    one AdamW update of every reader parameter (``state``: a ``RankerState`` of the reader's
    parameters and ``tx``'s state, donated). The reader reads every valid candidate of each
    question (``num_slots`` 0, FiD), or the :func:`gold_subsets` of ``num_slots`` passages
    drawn with the step's key. With ``dropout`` the reader drops as T5 trains
    (``T5Config.dropout_rate``), its masks from ``fold_in(key, _DROPOUT)``. A batch with the
    :data:`ANSWER_CHOICES` fields trains on an answer drawn among them
    (:func:`sample_answers` with ``fold_in(key, _TARGET)``); otherwise on ``answer_ids``."""

    def loss_fn(params, batch, key):
        reader = nnx.merge(reader_graph, params)
        batch = batch.to_dict() if isinstance(batch, Batch) else dict(batch)
        choices = [batch.pop(name) for name in ANSWER_CHOICES if name in batch]
        batch = Batch.of(batch)
        if choices:
            batch = sample_answers(jax.random.fold_in(key, _TARGET), batch, *choices)
        if num_slots:
            batch = gold_subsets(key, batch, num_slots=num_slots, drop_indirect=drop_indirect)
        return reader_loss(reader, batch, ops.mask_to_log_mask(
            batch.doc_valid.astype(jnp.float32)),
            dropout_key=jax.random.fold_in(key, _DROPOUT) if dropout else None)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: RankerState, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return (RankerState(optax.apply_updates(state.params, updates), opt_state),
                {"loss": loss, "grad_norm": _tree_norm(grads)})

    return step


def train_reader(reader, batches, *, num_steps: int, learning_rate: float, num_slots: int,
                 drop_indirect: float = 0.0, seed: int = 0, on_step=None) -> list[float]:
    """The demo's reader: train every parameter of ``reader`` (updated in place) for
    ``num_steps`` batches from the iterator ``batches`` on :func:`gold_subsets`, through
    ``loop.run_steps``, without checkpoints; the reader is frozen afterwards. Returns the
    losses.

    ``on_step(step, loss)`` is called after each step (progress bars); the loss is waited
    for each step, so nothing runs ahead of the host.
    """
    reader.frozen = False  # gradients must reach the encoder while the reader trains
    graph, params = nnx.split(reader)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(num_steps // 20, 1),
                                                  max(num_steps, 2), learning_rate * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    step_fn = make_reader_step(graph, tx, num_slots=num_slots, drop_indirect=drop_indirect)
    losses = []

    def on_log(rows, _seconds):
        for row in rows:
            losses.append(row["loss"])
            if on_step is not None:
                on_step(row["step"], row["loss"])

    device_batches = ({name: jnp.asarray(value) for name, value in batch.items()}
                      for batch in batches)
    state, _ = run_steps(step_fn, RankerState(params, tx.init(params)), device_batches,
                         start=0, end=num_steps, base_key=jax.random.key(seed), on_log=on_log)
    nnx.update(reader, state.params)
    reader.frozen = True
    return losses


@functools.lru_cache(maxsize=8)
def _generator(graph, max_length: int, num_beams: int = 1):
    """One jitted decoder per reader architecture and setting, shared by every evaluation
    (the mask is an argument, so any setting reuses it): greedy, or beam search."""

    @jax.jit
    def generate(state, batch, mask):
        batch = Batch.of(batch)
        reader = nnx.merge(graph, state)
        return reader.generate(reader.encode(batch.reader_ids, batch.reader_mask),
                               ops.mask_to_log_mask(mask.astype(jnp.float32)),
                               max_length=max_length, num_beams=num_beams)

    return generate


def reader_answers(reader, batch, tokenizer, *, mask, max_length: int,
                   num_beams: int = 1) -> list[str]:
    """The reader's answers (text) to a batch when it reads the candidates ``mask``
    (``[batch, docs]`` boolean) selects among the valid ones."""
    graph, state = nnx.split(reader)
    mask = jnp.asarray(mask) & jnp.asarray(Batch.of(batch).doc_valid)
    tokens = np.asarray(_generator(graph, max_length, num_beams)(state, batch, mask))
    return [tokenizer.decode(row, skip_special_tokens=True) for row in tokens]


def reader_exact_match(reader, batches, tokenizer, *, mask_fn, max_length: int) -> float:
    """EM of the reader's greedy answers when it reads the candidates ``mask_fn(batch)``
    selects (``[batch, docs]`` boolean); ``batches`` yields ``(batch, answers)`` pairs, the
    answers as lists of strings."""
    scores = []
    for batch, answers in batches:
        texts = reader_answers(reader, batch, tokenizer, mask=mask_fn(batch),
                               max_length=max_length)
        scores += [metrics.exact_match(text, gold) for text, gold in zip(texts, answers,
                                                                         strict=True)]
    return float(np.mean(scores))


def evaluate_reader(reader, records, featurize, *, tokenizer, batch_size: int,
                    max_answer_length: int, num_beams: int = 1) -> dict:
    """EM / F1 of the reader's answers to ``records`` (a list of ``Record``s) reading every
    candidate, as FiD evaluates: ``{"metrics": {"em", "f1", "num_questions"},
    "predictions": [{"id", "answer"}, ...]}``. The last batch is padded by repeating its last
    question, so one program serves every batch."""
    em, f1, predictions = [], [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        examples = [featurize(r) for r in chunk]
        padded = stack_examples(examples + [examples[-1]] * (batch_size - len(examples)))
        texts = reader_answers(reader, padded, tokenizer, mask=padded["doc_valid"],
                               max_length=max_answer_length, num_beams=num_beams)
        for record, text in zip(chunk, texts, strict=False):
            em.append(metrics.exact_match(text, record.answers))
            f1.append(metrics.f1_score(text, record.answers))
            predictions.append({"id": record.id, "answer": text, "answers": record.answers})
    summary = {"em": float(np.mean(em)) if em else float("nan"),
               "f1": float(np.mean(f1)) if f1 else float("nan"), "num_questions": len(em)}
    return {"metrics": summary, "predictions": predictions}


# --------------------------------------------------------------------- the experiment

def reader_featurizer(config: ReaderExperimentConfig, tokenizer) -> Featurizer:
    """The pipeline's featurizer for reader training. The reranker's fields are not read:
    they get one token each (the reader's tokenizer), so the batch stays small."""
    data = config.data
    return Featurizer(tokenizer, tokenizer, FeatureSpec(data.num_candidates, data.reader_length,
                                                        1, data.answer_length))


@dataclasses.dataclass(frozen=True)
class WithAnswerChoices:
    """A training featurizer: ``featurize``'s example plus the :data:`ANSWER_CHOICES`, a
    question's first ``count`` answers tokenised as its answer is (``[count,
    answer_len]``), among which each step draws the target (:func:`sample_answers`)."""

    featurize: Featurizer
    count: int

    def __call__(self, item) -> dict[str, np.ndarray]:
        record = as_record(item)
        ids, mask = encode_texts(self.featurize.reader_tokenizer, list(record.answers[:self.count]),
                                 self.featurize.spec.answer_length, self.count)[:2]
        return {**self.featurize(record), ANSWER_CHOICES[0]: ids, ANSWER_CHOICES[1]: mask}


def _reader_tokenizer(config: ReaderExperimentConfig, train_records, eval_records):
    model = config.model
    if model.reader == "tiny":
        from gumbel_jax.data.tokenizer import word_level_tokenizer

        # A tiny reader reads its records through a word vocabulary built from them.
        return word_level_tokenizer([as_record(r) for r in train_records] + list(eval_records))
    from transformers import AutoTokenizer  # imported on use: slow to import

    name = model.reader_tokenizer or model.reader
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise ValueError(f"model.reader_tokenizer: cannot load the tokenizer {name!r} "
                         f"({type(error).__name__}: {error}); FiD's released checkpoints "
                         "have none: set model.reader_tokenizer=google-t5/t5-large") from None


def build_reader_experiment(config: ReaderExperimentConfig):
    """``(reader, train_source, eval_records, featurize)`` of a reader-training config, the
    reader trainable (``training.factory.build_trainable_reader``)."""
    from gumbel_jax.training.experiment import load_records
    from gumbel_jax.training.factory import build_trainable_reader

    validate_reader(config)
    reader = None
    build = functools.partial(build_trainable_reader, config.model, seed=config.train.seed,
                              dropout_rate=None if config.dropout_rate < 0
                              else config.dropout_rate)
    if config.model.reader != "tiny":  # a bad start checkpoint fails before data is read
        reader = build()
    train_records, eval_records = load_records(config.data)
    tokenizer = _reader_tokenizer(config, train_records, eval_records)
    if reader is None:  # a tiny reader's vocabulary is its records' words
        reader = build(vocab_size=len(tokenizer))
    return reader, train_records, eval_records, reader_featurizer(config, tokenizer)


@functools.lru_cache(maxsize=8)
def _optimizer_and_reader_step(graph, optimizer, num_steps: int, num_slots: int,
                               drop_indirect: float):
    """One optimizer and jitted step per architecture and setting (a resumed or repeated run
    in one process compiles the step once). The reader drops as T5 trains (its config's
    ``dropout_rate``, part of ``graph``)."""
    tx = make_optimizer(optimizer, num_steps)
    return tx, make_reader_step(graph, tx, num_slots=num_slots, drop_indirect=drop_indirect,
                                dropout=True)


def reader_eval_hook(config: ReaderExperimentConfig, eval_records, featurize) -> HeldOutEval:
    """Held-out EM / F1 every ``train.eval_every`` steps and at the end, keeping the best
    reader by ``train.best_metric`` in ``<workdir>/best`` (``hooks.HeldOutEval``)."""

    def evaluate_fn(reader, _frozen_reader):
        return evaluate_reader(reader, eval_records, featurize,
                               tokenizer=featurize.reader_tokenizer,
                               batch_size=config.data.batch_size,
                               max_answer_length=config.data.answer_length,
                               num_beams=config.model.num_beams)["metrics"]

    return HeldOutEval(evaluate_fn, every=config.train.eval_every,
                       best_metric=config.train.best_metric)


STAGE = "reader"  # experiment.json's "stage" of a reader-training run


def write_reader_experiment(workdir, config: ReaderExperimentConfig) -> None:
    """``workdir``'s experiment.json (local or ``gs://``), written whole."""
    write_text(run_path(workdir) / "experiment.json", json.dumps(
        {"stage": STAGE, **dataclasses.asdict(config)}, indent=2, default=str) + "\n")


def read_reader_experiment(workdir) -> ReaderExperimentConfig:
    """The config of the reader-training run in ``workdir`` (local or ``gs://``; its
    experiment.json)."""
    from gumbel_jax.training.config import from_dict

    saved = run_path(workdir) / "experiment.json"
    if not saved.is_file():
        raise FileNotFoundError(f"{workdir}: no experiment.json (not a training run folder)")
    raw = json.loads(saved.read_text())
    if raw.pop("stage", None) != STAGE:
        raise ValueError(f"{workdir}: a reranker training run, not a reader's "
                         "(python -m experiments.export exports it)")
    return from_dict(ReaderExperimentConfig, raw)


def reader_card(config: ReaderExperimentConfig, step: int, evaluation: dict, *,
                dropout_rate: float) -> dict:
    """The exported folder's model card: start checkpoint, recipe (``dropout_rate``: the
    rate the reader trained with), data, held-out EM / F1."""
    model, data, train = config.model, config.data, config.train
    base = ("none: a tiny randomly initialised T5 (tests)" if model.reader == "tiny" else
            f"random initialisation of {model.reader_architecture}"
            if model.reader_init == "random" else model.reader)
    return {"name": f"{config.name} (FiD reader)", "base_model": base,
            "training": {"steps (exported checkpoint)": step, "steps (configured)":
                         train.num_steps, "seed": train.seed, "batch size": data.batch_size,
                         **{f"optimizer.{k}": v for k, v in
                            dataclasses.asdict(train.optimizer).items()},
                         "passages read": (f"subsets of {config.num_slots} with every gold "
                                           "passage") if config.num_slots else
                         "every candidate (FiD)", "dropout": dropout_rate,
                         "target": f"drawn each step among the first {config.target_answers} "
                                   "answers" if config.target_answers > 1 else
                                   "the first answer",
                         "compute dtype": model.dtype,
                         "remat": model.remat},
            "data": {"source": data.source, "train split": data.train_split,
                     "eval split": data.eval_split,
                     "candidates per question": data.num_candidates,
                     "reader tokens": data.reader_length, "answer tokens": data.answer_length},
            "evaluation": evaluation}


def export_trained_reader(reader, destination, **options) -> None:
    """``checkpoints.export.export_reader`` to ``destination``, local (an earlier export
    replaced once the new one is complete) or in cloud storage (exported to a local
    temporary folder, then uploaded: ``run_folder.upload_folder``)."""
    from gumbel_jax.checkpoints.export import export_reader

    destination = run_path(destination)
    if not is_remote(destination):
        export_reader(reader, pathlib.Path(destination), overwrite=True, **options)
        return
    with tempfile.TemporaryDirectory() as local:
        upload_folder(export_reader(reader, pathlib.Path(local) / "export", **options),
                      destination)


def run_reader_training(config: ReaderExperimentConfig, workdir, *, mesh=None,
                        stop_at: int | None = None) -> dict:
    """Train a reader (resuming from ``workdir``), evaluate its best checkpoint (or its
    last, without ``train.best_metric``) on the held-out questions, export it as a Hugging
    Face T5 folder to ``config.export_dir`` (default ``<workdir>/export``; an earlier export
    is replaced, :func:`export_trained_reader`) and write eval.json last. ``workdir`` and
    the export folder may be local or ``gs://`` (``training.run_folder``). Running it again on a
    finished run trains no step and exports again.
    Returns the metrics (the last training line, held-out ``em`` / ``f1``, ``step``)."""
    from jax.experimental import multihost_utils

    from gumbel_jax.training.evaluation import write_evaluation

    workdir = run_path(workdir)  # absolute (orbax needs it), or gs://
    processes = jax.process_count()
    if config.data.batch_size % processes:
        raise ValueError(f"data.batch_size={config.data.batch_size} (the global batch) is not "
                         f"divisible by the {processes} processes")
    # Built (and so validated) before anything is written.
    reader, train_source, eval_records, featurize = build_reader_experiment(config)
    workdir.mkdir(parents=True, exist_ok=True)
    if multihost.is_writer():
        write_reader_experiment(workdir, config)
    train = config.train
    dataset = make_dataset(train_source, WithAnswerChoices(featurize, config.target_answers),
                           seed=train.seed,
                           batch_size=config.data.batch_size // processes)
    graph, _ = nnx.split(reader)
    tx, step_fn = _optimizer_and_reader_step(graph, train.optimizer, train.num_steps,
                                             config.num_slots, config.drop_indirect)
    hooks = [reader_eval_hook(config, eval_records, featurize)] if train.eval_every else []
    result = train_model(train, model=reader, tx=tx, step_fn=step_fn, dataset=dataset,
                         workdir=workdir, stop_at=stop_at, mesh=mesh, hooks=hooks)
    if result.get("preempted") or (stop_at is not None and stop_at < train.num_steps):
        return result
    if processes > 1:  # every process holds a full copy; the first one writes
        nnx.update(reader, multihost_utils.process_allgather(nnx.state(reader)))
    step = train.num_steps
    if train.best_metric and (workdir / "best").is_dir():
        step = int(load_best(workdir, reader)["step"])
    if jax.process_index() != 0:
        return result
    results = evaluate_reader(reader, eval_records, featurize,
                              tokenizer=featurize.reader_tokenizer,
                              batch_size=config.data.batch_size,
                              max_answer_length=config.data.answer_length,
                              num_beams=config.model.num_beams)
    summary = {**results["metrics"], "checkpoint_step": step}
    export_dir = run_path(config.export_dir) if config.export_dir else workdir / "export"
    reader.frozen = True  # as it will be read
    export_trained_reader(reader, export_dir, tokenizer=featurize.reader_tokenizer,
                          card=reader_card(config, step, summary,
                                           dropout_rate=reader.config.dropout_rate),
                          max_length=config.data.reader_length,
                          answer_length=config.data.answer_length)
    summary["export"] = str(export_dir)
    write_evaluation(workdir, {"metrics": summary, "predictions": results["predictions"]})
    return {**result, **summary}
