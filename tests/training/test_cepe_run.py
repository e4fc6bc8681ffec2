"""A CEPE reader through the whole trainer: the featurizer's packed rows (candidates to the
encoder, the question prompt to the decoder), and the train CLI end to end with a tiny CEPE
reader (G-Rerank, held-out evaluation with generated answers)."""

import json
import pathlib

import numpy as np
import pytest

from experiments import train as train_cli
from experiments.cli import load_config
from gumbel_jax.training.experiment import build

CONFIG = str(pathlib.Path(__file__).parents[2] / "experiments" / "configs"
             / "synthetic_g_rerank.py")
CEPE = ["model.reader_kind=cepe", "model.cepe_prompt_length=12", "data.num_train=8",
        "data.num_eval=4", "data.batch_size=4", "data.reader_length=16",
        "data.answer_length=4", "train.num_steps=2", "train.checkpoint_every=2",
        "model.d_model=16", "model.num_layers=1", "model.num_heads=2"]


def test_cepe_token_layout_cuts_and_pads_as_cepe_reads():
    """Contexts keep their end (CEPE truncates on the left) and are right-padded; a long
    prompt keeps "Answer:" and loses its start; the answer ends with EOS."""
    from gumbel_jax.data.cepe_inputs import answer_tokens, prompt_tokens, right_padded
    from gumbel_jax.data.tokenizer import word_level_tokenizer

    ids, mask = right_padded([[5, 6, 7, 8], [9]], 3, 3, keep_end=True)
    np.testing.assert_array_equal(ids, [[6, 7, 8], [9, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(mask.sum(-1), [3, 1, 0])
    tokenizer = word_level_tokenizer([], extra_texts=["Question: who wrote it Answer: Paris"])
    ids, mask = prompt_tokens(tokenizer, "who wrote it", 3)
    assert tokenizer.convert_ids_to_tokens(ids.tolist()) == ["wrote", "it", "Answer:"]
    ids, mask = prompt_tokens(tokenizer, "who wrote it", 8)
    assert mask.tolist() == [False, False, False, True, True, True, True, True]
    ids, mask = answer_tokens(tokenizer, "Paris", 3)
    assert tokenizer.convert_ids_to_tokens(ids[mask].tolist()) == ["Paris", "</s>"]


def test_cepe_featurizer_packs_contexts_then_the_left_padded_prompt():
    config = load_config(CONFIG, CEPE)
    reader, _, _, eval_records, featurize = build(config)
    assert type(reader).__name__ == "CepeReader" and reader.prompt_length == 12
    example = featurize(eval_records[0])
    ids, mask = example["reader_ids"], example["reader_mask"]
    assert ids.shape == (config.data.num_candidates, 16 + 12)
    prompt = mask[:, 16:]
    assert (prompt == prompt[0]).all() and prompt[0, -1] and not prompt[0, 0]  # left-padded
    assert (ids[:, 16:] == ids[0, 16:]).all()
    valid = example["doc_valid"]
    assert mask[valid, 0].all() and not mask[~valid, :16].any()
    answer = example["answer_ids"][example["answer_mask"]]
    assert answer[-1] == 1 and len(answer) >= 2  # the answer's words, then EOS
    memory = reader.encode(ids[None], mask[None])
    np.testing.assert_array_equal(memory.prompt_ids[0], ids[0, 16:] * prompt[0])


def test_model_config_reaches_the_cepe_reader():
    from gumbel_jax.training.config import ModelConfig
    from gumbel_jax.training.factory import build_models

    config = ModelConfig(reader_kind="cepe", cepe_prompt_length=7, dma="blockwise",
                         cepe_precompute_memory=False, d_model=16, num_layers=1, num_heads=2,
                         score_token_id=3)
    reader, _ = build_models(config, vocab_size=40)
    assert (reader.prompt_length, reader.method, reader.precompute_memory) == (7, "blockwise",
                                                                                False)
    assert reader.config.encoder.hidden_size == 8 and reader.model.cross_layers == (0,)


@pytest.mark.slow
def test_train_cli_runs_with_a_cepe_reader(tmp_path, capsys):
    workdir = tmp_path / "run"
    overrides = [*CEPE, "train.eval_answers=True"]
    assert train_cli.main(["--config", CONFIG, "--workdir", str(workdir),
                           *sum((["--set", s] for s in overrides), [])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 2 and "em" in printed and "recall@5" in printed
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 2 and all(np.isfinite(losses))
    saved = json.loads((workdir / "experiment.json").read_text())
    assert saved["model"]["reader_kind"] == "cepe"
