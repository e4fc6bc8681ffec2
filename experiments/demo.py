"""The main job: the paper's central claim on the synthetic multi-hop world, offline, on CPU.

    make demo                                   # = python -m experiments.demo
    python -m experiments.demo --seeds 1 --ks 5 --no-tune --out runs/quick

Stages (``gumbel_jax.data.synthetic`` explains the world):
  1. generate the world: training, dev and held-out questions, each with 10 candidates, of
     which 3-7 are answer-like (the answer and "born in" distractors: never tied to k);
  2. train a tiny FiD reader on the gold passages among random distractors, then freeze it;
     its EM with the gold passages, all candidates, random ones, without the bridge and
     with the best top k a one-passage-at-a-time reranker can pick shows how much it
     depends on retrieval;
  3. tune every method (G-Rerank, its no-noise ablation, EMDR, PDist, LOOP, ADist) with the
     same budget at the first k of ``--ks``: four trainings over its grid (``TUNING``: tau
     for G-Rerank, theta x T for the baselines), chosen by the reader's EM on the dev
     questions; then, for each k, train each method at its chosen setting and every seed,
     from the same initialisation, on the same reader, data and budget, with the trainer's
     own step (``gumbel_jax.training.step``): only the sizes are small;
  4. evaluate on held-out questions: Recall@k / NDCG@k on gold passages, EM / F1 of the
     reader on the reranker's top k, Recall@k / MRR / NDCG@k on indirect (bridge) passages,
     and which passage roles land in the top k.

Writes ``results.md``, ``results.json``, ``indirect_recall.png`` and ``top_k_roles.png`` (for
the first k) to ``--out`` (default ``runs/demo``) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import pathlib
import sys
import time

import numpy as np

from gumbel_jax.data.pipeline import stack_examples
from gumbel_jax.data.synthetic import ROLES

METHODS = {  # name in the tables -> objective settings (gumbel_jax.training.ObjectiveConfig)
    "G-Rerank": {"name": "g_rerank"},
    "G-Rerank, no noise": {"name": "g_rerank", "relaxation": "no_noise"},
    "EMDR": {"name": "emdr"},
    "PDist": {"name": "pdist"},
    "LOOP": {"name": "loop"},
    "ADist": {"name": "adist"},
}
# The same budget for every method, four trainings, as ``reproduce --tune`` gives the paper's
# rows: tau for G-Rerank (0.5 first, so the paper's value wins ties), theta (the reranker's
# softmax temperature) x T (the target's) for the baselines. Atlas's 0.01 is left out: on raw
# reranker logits softmax(s / 0.01) is an argmax (the first demo's EMDR collapsed with it).
BASELINE_GRID = (("theta", (1.0, 0.1)), ("temperature_gold", (1.0, 0.1)))
TUNING = {"g_rerank": (("tau", (0.5, 0.25, 1.0, 2.0)),), "emdr": BASELINE_GRID,
          "pdist": BASELINE_GRID, "loop": BASELINE_GRID, "adist": BASELINE_GRID}
SYMBOLS = {"tau": "τ", "theta": "θ", "temperature_gold": "T"}
TUNE_SEED = 1000  # tuning trains its own seed, none of the reported ones


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    seeds: int = 4
    num_train: int = 3000
    num_dev: int = 256  # tuning questions: the reader's EM on them chooses each setting
    num_eval: int = 256
    num_people: int = 60
    num_cities: int = 40
    num_countries: int = 7
    # "born in" distractors per question: 4 ± 2, so 3-7 answer-like passages (the answer
    # and its distractors), never tied to k
    born_distractors: int = 4
    born_distractors_spread: int = 2
    ks: tuple[int, ...] = (5, 3)  # top k of training and evaluation; tuning runs at the first
    tune: bool = True  # False: every method at its objective's default settings
    # models: tiny T5s (the reader reads, so it gets the second decoder layer)
    d_model: int = 32
    num_heads: int = 2
    reader_steps: int = 10000
    reader_learning_rate: float = 3e-3
    # passages per question while the reader trains: up to all 10, as G-Rerank's soft mask
    # reads them (FiD reads every candidate); docs/demo.md says what 7 and 10 changed
    reader_slots: int = 10
    reader_drop_bridge: float = 0.3  # share of reader training questions without the bridge
    ranker_steps: int = 60
    ranker_learning_rate: float = 1e-3
    batch_size: int = 32
    eval_every: int = 10  # steps between the held-out indirect-recall points of the curves
    methods: tuple[str, ...] = tuple(METHODS)
    out: str = "runs/demo"


def parse_args(argv=None) -> DemoConfig:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(DemoConfig):
        value = getattr(defaults, field.name)
        if field.name == "methods":
            parser.add_argument("--methods", nargs="+", default=list(value), choices=METHODS,
                                metavar="METHOD", help=f"any of {list(METHODS)}")
        elif field.name == "ks":
            parser.add_argument("--ks", nargs="+", type=int, default=list(value),
                                help=f"default: {' '.join(map(str, value))}")
        elif field.name == "tune":
            parser.add_argument("--tune", action=argparse.BooleanOptionalAction, default=value,
                                help="tune every method on the dev questions (default)")
        else:
            parser.add_argument(f"--{field.name}", type=type(value), default=value,
                                help=f"default: {value}")
    args = vars(parser.parse_args(argv))
    args["methods"], args["ks"] = tuple(args["methods"]), tuple(args["ks"])
    config = DemoConfig(**args)
    if config.seeds < 1 or config.reader_steps < 1 or config.ranker_steps < 1:
        parser.error("--seeds, --reader_steps and --ranker_steps must be >= 1")
    if (config.num_eval < 1 or config.num_dev < 1 or config.batch_size < 1
            or config.num_train < config.batch_size):
        parser.error("--num_train must be >= --batch_size >= 1, --num_eval and --num_dev >= 1")
    if not all(1 <= k <= 10 for k in config.ks) or not 2 <= config.reader_slots <= 10:
        parser.error("--ks must be in [1, 10] and --reader_slots in [2, 10] (10 candidates)")
    try:
        from gumbel_jax.data.synthetic import make_world

        make_world(world_config(config))
    except ValueError as error:
        parser.error(f"the world: {error}")
    return config


def world_config(config: DemoConfig):
    from gumbel_jax.data.synthetic import WorldConfig

    return WorldConfig(num_people=config.num_people, num_cities=config.num_cities,
                       num_countries=config.num_countries, num_candidates=10,
                       num_born_distractors=config.born_distractors,
                       born_distractors_spread=config.born_distractors_spread)


class Stage:
    """A progress bar for one stage, with elapsed and remaining time; plain lines when the
    output is not a terminal."""

    def __init__(self, title: str, total: int):
        from tqdm import tqdm

        self.title, self.started = title, time.perf_counter()
        self.bar = tqdm(total=total, desc=title, unit="step", dynamic_ncols=True,
                        disable=not sys.stderr.isatty(), file=sys.stderr)
        if self.bar.disable:
            print(f"[demo] {title} ...", file=sys.stderr, flush=True)

    def update(self, count: int = 1, **postfix):
        self.bar.update(count)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> float:
        self.bar.close()
        seconds = time.perf_counter() - self.started
        print(f"[demo] {self.title}: {seconds:.0f} s", file=sys.stderr, flush=True)
        return seconds


def build_data(config: DemoConfig):
    from gumbel_jax.data.pipeline import FeatureSpec, Featurizer
    from gumbel_jax.data.synthetic import make_records
    from gumbel_jax.data.tokenizer import word_level_tokenizer

    world = world_config(config)
    train = make_records(world, config.num_train, split_seed=0, prefix="train")
    held_out = make_records(world, config.num_eval, split_seed=1, prefix="eval")
    dev = make_records(world, config.num_dev, split_seed=2, prefix="dev")
    tokenizer = word_level_tokenizer(train + held_out + dev)
    # question + title + passage fit in 24 tokens; answers are one city + EOS
    featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(10, 24, 24, 2))
    return train, dev, held_out, tokenizer, featurize


def batches(examples: list[dict], batch_size: int, seed: int):
    """Endless shuffled batches of pre-featurised examples (a grain pipeline)."""
    from gumbel_jax.data.pipeline import make_dataset

    return iter(make_dataset(examples, lambda example: example, batch_size=batch_size,
                             seed=seed, shard_index=0, shard_count=1))


def tiny_t5(config: DemoConfig, vocab_size: int, *, encoder_layers: int, decoder_layers: int,
            **extra):
    from gumbel_jax.models import T5Config

    return T5Config(vocab_size=vocab_size, d_model=config.d_model,
                    d_kv=config.d_model // config.num_heads, d_ff=2 * config.d_model,
                    num_heads=config.num_heads, num_layers=encoder_layers,
                    num_decoder_layers=decoder_layers, **extra)


def train_reader_stage(config: DemoConfig, train_examples, vocab_size: int):
    from gumbel_jax.models import FiDReader
    from gumbel_jax.training.reader import train_reader

    reader = FiDReader.random(tiny_t5(config, vocab_size, encoder_layers=1, decoder_layers=2),
                              seed=0)
    stage = Stage("reader: training", config.reader_steps)
    losses = train_reader(reader, batches(train_examples, config.batch_size, seed=0),
                          num_steps=config.reader_steps,
                          learning_rate=config.reader_learning_rate,
                          num_slots=config.reader_slots,
                          drop_indirect=config.reader_drop_bridge,
                          on_step=lambda step, loss: stage.update(loss=f"{loss:.3f}"))
    return reader, losses, stage.close()


def reader_report(config: DemoConfig, reader, held_out, eval_batch: dict, tokenizer) -> dict:
    """The frozen reader's EM when it reads (a) both gold passages plus random others,
    (b) all candidates, (c) random candidates, (d) candidates without the bridge, (e) the
    best top k of a reranker that scores one passage at a time (see :func:`ceiling_recall`);
    (a), (c), (d) and (e) read k passages, for each k of ``config.ks``."""
    import jax.numpy as jnp

    from gumbel_jax.training.reader import reader_exact_match

    rng = np.random.default_rng(0)
    valid, gold, indirect = eval_batch["doc_valid"], eval_batch["gold"], eval_batch["indirect"]
    roles = np.array([record.metadata["roles"] for record in held_out])
    answer_like = (roles == "answer") | (roles == "distractor")

    def pick(count, always=None, never=None):
        noise = rng.random(valid.shape) + np.where(valid, 0.0, 9.0)
        if always is not None:
            noise = np.where(always, -1.0, noise)
        if never is not None:
            noise = np.where(never, 9.0, noise)
        return np.argsort(np.argsort(noise, axis=-1), axis=-1) < count

    settings = {"all candidates": valid}
    for k in config.ks:
        settings |= {
            f"gold passages + random others, k = {k}": pick(k, always=gold),
            f"random candidates, k = {k}": pick(k),
            f"answer passage + random others, no bridge, k = {k}": pick(
                k, always=gold & ~indirect, never=indirect),
            f"bridge + k - 1 random answer-like (the best top k), k = {k}": pick(
                k, always=indirect, never=~(answer_like | indirect)),
        }
    answers = [record.answers for record in held_out]
    device_batch = {key: jnp.asarray(value) for key, value in eval_batch.items()}
    return {name: reader_exact_match(reader, [(device_batch, answers)], tokenizer,
                                     mask_fn=lambda _, mask=mask: jnp.asarray(mask),
                                     max_length=2)
            for name, mask in settings.items()}


def indirect_recall(scores: np.ndarray, batch: dict, k: int) -> float:
    from gumbel_jax import metrics

    return float(np.mean([metrics.recall_at_k(s, i, k, v) for s, i, v in
                          zip(scores, batch["indirect"], batch["doc_valid"], strict=True)]))


def grid_points(axes) -> list[dict[str, float]]:
    """A tuning grid's points in order, the first axis varying slowest:
    ``(("theta", (1, .1)), ("temperature_gold", (1, .1)))`` -> 4 dicts, ``theta=1`` first."""
    names = [name for name, _ in axes]
    return [dict(zip(names, values, strict=True))
            for values in itertools.product(*(values for _, values in axes))]


def objective_for(method: str, k: int, point: dict | None = None):
    """The ``ObjectiveConfig`` of ``method`` at top-``k`` with a tuning point's settings."""
    from gumbel_jax.training import ObjectiveConfig

    return ObjectiveConfig(k=k, **METHODS[method], **(point or {}))


