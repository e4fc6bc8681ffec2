"""Benchmark 1: one G-Rerank training step (frozen FiD reader, trained RankT5 reranker).

    python -m benchmarks.grerank_step --size paper --batch 32 --out runs/bench/step.json
    python -m benchmarks.grerank_step --size tiny              # CPU smoke run
    python -m benchmarks.grerank_step --size paper --objective loop   # a baseline's step

Reports step time (median, min, max of ``--steps`` steps after warm-up, and the mean step of
a loop without per-step host sync), questions/s, real (non-padding) passage tokens/s and
passages/s, peak device memory, FLOPs the gradient needs and model-FLOPs utilisation against
the device's datasheet bf16 peak (and its measured matmul rate with ``--measure_peak``);
``--profile DIR`` adds the top device ops by time from a jax.profiler trace. With
``--objective`` a baseline (EMDR, PDist, LOOP, ADist) is timed on the same models and batch;
its FLOPs are not counted (step time, throughput and memory only). Every objective runs the
trainer's own jitted step (``gumbel_jax.training.step.make_train_step``).
"""

from __future__ import annotations

import argparse
import re

import jax
import numpy as np
from flax import nnx

from benchmarks import common
from gumbel_jax.training import packing
from gumbel_jax.training.config import OBJECTIVES, ObjectiveConfig, OptimizerConfig
from gumbel_jax.training.factory import build_models, model_architectures
from gumbel_jax.training.step import make_optimizer, make_train_step


def model_config(args):
    """The benchmark's models as the trainer's ``ModelConfig`` (see ``common.model_config``)."""
    return common.model_config(args.size, **common.model_settings(args),
                               reader_fp8=args.reader_fp8)


def make_step(args, *, abstract: bool = False):
    """(jitted step, (params, opt_state, reader_state, batch), architectures): the trainer's
    own step (``training.step.make_train_step`` with ``make_optimizer``) on models from the
    trainer's factory. ``abstract``: shapes only (for lowering and FLOP counts on any
    machine)."""
    config = model_config(args)
    reader, ranker = build_models(config, vocab_size=common.TINY_VOCAB, seed=0,
                                  abstract=abstract)
    # The issue-17 levers' "before", switchable on the trainer's own models.
    if getattr(args, "no_fold", False) and hasattr(ranker, "fold_cross_attention"):
        ranker.fold_cross_attention = False  # the general decoder
    if getattr(args, "dense_bias", False) and hasattr(ranker, "right_padded"):
        ranker.right_padded = False  # a [rows, heads, len, len] encoder bias
    shape = common.Shape(args.batch, args.docs, args.doc_len, args.answer_len, args.k)
    batch = common.synthetic_batch(np.random.default_rng(0), shape, common.TINY_VOCAB
                                   if config.reader == "tiny" else 32128)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5), num_steps=1000)
    ranker_graph, ranker_params = nnx.split(ranker)
    if getattr(args, "reranker_packing_bucket", 0.0):
        # What the trainer does per batch (training.packing): the step compiled for this
        # batch's capacity bucket.
        capacity = packing.host_capacity(batch, args.reranker_packing_bucket)
        ranker_graph = packing.packed_graph(ranker, capacity)
    reader_graph, reader_state = nnx.split(reader)
    opt_state = (jax.eval_shape if abstract else lambda f, x: f(x))(tx.init, ranker_params)
    objective = ObjectiveConfig(name=args.objective, k=args.k, tau=0.5, kappa=1.0,
                                num_samples=args.num_samples)
    step = make_train_step(ranker_graph, reader_graph, tx, objective)
    if abstract:
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    else:
        batch = jax.device_put(batch)
    return step, (ranker_params, opt_state, reader_state, batch), model_architectures(
        config, common.TINY_VOCAB)


