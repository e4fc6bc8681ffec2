"""experiments.demo_fp8_reader: the demo reader measured with its encoder unquantized and in
e4m3 from one trained reader, and docs/performance.md's table of the recorded report."""

import json
import pathlib

from experiments import demo_fp8_reader

DEMO = pathlib.Path(__file__).parents[1] / "docs" / "demo"
REPORTS = [DEMO / "fp8_reader_bfloat16.json", DEMO / "fp8_reader_float32.json"]


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
    assert report["reader"]["dtype"] == "bfloat16"  # the default: the accelerators' dtype
    assert "| EM, all candidates |" in demo_fp8_reader.markdown_table(report)


def test_frozen_copies_compute_in_the_dtype_asked_and_quantize_the_encoder_only():
    import jax.numpy as jnp

    from gumbel_jax.models import FiDReader, T5Config
    from gumbel_jax.models.fp8 import E4M3, Fp8Linear

    trained = FiDReader.random(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32,
                                        num_heads=4, num_layers=1, num_decoder_layers=1))
    copy = demo_fp8_reader.frozen_copy(trained, "bfloat16", fp8=True)
    query = copy.t5.encoder.layers[0].self_attention.q
    assert isinstance(query, Fp8Linear) and query.kernel[...].dtype == E4M3
    decoder_query = copy.t5.decoder.layers[0].self_attention.q
    assert jnp.dtype(decoder_query.dtype) == jnp.bfloat16  # computes in it
    assert decoder_query.kernel[...].dtype == jnp.bfloat16  # stored in it, as the trainer does
    trained_kernel = trained.t5.decoder.layers[0].self_attention.q.kernel[...]
    assert (decoder_query.kernel[...] == trained_kernel.astype(jnp.bfloat16)).all()
    plain = demo_fp8_reader.frozen_copy(trained, "float32", fp8=False)
    assert not isinstance(plain.t5.encoder.layers[0].self_attention.q, Fp8Linear)


def test_docs_tables_are_the_recorded_reports():
    page = (DEMO.parent / "performance.md").read_text()
    for report in REPORTS:
        assert demo_fp8_reader.markdown_table(json.loads(report.read_text())) in page, report


def test_table_of_a_bad_report_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"settings": {"k": 5}}')
    assert demo_fp8_reader.main(["--table", str(bad)]) == 2
    assert f"error: {bad}: not a demo_fp8_reader report" in capsys.readouterr().err
