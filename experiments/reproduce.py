"""Run the paper's experiment grid: every row of a table x every seed.

    python -m experiments.reproduce --table hotpotqa --data_dir ~/tfds --models_dir ~/models \
        --workdir runs/paper --seeds 3

A cell is one run at one seed, in ``WORKDIR/<run>/seed<N>``. Finished cells (``eval.json``
present) are skipped, interrupted ones resume from their last checkpoint, and ``--cell``
runs only the named cells (``hotpotqa_g_rerank`` for all its seeds, or
``hotpotqa_g_rerank/seed1``), so cells can be spread over machines that share WORKDIR.
``--list`` shows every cell and its state. A cell that fails is reported and the others
still run; the exit status is then 1. ``--set`` overrides apply to every cell.

``--tune`` first trains each tuned run's grid (``experiments.paper.TUNING``: τ for G-Rerank,
θ x T for the baselines, four points each) as cells ``<run>/tune/<point>`` on held-out
training questions (``experiments.tuning``), writes the choice to ``<run>/tuning.json`` and
then trains the seeds with it; a run's seeds wait until all its points have finished. Once
``tuning.json`` exists the seeds use its choice with or without ``--tune`` (an explicit
``--set`` of the same field still wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import traceback

from experiments import tuning
from experiments.cli import add_parallel_arguments, fail, start_parallel, user_path
from experiments.paper import (
    MODEL_PATH_FIELDS,
    READER_CONFIG_DIR,
    READERS_TABLE,
    TABLES,
    TUNING_QUESTIONS,
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


def select(cells: list, names: list[str]) -> list:
    """Cells (seed or tuning cells) named by run (all of its cells) or by their own name
    (run/seedN, run/tune/POINT); an unknown name is an error."""
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


def cell_config(row: PaperRow, seed: int, args, chosen: dict | None = None):
    """The row's experiment at ``seed`` with the tuned ``chosen`` settings, then ``--set``."""
    from gumbel_jax.training.config import apply_overrides

    # --models_dir and --data_dir were made absolute by argparse (cli.user_path).
    experiment = resolve_paths(row.experiment, data_dir=args.data_dir,
                               models_dir=args.models_dir)
    experiment = dataclasses.replace(
        experiment, train=dataclasses.replace(experiment.train, seed=seed))
    if chosen:
        experiment = tuning.apply_choice(experiment, chosen)
    return apply_overrides(experiment, args.set)


