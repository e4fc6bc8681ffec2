"""Every configuration of an experiment in one place: the dataclasses (data, models, objective,
optimizer, training), dotted command-line overrides and validation.

Every choice field has a ``Literal`` type; the command line, validation and the scripts' lists
of choices are derived from those types (``choices``), never kept by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from typing import Literal

from gumbel_jax.data.synthetic import WorldConfig
from gumbel_jax.metrics import ranking_cutoffs
from gumbel_jax.models.attention import DmaMethod
from gumbel_jax.models.rankt5 import RANKT5_SCORE_TOKEN_ID
from gumbel_jax.objectives import AdistSignal, Reduction, Relaxation

ObjectiveName = Literal["g_rerank", "emdr", "pdist", "loop", "adist", "supervised"]
# The objectives, in the order tables and the demo show them; training.step.OBJECTIVE_LOSSES
# implements exactly these.
OBJECTIVES: tuple[str, ...] = typing.get_args(ObjectiveName)
RerankerKind = Literal["rankt5", "cross_encoder"]  # RankT5, or BERT / XLM-R (e.g. BGE)
ReaderKind = Literal["fid", "cepe"]  # Fusion-in-Decoder (T5), or CEPE (Llama-2 + encoder)
Init = Literal["pretrained", "random"]
AttentionKernel = Literal["", "xla", "cudnn"]  # "": our einsum path
ComputeDtype = Literal["float32", "bfloat16"]
# Learning-rate decay after the warm-up: cosine to a tenth (reranker training), or linear to
# zero (FiD's reader recipe, its WarmupLinearScheduler with min_ratio 0).
Schedule = Literal["cosine", "linear"]


def choices(kind) -> tuple:
    """The allowed values of a ``Literal`` type (e.g. ``choices(RerankerKind)``)."""
    return typing.get_args(kind)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    name: ObjectiveName = "g_rerank"
    k: int = 5  # top-k (the paper's metrics are @5)
    tau: float = 0.5  # relaxed top-k temperature (third-party report of the paper's value)
    kappa: float = 1.0  # score scale
    num_samples: int = 1  # Gumbel draws per question, sharing one encoder pass
    relaxation: Relaxation = "l2x"  # the paper's; the others are ablations
    # The baselines (EMDR, PDist, LOOP, ADist) follow Atlas by default; docs/baselines.md.
    theta: float = 0.01  # Atlas's temperature_score: softmax(scores / theta) (its default)
    # Atlas's temperature_gold (its default): the target softmax(g / T) of PDist, LOOP and
    # ADist, and EMDR's vocabulary softmax(reader logits / T). Spelt "temperature" before.
    temperature_gold: float = 0.01
    reduction: Reduction = "atlas"  # Atlas's loss reductions, or "per_question"
    adist_signal: AdistSignal = "value_norm_sum"  # Atlas's evalnormsum, or "attention_mass"

    # Earlier spellings still read from command lines and saved experiment.json files.
    renamed: typing.ClassVar[dict[str, str]] = {"temperature": "temperature_gold"}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    schedule: Schedule = "cosine"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    num_steps: int = 1000
    checkpoint_every: int = 100
    max_to_keep: int = 3
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    # The host waits for the device every log_every steps (and at the last step): then the
    # losses since the last wait are checked (a non-finite one stops the run naming its step)
    # and metrics.jsonl gets one line, the mean loss / gradient norm over those steps.
    log_every: int = 1
    # Held-out evaluation every eval_every steps and at the last one (0: off); its metrics
    # go to metrics.jsonl as "eval/<name>" lines (training.hooks.held_out_eval_hook).
    eval_every: int = 0
    eval_answers: bool = False  # the reader also answers from the top k: EM / F1 (slower)
    # Keep the reranker with the best held-out value of this metric (e.g. "recall@5";
    # higher is better) in <workdir>/best; "": off. Needs eval_every.
    best_metric: str = ""

    def eval_metric_names(self) -> tuple[str, ...]:
        """The metrics a held-out evaluation reports (``training.evaluation.evaluate``), in
        its order, at ``metrics.ranking_cutoffs(k)``; on data without gold passages (NQ,
        TriviaQA) the gold ones are absent and ``answer_recall@c`` ranks."""
        cutoffs = ranking_cutoffs(self.objective.k)
        ranking = tuple(name for prefix in ("", "indirect_") for name in (
            *(f"{prefix}recall@{c}" for c in cutoffs), *(f"{prefix}ndcg@{c}" for c in cutoffs),
            f"{prefix}mrr"))
        ranking += tuple(f"answer_recall@{c}" for c in cutoffs)
        return ranking + (("em", "f1") if self.eval_answers else ())


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
    runs) whose sizes follow below. ``training.factory.build_models`` builds both models from
    this, and nothing else does."""

    reader: str = "tiny"
    reranker: str = "tiny"
    reranker_kind: RerankerKind = "rankt5"
    # "cepe": a CEPE reader (models.cepe): candidates go to its context encoder, the decoder
    # reads the question prompt (its last ``cepe_prompt_length`` tokens of every reader row,
    # data.cepe_inputs) and the answer.
    reader_kind: ReaderKind = "fid"
    cepe_prompt_length: int = 64
    # CEPE: every cross-attention layer's memory keys/values computed once per question
    # (fast; 1.3 GB per question of 10 x 256 tokens for the 7B) or projected from the encoder
    # states at each use (False: 16 GB chips).
    cepe_precompute_memory: bool = True
    # "pretrained" loads ``reranker``; "random" starts from random weights of
    # ``reranker_architecture`` (the from-scratch ablation; ``reranker`` still names the
    # tokenizer).
    reranker_init: Init = "pretrained"
    # "random": random weights of ``reader_architecture`` (benchmarks and smoke runs at
    # scale: the shapes of a real reader without its download).
    reader_init: Init = "pretrained"
    # Presets of gumbel_jax.models.presets ("t5-large", "t5-v1_1-base", "xlm-roberta-base"):
    # the shapes of the checkpoints above, for abstract builds and random starts.
    reader_architecture: str = ""
    reranker_architecture: str = ""
    reader_tokenizer: str = ""  # defaults to the reader's name
    reranker_tokenizer: str = ""  # defaults to the reranker's name
    score_token_id: int = RANKT5_SCORE_TOKEN_ID  # RankT5's <extra_id_10>
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 4
    dma: DmaMethod = "bias"  # document-masked attention: bias | blockwise
    # The kernel of every attention of both models (reader encoder self-attention, decoder
    # self- and masked cross-attention, the reranker's encoder and decoder): "" (einsum),
    # "xla" or "cudnn" (GPU; its bias gradient is verified in the tests).
    attention: AttentionKernel = ""
    # Rematerialise the trained model's layers (batch for memory): the reranker's, or the
    # reader's in reader training (ReaderExperimentConfig).
    remat: bool = False
    # The frozen FiD reader's encoder skips the position-wise work of padding tokens: a
    # batch's real tokens are packed into this fraction of its [rows, len] slots
    # (T5EncoderDecoder.encode; a batch with more real tokens runs padded). 0: off. Same
    # outputs; docs/performance.md has its speed.
    token_capacity: float = 0.0
    # The frozen FiD reader's encoder computes its matrix products in FP8 (e4m3): weights
    # stored in 8 bits with one scale per matrix, activations quantized per tensor at each
    # call (gumbel_jax.models.fp8). Faster where the chip has FP8 units, less exact:
    # docs/performance.md has its speed and the reader's EM with and without it. Off.
    reader_fp8: bool = False
    # The trained RankT5's encoder packs its real tokens too, at a capacity the host picks
    # per batch: the batch's real-token share rounded up to a multiple of this width (e.g.
    # 0.05); one compiled step per capacity (training.packing). Same results. 0: off.
    reranker_packing_bucket: float = 0.0
    # The reader's beam width when it answers in evaluation: 1 is greedy (FiD evaluates
    # greedily); more runs beam search (Hugging Face's, early stopping, length penalty 1).
    num_beams: int = 1
    # Compute dtype (bfloat16 on accelerators). The trained reranker keeps float32
    # parameters; the frozen reader's weight matrices are stored in this dtype.
    dtype: ComputeDtype = "float32"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


