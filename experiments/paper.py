"""The paper's experiment grid: its tables, one ``PaperRow`` per table row, and the settings
they share.

Each row lives in its own file under ``experiments/configs/paper/`` (its docstring names the
table, the row, the paper's numbers, the command, the hardware and the time) and defines
``get_row()`` and ``get_config()``. ``experiments.reproduce`` runs the rows' cells (a row x a
seed); ``experiments.make_tables`` puts their results beside the paper's.

Settings the paper does not publish (learning rate, batch, steps, lengths, mining size) are
ours, stated here once; every row can override them on the command line (``--set``). The
temperatures it does not publish for rerankers (θ, T of the baselines) and τ are tuned, with
the same small grid budget for every method (``TUNING``, ``reproduce --tune``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import pathlib

from gumbel_jax.data.formats import RANKING_LABELS
from gumbel_jax.models import RANKT5_SCORE_TOKEN_ID
from gumbel_jax.training.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimizerConfig,
    ReaderExperimentConfig,
    TrainConfig,
)

CONFIG_DIR = pathlib.Path(__file__).parent / "configs" / "paper"
# The ModelConfig fields that name a checkpoint or tokenizer (a hub id or a folder).
MODEL_PATH_FIELDS = ("reader", "reranker", "reader_tokenizer", "reranker_tokenizer")


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a table: a metric of one evaluation file of a run."""

    label: str  # as the paper prints it
    source: str  # "mining" (training questions, ranking only) or "eval" (held-out questions)
    metric: str  # key in {source}.json


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[str, ...]  # row labels in the paper's order
    # What its ranking columns count as relevant: "gold" passages (multi-hop sets) or
    # "answer" passages (NQ / TriviaQA: answer recall); RANKING_DEFINITIONS says how.
    ranking: str = "gold"


RANKING_DEFINITIONS = {
    "gold": "ranking columns over the gold (supporting) passages the dataset marks: R@5 = "
            "the fraction of a question's gold passages in the reranker's top 5, NDCG@5 "
            "with binary gains, MRR = 1 / rank of the first gold passage in the whole "
            "ranking (not cut at 5)",
    "gold_and_answer": "R@5 over the gold passages on HotpotQA (as its own table), answer "
                       "R@5 (top-5 accuracy, as the NQ table) on both datasets",
    "answer": "FiD's NQ / TriviaQA files mark no gold passages: R@5 is answer recall (top-5 "
              "accuracy, as DPR and FiD report it) = the fraction of questions with a "
              "passage containing an answer alias (SQuAD normalisation, or the file's "
              "has_answer) among the reranker's top 5; a question whose candidates contain "
              "no answer counts as a miss",
}


MINING_R5 = Column("Mining R@5", "mining", "recall@5")
MINING_NDCG5 = Column("Mining NDCG@5", "mining", "ndcg@5")
RERANKER_R5 = Column("Reranker R@5", "eval", "recall@5")
# NQ / TriviaQA: answer recall (RANKING_DEFINITIONS["answer"]).
RERANKER_ANSWER_R5 = Column("Reranker R@5", "eval", "answer_recall@5")
EM = Column("EM", "eval", "em")
F1 = Column("F1", "eval", "f1")
METHOD_ROWS = ("EMDR", "PDist", "LOOP", "ADist", "G-Rerank")
ABLATION_ROWS = ("G-Rerank", "no Gumbel noise", "from-scratch reranker", "subset relaxation",
                 "tau = 0.1", "tau = 0.25", "tau = 1.0", "tau = 2.0", "kappa = 0.5",
                 "kappa = 2.0")