def tune_cell_config(row: PaperRow, cell: tuning.TuneCell, args):
    """A tuning cell's experiment: ``--set`` first, so that the grid point always wins."""
    return tuning.tune_experiment(cell_config(row, 0, args), cell.values, args.tune_questions,
                                  num_steps=args.tune_steps)


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
    p.add_argument("--tune", action="store_true",
                   help="first train each tuned run's grid on held-out training questions "
                        "and train its seeds with the best point (<run>/tuning.json)")
    p.add_argument("--tune_questions", type=int, default=TUNING_QUESTIONS,
                   help="training questions held out to choose on (from the split's start)")
    p.add_argument("--tune_grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="replace a tuned field's values in every grid that tunes it")
    p.add_argument("--tune_steps", type=int, default=0,
                   help="training steps of a tuning cell (default: the row's, as its seeds)")
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
        planned = (tuning.plan_tuning(rows, tables, tuning.parse_grid_overrides(
            args.tune_grid)) if args.tune else [])
        cells = select(plan(rows, tables, args.seeds) + planned, args.cell)
    except ValueError as error:
        return fail(str(error))
    tune_cells = [c for c in cells if isinstance(c, tuning.TuneCell)]
    cells = [c for c in cells if isinstance(c, Cell)]
    workdir = run_path(args.workdir)  # a local folder or gs://
    if args.list:
        try:
            for cell in tune_cells:
                print(f"{cell.name:48s} {cell_state(workdir / cell.name):28s} "
                      f"tuning, chosen by {cell.metric}", flush=True)
            for cell in cells:
                print(f"{cell.name:48s} {cell_state(workdir / cell.name):28s} "
                      f"{', '.join(cell.rows)}", flush=True)
        except BrokenPipeError:  # piped into head: stop quietly
            sys.stdout = open(os.devnull, "w")
        return 0
    return run_cells(cells, {row.run: row for row in rows}, workdir, args,
                     tune_cells=tune_cells, planned=planned)


def run_cells(cells: list[Cell], rows_by_run: dict[str, PaperRow], workdir: pathlib.Path,
              args, *, tune_cells: list | None = None, planned: list | None = None) -> int:
    """Train the (selected) tuning cells, record the choice of each tuned run whose
    ``planned`` grid has finished, then train the seed cells with their run's choice; under
    ``--tune`` a seed of a tuned run without one waits. Returns 0, 1 (some failed or wait
    for tuning) or 3 (preempted)."""
    try:
        mesh = start_parallel(args)
    except ValueError as error:
        return fail(str(error))
    tune_cells = tune_cells or []
    total, failed, waited = len(tune_cells) + len(cells), [], []
    for index, cell in enumerate(tune_cells, 1):
        status = _run_cell(f"[{index}/{total}] {cell.name}", workdir / cell.name,
                           lambda cell=cell: tune_cell_config(rows_by_run[cell.run], cell,
                                                              args), mesh)
        if status == "preempted":
            return 3
        if status == "failed":
            failed.append(cell.name)
    # A tuned run's choice is (re)made whenever its tuning or its seeds are selected: its
    # seeds wait until every planned point has finished (on this machine or another).
    planned = planned or []
    tuned = {c.run for c in planned}
    runs = [c.run for c in tune_cells] + [c.run for c in cells if c.run in tuned]
    waiting = _record_choices(list(dict.fromkeys(runs)), planned, workdir, args)
    for index, cell in enumerate(cells, len(tune_cells) + 1):
        prefix = f"[{index}/{total}] {cell.name}"
        if cell.run in waiting:
            print(f"{prefix}: waits for its tuning ({waiting[cell.run]})", flush=True)
            waited.append(cell.name)
            continue
        try:
            choice = tuning.read_choice(workdir / cell.run)
        except ValueError as error:
            print(f"{prefix}: failed: {error}", file=sys.stderr, flush=True)
            failed.append(cell.name)
            continue
        chosen = choice["chosen"] if choice else None
        status = _run_cell(prefix, workdir / cell.name,
                           lambda cell=cell, chosen=chosen: cell_config(
                               rows_by_run[cell.run], cell.seed, args, chosen), mesh)
        if status == "preempted":
            return 3
        if status == "failed":
            failed.append(cell.name)
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
    if waited:
        print(f"{len(waited)} cell(s) wait for their run's tuning: {', '.join(waited)}",
              file=sys.stderr)
    return 1 if failed or waited else 0


def _record_choices(runs: list[str], planned: list, workdir: pathlib.Path,
                    args) -> dict[str, str]:
    """Write the ``tuning.json`` of each of ``runs`` whose planned points have all
    finished; the runs still waiting, with how far their tuning is. On several hosts,
    process 0 writes and the others wait at a barrier, so no two write one file and none
    reads it before it is whole."""
    from gumbel_jax.training import multihost

    waiting = {}
    for run in runs:
        points = [c for c in planned if c.run == run]
        try:
            record = tuning.record_choice(workdir, run, points,
                                          tuning.held_out_text(args.tune_questions),
                                          write=multihost.is_writer())
        except ValueError as error:
            print(f"{run}: tuning failed: {error}", file=sys.stderr, flush=True)
            waiting[run] = "its tuning failed"
            continue
        if record is None:
            done = sum(is_finished(workdir / c.name) for c in points)
            waiting[run] = f"{done} of {len(points)} points finished"
            continue
        print(f"{run}: chose {tuning.point_label(record['chosen'])} by {record['metric']} "
              f"on {record['questions']} ({tuning.TUNING_FILE})", flush=True)
    multihost.barrier("tuning choices written")
    return waiting


def _run_cell(prefix: str, folder: pathlib.Path, make_config, mesh) -> str:
    """Train one cell unless finished: "done", "skipped", "failed" or "preempted"."""
    from gumbel_jax.data.validation import DataError
    from gumbel_jax.training import multihost
    from gumbel_jax.training.experiment import run_training
    from gumbel_jax.training.loop import NonFiniteLossError

    # Every process (host) of a multi-host run decides on the same cell at the same time:
    # after the previous cell's files are written, before reading this one's state.
    multihost.barrier(f"cell {folder}")
    state = cell_state(folder)
    if state == "finished":
        print(f"{prefix}: finished, skipped", flush=True)
        return "skipped"
    print(f"{prefix}: {'resuming, ' + state if state != 'not started' else 'starting'}",
          flush=True)
    try:
        config = make_config()
        _check_models(config)
        metrics = run_training(config, folder, mesh=mesh)
    except (ValueError, DataError, NonFiniteLossError, FileNotFoundError, OSError) as error:
        print(f"{prefix}: failed: {error}", file=sys.stderr, flush=True)
        return "failed"
    except Exception:  # an unexpected bug: keep its traceback, run the other cells
        traceback.print_exc()
        return "failed"
    if metrics.get("preempted"):
        print(f"{prefix}: preempted after step {metrics['step']}; run the same command "
              "again to resume", flush=True)
        return "preempted"
    shown = {k: round(v, 4) for k, v in metrics.items()
             if k in ("recall@5", "answer_recall@5", "em", "f1", "mining_recall@5")}
    print(f"{prefix}: done {shown}", flush=True)
    return "done"


if __name__ == "__main__":
    sys.exit(main())