def choose(dev_results: list[dict]) -> int:
    """The tuning point with the best dev EM (ties: the earlier point, so the default wins)."""
    return max(range(len(dev_results)), key=lambda i: (dev_results[i]["em"], -i))


def label(point: dict) -> str:
    """``{"theta": 1.0, "temperature_gold": 0.1}`` -> ``"θ=1, T=0.1"``."""
    return ", ".join(f"{SYMBOLS.get(name, name)}={value:g}" for name, value in point.items())


class RankerTrainer:
    """Trains and evaluates the demo's rerankers: the same frozen reader, data and tiny RankT5
    initialisation (per seed) for every method; one jitted step per objective setting, so a
    setting trained at several seeds (or chosen by tuning) compiles once."""

    def __init__(self, config: DemoConfig, reader, tokenizer, train_examples, eval_batch):
        import jax.numpy as jnp
        from flax import nnx

        from gumbel_jax.models import RankT5

        self.config, self.reader, self.tokenizer = config, reader, tokenizer
        self.train_examples = train_examples
        # RankT5 shape: an encoder and one decoder step; its score is a logit of a token the
        # word-level vocabulary never produces as an answer ("<unk>").
        ranker_config = tiny_t5(config, len(tokenizer), encoder_layers=1, decoder_layers=1,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False)
        self.new_ranker = lambda seed: RankT5.random(ranker_config, seed=100 + seed,
                                                     score_token_id=tokenizer.unk_token_id)
        self.ranker_graph, _ = nnx.split(self.new_ranker(0))
        self.reader_graph, self.reader_state = nnx.split(reader)
        self.eval_batch = eval_batch
        self.device_eval = {key: jnp.asarray(value) for key, value in eval_batch.items()}
        self.steps = {}  # ObjectiveConfig -> (jitted step, optimizer)

    def step_for(self, objective):
        from gumbel_jax.training import OptimizerConfig, make_train_step
        from gumbel_jax.training.loop import ranker_step
        from gumbel_jax.training.step import make_optimizer

        if objective not in self.steps:
            tx = make_optimizer(OptimizerConfig(learning_rate=self.config.ranker_learning_rate),
                                self.config.ranker_steps)
            step = ranker_step(make_train_step(self.ranker_graph, self.reader_graph, tx,
                                               objective), self.reader_state)
            self.steps[objective] = (step, tx)
        return self.steps[objective]

    def train(self, objective, seed: int, *, curve: bool, on_log=None):
        """Train one reranker; returns ``(ranker, losses, curve, seconds)``, ``curve`` the
        held-out bridge Recall@k every ``eval_every`` steps (empty without ``curve``)."""
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from gumbel_jax.training.hooks import Hook
        from gumbel_jax.training.loop import NonFiniteLossError, RankerState, run_steps

        step_fn, tx = self.step_for(objective)
        ranker = self.new_ranker(seed)  # the same initialisation for every method
        _, params = nnx.split(ranker)
        points, losses = [], []

        def curve_point(step, state, metrics):
            scores = np.asarray(self._scores(state.params, self.device_eval))
            points.append(indirect_recall(scores, self.eval_batch, objective.k))

        def log(rows, seconds):
            losses.extend(row["loss"] for row in rows)
            if on_log is not None:
                on_log(len(rows), losses[-1])

        started = time.perf_counter()
        hooks = [Hook(curve_point, every=self.config.eval_every, at_end=True)] if curve else []
        if curve:
            curve_point(0, RankerState(params, None), {})
        data = ({key: jnp.asarray(value) for key, value in batch.items()}
                for batch in batches(self.train_examples, self.config.batch_size, seed=seed))
        try:
            state, _ = run_steps(step_fn, RankerState(params, tx.init(params)), data, start=0,
                                 end=self.config.ranker_steps, base_key=jax.random.key(seed),
                                 log_every=self.config.eval_every, on_log=log, hooks=hooks)
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"{objective}, seed {seed}: {error}") from None
        nnx.update(ranker, state.params)
        return ranker, losses, points, time.perf_counter() - started

    def _scores(self, params, batch):
        return _eval_scores(self.ranker_graph)(params, batch)

    def evaluate(self, ranker, records, featurized: dict, k: int) -> tuple[dict, dict]:
        """Held-out metrics of one reranker at top ``k`` (the reader answers from its top k)
        and how often each passage role lands in that top k."""
        from gumbel_jax.training.evaluation import evaluate

        result = evaluate(ranker, self.reader, records, lambda record: featurized[record.id],
                          k=k, batch_size=128, tokenizer=self.tokenizer, max_answer_length=2)
        return result["metrics"], top_k_roles(result["predictions"], records, k)


