"""tfds builders: official files -> array_record -> tfds.data_source -> the same records,
and the pipeline reads them; conversion errors are a clear message and exit status 2."""

import pathlib
import shutil

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from experiments import prepare_data  # noqa: E402
from gumbel_jax.data import Record, read_records  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def test_hotpotqa_prepared_and_opened_with_data_source(tmp_path, capsys):
    source = tmp_path / "hotpot"
    source.mkdir()
    shutil.copy(FIXTURES / "hotpot_dev_distractor.json", source / "hotpot_dev_distractor_v1.json")
    status = prepare_data.main(["--dataset", "hotpotqa", "--source", str(source),
                                "--data_dir", str(tmp_path / "tfds")])
    assert status == 0
    assert "prepared gj_hotpotqa" in capsys.readouterr().out
    source_records = {r.id: r for r in read_records(source / "hotpot_dev_distractor_v1.json",
                                                    "hotpotqa")}
    data = tfds.data_source("gj_hotpotqa", split="validation", data_dir=str(tmp_path / "tfds"))
    assert len(data) == 2
    loaded = {Record.loads(data[i]["record"]).id: Record.loads(data[i]["record"])
              for i in range(len(data))}
    assert loaded == source_records


def test_synthetic_dataset_feeds_the_pipeline(tmp_path):
    from gumbel_jax.data.pipeline import FeatureSpec, Featurizer, make_dataset
    from gumbel_jax.data.synthetic import WorldConfig
    from gumbel_jax.data.tfds_builders import GjSynthetic
    from gumbel_jax.data.tokenizer import word_level_tokenizer

    world = WorldConfig(num_people=40, num_cities=10, num_candidates=8, num_born_distractors=3)
    builder = GjSynthetic(world=world, num_train=12, num_validation=4,
                          data_dir=str(tmp_path))
    builder.download_and_prepare()
    source = tfds.data_source("gj_synthetic", split="train", data_dir=str(tmp_path))
    records = [Record.loads(source[i]["record"]) for i in range(len(source))]
    tokenizer = word_level_tokenizer(records)
    featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(8, 20, 20, 3))
    batch = next(iter(make_dataset(source, featurize, batch_size=4, seed=0)))
    assert batch["reader_ids"].shape == (4, 8, 20) and batch["doc_valid"].all()


def test_conversion_errors_are_clear(tmp_path, capsys):
    empty = tmp_path / "empty_source"
    empty.mkdir()
    status = prepare_data.main(["--dataset", "musique", "--source", str(empty),
                                "--data_dir", str(tmp_path / "tfds")])
    assert status == 2
    assert "none of the official musique files found" in capsys.readouterr().err
    bad = tmp_path / "bad_source"
    bad.mkdir()
    shutil.copy(FIXTURES / "bad_records.jsonl", bad / "dev.json")
    status = prepare_data.main(["--dataset", "nq", "--source", str(bad), "--data_dir",
                                str(tmp_path / "tfds"), "--max_bad_records", "2"])
    assert status == 2
    err = capsys.readouterr().err
    assert "too many bad records: 3 skipped" in err and "question: missing" in err
    assert not (tmp_path / "tfds" / "gj_nq" / "1.0.0").exists()  # nothing half-finished


def test_preparing_a_set_whose_ranking_metric_cannot_be_computed_fails(tmp_path, capsys):
    """HotpotQA without supporting facts (e.g. its unlabelled test file): Recall@5 could not
    be computed, so preparation stops with exit status 2, naming the file, each record and
    why, and leaves no dataset (no NaN column after training)."""
    import json

    source = tmp_path / "hotpot"
    source.mkdir()
    records = json.loads((FIXTURES / "hotpot_dev_distractor.json").read_text())
    unlabelled = [{k: v for k, v in r.items() if k != "supporting_facts"} for r in records]
    path = source / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(unlabelled))
    status = prepare_data.main(["--dataset", "hotpotqa", "--source", str(source),
                                "--data_dir", str(tmp_path / "tfds")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{path}: no valid record" in err
    for number in (1, 2):
        assert (f"{path}, record {number} (line 1): supporting_facts: missing: no gold "
                "passages, so Recall@k, NDCG@k and MRR on gold passages") in err
    assert not (tmp_path / "tfds" / "gj_hotpotqa" / "1.0.0").exists()
