"""training.packing: the reranker's encoder packed at a capacity the host picks per batch
(model.reranker_packing_bucket) - the buckets, the memory it saves where the in-step fallback
cost memory, and training runs that equal unpacked ones."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks import common
from gumbel_jax.training.config import ModelConfig, ObjectiveConfig, OptimizerConfig
from gumbel_jax.training.factory import build_models
from gumbel_jax.training.packing import PackedRankerSteps, capacity_bucket, host_capacity
from gumbel_jax.training.step import make_optimizer, make_train_step


def test_buckets_round_the_real_share_up_to_a_multiple_of_the_width():
    assert capacity_bucket(700, 1000, 0.05) == 0.7  # exactly on a bucket
    assert capacity_bucket(701, 1000, 0.05) == 0.75
    assert capacity_bucket(1, 1000, 0.05) == 0.05
    assert capacity_bucket(0, 1000, 0.05) == 0.05  # an empty batch still gets a slot
    assert capacity_bucket(951, 1000, 0.05) == 0.0  # the whole batch: the padded step
    assert capacity_bucket(7, 8, 0.5) == 0.0
    assert capacity_bucket(3, 8, 0.5) == 0.5
    with pytest.raises(ValueError, match=r"reranker_packing_bucket=1.0 must be in \(0, 1\)"):
        capacity_bucket(3, 8, 1.0)
    mask = np.zeros((2, 3, 10), bool)
    mask[..., :7] = True
    assert host_capacity({"ranker_mask": mask}, 0.1) == 0.7
    mask[1, :, 7:] = True  # the second question full: as a block of its own, it sets 1.0
    assert host_capacity({"ranker_mask": mask}, 0.1) == 0.9  # ceil(0.85 / 0.1) x 0.1
    assert host_capacity({"ranker_mask": mask}, 0.1, groups=2) == 0.0  # padded


def _step_temp_bytes(batch, capacity: float, checked: bool) -> int:
    """Temporary memory of the compiled G-Rerank training step (tiny benchmark models, float32,
    XLA's CPU memory analysis) with the reranker packed at ``capacity``."""
    reader, ranker = build_models(common.model_config("tiny", dtype="float32"),
                                  vocab_size=common.TINY_VOCAB)
    ranker.token_capacity, ranker.capacity_checked = capacity, checked
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-5), num_steps=10)
    graph, params = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    step = make_train_step(graph, reader_graph, tx, ObjectiveConfig(k=5))
    compiled = step.lower(params, tx.init(params), reader_state, batch,
                          jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_checked_packing_keeps_one_path_of_activations_in_the_training_step():
    """Why the host picks the capacity: with the in-step fallback (lax.cond) the
    differentiated step keeps both paths' activations, about twice the padded step's
    temporary memory here (measured 36.7 vs 17.5 MB, batch 6 x 12 x 16, 73% real tokens);
    the checked capacity compiles the packed path only, and needs less than padded (17.0)."""
    batch = common.synthetic_batch(np.random.default_rng(0), common.Shape(6, 12, 16, 4, 5),
                                   common.TINY_VOCAB)
    capacity = host_capacity(batch, 0.05)
    assert capacity == 0.75
    padded = _step_temp_bytes(batch, 0.0, False)
    with_cond = _step_temp_bytes(batch, capacity, False)
    checked = _step_temp_bytes(batch, capacity, True)
    assert checked < padded < with_cond, (checked, padded, with_cond)
    assert with_cond > 1.5 * padded


def test_steps_are_compiled_per_capacity_and_the_ranker_is_left_as_it_was():
    _, ranker = build_models(ModelConfig(score_token_id=3), vocab_size=64)
    graphs = []
    steps = PackedRankerSteps(ranker, lambda graph: graphs.append(graph) or len(graphs))
    assert steps(0.7) == 1 and steps(0.7) == 1 and steps(0.0) == 2 and steps(0.75) == 3
    assert (ranker.token_capacity, ranker.capacity_checked) == (0.0, False)
    packed = nnx.merge(graphs[0], nnx.state(ranker))
    assert (packed.token_capacity, packed.capacity_checked) == (0.7, True)
    padded = nnx.merge(graphs[1], nnx.state(ranker))
    assert (padded.token_capacity, padded.capacity_checked) == (0.0, False)


CONFIG = "experiments/configs/synthetic_g_rerank.py"
SMALL = ["data.num_train=16", "data.num_eval=8", "data.batch_size=4", "train.num_steps=3",
         "train.checkpoint_every=3", "model.d_model=16", "model.num_layers=1"]


def _losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


@pytest.mark.slow
def test_training_with_reranker_packing_equals_training_without(tmp_path, capsys,
                                                                monkeypatch):
    """The train CLI with model.reranker_packing_bucket: the same losses as without (packing changes
    only the order of sums: 1e-5) and the same held-out numbers; a bad width is a usage
    error naming the setting."""
    from experiments import train as train_cli
    from gumbel_jax.training import packing

    chosen, compiled = [], []

    def spy(batch, width, groups):
        chosen.append(host_capacity(batch, width, groups))
        return chosen[-1]

    original_graph = PackedRankerSteps.graph

    def graph_spy(steps, capacity):  # what each compiled step's reranker does
        graph = original_graph(steps, capacity)
        module = nnx.merge(graph, nnx.state(steps.ranker))
        compiled.append((module.token_capacity, module.capacity_checked))
        return graph

    monkeypatch.setattr(packing, "host_capacity", spy)
    monkeypatch.setattr(PackedRankerSteps, "graph", graph_spy)
    outputs = {}
    for name, extra in (("padded", []), ("packed", ["model.reranker_packing_bucket=0.05"])):
        overrides = sum((["--set", s] for s in SMALL + extra), [])
        assert train_cli.main(["--config", CONFIG, "--workdir", str(tmp_path / name),
                               *overrides]) == 0
        outputs[name] = json.loads(capsys.readouterr().out)
    assert len(chosen) == 3 and all(0 < capacity < 1 for capacity in chosen), chosen
    # Each chosen capacity ran a step compiled with it, packed with no fallback.
    assert sorted(compiled) == sorted({(capacity, True) for capacity in chosen}), compiled
    np.testing.assert_allclose(_losses(tmp_path / "packed"), _losses(tmp_path / "padded"),
                               rtol=1e-5)
    assert outputs["packed"]["recall@5"] == pytest.approx(outputs["padded"]["recall@5"])
    assert train_cli.main(["--config", CONFIG, "--workdir", str(tmp_path / "bad"),
                           "--set", "model.reranker_packing_bucket=1.5"]) == 2
    assert "model.reranker_packing_bucket=1.5 must be in [0, 1)" in capsys.readouterr().err


def test_settings_that_cannot_pack_are_refused_by_name(tmp_path, monkeypatch):
    from gumbel_jax.training import loop
    from gumbel_jax.training.config import TrainConfig

    with pytest.raises(ValueError, match="model.reranker_packing_bucket=0.05 packs a RankT5 "
                                         "encoder; model.reranker_kind='cross_encoder'"):
        build_models(ModelConfig(reranker_packing_bucket=0.05, reranker_kind="cross_encoder",
                                 score_token_id=3), vocab_size=64)
    reader, ranker = build_models(ModelConfig(score_token_id=3), vocab_size=64)
    with pytest.raises(ValueError, match="reranker_packing_bucket=0.05 packs a RankT5 encoder; "
                                         "FiDReader has none"):
        loop.train(TrainConfig(), ranker=reader, reader=reader, dataset=[], workdir=tmp_path,
                   reranker_packing_bucket=0.05)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="reranker_packing_bucket=0.05 needs one process"):
        loop.train(TrainConfig(), ranker=ranker, reader=reader, dataset=[], workdir=tmp_path,
                   reranker_packing_bucket=0.05)
    assert not any(tmp_path.iterdir())  # refused before anything was written