@functools.lru_cache(maxsize=2)
def _eval_scores(ranker_graph):
    import jax
    from flax import nnx

    @jax.jit
    def scores(params, batch):
        return nnx.merge(ranker_graph, params)(batch["ranker_ids"], batch["ranker_mask"])

    return scores


def tune(trainer: RankerTrainer, config: DemoConfig, k: int, dev, dev_examples: dict,
         stage) -> dict:
    """Every method's grid (``TUNING``) trained at ``TUNE_SEED`` and scored by the reader's
    EM on the dev split's questions (answers only: no passage labels choose)."""
    tuning = {}
    for method in config.methods:
        points = grid_points(TUNING[METHODS[method]["name"]])
        results = []
        for point in points:
            ranker, *_ = trainer.train(objective_for(method, k, point), TUNE_SEED, curve=False,
                                       on_log=lambda n, loss, method=method: stage.update(
                                           n, tuning=method))
            metrics, _ = trainer.evaluate(ranker, dev, dev_examples, k)
            results.append({"em": metrics["em"], f"indirect_recall@{k}":
                            metrics[f"indirect_recall@{k}"], f"recall@{k}": metrics[f"recall@{k}"]})
        tuning[method] = {"points": points, "dev": results,
                          "chosen": points[choose(results)]}
    return tuning