TABLES: dict[str, Table] = {
    "hotpotqa": Table("HotpotQA (distractor), FiD-Large reader, RankT5-base reranker",
                      (MINING_R5, MINING_NDCG5, RERANKER_R5, EM, F1), METHOD_ROWS),
    "hotpotqa_indirect": Table(
        "HotpotQA, indirectly relevant passages (gold passages without the answer), "
        "held-out questions",
        (Column("R@5", "eval", "indirect_recall@5"), Column("MRR", "eval", "indirect_mrr"),
         Column("NDCG@5", "eval", "indirect_ndcg@5")), ("EMDR", "PDist", "G-Rerank")),
    "musique": Table("MuSiQue (answerable), FiD-Large reader, RankT5-base reranker",
                     (MINING_R5, EM, F1), METHOD_ROWS),
    "2wiki": Table("2WikiMultiHopQA, FiD-Large reader, RankT5-base reranker",
                   (MINING_R5, EM, F1), METHOD_ROWS),
    "bge": Table("HotpotQA with the BGE-base reranker (XLM-RoBERTa cross-encoder)",
                 (MINING_R5, MINING_NDCG5, RERANKER_R5, EM, F1), METHOD_ROWS),
    "nq": Table("Natural Questions (FiD's retrieved passages), FiD-Large reader, "
                "RankT5-base reranker", (RERANKER_ANSWER_R5, EM, F1), METHOD_ROWS,
                ranking="answer"),
    "triviaqa": Table("TriviaQA (FiD's retrieved passages), FiD-Large reader, "
                      "RankT5-base reranker", (RERANKER_ANSWER_R5, EM, F1), METHOD_ROWS,
                      ranking="answer"),
    # The paper reports G-Rerank's gains with CEPE-Llama2-7B as the reader too, but its exact
    # CEPE rows are not in our notes (method.md): every cell here is ours alone.
    "cepe": Table("CEPE-Llama2-7B reader, RankT5-base reranker, on HotpotQA and NQ",
                  (RERANKER_R5, Column("answer R@5", "eval", "answer_recall@5"), EM, F1),
                  tuple(f"{name} {row}" for name in ("HotpotQA", "NQ") for row in METHOD_ROWS),
                  ranking="gold_and_answer"),
    "ablations": Table("Ablations on HotpotQA (G-Rerank, RankT5-base)",
                       (MINING_R5, RERANKER_R5, EM, F1,
                        Column("indirect R@5", "eval", "indirect_recall@5")), ABLATION_ROWS),
}


@dataclasses.dataclass(frozen=True)
class PaperRow:
    table: str  # a key of TABLES
    row: str  # the row's label in that table
    run: str  # run folder; rows of several tables that train the same thing share it
    experiment: ExperimentConfig | ReaderExperimentConfig  # the latter: readers stage
    paper: dict[str, float] = dataclasses.field(default_factory=dict)  # label -> number (%)
    hardware: str = ""  # expected hardware and time of one seed
    # The held-out metric that picks the run's TUNING point under ``reproduce --tune``
    # ("": the row fixes its settings, as the ablations do).
    tune_metric: str = ""


