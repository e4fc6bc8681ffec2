"""Shared pieces of the benchmarks: paper-scale model shapes, the FLOP count of a G-Rerank
step, synthetic batches, timing and the JSON report."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from gumbel_jax.data.batch import Batch
from gumbel_jax.models import RANKT5_SCORE_TOKEN_ID, T5Config
from gumbel_jax.models.attention import DmaMethod
from gumbel_jax.training.config import AttentionKernel, ComputeDtype, ModelConfig, choices

TINY_VOCAB = 512  # the tiny models' vocabulary (random tokens, no tokenizer)


def model_config(size: str, **settings) -> ModelConfig:
    """The models a benchmark builds, as the ``ModelConfig`` the trainer would get, so
    ``training.factory.build_models`` makes the same models (and so the same step) for both.

    paper: FiD-Large (t5-large) reader and RankT5-base (t5 v1.1 base layout) reranker with
    random weights of the public shapes; tiny: the trainer's tiny models (CPU smoke runs).
    ``settings``: other ModelConfig fields (dtype, attention, dma, remat).
    """
    if size == "paper":
        return ModelConfig(reader="fid-large", reranker="rankt5-base", reader_init="random",
                           reranker_init="random", reader_architecture="t5-large",
                           reranker_architecture="t5-v1_1-base",
                           score_token_id=RANKT5_SCORE_TOKEN_ID, **settings)
    return ModelConfig(reader="tiny", reranker="tiny", d_model=64, num_layers=2, num_heads=4,
                       score_token_id=7, **settings)


def add_model_arguments(parser) -> None:
    """The model flags shared by the step benchmarks: each is a ``ModelConfig`` field, with
    its choices taken from the config's types."""
    parser.add_argument("--dtype", default="bfloat16", choices=choices(ComputeDtype))
    parser.add_argument("--dma", default="bias", choices=choices(DmaMethod),
                        help="document-masked attention method")
    parser.add_argument("--attention", default="", choices=choices(AttentionKernel),
                        help="kernel of every attention layer ('' = einsum)")
    parser.add_argument("--remat", action="store_true", help="rematerialise reranker layers")
    parser.add_argument("--token_capacity", type=float, default=0.0,
                        help="encoders pack real tokens into this fraction of the slots "
                             "(ModelConfig.token_capacity; 0: off)")


def model_settings(args) -> dict:
    return {"dtype": args.dtype, "dma": args.dma, "attention": args.attention,
            "remat": args.remat, "token_capacity": args.token_capacity}


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    docs: int
    doc_len: int
    answer_len: int
    k: int


def add_shape_arguments(parser, *, docs: int | None = 10) -> None:
    """The step-shape flags shared by the benchmarks; sizes left None get the ``--size``
    defaults in :func:`fill_shape_defaults`."""
    parser.add_argument("--size", choices=["paper", "tiny"], default="tiny")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--docs", type=int, default=docs)
    parser.add_argument("--doc_len", type=int, default=None)
    parser.add_argument("--answer_len", type=int, default=None)
    parser.add_argument("--k", type=int, default=5)


def fill_shape_defaults(args, *, paper_batch: int, paper_docs: int = 10):
    """Paper scale: 256-token passages and 32-token answers; tiny: sizes a CPU runs fast."""
    paper = args.size == "paper"
    args.batch = args.batch or (paper_batch if paper else 2)
    args.docs = args.docs or (paper_docs if paper else 12)
    args.doc_len = args.doc_len or (256 if paper else 16)
    args.answer_len = args.answer_len or (32 if paper else 4)
    return args


def _stack_flops(config: T5Config, tokens: int, seq_len: int, layers: int, *, cross_keys=0,
                 cross_kv_tokens=0) -> float:
    """Forward matmul FLOPs of ``layers`` T5 blocks on ``tokens`` tokens (2 per MAC)."""
    inner = config.num_heads * config.d_kv
    ff_mats = 3 if config.is_gated else 2
    per_token = 2 * (4 * config.d_model * inner + ff_mats * config.d_model * config.d_ff)
    per_token += 2 * 2 * seq_len * inner  # QK^T and AV
    flops = layers * tokens * per_token
    if cross_keys:
        flops += layers * tokens * 2 * (2 * config.d_model * inner + 2 * cross_keys * inner)
        flops += layers * cross_kv_tokens * 2 * 2 * config.d_model * inner  # K, V projections
    return float(flops)


