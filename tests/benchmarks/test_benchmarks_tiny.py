"""Every benchmark runs end to end at tiny size on CPU and writes its JSON report."""

import argparse
import dataclasses
import json
import math

import pytest

from benchmarks import attention, common, grerank_step, memory


def _report(tmp_path, module, args):
    out = tmp_path / "report.json"
    module.main([*args, "--out", str(out)])
    return json.loads(out.read_text())


@pytest.mark.slow
def test_grerank_step_tiny(tmp_path):
    report = _report(tmp_path, grerank_step, ["--size", "tiny", "--steps", "2", "--remat",
                                              "--num_samples", "2"])
    assert report["step_s_median"] > 0 and report["questions_per_s"] > 0
    assert report["flops_per_step"]["total"] > 0
    # The loss of the synthetic batch: finite and of the order of a tiny vocabulary's NLL
    # (a loss of inf or 0 is a broken step, not a number to time).
    assert math.isfinite(report["final_loss"]) and 0 < report["final_loss"] < 20


def test_grerank_step_tiny_reader_fp8_and_reranker_packing_bucket(tmp_path):
    """The trainer's step with the frozen reader's encoder in e4m3 and the reranker packed at
    its batch's bucket runs, and the report counts the FP8 products XLA formed (on a CPU
    none: it multiplies dequantized values)."""
    report = _report(tmp_path, grerank_step, ["--size", "tiny", "--steps", "1",
                                              "--reader_fp8", "--count_kernels",
                                              "--reranker_packing_bucket", "0.05"])
    assert report["options"]["reader_fp8"] is True
    assert 0 < report["reranker_capacity"] < 1  # the trainer's bucket for this batch
    assert math.isfinite(report["final_loss"]) and 0 < report["final_loss"] < 20
    products = report["fp8_products"]
    assert products["dots"] > 0 and products["e4m3_dots"] == products["cublaslt_fp8_gemms"] == 0


def test_fp8_products_are_counted_from_the_optimised_hlo():
    """On XLA's own output: a CPU compiles an e4m3 product as converts and a float dot (no
    FP8 product), and the printed dot names its operands without their types. On text in that
    format with an e4m3 dot (as a GPU's Triton fusion prints it) and a cuBLASLt FP8 GEMM: each
    counted once, an operand's type read from its own computation's definitions."""
    import jax
    import jax.numpy as jnp

    e4m3 = jnp.ones((32, 64), jnp.float8_e4m3fn)
    text = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jnp.float32)).lower(
        e4m3, e4m3.T).compile().as_text()
    assert "dot(%" in text  # operands by name: the format the parser must read
    assert grerank_step.fp8_products(text) == {"dots": 1, "e4m3_dots": 0,
                                               "cublaslt_fp8_gemms": 0}
    gpu_like = "\n".join([
        "%triton_gemm (param_0: f8e4m3fn[8,32], param_1: f8e4m3fn[32,16]) -> bf16[8,16] {",
        "  %param_0 = f8e4m3fn[8,32]{1,0} parameter(0)",
        "  %param_1 = f8e4m3fn[32,16]{1,0} parameter(1)",
        "  ROOT %dot.3 = bf16[8,16]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}",
        "}",
        "%fused_dot (param_0: bf16[8,32], param_1: bf16[32,16]) -> bf16[8,16] {",
        "  %param_0 = bf16[8,32]{1,0} parameter(0)",  # the same name, another type
        "  %param_1 = bf16[32,16]{1,0} parameter(1)",
        "  ROOT %dot.4 = bf16[8,16]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}",
        "}",
        "ENTRY %main (a: f8e4m3fn[8,32], b: f8e4m3fn[16,32]) -> bf16[8,16] {",
        '  %gemm = (bf16[8,16]{1,0}, s8[0]{0}) custom-call(%a, %b), '
        'custom_call_target="__cublas$lt$matmul$f8"',
        "}"])
    assert grerank_step.fp8_products(gpu_like) == {"dots": 2, "e4m3_dots": 1,
                                                   "cublaslt_fp8_gemms": 1}


