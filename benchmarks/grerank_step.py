"""Benchmark 1: one G-Rerank training step (frozen FiD reader, trained RankT5 reranker).

    python -m benchmarks.grerank_step --size paper --batch 32 --out runs/bench/step.json
    python -m benchmarks.grerank_step --size tiny              # CPU smoke run
    python -m benchmarks.grerank_step --size paper --objective loop   # a baseline's step

Reports step time, questions/s, peak device memory, FLOPs the gradient needs and model-FLOPs
utilisation against the device's measured bf16 matrix-product throughput. With
``--objective`` a baseline (EMDR, PDist, LOOP, ADist) is timed on the same models and batch;
its FLOPs are not counted (step time, throughput and memory only). Every objective runs the
trainer's own jitted step (``gumbel_jax.training.step.make_train_step``).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import common
from gumbel_jax.models import FiDReader, RankT5, T5EncoderDecoder
from gumbel_jax.training.config import ObjectiveConfig
from gumbel_jax.training.step import make_train_step


def build(args):
    dtype = jnp.dtype(args.dtype)
    overrides = dict(dtype=dtype, attention_implementation=args.self_attention)
    if args.size == "paper":
        reader_cfg = common.t5_large_reader(**overrides)
        ranker_cfg = common.rankt5_base_reranker(remat=args.remat, **overrides)
        score_token = common.RANKT5_SCORE_TOKEN
    else:
        reader_cfg = common.tiny_reader(**overrides)
        ranker_cfg = common.tiny_reranker(remat=args.remat, **overrides)
        score_token = 7
    reader = FiDReader(T5EncoderDecoder(reader_cfg, rngs=nnx.Rngs(0)), method=args.dma,
                       implementation=args.cross_attention)
    # The reader is frozen: keep its weights in the compute dtype (no master copy needed).
    reader_state = jax.tree.map(lambda x: x.astype(dtype), nnx.state(reader))
    nnx.update(reader, reader_state)
    ranker = RankT5(T5EncoderDecoder(ranker_cfg, rngs=nnx.Rngs(1)), score_token_id=score_token)
    return reader, ranker, reader_cfg, ranker_cfg


def run(args) -> dict:
    reader, ranker, reader_cfg, ranker_cfg = build(args)
    shape = common.Shape(args.batch, args.docs, args.doc_len, args.answer_len, args.k)
    batch = common.synthetic_batch(np.random.default_rng(0), shape, reader_cfg.vocab_size)
    batch = jax.device_put(batch)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
    ranker_graph, ranker_params = nnx.split(ranker)
    opt_state = tx.init(ranker_params)
    # The trainer's own step (training.step): the objective's loss, gradient, optimizer update.
    objective = ObjectiveConfig(name=args.objective, k=args.k, tau=0.5, kappa=1.0,
                                num_samples=args.num_samples)
    reader_graph, reader_state = nnx.split(reader)
    step = make_train_step(ranker_graph, reader_graph, tx, objective)
    state = {"params": ranker_params, "opt": opt_state, "step": 0}

    def one_step():
        key = jax.random.fold_in(jax.random.key(0), state["step"])
        state["params"], state["opt"], out = step(state["params"], state["opt"], reader_state,
                                                  batch, key)
        state["step"] += 1
        return out["loss"]

    timing = common.time_calls(one_step, warmup=args.warmup, steps=args.steps)
    loss = float(one_step())
    report = {
        "benchmark": "grerank_step", "size": args.size, "shape": vars(shape),
        "options": {k: getattr(args, k) for k in ("objective", "dtype", "dma",
                                                  "cross_attention", "self_attention",
                                                  "remat", "num_samples")},
        "device": common.device_description(), **timing,
        "questions_per_s": args.batch / timing["step_s_median"],
        "peak_memory_bytes": common.peak_memory_bytes(), "final_loss": loss,
    }
    if args.objective == "g_rerank":
        flops = common.grerank_step_flops(reader_cfg, ranker_cfg, shape,
                                          num_samples=args.num_samples)
        report["flops_per_step"] = flops
        report["achieved_tflops"] = flops["total"] / timing["step_s_median"] / 1e12
    if args.measure_peak and "achieved_tflops" in report:
        peak = common.measured_matmul_peak_tflops()
        report["measured_bf16_peak_tflops"] = peak
        report["model_flops_utilisation"] = report["achieved_tflops"] / peak
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_shape_arguments(p)
    p.add_argument("--objective", default="g_rerank",
                   choices=["g_rerank", "emdr", "pdist", "loop", "adist"])
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--dma", choices=["bias", "blockwise"], default="bias")
    p.add_argument("--cross_attention", choices=["xla", "cudnn"], default=None)
    p.add_argument("--self_attention", choices=["xla", "cudnn"], default=None)
    p.add_argument("--remat", action="store_true", help="rematerialise reranker layers")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--measure_peak", action="store_true")
    p.add_argument("--out", default=None, help="JSON report path")
    return p


def main(argv=None):
    args = common.fill_shape_defaults(parser().parse_args(argv), paper_batch=32)
    common.write_report(args.out, run(args))


if __name__ == "__main__":
    main()
