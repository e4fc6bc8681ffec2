"""The docs' performance tables are the generator's output from the committed JSONs."""

import json

import pytest

from benchmarks import perf_table


@pytest.mark.parametrize("name", perf_table.DOCUMENTS)
def test_committed_tables_equal_the_generated_ones(name):
    text = (perf_table.ROOT / name).read_text()
    assert perf_table.render(text) == text, (
        f"{name}: run `python -m benchmarks.perf_table` after changing results")


def test_the_performance_page_holds_both_tables():
    text = (perf_table.ROOT / "docs/performance.md").read_text()
    for name in perf_table.TABLES:
        assert f"<!-- perf-table:{name} -->" in text and f"<!-- /perf-table:{name} -->" in text


def test_render_replaces_a_stale_table_and_keeps_the_rest():
    stale = "intro\n<!-- perf-table:step -->\n| old |\n<!-- /perf-table:step -->\noutro\n"
    rendered = perf_table.render(stale)
    assert rendered.startswith("intro\n") and rendered.endswith("outro\n")
    assert "| old |" not in rendered and perf_table.step_table() in rendered
    with pytest.raises(ValueError, match="unknown table"):
        perf_table.render("<!-- perf-table:nope -->\n<!-- /perf-table:nope -->")


def test_a_row_reads_its_json():
    path, label, mode = perf_table.STEP_ROWS[1]
    report = json.loads((perf_table.RESULTS / path).read_text())
    row = perf_table.step_row(path, label, mode)
    assert f"{report['step_s_median']:.3f}" in row
    assert f"{100 * report['mfu_datasheet']:.1f}%" in row
    assert f"{report['peak_memory_bytes'] / 1e9:.1f} GB" in row


def test_a_failed_attempt_shows_its_error(tmp_path, monkeypatch):
    monkeypatch.setattr(perf_table, "RESULTS", tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.json").write_text(json.dumps({
        "device_name": "NVIDIA H100 80GB HBM3", "shape": {"batch": 16},
        "other_batches": {"32": {"shape": {"batch": 32},
                                 "eager": {"error": "out of memory: CUDA out of memory."}}}}))
    row = perf_table.step_row("d/t.json", "peer", "other_batches/32/eager")
    assert "| 32 | out of memory: CUDA out of memory. |" in row and "H100 80GB HBM3" in row
