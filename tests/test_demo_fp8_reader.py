"""experiments.demo_fp8_reader: the demo reader measured with its encoder unquantized and in
e4m3 from one trained reader, and docs/performance.md's table of the recorded report."""

import json
import pathlib

from experiments import demo_fp8_reader

REPORT = pathlib.Path(__file__).parents[1] / "docs" / "demo" / "fp8_reader.json"


def test_measures_one_reader_both_ways(tmp_path):
    out = tmp_path / "fp8.json"
    assert demo_fp8_reader.main(["--reader_steps", "20", "--num_train", "32", "--num_eval",
                                 "16", "--seeds", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    plain, fp8 = report["float"], report["fp8_encoder"]
    assert plain["reader_exact_match"].keys() == fp8["reader_exact_match"].keys()
    # The same trained reader both ways: its NLLs are close, and not equal (quantized).
    for weight, value in plain["gold_nll_by_bridge_weight"].items():
        assert fp8["gold_nll_by_bridge_weight"][weight] != value
        assert abs(fp8["gold_nll_by_bridge_weight"][weight] - value) < 0.05 * value
    assert report["exact_match_change"] == {
        name: fp8["reader_exact_match"][name] - value
        for name, value in plain["reader_exact_match"].items()}
    assert plain["g_rerank_bridge_recall@5_per_seed"] == []  # --seeds 0
    assert report["git_commit"] and report["provenance"]["versions"]["jax"]
    assert "| EM, all candidates |" in demo_fp8_reader.markdown_table(report)


def test_docs_table_is_the_recorded_report():
    page = (REPORT.parents[1] / "performance.md").read_text()
    assert demo_fp8_reader.markdown_table(json.loads(REPORT.read_text())) in page


def test_table_of_a_bad_report_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"settings": {"k": 5}}')
    assert demo_fp8_reader.main(["--table", str(bad)]) == 2
    assert f"error: {bad}: not a demo_fp8_reader report" in capsys.readouterr().err
