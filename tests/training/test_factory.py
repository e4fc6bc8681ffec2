"""The model factory: one attention setting reaches every attention layer of both models, and
the benchmark's step is the trainer's step (same models, same lowered program, same FLOPs)."""

import argparse

import jax
import pytest
from flax import nnx

from benchmarks import common, grerank_step
from gumbel_jax.models import BertConfig, FiDReader, T5Config
from gumbel_jax.training.config import ModelConfig, ObjectiveConfig, OptimizerConfig
from gumbel_jax.training.factory import attention_kernels, build_models
from gumbel_jax.training.step import make_optimizer, make_train_step


def _expected_layers(reader_arch: T5Config, ranker_arch) -> tuple[int, int]:
    reader = reader_arch.num_layers + 2 * reader_arch.num_decoder_layers
    if isinstance(ranker_arch, BertConfig):
        return reader, ranker_arch.num_hidden_layers
    return reader, ranker_arch.num_layers + 2 * ranker_arch.num_decoder_layers


@pytest.mark.parametrize("kind", ["rankt5", "cross_encoder"])
@pytest.mark.parametrize("kernel", ["", "xla", "cudnn"])
def test_one_attention_setting_reaches_every_attention_layer(kind, kernel):
    # The bug this guards: ModelConfig(attention="cudnn") used to reach only the reader's
    # cross-attention; both encoders silently ran einsum attention.
    config = ModelConfig(reader="tiny", reranker="tiny", reranker_kind=kind, attention=kernel,
                         num_layers=2, score_token_id=3)
    reader, ranker = build_models(config, vocab_size=40)  # built, not run: any machine
    expected = kernel or None
    reader_kernels, ranker_kernels = attention_kernels(reader), attention_kernels(ranker)
    assert (len(reader_kernels), len(ranker_kernels)) == _expected_layers(
        reader.config, ranker.config if kind == "cross_encoder" else ranker.t5.config)
    assert set(reader_kernels.values()) == {expected}
    assert set(ranker_kernels.values()) == {expected}


def test_abstract_paper_models_carry_the_kernel_and_the_frozen_reader_dtype():
    config = common.model_config("paper", dtype="bfloat16", attention="cudnn")
    reader, ranker = build_models(config, abstract=True)
    assert isinstance(reader, FiDReader)
    assert set(attention_kernels(reader).values()) == {"cudnn"}
    assert len(attention_kernels(reader)) == 24 + 2 * 24
    assert set(attention_kernels(ranker).values()) == {"cudnn"}
    # The frozen reader stores its matrices in bf16 (no float32 master copy); norms float32.
    dtypes = {leaf.ndim: set() for leaf in jax.tree.leaves(nnx.state(reader, nnx.Param))}
    for leaf in jax.tree.leaves(nnx.state(reader, nnx.Param)):
        dtypes[leaf.ndim].add(str(leaf.dtype))
    assert dtypes == {1: {"float32"}, 2: {"bfloat16"}}
    ranker_dtypes = {str(x.dtype) for x in jax.tree.leaves(nnx.state(ranker, nnx.Param))}
    assert ranker_dtypes == {"float32"}  # the trained reranker keeps float32 parameters


def _benchmark_args(size: str, **overrides) -> argparse.Namespace:
    args = grerank_step.parser().parse_args(["--size", size, "--batch", "2", "--docs", "3",
                                             "--doc_len", "16", "--answer_len", "4",
                                             "--attention", "xla"])
    vars(args).update(overrides)
    return common.fill_shape_defaults(args, paper_batch=32)


def _trainer_step(config: ModelConfig, args, vocab_size=None):
    """The step as the trainer builds it (experiment.build -> factory, loop -> step)."""
    reader, ranker = build_models(config, vocab_size=vocab_size, abstract=True)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5), num_steps=1000)
    ranker_graph, params = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    objective = ObjectiveConfig(name="g_rerank", k=args.k, tau=0.5, kappa=1.0)
    step = make_train_step(ranker_graph, reader_graph, tx, objective)
    return step, (params, jax.eval_shape(tx.init, params), reader_state)


@pytest.mark.slow
def test_benchmark_step_is_the_trainer_step_at_the_paper_architecture():
    args = _benchmark_args("paper", dtype="bfloat16")
    bench_step, (params, opt_state, reader_state, batch), (reader_arch, ranker_arch) = (
        grerank_step.make_step(args, abstract=True))
    config = ModelConfig(reader="some/fid-large", reranker="Soyoung97/RankT5-base",
                         reader_init="random", reranker_init="random",
                         reader_architecture="t5-large", reranker_architecture="t5-v1_1-base",
                         dtype="bfloat16", attention="xla")
    train_step, train_args = _trainer_step(config, args)
    key = jax.eval_shape(lambda: jax.random.key(0))
    bench = bench_step.trace(params, opt_state, reader_state, batch, key).lower()
    trained = train_step.trace(*train_args, batch, key).lower()
    assert bench.as_text() == trained.as_text()  # the same program, kernels included
    flops = bench.cost_analysis()["flops"]
    assert flops == trained.cost_analysis()["flops"]
    # Our analytic count (matmuls only) is what the MFU figures use: it must be of the
    # compiler's order (the compiler also counts element-wise work and the optimizer).
    shape = common.Shape(args.batch, args.docs, args.doc_len, args.answer_len, args.k)
    analytic = common.grerank_step_flops(reader_arch, ranker_arch, shape)["total"]
    assert 0.5 * flops < analytic <= 1.05 * flops


def test_benchmark_step_is_the_trainer_step_tiny():
    args = _benchmark_args("tiny", dtype="float32")
    bench_step, (params, opt_state, reader_state, batch), _ = grerank_step.make_step(
        args, abstract=True)
    config = ModelConfig(reader="tiny", reranker="tiny", d_model=64, num_layers=2,
                         num_heads=4, score_token_id=7, attention="xla")
    train_step, train_args = _trainer_step(config, args, vocab_size=common.TINY_VOCAB)
    key = jax.eval_shape(lambda: jax.random.key(0))
    bench = bench_step.trace(params, opt_state, reader_state, batch, key).lower().as_text()
    trained = train_step.trace(*train_args, batch, key).lower().as_text()
    assert bench == trained
    # The setting reaches the step: with the einsum path the program differs.
    einsum_step, einsum_args = _trainer_step(
        ModelConfig(**{**vars(config), "attention": ""}), args, vocab_size=common.TINY_VOCAB)
    assert einsum_step.trace(*einsum_args, batch, key).lower().as_text() != bench
