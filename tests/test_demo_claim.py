"""The demo's claim at reduced size (issues 14 and 21): on the same frozen reader, G-Rerank keeps
the bridge in its held-out top 5 (Recall@5 at least 90%) in every one of 3 seeds, where PDist
with a sharp target drops it.

The demo's world and reader, 64 held-out questions, two methods, no tuning (G-Rerank at
tau = 1, PDist at theta = 1, T = 0.1: points of the demo's grid). It tests the mechanism the
demo is about, a per-passage target with a sharp temperature against the reader's joint
signal; it does not claim G-Rerank beats a tuned PDist (at the T = 1 the demo's tuning chose,
PDist kept the bridge in 94.2 +- 5.4% of questions on the default path, 35.0 +- 10.0% on one
CPU: docs/demo.md, "The whole demo on other float paths").

Why it should hold on any machine: read alone, the bridge names no city, so PDist's sharp
target ranks it below the 3-7 answer-like passages and keeps it only where they and the trap
leave room in the top 5 (about 21% of questions). G-Rerank keeps it where its frozen reader
needs the bridge at full mask weight; with the demo's 10,000 reader steps every float path
measured gave 100% in every seed (docs/demo.md, "The fix: train the reader to the end"),
where 2,500-step readers gave anything from PDist's floor to 100% depending on the path.
So the test asks G-Rerank for at least 90% in every seed and more than PDist in every seed.
It runs in a subprocess with XLA's default settings on one device, as `make demo` runs, not
with the test suite's flags (tests/conftest.py), so that it measures what `make demo` does;
measured there per seed (`python tests/test_demo_claim.py` at 24b17b2): G-Rerank 100 / 100 /
100, PDist 21.9 / 21.9 / 21.9. It is deterministic on a given machine.

``python tests/test_demo_claim.py`` prints the measurement as one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = {"G-Rerank": {"tau": 1.0}, "PDist": {"theta": 1.0, "temperature_gold": 0.1}}
SEEDS = 3


def bridge_recalls() -> dict[str, list[float]]:
    """``{method: [held-out bridge Recall@5 of each seed]}`` at the reduced demo size."""
    from experiments import demo, demo_float_path

    config = demo.DemoConfig(num_eval=64, num_dev=8, seeds=SEEDS, ks=(5,), tune=False,
                             methods=tuple(SETTINGS))
    setup = demo_float_path.train_frozen_reader(config)
    return {method: demo_float_path.bridge_recall_per_seed(setup, method, point, seeds=SEEDS,
                                                           k=5)
            for method, point in SETTINGS.items()}


def _demo_environment() -> dict[str, str]:
    """This process's environment without the XLA flags tests/conftest.py added."""
    from tests.conftest import TEST_XLA_FLAGS

    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if flag.split("=")[0] not in TEST_XLA_FLAGS]
    return {**os.environ, "XLA_FLAGS": " ".join(flags), "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_g_rerank_keeps_the_bridge_that_pdist_drops():
    result = subprocess.run([sys.executable, __file__], env=_demo_environment(), cwd=ROOT,
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    bridge = json.loads(result.stdout.strip().splitlines()[-1])
    print(bridge)  # shown with -s: the measured margins
    for g_rerank, pdist in zip(bridge["G-Rerank"], bridge["PDist"], strict=True):
        assert g_rerank >= 0.9 and g_rerank > pdist, bridge


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(bridge_recalls()))