def grerank_step_flops(reader: T5Config, reranker: T5Config, shape: Shape, *,
                       num_samples: int = 1) -> dict:
    """FLOPs the gradient needs: reranker fwd+bwd (3x forward), reader encoder forward,
    reader decoder forward + backward for activations only (about 2x forward, without the
    encoder-side K/V projections, which carry no gradient and are shared by all draws)."""
    pairs = shape.batch * shape.docs
    rr_enc = _stack_flops(reranker, pairs * shape.doc_len, shape.doc_len, reranker.num_layers)
    rr_dec = _stack_flops(reranker, pairs, 1, reranker.num_decoder_layers,
                          cross_keys=shape.doc_len, cross_kv_tokens=pairs * shape.doc_len)
    reranker_flops = 3 * (rr_enc + rr_dec)
    reader_encoder = _stack_flops(reader, pairs * shape.doc_len, shape.doc_len,
                                  reader.num_layers)
    keys = shape.docs * shape.doc_len
    answer_tokens = shape.batch * shape.answer_len
    decoder_fwd = _stack_flops(reader, answer_tokens, shape.answer_len,
                               reader.num_decoder_layers, cross_keys=keys,
                               cross_kv_tokens=shape.batch * keys)
    kv_proj = reader.num_decoder_layers * shape.batch * keys * 2 * 2 * reader.d_model * (
        reader.num_heads * reader.d_kv)
    lm_head = 2 * answer_tokens * reader.d_model * reader.vocab_size
    decoder = num_samples * (2 * (decoder_fwd + lm_head) - 2 * kv_proj) + kv_proj
    total = reranker_flops + reader_encoder + decoder
    return {"reranker_fwd_bwd": reranker_flops, "reader_encoder_fwd": reader_encoder,
            "reader_decoder_fwd_bwd": decoder, "total": total}


def reader_training_step_flops(reader: T5Config, shape: Shape, *, remat: bool = False) -> dict:
    """FLOPs of one reader-training step (``training.reader``): every parameter trains, so
    the encoder, the decoder (with the memory's K/V projections) and the LM head each cost
    forward + backward = 3x forward; per-layer remat runs the layers' forward once more.
    ``shape.k`` is not read (the reader reads every candidate)."""
    pairs = shape.batch * shape.docs
    keys = shape.docs * shape.doc_len
    answer_tokens = shape.batch * shape.answer_len
    encoder = _stack_flops(reader, pairs * shape.doc_len, shape.doc_len, reader.num_layers)
    decoder = _stack_flops(reader, answer_tokens, shape.answer_len, reader.num_decoder_layers,
                           cross_keys=keys, cross_kv_tokens=shape.batch * keys)
    lm_head = 2 * answer_tokens * reader.d_model * reader.vocab_size
    recompute = (encoder + decoder) if remat else 0.0
    return {"encoder_fwd_bwd": 3 * encoder, "decoder_fwd_bwd": 3 * (decoder + lm_head),
            "remat": recompute, "total": 3 * (encoder + decoder + lm_head) + recompute}


