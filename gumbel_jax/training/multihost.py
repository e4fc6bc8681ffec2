"""What the processes (hosts) of one run do together: split work and gather its results, wait
for each other, let one write the shared files, stop together on a preemption. With one
process every function here is a no-op or the identity, so single-host code calls them
unconditionally."""

from __future__ import annotations

import contextlib
import json
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


def is_writer() -> bool:
    """Whether this process writes the run's shared files (the first one does; the others
    would race it on a shared folder)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier of the same ``name`` (a mismatch is an
    error naming it, rather than a silent drift between hosts)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def process_share(items: list) -> list:
    """This process's contiguous share of ``items`` (sizes differ by at most one), so that
    :func:`gather` in process order gives back ``items``' order."""
    bounds = np.linspace(0, len(items), jax.process_count() + 1).round().astype(int)
    index = jax.process_index()
    return items[bounds[index]:bounds[index + 1]]


def gather(values: list) -> list:
    """Every process's ``values`` (JSON-serialisable), concatenated in process order, on every
    process: the counterpart of :func:`process_share`."""
    if jax.process_count() == 1:
        return list(values)
    payload = np.frombuffer(json.dumps(values, default=_plain).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.int32(payload.size))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:payload.size] = payload
    everyone = multihost_utils.process_allgather(padded)
    return [value for row, size in zip(everyone, sizes, strict=True)
            for value in json.loads(row[:size].tobytes())]


def _plain(value):
    """numpy scalars (metrics computed with numpy) as Python numbers for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def local_copy(tree):
    """``tree`` with every array that spans several processes replaced by a full host copy
    (numpy), so this process can run a computation of its own on it (each scores its own
    share); arrays already on this process's devices are left as they are."""
    def spans_processes(x) -> bool:
        return isinstance(x, jax.Array) and not x.is_fully_addressable

    if not any(spans_processes(x) for x in jax.tree.leaves(tree)):
        return tree
    return jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True)
                        if spans_processes(x) else x, tree)


class Preemption:
    """Whether a preemption notice asks the run to stop after a step.

    One process: a SIGTERM sets a flag (installed by :func:`preemption_notice` on the main
    thread), and the run stops after the step in flight. Several processes: JAX's preemption
    sync point (``multihost_utils.reached_preemption_sync_point``): JAX's distributed runtime
    catches the SIGTERM of any process and tells the others, and every process answers True
    after the same step, so all save the same checkpoint and no collective is left waiting.
    ``reached(step)`` must then be asked by every process after every step, in order.
    """

    def __init__(self):
        self.noticed = threading.Event()
        self.synchronised = jax.process_count() > 1

    def reached(self, step: int) -> bool:
        if self.synchronised:
            if multihost_utils.reached_preemption_sync_point(step):
                self.noticed.set()
        return self.noticed.is_set()


@contextlib.contextmanager
def preemption_notice():
    """A :class:`Preemption` for the duration of a run; the previous SIGTERM handler comes
    back after it. Several processes: no Python handler, since it would replace the one of
    JAX's distributed runtime that shares the notice."""
    preemption = Preemption()
    if preemption.synchronised or threading.current_thread() is not threading.main_thread():
        yield preemption  # (signals can only be handled on the main thread)
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: preemption.noticed.set())
    try:
        yield preemption
    finally:
        signal.signal(signal.SIGTERM, previous)
