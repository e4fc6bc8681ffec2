"""The training loop: resume from the run directory, one step at a time, metrics as JSON
lines, checkpoints with orbax (reranker parameters, optimizer state, step, input-pipeline
state, config), and a clear stop on a non-finite loss."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gumbel_jax import sharding
from gumbel_jax.training.config import ObjectiveConfig, OptimizerConfig, TrainConfig
from gumbel_jax.training.step import make_optimizer, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@contextlib.contextmanager
def _sigterm_flag():
    """A flag set by SIGTERM (preemption) while training; the previous handler comes back."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals can only be handled on the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def _manager(workdir: pathlib.Path, config: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options,
                                 item_names=("state", "data", "config"))


def train(config: TrainConfig, *, ranker, reader, dataset, workdir,
          stop_at: int | None = None, mesh=None) -> dict:
    """Train ``ranker`` (a Flax NNX module, updated in place at the end) against the frozen
    ``reader`` on batches from ``dataset`` (a grain IterDataset).

    Resumes automatically from the latest complete checkpoint in ``workdir`` (a half-written
    one is ignored by orbax): parameters, optimizer state and the data iterator continue
    exactly, and the per-step keys are ``fold_in(seed key, step)``, so N + N steps equal 2N.
    ``stop_at`` ends the run after that step with a checkpoint, as a preemption would. A
    SIGTERM does the same after the step in flight (``metrics["preempted"]`` is True).
    With a ``mesh`` (``gumbel_jax.sharding.make_mesh``) batches are split over its
    (data, fsdp) axes and parameters placed by ``sharding.PARAMETER_RULES``; a restore
    lands on whatever mesh is given.
    Returns the last step's metrics.
    """
    # orbax needs an absolute checkpoint path; library callers may pass a relative one.
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    ranker_graph, params = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    tx, train_step = _optimizer_and_step(ranker_graph, reader_graph, config.optimizer,
                                         config.num_steps, config.objective)
    opt_state = tx.init(params)
    iterator = iter(dataset)
    manager = _manager(workdir, config)
    if mesh is not None:  # from the fresh state, which carries the logical axis names
        param_shardings = sharding.parameter_shardings(params, mesh)
    start = manager.latest_step() or 0
    if start:
        restored = manager.restore(start, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"params": params, "opt_state": opt_state}),
            data=ocp.args.JsonRestore()))
        params, opt_state = restored["state"]["params"], restored["state"]["opt_state"]
        iterator.set_state(restored["data"])
    if mesh is not None:
        params = jax.device_put(params, param_shardings)
        reader_state = sharding.shard_parameters(reader_state, mesh)
        # Optimizer state built from the placed parameters is sharded alike; a restored one
        # is moved onto those shardings.
        placed = jax.jit(tx.init)(params)
        on_mesh = lambda x: (x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding)
                             else sharding.replicated(mesh))  # e.g. the step count
        opt_state = jax.device_put(opt_state, jax.tree.map(on_mesh, placed))
    place = (lambda b: sharding.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
    base_key = jax.random.key(config.seed)
    metrics = {}
    progress = _progress(start, config.num_steps)
    events = _tensorboard(workdir)
    # Every process trains; only the first writes the metrics file (orbax coordinates the
    # checkpoint writes of all processes itself).
    metrics_path = workdir / "metrics.jsonl" if jax.process_index() == 0 else os.devnull
    with open(metrics_path, "a") as log, _sigterm_flag() as preempted:
        for step in range(start, config.num_steps):
            batch = place(next(iterator))
            started = time.perf_counter()
            params, opt_state, out = train_step(params, opt_state, reader_state, batch,
                                                jax.random.fold_in(base_key, step))
            loss = float(out["loss"])  # waits for the step: no collective runs ahead
            metrics = {"step": step + 1, "loss": loss, "grad_norm": float(out["grad_norm"]),
                       "step_s": time.perf_counter() - started}
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", steps_per_s=f"{1 / metrics['step_s']:.1f}")
            if events is not None:
                events.add_scalar("train/loss", loss, step + 1)
                events.add_scalar("train/grad_norm", metrics["grad_norm"], step + 1)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss ({loss}) at step {step + 1}; "
                                         f"metrics up to it are in {workdir / 'metrics.jsonl'}")
            if preempted.is_set():
                metrics["preempted"] = True
            last = step + 1 in (config.num_steps, stop_at) or preempted.is_set()
            if (step + 1) % config.checkpoint_every == 0 or last:
                _save(manager, step + 1, params, opt_state, iterator, config)
            if last:
                break
    progress.close()
    if events is not None:
        events.close()
    manager.close()
    nnx.update(ranker, params)
    return metrics


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


def _tensorboard(workdir: pathlib.Path):
    """A TensorBoard event writer when tensorboard is installed (through tensorboardX or
    torch); None otherwise. Metrics always go to metrics.jsonl as well."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            writer = __import__(module, fromlist=["SummaryWriter"]).SummaryWriter
        except ImportError:
            continue
        return writer(str(workdir / "tensorboard"))
    return None


def _save(manager, step, params, opt_state, iterator, config):
    config_json = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
        data=ocp.args.JsonSave(iterator.get_state()),
        config=ocp.args.JsonSave(config_json)))
    manager.wait_until_finished()


def params_equal(a, b) -> bool:
    """Bitwise equality of two parameter trees (for resume tests)."""
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
