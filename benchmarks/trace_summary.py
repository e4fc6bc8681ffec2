"""Where a step's time goes: record a ``jax.profiler`` trace of a few calls and summarise the
device ops by time (the summary goes into a benchmark's JSON report; the trace stays on disk
for TensorBoard / Perfetto)."""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re

import jax

# Kernel-name patterns of the op classes a reader of a step profile asks about first.
_CATEGORIES = (
    ("attention", re.compile(r"fmha|flash|cudnn|attention", re.I)),
    ("matmul", re.compile(r"gemm|cublas|cutlass|nvjet|xmma|matmul|dot|convolution", re.I)),
)


def record(fn, directory: str, *, calls: int = 3) -> pathlib.Path:
    """Run ``fn`` (waited for) ``calls`` times under the profiler; returns the Perfetto
    trace file written under ``directory``."""
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(calls):
            jax.block_until_ready(fn())
    traces = sorted(pathlib.Path(directory).glob("**/perfetto_trace.json.gz"),
                    key=lambda path: path.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz in {directory}")
    return traces[-1]


def load_events(path) -> list[dict]:
    """The trace events of a Chrome/Perfetto JSON trace (``.json`` or ``.json.gz``)."""
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        data = json.load(handle)
    return data["traceEvents"] if isinstance(data, dict) else data


def category(name: str) -> str:
    """``attention``, ``matmul`` or ``other`` for a kernel or op name."""
    for label, pattern in _CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def op_events(events: list[dict]) -> list[dict]:
    """The complete ("X") events that are device ops: those of ``/device:...`` processes
    (GPU streams, TPU ops) when the trace has any, else (CPU) the events XLA tagged with an
    ``hlo_op``."""
    process_names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
                     if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in process_names.items() if name.startswith("/device:")}
    complete = [e for e in events if e.get("ph") == "X" and e.get("dur") is not None]
    if devices:
        return [e for e in complete if e.get("pid") in devices]
    return [e for e in complete if "hlo_op" in (e.get("args") or {})]


def _ranked(groups: dict, total: float, calls: int, top: int) -> list[dict]:
    ranked = sorted(groups.values(), key=lambda entry: -entry["us"])[:top]
    return [{"name": e["name"][:160], "count_per_call": e["count"] / calls,
             "ms_per_call": e["us"] / calls / 1e3, "share": e["us"] / total} for e in ranked]


def _add(groups: dict, name: str, microseconds: float) -> None:
    entry = groups.setdefault(name, {"name": name, "count": 0, "us": 0.0})
    entry["count"] += 1
    entry["us"] += microseconds


def summarize(events: list[dict], *, calls: int = 1, top: int = 20) -> dict:
    """Device time per profiled call: in total, by op class, the ``top`` XLA ops (grouped by
    the ``hlo_op`` the trace names, else by kernel) and the ``top`` kernels (grouped by
    kernel name, so one kernel run in every layer counts once).

    Durations in the trace are microseconds; the summary reports milliseconds per call.
    """
    by_op: dict[str, dict] = {}
    by_kernel: dict[str, dict] = {}
    classes: collections.Counter = collections.Counter()
    for event in op_events(events):
        duration = float(event["dur"])
        op = (event.get("args") or {}).get("hlo_op") or event["name"]
        _add(by_op, op, duration)
        _add(by_kernel, event["name"], duration)
        classes[category(f"{event['name']} {op}")] += duration
    total = sum(classes.values())
    if not total:
        return {"calls": calls, "device_op_ms_per_call": 0.0, "share_by_class": {},
                "top_ops": [], "top_kernels": []}
    return {
        "calls": calls,
        "device_op_ms_per_call": total / calls / 1e3,
        "share_by_class": {label: us / total for label, us in sorted(classes.items())},
        "top_ops": _ranked(by_op, total, calls, top),
        "top_kernels": _ranked(by_kernel, total, calls, top),
    }


def profile_summary(fn, directory: str, *, calls: int = 3, top: int = 20) -> dict:
    """Record ``calls`` calls of ``fn`` and summarise them; the summary names the trace."""
    path = record(fn, directory, calls=calls)
    return {"trace": str(path), **summarize(load_events(path), calls=calls, top=top)}