def run(args) -> dict:
    step, (params, opt_state, reader_state, batch), (reader_cfg, ranker_cfg) = make_step(args)
    shape = common.Shape(args.batch, args.docs, args.doc_len, args.answer_len, args.k)
    state = {"params": params, "opt": opt_state, "step": 0}
    options = {k: getattr(args, k) for k in ("objective", "dtype", "dma", "attention", "remat",
                                             "num_samples", "no_fold", "dense_bias",
                                             "token_capacity", "reader_fp8",
                                             "reranker_packing_bucket")}
    products = None
    if args.count_kernels and args.reader_fp8:
        # XLA forms FP8 GEMMs while it optimises, so they are counted in the compiled
        # program, first (with JAX_COMPILATION_CACHE_DIR set, the timed step's own compile
        # is then a cache hit), and written at once: a timing cut short keeps the count. A
        # count of 0 means the products ran as dequantized bf16 dots: no FP8 speed.
        products = fp8_products(step.lower(params, opt_state, reader_state, batch,
                                           jax.random.key(0)).compile().as_text())
        common.write_report(args.out, {"benchmark": "grerank_step", "options": options,
                                       "fp8_products": products,
                                       "incomplete": "written before the timing"}, echo=False)

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
        "options": options,
        "device": common.device_description(), **timing,
        "questions_per_s": args.batch / timing["step_s_median"],
        **common.throughput(common.real_work(jax.device_get(batch)),
                            timing["step_s_median"]),
        "peak_memory_bytes": common.peak_memory_bytes(), "final_loss": loss,
    }
    if args.reranker_packing_bucket:
        report["reranker_capacity"] = packing.host_capacity(jax.device_get(batch),
                                                            args.reranker_packing_bucket)
    if args.profile:
        from benchmarks import trace_summary

        try:
            report["profile"] = trace_summary.profile_summary(one_step, args.profile,
                                                              calls=args.profile_steps)
        except Exception as error:  # noqa: BLE001 - the timing above must still be reported
            report["profile"] = {"error": f"{type(error).__name__}: {error}"[:500]}
    if args.objective == "g_rerank":
        flops = common.grerank_step_flops(reader_cfg, ranker_cfg, shape,
                                          num_samples=args.num_samples)
        report["flops_per_step"] = flops
        report["achieved_tflops"] = flops["total"] / timing["step_s_median"] / 1e12
    peak = common.datasheet_peak_tflops(report["device"]["device_kind"])
    if peak and "achieved_tflops" in report:
        report["datasheet_bf16_peak_tflops"] = peak
        report["mfu_datasheet"] = report["achieved_tflops"] / peak
    if args.count_kernels:
        key = jax.random.key(0)
        text = step.lower(state["params"], state["opt"], reader_state, batch, key).as_text()
        targets = re.findall(r"custom_call @(__cudnn\$fmha\w*)", text)
        report["cudnn_attention_calls"] = {
            "forward": sum("Backward" not in t for t in targets),
            "backward": sum("Backward" in t for t in targets)}
        if products is not None:
            report["fp8_products"] = products
    if args.measure_peak and "achieved_tflops" in report:
        peak = common.measured_matmul_peak_tflops()
        report["measured_bf16_peak_tflops"] = peak
        report["mfu_measured_matmul"] = report["achieved_tflops"] / peak
    return report


_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[")
_DOT = re.compile(r"\bdot\((?:(\w+)\[[^\]]*\]\S*\s+)?%?([\w.\-]+)")


def fp8_products(compiled_hlo: str) -> dict:
    """The matrix products of an optimised HLO module's text (``compile().as_text()``):
    ``dots`` in all, ``e4m3_dots`` whose first operand is e4m3 (inside fusions too, e.g.
    Triton's), and ``cublaslt_fp8_gemms``, cuBLASLt FP8 GEMM calls. XLA prints a dot's
    operands by name (some versions with their types): a name's type comes from its
    definition in the same computation. ``e4m3_dots`` and ``cublaslt_fp8_gemms`` both 0: XLA
    multiplied dequantized values in bf16, and FP8 cannot have sped anything up."""
    counts = {"dots": 0, "e4m3_dots": 0,
              "cublaslt_fp8_gemms": compiled_hlo.count('"__cublas$lt$matmul$f8"')}
    types: dict[str, str] = {}
    for line in compiled_hlo.splitlines():
        if line.rstrip().endswith("{") and not line.startswith(" "):  # a computation begins
            types = {}
            continue
        definition = _DEFINITION.match(line)
        if definition:
            types[definition.group(1)] = definition.group(2)
        dot = _DOT.search(line)
        if dot:
            counts["dots"] += 1
            counts["e4m3_dots"] += (dot.group(1) or types.get(dot.group(2))) == "f8e4m3fn"
    return counts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_shape_arguments(p)
    p.add_argument("--objective", default="g_rerank",
                   choices=[name for name in OBJECTIVES if name != "supervised"])
    p.add_argument("--num_samples", type=int, default=1)
    common.add_model_arguments(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--measure_peak", action="store_true",
                   help="also time a large bf16 matmul and report utilisation against it "
                        "(beside the datasheet figure)")
    p.add_argument("--count_kernels", action="store_true",
                   help="count the cuDNN attention calls in the lowered step (GPU)")
    p.add_argument("--reader_fp8", action="store_true",
                   help="the frozen reader's encoder multiplies in FP8 e4m3 "
                        "(ModelConfig.reader_fp8)")
    p.add_argument("--reranker_packing_bucket", type=float, default=0.0,
                   help="pack the trained reranker's encoder at this batch's real-token share "
                        "rounded up to a multiple of this width, as the trainer does "
                        "(ModelConfig.reranker_packing_bucket; 0: off)")
    p.add_argument("--no_fold", action="store_true",
                   help="run RankT5's general decoder instead of the folded one-query "
                        "cross-attention (the lever's before)")
    p.add_argument("--dense_bias", action="store_true",
                   help="give RankT5's encoder the materialised [rows, heads, len, len] bias "
                        "instead of row lengths (the lever's before)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="also record a jax.profiler trace of --profile_steps steps in DIR and "
                        "put the top device ops by time in the report")
    p.add_argument("--profile_steps", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON report path")
    return p


def main(argv=None):
    args = common.fill_shape_defaults(parser().parse_args(argv), paper_batch=32)
    common.write_report(args.out, run(args))


if __name__ == "__main__":
    main()
