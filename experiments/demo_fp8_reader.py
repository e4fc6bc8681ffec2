"""What FP8 costs the frozen reader (issue 17's FP8 lever): the demo's reader with its encoder's
matrix products in e4m3 (``ModelConfig.reader_fp8``, ``gumbel_jax.models.fp8``) against the
same reader unquantized, and G-Rerank trained on each.

    python -m experiments.demo_fp8_reader --out docs/demo/fp8_reader_bfloat16.json
    python -m experiments.demo_fp8_reader --dtype float32 --out docs/demo/fp8_reader_float32.json

The reader is trained as ``make demo`` trains it: it is the only trained reader this
repository can build offline (a paper-size reader's EM needs its checkpoint and data). From
that one reader, frozen as the trainer freezes one (``--dtype``, weights stored in it), with
its encoder unquantized and in e4m3, on the demo's held-out questions:

- its EM in every reading setting the demo reports (``experiments.demo.reader_report``);
- its gold answer's NLL by bridge mask weight (``demo_float_path.bridge_weight_nll``): what
  G-Rerank's loss sees of a bridge it ranks just outside the top k;
- G-Rerank's held-out bridge Recall@k per seed, trained on that reader (same seeds).

Writes one JSON (``--out``) with the git commit, the exact command and the float path;
``--table REPORT`` prints such a report as the markdown table docs/performance.md shows.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from experiments import demo
from experiments.demo_float_path import (
    FrozenReaderSetup,
    bridge_recall_per_seed,
    bridge_weight_nll,
    train_frozen_reader,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = demo.DemoConfig()
    parser.add_argument("--num_train", type=int, default=defaults.num_train)
    parser.add_argument("--num_eval", type=int, default=defaults.num_eval,
                        help="held-out questions")
    parser.add_argument("--reader_steps", type=int, default=defaults.reader_steps)
    parser.add_argument("--ranker_steps", type=int, default=defaults.ranker_steps)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--seeds", type=int, default=3, help="G-Rerank seeds per reader (0: "
                                                              "the reader's numbers only)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="the frozen reader's compute dtype, both ways (it trains in "
                             "float32, as in the demo; bfloat16 is the trainer's on "
                             "accelerators)")
    parser.add_argument("--out", help="the JSON to write (printed either way)")
    parser.add_argument("--table", metavar="REPORT",
                        help="print this report as a markdown table instead of running")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_eval, args.reader_steps, args.ranker_steps,
           args.batch_size, args.k) < 1 or args.seeds < 0 or args.tau <= 0:
        parser.error("sizes, steps and --k must be >= 1, --seeds >= 0, --tau > 0")
    return args


def frozen_copy(reader, dtype: str, *, fp8: bool):
    """A copy of the trained ``reader`` as the trainer freezes one: computing in ``dtype``
    with its weight matrices stored in it (``factory.store_frozen_weights_in_compute_dtype``)
    and, with ``fp8``, its encoder's products in e4m3 (``models.fp8.quantize_linears``)."""
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    from gumbel_jax.models import FiDReader
    from gumbel_jax.models.fp8 import quantize_linears
    from gumbel_jax.training.factory import store_frozen_weights_in_compute_dtype

    config = dataclasses.replace(reader.config, dtype=jnp.dtype(dtype))
    copy = FiDReader.random(config, method=reader.method, frozen=True)
    nnx.update(copy, nnx.state(reader, nnx.Param))
    store_frozen_weights_in_compute_dtype(copy, config.dtype)
    if fp8:
        quantize_linears(copy.t5.encoder)
    return copy


def with_reader(setup: FrozenReaderSetup, config: demo.DemoConfig, reader
                ) -> FrozenReaderSetup:
    """``setup`` reading with ``reader``, and a reranker trainer on it."""
    trainer = demo.RankerTrainer(config, reader, setup.trainer.tokenizer,
                                 setup.trainer.train_examples, setup.eval_batch)
    return FrozenReaderSetup(trainer, reader, setup.reader_losses, setup.held_out,
                             setup.held_out_examples, setup.eval_batch)