@dataclasses.dataclass(frozen=True)
class ReaderExperimentConfig:
    """Training a Fusion-in-Decoder reader (``experiments.train_reader``,
    ``gumbel_jax.training.reader.run_reader_training``): every parameter of the reader that
    ``model.reader`` names ("tiny", a T5 / Flan-T5 / FiD checkpoint by folder or hub name;
    ``model.reader_init="random"`` with ``model.reader_architecture``) learns p(answer |
    question, passages). ``model``'s reranker fields and ``train.objective`` are not read;
    ``model.remat`` rematerialises the reader's layers and ``model.dtype`` is its compute
    dtype (its parameters stay float32). ``train.best_metric`` is "em" or "f1" on the held-out
    questions (evaluated every ``train.eval_every`` steps, greedy or ``model.num_beams``).

    ``num_slots`` 0 reads every candidate of a question together (FiD; the gold passages are
    among them when ``data.num_candidates`` covers the dataset's pool). ``num_slots`` > 0
    reads a random subset with every gold passage (``training.reader.gold_subsets``; the
    demo's reader), leaving out a question's indirect passages with probability
    ``drop_indirect``.

    As FiD trains: T5's dropout at ``dropout_rate`` (negative: the start checkpoint's
    config.json ``dropout_rate``, as transformers reads it, 0.1 for T5 / Flan-T5 / FiD's
    readers and tiny or random starts), and the target answer drawn at each step among a
    question's first ``target_answers`` answers (FiD: ``random.choice`` among all; 1: the
    first answer only).
    """

    name: str = "reader"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(best_metric="em", eval_every=100))
    num_slots: int = 0
    drop_indirect: float = 0.0
    dropout_rate: float = -1.0  # negative: the start checkpoint's (config.json)
    target_answers: int = 16  # a question's answers past these are never the target
    # The Hugging Face folder the trained reader is exported to ("": <workdir>/export). A
    # name without "/" in the paper grid is a folder in --models_dir (paper.resolve_paths).
    export_dir: str = ""


