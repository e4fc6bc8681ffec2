"""The step loop and the training shell around it. ``run_steps`` runs a jitted step over
batches with per-step keys, waits for the device every ``log_every`` steps (metrics, a stop on
a non-finite loss naming the step) and runs hooks (``training.hooks``); it serves reranker
training, reader training and the demo. ``train`` adds what a run needs: automatic exact
resume from orbax checkpoints (reranker parameters, optimizer state, step, input-pipeline
state, config), metrics.jsonl and TensorBoard, preemption, placement on a mesh."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gumbel_jax import sharding
from gumbel_jax.training import multihost, packing
from gumbel_jax.training.config import ObjectiveConfig, OptimizerConfig, TrainConfig
from gumbel_jax.training.hooks import Hook, TrainContext, is_due
from gumbel_jax.training.run_folder import is_remote, run_path, write_text
from gumbel_jax.training.step import make_optimizer, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def checkpoint_manager(workdir, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """The run's orbax manager: ``workdir/checkpoints`` (a local path or ``gs://``), items
    (state, data, config)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(run_path(workdir) / "checkpoints",
                                 options=options, item_names=("state", "data", "config"))


def restore_latest(manager: ocp.CheckpointManager, state: RankerState, iterator=None
                   ) -> tuple[int, RankerState]:
    """``(step, state)`` of the latest complete checkpoint (a half-written one is ignored by
    orbax), restored onto ``state``'s structure; ``(0, state)`` when there is none. With an
    ``iterator`` (grain) its position is restored too, for exact resume."""
    step = manager.latest_step() or 0
    if not step:
        return 0, state
    items = {"state": ocp.args.StandardRestore(state._asdict())}
    if iterator is not None:
        items["data"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    if iterator is not None:
        iterator.set_state(restored["data"])
    return step, RankerState(**restored["state"])


class RankerState(NamedTuple):
    """What training threads from step to step: the trained model's parameters and optimizer
    state (the reranker's, whose reader is frozen and not here; or the reader's, when a
    reader trains)."""

    params: Any
    opt_state: Any


def ranker_step(train_step, reader_state):
    """``train_step`` of ``step.make_train_step`` as a ``run_steps`` step function:
    ``(RankerState, batch, key) -> (RankerState, {"loss", "grad_norm"})``."""

    def step(state: RankerState, batch, key):
        params, opt_state, out = train_step(state.params, state.opt_state, reader_state, batch,
                                            key)
        return RankerState(params, opt_state), out

    return step


def run_steps(step_fn, state, batches, *, start: int, end: int, base_key, log_every: int = 1,
              hooks=(), on_log=None, stop=None, wait_every_step: bool = False):
    """Run steps ``start + 1 .. end`` of ``step_fn(state, batch, key) -> (state, metrics)``
    (``metrics``: scalar arrays, ``"loss"`` among them) on batches from the iterator
    ``batches``; step ``s`` gets the key ``fold_in(base_key, s - 1)``, so ``start`` .. N then
    N .. 2N equals 0 .. 2N. ``state`` and ``step_fn`` are opaque here (a reader's trainer
    passes its own).

    The host waits for the device only at a sync: after every ``log_every``-th step, the last
    step, a stop, and any step where a hook is due. There every pending step's metrics are
    fetched at once: ``on_log(rows, seconds)`` receives them (one ``{"step", "loss", ...}`` dict
    of floats per step since the last sync, and the seconds they took), then a non-finite loss
    raises :class:`NonFiniteLossError` naming the first such step (at most ``log_every - 1``
    steps after it ran), and only then the hooks due run (``hooks.is_due``), so no hook sees a
    state that followed a non-finite loss. ``stop(step)``, asked after every step (it must not
    wait for the device), ends the run after that step. ``wait_every_step`` blocks on each
    step's result without fetching it (see ``train``).

    Returns ``(state, metrics)``: the final state and the host metrics of the last step run
    (``{}`` if none ran).
    """
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be >= 1")
    pending, metrics = [], {}
    window_started = time.perf_counter()
    for step in range(start + 1, end + 1):
        state, out = step_fn(state, next(batches), jax.random.fold_in(base_key, step - 1))
        if wait_every_step:
            jax.block_until_ready(out)
        pending.append(out)
        stopping = step == end or (stop is not None and stop(step))
        due = [hook for hook in hooks if is_due(hook, step, end)]
        if not (stopping or due or step % log_every == 0):
            continue
        rows = [{"step": s, **{name: float(v) for name, v in values.items()}}
                for s, values in zip(range(step - len(pending) + 1, step + 1),
                                     jax.device_get(pending), strict=True)]
        pending = []
        if on_log is not None:
            on_log(rows, time.perf_counter() - window_started)
        for row in rows:
            if not math.isfinite(row["loss"]):
                raise NonFiniteLossError(f"non-finite loss ({row['loss']}) at step {row['step']}")
        metrics = rows[-1]
        for hook in due:
            hook(step, state, metrics)
        window_started = time.perf_counter()
        if stopping:
            break
    return state, metrics


def train(config: TrainConfig, *, ranker, reader, dataset, workdir,
          stop_at: int | None = None, mesh=None, hooks=(), reranker_packing_bucket: float = 0.0
          ) -> dict:
    """Train ``ranker`` (a Flax NNX module, updated in place at the end) against the frozen
    ``reader`` on batches from ``dataset`` (a grain IterDataset), in :func:`train_model`'s
    shell (checkpoints, metrics, preemption, placement on a mesh; see there). The hooks see a
    :class:`RankerState` of the reranker; with a ``mesh`` the frozen reader is placed on it by
    ``sharding.PARAMETER_RULES`` too. ``reranker_packing_bucket`` (a RankT5's bucket width,
    0: off; ``training.packing``) packs the reranker's encoder at a capacity the host picks
    per batch. A packed encoder packs each device's block of questions on its own. Returns
    the metrics of the last line written for training steps."""
    ranker_graph, _ = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    groups = sharding.batch_shards(mesh)
    if getattr(reader, "token_capacity", 0.0):  # a packed reader packs per device's block
        reader_graph = packing.graph_with(reader, packing_groups=groups)

    def step_of(graph):
        return _optimizer_and_step(graph, reader_graph, config.optimizer, config.num_steps,
                                   config.objective)

    tx, train_step = step_of(ranker_graph)
    if mesh is not None:
        reader_state = sharding.shard_parameters(reader_state, mesh)
    step_fn, batch_plan = ranker_step(train_step, reader_state), None
    if reranker_packing_bucket:
        check_reranker_packing(ranker, reranker_packing_bucket)
        steps = packing.PackedRankerSteps(ranker, lambda graph: step_of(graph)[1], groups)
        step_fn = planned_ranker_step(steps, reader_state)
        batch_plan = functools.partial(packing.host_capacity, width=reranker_packing_bucket,
                                       groups=groups)
    return train_model(config, model=ranker, tx=tx, step_fn=step_fn, dataset=dataset,
                       workdir=workdir, reader=reader, stop_at=stop_at, mesh=mesh, hooks=hooks,
                       batch_plan=batch_plan)


def check_reranker_packing(ranker, bucket: float) -> None:
    """What ``reranker_packing_bucket`` needs, refused by name: a RankT5, one process."""
    if not hasattr(ranker, "capacity_checked"):
        raise ValueError(f"reranker_packing_bucket={bucket} packs a RankT5 encoder; "
                         f"{type(ranker).__name__} has none (set 0)")
    if jax.process_count() > 1:
        raise ValueError(f"reranker_packing_bucket={bucket} needs one process: every host "
                         "would have to agree on each batch's capacity (not built)")


def planned_ranker_step(steps: packing.PackedRankerSteps, reader_state):
    """:func:`ranker_step` for :class:`packing.PlannedBatch` batches: each runs the step
    compiled for its capacity."""

    def step(state: RankerState, planned: packing.PlannedBatch, key):
        return ranker_step(steps(planned.capacity), reader_state)(state, planned.batch, key)

    return step


def train_model(config: TrainConfig, *, model, tx, step_fn, dataset, workdir, reader=None,
                stop_at: int | None = None, mesh=None, hooks=(), batch_plan=None) -> dict:
    """The training shell around :func:`run_steps`, for any trained module: ``model`` (its
    parameters updated in place at the end) trains by ``step_fn(RankerState, batch, key) ->
    (RankerState, {"loss", ...})`` with the optimizer ``tx`` on batches from ``dataset``.
    Reranker training (:func:`train`) and reader training (``training.reader``) both run here.

    Resumes automatically from the latest complete checkpoint in ``workdir`` (a half-written
    one is ignored by orbax): parameters, optimizer state and the data iterator continue
    exactly, and the per-step keys are ``fold_in(seed key, step)``, so N + N steps equal 2N.
    metrics.jsonl is first cut back to the restored step, so a run killed after its last
    checkpoint logs no step twice. It gets one line per ``config.log_every`` steps (the mean
    of each metric over them) and the hooks' lines (``eval/...``); TensorBoard gets the same
    when installed. ``stop_at`` ends the run after that step with a checkpoint, as a
    preemption would. A SIGTERM does the same after the step in flight (``metrics
    ["preempted"]`` is True); with several processes, a SIGTERM to any of them stops every one
    after the same step (``multihost.Preemption``). ``workdir`` may be local or ``gs://``
    (``training.run_folder``). ``hooks`` (see ``training.hooks``, e.g. ``held_out_eval_hook``)
    run after the steps they choose, before that step's checkpoint, and see a
    :class:`RankerState` of ``model``; their context names ``model``'s graph and ``reader``
    (the frozen reader, or None). With a ``mesh`` (``gumbel_jax.sharding.make_mesh``) batches
    are split over its (data, fsdp) axes and parameters and optimizer state placed by
    ``sharding.PARAMETER_RULES``; a restore lands on whatever mesh is given.
    ``batch_plan`` (None: off) maps each host batch, before it is placed, to a choice the
    step function gets with it (a :class:`packing.PlannedBatch`).
    Returns the metrics of the last line written for training steps.
    """
    workdir = run_path(workdir)  # absolute, as orbax needs; or a gs:// URL
    workdir.mkdir(parents=True, exist_ok=True)
    graph, params = nnx.split(model)
    iterator = iter(dataset)
    manager = checkpoint_manager(workdir, config.max_to_keep)
    start, state = restore_latest(manager, RankerState(params, tx.init(params)), iterator)
    if mesh is not None:  # shardings from the fresh parameters, which carry the axis names
        state = _place_on_mesh(state, params, tx, mesh)
    shard = (lambda b: sharding.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
    place = shard if batch_plan is None else (
        lambda b: packing.PlannedBatch(shard(b), batch_plan(b)))
    log = _RunLog(workdir, start, config.num_steps)
    context = TrainContext(workdir=workdir, ranker_graph=graph, reader=reader, log=log.write)
    saved = [start]

    def save(step, state, _=None):
        _save(manager, step, state, iterator, config)
        log.flush()  # the log reaches the step a resume restarts from
        saved.append(step)

    try:
        for hook in hooks:
            getattr(hook, "open", lambda _: None)(context)
        with multihost.preemption_notice() as preemption:
            state, last = run_steps(
                step_fn, state, map(place, iterator),
                start=start, end=config.num_steps, base_key=jax.random.key(config.seed),
                log_every=config.log_every, on_log=log.train_rows,
                hooks=[*hooks, Hook(save, every=config.checkpoint_every)],
                stop=lambda step: step == stop_at or preemption.reached(step),
                wait_every_step=_collectives_on_cpu(mesh))
            if last and last["step"] != saved[-1]:  # the last step, a stop or a preemption
                save(last["step"], state)
            if last and preemption.noticed.is_set():
                log.last["preempted"] = True
    except NonFiniteLossError as error:
        raise NonFiniteLossError(f"{error}; metrics up to it are in {log.path}") from None
    finally:
        for hook in hooks:
            getattr(hook, "close", lambda: None)()
        log.close()
        manager.close()
    nnx.update(model, state.params)
    return log.last


def _collectives_on_cpu(mesh) -> bool:
    """Steps over several simulated CPU devices must not run ahead of the host: on jax <=
    0.11.2 back-to-back jitted steps with collectives can deadlock there."""
    return mesh is not None and mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def _place_on_mesh(state: RankerState, fresh_params, tx, mesh) -> RankerState:
    if jax.process_count() > 1:
        # A restored state sits on this process's devices, and JAX does not move arrays
        # between hosts: each process starts from a host copy (device_put then keeps the
        # shards of its own devices).
        state = jax.device_get(state)
    params = jax.device_put(state.params, sharding.parameter_shardings(fresh_params, mesh))
    # Optimizer state built from the placed parameters is sharded alike; a restored one is
    # moved onto those shardings.
    placed = jax.jit(tx.init)(params)
    on_mesh = lambda x: (x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding)
                         else sharding.replicated(mesh))  # e.g. the step count
    return RankerState(params, jax.device_put(state.opt_state, jax.tree.map(on_mesh, placed)))


class _RunLog:
    """metrics.jsonl (written by the first process only; every process trains) and
    TensorBoard, both cut back to ``start``, the restored step; the progress bar.

    On a disk each line is appended and flushed at once. An object store (``gs://``) cannot
    append: there the whole file is uploaded again at most every ``upload_seconds``, after
    every checkpoint (:meth:`flush`) and at the end, so a run killed without warning has its
    lines up to its last checkpoint, where it resumes. TensorBoard events are written for
    local run folders only (their writers append too)."""

    def __init__(self, workdir, start: int, total: int, *, upload_seconds: float = 30.0,
                 clock=time.monotonic):
        self.path = workdir / "metrics.jsonl"
        self.writes, self.remote = multihost.is_writer(), is_remote(workdir)
        self.lines = truncate_metrics(self.path, start) if self.writes else []
        self.file = open(self.path, "a") if self.writes and not self.remote else None
        self.events = (_tensorboard(workdir, start) if self.writes and not self.remote
                       else None)
        self.upload_seconds, self.clock = upload_seconds, clock
        self.uploaded = clock()
        self.progress = _progress(start, total)
        self.last = {}

    def write(self, step: int, values: dict) -> None:
        if not self.writes:
            return
        line = json.dumps({"step": step, **values})
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()
        else:
            self.lines.append(line)
            if self.clock() - self.uploaded >= self.upload_seconds:
                self.flush()
        if self.events is not None:
            for name, value in values.items():
                self.events.add_scalar(name if "/" in name else f"train/{name}", value, step)

    def flush(self) -> None:
        """Upload the whole log to an object store (on a disk every line is already there)."""
        if self.writes and self.remote:
            write_text(self.path, "".join(line + "\n" for line in self.lines))
            self.uploaded = self.clock()

    def train_rows(self, rows: list[dict], seconds: float) -> None:
        """One line for the steps since the last sync: their mean loss and gradient norm."""
        names = [name for name in rows[-1] if name != "step"]
        values = {name: math.fsum(row[name] for row in rows) / len(rows) for name in names}
        self.last = {"step": rows[-1]["step"], **values, "step_s": seconds / len(rows)}
        self.write(rows[-1]["step"], {**values, "step_s": self.last["step_s"]})
        self.progress.update(len(rows))
        self.progress.set_postfix(loss=f"{values['loss']:.4f}",
                                  steps_per_s=f"{len(rows) / max(seconds, 1e-9):.1f}")

    def close(self) -> None:
        self.progress.close()
        self.flush()
        if self.file is not None:
            self.file.close()
        if self.events is not None:
            self.events.close()


def truncate_metrics(path, step: int) -> list[str]:
    """Drop the lines of ``path`` (local or ``gs://``) past ``step`` (and a line cut short
    when a process was killed while writing it), by an atomic rewrite; the run then continues
    from ``step``. Returns the lines kept."""
    path = run_path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _line_step(line) is not None and _line_step(line) <= step]
    if kept != lines:
        write_text(path, "".join(line + "\n" for line in kept))
    return kept


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


