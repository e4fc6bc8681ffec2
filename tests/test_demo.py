"""The demo pipeline end to end at a tiny setting: every stage runs and writes its files, and
each method trains with its own objective."""

import json
import os
import pathlib

import pytest

from experiments import demo


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every method, two seeds, untuned (one compile per method keeps it quick)."""
    out = tmp_path_factory.mktemp("demo")
    argv = ["--seeds", "2", "--num_train", "48", "--num_eval", "12", "--num_dev", "8",
            "--batch_size", "8", "--reader_steps", "4", "--ranker_steps", "3",
            "--eval_every", "2", "--ks", "5", "--no-tune", "--methods", *demo.METHODS,
            "--out", str(out)]
    assert demo.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """The tuning path at two k: two methods' grids on the dev questions, one seed."""
    out = tmp_path_factory.mktemp("demo_tuned")
    argv = ["--seeds", "1", "--num_train", "48", "--num_eval", "12", "--num_dev", "8",
            "--batch_size", "8", "--reader_steps", "4", "--ranker_steps", "2",
            "--eval_every", "2", "--ks", "3", "5", "--methods", "G-Rerank", "PDist",
            "--out", str(out)]
    assert demo.main(argv) == 0
    return out


@pytest.mark.slow
def test_every_method_trains_with_its_own_objective(tiny_run):
    """The same ranker, batch and key per seed: only the objective differs, so the first
    logged losses of the six methods must all differ (a method list that never reached the
    objective would train every method as G-Rerank)."""
    runs = json.loads((tiny_run / "results.json").read_text())["by_k"]["5"]["runs"]
    assert list(runs) == list(demo.METHODS)
    for seed in range(2):
        first = {method: seeds[seed]["loss"][0] for method, seeds in runs.items()}
        assert len(set(first.values())) == len(demo.METHODS), first


