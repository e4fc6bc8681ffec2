"""experiments/demo_float_path.py: the reader's NLL by bridge weight and the per-seed bridge
recall, written with the float path's XLA flags."""

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import demo, demo_float_path
from gumbel_jax import ops
from gumbel_jax.data.pipeline import stack_examples
from gumbel_jax.models import FiDReader
from gumbel_jax.training.reader import reader_loss


def test_bridge_weight_nll_masks_what_it_names():
    """At w = 0 the reader reads the answer-like passages alone; at w = 1 the bridge too; in
    between, neither (the weight reaches the reader)."""
    config = demo.DemoConfig(num_train=8, num_eval=6, num_dev=2)
    _, _, held_out, tokenizer, featurize = demo.build_data(config)
    batch = stack_examples([featurize(record) for record in held_out])
    roles = np.array([record.metadata["roles"] for record in held_out])
    reader = FiDReader.random(demo.tiny_t5(config, len(tokenizer), encoder_layers=1,
                                           decoder_layers=2), seed=0)
    nll = demo_float_path.bridge_weight_nll(reader, batch, roles, weights=(0.0, 0.3, 1.0))
    answer_like = (roles == "answer") | (roles == "distractor")
    device_batch = {name: jnp.asarray(value) for name, value in batch.items()}
    read = lambda mask: float(reader_loss(reader, device_batch, ops.mask_to_log_mask(
        jnp.asarray(mask, jnp.float32))))
    assert nll[0.0] == pytest.approx(read(answer_like), rel=1e-6)
    assert nll[1.0] == pytest.approx(read(answer_like | (roles == "bridge")), rel=1e-6)
    assert nll[0.0] != pytest.approx(nll[0.3], rel=1e-6)
    assert nll[1.0] != pytest.approx(nll[0.3], rel=1e-6)


@pytest.mark.slow
def test_writes_the_float_path_report(tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    assert demo_float_path.main(["--num_train", "48", "--num_eval", "12", "--reader_steps", "4",
                                 "--ranker_steps", "2", "--batch_size", "8", "--seeds", "2",
                                 "--relaxations", "l2x", "straight_through",
                                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["xla_flags"].split() == os.environ["XLA_FLAGS"].split()
    assert set(report["gold_nll_by_bridge_weight"]) == {"0", "0.1", "0.3", "1"}
    assert all(np.isfinite(list(report["gold_nll_by_bridge_weight"].values())))
    recall = report["g_rerank_bridge_recall@5_per_seed"]
    assert set(recall) == {"l2x, tau=1", "straight_through, tau=1"}
    assert all(len(seeds) == 2 and all(0 <= r <= 100 for r in seeds) for seeds in recall.values())
    # The command is this process's (pytest's, or an xdist worker's); the settings say the rest.
    assert report["git_commit"] and report["command"] and report["settings"]["seeds"] == 2
    table = demo_float_path.markdown_table([report, report]).splitlines()
    assert len(table) == 4 and table[0].count("|") == table[2].count("|") == 11  # 10 columns
    assert "| 4 | " in table[2]  # the reader steps
    # a report that ran fewer settings gets "—" in the others' columns, in either order
    fewer = {**report, "g_rerank_bridge_recall@5_per_seed": {"l2x, tau=1": recall["l2x, tau=1"]}}
    for reports in ([report, fewer], [fewer, report]):
        rows = demo_float_path.markdown_table(reports).splitlines()
        assert rows[0].count("|") == 11 and sum(row.endswith("| — |") for row in rows) == 1


def test_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        demo_float_path.parse_args(["--seeds", "0"])
    assert "--seeds" in capsys.readouterr().err


FLOAT_PATHS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "demo" / "float_paths"
# docs/demo.md's tables, in its order: the reader trained 2,500 steps on five float paths,
# then 5,000 steps on the two where G-Rerank lost the bridge and on the default path, then
# 10,000 steps (the demo's reader now) on all five.
PATHS = ["8_host_devices_O0", "8_host_devices", "default", "one_cpu", "fast_math"]
DOCUMENTED = (PATHS,
              ["8_host_devices_O0_5000_steps", "8_host_devices_5000_steps", "default_5000_steps"],
              [f"{name}_10000_steps" for name in PATHS])


def test_docs_tables_are_the_recorded_reports():
    page = (FLOAT_PATHS.parents[1] / "demo.md").read_text()
    for names in DOCUMENTED:
        reports = [json.loads((FLOAT_PATHS / f"{name}.json").read_text()) for name in names]
        assert demo_float_path.markdown_table(reports) in page, names


def test_table_of_a_bad_report_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"xla_flags": ""}')
    assert demo_float_path.main(["--table", str(bad)]) == 2
    assert f"{bad}: not a demo_float_path report" in capsys.readouterr().err
    assert demo_float_path.main(["--table", str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err


def test_demos_of_a_bad_run_names_the_file(tmp_path, capsys):
    """A float-path report, a run from before the demo recorded its provenance, and a k the
    run lacks are each refused, naming the file (exit 2)."""
    report = FLOAT_PATHS / "default.json"
    assert demo_float_path.main(["--demos", str(report)]) == 2
    assert f"{report}: not an experiments.demo results.json" in capsys.readouterr().err
    recorded = json.loads((FLOAT_PATHS.parent / "results.json").read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps({name: value for name, value in recorded.items()
                               if name != "provenance"}))
    assert demo_float_path.main(["--demos", str(old)]) == 2
    assert f"{old}: no provenance recorded" in capsys.readouterr().err
    assert demo_float_path.main(["--demos", str(FLOAT_PATHS.parent / "results.json"),
                                 "--k", "4"]) == 2
    assert "no k = 4 in this run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one table at a time
        demo_float_path.parse_args(["--table", str(report), "--demos", str(report)])


# docs/demo.md's "The whole demo on other float paths": `make demo` and two reruns.
DEMO_RUNS = (FLOAT_PATHS.parent / "results.json", FLOAT_PATHS / "demo_8_host_devices.json",
             FLOAT_PATHS / "demo_one_cpu.json")


def test_docs_whole_demo_tables_are_the_recorded_runs():
    page = (FLOAT_PATHS.parents[1] / "demo.md").read_text()
    runs = [json.loads(path.read_text()) for path in DEMO_RUNS]
    assert len({run["provenance"]["xla_flags"] for run in runs}) == len(runs)  # three paths
    for k in (5, 3):
        assert demo.float_path_table(runs, k) in page, k
