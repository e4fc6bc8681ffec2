"""Export round trips (R25): an exported folder loaded by transformers' PyTorch models (and
sentence-transformers' CrossEncoder) scores as our JAX model does; our loaders read it back
bit-equal; a training run exports through the command line."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gumbel_jax.checkpoints import (
    ExportError,
    bert_config_to_hf,
    export_reader,
    export_reranker,
    load_cross_encoder,
    load_exported_reader,
    load_exported_reranker,
    load_rankt5,
    t5_config_to_hf,
)
from gumbel_jax.data.inputs import tokenize_cross_encoder, tokenize_passages
from gumbel_jax.data.synthetic import WorldConfig, make_records
from gumbel_jax.data.templates import cross_encoder_pair, fid_passage_text, rankt5_text
from gumbel_jax.data.tokenizer import word_level_tokenizer
from gumbel_jax.models import BertConfig, CrossEncoder, FiDReader, RankT5, T5Config
from gumbel_jax.training.config import ModelConfig
from gumbel_jax.training.factory import tiny_architectures
from tests.torch_reference import to_torch, torch

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # the bound on |PyTorch score - JAX score|
SCORE_TOKEN = 3
LENGTH = 24


@pytest.fixture(scope="module")
def records():
    return make_records(WorldConfig(), 6, split_seed=3, prefix="export")


@pytest.fixture(scope="module")
def tokenizer(records):
    return word_level_tokenizer(records)


def tiny_reranker(kind: str, vocab_size: int, *, seed: int = 1, **changes):
    """The tiny reranker a synthetic run trains (training.factory's architecture)."""
    config = ModelConfig(reranker_kind=kind, score_token_id=SCORE_TOKEN)
    architecture = dataclasses.replace(tiny_architectures(config, vocab_size)[1], **changes)
    if kind == "cross_encoder":
        return CrossEncoder.random(architecture, seed=seed)
    return RankT5.random(architecture, seed=seed, score_token_id=SCORE_TOKEN)


def _passages(record):
    return [(p.title, p.text) for p in record.ctxs]


def jax_scores(ranker, tokenizer, record, kind: str) -> np.ndarray:
    if kind == "cross_encoder":
        inputs = tokenize_cross_encoder(tokenizer, record.question, _passages(record),
                                        max_length=LENGTH)
    else:
        inputs = tokenize_passages(tokenizer, record.question, _passages(record),
                                   max_length=LENGTH, template=rankt5_text)
    inputs = {k: jnp.asarray(v[0]) for k, v in inputs.items()}
    return np.asarray(ranker(**inputs))


def _params(model) -> list:
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def assert_bit_equal(a, b) -> None:
    left, right = _params(a), _params(b)
    assert len(left) == len(right)
    for x, y in zip(left, right, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _report(name: str, difference: float) -> None:
    print(f"\nround trip {name}: max |PyTorch - JAX| = {difference:.3g}")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("config", [
    T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=1,
             num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=2,
             num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0),
], ids=["t5-v1_1", "t5"])
def test_t5_config_round_trips(config):
    assert T5Config.from_hf(t5_config_to_hf(config)) == config
    hf = transformers.T5Config(**t5_config_to_hf(config))
    assert T5Config.from_hf(hf) == config


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_bert_config_round_trips(family):
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=32, family=family,
                        type_vocab_size=1 if family == "roberta" else 2, pad_token_id=0)
    assert BertConfig.from_hf(bert_config_to_hf(config)) == config


# ---------------------------------------------------------------- RankT5


