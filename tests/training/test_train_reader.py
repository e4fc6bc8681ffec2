"""Reader training (issue 15): a tiny FiD reader trained on the official-format fixtures
through the grid's readers stage, exported, read back and read by a reranker row; exact
resume (N + N = 2N bitwise on CPU); 8 simulated devices equal one; bad configs are clear
errors."""

import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import reproduce
from experiments import train_reader as train_reader_cli
from experiments.paper import READER_ROWS, load_reader_rows, load_rows, reader_run_of
from gumbel_jax.training.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    ReaderExperimentConfig,
    TrainConfig,
    validate_reader,
)
from gumbel_jax.training.reader import run_reader_training
from tests.test_paper_grid import _prepare

ROOT = pathlib.Path(__file__).resolve().parents[2]
READER_CONFIG = ROOT / "experiments/configs/readers/fid_large_hotpotqa.py"
# The hotpotqa reader row shrunk to a tiny model: every candidate (the fixture's 10) read.
TINY_READER = ["model.reader=tiny", "model.d_model=16", "model.num_layers=1",
               "model.num_heads=2", "model.dtype=float32", "model.remat=False",
               "data.batch_size=2", "data.reader_length=24", "data.answer_length=4",
               "data.num_candidates=10", "data.num_eval=4", "train.num_steps=4",
               "train.checkpoint_every=2", "train.eval_every=2", "train.log_every=1",
               "train.optimizer.warmup_steps=1", "train.optimizer.learning_rate=0.01"]


def _sets(assignments):
    return [arg for assignment in assignments for arg in ("--set", assignment)]


def _synthetic(**changes) -> ReaderExperimentConfig:
    """A tiny reader on the synthetic world (no dataset to prepare)."""
    config = ReaderExperimentConfig(
        name="tiny_reader",
        data=DataConfig(source="synthetic", num_train=32, num_eval=8, batch_size=8,
                        num_candidates=6, reader_length=16, answer_length=4),
        model=ModelConfig(reader="tiny", reranker="", d_model=16, num_layers=1, num_heads=2),
        train=TrainConfig(num_steps=4, checkpoint_every=2, log_every=1,
                          optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=1,
                                                    weight_decay=0.01, schedule="linear")))
    return dataclasses.replace(config, **changes)


def _exported_params(folder) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(pathlib.Path(folder) / "model.safetensors"))


def _losses(workdir) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
    return [(line["step"], line["loss"]) for line in lines if "loss" in line]


def test_reader_rows_use_fids_recipe_and_every_multihop_row_names_its_reader():
    readers = {row.run: row for row in load_reader_rows()}
    assert set(readers) == {"fid-large-hotpotqa", "fid-large-musique", "fid-large-2wiki"}
    assert sorted(row.row for row in readers.values()) == sorted(READER_ROWS.values())
    for row in readers.values():
        config = row.experiment
        validate_reader(config)
        optimizer = config.train.optimizer
        assert (optimizer.learning_rate, optimizer.weight_decay, optimizer.warmup_steps,
                optimizer.schedule) == (5e-5, 0.01, 1000, "linear")
        assert (config.data.reader_length, config.num_slots, config.model.reader) == (
            250, 0, "google-t5/t5-large")
        assert config.train.best_metric == "em" and config.model.dtype == "bfloat16"
        assert config.model.remat
    # At full size, abstractly: t5-large's public parameter count, float32 parameters (the
    # compute dtype is bfloat16), per-layer remat.
    from gumbel_jax.models.presets import PUBLIC_PARAMETER_COUNTS
    from gumbel_jax.training.factory import build_trainable_reader, parameter_count

    model = dataclasses.replace(readers["fid-large-hotpotqa"].experiment.model,
                                reader_init="random")
    reader = nnx.eval_shape(lambda: build_trainable_reader(model))
    assert parameter_count(reader) == PUBLIC_PARAMETER_COUNTS["t5-large"]
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(reader, nnx.Param))} == {
        jnp.dtype(jnp.float32)}
    assert reader.config.remat and reader.config.dtype == jnp.bfloat16 and not reader.frozen
    pools = {run: readers[run].experiment.data.num_candidates for run in readers}
    assert pools == {"fid-large-hotpotqa": 10, "fid-large-musique": 20, "fid-large-2wiki": 10}
    for row in load_rows():  # each FiD row reads a reader trained here or FiD's release
        reader = row.experiment.model.reader
        dataset = row.experiment.data.source
        downloaded = (dataset in ("tfds:gj_nq", "tfds:gj_triviaqa")
                      or row.experiment.model.reader_kind != "fid")  # e.g. CEPE from the hub
        expected = "" if downloaded else reader
        assert reader_run_of(reader) == expected, row.run
        if expected:
            assert readers[expected].experiment.data.source == dataset


