"""The rerank command on your own records (R26): every record written with its passages
sorted by the model's scores, bad lines reported and skipped, an interrupted run resumed
without duplicates, bounded memory on a file far larger than memory should need."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import rerank as rerank_cli
from gumbel_jax import metrics
from gumbel_jax.checkpoints import export_reader, export_reranker
from gumbel_jax.data.synthetic import WorldConfig, make_records
from gumbel_jax.data.tokenizer import word_level_tokenizer
from gumbel_jax.models import FiDReader
from gumbel_jax.training.config import ModelConfig
from gumbel_jax.training.factory import tiny_architectures
from tests.checkpoints.test_export import LENGTH, jax_scores, tiny_reranker

pytest.importorskip("transformers")

ROOT = pathlib.Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "data" / "fixtures"


@pytest.fixture(scope="module")
def records():
    return make_records(WorldConfig(), 12, split_seed=7, prefix="mine")


@pytest.fixture(scope="module")
def tokenizer(records):
    return word_level_tokenizer(records)


@pytest.fixture(scope="module")
def exported(records, tokenizer, tmp_path_factory):
    """Exported tiny models: {"rankt5": (ranker, folder), "cross_encoder": …, "reader": …}."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for kind in ("rankt5", "cross_encoder"):
        ranker = tiny_reranker(kind, len(tokenizer), seed=11)
        out[kind] = ranker, export_reranker(ranker, root / kind, tokenizer=tokenizer,
                                            max_length=LENGTH)
    reader = FiDReader.random(tiny_architectures(ModelConfig(), len(tokenizer))[0], seed=0)
    out["reader"] = reader, export_reader(reader, root / "reader", tokenizer=tokenizer,
                                          max_length=LENGTH, answer_length=4)
    return out


