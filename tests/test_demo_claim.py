"""The demo's claim at reduced size (issue 21): on the same frozen reader, G-Rerank's held-out
bridge Recall@5 is at least PDist's in every one of 3 seeds and higher on their mean.

The demo's world and reader, 64 held-out questions, two methods, no tuning (G-Rerank at
tau = 1, PDist at theta = 1, T = 0.1: points of the demo's grid). It tests the mechanism the
demo is about, a per-passage target with a sharp temperature against the reader's joint
signal; it does not claim G-Rerank beats a tuned PDist (at the T = 1 the demo's tuning chose,
PDist kept the bridge in 92.0 +- 11.2% of questions).

Why the per-seed floor is robust: read alone, the bridge names no city, so PDist's target
ranks it below the 3-7 answer-like passages and keeps it only where they and the trap leave
room in the top 5 (about 21% of questions); G-Rerank's worst ranking seen is that same one.
The size of the lead is not robust across machines: whether G-Rerank keeps the bridge
depends on the frozen reader, whose training ends in a different function on each float
path (docs/demo.md, "Why G-Rerank was unstable"). So the test asks for a lead, not a size of
lead, and runs the claim in a subprocess with XLA's default settings on one device, as
`make demo` runs, not with the test suite's flags (tests/conftest.py): measured per seed,
G-Rerank 100 / 93.8 / 95.3 against PDist 21.9 / 21.9 / 21.9 there; with the suite's 8 host
devices 46.9 / 64.1 / 29.7, and with its -O0 backend as well 25.0 / 21.9 / 21.9 (a lead of
3 points in one seed). It is deterministic on a given machine.

``python tests/test_demo_claim.py`` prints the measurement as one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
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
        assert g_rerank >= pdist, bridge
    assert np.mean(bridge["G-Rerank"]) > np.mean(bridge["PDist"]), bridge


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(bridge_recalls()))