@functools.lru_cache(maxsize=8)
def _optimizer_and_step(ranker_graph, reader_graph, optimizer: OptimizerConfig,
                        num_steps: int, objective: ObjectiveConfig):
    """One optimizer and jitted step per architecture and setting, so runs that differ only
    in their seed (a grid's cells) compile the step once per process."""
    tx = make_optimizer(optimizer, num_steps)
    return tx, make_train_step(ranker_graph, reader_graph, tx, objective)


def _progress(start: int, total: int):
    """A terminal progress bar with loss and throughput (quiet when not a terminal)."""
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def _tensorboard(workdir, start: int = 0):
    """A TensorBoard event writer when tensorboard is installed (through tensorboardX or
    torch); None otherwise. Metrics always go to metrics.jsonl as well. A resumed run purges
    the events past its restored step ``start``."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            writer = __import__(module, fromlist=["SummaryWriter"]).SummaryWriter
        except ImportError:
            continue
        return writer(str(workdir / "tensorboard"), purge_step=start + 1 if start else None)
    return None


def _save(manager, step, state: RankerState, iterator, config):
    config_json = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state._asdict()),
        data=ocp.args.JsonSave(iterator.get_state()),
        config=ocp.args.JsonSave(config_json)))
    manager.wait_until_finished()


def params_equal(a, b) -> bool:
    """Bitwise equality of two parameter trees (for resume tests)."""
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