@pytest.fixture(scope="module")
def input_file(records, tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "records.jsonl"
    path.write_bytes(b"".join(r.dumps() + b"\n" for r in records))
    return path


def run(capsys, *args) -> tuple[int, dict | None, str]:
    code = rerank_cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else None, captured.err


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.mark.parametrize("kind", ["rankt5", "cross_encoder"])
def test_passages_are_sorted_by_the_models_scores(kind, exported, records, tokenizer,
                                                  input_file, tmp_path, capsys):
    ranker, folder = exported[kind]
    output = tmp_path / "ranked.jsonl"
    # 7 pairs per batch: batches cut across records (10 candidates each) and the last is padded.
    code, summary, _ = run(capsys, "--reranker", folder, "--input", input_file,
                           "--output", output, "--batch_size", 7)
    assert code == 0
    lines = read_lines(output)
    assert [line["id"] for line in lines] == [r.id for r in records]
    recall = []
    for record, line in zip(records, lines, strict=True):
        scores = [c["score"] for c in line["ctxs"]]
        assert scores == sorted(scores, reverse=True)
        order = [c["input_rank"] for c in line["ctxs"]]
        assert sorted(order) == list(range(len(record.ctxs)))
        assert [c["text"] for c in line["ctxs"]] == [record.ctxs[i].text for i in order]
        expected = jax_scores(ranker, tokenizer, record, kind)
        np.testing.assert_allclose(np.asarray(scores), expected[order], atol=1e-5)
        recall.append(metrics.recall_at_k(expected, record.gold, 5))
    assert summary["records"] == len(records) and summary["skipped_bad"] == 0
    assert summary["passages"] == sum(len(r.ctxs) for r in records)
    assert summary["metrics"]["recall@5"] == pytest.approx(np.mean(recall))
    assert summary["records_per_s"] > 0


def test_an_interrupted_run_resumes_without_duplicates(exported, records, input_file,
                                                       tmp_path, capsys, monkeypatch):
    folder = exported["rankt5"][1]
    complete = tmp_path / "complete.jsonl"
    args = ["--reranker", folder, "--input", input_file, "--batch_size", 16]
    code, full, _ = run(capsys, *args, "--output", complete)
    assert code == 0
    # Interrupted (Ctrl-C) after 5 records: every finished record is kept.
    output = tmp_path / "ranked.jsonl"
    original, calls = rerank_cli.ranked_json, []

    def interrupt_after_five(*a, **k):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(rerank_cli, "ranked_json", interrupt_after_five)
    code, _, err = run(capsys, *args, "--output", output)
    assert code == 130 and "--resume" in err
    assert len(read_lines(output)) == 5
    monkeypatch.setattr(rerank_cli, "ranked_json", original)
    # Without --resume an existing output is refused and left as it is.
    code, _, err = run(capsys, *args, "--output", output)
    assert code == 2 and "exists; pass --resume" in err and len(read_lines(output)) == 5
    # A kill in the middle of a line leaves half a line: --resume cuts it and goes on.
    with open(output, "ab") as handle:
        handle.write(complete.read_bytes().splitlines(keepends=True)[5][:40])
    code, resumed, _ = run(capsys, *args, "--output", output, "--resume")
    assert code == 0 and resumed["resumed_past"] == 5
    assert resumed["records"] == len(records) - 5
    lines, expected = read_lines(output), read_lines(complete)
    assert [line["id"] for line in lines] == [r.id for r in records]  # each once, in order
    for line, reference in zip(lines, expected, strict=True):
        assert [c["input_rank"] for c in line["ctxs"]] == [c["input_rank"]
                                                           for c in reference["ctxs"]]
        np.testing.assert_allclose([c["score"] for c in line["ctxs"]],
                                   [c["score"] for c in reference["ctxs"]], atol=1e-5)
    # The metrics cover the whole output, the resumed records included.
    for name, value in full["metrics"].items():
        assert resumed["metrics"][name] == pytest.approx(value, abs=1e-6)
    code, again, _ = run(capsys, *args, "--output", output, "--resume")
    assert code == 0 and again["records"] == 0 and len(read_lines(output)) == len(records)


def test_bad_lines_are_reported_skipped_and_counted(exported, records, tmp_path, capsys):
    good = [r.dumps().decode() for r in records[:4]]
    missing_question = json.dumps({"id": "q-missing", "answers": ["x"],
                                   "ctxs": [{"title": "t", "text": "x"}]})
    wrong_type = json.dumps({"id": "q-type", "question": "who?", "answers": "x",
                             "ctxs": [{"title": "t", "text": "x"}]})
    lines = [good[0], "{not json", good[1], missing_question, good[2], wrong_type, good[3]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    output = tmp_path / "ranked.jsonl"
    code, summary, err = run(capsys, "--reranker", exported["cross_encoder"][1],
                             "--input", path, "--output", output)
    assert code == 0 and summary["skipped_bad"] == 3 and summary["records"] == 4
    assert [line["id"] for line in read_lines(output)] == [r.id for r in records[:4]]
    assert f"{path}, record 2 (line 2): record: invalid JSON" in err
    assert f"{path}, record 4 (line 4): question: missing" in err
    assert f"{path}, record 6 (line 6): answers: wrong type" in err
    assert "3 skipped" in err
    code, _, err = run(capsys, "--reranker", exported["cross_encoder"][1], "--input", path,
                       "--output", tmp_path / "strict.jsonl", "--max_bad_records", 1)
    assert code == 2 and "too many bad records" in err and "--resume" in err
    # The second bad record (line 4) stops the run; the records read before it are written.
    assert [line["id"] for line in read_lines(tmp_path / "strict.jsonl")] == [
        r.id for r in records[:2]]


def test_reader_answers_from_the_top_k_and_official_formats(exported, tmp_path, capsys):
    output = tmp_path / "hotpot.jsonl"
    code, summary, _ = run(capsys, "--reranker", exported["rankt5"][1], "--reader",
                           exported["reader"][1], "--input",
                           FIXTURES / "hotpot_dev_distractor.json", "--format", "hotpotqa",
                           "--output", output, "--k", 2, "--batch_size", 4)
    assert code == 0 and summary["records"] >= 1
    for line in read_lines(output):
        assert isinstance(line["answer"], str)
    assert {"em", "f1", "recall@2", "answer_recall@2"} <= set(summary["metrics"])


def test_the_answer_is_the_readers_on_the_top_k(exported, records, tokenizer, input_file,
                                               tmp_path):
    """ReaderAnswerer == the reader generating over the hard top-k mask of all candidates
    (how training.evaluation answers)."""
    from gumbel_jax import ops
    from gumbel_jax.checkpoints import load_exported_reader
    from gumbel_jax.data.inputs import tokenize_passages

    reader = exported["reader"][0]
    answerer = rerank_cli.ReaderAnswerer(load_exported_reader(exported["reader"][1]), k=3,
                                         max_length=LENGTH, answer_length=4, group_size=2)
    record = records[0]
    scores = np.linspace(1.0, 0.0, len(record.ctxs))[::-1]
    answer = answerer([(record, scores)])[0]
    inputs = tokenize_passages(tokenizer, record.question,
                               [(p.title, p.text) for p in record.ctxs], max_length=LENGTH)
    hard = ops.topk_mask(jnp.asarray(scores[None]), 3)
    tokens = reader.generate(reader.encode(jnp.asarray(inputs["input_ids"]),
                                           jnp.asarray(inputs["attention_mask"])),
                             ops.mask_to_log_mask(hard), max_length=4)
    assert answer == tokenizer.decode(np.asarray(tokens[0]), skip_special_tokens=True).strip()


def test_a_mesh_gives_the_same_scores(exported, input_file, tmp_path, capsys):
    import jax

    if jax.device_count() != 8:
        pytest.skip("needs the 8 simulated devices of tests/conftest.py")
    folder = exported["cross_encoder"][1]
    plain, sharded = tmp_path / "plain.jsonl", tmp_path / "mesh.jsonl"
    assert run(capsys, "--reranker", folder, "--input", input_file, "--output", plain,
               "--batch_size", 8)[0] == 0
    assert run(capsys, "--reranker", folder, "--input", input_file, "--output", sharded,
               "--batch_size", 8, "--mesh", "4,2,1")[0] == 0
    for a, b in zip(read_lines(plain), read_lines(sharded), strict=True):
        np.testing.assert_allclose([c["score"] for c in a["ctxs"]],
                                   [c["score"] for c in b["ctxs"]], atol=1e-5)
    code, _, err = run(capsys, "--reranker", folder, "--input", input_file, "--output",
                       tmp_path / "x.jsonl", "--batch_size", 6, "--mesh", "4,2,1")
    assert code == 2 and "not divisible by the 8 batch shards" in err


def test_errors_are_one_line(exported, input_file, tmp_path, capsys):
    folder = exported["rankt5"][1]
    code, _, err = run(capsys, "--reranker", folder, "--input", tmp_path / "none.jsonl",
                       "--output", tmp_path / "o.jsonl")
    assert code == 2 and "none.jsonl: no such file" in err
    code, _, err = run(capsys, "--reranker", tmp_path / "nothing", "--input", input_file,
                       "--output", tmp_path / "o.jsonl")
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    code, _, err = run(capsys, "--reranker", folder, "--input", input_file,
                       "--output", input_file, "--resume")
    assert code == 2 and "would overwrite the input" in err
    code, _, err = run(capsys, "--reranker", exported["reader"][1], "--input", input_file,
                       "--output", tmp_path / "o.jsonl")
    assert code == 2 and "a fid_reader export, not a reranker" in err


# ---------------------------------------------------------------- bounded memory

# Peak RSS of the whole rerank process, measured from inside it (resource.getrusage), so
# nothing else this test session ran counts.
_MEASURE = textwrap.dedent("""
    import json, resource, sys
    from experiments import rerank
    code = rerank.main(sys.argv[2:])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump({"code": code, "peak_mb": peak_mb}, open(sys.argv[1], "w"))
""")


def _peak_rss_mb(tmp_path, name, *args) -> float:
    result = tmp_path / f"{name}.json"
    subprocess.run([sys.executable, "-c", _MEASURE, str(result), *map(str, args)], cwd=ROOT,
                   check=True, capture_output=True,
                   env={**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"})
    measured = json.loads(result.read_text())
    assert measured["code"] == 0
    return measured["peak_mb"]


def _write_large_file(path, records, size_bytes: int) -> int:
    """JSON lines of records with 5 passages of ~19,000 characters each (under the reader's
    20,000-character cut) drawn from the records' words, until ``size_bytes``."""
    rng = np.random.default_rng(0)
    words = sorted({w for r in records for p in r.ctxs for w in p.text.split()})
    written = count = 0
    with open(path, "w") as handle:
        while written < size_bytes:
            base = records[count % len(records)]
            ctxs = [{"title": p.title, "text": " ".join(rng.choice(words, 2400)),
                     "is_gold": p.is_gold} for p in base.ctxs[:5]]
            line = json.dumps({"id": f"big-{count}", "question": base.question,
                               "answers": list(base.answers), "ctxs": ctxs}) + "\n"
            handle.write(line)
            written += len(line)
            count += 1
    return count


@pytest.mark.slow
def test_a_200_mb_file_is_reranked_in_bounded_memory(exported, records, input_file,
                                                     tmp_path):
    """The bound: the peak RSS reranking a 200 MB file exceeds the peak RSS reranking the
    12-record file by less than 100 MB (half the file; the output is as large again). Held
    records are at most two batches of pairs (~100 KB each here), so a streaming run stays
    within a few MB of the small run; reading the file or keeping the output would not."""
    folder = exported["rankt5"][1]
    big = tmp_path / "big.jsonl"
    count = _write_large_file(big, records, 200 * 2**20)
    small_peak = _peak_rss_mb(tmp_path, "small", "--reranker", folder, "--input", input_file,
                              "--output", tmp_path / "small_out.jsonl")
    big_peak = _peak_rss_mb(tmp_path, "big", "--reranker", folder, "--input", big,
                            "--output", tmp_path / "big_out.jsonl", "--batch_size", 64)
    print(f"\npeak RSS: {small_peak:.0f} MB (12 records), {big_peak:.0f} MB "
          f"({count} records, {big.stat().st_size / 2**20:.0f} MB): "
          f"+{big_peak - small_peak:.0f} MB")
    with open(tmp_path / "big_out.jsonl", "rb") as handle:
        assert sum(1 for _ in handle) == count
    assert big_peak - small_peak < 100