def report_runs(trainer: RankerTrainer, config: DemoConfig, k: int, chosen: dict, held_out,
                held_out_examples: dict, stage) -> dict:
    """Every method at its chosen setting, trained at seeds ``0 .. seeds - 1`` and evaluated
    on the held-out questions. Returns per-method lists (one entry per seed)."""
    runs = {method: [] for method in config.methods}
    for method in config.methods:
        for seed in range(config.seeds):
            ranker, losses, curve, seconds = trainer.train(
                objective_for(method, k, chosen.get(method)), seed, curve=True,
                on_log=lambda n, loss, method=method, seed=seed: stage.update(
                    n, method=method, seed=seed, loss=f"{loss:.3f}"))
            metrics, roles = trainer.evaluate(ranker, held_out, held_out_examples, k)
            runs[method].append({"seed": seed, "metrics": metrics, "roles": roles,
                                 "curve": curve, "loss": losses, "train_seconds": seconds})
    return runs


def curve_steps(config: DemoConfig) -> list[int]:
    steps = list(range(0, config.ranker_steps + 1, config.eval_every))
    return steps if steps[-1] == config.ranker_steps else steps + [config.ranker_steps]


def answer_like_counts(records) -> np.ndarray:
    """``[questions]`` the number of answer-like passages (the answer and its "born in"
    distractors: what a reranker that reads one passage at a time cannot tell apart)."""
    return np.array([sum(role in ("answer", "distractor") for role in record.metadata["roles"])
                     for record in records])