@pytest.mark.parametrize("tied", [False, True], ids=["untied-v1_1", "tied-t5"])
def test_rankt5_export_scores_the_same_in_pytorch(tied, records, tokenizer, tmp_path):
    changes = {"tie_word_embeddings": True, "feed_forward_proj": "relu"} if tied else {}
    ranker = tiny_reranker("rankt5", len(tokenizer), **changes)
    folder = export_reranker(ranker, tmp_path / "rankt5", tokenizer=tokenizer,
                             max_length=LENGTH, card={"base_model": "tiny"})
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    worst = 0.0
    for record in records[:3]:
        texts = [rankt5_text(record.question, t, x) for t, x in _passages(record)]
        batch = hf_tokenizer(texts, padding=True, truncation=True, max_length=LENGTH,
                             return_tensors="pt")
        start = torch.full((len(texts), 1), model.config.decoder_start_token_id)
        with torch.no_grad():
            logits = model(**batch, decoder_input_ids=start).logits[:, 0, SCORE_TOKEN]
        ours = jax_scores(ranker, tokenizer, record, "rankt5")
        worst = max(worst, float(np.abs(logits.numpy() - ours).max()))
    _report(f"RankT5 ({'tied' if tied else 'untied'}) via T5ForConditionalGeneration", worst)
    assert worst <= TOLERANCE
    loaded = load_exported_reranker(folder)
    assert loaded.kind == "rankt5" and loaded.model.score_token_id == SCORE_TOKEN
    assert_bit_equal(loaded.model, ranker)
    assert_bit_equal(load_rankt5(folder, score_token_id=SCORE_TOKEN), ranker)
    card = (folder / "README.md").read_text()
    assert f"logit of token id {SCORE_TOKEN}" in card and "first decoder step" in card


# ---------------------------------------------------------------- cross-encoders


def _bert_tokenizer(tokenizer):
    """The word-level tokenizer, reporting segment ids (as BERT tokenizers do)."""
    copy = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="</s>",
        unk_token="<unk>", model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    return copy


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_cross_encoder_export_scores_the_same_in_pytorch(family, records, tokenizer,
                                                         tmp_path):
    if family == "bert":  # BERT's head (pooler + classifier) and two segments
        tokenizer = _bert_tokenizer(tokenizer)
        ranker = tiny_reranker("cross_encoder", len(tokenizer), family="bert",
                               type_vocab_size=2)
    else:  # what a synthetic run trains: XLM-R layout, one segment (as BGE)
        ranker = tiny_reranker("cross_encoder", len(tokenizer))
    folder = export_reranker(ranker, tmp_path / "ce", tokenizer=tokenizer, max_length=LENGTH)
    config = json.loads((folder / "config.json").read_text())
    expected = "XLMRoberta" if family == "roberta" else "Bert"
    assert config["architectures"] == [f"{expected}ForSequenceClassification"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.num_labels == 1 and type(model).__name__.startswith(expected)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    worst = 0.0
    for record in records[:3]:
        pairs = [cross_encoder_pair(record.question, t, x) for t, x in _passages(record)]
        batch = hf_tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True,
                             return_tensors="pt")
        assert ("token_type_ids" in batch) == (family == "bert")
        with torch.no_grad():
            logits = model(**batch).logits[:, 0].numpy()
        ours = jax_scores(ranker, tokenizer, record, "cross_encoder")
        worst = max(worst, float(np.abs(logits - ours).max()))
    _report(f"cross-encoder ({family}) via {expected}ForSequenceClassification", worst)
    assert worst <= TOLERANCE
    loaded = load_exported_reranker(folder)
    assert loaded.kind == "cross_encoder"
    assert_bit_equal(loaded.model, ranker)
    assert_bit_equal(load_cross_encoder(folder), ranker)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_cross_encoder_export_scores_the_same_in_sentence_transformers(family, records,
                                                                       tokenizer, tmp_path):
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers (test-only) is not installed")
    if family == "bert":
        tokenizer = _bert_tokenizer(tokenizer)
        ranker = tiny_reranker("cross_encoder", len(tokenizer), family="bert",
                               type_vocab_size=2, seed=4)
    else:
        ranker = tiny_reranker("cross_encoder", len(tokenizer), seed=4)
    folder = export_reranker(ranker, tmp_path / "ce", tokenizer=tokenizer, max_length=LENGTH)
    model = sentence_transformers.CrossEncoder(str(folder), device="cpu")
    worst = 0.0
    for record in records[:3]:
        pairs = [cross_encoder_pair(record.question, t, x) for t, x in _passages(record)]
        predicted = model.predict(pairs, batch_size=4, show_progress_bar=False)
        ours = jax_scores(ranker, tokenizer, record, "cross_encoder")
        worst = max(worst, float(np.abs(np.asarray(predicted) - ours).max()))
    _report(f"cross-encoder ({family}) via sentence_transformers.CrossEncoder.predict", worst)
    assert worst <= TOLERANCE


