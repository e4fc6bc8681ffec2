"""The main job: the paper's central claim on the synthetic multi-hop world, offline, on CPU.

    make demo                                   # = python -m experiments.demo
    python -m experiments.demo --seeds 1 --ranker_steps 100 --out runs/quick

Stages (``gumbel_jax.data.synthetic`` explains the world):
  1. generate the world: training and held-out questions, each with 10 candidates;
  2. train a tiny FiD reader on the gold passages among random distractors, then freeze it;
     its EM with the gold passages, all candidates, random ones and without the bridge
     shows how much it depends on retrieval;
  3. train one reranker per method (G-Rerank, its no-noise ablation, EMDR, PDist, LOOP,
     ADist) and seed from the same initialisation, on the same reader, data and budget,
     with the trainer's own step (``gumbel_jax.training.step``) and the objectives' default
     settings (k = 5, tau = 0.5, kappa = 1; theta = T = 0.01): only the sizes are small;
  4. evaluate on held-out questions: Recall@5 / NDCG@5 on gold passages, EM / F1 of the
     reader on the reranker's top 5, Recall@5 / MRR / NDCG@5 on indirect (bridge) passages,
     and which passage roles land in the top 5.

Writes ``results.md``, ``results.json``, ``indirect_recall.png`` and ``top_k_roles.png`` to
``--out`` (default ``runs/demo``) and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    seeds: int = 3
    num_train: int = 3000
    num_eval: int = 256
    num_people: int = 60
    num_cities: int = 40
    num_countries: int = 5
    k: int = 5
    # models: tiny T5s (the reader reads, so it gets the second decoder layer)
    d_model: int = 32
    num_heads: int = 2
    reader_steps: int = 2500
    reader_learning_rate: float = 3e-3
    reader_slots: int = 7  # passages per question while the reader trains
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
        else:
            parser.add_argument(f"--{field.name}", type=type(value), default=value,
                                help=f"default: {value}")
    args = vars(parser.parse_args(argv))
    args["methods"] = tuple(args["methods"])
    config = DemoConfig(**args)
    if config.seeds < 1 or config.reader_steps < 1 or config.ranker_steps < 1:
        parser.error("--seeds, --reader_steps and --ranker_steps must be >= 1")
    if config.num_eval < 1 or config.batch_size < 1 or config.num_train < config.batch_size:
        parser.error("--num_train must be >= --batch_size >= 1 and --num_eval >= 1")
    if not 1 <= config.k <= 10 or not 2 <= config.reader_slots <= 10:
        parser.error("--k must be in [1, 10] and --reader_slots in [2, 10] (10 candidates)")
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
                       num_born_distractors=4)


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
    tokenizer = word_level_tokenizer(train + held_out)
    # question + title + passage fit in 24 tokens; answers are one city + EOS
    featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(10, 24, 24, 2))
    return train, held_out, tokenizer, featurize


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
    """The frozen reader's EM when it reads (a) both gold passages plus k - 2 random others,
    (b) all candidates, (c) k random candidates, (d) k candidates without the bridge."""
    import jax.numpy as jnp

    from gumbel_jax.training.reader import reader_exact_match

    rng = np.random.default_rng(0)
    valid, gold, indirect = eval_batch["doc_valid"], eval_batch["gold"], eval_batch["indirect"]

    def pick(count, always=None, never=None):
        noise = rng.random(valid.shape) + np.where(valid, 0.0, 9.0)
        if always is not None:
            noise = np.where(always, -1.0, noise)
        if never is not None:
            noise = np.where(never, 9.0, noise)
        return np.argsort(np.argsort(noise, axis=-1), axis=-1) < count

    k = config.k
    settings = {
        "gold passages + random others": pick(k, always=gold),
        "all candidates": valid,
        "random candidates": pick(k),
        "answer passage + random others, no bridge": pick(k, always=gold & ~indirect,
                                                          never=indirect),
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


def train_rankers_stage(config: DemoConfig, reader, train_examples, eval_batch, held_out,
                        held_out_examples: dict, tokenizer):
    """Every method x seed: train, with held-out indirect recall every ``eval_every`` steps,
    then the full evaluation. Returns per-method lists (one entry per seed)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gumbel_jax.models import RankT5
    from gumbel_jax.training import ObjectiveConfig, OptimizerConfig, make_train_step
    from gumbel_jax.training.evaluation import evaluate
    from gumbel_jax.training.hooks import Hook
    from gumbel_jax.training.loop import NonFiniteLossError, RankerState, ranker_step, run_steps
    from gumbel_jax.training.step import make_optimizer

    vocab = len(tokenizer)
    # RankT5 shape: an encoder and one decoder step; its score is a logit of a token that
    # the word-level vocabulary never produces as an answer ("<unk>").
    ranker_config = tiny_t5(config, vocab, encoder_layers=1, decoder_layers=1,
                            feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    new_ranker = lambda seed: RankT5.random(ranker_config, seed=100 + seed,
                                            score_token_id=tokenizer.unk_token_id)
    ranker_graph, _ = nnx.split(new_ranker(0))
    reader_graph, reader_state = nnx.split(reader)
    device_eval = {key: jnp.asarray(value) for key, value in eval_batch.items()}

    @jax.jit
    def eval_scores(params, batch):
        return nnx.merge(ranker_graph, params)(batch["ranker_ids"], batch["ranker_mask"])

    featurized = lambda record: held_out_examples[record.id]  # featurised once, in run()
    checkpoints = list(range(0, config.ranker_steps + 1, config.eval_every))
    if checkpoints[-1] != config.ranker_steps:
        checkpoints.append(config.ranker_steps)
    runs = {method: [] for method in config.methods}
    stage = Stage("rerankers: training and evaluation",
                  len(config.methods) * config.seeds * config.ranker_steps)
    for method in config.methods:
        objective = ObjectiveConfig(k=config.k, **METHODS[method])
        tx = make_optimizer(OptimizerConfig(learning_rate=config.ranker_learning_rate),
                            config.ranker_steps)
        step_fn = ranker_step(make_train_step(ranker_graph, reader_graph, tx, objective),
                              reader_state)
        for seed in range(config.seeds):
            ranker = new_ranker(seed)  # the same initialisation for every method
            _, params = nnx.split(ranker)
            curve, losses = [], []

            def curve_point(step, state, metrics, curve=curve):
                scores = np.asarray(eval_scores(state.params, device_eval))
                curve.append(indirect_recall(scores, eval_batch, config.k))

            def on_log(rows, seconds, losses=losses, method=method, seed=seed):
                losses.extend(row["loss"] for row in rows)
                stage.update(len(rows), method=method, seed=seed, loss=f"{losses[-1]:.3f}")

            started = time.perf_counter()
            curve_point(0, RankerState(params, None), {})
            data = ({key: jnp.asarray(value) for key, value in batch.items()}
                    for batch in batches(train_examples, config.batch_size, seed=seed))
            try:
                state, _ = run_steps(step_fn, RankerState(params, tx.init(params)), data,
                                     start=0, end=config.ranker_steps,
                                     base_key=jax.random.key(seed),
                                     log_every=config.eval_every, on_log=on_log,
                                     hooks=[Hook(curve_point, every=config.eval_every,
                                                 at_end=True)])
            except NonFiniteLossError as error:
                raise NonFiniteLossError(f"{method}, seed {seed}: {error}") from None
            train_seconds = time.perf_counter() - started
            nnx.update(ranker, state.params)
            result = evaluate(ranker, reader, held_out, featurized, k=config.k,
                              batch_size=128, tokenizer=tokenizer, max_answer_length=2)
            runs[method].append({"seed": seed, "metrics": result["metrics"],
                                 "roles": top_k_roles(result["predictions"], held_out,
                                                      config.k),
                                 "curve": curve, "loss": losses,
                                 "train_seconds": train_seconds})
    return runs, checkpoints, stage.close()


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


def markdown_tables(summary: dict, reader_em: dict, k: int, seeds: int) -> str:
    lines = [f"Held-out questions; mean ± std over {seeds} seed(s), in %.", "",
             "**Table 1 — gold passages and answers** (the paper's layout)", "",
             f"| Method | Recall@{k} | NDCG@{k} | EM | F1 |", "|---|---|---|---|---|"]
    for method, stats in summary.items():
        lines.append(f"| {method} | {_cell(stats[f'recall@{k}'])} | "
                     f"{_cell(stats[f'ndcg@{k}'])} | {_cell(stats['em'])} | "
                     f"{_cell(stats['f1'])} |")
    lines += ["", "**Table 2 — indirect (bridge) passages**", "",
              f"| Method | Recall@{k} | MRR | NDCG@{k} |", "|---|---|---|---|"]
    for method, stats in summary.items():
        lines.append(f"| {method} | {_cell(stats[f'indirect_recall@{k}'])} | "
                     f"{_cell(stats['indirect_mrr'])} | {_cell(stats[f'indirect_ndcg@{k}'])} |")
    roles = list(next(iter(summary.values()))["roles_in_top_k"])
    lines += ["", f"**Table 3 — how often each passage role lands in the top {k}**", "",
              "| Method | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for method, stats in summary.items():
        lines.append(f"| {method} | " + " | ".join(
            _cell(stats["roles_in_top_k"][role]) for role in roles) + " |")
    lines += ["", "**The frozen reader** (EM, %, reading these candidates)", "",
              "| Reader reads | EM |", "|---|---|"]
    lines += [f"| {name} | {100 * em:.1f} |" for name, em in reader_em.items()]
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
    axis.set_title("Which training signal finds the bridge passage?")
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
    train, held_out, tokenizer, featurize = build_data(config)
    train_examples = [featurize(record) for record in train]
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

    runs, checkpoints, timing["rerankers_s"] = train_rankers_stage(
        config, reader, train_examples, eval_batch, held_out, held_out_examples, tokenizer)
    summary = summarize(runs)
    timing["total_s"] = time.perf_counter() - started

    tables = markdown_tables(summary, reader_em, config.k, config.seeds)
    command = " ".join(["python -m experiments.demo", *_argv(config)])
    header = ("# gumbel-jax demo: G-Rerank vs. per-document signals on the synthetic "
              "multi-hop world\n\n"
              f"`{command}` — {timing['total_s'] / 60:.1f} min on this machine "
              f"(world {timing['world_s']:.0f} s, reader {timing['reader_s']:.0f} s, "
              f"rerankers {timing['rerankers_s']:.0f} s).\n\n")
    (out / "results.md").write_text(header + tables + "\n![indirect recall]"
                                    "(indirect_recall.png)\n![top-k roles](top_k_roles.png)\n")
    results = {"config": dataclasses.asdict(config), "timing_s": timing,
               "reader": {"exact_match": reader_em, "final_loss": reader_losses[-1]},
               "methods": summary, "curve_steps": checkpoints,
               "runs": runs}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(out, runs, checkpoints, summary, config.k)
    print(tables)
    print(f"wrote {out}/results.md, results.json, indirect_recall.png, top_k_roles.png "
          f"in {timing['total_s'] / 60:.1f} min")
    return results


def _argv(config: DemoConfig) -> list[str]:
    """The command-line flags that differ from the defaults."""
    defaults = DemoConfig()
    flags = []
    for field in dataclasses.fields(DemoConfig):
        value = getattr(config, field.name)
        if value != getattr(defaults, field.name):
            text = " ".join(f"'{v}'" for v in value) if field.name == "methods" else value
            flags.append(f"--{field.name} {text}")
    return flags


def main(argv=None) -> int:
    config = parse_args(argv)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