def ceiling_recall(records, k: int) -> float:
    """The expected gold Recall@k of the best ranking that scores passages one at a time:
    bridge first (it names the question's person and a country), then k - 1 of the m
    answer-like passages at random (the trap names the question's person as the one born,
    false bridges name no birthplace: both can be ruled out), so the answer passage is kept
    with probability min(1, (k - 1) / m). Every reranker here scores one passage at a time
    at test time, so this bounds them all."""
    kept = np.minimum(1.0, (k - 1) / answer_like_counts(records))
    return float(np.mean((1.0 + kept) / 2))


def top_k_roles(predictions, records, k: int) -> dict:
    """For each passage role: the fraction of that role's passages that land in the top k."""
    chosen = {role: 0 for role in ROLES}
    total = {role: 0 for role in ROLES}
    for prediction, record in zip(predictions, records, strict=True):
        top = set(prediction["ranking"][:k])
        for index, role in enumerate(record.metadata["roles"]):
            total[role] += 1
            chosen[role] += index in top
    return {role: chosen[role] / total[role] for role in ROLES if total[role]}


def summarize(runs: dict) -> dict:
    """mean / std / per-seed values of every metric, per method."""
    summary = {}
    for method, seeds in runs.items():
        names = [n for n in seeds[0]["metrics"] if n != "num_questions"]
        summary[method] = {name: _stats([s["metrics"][name] for s in seeds]) for name in names}
        summary[method]["roles_in_top_k"] = {
            role: _stats([s["roles"].get(role, 0.0) for s in seeds]) for role in ROLES
            if role in seeds[0]["roles"]}
    return summary


