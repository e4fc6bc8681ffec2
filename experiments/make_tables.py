"""Our results beside the paper's: one table per paper table, in markdown and CSV.

    python -m experiments.make_tables --workdir runs/paper [--out DIR]

For every row and column: our mean ± standard deviation over the finished seeds (in %; one
seed: its value, no ±), the paper's number and the difference (ours - paper). Cells without a
finished seed are marked "missing", and the list of missing or unfinished runs closes the
markdown file.
Writes ``tables.md`` and ``tables.csv`` (long format: one line per row and column) into
``--out`` (default: the workdir).

What the columns are (each table names its ranking definition, ``paper.RANKING_DEFINITIONS``):
"Mining" columns rank the candidates of the first ``data.num_mining`` training questions
(``mining.json``; no labels were used in training); "Reranker" and the unlabelled ranking
columns rank the held-out (validation) questions' candidates with the trained reranker
(``eval.json``), the same metric on questions it never saw; EM / F1 are the reader's answers
from the reranker's top k of those questions. On HotpotQA, MuSiQue and 2Wiki R@5 counts gold
passages; on NQ and TriviaQA, which mark none, it is answer recall (top-5 accuracy). MRR is
over the whole ranking, not cut at 5. Each row's "settings" are the objective settings its
method tunes as its seeds trained them, marked "tuned" when they are its ``tuning.json``'s
choice (``reproduce --tune``); the tuning grids and their held-out values close the file.
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
from experiments.paper import RANKING_DEFINITIONS, TABLES, TUNING, PaperRow, load_rows
from experiments.reproduce import cell_state, is_finished
from experiments.tuning import point_label, read_choice
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


def trained_settings(workdir: pathlib.Path, run: str, fields: tuple[str, ...]) -> list[dict]:
    """The distinct values of the objective ``fields`` the run's finished seeds trained with
    (their ``experiment.json``), in seed order."""
    settings = []
    for folder in sorted((workdir / run).glob("seed*")):
        path = folder / "experiment.json"
        if is_finished(folder) and path.is_file():
            objective = json.loads(path.read_text())["train"]["objective"]
            values = {name: objective[name] for name in fields if name in objective}
            if values not in settings:
                settings.append(values)
    return settings


def settings_text(row: PaperRow, workdir: pathlib.Path) -> str:
    """The row's tunable settings as trained, and whether they are its tuning's choice."""
    grid = TUNING.get(row.experiment.train.objective.name)
    if grid is None:
        return "—"
    trained = trained_settings(workdir, row.run, grid.fields)
    if not trained:
        return "—"
    text = " / ".join(point_label(values) for values in trained)
    choice = read_choice(workdir / row.run)
    if choice is None:
        return text + (" (not tuned)" if row.tune_metric else "")
    if trained == [choice["chosen"]]:
        return f"{text} (tuned by {choice['metric']})"
    return f"{text} (tuning.json chose {point_label(choice['chosen'])})"


def table_entries(row: PaperRow, workdir: pathlib.Path) -> list[dict]:
    """One entry per column of ``row``'s table: ours, the paper's, the difference, and the
    row's settings (``settings_text``)."""
    results = seed_results(workdir, row.run)
    settings = settings_text(row, workdir)
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
            "settings": settings,
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


def tuning_lines(rows: list[PaperRow], workdir: pathlib.Path) -> list[str]:
    """One line per tuned run with a ``tuning.json``: the choice and every point's value."""
    lines = []
    for run in dict.fromkeys(row.run for row in rows if row.tune_metric):
        choice = read_choice(workdir / run)
        if choice is None:
            continue
        metric = choice["metric"]
        grid = ", ".join(f"{point_label(p['values'])}: {100 * p[metric]:.1f}"
                         for p in choice["grid"])
        lines.append(f"- {run}: chose {point_label(choice['chosen'])} by {metric} (%) on "
                     f"{choice['questions']}; {grid}")
    return lines


def markdown(rows: list[PaperRow], entries: dict[tuple[str, str], list[dict]],
             missing: list[str], tuned: list[str] | None = None) -> str:
    parts = ["# Our results beside the paper's",
             "",
             "Ours: mean ± sample standard deviation over the finished seeds (their number in "
             "the seeds column), in %; a single seed's value shows as (n=1), without ±. "
             "Paper: the paper's number as recorded in the row's config "
             "(experiments/configs/paper/; — where none is). Δ = ours - paper.",
             "",
             "Mining: the training questions' candidates ranked by the trained reranker (no "
             "labels were used in training). Reranker: the held-out (validation) questions' "
             "candidates ranked by it, as are the columns without a prefix; EM / F1: the "
             "reader on its top k of those questions. MRR is not cut at 5. settings: the "
             "objective settings the method tunes, as the seeds trained them."]
    for name, table in TABLES.items():
        table_rows = [r for r in rows if r.table == name]
        if not table_rows:
            continue
        header = ["row", "seeds"] + [f"{c.label} {what}" for c in table.columns
                                     for what in ("ours", "paper", "Δ")] + ["settings"]
        lines = [f"## {name}: {table.title}", "",
                 f"Ranking: {RANKING_DEFINITIONS[table.ranking]}.", "",
                 "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        for row in table_rows:
            row_entries = entries[(row.table, row.row)]
            seeds = max(e["seeds"] for e in row_entries)
            cells = [text for e in row_entries for text in _cell_text(e)]
            cells.append(row_entries[0]["settings"])
            lines.append(f"| {row.row} | {seeds} | " + " | ".join(cells) + " |")
        parts += ["", *lines]
    parts += ["", "## Tuning (reproduce --tune)", ""]
    parts += tuned or ["no run was tuned: the rows trained their configs' settings"]
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
        tuned = tuning_lines(rows, workdir)
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
    (out / "tables.md").write_text(markdown(rows, entries, missing, tuned))
    with io.StringIO(newline="") as handle:
        fields = ["table", "row", "run", "column", "seeds", "ours_mean", "ours_std", "paper",
                  "diff", "settings"]
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
