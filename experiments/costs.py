"""What each paper table costs: FLOPs per G-Rerank training step and per run, and the
expected time on one H100, a TPU v5e-8 and a TPU v4-8; and the same for the readers stage
(FiD-Large trained on each multi-hop set, every time an estimate).

    python -m experiments.costs            # the cost tables of docs/reproduce.md (markdown)

FLOPs count only the work the gradient needs (``benchmarks.common.grerank_step_flops``).
Times: the H100 rate is *measured* for the trainer's own step (the HotpotQA shape at batch 32,
0.281 s, 402.6 TFLOP/s: ``benchmarks/results/2026-11-26/h100_trainer_step_cudnn_b32.json``;
the 100-passage step at batch 8, 0.752 s, with the reranker rematerialised,
``benchmarks/results/2026-11-25``); other shapes on the H100 and every TPU figure are
*estimates*: FLOPs / (the chips' datasheet bf16 peak x the utilisation the H100 reached
against its own datasheet peak, 40.7%). A table's total adds its rows' methods: their step
times relative to G-Rerank's were measured on one H100 in one call at HotpotQA's shape
(``h100_same_call_b32_*.json``).
"""

from __future__ import annotations

import argparse
import dataclasses

from benchmarks.common import (
    DATASHEET_BF16_TFLOPS,
    Shape,
    grerank_step_flops,
    reader_training_step_flops,
)
from experiments.paper import DATASETS, READER_ROWS, TABLES, reader_experiment
from gumbel_jax.models import T5Config
from gumbel_jax.models.presets import T5_LARGE, T5_V1_1_BASE

# The trainer's step, HotpotQA shape, batch 32, cuDNN attention (2026-11-26, H100).
H100_MEASURED_TFLOPS = 402.6
NQ_MEASURED_STEP_S = 0.752  # 100 x 256 passages, batch 8, remat (2026-11-25)
# Datasheet bf16 dense peaks, the one denominator for every chip
# (benchmarks.common.DATASHEET_BF16_TFLOPS): H100 SXM 989.4; v5e 197 per chip (8 chips),
# v4 275 per chip (a v4-8 has 4 chips).
H100_PEAK_TFLOPS = DATASHEET_BF16_TFLOPS["NVIDIA H100 80GB HBM3"]
TPU_PEAK_TFLOPS = {"TPU v5e-8": 8 * DATASHEET_BF16_TFLOPS["TPU v5e"],
                   "TPU v4-8": 4 * DATASHEET_BF16_TFLOPS["TPU v4"]}
UTILISATION = H100_MEASURED_TFLOPS / H100_PEAK_TFLOPS  # model-FLOPs utilisation, datasheet
# Step time relative to G-Rerank's (0.2815 s), H100, batch 32 x 10 x 256, one call
# (benchmarks/results/2026-11-26): EMDR 0.2733 s, LOOP 0.4314 s, ADist 0.2739 s. PDist does
# EMDR's reader work (each passage read alone), so it takes EMDR's ratio.
STEP_RATIO = {"G-Rerank": 1.0, "EMDR": 0.2733 / 0.2815, "PDist": 0.2733 / 0.2815,
              "ADist": 0.2739 / 0.2815}
LOOP_RATIO_AT_10 = 0.4314 / 0.2815


def method_step_ratio(row: str, docs: int) -> float:
    """A method's step time over G-Rerank's for ``docs`` passages. LOOP's extra work (one
    decoder pass without each passage) grows with the pool, so its measured excess at 10
    passages is scaled by docs / 10 (an estimate beyond 10); the others are measured."""
    if row == "LOOP":
        return STEP_RATIO["EMDR"] + (LOOP_RATIO_AT_10 - STEP_RATIO["EMDR"]) * docs / 10
    return STEP_RATIO.get(row, 1.0)  # ablation rows are G-Rerank steps
