"""Benchmark: reranking throughput, the trained reranker scoring candidates at inference
(what a RAG stack runs per query), against transformers' PyTorch RankT5 on the same weights.

    python -m benchmarks.rerank --size paper --attention cudnn --rows 1000 --out rerank.json
    python -m benchmarks.rerank --torch --out rerank_cpu_tiny.json     # CPU smoke run

Ours is the trainer's RankT5 (``training.factory.build_models``: the folded one-query
decoder, row lengths to the encoder's kernel) under ``nnx.jit``. ``--torch`` adds
transformers' ``T5ForConditionalGeneration`` with SDPA attention in the same compute dtype,
under ``inference_mode`` (``torch_reference.rankt5_scores``), loaded with our weights
(``checkpoints.export.t5_to_tensors``); its scores are compared with ours. The two are timed
in alternation on the same ``--rows`` passages (ragged, right-padded, as the pipeline pads);
passages/s and real (non-padding) tokens/s are reported.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import common
from benchmarks.generation import interleaved_seconds
from gumbel_jax.training.factory import build_models


def torch_scorer(ranker, ids: np.ndarray, mask: np.ndarray):
    """A function of no arguments: transformers' RankT5 on ``ranker``'s weights scoring
    ``ids``/``mask`` ``[rows, len]`` -> float32 numpy ``[rows]``."""
    import torch

    from benchmarks.torch_reference import rankt5_scores, torch_t5_from_ours

    model = torch_t5_from_ours(ranker.t5)
    torch_ids = torch.from_numpy(ids.astype(np.int64)).to(model.device)
    torch_mask = torch.from_numpy(mask.astype(np.int64)).to(model.device)

    def call():
        with torch.inference_mode():
            scores = rankt5_scores(model, torch_ids, torch_mask,
                                   score_token=ranker.score_token_id)
        return scores.cpu().numpy()  # waits for the device

    return call


def run(args) -> dict:
    settings = common.model_settings(args)
    _, ranker = build_models(common.model_config(args.size, **settings),
                             vocab_size=common.TINY_VOCAB, seed=0)
    # Inference: the reranker's encoder packs too (the factory packs only the frozen
    # reader's, as training differentiates the reranker's).
    ranker.token_capacity = args.token_capacity
    vocab = ranker.t5.config.vocab_size
    rows = common.synthetic_batch(np.random.default_rng(0),
                                  common.Shape(1, args.rows, args.doc_len, 2, 1), vocab)
    # Candidates of a real query are all real: drop the synthetic batch's padded candidate.
    ids, mask = rows["ranker_ids"][0], rows["ranker_mask"][0]
    keep = mask.any(axis=-1)
    ids, mask = ids[keep], mask[keep]
    score = nnx.jit(lambda model, i, m: model(i, m))
    jax_ids, jax_mask = jnp.asarray(ids), jnp.asarray(mask)
    calls = {"ours": lambda: np.asarray(score(ranker, jax_ids, jax_mask))}
    if args.torch:
        calls["transformers"] = torch_scorer(ranker, ids, mask)
    first = {name: call() for name, call in calls.items()}  # compile / warm up
    for _ in range(args.warmup):
        for call in calls.values():
            call()
    timings = interleaved_seconds(calls, rounds=args.steps)
    real_tokens = int(mask.sum())
    for timing in timings.values():
        timing["passages_per_s"] = len(ids) / timing["step_s_median"]
        timing["real_tokens_per_s"] = real_tokens / timing["step_s_median"]
    report = {"benchmark": "rerank", "device": common.device_description(),
              "size": args.size, "rows": len(ids), "doc_len": args.doc_len,
              "real_tokens": real_tokens, "padding_fraction": 1 - real_tokens / mask.size,
              "model": {"d_model": ranker.t5.config.d_model,
                        "layers": ranker.t5.config.num_layers, **settings},
              "timings": timings}
    if args.torch:
        import torch

        report["torch"] = torch.__version__
        difference = np.abs(first["ours"] - first["transformers"])
        report["scores_max_abs_diff"] = float(difference.max())
        report["scores_max_abs"] = float(np.abs(first["ours"]).max())
        report["speedup_over_transformers"] = (timings["transformers"]["step_s_median"]
                                               / timings["ours"]["step_s_median"])
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["paper", "tiny"], default="tiny")
    common.add_model_arguments(p)
    p.set_defaults(dtype="float32")  # CPUs compute bfloat16 slowly; the GPU runs ask bf16
    p.add_argument("--rows", type=int, default=None, help="passages scored per call")
    p.add_argument("--doc_len", type=int, default=None)
    p.add_argument("--torch", action="store_true",
                   help="also time transformers' PyTorch RankT5 on the same weights")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed rounds")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    paper = args.size == "paper"
    args.rows = args.rows or (1000 if paper else 64)
    args.doc_len = args.doc_len or (256 if paper else 16)
    common.write_report(args.out, run(args))


if __name__ == "__main__":
    main()
