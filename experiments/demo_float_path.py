"""Does the demo's G-Rerank keep the bridge on this machine's float path, and how much does the
frozen reader's loss rise when the bridge is faint? (Issue 14; docs/demo.md, "Why G-Rerank
was unstable".)

The float path is whatever this process runs under: ``XLA_FLAGS`` (fast math, the number of
host devices, the backend optimisation level), the CPUs it may use (recorded). Run it under
several::

    python -m experiments.demo_float_path --out runs/float_path/default.json
    XLA_FLAGS=--xla_cpu_enable_fast_math=true \\
        python -m experiments.demo_float_path --out runs/float_path/fast_math.json

It trains the demo's reader at the demo's size (``experiments.demo``'s defaults), then:

- the reader's mean per-token NLL of the gold answer on the held-out questions when it reads
  every answer-like passage at mask weight 1 and the bridge at weight w (each of
  ``BRIDGE_WEIGHTS``), every other candidate masked out: the relaxed top-k mask gives a
  passage just outside the top k a weight between 0 and 1, so the rise from w = 1 to small w
  is what G-Rerank's training loss sees of a bridge it ranks just below the answer-like
  passages;
- G-Rerank's held-out bridge Recall@k for each ``--taus`` x ``--relaxations`` setting and
  each seed, ``--ranker_steps`` steps as in the demo.

Writes one JSON (``--out``) with the XLA flags, the git commit and the exact command.
``python -m experiments.demo_float_path --table A.json B.json ...`` prints such reports as
the markdown table docs/demo.md shows; ``--demos runs/a/results.json runs/b/results.json``
prints whole ``make demo`` runs made on different float paths side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

from experiments import demo
from gumbel_jax.data.pipeline import stack_examples

BRIDGE_WEIGHTS = (0.0, 0.1, 0.3, 1.0)


def bridge_weight_nll(reader, batch, roles: np.ndarray, weights=BRIDGE_WEIGHTS) -> dict:
    """``{w: mean per-token NLL of the gold answer}`` when the reader reads the answer-like
    passages of each question at mask weight 1 and its bridge at weight ``w``.

    Args:
      reader: a frozen reader.
      batch: the featurised held-out questions (``Batch`` fields).
      roles: ``[questions, docs]`` the candidates' roles (``gumbel_jax.data.synthetic.ROLES``).
      weights: the bridge weights.
    """
    import jax.numpy as jnp

    from gumbel_jax import ops
    from gumbel_jax.data.batch import Batch
    from gumbel_jax.training.reader import reader_loss

    batch = Batch.of({name: jnp.asarray(value) for name, value in batch.items()})
    answer_like = jnp.asarray((roles == "answer") | (roles == "distractor"))
    bridge = jnp.asarray(roles == "bridge")
    return {weight: float(reader_loss(reader, batch, ops.mask_to_log_mask(
        jnp.where(bridge, weight, answer_like.astype(jnp.float32)))))
        for weight in weights}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = demo.DemoConfig()
    parser.add_argument("--num_train", type=int, default=defaults.num_train)
    parser.add_argument("--num_eval", type=int, default=64, help="held-out questions")
    parser.add_argument("--reader_steps", type=int, default=defaults.reader_steps)
    parser.add_argument("--ranker_steps", type=int, default=defaults.ranker_steps)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--taus", type=float, nargs="+", default=[1.0])
    parser.add_argument("--relaxations", nargs="+", default=["l2x"],
                        choices=["l2x", "subset", "no_noise", "straight_through"])
    parser.add_argument("--out", help="the JSON to write (printed either way)")
    tables = parser.add_mutually_exclusive_group()
    tables.add_argument("--table", nargs="+", metavar="REPORT",
                        help="print these reports as one markdown table instead of running")
    tables.add_argument("--demos", nargs="+", metavar="RESULTS_JSON",
                        help="print these `experiments.demo` runs (their results.json) side "
                             "by side, bridge Recall@k / EM per method at --k, instead of "
                             "running")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_eval, args.reader_steps, args.ranker_steps, args.seeds,
           args.batch_size, args.k) < 1:
        parser.error("sizes, steps, --seeds and --k must be >= 1")
    return args


@dataclasses.dataclass(frozen=True)
class FrozenReaderSetup:
    """The demo's data and its trained, frozen reader, ready to train rerankers on."""
    trainer: demo.RankerTrainer
    reader: object
    reader_losses: list[float]
    held_out: list  # the held-out Records
    held_out_examples: dict  # record id -> featurised example
    eval_batch: dict  # the held-out examples stacked


def train_frozen_reader(config: demo.DemoConfig) -> FrozenReaderSetup:
    """Build ``config``'s world and train its reader, as ``make demo`` does."""
    train, _, held_out, tokenizer, featurize = demo.build_data(config)
    train_examples = [featurize(record) for record in train]
    held_out_examples = {record.id: featurize(record) for record in held_out}
    eval_batch = stack_examples(list(held_out_examples.values()))
    reader, losses, _ = demo.train_reader_stage(config, train_examples, len(tokenizer))
    trainer = demo.RankerTrainer(config, reader, tokenizer, train_examples, eval_batch)
    return FrozenReaderSetup(trainer, reader, losses, held_out, held_out_examples, eval_batch)


