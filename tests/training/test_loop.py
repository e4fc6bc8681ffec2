"""The training loop on a tiny synthetic setup: every objective trains, exact resume (R12),
non-finite loss stops naming the step (R11), same seed same run (R19), config overrides; the
step loop (run_steps: host syncs every log_every steps, hooks), metrics.jsonl cut back on
resume (R23), held-out evaluation and the best checkpoint."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.data.pipeline import FeatureSpec, Featurizer, make_dataset
from gumbel_jax.data.synthetic import WorldConfig, make_records
from gumbel_jax.data.tokenizer import word_level_tokenizer
from gumbel_jax.models import FiDReader, RankT5, T5Config
from gumbel_jax.training import (
    NonFiniteLossError,
    ObjectiveConfig,
    OptimizerConfig,
    TrainConfig,
    apply_overrides,
    train,
    validate,
)
from gumbel_jax.training.loop import params_equal

WORLD = WorldConfig(num_people=40, num_cities=10, num_candidates=6, num_born_distractors=2)


@pytest.fixture(scope="module")
def setup():
    records = make_records(WORLD, 24)
    tokenizer = word_level_tokenizer(records)
    featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(6, 16, 12, 3))
    vocab = len(tokenizer)
    reader_cfg = T5Config(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                          num_decoder_layers=1, num_heads=2)
    ranker_cfg = T5Config(vocab_size=vocab, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                          num_decoder_layers=1, num_heads=2, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False)
    return records, featurize, reader_cfg, ranker_cfg


def _run(setup, workdir, config, steps=None, stop_at=None, hooks=()):
    records, featurize, reader_cfg, ranker_cfg = setup
    if steps is not None:
        config = dataclasses.replace(config, num_steps=steps)
    reader = FiDReader.random(reader_cfg, seed=0)
    ranker = RankT5.random(ranker_cfg, seed=1, score_token_id=5)
    dataset = make_dataset(records, featurize, batch_size=4, seed=config.seed, shard_index=0,
                           shard_count=1)
    metrics = train(config, ranker=ranker, reader=reader, dataset=dataset, workdir=workdir,
                    stop_at=stop_at, hooks=hooks)
    return nnx.state(ranker), metrics


def _lines(workdir) -> list[dict]:
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


CONFIG = TrainConfig(num_steps=8, checkpoint_every=3,
                     objective=ObjectiveConfig(k=2, theta=1.0, temperature_gold=1.0),
                     optimizer=OptimizerConfig(learning_rate=1e-2))


@pytest.mark.parametrize("name", ["g_rerank", "emdr", "pdist", "loop", "adist", "supervised"])
def test_every_objective_trains(setup, tmp_path, name):
    config = apply_overrides(CONFIG, [f"objective.name={name}", "num_steps=3"])
    _, metrics = _run(setup, tmp_path, config)
    assert metrics["step"] == 3 and np.isfinite(metrics["loss"])
    assert metrics["grad_norm"] > 0


def test_resume_is_exact(setup, tmp_path):
    """8 steps straight == 5 steps, restart from the run directory, 3 more (bitwise; the
    checkpoint at step 3 plus the final one at 5 exercise both save paths)."""
    straight, _ = _run(setup, tmp_path / "straight", CONFIG)
    _run(setup, tmp_path / "resumed", CONFIG, stop_at=5)
    resumed, metrics = _run(setup, tmp_path / "resumed", CONFIG)
    assert metrics["step"] == 8
    assert params_equal(straight, resumed)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert steps == list(range(1, 9))  # none repeated, none skipped
    again, _ = _run(setup, tmp_path / "again", CONFIG)
    assert params_equal(straight, again)  # same seed, same run
    other, _ = _run(setup, tmp_path / "other", apply_overrides(CONFIG, ["seed=1"]))
    assert not params_equal(straight, other)


def test_half_written_checkpoint_is_ignored(setup, tmp_path):
    _run(setup, tmp_path, CONFIG, stop_at=3)
    # A save that died midway leaves orbax's temporary folder behind.
    (tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()
    _, metrics = _run(setup, tmp_path, CONFIG, stop_at=6)
    assert metrics["step"] == 6


def test_non_finite_loss_stops_naming_the_step(setup, tmp_path):
    config = apply_overrides(CONFIG, ["optimizer.learning_rate=1e30", "optimizer.clip_norm=1e30"])
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step \d"):
        _run(setup, tmp_path, config)
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert not np.isfinite(lines[-1]["loss"])  # flushed before the error


def test_overrides_and_validation():
    config = apply_overrides(TrainConfig(), ["objective.tau=0.3", "objective.k=3", "seed=2"])
    assert (config.objective.tau, config.objective.k, config.seed) == (0.3, 3, 2)
    with pytest.raises(ValueError, match="unknown config key 'objective.temp'; valid keys: "):
        apply_overrides(config, ["objective.temp=1"])
    with pytest.raises(ValueError, match="objective.k='x': expected int"):
        apply_overrides(config, ["objective.k=x"])
    with pytest.raises(ValueError, match=r"objective.k=3 must be in \[1, 2\]"):
        validate(config, num_candidates=2)
    with pytest.raises(ValueError, match="objective.name='foo'"):
        validate(apply_overrides(config, ["objective.name=foo"]), num_candidates=10)
    assert jax.process_count() == 1


def test_sigterm_saves_and_exits_cleanly_then_resume_continues(setup, tmp_path, monkeypatch):
    """SIGTERM during step 2: the step finishes, a checkpoint is written, train() returns;
    the next run continues at step 3 and ends where an uninterrupted run ends (R15)."""
    import os
    import signal

    from gumbel_jax.training import loop

    real_step = loop.make_train_step

    def step_that_gets_sigterm(*args, **kwargs):
        step = real_step(*args, **kwargs)
        calls = []

        def wrapped(*a):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(*a)

        return wrapped

    # Steps are cached per architecture and setting: drop the cache around the patch.
    loop._optimizer_and_step.cache_clear()
    monkeypatch.setattr(loop, "make_train_step", step_that_gets_sigterm)
    _, metrics = _run(setup, tmp_path / "run", CONFIG)
    assert metrics == {**metrics, "step": 2, "preempted": True}
    loop._optimizer_and_step.cache_clear()
    monkeypatch.setattr(loop, "make_train_step", real_step)
    resumed, metrics = _run(setup, tmp_path / "run", CONFIG)
    assert metrics["step"] == 8
    straight, _ = _run(setup, tmp_path / "straight", CONFIG)
    assert params_equal(straight, resumed)
    assert signal.getsignal(signal.SIGTERM) is not None


def test_evaluation_metrics_and_predictions(setup, tmp_path):
    from gumbel_jax.training.evaluation import evaluate, write_evaluation

    records, featurize, reader_cfg, ranker_cfg = setup
    reader = FiDReader.random(reader_cfg, seed=0)
    ranker = RankT5.random(ranker_cfg, seed=1, score_token_id=5)
    results = evaluate(ranker, reader, records[:5], featurize, k=2, batch_size=4,
                       tokenizer=featurize.reader_tokenizer, max_answer_length=3)
    summary = results["metrics"]
    assert summary["num_questions"] == 5
    for key in ("recall@2", "ndcg@2", "mrr", "indirect_recall@2", "em", "f1"):
        assert 0.0 <= summary[key] <= 1.0
    first = results["predictions"][0]
    assert sorted(first["ranking"]) == list(range(6)) and isinstance(first["answer"], str)
    # The reported recall is recomputable from the predictions.
    from gumbel_jax import metrics

    recomputed = np.mean([metrics.recall_at_k(p["scores"], r.gold, 2)
                          for p, r in zip(results["predictions"], records[:5], strict=True)])
    assert recomputed == pytest.approx(summary["recall@2"])
    write_evaluation(tmp_path, results)
    assert "| recall@2 |" in (tmp_path / "eval.md").read_text()
    assert len((tmp_path / "eval_predictions.jsonl").read_text().splitlines()) == 5


def test_sharded_training_equals_single_device_and_restores_onto_another_mesh(setup, tmp_path):
    """8 simulated devices (data=8, then data=2 x fsdp=2 x tensor=2 with sharded parameters
    after a restart) give the same losses and parameters as one device (R16, R20)."""
    from gumbel_jax.sharding import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (simulated) devices")
    records, featurize, reader_cfg, ranker_cfg = setup
    config = dataclasses.replace(CONFIG, num_steps=4, checkpoint_every=2)

    def run(workdir, mesh, stop_at=None):
        reader = FiDReader.random(reader_cfg, seed=0)
        ranker = RankT5.random(ranker_cfg, seed=1, score_token_id=5)
        dataset = make_dataset(records, featurize, batch_size=8, seed=0, shard_index=0,
                               shard_count=1)
        train(config, ranker=ranker, reader=reader, dataset=dataset, workdir=workdir,
              stop_at=stop_at, mesh=mesh)
        return nnx.state(ranker)

    single = run(tmp_path / "single", None)
    run(tmp_path / "sharded", make_mesh(data=8), stop_at=2)
    resharded = run(tmp_path / "sharded", make_mesh(data=2, fsdp=2, tensor=2))
    # Sharded reductions add in another order (float32 rounding ~1e-7 relative in the
    # gradients), and Adam divides by sqrt(v), which can magnify that for a tiny gradient to
    # ~1e-4 of one update (lr = 1e-2): 1e-5 over 4 steps. A real sharding bug (a gradient
    # not summed over devices) moves parameters by the size of an update, 1e-2.
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(resharded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-5)
    losses = lambda d: [json.loads(x)["loss"] for x in open(d / "metrics.jsonl")]
    np.testing.assert_allclose(losses(tmp_path / "sharded"), losses(tmp_path / "single"),
                               rtol=1e-5)
    from gumbel_jax.sharding import parameter_shardings

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    ranker = RankT5.random(ranker_cfg, seed=1, score_token_id=5)
    shardings = parameter_shardings(nnx.state(ranker), mesh)
    kernel = shardings["t5"]["encoder"]["layers"][0]["mlp"]["wi_0"]["kernel"]
    assert kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
        from gumbel_jax.sharding import check_batch_size

        check_batch_size(6, make_mesh(data=8))


def test_train_step_compiles_once_for_same_shaped_batches(setup):
    """R10: the jitted step is traced once for every batch of one shape."""
    import optax

    from gumbel_jax.training.step import make_train_step

    records, featurize, reader_cfg, ranker_cfg = setup
    reader = FiDReader.random(reader_cfg, seed=0)
    ranker = RankT5.random(ranker_cfg, seed=1, score_token_id=5)
    ranker_graph, params = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    step = make_train_step(ranker_graph, reader_graph, tx, CONFIG.objective)
    batches = iter(make_dataset(records, featurize, batch_size=4, seed=0, shard_index=0,
                                shard_count=1))
    for i in range(3):
        params, opt_state, _ = step(params, opt_state, reader_state, next(batches),
                                    jax.random.fold_in(jax.random.key(0), i))
    assert step._cache_size() == 1


# --- run_steps: the step loop on a toy step (no model, no compilation to speak of) ---------


def _toy_step(nan_at=None):
    """State: (number of steps run, running sum of each step's uniform draw); the batch is
    the loss, made NaN at step ``nan_at``."""
    import jax.numpy as jnp

    calls = []

    def step(state, batch, key):
        calls.append(batch)
        count, total = state
        loss = jnp.float32(np.nan if count + 1 == nan_at else batch)
        return (count + 1, total + jax.random.uniform(key)), {"loss": loss}

    return step, calls


def test_run_steps_syncs_every_log_every_steps_and_at_the_end(monkeypatch):
    from gumbel_jax.training.loop import run_steps

    fetches = []
    real_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: fetches.append(len(x)) or real_get(x))
    step, _ = _toy_step()
    synced = []
    state, last = run_steps(step, (0, 0.0), iter(range(100, 200)), start=0, end=10,
                            base_key=jax.random.key(0), log_every=4,
                            on_log=lambda rows, seconds: synced.append(rows))
    # The host waits at steps 4, 8 and 10 only, and then gets every step's metrics.
    assert fetches == [4, 4, 2]
    assert [[row["step"] for row in rows] for rows in synced] == [[1, 2, 3, 4], [5, 6, 7, 8],
                                                                  [9, 10]]
    assert [row["loss"] for rows in synced for row in rows] == list(range(100, 110))
    assert last == {"step": 10, "loss": 109.0} and state[0] == 10


def test_run_steps_keys_are_fold_in_of_the_step_so_n_plus_n_is_2n():
    from gumbel_jax.training.loop import run_steps

    step, _ = _toy_step()
    key = jax.random.key(3)
    straight, _ = run_steps(step, (0, 0.0), iter(range(100)), start=0, end=6, base_key=key)
    half, _ = run_steps(step, (0, 0.0), iter(range(100)), start=0, end=3, base_key=key)
    resumed, _ = run_steps(step, half, iter(range(100)), start=3, end=6, base_key=key)
    assert float(straight[1]) == float(resumed[1])


def test_run_steps_raises_at_the_first_sync_after_a_non_finite_loss_naming_its_step():
    """Promise: a non-finite loss at step s raises at the first sync at or after s (within
    log_every - 1 further steps), naming s; the metrics up to the sync are logged first, and
    no hook runs on the state that followed it."""
    from gumbel_jax.training.hooks import Hook
    from gumbel_jax.training.loop import NonFiniteLossError, run_steps

    step, calls = _toy_step(nan_at=3)
    logged, hooked = [], []
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3$"):
        run_steps(step, (0, 0.0), iter(range(100)), start=0, end=10,
                  base_key=jax.random.key(0), log_every=2,
                  on_log=lambda rows, seconds: logged.extend(r["step"] for r in rows),
                  hooks=[Hook(lambda *a: hooked.append(a[0]), every=2)])
    assert len(calls) == 4  # stopped at the sync after step 4, not after the run
    assert logged == [1, 2, 3, 4] and hooked == [2]


def test_run_steps_calls_hooks_at_their_steps_and_stops_on_request():
    from gumbel_jax.training.hooks import Hook
    from gumbel_jax.training.loop import run_steps

    step, calls = _toy_step()
    seen = {"every 4, at end": [], "every 3": [], "at end": []}
    hooks = [Hook(lambda s, state, m: seen["every 4, at end"].append((s, m["step"], state[0])),
                  every=4, at_end=True),
             Hook(lambda s, state, m: seen["every 3"].append(s), every=3),
             Hook(lambda s, state, m: seen["at end"].append(s), at_end=True)]
    run_steps(step, (0, 0.0), iter(range(100)), start=0, end=10, base_key=jax.random.key(0),
              log_every=100, hooks=hooks)
    # A hook sees the state and the metrics of its step; a due hook makes its step a sync.
    assert seen == {"every 4, at end": [(4, 4, 4), (8, 8, 8), (10, 10, 10)],
                    "every 3": [3, 6, 9], "at end": [10]}
    seen = {name: [] for name in seen}
    _, last = run_steps(step, (0, 0.0), iter(range(100)), start=0, end=10,
                        base_key=jax.random.key(0), hooks=hooks, stop=lambda s: s == 7)
    assert last["step"] == 7  # an early stop is not the end: at_end hooks do not run
    assert seen == {"every 4, at end": [(4, 4, 4)], "every 3": [3, 6], "at end": []}


# --- the shell: metrics.jsonl on resume, log_every, hooks inside train ---------------------


def test_killed_run_resumes_exactly_and_logs_no_step_twice(setup, tmp_path):
    """R23: a run killed after it logged steps past its last checkpoint (here: steps 4-5
    logged, checkpoint 5 lost, a line cut short) resumes from step 3 to the same parameters
    as an uninterrupted run, and metrics.jsonl holds every step once."""
    import shutil

    straight, _ = _run(setup, tmp_path / "straight", CONFIG)
    run = tmp_path / "killed"
    _run(setup, run, CONFIG, stop_at=5)
    shutil.rmtree(run / "checkpoints" / "5")
    with open(run / "metrics.jsonl", "a") as log:
        log.write('{"step": 6, "loss": 0.1')  # killed while writing
    resumed, metrics = _run(setup, run, CONFIG)
    assert metrics["step"] == 8 and params_equal(straight, resumed)
    assert [line["step"] for line in _lines(run)] == list(range(1, 9))
    assert _lines(run) == [{**a, "step_s": b["step_s"]} for a, b in
                           zip(_lines(tmp_path / "straight"), _lines(run), strict=True)]


def test_log_every_writes_the_mean_of_its_steps_and_resumes_without_repeats(setup, tmp_path):
    every_step, _ = _run(setup, tmp_path / "one", CONFIG)
    config = dataclasses.replace(CONFIG, log_every=3)
    _run(setup, tmp_path / "three", config, stop_at=5)
    resumed, _ = _run(setup, tmp_path / "three", config)
    assert params_equal(every_step, resumed)
    losses = [line["loss"] for line in _lines(tmp_path / "one")]
    lines = _lines(tmp_path / "three")
    # Syncs at 3 and at the stop at 5; after the restart at 6 and at the last step, 8.
    assert [line["step"] for line in lines] == [3, 5, 6, 8]
    for line, (first, last) in zip(lines, [(0, 3), (3, 5), (5, 6), (6, 8)], strict=True):
        assert line["loss"] == pytest.approx(np.mean(losses[first:last]), rel=1e-6)


def test_train_runs_hooks_with_its_context_and_checkpoints_after_them(setup, tmp_path,
                                                                       monkeypatch):
    from gumbel_jax.training import loop
    from gumbel_jax.training.loop import RankerState

    class Events:  # TensorBoard's SummaryWriter, as far as the loop uses it
        scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

        def close(self):
            pass

    monkeypatch.setattr(loop, "_tensorboard", lambda workdir, start: Events())

    steps = lambda folder: sorted(p.name for p in folder.iterdir() if p.name.isdigit())

    class Recorder:
        every, at_end, calls = 3, True, []

        def open(self, context):
            self.context = context

        def __call__(self, step, state, metrics):
            assert isinstance(state, RankerState) and metrics["step"] == step
            self.calls.append(steps(tmp_path / "checkpoints"))
            self.context.log(step, {"eval/fake": step / 10})

    recorder = Recorder()
    _run(setup, tmp_path, CONFIG, hooks=[recorder])
    assert recorder.context.workdir == tmp_path.absolute()
    assert recorder.calls == [[], ["3"], ["3", "6"]]  # a step's hooks run before its save
    fake = [(line["step"], line["eval/fake"]) for line in _lines(tmp_path) if "eval/fake" in line]
    assert fake == [(3, 0.3), (6, 0.6), (8, 0.8)]
    assert {("train/loss", 1), ("train/grad_norm", 8), ("eval/fake", 6)} <= set(Events.scalars)


class _FakeEvaluation:
    """A held-out "evaluation" that returns the next of a fixed sequence of values."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, ranker, reader):
        return {"recall@2": self.values.pop(0), "mrr": 0.5}


def test_best_checkpoint_is_the_best_evaluation_and_survives_resume(setup, tmp_path):
    from gumbel_jax.training.hooks import HeldOutEval, load_best, read_best

    config = dataclasses.replace(CONFIG, eval_every=2)
    hook = lambda values: HeldOutEval(_FakeEvaluation(values), every=2, best_metric="recall@2")
    # Evaluations at steps 2, 4 | restart | 6, 8: the best is step 4's.
    _run(setup, tmp_path / "run", config, stop_at=4, hooks=[hook([0.3, 0.6])])
    assert read_best(tmp_path / "run" / "best")["step"] == 4
    _run(setup, tmp_path / "run", config, hooks=[hook([0.5, 0.6])])  # equal is not better
    best = read_best(tmp_path / "run" / "best")
    assert (best["step"], best["value"], best["metrics"]["mrr"]) == (4, 0.6, 0.5)
    assert [p.name for p in (tmp_path / "run" / "best").iterdir() if p.name.isdigit()] == ["4"]
    evaluations = [(line["step"], line["eval/recall@2"]) for line in _lines(tmp_path / "run")
                   if "eval/recall@2" in line]
    assert evaluations == [(2, 0.3), (4, 0.6), (6, 0.5), (8, 0.6)]
    # The saved parameters are step 4's.
    at_four, _ = _run(setup, tmp_path / "four", config, stop_at=4)
    _, _, reader_cfg, ranker_cfg = setup
    ranker = RankT5.random(ranker_cfg, seed=7, score_token_id=5)
    assert load_best(tmp_path / "run", ranker)["step"] == 4
    assert params_equal(nnx.state(ranker), at_four)


def test_best_checkpoint_lower_is_better_for_losses_and_nan_never_wins(tmp_path):
    from gumbel_jax.training.hooks import BestCheckpoint, read_best

    params = {"w": np.zeros(3, np.float32)}
    best = BestCheckpoint(tmp_path / "best", "eval_loss")
    saved = [best.offer(step, {"w": np.full(3, step, np.float32)}, {"eval_loss": value})
             for step, value in [(1, 3.0), (2, 2.0), (3, float("nan")), (4, 2.5)]]
    best.close()
    assert saved == [True, True, False, False]
    assert read_best(tmp_path / "best")["step"] == 2
    # Another metric later: the saved best is not comparable and is replaced.
    best = BestCheckpoint(tmp_path / "best", "recall@2")
    assert best.value is None and best.offer(5, params, {"recall@2": 0.1})
    best.close()
    assert read_best(tmp_path / "best")["step"] == 5


def test_held_out_eval_hook_evaluates_the_current_reranker(setup, tmp_path):
    """One real held-out evaluation: the line at the last step is what evaluate() gives for
    the trained reranker, and the best checkpoint holds the better of the two evaluations."""
    from gumbel_jax.training.evaluation import evaluate
    from gumbel_jax.training.hooks import held_out_eval_hook, read_best

    records, featurize, reader_cfg, ranker_cfg = setup
    config = dataclasses.replace(CONFIG, num_steps=4, eval_every=2, eval_answers=True,
                                 best_metric="recall@2")
    validate(config, num_candidates=6)
    hook = held_out_eval_hook(records[:6], featurize, k=2, batch_size=4, every=2,
                              best_metric="recall@2", tokenizer=featurize.reader_tokenizer,
                              max_answer_length=3)
    trained, _ = _run(setup, tmp_path, config, hooks=[hook])
    evaluations = {line["step"]: line for line in _lines(tmp_path) if "eval/mrr" in line}
    assert sorted(evaluations) == [2, 4]
    ranker = RankT5.random(ranker_cfg, seed=1, score_token_id=5)
    nnx.update(ranker, trained)
    expected = evaluate(ranker, FiDReader.random(reader_cfg, seed=0), records[:6], featurize,
                        k=2, batch_size=4, tokenizer=featurize.reader_tokenizer,
                        max_answer_length=3)["metrics"]
    assert {name: evaluations[4][f"eval/{name}"] for name in expected} == pytest.approx(
        expected, nan_ok=True)
    assert set(config.eval_metric_names()) | {"num_questions"} == set(expected)
    best = read_best(tmp_path / "best")
    values = {step: line["eval/recall@2"] for step, line in evaluations.items()}
    assert best["value"] == max(values.values())
    assert best["step"] == min(s for s, v in values.items() if v == best["value"])


def test_eval_and_log_settings_are_validated():
    base = apply_overrides(TrainConfig(), ["objective.k=2"])
    validate(apply_overrides(base, ["eval_every=5", "best_metric=recall@2"]), num_candidates=6)
    validate(apply_overrides(base, ["eval_every=5", "eval_answers=True", "best_metric=em"]),
             num_candidates=6)
    with pytest.raises(ValueError, match="log_every=0 must be >= 1"):
        validate(apply_overrides(base, ["log_every=0"]), num_candidates=6)
    with pytest.raises(ValueError, match="best_metric='recall@2' needs eval_every > 0"):
        validate(apply_overrides(base, ["best_metric=recall@2"]), num_candidates=6)
    # Ranking metrics are reported at k = 2 and the paper's 5, at no other cut-off.
    validate(apply_overrides(base, ["eval_every=5", "best_metric=answer_recall@5"]),
             num_candidates=6)
    with pytest.raises(ValueError, match=r"best_metric='recall@3' is not a held-out metric; "
                                         r"expected one of \('recall@2', 'recall@5'"):
        validate(apply_overrides(base, ["eval_every=5", "best_metric=recall@3"]),
                 num_candidates=6)
    with pytest.raises(ValueError, match="em / f1 need eval_answers=True"):
        validate(apply_overrides(base, ["eval_every=5", "best_metric=em"]), num_candidates=6)


def test_a_gold_best_metric_on_data_without_gold_passages_is_refused_before_training():
    """FiD's NQ marks no gold passages: recall@5 would be missing at the first held-out
    evaluation, so the run refuses it up front; answer recall and EM are fine there."""
    import pathlib

    from gumbel_jax.data import read_records
    from gumbel_jax.training.experiment import check_best_metric

    fixtures = pathlib.Path(__file__).parents[1] / "data" / "fixtures"
    nq = list(read_records(fixtures / "nq_fid_dev.json", "nq"))
    hotpot = list(read_records(fixtures / "hotpot_dev_distractor.json", "hotpotqa"))
    for metric in ("recall@5", "ndcg@2", "mrr", "indirect_recall@5"):
        with pytest.raises(ValueError, match=f"best_metric='{metric}' needs gold passages"):
            check_best_metric(metric, nq)
        check_best_metric(metric, hotpot)
    for metric in ("", "answer_recall@5", "em", "f1"):
        check_best_metric(metric, nq)
