"""Our results beside the paper's: one table per paper table, in markdown and CSV.

    python -m experiments.make_tables --workdir runs/paper [--out DIR]

For every row and column: our mean ± standard deviation over the finished seeds (in %; one
seed: its value, no ±), the paper's number and the difference (ours - paper). Cells without a
finished seed are marked "missing", and the list of missing or unfinished runs closes the
markdown file.
Writes ``tables.md`` and ``tables.csv`` (long format: one line per row and column) into
``--out`` (default: the workdir).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import pathlib
import sys

from experiments.cli import fail, user_path
from experiments.paper import TABLES, PaperRow, load_rows
from experiments.reproduce import cell_state, is_finished
from gumbel_jax.training.run_folder import run_path, write_text


def seed_results(workdir: pathlib.Path, run: str) -> dict[str, list[dict]]:
    """``{"eval": [per-seed metrics], "mining": [...]}`` of a run's finished seeds."""
    results = {"eval": [], "mining": []}
    for folder in sorted((workdir / run).glob("seed*")):
        if not is_finished(folder):
            continue
        for source in results:
            path = folder / f"{source}.json"
            if path.is_file():
                try:
                    results[source].append(json.loads(path.read_text()))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: not valid JSON ({error})") from None
    return results


def summarise(values: list[float]) -> tuple[float, float] | None:
    """(mean, sample standard deviation) in %, or None without values."""
    values = [100 * v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def table_entries(row: PaperRow, workdir: pathlib.Path) -> list[dict]:
    """One entry per column of ``row``'s table: ours, the paper's, the difference."""
    results = seed_results(workdir, row.run)
    entries = []
    for column in TABLES[row.table].columns:
        values = [r.get(column.metric) for r in results[column.source]]
        ours = summarise(values)
        paper = row.paper.get(column.label)
        entries.append({
            "table": row.table, "row": row.row, "run": row.run, "column": column.label,
            "seeds": len([v for v in values if v is not None]),
            "ours_mean": None if ours is None else round(ours[0], 2),
            "ours_std": None if ours is None else round(ours[1], 2),
            "paper": paper,
            "diff": None if ours is None or paper is None else round(ours[0] - paper, 2),
        })
    return entries


def _cell_text(entry: dict) -> list[str]:
    if entry["ours_mean"] is None:
        ours = "missing"
    elif entry["seeds"] < 2:  # one seed has no spread to show
        ours = f"{entry['ours_mean']:.1f} (n={entry['seeds']})"
    else:
        ours = f"{entry['ours_mean']:.1f} ± {entry['ours_std']:.1f}"
    paper = "—" if entry["paper"] is None else f"{entry['paper']:.1f}"
    diff = "—" if entry["diff"] is None else f"{entry['diff']:+.1f}"
    return [ours, paper, diff]


def markdown(rows: list[PaperRow], entries: dict[tuple[str, str], list[dict]],
             missing: list[str]) -> str:
    parts = ["# Our results beside the paper's",
             "",
             "Ours: mean ± sample standard deviation over the finished seeds (their number in "
             "the seeds column), in %; a single seed's value shows as (n=1), without ±. "
             "Paper: the paper's number as recorded in the row's config "
             "(experiments/configs/paper/; — where none is). Δ = ours - paper."]
    for name, table in TABLES.items():
        table_rows = [r for r in rows if r.table == name]
        if not table_rows:
            continue
        header = ["row", "seeds"] + [f"{c.label} {what}" for c in table.columns
                                     for what in ("ours", "paper", "Δ")]
        lines = [f"## {name}: {table.title}", "",
                 "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        for row in table_rows:
            row_entries = entries[(row.table, row.row)]
            seeds = max(e["seeds"] for e in row_entries)
            cells = [text for e in row_entries for text in _cell_text(e)]
            lines.append(f"| {row.row} | {seeds} | " + " | ".join(cells) + " |")
        parts += ["", *lines]
    parts += ["", "## Missing or unfinished runs", ""]
    parts += [f"- {m}" for m in missing] or ["none"]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, type=user_path)
    p.add_argument("--out", default=None, type=user_path,
                   help="output folder (default: the workdir)")
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds expected per run (for the missing list)")
    args = p.parse_args(argv)
    workdir = run_path(args.workdir)  # a local folder or gs://
    if not workdir.is_dir():
        return fail(f"{workdir}: no such folder")
    try:
        rows = load_rows()
        entries = {(row.table, row.row): table_entries(row, workdir) for row in rows}
    except ValueError as error:
        return fail(str(error))
    missing = []
    for run in dict.fromkeys(row.run for row in rows):
        for seed in range(args.seeds):
            state = cell_state(workdir / run / f"seed{seed}")
            if state != "finished":
                missing.append(f"{run}/seed{seed}: {state}")
    out = run_path(args.out) if args.out else workdir
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(markdown(rows, entries, missing))
    with io.StringIO(newline="") as handle:
        fields = ["table", "row", "run", "column", "seeds", "ours_mean", "ours_std", "paper",
                  "diff"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row_entries in entries.values():
            writer.writerows(row_entries)
        write_text(out / "tables.csv", handle.getvalue())  # one upload to gs://
    finished = sum(1 for row_entries in entries.values() if any(e["seeds"] for e in row_entries))
    print(f"wrote {out / 'tables.md'} and {out / 'tables.csv'}: {finished} of {len(rows)} "
          f"rows have results; {len(missing)} cells missing or unfinished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