def test_bad_reader_configs_are_clear_errors(tmp_path, capsys):
    # A reader row without its prepared data names the command that prepares it.
    status = reproduce.main(["--table", "readers", "--cell", "fid-large-hotpotqa",
                             "--data_dir", str(tmp_path / "tfds"), "--models_dir",
                             str(tmp_path / "models"), "--workdir", str(tmp_path / "runs"),
                             *_sets(TINY_READER)])
    err = capsys.readouterr().err
    assert status == 1
    assert "tfds:gj_hotpotqa" in err and "not prepared" in err and "prepare_data" in err
    assert not (tmp_path / "models").exists()
    # An unknown start checkpoint: a missing folder, and a hub name that is not there.
    for reader, message in (("/no/such/reader", "no such folder"),
                            ("no-such-org-gj/no-such-t5", "could not be fetched")):
        status = train_reader_cli.main(["--config", str(READER_CONFIG), "--workdir",
                                        str(tmp_path / "run"), "--set", f"model.reader={reader}",
                                        "--set", "data.source=synthetic"])
        err = capsys.readouterr().err
        assert status == 2 and message in err and reader in err, err
    # Settings that cannot work, and a reranker config given to the reader trainer.
    for assignment, message in (("train.best_metric=recall@5", "is chosen by one of"),
                                ("num_slots=11", "num_slots=11 must be in [0, "),
                                ("drop_indirect=0.5", "needs num_slots > 0"),
                                ("model.reader_kind=cepe", "Fusion-in-Decoder (T5) readers only")):
        status = train_reader_cli.main(["--config", str(READER_CONFIG), "--workdir",
                                        str(tmp_path / "run"), "--set", assignment])
        assert status == 2 and message in capsys.readouterr().err, assignment
    reranker_config = ROOT / "experiments/configs/synthetic_g_rerank.py"
    assert train_reader_cli.main(["--config", str(reranker_config), "--workdir",
                                  str(tmp_path / "run")]) == 2
    assert "not a ReaderExperimentConfig" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written by a bad config


def test_the_target_is_drawn_among_the_answers_at_each_step_reproducibly():
    """FiD's target: a question with two answers trains on both over steps (20 steps of a
    fair draw miss one with probability 2 ** -19; fixed keys here), the draw is the same
    for the same step and question, and a one-answer question always trains on it."""
    from gumbel_jax.data.batch import Batch
    from gumbel_jax.data.pipeline import stack_examples
    from gumbel_jax.data.records import Passage, Record
    from gumbel_jax.data.tokenizer import word_level_tokenizer
    from gumbel_jax.training.reader import (
        ANSWER_CHOICES,
        WithAnswerChoices,
        reader_featurizer,
        sample_answers,
    )

    passages = (Passage("t", "alpha beta gamma", is_gold=True),)
    records = [Record("two", "which one", ("alpha", "beta gamma"), passages),
               Record("one", "which one", ("gamma",), passages)]
    tokenizer = word_level_tokenizer(records)
    config = _synthetic(target_answers=4)
    featurize = WithAnswerChoices(reader_featurizer(config, tokenizer), config.target_answers)
    batch = stack_examples([featurize(record) for record in records])
    choices = [jnp.asarray(batch.pop(name)) for name in ANSWER_CHOICES]
    assert choices[0].shape == (2, 4, config.data.answer_length)
    batch = Batch.of({name: jnp.asarray(value) for name, value in batch.items()})
    draw = jax.jit(lambda key: sample_answers(key, batch, *choices).answer_ids)
    text = lambda ids: tokenizer.decode(np.asarray(ids), skip_special_tokens=True)
    keys = [jax.random.fold_in(jax.random.key(0), step) for step in range(20)]
    targets = [[text(row) for row in draw(key)] for key in keys]
    assert {first for first, _ in targets} == {"alpha", "beta gamma"}
    assert {second for _, second in targets} == {"gamma"}
    assert [[text(row) for row in draw(key)] for key in keys] == targets


