"""The demo pipeline end to end at a tiny setting: every stage runs and writes its files."""

import json

import pytest

from experiments import demo


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["--seeds", "2", "--num_train", "48", "--num_eval", "12", "--batch_size", "8",
            "--reader_steps", "4", "--ranker_steps", "3", "--eval_every", "2",
            "--methods", "G-Rerank", "EMDR", "--out", str(out)]
    assert demo.main(argv) == 0
    return out


def test_demo_writes_tables_json_and_plots(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert list(results["methods"]) == ["G-Rerank", "EMDR"]
    assert results["curve_steps"] == [0, 2, 3]
    for method in ("G-Rerank", "EMDR"):
        stats = results["methods"][method]
        for name in ("recall@5", "ndcg@5", "em", "f1", "indirect_recall@5", "indirect_mrr",
                     "indirect_ndcg@5"):
            assert len(stats[name]["values"]) == 2 and 0 <= stats[name]["mean"] <= 1
        assert set(stats["roles_in_top_k"]) == {"bridge", "answer", "trap", "distractor",
                                                "false_bridge"}
        # the same initialisation: every method starts from the same ranker per seed
        for run in results["runs"][method]:
            assert len(run["curve"]) == 3 and len(run["loss"]) == 3
    first = [run["curve"][0] for run in results["runs"]["G-Rerank"]]
    assert first == [run["curve"][0] for run in results["runs"]["EMDR"]]
    assert set(results["reader"]["exact_match"]) == {
        "gold passages + random others", "all candidates", "random candidates",
        "answer passage + random others, no bridge"}
    table = (tiny_run / "results.md").read_text()
    assert "| Method | Recall@5 | NDCG@5 | EM | F1 |" in table
    assert "| Method | Recall@5 | MRR | NDCG@5 |" in table and "| G-Rerank |" in table
    assert "--seeds 2" in table  # the command that made it
    for plot in ("indirect_recall.png", "top_k_roles.png"):
        assert (tiny_run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--seeds", "0"])
    assert exit_info.value.code == 2
    assert "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--methods", "NotAMethod"])
    with pytest.raises(SystemExit):
        demo.main(["--num_countries", "3"])  # 4 distractors need 4 other countries
    assert "the world: num_countries=3" in capsys.readouterr().err


def test_top_k_roles_counts_each_role():
    from gumbel_jax.data.records import Passage, Record

    roles = ["bridge", "answer", "trap", "distractor", "false_bridge"]
    record = Record("q", "Where ?", ("C",), tuple(Passage(r, r) for r in roles),
                    {"roles": roles})
    prediction = {"ranking": [1, 0, 4, 3, 2]}
    assert demo.top_k_roles([prediction], [record], 2) == {
        "bridge": 1.0, "answer": 1.0, "trap": 0.0, "distractor": 0.0, "false_bridge": 0.0}
