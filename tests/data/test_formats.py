"""Official formats -> records, field by field; malformed input -> clear reports (R18)."""

import pathlib

import pytest

from gumbel_jax.data import DataError, ValidationReport, read_records

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _read(name, dataset, **kwargs):
    report = ValidationReport(**kwargs)
    return list(read_records(FIXTURES / name, dataset, report=report)), report


def test_hotpotqa_distractor():
    records, report = _read("hotpot_dev_distractor.json", "hotpotqa")
    assert report.skipped == 0 and len(records) == 2
    bridge = records[0]
    assert bridge.id == "5a8b57f25542995d1e6f1371" and bridge.answers == ("Alfred Hitchcock",)
    assert [p.title for p in bridge.ctxs] == ["D'entre les morts", "Vertigo (film)",
                                              "Psycho (1960 film)", "Les Diaboliques"]
    assert bridge.ctxs[0].text == ("D'entre les morts is a 1954 novel by Boileau-Narcejac. "
                                   "It was adapted into the film Vertigo.")
    assert bridge.gold == [True, True, False, False]
    assert [p.has_answer for p in bridge.ctxs] == [False, True, True, False]
    assert bridge.indirect == [True, False, False, False]  # the bridge passage
    assert bridge.metadata == {"type": "bridge", "level": "hard"}
    yes_no = records[1]
    assert yes_no.answers == ("yes",) and yes_no.indirect == [False, False, False]
    assert yes_no.gold == [True, True, True]  # duplicate titles: both marked by title


def test_musique_answerable_with_aliases():
    records, report = _read("musique_ans_dev.jsonl", "musique")
    assert report.skipped == 0
    record = records[0]
    assert record.answers == ("Alfred Hitchcock", "Hitch", "Sir Alfred Hitchcock")
    assert record.gold == [True, True, False]
    # "Hitch" (an alias) appears in a distractor: has_answer, but not gold.
    assert [p.has_answer for p in record.ctxs] == [False, True, True]
    assert record.indirect == [True, False, False]
    assert record.metadata["question_decomposition"][0]["answer"] == "Vertigo"
    assert records[1].answers == ("Paris",)


def test_two_wiki_keeps_evidences():
    (record,), _ = _read("2wiki_dev.json", "2wiki")
    assert record.gold == [True, True, False]
    assert record.indirect == [True, False, False]
    assert record.metadata["evidences"][1] == ["Alfred Hitchcock", "place of birth",
                                               "Leytonstone"]


@pytest.mark.parametrize("name", ["nq_fid_dev.json", "tqa_fid_dev.jsonl"])
def test_fid_files_as_list_or_lines(name):
    records, report = _read(name, "fid")
    assert report.skipped == 0
    first = records[0]
    assert first.ctxs[0].is_gold is None  # FiD data has no gold labels
    if name.startswith("nq"):
        assert first.id == "0" and records[1].id == "1"  # ids assigned by position
        assert [p.has_answer for p in first.ctxs] == [True, False]  # kept from the file
        assert records[1].ctxs[0].has_answer  # computed
    else:
        assert first.id == "tqa_1" and [p.has_answer for p in first.ctxs] == [True, False]


def test_record_json_round_trip():
    records, _ = _read("musique_ans_dev.jsonl", "musique")
    from gumbel_jax.data import Record

    assert Record.loads(records[0].dumps()) == records[0]


def test_malformed_records_are_reported_and_valid_ones_kept():
    records, report = _read("bad_records.jsonl", "fid", max_bad_records=10)
    assert [r.id for r in records] == ["ok1", "ok1#2", "ok2"]
    messages = [str(p) for p in report.problems]
    path = str(FIXTURES / "bad_records.jsonl")
    expected = [
        f"{path}, record 2 (line 2): question: missing (skipped)",
        f"{path}, record 3 (line 3): answers: empty: no non-blank answer (skipped)",
        f"{path}, record 4 (line 4): ctxs: empty (skipped)",
        f"{path}, record 5 (line 5): question: wrong type: expected str, got int (skipped)",
        f"{path}, record 6 (line 6): id: duplicate id 'ok1': renamed to 'ok1#2' (kept)",
    ]
    assert messages[:5] == expected
    assert messages[5].startswith(f"{path}, record 7 (line 7): record: invalid JSON")
    assert messages[6].startswith(f"{path}, record 9 (line 9): record: invalid UTF-8")
    assert report.skipped == 6 and report.warnings == 1
    assert "6 records" not in report.summary() and "3 records read, 6 skipped" in \
        report.summary()


def test_too_many_bad_records_stop_the_run_with_the_summary():
    with pytest.raises(DataError, match="too many bad records: 3 skipped, more than the "
                                        "limit of 2") as error:
        _read("bad_records.jsonl", "fid", max_bad_records=2)
    assert "question: missing" in str(error.value)


