"""The demo pipeline end to end at a tiny setting: every stage runs and writes its files, and
each method trains with its own objective."""

import json
import pathlib

import pytest

from experiments import demo


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["--seeds", "2", "--num_train", "48", "--num_eval", "12", "--batch_size", "8",
            "--reader_steps", "4", "--ranker_steps", "3", "--eval_every", "2",
            "--methods", *demo.METHODS, "--out", str(out)]
    assert demo.main(argv) == 0
    return out


@pytest.mark.slow
def test_every_method_trains_with_its_own_objective(tiny_run):
    """The same ranker, batch and key per seed: only the objective differs, so the first
    logged losses of the six methods must all differ (a method list that never reached the
    objective would train every method as G-Rerank)."""
    results = json.loads((tiny_run / "results.json").read_text())
    assert list(results["runs"]) == list(demo.METHODS)
    for seed in range(2):
        first = {method: runs[seed]["loss"][0] for method, runs in results["runs"].items()}
        assert len(set(first.values())) == len(demo.METHODS), first


@pytest.mark.slow
def test_demo_writes_tables_json_and_plots(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    assert list(results["methods"]) == list(demo.METHODS)
    assert results["curve_steps"] == [0, 2, 3]
    for method in demo.METHODS:
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


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tables(markdown: str) -> list[str]:
    """Every markdown table of a page, as its block of consecutive '|' lines."""
    blocks, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def test_published_demo_tables_are_the_recorded_run():
    """docs/demo/results.md is what the demo writes from docs/demo/results.json, and every
    demo table in the README and docs/demo.md, and the numbers the README quotes, are that
    run's (a rerun that changes the numbers must update all three)."""
    results = json.loads((ROOT / "docs/demo/results.json").read_text())
    recorded = (ROOT / "docs/demo/results.md").read_text()
    config = results["config"]
    tables = demo.markdown_tables(results["methods"], results["reader"]["exact_match"],
                                  config["k"], config["seeds"])
    assert tables in recorded
    assert f"— {results['timing_s']['total_s'] / 60:.1f} min" in recorded
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Results on the synthetic world")[1].split("\n## ")[0]
    page = (ROOT / "docs/demo.md").read_text()
    shown = _tables(section) + _tables(page)
    assert len(_tables(section)) >= 1 and len(_tables(page)) >= 2
    for table in shown:
        assert table in recorded, table
    bridge = {method: 100 * stats["indirect_recall@5"]["mean"]
              for method, stats in results["methods"].items()}
    assert (f"bridge Recall@5 {bridge['EMDR']:.1f}% and {bridge['PDist']:.0f}%" in
            " ".join(section.split()))
    assert f"keeps it ({bridge['G-Rerank']:.1f}%)" in section
    minutes = f"{results['timing_s']['total_s'] / 60:.1f}"
    assert f"about {minutes} minutes" in section and f"**{minutes} min**" in page