@pytest.mark.slow
def test_the_reader_step_drops_with_its_key_and_only_when_asked():
    """The training step's loss: with dropout it differs from the loss without, the same
    key gives the same loss, another key another (one update of a tiny reader, lr 0)."""
    import optax

    from gumbel_jax.data.pipeline import stack_examples
    from gumbel_jax.training.loop import RankerState
    from gumbel_jax.training.reader import (
        WithAnswerChoices,
        build_reader_experiment,
        make_reader_step,
    )

    reader, records, _, featurize = build_reader_experiment(_synthetic())
    batch = stack_examples([WithAnswerChoices(featurize, 4)(record) for record in records[:2]])
    graph, params = nnx.split(reader)
    tx = optax.sgd(0.0)
    steps = {dropout: make_reader_step(graph, tx, dropout=dropout) for dropout in (False, True)}

    def loss(dropout, seed):
        state = RankerState(jax.tree.map(jnp.copy, params), tx.init(params))  # donated
        return float(steps[dropout](state, batch, jax.random.key(seed))[1]["loss"])

    assert loss(True, 0) == loss(True, 0)
    assert len({loss(False, 0), loss(True, 0), loss(True, 1)}) == 3
    assert loss(False, 0) == loss(False, 1)  # no dropout: the key draws targets only (one)


def test_dropout_rate_is_the_start_checkpoints_unless_set(tmp_path):
    from gumbel_jax.training.reader import build_reader_experiment

    assert build_reader_experiment(_synthetic())[0].config.dropout_rate == 0.1  # T5's
    assert build_reader_experiment(_synthetic(dropout_rate=0.0))[0].config.dropout_rate == 0.0
    with pytest.raises(ValueError, match="dropout_rate=1.0 must be < 1"):
        validate_reader(_synthetic(dropout_rate=1.0))


@pytest.mark.slow
def test_reader_resume_is_exact(tmp_path):
    """4 steps straight == 2 steps, restart from the run directory, 2 more: every exported
    parameter bitwise (CPU), every logged loss equal, no step logged twice."""
    config = _synthetic()
    straight = run_reader_training(config, tmp_path / "straight")
    assert straight["step"] == 4
    stopped = run_reader_training(config, tmp_path / "resumed", stop_at=2)
    assert stopped["step"] == 2 and not (tmp_path / "resumed" / "eval.json").exists()
    resumed = run_reader_training(config, tmp_path / "resumed")
    assert resumed["step"] == 4 and resumed["checkpoint_step"] == 4
    a, b = (_exported_params(tmp_path / name / "export") for name in ("straight", "resumed"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    assert [step for step, _ in _losses(tmp_path / "resumed")] == [1, 2, 3, 4]
    # It trained with T5's dropout (and drawn targets), and the export says so.
    exported = json.loads((tmp_path / "resumed" / "export" / "config.json").read_text())
    assert exported["dropout_rate"] == 0.1
    other = run_reader_training(dataclasses.replace(
        config, train=dataclasses.replace(config.train, seed=1)), tmp_path / "other")
    assert other["loss"] != straight["loss"]  # another seed, another start and order


@pytest.mark.slow
def test_sharded_reader_training_equals_one_device(tmp_path):
    """data=2 x fsdp=2 x tensor=2 over 8 simulated CPU devices (parameters and AdamW state
    sharded by the rules table; held-out generation and the best checkpoint on the mesh)
    against one device. Sharded sums add in another order
    (float32, ~1e-7 relative); Adam's division by sqrt(v) can magnify that for a tiny
    gradient to ~1e-4 of one update (lr 1e-2): tolerance 1e-5 over 4 steps, where a gradient
    not summed over devices would move parameters by about an update (1e-2)."""
    from gumbel_jax.sharding import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    config = _synthetic()
    # The held-out evaluation (generation) and the best checkpoint run on the mesh too.
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, eval_every=4, best_metric="em"))
    single_eval = run_reader_training(config, tmp_path / "single")
    sharded_eval = run_reader_training(config, tmp_path / "sharded",
                                       mesh=make_mesh(data=2, fsdp=2, tensor=2))
    assert (sharded_eval["em"], sharded_eval["checkpoint_step"]) == (single_eval["em"], 4)
    single, sharded = (_exported_params(tmp_path / name / "export")
                       for name in ("single", "sharded"))
    for name in single:
        np.testing.assert_allclose(sharded[name], single[name], rtol=2e-5, atol=1e-5,
                                   err_msg=name)
    moved = max(float(np.abs(sharded[name] - single[name]).max()) for name in single)
    losses = lambda name: [loss for _, loss in _losses(tmp_path / name)]
    np.testing.assert_allclose(losses("sharded"), losses("single"), rtol=1e-5)
    print(f"\nsharded vs one device: max |parameter difference| {moved:.2g}")


