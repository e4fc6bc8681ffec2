"""Hooks of the step loop (``loop.run_steps``): functions run after chosen steps, such as the
held-out evaluation that keeps the best reranker checkpoint.

A hook is any callable ``hook(step, state, metrics)`` with two attributes: ``every`` (it runs
after every step that is a multiple of it; 0: never by count) and ``at_end`` (it also runs
after the run's final step, ``end`` of ``run_steps``; not after an early stop). ``step`` is the
number of steps done, ``state`` what the step function threads through (for ``loop.train``, a
``loop.RankerState``) and ``metrics`` the host values of the step's metrics (``{"step",
"loss", ...}``), already checked to be finite. Hooks given to ``loop.train`` may also have
``open(context)`` (a :class:`TrainContext`, before the first step) and ``close()``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from gumbel_jax.training.run_folder import run_path


@dataclasses.dataclass(frozen=True)
class Hook:
    """A plain function as a hook: ``Hook(fn, every=10, at_end=True)``."""

    fn: Callable[[int, Any, dict], Any]
    every: int = 0
    at_end: bool = False

    def __call__(self, step: int, state, metrics: dict):
        return self.fn(step, state, metrics)


def is_due(hook, step: int, end: int) -> bool:
    """Whether ``hook`` runs after ``step`` of a run that ends at ``end``."""
    return bool((hook.every and step % hook.every == 0) or (hook.at_end and step == end))


@dataclasses.dataclass(frozen=True)
class TrainContext:
    """What ``loop.train`` tells its hooks before the first step."""

    workdir: epath.Path  # absolute, or a gs:// URL (training.run_folder.run_path)
    # The trained model's graph: nnx.merge(ranker_graph, state.params) is the model being
    # trained (the reranker; the reader itself when a reader trains).
    ranker_graph: Any
    reader: Any  # the frozen reader module (None when the reader is what trains)
    log: Callable[[int, dict], None]  # log(step, {"name": value}) -> metrics.jsonl, TensorBoard


def lower_is_better(metric: str) -> bool:
    """Losses are minimised; every other metric (recall, NDCG, MRR, EM, F1) is maximised."""
    return "loss" in metric


class BestCheckpoint:
    """The parameters with the best value of ``metric`` so far, in ``directory`` (an orbax
    CheckpointManager keeping one step: the parameters and a JSON item with the metrics).

    Only improvements are written, so one save per new best. The best value so far is read
    back from the saved checkpoint when a run resumes (a run replaying steps after a restart
    finds the same values, none strictly better, and keeps the saved one). A saved best of
    another metric is deleted.
    """

    def __init__(self, directory, metric: str):
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                               enable_async_checkpointing=False)
        self.metric = metric
        self.manager = ocp.CheckpointManager(run_path(directory),
                                             options=options, item_names=("params", "metrics"))
        self.step, self.value = None, None
        saved = read_best(directory, self.manager)
        if saved is not None and saved["metric"] == metric:
            self.step, self.value = saved["step"], saved["value"]
        elif saved is not None:  # chosen by another metric: not comparable, start afresh
            self.manager.delete(saved["step"])

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        return value < self.value if lower_is_better(self.metric) else value > self.value

    def offer(self, step: int, params, metrics: dict) -> bool:
        """Save ``params`` if ``metrics[self.metric]`` beats the best so far; True if saved."""
        value = float(metrics[self.metric])
        if not self.improves(value):
            return False
        record = {"step": step, "metric": self.metric, "value": value,
                  "metrics": {name: float(v) for name, v in metrics.items()}}
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), metrics=ocp.args.JsonSave(record)),
            force=True)
        self.manager.wait_until_finished()
        self.step, self.value = step, value
        return True

    def close(self) -> None:
        self.manager.close()


def read_best(directory, manager=None) -> dict | None:
    """``{"step", "metric", "value", "metrics"}`` of the best checkpoint in ``directory``;
    None if there is none."""
    own = manager is None
    if own:
        manager = ocp.CheckpointManager(run_path(directory),
                                        item_names=("params", "metrics"))
    try:
        step = manager.latest_step()
        if step is None:
            return None
        return dict(manager.restore(step, args=ocp.args.Composite(
            metrics=ocp.args.JsonRestore()))["metrics"])
    finally:
        if own:
            manager.close()


def load_best(workdir, ranker) -> dict:
    """Load the best reranker of a run (``<workdir>/best``) into ``ranker`` (in place); return
    its record (``{"step", "metric", "value", "metrics"}``)."""
    directory = run_path(workdir) / "best"
    manager = ocp.CheckpointManager(directory, item_names=("params", "metrics"))
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{directory}: no best checkpoint (was best_metric set?)")
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(nnx.state(ranker)),
            metrics=ocp.args.JsonRestore()))
    finally:
        manager.close()
    nnx.update(ranker, restored["params"])
    return dict(restored["metrics"])


class HeldOutEval:
    """A ``loop.train`` hook: every ``every`` steps and after the last one, ``evaluate_fn(ranker,
    reader) -> {metric: value}`` on the current reranker; the values go to metrics.jsonl and
    TensorBoard as ``eval/<metric>``, and with ``best_metric`` the best reranker is kept in
    ``<workdir>/best`` (:class:`BestCheckpoint`; :func:`load_best` loads it)."""

    at_end = True

    def __init__(self, evaluate_fn: Callable[[Any, Any], dict], *, every: int,
                 best_metric: str = ""):
        if every < 1:
            raise ValueError(f"every={every} must be >= 1")
        self.evaluate_fn, self.every, self.best_metric = evaluate_fn, every, best_metric
        self.context, self.best = None, None

    def open(self, context: TrainContext) -> None:
        self.context = context
        if self.best_metric:
            self.best = BestCheckpoint(context.workdir / "best", self.best_metric)

    def __call__(self, step: int, state, metrics: dict) -> dict:
        if self.context is None:
            raise RuntimeError("HeldOutEval runs inside loop.train (it needs open(context))")
        ranker = nnx.merge(self.context.ranker_graph, state.params)
        results = dict(self.evaluate_fn(ranker, self.context.reader))
        if self.best is not None:
            if self.best_metric not in results:
                raise ValueError(f"best_metric={self.best_metric!r} is not among the held-out "
                                 f"metrics {sorted(results)}")
            self.best.offer(step, state.params, results)
        self.context.log(step, {f"eval/{name}": value for name, value in results.items()})
        return results

    def close(self) -> None:
        if self.best is not None:
            self.best.close()


def held_out_eval_hook(records, featurize, *, k: int, batch_size: int, every: int,
                       best_metric: str = "", tokenizer=None,
                       max_answer_length: int = 16, num_beams: int = 1) -> HeldOutEval:
    """Evaluate on held-out ``records`` every ``every`` steps (``training.evaluation.evaluate``:
    ranking metrics; EM / F1 too when the reader's ``tokenizer`` is given) and keep the best
    reranker by ``best_metric`` ("": keep none)."""
    from gumbel_jax.training.evaluation import evaluate

    def evaluate_fn(ranker, reader):
        return evaluate(ranker, reader, records, featurize, k=k, batch_size=batch_size,
                        tokenizer=tokenizer, max_answer_length=max_answer_length,
                        num_beams=num_beams)["metrics"]

    return HeldOutEval(evaluate_fn, every=every, best_metric=best_metric)