@dataclasses.dataclass(frozen=True)
class TuningGrid:
    """The objective settings one method tunes: each ``ObjectiveConfig`` field with its
    candidate values. Every point of their product is one extra training (seed 0) on the
    training split less its first ``TUNING_QUESTIONS`` questions, evaluated on those; the
    best point by the row's ``tune_metric`` (ties: the earlier point) is then trained at
    every seed (``experiments.reproduce``)."""

    axes: tuple[tuple[str, tuple[float, ...]], ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    def points(self) -> list[dict[str, float]]:
        """The grid's points in order (the first axis varies slowest)."""
        return [dict(zip(self.fields, values, strict=True))
                for values in itertools.product(*(values for _, values in self.axes))]

    def replace_axis(self, field: str, values: tuple[float, ...]) -> TuningGrid:
        """The grid with ``field``'s values replaced (``reproduce --tune_grid``)."""
        if field not in self.fields:
            raise ValueError(f"{field!r} is not tuned by this grid (it tunes "
                             f"{', '.join(self.fields)})")
        return TuningGrid(tuple((name, values if name == field else old)
                                for name, old in self.axes))


# The paper publishes no temperature for rerankers, and Atlas's 0.01 (our defaults) assumes a
# retriever's already-scaled scores: on raw reranker logits (±10) softmax(s / 0.01) is an
# argmax. So every method gets the same budget, four trainings, on held-out questions: τ for
# G-Rerank (0.5, the third-party report of the paper's value, first so that it wins ties),
# θ (the reranker's softmax temperature) x T (temperature_gold, the target's) for the
# baselines. κ stays 1 (a score scale is redundant with τ).
BASELINE_GRID = TuningGrid((("theta", (1.0, 0.1)), ("temperature_gold", (1.0, 0.1))))
TUNING: dict[str, TuningGrid] = {
    "g_rerank": TuningGrid((("tau", (0.5, 0.25, 1.0, 2.0)),)),
    "emdr": BASELINE_GRID, "pdist": BASELINE_GRID, "loop": BASELINE_GRID,
    "adist": BASELINE_GRID,
}
TUNING_QUESTIONS = 1000  # held out from the training split's start (not the reported split)
# The metric that chooses, per dataset: the tables' "Reranker R@5" on the tuning questions.
TUNE_METRIC = {"gold": "recall@5", "answer": "answer_recall@5"}


@dataclasses.dataclass(frozen=True)
class DatasetSetup:
    """What a dataset fixes: its prepared tfds name, candidate pool, reader checkpoint and
    lengths; plus our (unpublished in the paper) batch and step counts for it."""

    tfds_name: str
    num_candidates: int
    # A folder in --models_dir: FiD's release (NQ, TriviaQA), or the readers-stage run of this
    # name, which trains it (READER_ROWS; experiments/configs/readers/).
    reader: str
    reader_length: int
    batch_size: int
    num_steps: int
    answer_length: int = 32
    ranker_length: int = 256


DATASETS = {
    # One epoch of HotpotQA's 90,447 training questions is 2,826 steps at batch 32.
    "hotpotqa": DatasetSetup("gj_hotpotqa", 10, "fid-large-hotpotqa", 256, 32, 3000),
    "musique": DatasetSetup("gj_musique", 20, "fid-large-musique", 256, 32, 3000),
    "2wiki": DatasetSetup("gj_two_wiki", 10, "fid-large-2wiki", 256, 32, 3000),
    # FiD's released NQ / TriviaQA readers read 100 passages of 250 tokens; batch 8 is what
    # fits on one 80 GB card (benchmarks/results: 50 GB at 100 x 256).
    "nq": DatasetSetup("gj_nq", 100, "nq_reader_large", 250, 8, 10000),
    "triviaqa": DatasetSetup("gj_triviaqa", 100, "tqa_reader_large", 250, 8, 10000),
}

RANKT5 = dict(reranker="Soyoung97/RankT5-base", reranker_kind="rankt5",
              reranker_architecture="t5-v1_1-base", score_token_id=RANKT5_SCORE_TOKEN_ID)
BGE = dict(reranker="BAAI/bge-reranker-base", reranker_kind="cross_encoder",
           reranker_architecture="xlm-roberta-base")
METHODS = {"G-Rerank": "g_rerank", "EMDR": "emdr", "PDist": "pdist", "LOOP": "loop",
           "ADist": "adist"}


def paper_experiment(dataset: str, method: str, *, reranker: dict | None = None,
                     objective: dict | None = None, model: dict | None = None,
                     name: str = "") -> ExperimentConfig:
    """The experiment of one row: ``dataset`` (a key of DATASETS), ``method`` (an
    objective name), the reranker (RANKT5 or BGE) and any changed objective or model
    fields (ablations)."""
    setup = DATASETS[dataset]
    data = DataConfig(source=f"tfds:{setup.tfds_name}", train_split="train",
                      eval_split="validation", num_eval=1_000_000, num_mining=10_000,
                      num_candidates=setup.num_candidates, reader_length=setup.reader_length,
                      ranker_length=setup.ranker_length, answer_length=setup.answer_length,
                      batch_size=setup.batch_size)
    model_config = ModelConfig(reader=setup.reader, reader_tokenizer="google-t5/t5-large",
                               reader_architecture="t5-large", dtype="bfloat16",
                               remat=setup.num_candidates > 20,
                               **{**(reranker or RANKT5), **(model or {})})
    objective_config = ObjectiveConfig(**{"name": method, "k": 5, "tau": 0.5, "kappa": 1.0,
                                          **(objective or {})})
    train = TrainConfig(num_steps=setup.num_steps, checkpoint_every=500, max_to_keep=2,
                        objective=objective_config,
                        optimizer=OptimizerConfig(learning_rate=5e-5, warmup_steps=200,
                                                  weight_decay=0.01, clip_norm=1.0))
    return ExperimentConfig(name=name or f"{dataset}_{method}", data=data, model=model_config,
                            train=train)


def method_row(table: str, dataset: str, row: str, *, paper: dict | None = None,
               reranker: dict | None = None, prefix: str = "", hardware: str = "") -> PaperRow:
    """A table row that trains ``row``'s method (a key of METHODS) on ``dataset``."""
    method = METHODS[row]
    run = f"{prefix}{dataset}_{method}"
    return PaperRow(table, row, run,
                    paper_experiment(dataset, method, reranker=reranker, name=run),
                    dict(paper or {}), hardware,
                    tune_metric=TUNE_METRIC[RANKING_LABELS[dataset]])


# CEPE-Llama2-7B (hyen/CEPE-LLaMA-2-7B) as the frozen reader: candidates to its context
# encoder (one per context, "Document (Title: ...): ...", at most 256 tokens), the decoder
# reads "Question: ...\nAnswer:" (64 tokens) and the answer (data.cepe_inputs; CEPE's QA
# evaluation). Batch 8 x 10 contexts is cepe.md's shape (about 66 TFLOP a step, 17 GB of
# weights, 11 GB of memory keys/values); NQ's 100 contexts need 10x the memory keys/values
# per question, so batch 2 there.
CEPE = dict(reader="hyen/CEPE-LLaMA-2-7B", reader_kind="cepe",
            reader_architecture="cepe-llama-2-7b", reader_tokenizer="hyen/CEPE-LLaMA-2-7B",
            cepe_prompt_length=64)
CEPE_BATCH = {"hotpotqa": 8, "nq": 2}


def cepe_row(dataset: str, row: str, *, hardware: str = "") -> PaperRow:
    """A row of the ``cepe`` table: ``row``'s method (a key of METHODS) on ``dataset``
    ("hotpotqa" or "nq") with CEPE-Llama2-7B reading and RankT5-base reranking."""
    method = METHODS[row]
    run = f"cepe_{dataset}_{method}"
    experiment = paper_experiment(dataset, method, name=run)
    data = dataclasses.replace(experiment.data, batch_size=CEPE_BATCH[dataset],
                               reader_length=256)
    model = dataclasses.replace(experiment.model, **CEPE)
    label = {"hotpotqa": "HotpotQA", "nq": "NQ"}[dataset]
    return PaperRow("cepe", f"{label} {row}", run,
                    dataclasses.replace(experiment, data=data, model=model), {}, hardware,
                    tune_metric=TUNE_METRIC[RANKING_LABELS[dataset]])


def ablation_row(row: str, run: str, *, objective: dict | None = None,
                 model: dict | None = None, hardware: str = "") -> PaperRow:
    """A row of the ablation table: G-Rerank on HotpotQA with one thing changed."""
    experiment = paper_experiment("hotpotqa", "g_rerank", objective=objective, model=model,
                                  name=run)
    return PaperRow("ablations", row, run, experiment, {}, hardware)


def load_row(path: str | pathlib.Path) -> PaperRow:
    """The ``PaperRow`` of one config file (its ``get_row()``)."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"paper_row_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_row"):
        raise ValueError(f"{path}: a paper config must define get_row()")
    row = module.get_row()
    if row.table not in TABLES or row.row not in TABLES[row.table].rows:
        raise ValueError(f"{path}: row {row.row!r} of table {row.table!r} is not in "
                         "experiments.paper.TABLES")
    unknown = set(row.paper) - {c.label for c in TABLES[row.table].columns}
    if unknown:
        raise ValueError(f"{path}: paper numbers for unknown columns {sorted(unknown)}")
    return row


def load_rows(directory: str | pathlib.Path = CONFIG_DIR) -> list[PaperRow]:
    """Every paper row, in table order then the paper's row order. Two rows that share a
    run must train the same experiment."""
    rows = [load_row(p) for p in sorted(pathlib.Path(directory).glob("*.py"))
            if not p.name.startswith("_")]
    by_run: dict[str, PaperRow] = {}
    for row in rows:
        other = by_run.setdefault(row.run, row)
        if other.experiment != row.experiment:
            raise ValueError(f"rows {other.table}/{other.row} and {row.table}/{row.row} share "
                             f"run {row.run!r} but configure different experiments")
    order = {(t, r): (i, j) for i, (t, table) in enumerate(TABLES.items())
             for j, r in enumerate(table.rows)}
    return sorted(rows, key=lambda row: order[(row.table, row.row)])


def tuned_runs(rows: list[PaperRow]) -> dict[str, tuple[TuningGrid, str]]:
    """``{run: (grid, metric)}`` for the runs a method row tunes. A run shared with a row
    that fixes its settings (the ablations' G-Rerank reference) is tuned: its other rows
    report the same trained reranker."""
    tuned: dict[str, tuple[TuningGrid, str]] = {}
    for row in rows:
        if not row.tune_metric:
            continue
        entry = (TUNING[row.experiment.train.objective.name], row.tune_metric)
        if tuned.setdefault(row.run, entry) != entry:
            raise ValueError(f"run {row.run!r}: its rows tune it differently")
    return tuned


# ------------------------------------------------------------------ the readers stage
# No FiD-Large reader for HotpotQA, MuSiQue or 2Wiki is public: the readers stage trains them
# here from google-t5/t5-large (one config each in experiments/configs/readers/) and exports
# each to --models_dir/<DatasetSetup.reader>, the folder that dataset's rows read. A reranker
# row names its reader run by that name (model.reader); experiments.reproduce runs the stage
# first and refuses a row whose reader is missing. NQ and TriviaQA read FiD's released readers.
READER_CONFIG_DIR = pathlib.Path(__file__).parent / "configs" / "readers"
READERS_TABLE = "readers"  # experiments.reproduce --table readers
READER_ROWS = {"hotpotqa": "HotpotQA", "musique": "MuSiQue", "2wiki": "2Wiki"}
# FiD's recipe for its large readers (facebookresearch/FiD README: AdamW, learning rate 5e-5,
# linear schedule, 1,000 warm-up steps, weight decay 0.01, 250 tokens per (question,
# passage), 64 GPUs x 1 question = 64 questions per step, every passage of a question read
# together; gradient clipping 1.0 is its options.py default). Which of these the G-Rerank
# paper used is not published. Steps are ours (FiD trained 15,000 on NQ's 79k questions):
# about 4 epochs of HotpotQA's 90,447 training questions, 10 of MuSiQue's 19,938, 2.3 of
# 2Wiki's 167,454.
FID_READER_OPTIMIZER = OptimizerConfig(learning_rate=5e-5, warmup_steps=1000, weight_decay=0.01,
                                       clip_norm=1.0, schedule="linear")
READER_BATCH, READER_LENGTH = 64, 250
READER_STEPS = {"hotpotqa": 6000, "musique": 3000, "2wiki": 6000}


def reader_experiment(dataset: str) -> ReaderExperimentConfig:
    """The readers-stage run of ``dataset`` (a key of READER_ROWS): FiD-Large from
    google-t5/t5-large on the dataset's training split, every candidate of a question read
    together (its whole pool: the gold passages are always among them), held-out EM every
    500 steps choosing the exported checkpoint; answers cut at the grid's answer length."""
    setup = DATASETS[dataset]
    data = DataConfig(source=f"tfds:{setup.tfds_name}", train_split="train",
                      eval_split="validation", num_eval=1_000_000,
                      num_candidates=setup.num_candidates, reader_length=READER_LENGTH,
                      answer_length=setup.answer_length, batch_size=READER_BATCH)
    model = ModelConfig(reader="google-t5/t5-large", reranker="", reader_architecture="t5-large",
                        dtype="bfloat16", remat=True)
    train = TrainConfig(num_steps=READER_STEPS[dataset], checkpoint_every=500, max_to_keep=2,
                        log_every=10, eval_every=500, best_metric="em",
                        optimizer=FID_READER_OPTIMIZER)
    return ReaderExperimentConfig(name=setup.reader, data=data, model=model, train=train)


def reader_row(dataset: str, *, hardware: str = "") -> PaperRow:
    """The readers table's row of ``dataset``: its run is the reader's folder name."""
    return PaperRow(READERS_TABLE, READER_ROWS[dataset], DATASETS[dataset].reader,
                    reader_experiment(dataset), {}, hardware)


def load_reader_rows(directory: str | pathlib.Path = READER_CONFIG_DIR) -> list[PaperRow]:
    """The readers stage: one row per config in ``directory`` (its ``get_row()``)."""
    rows = []
    for path in sorted(pathlib.Path(directory).glob("[!_]*.py")):
        spec = importlib.util.spec_from_file_location(f"reader_row_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        row = module.get_row()
        if row.table != READERS_TABLE or not isinstance(row.experiment, ReaderExperimentConfig):
            raise ValueError(f"{path}: get_row() must return a {READERS_TABLE!r} row training a "
                             "ReaderExperimentConfig (experiments.paper.reader_row)")
        rows.append(row)
    return rows


def reader_run_of(reader: str) -> str:
    """The readers-stage run that builds the reader folder ``reader`` (a name or a path in
    --models_dir), or "" when no run does (FiD's releases, hub names)."""
    name = pathlib.Path(reader).name if reader else ""
    return name if name in {DATASETS[d].reader for d in READER_ROWS} else ""


def resolve_paths(experiment: ExperimentConfig, *, data_dir: str,
                  models_dir: str) -> ExperimentConfig:
    """Point the experiment at the user's prepared data and downloaded models: a model or
    tokenizer name without a "/" (and not "tiny") is a folder in ``models_dir``; names with
    one are Hugging Face hub ids or absolute paths and stay. A readers-stage run exports its
    reader to ``models_dir/<its name>``."""
    model = experiment.model
    local = {}
    for field in MODEL_PATH_FIELDS:
        name = getattr(model, field)
        if name and name != "tiny" and "/" not in name:
            local[field] = str(pathlib.Path(models_dir) / name)
    extra = {}
    if isinstance(experiment, ReaderExperimentConfig) and not experiment.export_dir:
        # A readers-stage run exports to the folder the reranker rows read.
        extra["export_dir"] = str(pathlib.Path(models_dir) / experiment.name)
    return dataclasses.replace(
        experiment, data=dataclasses.replace(experiment.data, data_dir=data_dir),
        model=dataclasses.replace(model, **local), **extra)