@pytest.fixture(scope="module")
def grid_with_reader(tmp_path_factory):
    """The HotpotQA fixture prepared; the grid refuses a reranker row before its reader
    exists; the readers stage trains the tiny reader and exports it to --models_dir."""
    tmp = tmp_path_factory.mktemp("reader_grid")
    _prepare(tmp, ["hotpotqa"])
    where = ["--data_dir", str(tmp / "tfds"), "--models_dir", str(tmp / "models"),
             "--workdir", str(tmp / "runs"), "--seeds", "1"]
    return tmp, where


@pytest.mark.slow
def test_readers_stage_trains_exports_and_a_reranker_row_reads_it(grid_with_reader, capsys):
    from gumbel_jax.checkpoints import export_reranker, load_exported_reader
    from gumbel_jax.models import RankT5
    from gumbel_jax.training.config import ModelConfig as Model
    from gumbel_jax.training.factory import tiny_architectures
    from gumbel_jax.training.hooks import load_best
    from gumbel_jax.training.reader import build_reader_experiment, read_reader_experiment

    tmp, where = grid_with_reader
    models = tmp / "models"
    row_args = ["--table", "hotpotqa", "--cell", "hotpotqa_g_rerank", *where]
    # Before the readers stage: the row is refused, naming the commands that build it.
    assert reproduce.main(row_args) == 1
    err = capsys.readouterr().err
    assert "fid-large-hotpotqa does not exist" in err
    assert "--table readers --cell fid-large-hotpotqa" in err
    assert ("experiments.train_reader --config experiments/configs/readers/"
            "fid_large_hotpotqa.py") in err

    reader_args = ["--table", "readers", "--cell", "fid-large-hotpotqa", *where]
    assert reproduce.main([*reader_args, *_sets(TINY_READER)]) == 0
    out = capsys.readouterr().out
    assert "fid-large-hotpotqa/seed0: done" in out
    run = tmp / "runs" / "fid-large-hotpotqa" / "seed0"
    lines = [json.loads(line) for line in open(run / "metrics.jsonl")]
    curve = [(line["step"], line["eval/em"], line["eval/f1"]) for line in lines
             if "eval/em" in line]
    assert [step for step, _, _ in curve] == [2, 4]  # held-out EM / F1 every 2 steps
    print(f"\ntiny reader, held-out (step, EM, F1): {curve}; losses "
          f"{[round(loss, 3) for _, loss in _losses(run)]}")
    evaluation = json.loads((run / "eval.json").read_text())
    best = max(curve, key=lambda c: c[1])  # the first of equal EMs is kept
    assert evaluation["checkpoint_step"] == best[0]
    # The fixture's two validation questions (num_eval=4 asks for at most four).
    assert evaluation["em"] == pytest.approx(best[1]) and evaluation["num_questions"] == 2
    folder = models / "fid-large-hotpotqa"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in folder.iterdir()}
    assert "every candidate (FiD)" in (folder / "README.md").read_text()

    # The export reads back bit-equal to the best checkpoint.
    config = read_reader_experiment(run)
    reader, *_ = build_reader_experiment(config)
    assert load_best(run, reader)["step"] == best[0]
    loaded = load_exported_reader(folder)
    for x, y in zip(jax.tree.leaves(nnx.state(loaded.model, nnx.Param)),
                    jax.tree.leaves(nnx.state(reader, nnx.Param)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert loaded.metadata["answer_length"] == 4 and loaded.metadata["max_length"] == 24
    _same_logits_in_pytorch(loaded, folder)

    # A reranker row of the grid reads it: model.reader is the reader run's folder.
    tokenizer = loaded.tokenizer
    architecture = tiny_architectures(Model(d_model=16, num_layers=1, num_heads=2),
                                      len(tokenizer))[1]
    export_reranker(RankT5.random(architecture, seed=3, score_token_id=3),
                    models / "tiny-rankt5", tokenizer=tokenizer)
    row_sets = [f"model.reranker={models / 'tiny-rankt5'}", "model.reader_tokenizer=",
                "model.reranker_tokenizer=", "model.score_token_id=3",
                "model.dtype=float32", "model.remat=False", "data.batch_size=2",
                "data.reader_length=24", "data.ranker_length=24", "data.answer_length=4",
                "data.num_candidates=10", "data.num_eval=4", "data.num_mining=2",
                "train.num_steps=2", "train.checkpoint_every=2", "train.objective.k=2",
                "train.optimizer.warmup_steps=0"]
    assert reproduce.main([*row_args, *_sets(row_sets)]) == 0
    cell = tmp / "runs" / "hotpotqa_g_rerank" / "seed0"
    saved = json.loads((cell / "experiment.json").read_text())
    assert saved["model"]["reader"] == str(folder)
    assert json.loads((cell / "eval.json").read_text())["num_questions"] == 2
    # A reader run is not a reranker run: the reranker's export names it.
    from experiments import export as export_cli

    assert export_cli.main(["--workdir", str(run), "--out", str(tmp / "x")]) == 2
    assert "a reader training run" in capsys.readouterr().err
    # A finished readers stage is skipped.
    assert reproduce.main([*reader_args, *_sets(TINY_READER)]) == 0
    assert "fid-large-hotpotqa/seed0: finished, skipped" in capsys.readouterr().out


def _same_logits_in_pytorch(loaded, folder) -> None:
    """transformers' PyTorch T5ForConditionalGeneration on the exported folder gives our
    logits for one (question, passage) text (CPU torch; skipped without it)."""
    from tests.torch_reference import to_torch, torch

    transformers = pytest.importorskip("transformers")
    tokenizer = loaded.tokenizer
    ids = np.asarray(tokenizer(["question: who title: a context: b c"])["input_ids"])
    mask = np.ones_like(ids, dtype=bool)
    decoder_ids = np.asarray([[0, *ids[0, :2]]])
    t5 = loaded.model.t5
    ours = np.asarray(t5.decode(jnp.asarray(decoder_ids),
                                t5.encode(jnp.asarray(ids), jnp.asarray(mask)),
                                jnp.asarray(mask)))
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        theirs = model(input_ids=to_torch(ids), attention_mask=to_torch(mask),
                       decoder_input_ids=to_torch(decoder_ids)).logits.numpy()
    assert float(np.abs(theirs - ours).max()) <= 1e-4


def test_readers_stage_cost_computed_by_hand():
    """fid-large-hotpotqa's step by hand: t5-large (d_model 1024, 16 heads x 64, d_ff 4096,
    24 + 24 layers, vocabulary 32,128) on 64 questions x 10 passages x 250 tokens with
    32-token answers; every parameter trains (forward + backward = 3 x forward) and per-layer
    remat runs the layers' forward once more; 6,000 steps at the H100's measured 402.6
    TFLOP/s."""
    from experiments import costs

    width, ff, layers, vocab, questions, keys, answer = 1024, 4096, 24, 32128, 64, 2500, 32
    matmuls = 2 * (4 * width * width + 2 * width * ff)  # per token: attention + ReLU MLP
    encoder = layers * questions * keys * (matmuls + 4 * 250 * width)
    decoder = layers * questions * answer * (
        matmuls + 4 * answer * width + 2 * (2 * width * width + 2 * keys * width))
    decoder += layers * questions * keys * 4 * width * width  # the memory's K, V
    head = 2 * questions * answer * width * vocab
    total = 3 * (encoder + decoder + head) + encoder + decoder
    (cost,) = [c for c in costs.reader_costs() if c.table == "fid-large-hotpotqa"]
    assert cost.step_flops == pytest.approx(total, rel=1e-12)
    assert cost.hours(cost.h100_step_s) == pytest.approx(total * 6000 / 402.6e12 / 3600)
    row = [line for line in costs.reader_markdown().splitlines()
           if line.startswith("| fid-large-hotpotqa |")][0]
    assert f"| {total / 1e12:.0f} | {total * 6000 / 1e15:.0f} | 2.0 h |" in row


@pytest.mark.slow
def test_continued_training_from_a_fid_wrapped_checkpoint(tmp_path):
    """FiD's released readers save the encoder wrapped (``encoder.encoder.block.N.module.…``):
    such a folder is a start checkpoint. A tiny reader trained 4 steps and saved in FiD's
    layout continues from its trained weights (its first loss is far below a fresh start's)."""
    import shutil

    from safetensors.numpy import save_file

    first = run_reader_training(_synthetic(), tmp_path / "first")
    export = tmp_path / "first" / "export"
    fid = tmp_path / "fid_layout"
    shutil.copytree(export, fid)
    wrapped = {}
    for name, value in _exported_params(export).items():
        if name.startswith("encoder."):
            name = "encoder." + re.sub(r"^encoder\.block\.(\d+)\.", r"encoder.block.\1.module.",
                                       name)
        wrapped[name] = value
    assert "encoder.encoder.block.0.module.layer.0.SelfAttention.q.weight" in wrapped
    save_file(wrapped, str(fid / "model.safetensors"), metadata={"format": "pt"})
    config = _synthetic()
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, reader=str(fid)),
        train=dataclasses.replace(config.train, num_steps=2))
    run_reader_training(config, tmp_path / "continued")
    fresh_first, trained_first = _losses(tmp_path / "first")[0][1], _losses(
        tmp_path / "continued")[0][1]
    assert trained_first < first["loss"] + 0.5 < fresh_first
