"""Run folders in cloud storage: a whole run (training, checkpoints, the best checkpoint,
metrics.jsonl, evaluation, reproduce's cell bookkeeping, make_tables, re-evaluation) with a
``gs://`` workdir, against a local GCS emulator (gcp-storage-emulator, in memory, on
loopback) reached by the real clients: gcsfs behind etils.epath and TensorStore's GCS driver
behind orbax. Nothing leaves the machine."""

import json
import socket
import sys

import pytest

from gumbel_jax.training import run_folder

emulator = pytest.importorskip("gcp_storage_emulator.server",
                               reason="gcp-storage-emulator (requirements-test.txt)")
pytest.importorskip("gcsfs", reason="gcsfs: epath's gs:// backend (requirements-test.txt)")

emulator_objects = pytest.importorskip("gcp_storage_emulator.handlers.objects")

BUCKET = "gj-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reports_generations(download):
    """The emulator's object read, made to answer as GCS does: the object's generation in
    ``x-goog-generation``, and 304 Not Modified for ``ifGenerationNotMatch`` naming it.

    TensorStore revalidates a cached OCDBT manifest with exactly that conditional read once
    the cache entry is old enough (so only on busy cores: with two test workers, or under
    load). The emulator sent the whole object without a generation, and the checkpoint
    failed with "Malformed StorageGeneration"."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound

    def read(request, response, storage, *args, **kwargs):
        try:
            generation = storage.get_file_obj(request.params["bucket_name"],
                                              request.params["object_id"])["generation"]
        except NotFound:
            return download(request, response, storage, *args, **kwargs)
        response["x-goog-generation"] = generation
        if request.query.get("ifGenerationNotMatch", [None])[0] == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        return download(request, response, storage, *args, **kwargs)

    return read


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """An in-memory GCS on 127.0.0.1 with one bucket; both clients pointed at it."""
    import gcsfs
    from etils.epath import backend

    # The emulator serves one request at a time from a listen queue of 5 (http.server's
    # default); TensorStore opens many connections at once. Let them queue.
    monkeypatch.setattr(emulator.server.HTTPServer, "request_queue_size", 1024)
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # orbax's arrays
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "unused")  # TensorStore skips auth
    monkeypatch.setattr(emulator_objects, "download",
                        _reports_generations(emulator_objects.download))
    monkeypatch.chdir(tmp_path)  # a file written locally by mistake would land here

    def forget_clients():  # cached file systems remember the endpoint
        backend.fsspec_backend._get_filesystem.cache_clear()
        gcsfs.GCSFileSystem.clear_instance_cache()

    forget_clients()
    yield f"gs://{BUCKET}"
    forget_clients()
    server.stop()


def test_run_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(run_folder.run_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert str(run_folder.run_path("runs/a")) == str(tmp_path / "runs" / "a")
    assert run_folder.is_remote("gs://b/x") and not run_folder.is_remote(tmp_path)
    # Without a gs:// client the CLIs say so in one line (they report ValueErrors).
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ValueError, match="needs gcsfs"):
        run_folder.run_path("gs://bucket/runs/a")
    import argparse

    from experiments.cli import user_path

    with pytest.raises(argparse.ArgumentTypeError, match="needs gcsfs"):
        user_path("gs://bucket/runs/a")  # --workdir of every command


def test_metrics_log_in_an_object_store_is_uploaded_whole_and_cut_back_on_resume(gcs):
    """gs:// cannot append: metrics.jsonl is uploaded again at a checkpoint (flush), when
    upload_seconds have passed, and at the end; a resume cuts it back to its step."""
    from gumbel_jax.training.loop import _RunLog, truncate_metrics

    workdir = run_folder.run_path(f"{gcs}/runs/log")
    workdir.mkdir(parents=True, exist_ok=True)
    now = [0.0]
    log = _RunLog(workdir, 0, 10, upload_seconds=30.0, clock=lambda: now[0])
    path = workdir / "metrics.jsonl"
    log.write(1, {"loss": 1.0})
    assert not path.exists()  # not uploaded yet
    log.flush()  # (a checkpoint)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1]
    now[0] = 31.0
    log.write(2, {"loss": 2.0})  # 31 s since the last upload
    log.write(3, {"loss": 3.0})
    assert len(path.read_text().splitlines()) == 2
    log.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    path.write_text(path.read_text() + '{"step": 4, "lo')  # a line cut short by a kill
    assert [json.loads(x)["step"] for x in truncate_metrics(path, 2)] == [1, 2]
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_a_folder_upload_replaces_what_was_there(gcs, tmp_path):
    local = tmp_path / "local"
    (local / "nested").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "nested" / "vocab.txt").write_text("a b")
    destination = run_folder.run_path(f"{gcs}/models/reader")
    destination.mkdir(parents=True)
    (destination / "stale.bin").write_text("from an earlier export")
    run_folder.upload_folder(local, destination)
    assert sorted(p.name for p in destination.iterdir()) == ["config.json", "nested"]
    assert (destination / "nested" / "vocab.txt").read_text() == "a b"


def test_a_reader_runs_experiment_and_export_go_to_a_gs_folder(gcs, tmp_path):
    """The files reader training adds to a run folder, without training: experiment.json
    written and read back, the exported Hugging Face folder uploaded (and a second export
    replacing the first); nothing written to the local disk."""
    from gumbel_jax.data.records import Passage, Record
    from gumbel_jax.data.tokenizer import word_level_tokenizer
    from gumbel_jax.models.fid import FiDReader
    from gumbel_jax.models.t5 import T5Config
    from gumbel_jax.training.config import ReaderExperimentConfig
    from gumbel_jax.training.reader import (
        export_trained_reader,
        read_reader_experiment,
        write_reader_experiment,
    )

    run = f"{gcs}/runs/reader"
    config = ReaderExperimentConfig(name="gs", dropout_rate=0.2)
    write_reader_experiment(run, config)
    assert read_reader_experiment(run) == config
    tokenizer = word_level_tokenizer([Record("q", "who", ("a",), (Passage("t", "a b"),))])
    reader = FiDReader.random(T5Config(vocab_size=len(tokenizer), d_model=8, d_kv=4, d_ff=16,
                                       num_layers=1, num_decoder_layers=1, num_heads=2))
    export = run_folder.run_path(f"{run}/export")
    for _ in range(2):
        export_trained_reader(reader, export, tokenizer=tokenizer, max_length=8,
                              answer_length=4)
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name
                                                                for p in export.iterdir()}
    assert json.loads((export / "config.json").read_text())["dropout_rate"] == 0.1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_grid_in_a_gs_run_folder_trains_resumes_evaluates_and_makes_tables(gcs, tmp_path,
                                                                           capsys):
    from experiments import evaluate as evaluate_cli
    from experiments import make_tables, reproduce
    from tests.test_paper_grid import TINY

    settings = [*TINY, "data.source=synthetic", "data.num_train=16", "train.num_steps=4",
                "train.eval_every=2", "train.best_metric=mrr"]
    args = ["--table", "hotpotqa", "--cell", "hotpotqa_g_rerank", "--seeds", "1",
            "--workdir", f"{gcs}/runs", *sum((["--set", s] for s in settings), [])]
    assert reproduce.main(args) == 0
    assert "seed0: done" in capsys.readouterr().out
    cell = run_folder.run_path(f"{gcs}/runs/hotpotqa_g_rerank/seed0")
    names = {p.name for p in cell.iterdir()}
    assert {"experiment.json", "metrics.jsonl", "eval.json", "eval_predictions.jsonl",
            "mining.json", "checkpoints", "best"} <= names
    assert sorted(p.name for p in (cell / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2", "4"]
    lines = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]
    assert [x["step"] for x in lines if "eval/mrr" in x] == [2, 4]
    # The finished cell is skipped; its state is read from the bucket.
    assert reproduce.main(args) == 0
    assert "finished, skipped" in capsys.readouterr().out
    # Re-evaluation restores the latest checkpoint from the bucket: the same numbers.
    evaluated_before = json.loads((cell / "eval.json").read_text())
    assert evaluate_cli.main(["--workdir", str(cell)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 4
    assert evaluated["mrr"] == pytest.approx(evaluated_before["mrr"])
    assert make_tables.main(["--workdir", f"{gcs}/runs", "--seeds", "1"]) == 0
    tables = run_folder.run_path(f"{gcs}/runs/tables.csv").read_text()
    assert "hotpotqa_g_rerank" in tables
    assert "G-Rerank" in run_folder.run_path(f"{gcs}/runs/tables.md").read_text()
    assert list(tmp_path.iterdir()) == []  # nothing was written to the local disk