# BGE-base's reranker as a T5-shaped encoder without a decoder: the same matrix products.
XLM_ROBERTA_BASE_AS_ENCODER = T5Config(vocab_size=250002, d_model=768, d_kv=64, d_ff=3072,
                                       num_layers=12, num_decoder_layers=0, num_heads=12)


@dataclasses.dataclass(frozen=True)
class Cost:
    table: str
    shape: Shape
    steps: int
    step_flops: float
    h100_step_s: float
    h100_measured: bool

    @property
    def run_flops(self) -> float:
        return self.step_flops * self.steps

    def hours(self, step_s: float) -> float:
        return step_s * self.steps / 3600


def table_costs() -> list[Cost]:
    costs = []
    for table, dataset, reranker in (("hotpotqa", "hotpotqa", T5_V1_1_BASE),
                                     ("musique", "musique", T5_V1_1_BASE),
                                     ("2wiki", "2wiki", T5_V1_1_BASE),
                                     ("bge", "hotpotqa", XLM_ROBERTA_BASE_AS_ENCODER),
                                     ("nq", "nq", T5_V1_1_BASE),
                                     ("triviaqa", "triviaqa", T5_V1_1_BASE),
                                     ("ablations", "hotpotqa", T5_V1_1_BASE)):
        setup = DATASETS[dataset]
        shape = Shape(setup.batch_size, setup.num_candidates, setup.reader_length,
                      setup.answer_length, 5)
        flops = grerank_step_flops(T5_LARGE, reranker, shape)["total"]
        if table in ("hotpotqa", "ablations"):
            step_s, measured = flops / (H100_MEASURED_TFLOPS * 1e12), True
        elif table in ("nq", "triviaqa"):
            step_s, measured = NQ_MEASURED_STEP_S, table == "nq"  # same shape up to 250/256
        else:
            step_s, measured = flops / (H100_MEASURED_TFLOPS * 1e12), False
        costs.append(Cost(table, shape, setup.num_steps, flops, step_s, measured))
    return costs