def from_dict(cls, raw: dict):
    """A config dataclass from its ``dataclasses.asdict`` form (e.g. experiment.json);
    keys the class does not know are an error naming them."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    renamed = getattr(cls, "renamed", {})
    raw = {renamed.get(name, name): value for name, value in raw.items()}
    unknown = set(raw) - fields
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    values = {}
    for name, value in raw.items():
        kind = hints[name]
        values[name] = from_dict(kind, value) if dataclasses.is_dataclass(kind) else value
    return cls(**values)


def _leaf_keys(config, prefix="") -> dict[str, type]:
    keys = {}
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys.update(_leaf_keys(value, f"{prefix}{field.name}."))
        else:
            keys[f"{prefix}{field.name}"] = hints[field.name]
    return keys


def _parse(text: str, kind: type, key: str):
    if typing.get_origin(kind) is Literal:
        if text not in choices(kind):
            raise ValueError(f"{key}={text!r}: expected one of {choices(kind)}")
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key}={text!r}: expected {kind.__name__}")
    return value


def apply_overrides(config, assignments: list[str]):
    """``["objective.tau=0.3", "seed=2"]`` -> a new config; unknown keys are an error that
    lists the valid ones."""
    valid = _leaf_keys(config)
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"override {assignment!r} is not of the form key=value")
        key, text = assignment.split("=", 1)
        key = _current_spelling(config, key)
        if key not in valid:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        value = _parse(text, valid[key], key)
        *path, leaf = key.split(".")
        config = _replace_path(config, path, leaf, value)
    return config


def _current_spelling(config, key: str) -> str:
    """``train.objective.temperature`` -> ``train.objective.temperature_gold`` (a class's
    ``renamed`` table); other keys unchanged."""
    *path, leaf = key.split(".")
    for name in path:
        config = getattr(config, name, None)
    renamed = getattr(type(config), "renamed", {})
    return ".".join([*path, renamed[leaf]]) if leaf in renamed else key


def _replace_path(config, path, leaf, value):
    if not path:
        return dataclasses.replace(config, **{leaf: value})
    child = getattr(config, path[0])
    return dataclasses.replace(config, **{path[0]: _replace_path(child, path[1:], leaf, value)})


def check_choices(config, prefix: str = "") -> None:
    """Every ``Literal``-typed field holds one of its values (configs built in Python or read
    from JSON skip the command line's check)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, kind = getattr(config, field.name), hints[field.name]
        if dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{field.name}.")
        elif typing.get_origin(kind) is Literal and value not in choices(kind):
            raise ValueError(f"{prefix}{field.name}={value!r}; expected one of "
                             f"{choices(kind)}")


def validate(config: TrainConfig, *, num_candidates: int) -> None:
    """Settings that cannot work, with a message that says which and why."""
    objective = config.objective
    check_choices(config)
    if not 1 <= objective.k <= num_candidates:
        raise ValueError(f"objective.k={objective.k} must be in [1, {num_candidates}] (the "
                         "number of candidates)")
    for name in ("tau", "kappa", "theta", "temperature_gold"):
        if getattr(objective, name) <= 0:
            raise ValueError(f"objective.{name} must be > 0")
    if objective.num_samples < 1:
        raise ValueError("objective.num_samples must be >= 1")
    if config.best_metric and not config.eval_every:
        raise ValueError(f"best_metric={config.best_metric!r} needs eval_every > 0 (the best "
                         "checkpoint is chosen at the held-out evaluations)")
    if config.best_metric and config.best_metric not in config.eval_metric_names():
        raise ValueError(f"best_metric={config.best_metric!r} is not a held-out metric; "
                         f"expected one of {config.eval_metric_names()}" +
                         (" (em / f1 need eval_answers=True)"
                          if config.best_metric in ("em", "f1") else ""))
    _validate_schedule(config)


def _validate_schedule(config: TrainConfig) -> None:
    if config.checkpoint_every < 1 or config.num_steps < 0:
        raise ValueError("checkpoint_every must be >= 1 and num_steps >= 0")
    if config.log_every < 1 or config.eval_every < 0:
        raise ValueError(f"log_every={config.log_every} must be >= 1 and eval_every="
                         f"{config.eval_every} >= 0 (0: no held-out evaluation)")
    warmup = config.optimizer.warmup_steps
    if warmup < 0 or (warmup and warmup >= max(config.num_steps, 2)):
        raise ValueError(f"optimizer.warmup_steps={warmup} must be in [0, num_steps="
                         f"{config.num_steps}) (the {config.optimizer.schedule} decay follows "
                         "the warm-up)")


READER_METRICS = ("em", "f1")  # what a reader's held-out evaluation reports


def validate_reader(config: ReaderExperimentConfig) -> None:
    """Reader-training settings that cannot work, with a message that says which and why."""
    check_choices(config)
    train = config.train
    _validate_schedule(train)
    if train.best_metric and not train.eval_every:
        raise ValueError(f"train.best_metric={train.best_metric!r} needs train.eval_every > 0 "
                         "(the best reader is chosen at the held-out evaluations)")
    if train.best_metric not in ("", *READER_METRICS):
        raise ValueError(f"train.best_metric={train.best_metric!r}: a reader is chosen by one "
                         f"of {READER_METRICS} (or '' for none)")
    if not config.model.reader:
        raise ValueError("model.reader must name the reader to train: 'tiny', a T5 / FiD "
                         "checkpoint folder or a hub name such as google-t5/t5-large")
    if config.model.reader_kind != "fid":
        raise ValueError(f"model.reader_kind={config.model.reader_kind!r}: reader training "
                         "trains Fusion-in-Decoder (T5) readers only")
    if not 0 <= config.num_slots <= config.data.num_candidates:
        raise ValueError(f"num_slots={config.num_slots} must be in [0, data.num_candidates="
                         f"{config.data.num_candidates}] (0: read every candidate, as FiD)")
    if not 0.0 <= config.drop_indirect <= 1.0 or (config.drop_indirect and
                                                   not config.num_slots):
        raise ValueError(f"drop_indirect={config.drop_indirect} must be in [0, 1] and needs "
                         "num_slots > 0 (it drops passages from the subsets read)")
    if not config.dropout_rate < 1.0 or config.target_answers < 1:
        raise ValueError(f"dropout_rate={config.dropout_rate} must be < 1 (negative: the "
                         f"start checkpoint's) and target_answers={config.target_answers} >= 1")
    if config.data.batch_size < 1 or config.data.answer_length < 2:
        raise ValueError("data.batch_size must be >= 1 and data.answer_length >= 2 (an answer "
                         "token and EOS)")