def test_truncated_json_file_keeps_the_complete_records():
    report = ValidationReport()
    reader = read_records(FIXTURES / "truncated_hotpot.json", "hotpotqa", report=report)
    first = next(reader)
    assert first.id == "5a8b57f25542995d1e6f1371"
    with pytest.raises(DataError, match=r"truncated_hotpot.json, line \d+: truncated or "
                                        r"invalid JSON in record 2 .*1 complete records"):
        next(reader)


def test_over_long_text_is_truncated_with_a_warning(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text('{"question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": "'
                    + "x" * 50 + '"}]}\n')
    report = ValidationReport()
    (record,) = read_records(path, "fid", report=report, max_passage_chars=10)
    assert record.ctxs[0].text == "x" * 10 and report.warnings == 1
    assert "over-long text: 50 characters, truncated to 10" in report.summary()


def test_file_level_problems(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list(read_records(tmp_path / "missing.json", "fid"))
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(DataError, match="the file is empty"):
        list(read_records(tmp_path / "empty.json", "fid"))
    with pytest.raises(DataError, match="unknown dataset format 'squad'"):
        list(read_records(tmp_path / "empty.json", "squad"))
    (tmp_path / "object.json").write_text('[{"question": "q"} {"x": 1}]')
    with pytest.raises(DataError, match="expected ',' or ']' after record 1"):
        list(read_records(tmp_path / "object.json", "fid", report=ValidationReport()))


def test_array_streaming_across_small_chunks_keeps_lines(tmp_path, monkeypatch):
    """Elements split across read chunks (including inside multi-byte UTF-8) parse whole,
    with the line each starts on."""
    from gumbel_jax.data import jsonstream

    monkeypatch.setattr(jsonstream, "_CHUNK", 7)
    lines = ["["]
    for i in range(30):
        lines.append(f'  {{"question": "q{i} café", "answers": ["a"], '
                     f'"ctxs": [{{"title": "t", "text": "é {i}"}}]}}' + ("," if i < 29 else ""))
    lines.append("]")
    path = tmp_path / "many.json"
    path.write_text("\n".join(lines), encoding="utf-8")
    items = list(jsonstream.iter_json_array(path))
    assert [line for line, _ in items] == list(range(2, 32))
    assert [obj["question"] for _, obj in items] == [f"q{i} café" for i in range(30)]


def test_a_record_whose_ranking_metric_cannot_be_computed_is_a_bad_record(tmp_path):
    """Preparing a multi-hop set needs gold passages on every record (its Recall@k, NDCG@k
    and MRR count them); the problem names the file, the record, the field and why."""
    import json

    path = tmp_path / "hotpot_dev_distractor_v1.json"
    good = json.loads((FIXTURES / "hotpot_dev_distractor.json").read_text())[0]
    no_facts = {k: v for k, v in good.items() if k != "supporting_facts"} | {"_id": "nofacts"}
    elsewhere = good | {"_id": "elsewhere", "supporting_facts": [["Not a context title", 0]]}
    path.write_text(json.dumps([good, no_facts, elsewhere]))
    # Reranking an unlabelled file stays possible: the check is for prepared datasets.
    assert len(list(read_records(path, "hotpotqa"))) == 3
    report = ValidationReport()
    records = list(read_records(path, "hotpotqa", report=report, require_ranking_labels=True))
    assert [r.id for r in records] == [good["_id"]] and report.skipped == 2
    first, second = (str(p) for p in report.problems)
    assert first.startswith(f"{path}, record 2 (line 1): supporting_facts: missing: no gold "
                            "passages, so Recall@k, NDCG@k and MRR on gold passages "
                            "(hotpotqa's ranking metrics) cannot be computed")
    assert second.startswith(f"{path}, record 3 (line 1): supporting_facts: no gold passage "
                             "among the candidates")
    with pytest.raises(DataError, match="too many bad records: 1 skipped"):
        list(read_records(path, "hotpotqa", report=ValidationReport(max_bad_records=0),
                          require_ranking_labels=True))


def test_answer_recall_datasets_need_no_gold_passages():
    """FiD's NQ / TriviaQA mark no gold passage: their ranking metric is answer recall, which
    needs only the answers, so every record prepares; a question with no answer-containing
    passage is kept (it counts as a miss)."""
    from gumbel_jax.data import RANKING_LABELS

    assert RANKING_LABELS["nq"] == RANKING_LABELS["triviaqa"] == "answer"
    for name, dataset in (("nq_fid_dev.json", "nq"), ("tqa_fid_dev.jsonl", "triviaqa")):
        report = ValidationReport(max_bad_records=0)
        records = list(read_records(FIXTURES / name, dataset, report=report,
                                    require_ranking_labels=True))
        assert len(records) == 3 and not any(r.has_gold_labels for r in records)
        assert not any(records[-1].answer_passages)
    assert records[1].answer_passages == [False, False, True]
