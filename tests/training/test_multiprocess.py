"""Several processes (hosts) of one run, on one machine, through JAX's own distributed runtime:
2 processes x 2 simulated CPU devices, gloo collectives, a coordinator on 127.0.0.1. They run
the real command lines (``experiments.train``, ``experiments.reproduce`` with
``--distributed``): training with per-process shards of every global batch, checkpoints, a
preemption notice (SIGTERM) to one process that stops both after the same step, resume,
held-out evaluation split over the processes and gathered, the best checkpoint, and a grid of
two cells with barriers between them. Each result must equal a one-process run within the
sharded-step tolerance of tests/test_sharding.py (sharded sums round differently).

Every subprocess has a deadline; on failure or timeout both process groups are killed."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import reproduce
from experiments import train as train_cli

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROCESSES = 2
CONFIG = "experiments/configs/synthetic_g_rerank.py"
SMALL = ["data.num_train=24", "data.num_eval=8", "data.batch_size=4", "train.num_steps=30",
         "train.checkpoint_every=4", "train.eval_every=10", "train.best_metric=mrr",
         "model.d_model=16", "model.num_layers=1"]
DEADLINE_S = 300  # per launch of both processes (a loaded 2-core machine compiles slowly)


def _sets(settings):
    return sum((["--set", s] for s in settings), [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment() -> dict:
    """2 simulated devices per process, gloo CPU collectives; the compilation cache of the
    test run (conftest) is inherited, so later launches read back what earlier ones built."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    return env


def _launch(tmp_path, name: str, command: list[str]) -> list[subprocess.Popen]:
    """Start ``command`` as processes 0 and 1 of one distributed run, each in its own
    process group, output in files (a full pipe would block a process)."""
    port = _free_port()
    processes = []
    for index in range(PROCESSES):
        out = open(tmp_path / f"{name}.{index}.out", "w")
        err = open(tmp_path / f"{name}.{index}.err", "w")
        processes.append(subprocess.Popen(
            [sys.executable, *command, "--distributed", "--coordinator", f"127.0.0.1:{port}",
             "--num_processes", str(PROCESSES), "--process_id", str(index)],
            cwd=REPO, env=_environment(), stdout=out, stderr=err, start_new_session=True))
    return processes


def _finish(tmp_path, name: str, processes) -> list[str]:
    """Wait for both processes (until the deadline); their outputs. Any failure kills both
    process groups and shows their logs."""
    deadline = time.monotonic() + DEADLINE_S
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        failed = [p.returncode for p in processes if p.returncode != 0]
    except subprocess.TimeoutExpired:
        failed = ["timeout"]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    logs = [(tmp_path / f"{name}.{i}.out").read_text() for i in range(PROCESSES)]
    if failed:
        errors = [(tmp_path / f"{name}.{i}.err").read_text()[-3000:] for i in range(PROCESSES)]
        pytest.fail(f"{name}: {failed}\n" + "\n".join(
            f"--- process {i} ---\n{logs[i][-2000:]}\n{errors[i]}" for i in range(PROCESSES)))
    return logs


def _printed_json(log: str) -> dict:
    """The metrics the train command prints last (JAX's gloo lines come before)."""
    return json.loads(log[log.index("{\n"):])


def _steps_and_losses(workdir):
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    rows = [x for x in lines if "loss" in x]
    return [x["step"] for x in rows], [x["loss"] for x in rows]


def _wait_for_steps(workdir, steps: int, processes) -> None:
    path = workdir / "metrics.jsonl"
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
        if path.is_file() and len(path.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)


def test_two_processes_train_stop_together_resume_and_evaluate_as_one(tmp_path, capsys):
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert train_cli.main(["--config", CONFIG, "--workdir", str(single), *_sets(SMALL)]) == 0
    expected = _printed_json(capsys.readouterr().out)

    command = ["-m", "experiments.train", "--config", CONFIG, "--workdir", str(multi),
               *_sets(SMALL)]
    processes = _launch(tmp_path, "preempted", command)
    _wait_for_steps(multi, 2, processes)
    processes[1].send_signal(signal.SIGTERM)  # a preemption notice to one host only
    stopped = [_printed_json(log) for log in _finish(tmp_path, "preempted", processes)]
    step = stopped[0]["step"]
    assert all(s["preempted"] and s["step"] == step for s in stopped)  # the same step
    assert 2 <= step < 30
    checkpoints = sorted(int(p.name) for p in (multi / "checkpoints").iterdir()
                         if p.name.isdigit())
    assert checkpoints[-1] == step  # saved where both stopped
    assert not (multi / "eval.json").exists()

    finished = [_printed_json(log) for log in
                _finish(tmp_path, "resumed", _launch(tmp_path, "resumed", command))]
    assert finished[0] == {**finished[1], "step_s": finished[0]["step_s"]}  # same on both
    steps, losses = _steps_and_losses(multi)
    assert steps == list(range(1, 31))  # resumed after the stop: no step repeated or lost
    np.testing.assert_allclose(losses, _steps_and_losses(single)[1], rtol=1e-5)
    for name in ("recall@5", "mrr", "indirect_recall@5", "em", "f1"):
        assert finished[0][name] == pytest.approx(expected[name], abs=1e-6), name
    # The evaluation split over the processes and gathered: every question once, in order.
    ids = lambda folder: [json.loads(x)["id"] for x in
                          (folder / "eval_predictions.jsonl").read_text().splitlines()]
    assert ids(multi) == ids(single) and finished[0]["num_questions"] == 8
    best = lambda folder: sorted(p.name for p in (folder / "best").iterdir())
    assert best(multi) == best(single)  # the same step kept as the best


def test_a_grid_of_two_cells_over_two_processes_equals_one_process(tmp_path, capsys):
    from tests.test_paper_grid import TINY

    settings = [*TINY, "data.source=synthetic", "data.num_train=16", "data.batch_size=4",
                "train.num_steps=4"]
    grid = ["--table", "hotpotqa", "--cell", "hotpotqa_g_rerank", "--seeds", "2",
            *_sets(settings)]
    assert reproduce.main([*grid, "--workdir", str(tmp_path / "single")]) == 0
    capsys.readouterr()
    logs = _finish(tmp_path, "grid", _launch(tmp_path, "grid", [
        "-m", "experiments.reproduce", *grid, "--workdir", str(tmp_path / "multi")]))
    for log in logs:  # both processes ran both cells, in step
        assert re.findall(r"\[\d/2\] (\S+): done", log) == [
            "hotpotqa_g_rerank/seed0", "hotpotqa_g_rerank/seed1"]
    for seed in ("seed0", "seed1"):
        single, multi = (json.loads((tmp_path / name / "hotpotqa_g_rerank" / seed /
                                     "eval.json").read_text()) for name in ("single", "multi"))
        assert multi.keys() == single.keys()
        for name, value in single.items():
            assert multi[name] == pytest.approx(value, abs=1e-6, nan_ok=True), (seed, name)