@pytest.mark.slow
def test_demo_writes_tables_json_and_plots(tiny_run):
    results = json.loads((tiny_run / "results.json").read_text())
    result = results["by_k"]["5"]
    assert list(result["methods"]) == list(demo.METHODS) and result["tuning"] == {}
    assert results["curve_steps"] == [0, 2, 3]
    for method in demo.METHODS:
        stats = result["methods"][method]
        for name in ("recall@5", "ndcg@5", "em", "f1", "indirect_recall@5", "indirect_mrr",
                     "indirect_ndcg@5"):
            assert len(stats[name]["values"]) == 2 and 0 <= stats[name]["mean"] <= 1
        assert set(stats["roles_in_top_k"]) == {"bridge", "answer", "trap", "distractor",
                                                "false_bridge"}
        for run in result["runs"][method]:
            assert len(run["curve"]) == 3 and len(run["loss"]) == 3
    # the same initialisation: every method starts from the same ranker per seed
    first = [run["curve"][0] for run in result["runs"]["G-Rerank"]]
    assert first == [run["curve"][0] for run in result["runs"]["EMDR"]]
    assert set(results["reader"]["exact_match"]) == {
        "all candidates", "gold passages + random others, k = 5", "random candidates, k = 5",
        "answer passage + random others, no bridge, k = 5",
        "bridge + k - 1 random answer-like (the best top k), k = 5"}
    table = (tiny_run / "results.md").read_text()
    assert "| Method | setting | Recall@5 | NDCG@5 | EM | F1 |" in table
    assert "| Method | Recall@5 | MRR | NDCG@5 |" in table and "| G-Rerank | default |" in table
    assert "--seeds 2" in table and "--no-tune" in table  # the command that made it
    # where it came from: the commit and the float path the reader trained on
    source = results["provenance"]
    assert source["git_commit"] and source["cpus"] >= 1 and "jax" in source["versions"]
    assert source["xla_flags"].split() == os.environ.get("XLA_FLAGS", "").split()
    assert f"commit {source['git_commit'][:7]}, {source['cpus']} CPU" in table
    for plot in ("indirect_recall.png", "top_k_roles.png"):
        assert (tiny_run / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tuning_trains_every_grid_point_and_reports_with_the_best(tuned_run):
    """Each method trains its whole grid on the dev questions at the first k; the chosen
    point is the best dev EM (earliest on ties), every k reports with it, and the tables say
    which it was."""
    results = json.loads((tuned_run / "results.json").read_text())
    table = (tuned_run / "results.md").read_text()
    tuned, other = results["by_k"]["3"], results["by_k"]["5"]
    assert other["tuning"] == {} and "**Table 4 (k = 3) — tuning" in table
    for method, name in (("G-Rerank", "g_rerank"), ("PDist", "pdist")):
        tuning = tuned["tuning"][method]
        assert tuning["points"] == demo.grid_points(demo.TUNING[name])
        ems = [dev["em"] for dev in tuning["dev"]]
        assert tuning["chosen"] == tuning["points"][ems.index(max(ems))]
        assert tuned["chosen"][method] == other["chosen"][method] == tuning["chosen"]
        assert f"| {method} | {demo.label(tuning['chosen'])} |" in table


def test_grid_points_choice_and_labels():
    axes = (("theta", (1.0, 0.1)), ("temperature_gold", (1.0, 0.1)))
    assert demo.grid_points(axes) == [
        {"theta": 1.0, "temperature_gold": 1.0}, {"theta": 1.0, "temperature_gold": 0.1},
        {"theta": 0.1, "temperature_gold": 1.0}, {"theta": 0.1, "temperature_gold": 0.1}]
    assert demo.choose([{"em": 0.5}, {"em": 0.7}, {"em": 0.7}]) == 1  # ties: the earlier
    assert demo.label({"theta": 0.1, "temperature_gold": 1.0}) == "θ=0.1, T=1"
    assert demo.TUNING["g_rerank"][0][1][0] == 0.5  # the paper's tau wins ties
    # the same budget for every method: four trainings each
    assert {len(demo.grid_points(axes)) for axes in demo.TUNING.values()} == {4}
    objective = demo.objective_for("PDist", 3, {"theta": 0.1, "temperature_gold": 1.0})
    assert (objective.name, objective.k, objective.theta, objective.temperature_gold) == (
        "pdist", 3, 0.1, 1.0)


def test_ceiling_recall_by_hand():
    """Bridge first, then k - 1 of the m answer-like passages: gold Recall@k is
    (1 + min(1, (k - 1) / m)) / 2 per question."""
    from gumbel_jax.data.records import Passage, Record

    def question(m):
        roles = ["bridge", "answer", "trap"] + ["distractor"] * (m - 1)
        roles += ["false_bridge"] * (10 - len(roles))
        return Record("q", "Where ?", ("C",), tuple(Passage(r, r) for r in roles),
                      {"roles": roles})

    records = [question(3), question(7)]
    assert demo.answer_like_counts(records).tolist() == [3, 7]
    assert demo.ceiling_recall(records, 5) == pytest.approx(((1 + 1) / 2 + (1 + 4 / 7) / 2) / 2)
    assert demo.ceiling_recall(records, 3) == pytest.approx(((1 + 2 / 3) / 2 + (1 + 2 / 7) / 2) / 2)


def test_demo_world_varies_the_number_of_answer_like_passages():
    """3 to 7 answer-like passages per question (the answer and 2-6 "born in" distractors),
    so no k matches them all; the candidates stay 10 with every role present."""
    from gumbel_jax.data.synthetic import make_records

    records = make_records(demo.world_config(demo.DemoConfig()), 300, split_seed=1)
    counts = demo.answer_like_counts(records)
    assert set(counts.tolist()) == {3, 4, 5, 6, 7}
    for record in records:
        roles = record.metadata["roles"]
        assert len(roles) == 10 and roles.count("bridge") == roles.count("trap") == 1
        assert roles.count("false_bridge") >= 1


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
    assert recorded.startswith(demo.header(results) + demo.markdown_tables(results))
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Results on the synthetic world")[1].split("\n## ")[0]
    page = (ROOT / "docs/demo.md").read_text()
    # The demo's tables (the page's other tables are measurements of other runs, in prose)
    demo_tables = [table for table in _tables(section) + _tables(page)
                   if table.startswith(("| Method |", "| Reader reads |"))]
    assert len(demo_tables) >= 5
    for table in demo_tables:
        assert table in recorded, table
    text = " ".join(section.split())
    for k in results["config"]["ks"]:
        methods = results["by_k"][str(k)]["methods"]
        bridge = {method: 100 * stats[f"indirect_recall@{k}"]["mean"]
                  for method, stats in methods.items()}
        assert (f"k = {k}: G-Rerank {bridge['G-Rerank']:.1f}%, EMDR {bridge['EMDR']:.1f}%, "
                f"PDist {bridge['PDist']:.1f}%") in text
    minutes = f"{results['timing_s']['total_s'] / 60:.1f}"
    assert f"about {minutes} minutes" in section and f"**{minutes} min**" in page



def test_world_spread_is_validated_and_zero_keeps_the_fixed_world():
    """A spread wider than the count, or more distractors than countries or candidates
    allow, is refused; spread 0 keeps every question at num_born_distractors."""
    from gumbel_jax.data.synthetic import WorldConfig, make_records, make_world

    with pytest.raises(ValueError, match="born_distractors_spread=5"):
        make_world(WorldConfig(num_born_distractors=4, born_distractors_spread=5))
    with pytest.raises(ValueError, match="num_countries=5"):  # 4 + 2 distractors need 7
        make_world(WorldConfig(num_countries=5, born_distractors_spread=2))
    with pytest.raises(ValueError, match="room for bridge, answer, trap and the 8"):
        make_world(WorldConfig(num_countries=9, num_born_distractors=6,
                               born_distractors_spread=2))
    fixed = make_records(WorldConfig(), 20)
    assert {r.metadata["roles"].count("distractor") for r in fixed} == {4}