def tpu_step_s(cost: Cost, peak_tflops: float) -> float:
    """The H100's measured seconds per step scaled to a TPU slice of ``peak_tflops``, at
    the utilisation the H100 reached against its datasheet peak (both denominators are
    datasheet figures; mixing in the H100's measured matmul rate made these ~24%
    optimistic)."""
    return cost.h100_step_s * H100_PEAK_TFLOPS / peak_tflops


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def markdown(seeds: int = 3) -> str:
    lines = ["| table | batch x passages x tokens | steps | TFLOP / step | PFLOP / run "
             f"| H100, one G-Rerank run | H100, table ({seeds} seeds) "
             "| TPU v5e-8, one G-Rerank run (est.) | TPU v4-8, one G-Rerank run (est.) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for cost in table_costs():
        s = cost.shape
        # Every row's method at its own step time; the ablations' G-Rerank row is the
        # HotpotQA table's run.
        rows = [r for r in TABLES[cost.table].rows
                if not (cost.table == "ablations" and r == "G-Rerank")]
        table_hours = seeds * sum(method_step_ratio(r, s.docs) for r in rows) * cost.hours(
            cost.h100_step_s)
        h100 = _duration(cost.hours(cost.h100_step_s))
        h100 += "" if cost.h100_measured else " (est.)"
        tpus = [_duration(cost.hours(tpu_step_s(cost, peak)))
                for peak in TPU_PEAK_TFLOPS.values()]
        lines.append(f"| {cost.table} | {s.batch} x {s.docs} x {s.doc_len} | {cost.steps} | "
                     f"{cost.step_flops / 1e12:.0f} | {cost.run_flops / 1e15:.0f} | {h100} | "
                     f"{_duration(table_hours)} | "
                     f"{' | '.join(tpus)} |")
    return "\n".join(lines)


def reader_costs() -> list[Cost]:
    """The readers stage (``experiments/configs/readers/``): FiD-Large (t5-large) trained on
    each multi-hop set at its config's shape, every parameter trained, per-layer remat's
    recomputation counted. Every time is an estimate: the FLOPs at the rate the reranker's
    trainer step was measured at on one H100 (no reader has been trained at this size here)."""
    from gumbel_jax.models.presets import architecture

    costs = []
    for dataset in READER_ROWS:
        config = reader_experiment(dataset)
        data = config.data
        shape = Shape(data.batch_size, data.num_candidates, data.reader_length,
                      data.answer_length, 0)
        flops = reader_training_step_flops(architecture(config.model.reader_architecture),
                                           shape, remat=config.model.remat)["total"]
        costs.append(Cost(config.name, shape, config.train.num_steps, flops,
                          flops / (H100_MEASURED_TFLOPS * 1e12), False))
    return costs


def reader_markdown() -> str:
    lines = ["| reader (readers stage) | batch x passages x tokens | steps | TFLOP / step | "
             "PFLOP / run | H100 (est.) | TPU v5e-8 (est.) | TPU v4-8 (est.) |",
             "|---|---|---|---|---|---|---|---|"]
    for cost in reader_costs():
        s = cost.shape
        times = [_duration(cost.hours(cost.h100_step_s))] + [
            _duration(cost.hours(tpu_step_s(cost, peak))) for peak in TPU_PEAK_TFLOPS.values()]
        lines.append(f"| {cost.table} | {s.batch} x {s.docs} x {s.doc_len} | {cost.steps} | "
                     f"{cost.step_flops / 1e12:.0f} | {cost.run_flops / 1e15:.0f} | "
                     + " | ".join(times) + " |")
    return "\n".join(lines)


# --- CEPE-Llama2-7B as the reader (issue 16; an estimate, not measured) -------------------


def _llama_layer_matmul_parameters(config) -> int:
    """Weights of one Llama layer's matrix products (q, k, v, o and SwiGLU)."""
    width, kv = config.hidden_size, config.kv_heads * config.head_dim
    return 2 * width * width + 2 * width * kv + 3 * width * config.intermediate_size


def cepe_parameter_count(cepe) -> int:
    """Parameters of a ``CepeConfig``, by hand: decoder (embeddings, untied head, layers with
    two norms, final norm), cross-attention (q, o from the decoder width, k, v from the
    encoder's, its own norm) and encoder. The 7B preset: 8,516,196,352."""
    dec, enc = cepe.decoder, cepe.encoder
    cross = dec.num_hidden_layers if cepe.num_cross_attn_layers is None \
        else cepe.num_cross_attn_layers
    stack = lambda c: (c.vocab_size * c.hidden_size + c.num_hidden_layers * (
        _llama_layer_matmul_parameters(c) + 2 * c.hidden_size) + c.hidden_size)
    head = dec.hidden_size * dec.vocab_size
    cross_layer = (2 * dec.hidden_size * dec.hidden_size
                   + 2 * enc.hidden_size * dec.kv_heads * dec.head_dim + dec.hidden_size)
    return stack(dec) + head + cross * cross_layer + stack(enc)


def cepe_step_flops(cepe, reranker: T5Config, *, batch: int = 8, docs: int = 10,
                    context_len: int = 256, prompt_len: int = 64, answer_len: int = 32,
                    num_samples: int = 1) -> dict:
    """FLOPs of one G-Rerank step with a frozen CEPE reader (2 per multiply-add): the
    encoder forward over every context; the memory keys/values of every cross-attention
    layer (mask-independent: once per question, shared by the draws); the decoder forward
    over ``prompt + answer - 1`` tokens per draw, and its backward to the mask (activation
    gradients only: one product per forward product, no weight gradients); the reranker's
    forward and backward (``benchmarks.common.grerank_step_flops``'s)."""
    dec, enc = cepe.decoder, cepe.encoder
    cross = dec.num_hidden_layers if cepe.num_cross_attn_layers is None \
        else cepe.num_cross_attn_layers
    enc_tokens, keys = batch * docs * context_len, docs * context_len
    encoder = enc.num_hidden_layers * enc_tokens * (
        2 * _llama_layer_matmul_parameters(enc) + 4 * context_len * enc.hidden_size)
    memory_kv = cross * enc_tokens * 2 * 2 * enc.hidden_size * dec.kv_heads * dec.head_dim
    length = prompt_len + answer_len - 1
    dec_tokens = batch * length
    heads_width = dec.num_attention_heads * dec.head_dim
    decoder_fwd = (dec.num_hidden_layers * dec_tokens * (
        2 * _llama_layer_matmul_parameters(dec) + 4 * length * heads_width)
        + cross * dec_tokens * (2 * 2 * dec.hidden_size * heads_width + 4 * keys * heads_width)
        + 2 * batch * answer_len * dec.hidden_size * dec.vocab_size)
    shape = Shape(batch, docs, context_len, answer_len, 5)
    reranker_flops = grerank_step_flops(T5_LARGE, reranker, shape)["reranker_fwd_bwd"]
    decoder = num_samples * 2 * decoder_fwd
    return {"encoder_fwd": encoder, "memory_kv": memory_kv, "decoder_fwd_bwd": decoder,
            "reranker_fwd_bwd": reranker_flops,
            "total": encoder + memory_kv + decoder + reranker_flops}


def cepe_memory_bytes(cepe, *, batch: int = 8, docs: int = 10, context_len: int = 256,
                      bytes_per_value: int = 2) -> dict:
    """The frozen reader's resident memory in one step (bfloat16): weights, the memory
    keys/values of every cross-attention layer (``precompute_memory=True``; recomputed from
    the encoder states otherwise), and the encoder states."""
    dec, enc = cepe.decoder, cepe.encoder
    cross = dec.num_hidden_layers if cepe.num_cross_attn_layers is None \
        else cepe.num_cross_attn_layers
    keys = batch * docs * context_len
    return {"weights": cepe_parameter_count(cepe) * bytes_per_value,
            "memory_kv": cross * 2 * keys * dec.kv_heads * dec.head_dim * bytes_per_value,
            "encoder_states": keys * enc.hidden_size * bytes_per_value}


def cepe_markdown() -> str:
    """The CEPE step's cost at cepe.md's shape (batch 8, 10 and 20 x 256-token contexts,
    64 prompt + 32 answer tokens), with RankT5-base as the reranker."""
    from gumbel_jax.models.presets import CEPE_LLAMA_2_7B

    lines = ["| contexts | encoder fwd | memory k/v | decoder fwd+bwd | RankT5 fwd+bwd | "
             "TFLOP / step | H100 step (est.) | weights | memory k/v | encoder states |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for docs in (10, 20):
        flops = cepe_step_flops(CEPE_LLAMA_2_7B, T5_V1_1_BASE, docs=docs)
        memory = cepe_memory_bytes(CEPE_LLAMA_2_7B, docs=docs)
        tf = {k: f"{v / 1e12:.1f}" for k, v in flops.items()}
        step_s = flops["total"] / (H100_MEASURED_TFLOPS * 1e12)
        lines.append(f"| 8 x {docs} x 256 | {tf['encoder_fwd']} | {tf['memory_kv']} | "
                     f"{tf['decoder_fwd_bwd']} | {tf['reranker_fwd_bwd']} | {tf['total']} | "
                     f"{step_s:.2f} s | {memory['weights'] / 1e9:.1f} GB | "
                     f"{memory['memory_kv'] / 1e9:.1f} GB | "
                     f"{memory['encoder_states'] / 1e6:.0f} MB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cepe", action="store_true",
                   help="the cost of a G-Rerank step with CEPE-Llama2-7B as the reader")
    args = p.parse_args(argv)
    if args.cepe:
        print(cepe_markdown())
        return 0
    print(markdown(args.seeds))
    print()
    print(reader_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
