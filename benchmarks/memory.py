"""Benchmark 4: the largest batch whose G-Rerank step fits, for 100 passages x 256 tokens
(the NQ / TriviaQA setting) with FiD-Large and RankT5-base.

    python -m benchmarks.memory --size paper --batches 4 8 16 --out runs/bench/memory.json

Each batch size is compiled and run for two steps; an out-of-memory error marks it as not
fitting. Reports the compiled memory estimate and the measured peak for each.
"""

from __future__ import annotations

import argparse

from benchmarks import common, grerank_step
from gumbel_jax.training.config import AttentionKernel, choices


def run(args) -> dict:
    report = {"benchmark": "memory", "device": common.device_description(),
              "docs": args.docs, "doc_len": args.doc_len, "tries": {}}
    largest = None
    for batch in sorted(args.batches):
        step_args = grerank_step.parser().parse_args([
            "--size", args.size, "--batch", str(batch), "--docs", str(args.docs),
            "--doc_len", str(args.doc_len), "--answer_len", str(args.answer_len),
            "--steps", "1", "--warmup", "1", *(["--remat"] if args.remat else []),
            "--attention", args.attention])
        try:
            result = grerank_step.run(step_args)
        except Exception as error:
            text = str(error)
            if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
                raise
            report["tries"][batch] = {"fits": False, "error": text.splitlines()[0][:300]}
            break
        report["tries"][batch] = {"fits": True, "step_s": result["step_s_median"],
                                  "peak_memory_bytes": result["peak_memory_bytes"]}
        largest = batch
    report["largest_batch_that_fits"] = largest
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["paper", "tiny"], default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--docs", type=int, default=None)
    p.add_argument("--doc_len", type=int, default=None)
    p.add_argument("--answer_len", type=int, default=None)
    p.add_argument("--remat", action="store_true")
    p.add_argument("--attention", default="", choices=choices(AttentionKernel),
                   help="kernel of every attention layer ('' = einsum)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.batch = None  # memory tries every size in --batches
    common.fill_shape_defaults(args, paper_batch=1, paper_docs=100)
    common.write_report(args.out, run(args))


if __name__ == "__main__":
    main()