def _stats(values) -> dict:
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def _cell(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _setting(result: dict, method: str) -> str:
    chosen = result["chosen"].get(method)
    return label(chosen) if chosen else "default"


def _best_top_k_em(results: dict, k: int) -> float:
    return results["reader"]["exact_match"][
        f"bridge + k - 1 random answer-like (the best top k), k = {k}"]


def summary_table(results: dict) -> str:
    """The README's table: per method, the chosen setting, then bridge Recall@k and EM per k."""
    ks = results["config"]["ks"]
    head = ["Method", "setting"] + [name for k in ks for name in (f"bridge R@{k}", f"EM, k = {k}")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    first = results["by_k"][str(ks[0])]
    for method in results["config"]["methods"]:
        cells = [method, _setting(first, method)]
        for k in ks:
            stats = results["by_k"][str(k)]["methods"][method]
            cells += [_cell(stats[f"indirect_recall@{k}"]), _cell(stats["em"])]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["Best top k of a one-passage-at-a-time reranker", "—"]
    for k in ks:
        cells += ["100.0", f"{100 * _best_top_k_em(results, k):.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def float_path_table(runs: list[dict], k: int) -> str:
    """Demo runs on different float paths side by side (docs/demo.md): one row per run (its
    ``results.json`` content, which recorded its :func:`provenance`), one column per method:
    bridge Recall@k / EM at ``k``, mean ± std over the run's seeds, and the chosen setting."""
    methods = runs[0]["config"]["methods"]
    head = ["XLA_FLAGS", "CPUs", "seeds", *methods]
    lines = [f"| {' | '.join(head)} |", "|---" * len(head) + "|"]
    for results in runs:
        result = results["by_k"][str(k)]
        cells = [*float_path_cells(results["provenance"]), str(results["config"]["seeds"])]
        for method in methods:
            stats = result["methods"][method]
            cells.append(f"{_cell(stats[f'indirect_recall@{k}'])} / {_cell(stats['em'])} "
                         f"({_setting(result, method)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def k_tables(results: dict, k: int) -> list[str]:
    """Tables 1-4 of one k: gold passages and answers, bridge passages, passage roles in
    the top k, and the tuning on the dev questions."""
    result = results["by_k"][str(k)]
    summary = result["methods"]
    lines = [f"**Table 1 (k = {k}) — gold passages and answers** (the paper's layout)", "",
             f"| Method | setting | Recall@{k} | NDCG@{k} | EM | F1 |", "|---|---|---|---|---|---|"]
    for method, stats in summary.items():
        lines.append(f"| {method} | {_setting(result, method)} | {_cell(stats[f'recall@{k}'])} | "
                     f"{_cell(stats[f'ndcg@{k}'])} | {_cell(stats['em'])} | "
                     f"{_cell(stats['f1'])} |")
    lines.append(f"| Best top k of a one-passage-at-a-time reranker | — | "
                 f"{100 * result['ceiling_recall']:.1f} | — | "
                 f"{100 * _best_top_k_em(results, k):.1f} | — |")
    lines += ["", f"**Table 2 (k = {k}) — indirect (bridge) passages**", "",
              f"| Method | Recall@{k} | MRR | NDCG@{k} |", "|---|---|---|---|"]
    for method, stats in summary.items():
        lines.append(f"| {method} | {_cell(stats[f'indirect_recall@{k}'])} | "
                     f"{_cell(stats['indirect_mrr'])} | {_cell(stats[f'indirect_ndcg@{k}'])} |")
    roles = list(next(iter(summary.values()))["roles_in_top_k"])
    lines += ["", f"**Table 3 (k = {k}) — how often each passage role lands in the top {k}**",
              "", "| Method | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for method, stats in summary.items():
        lines.append(f"| {method} | " + " | ".join(
            _cell(stats["roles_in_top_k"][role]) for role in roles) + " |")
    if result["tuning"]:
        lines += ["", f"**Table 4 (k = {k}) — tuning: the reader's EM (%) on "
                  f"{results['config']['num_dev']} dev questions, one training per setting "
                  f"(seed {TUNE_SEED}); every k uses the chosen settings**", "",
                  "| Method | dev EM per setting | chosen |",
                  "|---|---|---|"]
        for method, tuning in result["tuning"].items():
            grid = "; ".join(f"{label(point)}: {100 * dev['em']:.1f}"
                             for point, dev in zip(tuning["points"], tuning["dev"], strict=True))
            lines.append(f"| {method} | {grid} | {label(tuning['chosen'])} |")
    return lines


def markdown_tables(results: dict) -> str:
    """Every table of a run, from its ``results.json`` content."""
    config = results["config"]
    lines = [f"Held-out questions; mean ± std over {config['seeds']} seed(s), in %; "
             "setting: the one tuning chose on the dev questions.", "",
             "**Summary**", "", summary_table(results).rstrip("\n"), ""]
    for k in config["ks"]:
        lines += k_tables(results, k) + [""]
    lines += ["**The frozen reader** (EM, %, reading these candidates)", "",
              "| Reader reads | EM |", "|---|---|"]
    lines += [f"| {name} | {100 * em:.1f} |"
              for name, em in results["reader"]["exact_match"].items()]
    return "\n".join(lines) + "\n"


def plot(out: pathlib.Path, runs: dict, checkpoints: list[int], summary: dict, k: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for method, seeds in runs.items():
        curves = 100 * np.array([s["curve"] for s in seeds])
        mean, std = curves.mean(0), curves.std(0)
        axis.plot(checkpoints, mean, label=method, marker="o", markersize=3)
        axis.fill_between(checkpoints, mean - std, mean + std, alpha=0.15)
    axis.set_xlabel("reranker training step")
    axis.set_ylabel(f"held-out Recall@{k} on bridge passages (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"Which training signal finds the bridge passage? (k = {k})")
    figure.tight_layout()
    figure.savefig(out / "indirect_recall.png", dpi=120)
    plt.close(figure)

    roles = list(next(iter(summary.values()))["roles_in_top_k"])
    figure, axis = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(summary)
    for position, (method, stats) in enumerate(summary.items()):
        means = [100 * stats["roles_in_top_k"][role]["mean"] for role in roles]
        errors = [100 * stats["roles_in_top_k"][role]["std"] for role in roles]
        axis.bar(np.arange(len(roles)) + position * width, means, width, yerr=errors,
                 label=method, capsize=2)
    axis.set_xticks(np.arange(len(roles)) + width * (len(summary) - 1) / 2, roles)
    axis.set_ylabel(f"% of these passages in the top {k}")
    axis.legend(fontsize=8)
    axis.set_title(f"What each reranker puts in its top {k}")
    figure.tight_layout()
    figure.savefig(out / "top_k_roles.png", dpi=120)
    plt.close(figure)


def run(config: DemoConfig) -> dict:
    out = pathlib.Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timing = {}
    stage = Stage("world: generate and tokenise", 1)
    train, dev, held_out, tokenizer, featurize = build_data(config)
    train_examples = [featurize(record) for record in train]
    dev_examples = {record.id: featurize(record) for record in dev}
    held_out_examples = {record.id: featurize(record) for record in held_out}
    eval_batch = stack_examples(list(held_out_examples.values()))
    stage.update()
    timing["world_s"] = stage.close()

    reader, reader_losses, timing["reader_s"] = train_reader_stage(config, train_examples,
                                                                   len(tokenizer))
    stage = Stage("reader: evaluate", 1)
    reader_em = reader_report(config, reader, held_out, eval_batch, tokenizer)
    stage.update()
    timing["reader_eval_s"] = stage.close()

    trainer = RankerTrainer(config, reader, tokenizer, train_examples, eval_batch)
    tunings = sum(len(grid_points(TUNING[METHODS[m]["name"]])) for m in config.methods)
    runs = len(config.ks) * len(config.methods) * config.seeds + config.tune * tunings
    stage = Stage("rerankers: tuning, training and evaluation", runs * config.ranker_steps)
    # Tuned once, at the first k: each tuning point compiles its own step, and the demo's
    # time budget holds one round of them; the other k reuse the chosen settings.
    tuning = tune(trainer, config, config.ks[0], dev, dev_examples, stage) if config.tune else {}
    chosen = {method: entry["chosen"] for method, entry in tuning.items()}
    by_k = {}
    for k in config.ks:
        runs = report_runs(trainer, config, k, chosen, held_out, held_out_examples, stage)
        by_k[str(k)] = {"ceiling_recall": ceiling_recall(held_out, k), "chosen": chosen,
                        "tuning": tuning if k == config.ks[0] else {},
                        "methods": summarize(runs), "runs": runs}
    timing["rerankers_s"] = stage.close()
    timing["total_s"] = time.perf_counter() - started

    results = {"config": dataclasses.asdict(config), "timing_s": timing,
               "reader": {"exact_match": reader_em, "final_loss": reader_losses[-1]},
               "answer_like_per_question": np.bincount(answer_like_counts(held_out)).tolist(),
               "by_k": by_k, "curve_steps": curve_steps(config), "provenance": provenance()}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    tables = markdown_tables(results)
    (out / "results.md").write_text(header(results) + tables + "\n![indirect recall]"
                                    "(indirect_recall.png)\n![top-k roles](top_k_roles.png)\n")
    first = by_k[str(config.ks[0])]
    plot(out, first["runs"], results["curve_steps"], first["methods"], config.ks[0])
    print(tables)
    print(f"wrote {out}/results.md, results.json, indirect_recall.png, top_k_roles.png "
          f"in {timing['total_s'] / 60:.1f} min")
    return results


def float_path() -> dict:
    """What this process's floating-point results depend on, beyond the code: the XLA flags
    and the CPUs it may use. The frozen reader's training ends in a different function on
    each path (docs/demo.md, "Why G-Rerank was unstable")."""
    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": len(os.sched_getaffinity(0))}


def float_path_cells(source: dict) -> list[str]:
    """A recorded :func:`float_path` (``source`` holds its keys) as the first two cells of a
    markdown table row: the XLA flags and the CPUs."""
    flags = f"`{source['xla_flags']}`" if source["xla_flags"] else "(none)"
    return [flags, str(source["cpus"])]


def provenance() -> dict:
    """Where a run's numbers came from: the git commit, the command, the library versions
    (``benchmarks.common.provenance``) and the :func:`float_path`."""
    from benchmarks.common import provenance as source

    return {**source(), **float_path()}


def header(results: dict) -> str:
    """results.md's title and the line naming the command and its time."""
    timing = results["timing_s"]
    config = DemoConfig(**{**results["config"], "ks": tuple(results["config"]["ks"]),
                           "methods": tuple(results["config"]["methods"])})
    command = " ".join(["python -m experiments.demo", *_argv(config)])
    return ("# gumbel-jax demo: G-Rerank vs. per-document signals on the synthetic "
            "multi-hop world\n\n"
            f"`{command}` — {timing['total_s'] / 60:.1f} min on this machine "
            f"({_source(results)}world {timing['world_s']:.0f} s, reader "
            f"{timing['reader_s']:.0f} s, rerankers {timing['rerankers_s']:.0f} s).\n\n")


def _source(results: dict) -> str:
    """"commit abc1234, 2 CPUs, XLA_FLAGS=...; " for a run that recorded them."""
    source = results.get("provenance")
    if not source:
        return ""
    flags = f", XLA_FLAGS={source['xla_flags']}" if source["xla_flags"] else ""
    cpus = f"{source['cpus']} CPU" + "s" * (source["cpus"] != 1)
    return f"commit {source['git_commit'][:7]}, {cpus}{flags}; "


def _argv(config: DemoConfig) -> list[str]:
    """The command-line flags that differ from the defaults."""
    defaults = DemoConfig()
    flags = []
    for field in dataclasses.fields(DemoConfig):
        value = getattr(config, field.name)
        if value == getattr(defaults, field.name):
            continue
        if field.name == "tune":
            flags.append("--tune" if value else "--no-tune")
        elif field.name == "methods":
            flags.append("--methods " + " ".join(f"'{v}'" for v in value))
        elif field.name == "ks":
            flags.append("--ks " + " ".join(map(str, value)))
        else:
            flags.append(f"--{field.name} {value}")
    return flags


def main(argv=None) -> int:
    config = parse_args(argv)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