# ---------------------------------------------------------------- reader


def test_reader_export_round_trips(records, tokenizer, tmp_path):
    reader_config = tiny_architectures(ModelConfig(), len(tokenizer))[0]
    reader = FiDReader.random(reader_config, seed=5)
    folder = export_reader(reader, tmp_path / "reader", tokenizer=tokenizer, max_length=LENGTH,
                           answer_length=4)
    loaded = load_exported_reader(folder)
    assert loaded.metadata["answer_length"] == 4
    assert_bit_equal(loaded.model, reader)
    record = records[0]
    inputs = tokenize_passages(tokenizer, record.question, _passages(record)[:1],
                               max_length=LENGTH, template=fid_passage_text)
    ids, mask = inputs["input_ids"][0], inputs["attention_mask"][0]
    answer = np.asarray(tokenizer([record.answers[0]])["input_ids"])
    start = np.zeros((1, 1), answer.dtype)
    decoder_ids = np.concatenate([start, answer[:, :-1]], axis=1)
    memory = reader.t5.encode(jnp.asarray(ids), jnp.asarray(mask))
    ours = np.asarray(reader.t5.decode(jnp.asarray(decoder_ids), memory, jnp.asarray(mask)))
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(input_ids=to_torch(ids), attention_mask=to_torch(mask),
                       decoder_input_ids=to_torch(decoder_ids)).logits.numpy()
    worst = float(np.abs(logits - ours).max())
    _report("FiD reader (one passage) via T5ForConditionalGeneration logits", worst)
    assert worst <= TOLERANCE
    with pytest.raises(ExportError, match="use export_reader"):
        export_reranker(reader, tmp_path / "wrong", tokenizer=tokenizer)


# ---------------------------------------------------------------- folder handling


def test_export_never_overwrites_or_leaves_a_partial_folder(tokenizer, tmp_path):
    ranker = tiny_reranker("cross_encoder", len(tokenizer))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_reranker(ranker, out, tokenizer=tokenizer)
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(ExportError, match="unknown model card keys \\['objectve'\\]"):
        export_reranker(ranker, tmp_path / "x", tokenizer=tokenizer, card={"objectve": {}})
    assert not (tmp_path / "x").exists()
    export_reranker(ranker, out, tokenizer=tokenizer, overwrite=True)
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left


# ---------------------------------------------------------------- a training run


@pytest.mark.slow
def test_export_a_training_run_from_the_command_line(tmp_path, capsys):
    from experiments import export as export_cli
    from experiments import train as train_cli
    from tests.training.test_cli import CONFIGS, SMALL

    config = str([p for p in CONFIGS if p.name == "synthetic_g_rerank.py"][0])
    workdir = tmp_path / "run"
    small = [*SMALL, "train.num_steps=2", "model.reranker_kind=cross_encoder",
             "train.eval_every=2", "train.best_metric=recall@5"]
    assert train_cli.main(["--config", config, "--workdir", str(workdir),
                           *sum((["--set", s] for s in small), [])]) == 0
    capsys.readouterr()
    out, reader_out = tmp_path / "export", tmp_path / "reader"
    assert export_cli.main(["--workdir", str(workdir), "--out", str(out),
                            "--reader_out", str(reader_out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["kind"] == "cross_encoder"
    card = (out / "README.md").read_text()
    evaluation = json.loads((workdir / "eval.json").read_text())
    assert "g_rerank" in card and "| tau | 0.5000 |" in card and "synthetic" in card
    assert f"| recall@5 | {evaluation['recall@5']:.4f} |" in card
    from gumbel_jax.training.experiment import restore_run

    run = restore_run(workdir)
    assert_bit_equal(load_exported_reranker(out).model, run.ranker)
    assert_bit_equal(load_exported_reader(reader_out).model, run.reader)
    assert export_cli.main(["--workdir", str(workdir), "--out", str(tmp_path / "best"),
                            "--checkpoint", "best"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2  # the one held-out evaluation
    assert_bit_equal(load_exported_reranker(tmp_path / "best").model, run.ranker)
    assert export_cli.main(["--workdir", str(workdir), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert export_cli.main(["--workdir", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no experiment.json" in capsys.readouterr().err