def measure(setup: FrozenReaderSetup, config: demo.DemoConfig, args) -> dict:
    """The reader's EM and NLL, and G-Rerank's bridge recall per seed, on ``setup``."""
    roles = np.array([record.metadata["roles"] for record in setup.held_out])
    em = demo.reader_report(config, setup.reader, setup.held_out, setup.eval_batch,
                            setup.trainer.tokenizer)
    nll = bridge_weight_nll(setup.reader, setup.eval_batch, roles)
    recall = bridge_recall_per_seed(setup, "G-Rerank", {"tau": args.tau},
                                    seeds=args.seeds, k=args.k) if args.seeds else []
    return {"reader_exact_match": {name: 100 * value for name, value in em.items()},
            "gold_nll_by_bridge_weight": {f"{w:g}": value for w, value in nll.items()},
            f"g_rerank_bridge_recall@{args.k}_per_seed": [100 * r for r in recall]}


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    config = demo.DemoConfig(num_train=args.num_train, num_eval=args.num_eval, num_dev=8,
                             reader_steps=args.reader_steps, ranker_steps=args.ranker_steps,
                             batch_size=args.batch_size, seeds=max(args.seeds, 1),
                             ks=(args.k,), tune=False, methods=("G-Rerank",))
    trained = train_frozen_reader(config)
    plain = with_reader(trained, config, frozen_copy(trained.reader, args.dtype, fp8=False))
    fp8 = with_reader(trained, config, frozen_copy(trained.reader, args.dtype, fp8=True))
    results = {"float": measure(plain, config, args), "fp8_encoder": measure(fp8, config, args)}
    em_change = {name: results["fp8_encoder"]["reader_exact_match"][name] - value
                 for name, value in results["float"]["reader_exact_match"].items()}
    return {**demo.float_path(), "settings": vars(args),
            "reader": {"final_loss": float(np.mean(trained.reader_losses[-50:])),
                       "encoder_layers": trained.reader.config.num_layers,
                       "d_model": trained.reader.config.d_model, "dtype": args.dtype},
            **results,
            "exact_match_change": em_change,
            "largest_exact_match_change": max(em_change.values(), key=abs),
            "seconds": time.perf_counter() - start}


def markdown_table(report: dict) -> str:
    """A report of :func:`run` as one markdown table: each measurement with the encoder
    unquantized, in e4m3, and the change."""
    k = report["settings"]["k"]
    recall = f"g_rerank_bridge_recall@{k}_per_seed"
    rows = [(f"EM, {name}", *(report[way]["reader_exact_match"][name]
                              for way in ("float", "fp8_encoder")), ".1f")
            for name in report["float"]["reader_exact_match"]]
    rows += [(f"gold answer NLL, bridge at mask weight {w}",
              *(report[way]["gold_nll_by_bridge_weight"][w] for way in ("float", "fp8_encoder")),
              ".4f") for w in report["float"]["gold_nll_by_bridge_weight"]]
    dtype = report["settings"].get("dtype", "float32")  # reports before --dtype: float32
    lines = [f"| measured (held-out questions), {dtype} | encoder unquantized | encoder in "
             "e4m3 | change |", "|---|---|---|---|"]
    lines += [f"| {name} | {plain:{form}} | {fp8:{form}} | {fp8 - plain:+{form}} |"
              for name, plain, fp8, form in rows]
    if report["float"][recall]:
        cells = [" / ".join(f"{r:.1f}" for r in report[way][recall])
                 for way in ("float", "fp8_encoder")]
        lines.append(f"| G-Rerank bridge Recall@{k} per seed (tau = "
                     f"{report['settings']['tau']:g}) | {cells[0]} | {cells[1]} | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from benchmarks.common import write_report

    args = parse_args(argv)
    if args.table:
        try:
            report = json.loads(pathlib.Path(args.table).read_text())
            table = markdown_table(report)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"error: {args.table}: not a demo_fp8_reader report "
                  f"({type(error).__name__}: {error})", file=sys.stderr)
            return 2
        print(table, end="")
        return 0
    write_report(args.out, run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