@pytest.mark.slow
def test_grerank_step_tiny_objective_option(tmp_path):
    """The benchmark times a baseline through --objective (one baseline stands for all: the
    script's code path is the same; the objectives' wiring is tested in
    tests/training/test_step.py)."""
    objective = "adist"
    report = _report(tmp_path, grerank_step, ["--size", "tiny", "--steps", "1",
                                              "--objective", objective])
    assert report["options"]["objective"] == objective and report["step_s_median"] > 0
    assert "flops_per_step" not in report  # G-Rerank's count does not apply


@pytest.mark.slow
def test_attention_tiny(tmp_path):
    report = _report(tmp_path, attention, ["--size", "tiny", "--steps", "2"])
    assert report["variants"]["blockwise"]["step_s_median"] > 0
    assert report["variants"]["bias/xla"]["step_s_median"] > 0
    assert report["ops"]["step_s_median"] > 0


@pytest.mark.slow
def test_memory_tiny(tmp_path):
    report = _report(tmp_path, memory, ["--size", "tiny", "--batches", "1", "2"])
    assert report["largest_batch_that_fits"] == 2


@pytest.mark.slow
def test_torch_reference_consistency_tiny(tmp_path):
    pytest.importorskip("torch")
    from benchmarks import torch_reference

    report = _report(tmp_path, torch_reference, ["--size", "tiny", "--check", "--steps", "1"])
    consistency = report["consistency"]
    assert consistency["loss_jax"] == pytest.approx(consistency["loss_torch"], rel=1e-5)
    assert consistency["grad_scores_max_abs_diff"] < 1e-5 * max(
        1.0, consistency["grad_scores_max_abs"]) + 1e-7
    assert report["eager"]["step_s_median"] > 0


def test_flop_count_matches_a_hand_count():
    """One encoder layer, no FF gating: 2 * (4 d inner + 2 d ff) + 4 L inner per token."""
    from gumbel_jax.models import T5Config

    config = T5Config(d_model=8, d_kv=2, num_heads=2, d_ff=16, num_layers=1)
    per_token = 2 * (4 * 8 * 4 + 2 * 8 * 16) + 4 * 5 * 4
    assert common._stack_flops(config, tokens=10, seq_len=5, layers=1) == 10 * per_token


