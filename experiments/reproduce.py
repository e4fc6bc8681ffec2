"""Run the paper's experiment grid: every row of a table x every seed.

    python -m experiments.reproduce --table hotpotqa --data_dir ~/tfds --models_dir ~/models \
        --workdir runs/paper --seeds 3

A cell is one run at one seed, in ``WORKDIR/<run>/seed<N>``. Finished cells (``eval.json``
present) are skipped, interrupted ones resume from their last checkpoint, and ``--cell``
runs only the named cells (``hotpotqa_g_rerank`` for all its seeds, or
``hotpotqa_g_rerank/seed1``), so cells can be spread over machines that share WORKDIR.
``--list`` shows every cell and its state. A cell that fails is reported and the others
still run; the exit status is then 1. ``--set`` overrides apply to every cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import traceback

from experiments.cli import add_parallel_arguments, fail, start_parallel, user_path
from experiments.paper import (
    MODEL_PATH_FIELDS,
    READER_CONFIG_DIR,
    READERS_TABLE,
    TABLES,
    PaperRow,
    load_reader_rows,
    load_rows,
    reader_run_of,
    resolve_paths,
)
from gumbel_jax.training.run_folder import run_path

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Cell:
    run: str
    seed: int
    rows: tuple[str, ...]  # "table/row" labels this run fills

    @property
    def name(self) -> str:
        return f"{self.run}/seed{self.seed}"


def plan(rows: list[PaperRow], tables: list[str], seeds: int) -> list[Cell]:
    """The cells of ``tables`` (a run shared by several rows appears once). The readers
    stage comes first, one seed per reader: a reader is trained once and read by every seed
    of the rows that name it."""
    cells: dict[tuple[str, int], list[str]] = {}
    for row in sorted(rows, key=lambda row: row.table != READERS_TABLE):
        if row.table in tables:
            for seed in range(1 if row.table == READERS_TABLE else seeds):
                cells.setdefault((row.run, seed), []).append(f"{row.table}/{row.row}")
    return [Cell(run, seed, tuple(labels)) for (run, seed), labels in cells.items()]


def select(cells: list[Cell], names: list[str]) -> list[Cell]:
    """Cells named by run (all seeds) or run/seedN; an unknown name is an error."""
    if not names:
        return cells
    chosen, known = [], {c.name for c in cells} | {c.run for c in cells}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown cell(s) {', '.join(unknown)}; see --list")
    for cell in cells:
        if cell.name in names or cell.run in names:
            chosen.append(cell)
    return chosen


def is_finished(folder: pathlib.Path) -> bool:
    """A run writes eval.json last, so its presence marks a finished cell."""
    return (folder / "eval.json").is_file()


def cell_state(folder: pathlib.Path) -> str:
    """"finished", "interrupted at step N" or "not started"."""
    if is_finished(folder):
        return "finished"
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().splitlines()
        if lines:
            return f"interrupted at step {json.loads(lines[-1])['step']}"
    return "not started"


def cell_config(row: PaperRow, seed: int, args):
    from gumbel_jax.training.config import apply_overrides

    # --models_dir and --data_dir were made absolute by argparse (cli.user_path).
    experiment = resolve_paths(row.experiment, data_dir=args.data_dir,
                               models_dir=args.models_dir)
    experiment = dataclasses.replace(
        experiment, train=dataclasses.replace(experiment.train, seed=seed))
    return apply_overrides(experiment, args.set)


def _check_models(config) -> None:
    """A missing local model folder is named before anything is built; a missing reader that
    the readers stage trains is named with the commands that build it."""
    for field in MODEL_PATH_FIELDS:
        name = getattr(config.model, field)
        run = reader_run_of(name) if field == "reader" else ""
        if run and name.startswith("/") and not pathlib.Path(name).exists():
            config_file = READER_CONFIG_DIR / f"{run.replace('-', '_')}.py"
            raise FileNotFoundError(
                f"model.{field}: {name} does not exist: the readers stage builds it, so this row "
                f"waits for it. Run python -m experiments.reproduce --table readers --cell {run} "
                "(with this command's --data_dir, --models_dir and --workdir), or python -m "
                f"experiments.train_reader --config {config_file.relative_to(ROOT)} --workdir "
                f"DIR --export {name} --set data.data_dir=...")
        if name.startswith("/") and not pathlib.Path(name).exists():
            raise FileNotFoundError(f"model.{field}: {name} does not exist (download it first; "
                                    "see the README's 'Reproduce the paper')")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", nargs="+", required=True, metavar="TABLE",
                   help=f"one or more of: {READERS_TABLE}, {', '.join(TABLES)}, or all "
                        "(the readers stage first)")
    p.add_argument("--workdir", required=True, type=user_path)
    p.add_argument("--data_dir", default="", type=user_path,
                   help="tfds data_dir of the prepared datasets")
    p.add_argument("--models_dir", default="models", type=user_path,
                   help="folder of the local checkpoints the configs name without a '/'")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cell", nargs="+", default=[], metavar="NAME",
                   help="only these cells: RUN (every seed) or RUN/seedN")
    p.add_argument("--list", action="store_true", help="show the cells and their state")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every cell")
    add_parallel_arguments(p)
    args = p.parse_args(argv)
    known = [READERS_TABLE, *TABLES]
    tables = known if args.table == ["all"] else args.table
    unknown = [t for t in tables if t not in known]
    if unknown:
        return fail(f"unknown table(s) {', '.join(unknown)}; expected {', '.join(known)} "
                    "or all")
    if args.seeds < 1:
        return fail("--seeds must be >= 1")
    try:
        rows = load_reader_rows() + load_rows()
        cells = select(plan(rows, tables, args.seeds), args.cell)
    except ValueError as error:
        return fail(str(error))
    workdir = run_path(args.workdir)  # a local folder or gs://
    if args.list:
        try:
            for cell in cells:
                print(f"{cell.name:48s} {cell_state(workdir / cell.name):28s} "
                      f"{', '.join(cell.rows)}", flush=True)
        except BrokenPipeError:  # piped into head: stop quietly
            sys.stdout = open(os.devnull, "w")
        return 0
    return run_cells(cells, {row.run: row for row in rows}, workdir, args)


def run_cells(cells: list[Cell], rows_by_run: dict[str, PaperRow], workdir: pathlib.Path,
              args) -> int:
    from gumbel_jax.data.validation import DataError
    from gumbel_jax.training import multihost
    from gumbel_jax.training.experiment import run_training
    from gumbel_jax.training.loop import NonFiniteLossError

    try:
        mesh = start_parallel(args)
    except ValueError as error:
        return fail(str(error))
    failed = []
    for index, cell in enumerate(cells, 1):
        folder = workdir / cell.name
        # Every process (host) of a multi-host run decides on the same cell at the same
        # time: after the previous cell's files are written, before reading this one's state.
        multihost.barrier(f"cell {folder}")
        state = cell_state(folder)
        prefix = f"[{index}/{len(cells)}] {cell.name}"
        if state == "finished":
            print(f"{prefix}: finished, skipped", flush=True)
            continue
        print(f"{prefix}: {'resuming, ' + state if state != 'not started' else 'starting'}",
              flush=True)
        try:
            config = cell_config(rows_by_run[cell.run], cell.seed, args)
            _check_models(config)
            metrics = run_training(config, folder, mesh=mesh)
        except (ValueError, DataError, NonFiniteLossError, FileNotFoundError, OSError) as error:
            print(f"{prefix}: failed: {error}", file=sys.stderr, flush=True)
            failed.append(cell.name)
            continue
        except Exception:  # an unexpected bug: keep its traceback, run the other cells
            traceback.print_exc()
            failed.append(cell.name)
            continue
        if metrics.get("preempted"):
            print(f"{prefix}: preempted after step {metrics['step']}; run the same command "
                  "again to resume", flush=True)
            return 3
        shown = {k: round(v, 4) for k, v in metrics.items()
                 if k in ("recall@5", "em", "f1", "mining_recall@5")}
        print(f"{prefix}: done {shown}", flush=True)
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
