"""The profile summary of the step benchmark: parsing a trace and recording one on CPU."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import trace_summary


def _gpu_like_trace():
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
            {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    host = [{"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction(step)", "dur": 9000.0}]
    device = [
        {"ph": "X", "pid": 7, "tid": 2, "name": "sm90_xmma_gemm_bf16", "dur": 600.0,
         "args": {"hlo_op": "dot.1"}},
        {"ph": "X", "pid": 7, "tid": 2, "name": "sm90_xmma_gemm_bf16", "dur": 300.0,
         "args": {"hlo_op": "dot.2"}},
        {"ph": "X", "pid": 7, "tid": 2, "name": "cudnn_fmha_fwd", "dur": 200.0,
         "args": {"hlo_op": "custom-call.3"}},
        {"ph": "X", "pid": 7, "tid": 2, "name": "loop_add_fusion", "dur": 100.0},
    ]
    return meta + host + device


def test_summary_counts_device_ops_only_per_call(tmp_path):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"traceEvents": _gpu_like_trace()}, handle)
    summary = trace_summary.summarize(trace_summary.load_events(path), calls=2, top=2)
    assert summary["device_op_ms_per_call"] == pytest.approx(0.6)  # 1200 us / 2, no host
    assert summary["share_by_class"] == pytest.approx(
        {"matmul": 0.75, "attention": 200 / 1200, "other": 100 / 1200})
    assert [op["name"] for op in summary["top_ops"]] == ["dot.1", "dot.2"]
    assert summary["top_ops"][0]["ms_per_call"] == pytest.approx(0.3)
    kernel = summary["top_kernels"][0]
    assert kernel["name"] == "sm90_xmma_gemm_bf16" and kernel["count_per_call"] == 1.0
    assert kernel["share"] == pytest.approx(0.75)


def test_records_and_summarises_a_cpu_trace(tmp_path):
    """On CPU the ops are the host events XLA tags with hlo_op."""
    matmul = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((128, 128))
    matmul(a).block_until_ready()
    summary = trace_summary.profile_summary(lambda: matmul(a), str(tmp_path), calls=2)
    assert summary["device_op_ms_per_call"] > 0 and summary["top_ops"]
    assert sum(summary["share_by_class"].values()) == pytest.approx(1.0)
