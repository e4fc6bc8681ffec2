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


def test_train_then_evaluate_cli(tmp_path, capsys, monkeypatch):
    config = str(CONFIGS[[p.name for p in CONFIGS].index("synthetic_g_rerank.py")])
    # A relative --workdir, as the README's commands use (orbax refuses relative paths: the
    # CLI resolves them).
    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "runs" / "run"
    periodic = ["train.eval_every=2", "train.best_metric=recall@5"]
    assert train_cli.main(["--config", config, "--workdir", "runs/run",
                           *sum((["--set", s] for s in SMALL + periodic), [])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 4 and "indirect_recall@5" in printed
    for name in ("metrics.jsonl", "eval.json", "eval.md", "eval_predictions.jsonl",
                 "experiment.json"):
        assert (workdir / name).is_file()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["2", "4"]
    # The held-out evaluation every 2 steps (config -> hook), and the best checkpoint kept.
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "eval/recall@5" in line] == [2, 4]
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert (workdir / "best").is_dir()
    assert evaluate_cli.main(["--workdir", "runs/run"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 4
    assert evaluated["recall@5"] == pytest.approx(printed["recall@5"])
    # Beam search is a config value: the run's answers come from generate(num_beams=3).
    from gumbel_jax.training.evaluation import evaluate
    from gumbel_jax.training.experiment import restore_run

    run = restore_run("runs/run")
    beams = evaluate(run.ranker, run.reader, run.eval_records, run.featurize, k=5,
                     batch_size=4, tokenizer=run.reader_tokenizer, max_answer_length=4,
                     num_beams=3)
    assert beams["metrics"]["num_questions"] == 8 and "em" in beams["metrics"]
    with pytest.raises(ValueError, match="num_beams"):
        build(load_config(config, [*SMALL, "model.num_beams=0"]))


def test_cli_errors_are_one_line(tmp_path, capsys):
    config = str(CONFIGS[[p.name for p in CONFIGS].index("synthetic_g_rerank.py")])
    assert train_cli.main(["--config", config, "--workdir", str(tmp_path),
                           "--set", "train.objective.bogus=1"]) == 2
    assert "unknown config key 'train.objective.bogus'" in capsys.readouterr().err
    assert train_cli.main(["--config", "missing.py", "--workdir", str(tmp_path)]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert evaluate_cli.main(["--workdir", str(tmp_path / "nothing")]) == 2
    assert "no experiment.json" in capsys.readouterr().err


def test_user_paths_are_resolved_once(tmp_path, monkeypatch):
    from experiments.cli import user_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_path("runs/x") == str(tmp_path / "runs" / "x")
    assert user_path("~/tfds") == str(tmp_path / "home" / "tfds")
    assert user_path("gs://bucket/run") == "gs://bucket/run"
    config = str(CONFIGS[[p.name for p in CONFIGS].index("synthetic_g_rerank.py")])
    assert load_config(config, ["data.data_dir=~/tfds"]).data.data_dir == str(
        tmp_path / "home" / "tfds")
