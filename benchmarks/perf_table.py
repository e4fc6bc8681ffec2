"""The performance tables of the docs, generated from the result JSONs, so text and data
cannot drift.

    python -m benchmarks.perf_table           # rewrite the tables in README.md and docs/
    python -m benchmarks.perf_table --check   # exit 1 if a committed table differs

A table sits between ``<!-- perf-table:NAME -->`` and ``<!-- /perf-table:NAME -->`` in a
Markdown file; everything between the markers is this module's output.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

from benchmarks import common

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("README.md", "docs/performance.md")

# The step table: (JSON under benchmarks/results, run label, the timing's key path in the
# JSON or None for the top level: "eager", "other_batches/32/eager"). Paper shape throughout
# (FiD-Large frozen + RankT5-base, 10 x 256, answers 32, k 5, bf16).
STEP_ROWS = (
    ("2026-11-26/h100_trainer_step_cudnn_b16.json", "ours, trainer's step (before issue 17)",
     None),
    ("2026-11-26/h100_trainer_step_cudnn_b32.json", "ours, trainer's step (before issue 17)",
     None),
    ("2026-11-26/h100_same_call_torch_eager_b16.json",
     "PyTorch reference before issue 17 (eager reader), eager", "eager"),
    ("2026-11-26/h100_same_call_torch_compile_b16.json",
     "PyTorch reference before issue 17 (eager reader), torch.compile", "compile"),
    # Issue 17, one device call (issue17/h100_issue17.log), in this order.
    ("2026-11-26/issue17/step_b32.json", "ours, both levers (trainer's default)", None),
    ("2026-11-26/issue17/step_b32_before.json", "ours, neither lever (same call)", None),
    ("2026-11-26/issue17/step_b32_fold_only.json", "ours, fold only (same call)", None),
    ("2026-11-26/issue17/step_b16.json", "ours, both levers (same call)", None),
    ("2026-11-26/issue17/torch_b16.json", "fair PyTorch peer, eager (same call)", "eager"),
    ("2026-11-26/issue17/torch_b16.json", "fair PyTorch peer, eager, batch-32 attempt "
     "(same call)", "other_batches/32/eager"),
    ("2026-11-26/issue17/torch_b16.json", "fair PyTorch peer, torch.compile (same call)",
     "compile"),
    # Issue 17, second round: two calls on fresh H100s (issue17b/h100_part1.log, part2.log).
    ("2026-11-27/issue17b/step_b32.json", "ours, both levers (first call)", None),
    ("2026-11-27/issue17b/torch_compile_blocks.json", "fair PyTorch peer, torch.compile per "
     "block; dynamo's recompile limit (8) hit, the later blocks ran eagerly (first call)",
     "compile_blocks"),
    ("2026-11-27/issue17b/torch_compile_blocks.json", "the same, batch 32 (first call)",
     "other_batches/32/compile_blocks"),
    ("2026-11-27/issue17b/step_b32_packed.json", "ours, both levers + the frozen reader's "
     "encoder packed (`--token_capacity 0.8`, second call)", None),
)
# Scaling results: the issue-17 step JSONs with the levers on (the trainer's default) and
# every scale_* JSON.
SCALING_GLOBS = ("*/issue17/step_b16.json", "*/issue17/step_b32.json",
                 "*/issue17/scale_*.json")


def _card(report: dict) -> str:
    device = report.get("device")
    name = device.get("device_kind", "") if isinstance(device, dict) else report.get(
        "device_name", str(device))
    return name.removeprefix("NVIDIA ")


def _datasheet_share(report: dict, tflops: float | None) -> str:
    device = report.get("device")
    kind = device.get("device_kind", "") if isinstance(device, dict) else report.get(
        "device_name", "")
    peak = common.datasheet_peak_tflops(kind)
    return f"{100 * tflops / peak:.1f}%" if peak and tflops else ""


def _seconds(timing: dict) -> str:
    if "error" in timing:
        return timing["error"][:80]
    spread = ""
    if "step_s_max" in timing:
        spread = f" ({timing['step_s_min']:.3f}–{timing['step_s_max']:.3f})"
    return f"{timing['step_s_median']:.3f}{spread}"


def _gigabytes(value) -> str:
    return f"{value / 1e9:.1f} GB" if value else ""


def step_row(path: str, label: str, mode: str | None) -> str:
    """One Markdown row of the step table from one result JSON."""
    report = json.loads((RESULTS / path).read_text())
    timing, shape = report, report["shape"]
    for key in (mode.split("/") if mode else ()):  # e.g. "other_batches/32/eager"
        shape = timing.get("shape", shape)
        # A run that never returned (its time limit ended the process) left no entry.
        timing = timing.get(key, {"error": "no result: the run did not finish (see its log)"})
    batch = shape["batch"]
    if mode == "compile" and "first_call_s" in timing:
        label += f" ({timing.get('compile_s', timing['first_call_s']):.0f} s to compile)"
    per_s = f"{batch / timing['step_s_median']:.0f}" if "step_s_median" in timing else ""
    cells = [_card(report), path.split("/")[0], label, str(batch), _seconds(timing), per_s,
             _gigabytes(timing.get("peak_memory_bytes")),
             _datasheet_share(report, timing.get("achieved_tflops")), f"`{path}`"]
    return "| " + " | ".join(cells) + " |"


def step_table() -> str:
    header = ("| card | date | run | batch | s / step: median (min–max) | questions / s | "
              "peak memory | % of datasheet bf16 peak | JSON |\n"
              "|---|---|---|---|---|---|---|---|---|")
    return "\n".join([header, *(step_row(*row) for row in STEP_ROWS)])


def scaling_row(path: pathlib.Path) -> tuple[tuple, str]:
    """(sort key, Markdown row) of one scaling JSON."""
    report = json.loads(path.read_text())
    shape, options = report["shape"], report["options"]
    cells = [_card(report), options["objective"], _levers(options), str(shape["docs"]),
             str(shape["batch"]) + (" (remat)" if options.get("remat") else ""),
             _seconds(report), _gigabytes(report.get("peak_memory_bytes")),
             f"{report['passages_per_s']:.0f}" if "passages_per_s" in report else "",
             f"{report['real_passage_tokens_per_s'] / 1e3:.0f}k"
             if "real_passage_tokens_per_s" in report else "",
             f"`{path.relative_to(RESULTS)}`"]
    key = (options["objective"], _levers(options), shape["docs"], shape["batch"])
    return key, "| " + " | ".join(cells) + " |"


def _levers(options: dict) -> str:
    """Which issue-17 levers a run had (older runs had neither)."""
    if "no_fold" not in options:
        return "neither"
    names = [name for name, off in (("fold", options["no_fold"]),
                                    ("lengths", options.get("dense_bias"))) if not off]
    return " + ".join(names) or "neither"


def scaling_table() -> str:
    header = ("| card | objective | levers | candidates | batch | s / step: median (min–max) "
              "| peak memory | passages / s | real passage tokens / s | JSON |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    paths = sorted({path for pattern in SCALING_GLOBS for path in RESULTS.glob(pattern)})
    rows = sorted(scaling_row(path) for path in paths)
    if not rows:
        return header + "\n| (no scaling results yet) | | | | | | | | | |"
    return "\n".join([header, *(row for _, row in rows)])


TABLES = {"step": step_table, "scaling": scaling_table}


def render(text: str) -> str:
    """``text`` with every marked table replaced by its generated form."""
    def replace(match):
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"unknown table {name!r}; known: {sorted(TABLES)}")
        return f"<!-- perf-table:{name} -->\n{TABLES[name]()}\n<!-- /perf-table:{name} -->"

    pattern = re.compile(r"<!-- perf-table:(\w+) -->\n.*?<!-- /perf-table:\1 -->", re.S)
    return pattern.sub(replace, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="report documents whose tables differ from the JSONs; no writes")
    args = parser.parse_args(argv)
    stale = []
    for name in DOCUMENTS:
        path = ROOT / name
        text = path.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(name)
            if not args.check:
                path.write_text(rendered)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