def test_torch_reference_is_the_fair_setup():
    """The PyTorch peer: SDPA in the frozen reader's encoder, eager attention only in its
    decoder (the mask gradient), PyTorch's fused tanh GELU, and bf16 weights with float32
    master weights that the optimizer updates and copies back."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from benchmarks import torch_reference
    from gumbel_jax.training.factory import model_architectures

    reader_cfg, ranker_cfg = model_architectures(common.model_config("tiny", dtype="float32"),
                                                 common.TINY_VOCAB)
    reader = torch_reference._reader(reader_cfg, transformers, device="cpu",
                                     dtype=torch.bfloat16)
    encoder_attention = reader.encoder.block[0].layer[0].SelfAttention
    cross_attention = reader.decoder.block[0].layer[1].EncDecAttention
    assert encoder_attention.config._attn_implementation == "sdpa"
    assert cross_attention.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in reader.parameters())
    gated = transformers.T5Config(feed_forward_proj="gated-gelu")
    hf = torch_reference._hf_config(
        dataclasses.replace(ranker_cfg, feed_forward_proj="gated-gelu"), transformers, "sdpa")
    assert gated.dense_act_fn == "gelu_new" and hf.dense_act_fn == "gelu_pytorch_tanh"

    peer = torch_reference.TorchGRerank(reader_cfg, ranker_cfg, device="cpu",
                                        dtype=torch.bfloat16, score_token=7, k=2)
    # RankT5's head is untied (T5 v1.1), as ours: two matrices trained, not one.
    assert not ranker_cfg.tie_word_embeddings
    assert peer.ranker.lm_head.weight is not peer.ranker.shared.weight
    assert any(p is peer.ranker.lm_head.weight for p in peer.weights.params)
    module = torch.nn.Linear(4, 3)
    weights = torch_reference.MasterWeights(module, dtype=torch.bfloat16, fused=False, lr=0.1)
    assert module.weight.dtype == torch.bfloat16 and weights.master[0].dtype == torch.float32
    before = weights.master[0].clone()
    module(torch.ones(2, 4, dtype=torch.bfloat16)).sum().backward()
    weights.step()
    assert not torch.equal(weights.master[0], before)  # the float32 copy moved
    assert torch.equal(module.weight, weights.master[0].to(torch.bfloat16))
    assert module.weight.grad is None


def test_torch_reference_compiles_every_block_once_and_runs_compiled_modes_last():
    """``compile_blocks`` marks each T5 block of both models for compilation (lazily: nothing
    compiles until a step runs), only once; it changes the models in place, so it runs after
    the eager and whole-step attempts."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from benchmarks import torch_reference
    from gumbel_jax.training.factory import model_architectures

    reader_cfg, ranker_cfg = model_architectures(common.model_config("tiny", dtype="float32"),
                                                 common.TINY_VOCAB)
    model = torch_reference.TorchGRerank(reader_cfg, ranker_cfg, device="cpu",
                                         dtype=torch.float32, score_token=7, k=2)
    blocks = sum(c.num_layers + c.num_decoder_layers for c in (reader_cfg, ranker_cfg))

    def compiled_calls():
        return [m._compiled_call_impl for net in (model.reader, model.ranker)
                for m in net.modules() if getattr(m, "_compiled_call_impl", None) is not None]

    assert torch_reference.compile_blocks(model) == blocks
    first = compiled_calls()
    assert len(first) == blocks
    torch_reference.compile_blocks(model)  # a second call does not wrap them again
    assert all(a is b for a, b in zip(first, compiled_calls(), strict=True))
    args = argparse.Namespace(batch=16, modes=["compile_blocks", "compile", "eager"],
                              extra_batches=[32], extra_modes=["compile_blocks", "eager"])
    assert torch_reference.attempts(args) == [
        (16, "eager"), (32, "eager"), (16, "compile"), (16, "compile_blocks"),
        (32, "compile_blocks")]


def test_generation_tiny_equals_transformers_generate(tmp_path):
    """The generation benchmark's PyTorch peer: transformers' cached greedy ``generate`` on
    our reader's exported weights, the same encoder outputs and the top-k passages as its
    attention mask gives our cached and uncached greedy answers token for token (float32)."""
    pytest.importorskip("torch")
    from benchmarks import generation

    report = _report(tmp_path, generation, ["--torch", "--max_length", "6", "--num_beams",
                                            "1", "--steps", "1", "--warmup", "0"])
    result = report["max_length"]["6"]
    assert result["transformers_equals_cached"] and result["cached_equals_uncached"]
    assert result["transformers_same_answers"] == report["shape"]["batch"]
    assert result["variants"]["transformers_greedy"]["answers_per_s"] > 0


def test_rerank_tiny_scores_equal_transformers(tmp_path):
    """The reranking benchmark's PyTorch peer scores the same passages as ours, on the
    tiny reranker's untied head (transformers >= 5 ties every T5 head unless told apart)."""
    pytest.importorskip("torch")
    from benchmarks import rerank

    report = _report(tmp_path, rerank, ["--torch", "--rows", "12", "--steps", "1",
                                        "--warmup", "0"])
    assert report["scores_max_abs_diff"] < 1e-5 * max(1.0, report["scores_max_abs"])
    assert report["scores_max_abs"] > 0.05  # not all zeros
    assert 0 < report["real_tokens"] < report["rows"] * report["doc_len"]
    assert report["timings"]["ours"]["passages_per_s"] > 0
