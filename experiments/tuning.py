"""Tuning on held-out questions (``experiments.reproduce --tune``): every tuned run's grid
(``experiments.paper.TUNING``) is trained as extra cells, the best point is chosen by the
held-out metric, recorded in ``WORKDIR/<run>/tuning.json`` and applied to the run's seeds.

A tuning cell is the run's experiment at seed 0 with one grid point, trained on the training
split less its first ``questions`` questions and evaluated on those, so neither the choice
nor the training sees the reported (validation) split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

from experiments.paper import PaperRow, tuned_runs
from gumbel_jax.training import run_folder
from gumbel_jax.training.config import ExperimentConfig, ObjectiveConfig

TUNING_FILE = "tuning.json"


@dataclasses.dataclass(frozen=True)
class TuneCell:
    """One grid point of one run's tuning, in ``WORKDIR/<run>/tune/<point>``."""

    run: str
    point: tuple[tuple[str, float], ...]  # (ObjectiveConfig field, value) pairs
    metric: str  # the held-out metric that chooses

    @property
    def values(self) -> dict[str, float]:
        return dict(self.point)

    @property
    def name(self) -> str:
        return f"{self.run}/tune/{point_label(self.values)}"


def point_label(values: dict[str, float]) -> str:
    """``{"theta": 1.0, "temperature_gold": 0.1}`` -> ``"theta=1,temperature_gold=0.1"``."""
    return ",".join(f"{name}={value:g}" for name, value in values.items())


def parse_grid_overrides(assignments: list[str]) -> dict[str, tuple[float, ...]]:
    """``["tau=0.5,1"]`` -> ``{"tau": (0.5, 1.0)}`` (``reproduce --tune_grid``)."""
    fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    overrides = {}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        if name not in fields or not text:
            raise ValueError(f"--tune_grid {assignment!r}: expected FIELD=V1,V2,... with "
                             "FIELD an objective setting (e.g. tau=0.5,1)")
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--tune_grid {assignment!r}: the values must be numbers") from None
        if not all(v > 0 for v in values):
            raise ValueError(f"--tune_grid {assignment!r}: temperatures must be > 0")
        overrides[name] = values
    return overrides


def plan_tuning(rows: list[PaperRow], tables: list[str],
                overrides: dict[str, tuple[float, ...]] | None = None) -> list[TuneCell]:
    """The tuning cells of the tuned runs of ``tables``, each grid with ``overrides``
    replacing the values of the fields it tunes; an override no grid uses is an error."""
    overrides = overrides or {}
    runs = {row.run for row in rows if row.table in tables}
    cells, used = [], set()
    for run, (grid, metric) in tuned_runs(rows).items():
        if run not in runs:
            continue
        for field, values in overrides.items():
            if field in grid.fields:
                grid = grid.replace_axis(field, values)
                used.add(field)
        cells += [TuneCell(run, tuple(point.items()), metric) for point in grid.points()]
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"--tune_grid {', '.join(unused)}: no tuned run of these tables "
                         "tunes it")
    return cells


def tune_experiment(experiment: ExperimentConfig, values: dict[str, float],
                    questions: int, *, num_steps: int = 0) -> ExperimentConfig:
    """``experiment`` at one grid point, trained on its training split less the first
    ``questions`` questions (for ``num_steps`` steps; 0: the experiment's) and evaluated on
    those (no mining)."""
    data = experiment.data
    if not data.source.startswith("tfds:"):
        raise ValueError(f"tuning needs a prepared (tfds) dataset to hold questions out of; "
                         f"data.source={data.source!r}")
    if questions < 1:
        raise ValueError(f"--tune_questions={questions} must be >= 1")
    split = data.train_split
    data = dataclasses.replace(data, train_split=f"{split}[{questions}:]",
                               eval_split=f"{split}[:{questions}]", num_eval=questions,
                               num_mining=0)
    train = experiment.train
    train = dataclasses.replace(train, seed=0, num_steps=num_steps or train.num_steps,
                                objective=dataclasses.replace(train.objective, **values))
    return dataclasses.replace(experiment, data=data, train=train)


def held_out_text(questions: int) -> str:
    """How ``tuning.json`` and the tables name the tuning questions."""
    return (f"the training split's first {questions} questions" if questions != 1 else
            "the training split's first question")


def choose(values: list[float]) -> int:
    """The index of the best value (higher is better; ties: the earlier point)."""
    bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(v)]
    if bad:
        raise ValueError(f"grid point(s) {bad} have no finite held-out value")
    return max(range(len(values)), key=lambda i: (values[i], -i))


def record_choice(workdir: pathlib.Path, run: str, cells: list[TuneCell],
                  questions: str, *, write: bool = True) -> dict | None:
    """Choose among ``run``'s finished tuning ``cells`` and write ``tuning.json`` (whole, or
    not at all) when ``write``; None (and nothing written) while a point has no
    ``eval.json`` yet. Every process of a multi-host run chooses the same point from the
    same files; only one should write (``write``)."""
    cells = [c for c in cells if c.run == run]
    evaluations = []
    for cell in cells:
        text = run_folder.read_text(workdir / cell.name / "eval.json")
        if text is None:
            return None
        evaluations.append(json.loads(text))
    metric = cells[0].metric
    missing = [c.name for c, e in zip(cells, evaluations, strict=True) if metric not in e]
    if missing:
        raise ValueError(f"{', '.join(missing)}: eval.json has no {metric!r}, the metric "
                         "that chooses")
    values = [e[metric] for e in evaluations]
    best = choose(values)
    record = {"run": run, "metric": metric, "questions": questions,
              "grid": [{"cell": c.name, "values": c.values, metric: v}
                       for c, v in zip(cells, values, strict=True)],
              "chosen": cells[best].values}
    if write:
        run_folder.write_text(workdir / run / TUNING_FILE, json.dumps(record, indent=2) + "\n")
    return record


def read_choice(folder: pathlib.Path) -> dict | None:
    """The run's ``tuning.json`` (its ``chosen`` values and grid), or None if not tuned."""
    path = folder / TUNING_FILE
    text = run_folder.read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def apply_choice(experiment: ExperimentConfig, chosen: dict[str, float]) -> ExperimentConfig:
    """``experiment`` with the chosen objective settings."""
    objective = dataclasses.replace(experiment.train.objective, **chosen)
    return dataclasses.replace(experiment, train=dataclasses.replace(experiment.train,
                                                                     objective=objective))

