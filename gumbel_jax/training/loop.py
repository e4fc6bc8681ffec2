"""The training loop: resume from the run directory, one step at a time, metrics as JSON
lines, checkpoints with orbax (reranker parameters, optimizer state, step, input-pipeline
state, config), and a clear stop on a non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from gumbel_jax.training.config import TrainConfig
from gumbel_jax.training.step import make_optimizer, make_train_step


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def _manager(workdir: pathlib.Path, config: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager(workdir / "checkpoints", options=options,
                                 item_names=("state", "data", "config"))


def train(config: TrainConfig, *, ranker, reader, dataset, workdir,
          stop_at: int | None = None) -> dict:
    """Train ``ranker`` (a Flax NNX module, updated in place at the end) against the frozen
    ``reader`` on batches from ``dataset`` (a grain IterDataset).

    Resumes automatically from the latest complete checkpoint in ``workdir`` (a half-written
    one is ignored by orbax): parameters, optimizer state and the data iterator continue
    exactly, and the per-step keys are ``fold_in(seed key, step)``, so N + N steps equal 2N.
    ``stop_at`` ends the run after that step with a checkpoint, as a preemption would.
    Returns the last step's metrics.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ranker_graph, params = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    tx = make_optimizer(config.optimizer, config.num_steps)
    opt_state = tx.init(params)
    iterator = iter(dataset)
    manager = _manager(workdir, config)
    start = manager.latest_step() or 0
    if start:
        restored = manager.restore(start, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"params": params, "opt_state": opt_state}),
            data=ocp.args.JsonRestore()))
        params, opt_state = restored["state"]["params"], restored["state"]["opt_state"]
        iterator.set_state(restored["data"])
    train_step = make_train_step(ranker_graph, reader_graph, tx, config.objective)
    base_key = jax.random.key(config.seed)
    metrics = {}
    with open(workdir / "metrics.jsonl", "a") as log:
        for step in range(start, config.num_steps):
            batch = next(iterator)
            started = time.perf_counter()
            params, opt_state, out = train_step(params, opt_state, reader_state, batch,
                                                jax.random.fold_in(base_key, step))
            loss = float(out["loss"])  # waits for the step: no collective runs ahead
            metrics = {"step": step + 1, "loss": loss, "grad_norm": float(out["grad_norm"]),
                       "step_s": time.perf_counter() - started}
            log.write(json.dumps(metrics) + "\n")
            log.flush()
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss ({loss}) at step {step + 1}; "
                                         f"metrics up to it are in {workdir / 'metrics.jsonl'}")
            last = step + 1 == config.num_steps or step + 1 == stop_at
            if (step + 1) % config.checkpoint_every == 0 or last:
                _save(manager, step + 1, params, opt_state, iterator, config)
            if last:
                break
    manager.close()
    nnx.update(ranker, params)
    return metrics


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