def bridge_recall_per_seed(setup: FrozenReaderSetup, method: str, point: dict, *, seeds: int,
                           k: int) -> list[float]:
    """Held-out bridge Recall@k (a fraction) of ``method`` at ``point``, one per seed."""
    recalls = []
    for seed in range(seeds):
        ranker, *_ = setup.trainer.train(demo.objective_for(method, k, point), seed, curve=False)
        metrics, _ = setup.trainer.evaluate(ranker, setup.held_out, setup.held_out_examples, k)
        recalls.append(float(metrics[f"indirect_recall@{k}"]))
    return recalls


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    config = demo.DemoConfig(num_train=args.num_train, num_eval=args.num_eval, num_dev=8,
                             reader_steps=args.reader_steps, ranker_steps=args.ranker_steps,
                             batch_size=args.batch_size, seeds=args.seeds, ks=(args.k,),
                             tune=False, methods=("G-Rerank",))
    setup = train_frozen_reader(config)
    roles = np.array([record.metadata["roles"] for record in setup.held_out])
    nll = bridge_weight_nll(setup.reader, setup.eval_batch, roles)
    recall = {f"{relaxation}, tau={tau:g}": [
        100 * r for r in bridge_recall_per_seed(setup, "G-Rerank",
                                                {"tau": tau, "relaxation": relaxation},
                                                seeds=args.seeds, k=args.k)]
        for relaxation in args.relaxations for tau in args.taus}
    tail = setup.reader_losses[-50:]
    return {**demo.float_path(), "settings": vars(args),
            "reader_final_loss": float(np.mean(tail)),
            "gold_nll_by_bridge_weight": {f"{w:g}": value for w, value in nll.items()},
            "nll_rise_bridge_1_to_0.1": nll[0.1] - nll[1.0],
            f"g_rerank_bridge_recall@{args.k}_per_seed": recall,
            "seconds": time.perf_counter() - start}


def _read_report(path: str) -> dict:
    """A report this module wrote; ValueError naming what is missing otherwise."""
    report = json.loads(pathlib.Path(path).read_text())  # JSONDecodeError is a ValueError
    needed = ("xla_flags", "cpus", "settings", "gold_nll_by_bridge_weight",
              "nll_rise_bridge_1_to_0.1")
    missing = [name for name in needed if name not in report]
    if missing or not any(name.startswith("g_rerank_bridge") for name in report):
        raise ValueError(f"not a demo_float_path report (missing {missing or 'the recall'})")
    return report


def _read_demo_run(path: str, k: int) -> dict:
    """A demo run's results.json with its provenance and ``k``; ValueError otherwise."""
    results = json.loads(pathlib.Path(path).read_text())
    if not isinstance(results, dict) or "by_k" not in results or "config" not in results:
        raise ValueError("not an experiments.demo results.json")
    if "provenance" not in results:
        raise ValueError("no provenance recorded (a run from before the demo recorded it)")
    if str(k) not in results["by_k"]:
        raise ValueError(f"no k = {k} in this run (it has {sorted(results['by_k'])}); "
                         "pass --k")
    return results


def markdown_table(reports: list[dict]) -> str:
    """The reports (JSONs this module wrote) as one markdown table, one row per report, in
    the order given; docs/demo.md shows it (``--table``). A column per G-Rerank setting any
    report measured; "—" where a report did not run it."""
    weights = list(reports[0]["gold_nll_by_bridge_weight"])
    key = next(name for name in reports[0] if name.startswith("g_rerank_bridge"))
    settings = list(dict.fromkeys(setting for report in reports for setting in report[key]))
    k = key.split("@")[1].split("_")[0]
    header = (["XLA_FLAGS", "CPUs", "reader steps"] + [f"NLL, bridge w = {w}" for w in weights]
              + ["rise, w = 1 to 0.1"] + [f"bridge R@{k} per seed, {s}" for s in settings])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for report in reports:
        nll = report["gold_nll_by_bridge_weight"]
        recall = report[key]
        cells = ([*demo.float_path_cells(report), str(report["settings"]["reader_steps"])]
                 + [f"{nll[w]:.3f}" for w in weights]
                 + [f"{report['nll_rise_bridge_1_to_0.1']:.3f}"]
                 + [" / ".join(f"{r:.1f}" for r in recall[s]) if s in recall else "—"
                    for s in settings])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks.common import write_report

    args = parse_args(argv)
    if args.table or args.demos:
        reports = []
        for path in args.table or args.demos:
            try:
                reports.append(_read_report(path) if args.table
                               else _read_demo_run(path, args.k))
            except (OSError, ValueError) as error:
                print(f"error: {path}: {error}", file=sys.stderr)
                return 2
        print(markdown_table(reports) if args.table else demo.float_path_table(reports, args.k),
              end="")
        return 0
    write_report(args.out, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
