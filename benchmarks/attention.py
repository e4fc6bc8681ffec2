"""Benchmark 3: document-masked cross-attention alone, forward + backward (to the query and
the log mask), for every implementation: bias/einsum, bias/xla, bias/cudnn, blockwise.

    python -m benchmarks.attention --size paper --out runs/bench/attention.json
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common
from gumbel_jax import ops
from gumbel_jax.models.attention import document_masked_attention

VARIANTS = {"bias/einsum": ("bias", None), "bias/xla": ("bias", "xla"),
            "bias/cudnn": ("bias", "cudnn"), "blockwise": ("blockwise", None)}


def run(args) -> dict:
    dtype = jnp.dtype(args.dtype)
    keys = jax.random.split(jax.random.key(0), 5)
    b, t, h, d, docs, length = (args.batch, args.queries, args.heads, args.head_dim, args.docs,
                                args.doc_len)
    q = jax.random.normal(keys[0], (b, t, h, d), dtype)
    k = jax.random.normal(keys[1], (b, docs * length, h, d), dtype)
    v = jax.random.normal(keys[2], (b, docs * length, h, d), dtype)
    cotangent = jax.random.normal(keys[3], (b, t, h, d), dtype)
    log_mask = jax.nn.log_sigmoid(jax.random.normal(keys[4], (b, docs)))
    valid = jnp.ones((b, docs * length), bool)
    report = {"benchmark": "dma_attention", "device": common.device_description(),
              "shape": {"batch": b, "queries": t, "heads": h, "head_dim": d, "docs": docs,
                        "doc_len": length, "dtype": args.dtype}, "variants": {}}
    for name in args.variants:
        method, implementation = VARIANTS[name]

        def loss(q, log_mask, method=method, implementation=implementation):
            out = document_masked_attention(q, k, v, log_mask, valid, method=method,
                                            implementation=implementation, scale=1.0)
            return jnp.vdot(out.astype(jnp.float32), cotangent.astype(jnp.float32))

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        try:
            report["variants"][name] = common.time_calls(lambda g=grad: g(q, log_mask),
                                                         warmup=2, steps=args.steps)
        except Exception as error:  # an implementation the backend lacks, e.g. cudnn on CPU
            report["variants"][name] = {"error": f"{type(error).__name__}: "
                                                 f"{str(error).splitlines()[0][:200]}"}
    report["ops"] = _time_mask_ops(b, docs, length, t, args.steps)
    return report


def _time_mask_ops(batch, docs, doc_len, queries, steps) -> dict:
    """Relaxed top-k + document bias, forward and backward, as the step uses them (once for
    the batch; the bias is broadcast to [batch, 1, queries, keys] as the cudnn path does)."""
    scores = jax.random.normal(jax.random.key(1), (batch, docs))
    key_doc_ids = jnp.arange(docs * doc_len) // doc_len
    cotangent = jax.random.normal(jax.random.key(2), (batch, 1, queries, docs * doc_len))

    def loss(scores, key):
        log_mask = ops.log_relaxed_topk(key, scores, 5, tau=0.5)
        bias = ops.document_bias(log_mask, key_doc_ids)
        return jnp.vdot(jnp.broadcast_to(bias, cotangent.shape), cotangent)

    grad = jax.jit(jax.grad(loss))
    return common.time_calls(lambda: grad(scores, jax.random.key(0)), warmup=2, steps=steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["paper", "tiny"], default="tiny")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    paper = args.size == "paper"
    # FiD-Large decoder cross-attention: 32 questions, 32 answer tokens, 16 heads of 64,
    # 10 passages of 256 tokens (one layer).
    args.batch, args.queries, args.heads, args.head_dim = (32, 32, 16, 64) if paper else (
        2, 4, 2, 8)
    args.docs, args.doc_len = (10, 256) if paper else (3, 8)
    common.write_report(args.out, run(args))


if __name__ == "__main__":
    main()