def synthetic_batch(rng: np.random.Generator, shape: Shape, vocab: int) -> dict:
    """Random tokens with realistic padding: ragged passages, a few padded candidates."""
    b, d, length = shape.batch, shape.docs, shape.doc_len
    lengths = rng.integers(length // 2, length + 1, size=(b, d))
    mask = np.arange(length)[None, None] < lengths[..., None]
    doc_valid = np.ones((b, d), bool)
    doc_valid[::4, -1] = False  # every 4th question has one candidate fewer
    mask &= doc_valid[..., None]
    ids = np.where(mask, rng.integers(2, vocab, size=(b, d, length)), 0).astype(np.int32)
    answer_len = rng.integers(2, shape.answer_len + 1, size=b)
    answer_mask = np.arange(shape.answer_len)[None] < answer_len[:, None]
    answers = np.where(answer_mask, rng.integers(2, vocab, size=(b, shape.answer_len)), 0)
    gold = np.zeros((b, d), bool)
    gold[:, 0] = True  # read by the supervised reference and evaluation only
    return Batch(reader_ids=ids, reader_mask=mask, ranker_ids=ids, ranker_mask=mask,
                 doc_valid=doc_valid, answer_ids=answers.astype(np.int32),
                 answer_mask=answer_mask, gold=gold, indirect=np.zeros((b, d), bool),
                 example_id=np.arange(b, dtype=np.int32)).to_dict()


def time_calls(fn, *, warmup: int, steps: int) -> dict:
    """Seconds per call after ``warmup`` calls: the median, min and max of ``steps`` calls
    each waited for, and (``pipelined_s_per_step``) the mean of ``steps`` calls issued back
    to back with one wait at the end, as a training loop without a per-step host sync runs
    them (the host dispatches the next step while the device works)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    jax.block_until_ready([fn() for _ in range(steps)])
    pipelined = (time.perf_counter() - start) / steps
    return {"first_call_s": first, "step_s_median": float(np.median(times)),
            "step_s_min": float(np.min(times)), "step_s_max": float(np.max(times)),
            "steps": steps, "pipelined_s_per_step": pipelined}


def real_work(batch: dict) -> dict:
    """What a batch holds besides padding: real passages and real passage tokens."""
    return {"passages": int(np.sum(batch["doc_valid"])),
            "passage_tokens": int(np.sum(batch["reader_mask"])),
            "padded_passage_tokens": int(np.size(batch["reader_mask"]))}


def throughput(work: dict, seconds: float) -> dict:
    """Real (non-padding) passage tokens and passages per second at ``seconds`` per step,
    and the share of padding in the passage tensor."""
    return {"real_passage_tokens_per_s": work["passage_tokens"] / seconds,
            "passages_per_s": work["passages"] / seconds,
            "padding_fraction": 1 - work["passage_tokens"] / work["padded_passage_tokens"]}


def peak_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measured_matmul_peak_tflops(size: int = 8192, repeats: int = 10) -> float:
    """bf16 matrix-product throughput of this device (the denominator of utilisation)."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (size, size), jnp.bfloat16)
    b = jax.random.normal(keys[1], (size, size), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, b))
    start = time.perf_counter()
    for _ in range(repeats):
        out = matmul(a, b)
    jax.block_until_ready(out)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def device_description() -> dict:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "jax": jax.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


# Published dense bf16 peaks (TFLOP/s per chip), the denominator of model-FLOPs utilisation:
# NVIDIA H100 SXM and H200 SXM datasheets (989.4 without sparsity); Cloud TPU system
# architecture pages (v4 275, v5e 197, v5p 459).
DATASHEET_BF16_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H200": 989.4,
                         "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
                         "TPU v5p": 459.0, "TPU v5": 459.0}


def datasheet_peak_tflops(device_kind: str) -> float | None:
    """The datasheet bf16 peak of a device kind (``jax.devices()[0].device_kind``), or None
    for a device without an entry (CPU, or a card not listed)."""
    return DATASHEET_BF16_TFLOPS.get(device_kind)


def provenance() -> dict:
    """Where a result came from: the git commit ($GUMBEL_JAX_COMMIT when set, else
    ``git rev-parse HEAD``), the exact command, library versions."""
    import os
    import shlex
    import subprocess
    import sys

    # A copied tree may carry a stale .git (seen on the device machine: it reported an older
    # commit), so an explicit GUMBEL_JAX_COMMIT wins.
    commit = os.environ.get("GUMBEL_JAX_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True,
                                    cwd=pathlib.Path(__file__).parent).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name}" if spec else f"python {sys.argv[0]}"
    return {"git_commit": commit, "command": shlex.join([*program.split(), *sys.argv[1:]]),
            "versions": versions,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def write_report(path: str | None, report: dict, *, echo: bool = True) -> None:
    source = provenance()
    # The commit and command at the top level too, where readers of a result look first.
    report = {"git_commit": source["git_commit"], "command": source["command"], **report,
              "provenance": source}
    text = json.dumps(report, indent=2, default=float)
    if echo:
        print(text)
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(text + "\n")
