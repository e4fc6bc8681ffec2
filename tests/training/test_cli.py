"""End-to-end smoke run of the CLI on a tiny config (R22), every config builds (R21)."""

import json
import pathlib

import pytest

from experiments import evaluate as evaluate_cli
from experiments import train as train_cli
from experiments.cli import load_config
from gumbel_jax.training.experiment import build

CONFIGS = sorted((pathlib.Path(__file__).parents[2] / "experiments" / "configs").glob("*.py"))
SMALL = ["data.num_train=24", "data.num_eval=8", "data.batch_size=4", "train.num_steps=4",
         "train.checkpoint_every=2", "model.d_model=16", "model.num_layers=1"]


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name != "__init__.py"],
                         ids=lambda p: p.stem)
def test_every_config_builds(path):
    config = load_config(str(path), SMALL)
    reader, ranker, train_records, eval_records, featurize = build(config)
    assert len(eval_records) == 8 and featurize(eval_records[0])["doc_valid"].any()


def test_train_then_evaluate_cli(tmp_path, capsys):
    config = str(CONFIGS[[p.name for p in CONFIGS].index("synthetic_g_rerank.py")])
    workdir = tmp_path / "run"
    assert train_cli.main(["--config", config, "--workdir", str(workdir),
                           *sum((["--set", s] for s in SMALL), [])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 4 and "indirect_recall@5" in printed
    for name in ("metrics.jsonl", "eval.json", "eval.md", "eval_predictions.jsonl",
                 "experiment.json"):
        assert (workdir / name).is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "4"]
    assert evaluate_cli.main(["--workdir", str(workdir)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 4
    assert evaluated["recall@5"] == pytest.approx(printed["recall@5"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    config = str(CONFIGS[[p.name for p in CONFIGS].index("synthetic_g_rerank.py")])
    assert train_cli.main(["--config", config, "--workdir", str(tmp_path),
                           "--set", "train.objective.bogus=1"]) == 2
    assert "unknown config key 'train.objective.bogus'" in capsys.readouterr().err
    assert train_cli.main(["--config", "missing.py", "--workdir", str(tmp_path)]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert evaluate_cli.main(["--workdir", str(tmp_path / "nothing")]) == 2
    assert "no experiment.json" in capsys.readouterr().err
