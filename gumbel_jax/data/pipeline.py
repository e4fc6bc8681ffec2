"""The input pipeline (grain): shuffle with a seed, tokenize for the reader and the reranker,
pad to static shapes with valid masks, batch, shard by JAX process. The iterator's state is
one integer and resumes exactly, across epoch boundaries."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence

import grain
import numpy as np

from gumbel_jax.data.batch import Batch
from gumbel_jax.data.records import Record
from gumbel_jax.data.templates import fid_passage_text, rankt5_text


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Static shapes of one example."""

    num_candidates: int  # n: candidates beyond n are cut (source order), fewer are padded
    reader_length: int  # tokens per (question, passage) for the reader
    ranker_length: int  # tokens per (question, passage) for the reranker
    answer_length: int  # answer tokens, EOS included


def example_id(record_id: str) -> int:
    """A stable 31-bit id for per-example randomness (``fold_in(step_key, example_id)``)."""
    return zlib.crc32(record_id.encode("utf-8")) & 0x7FFFFFFF


def as_record(item) -> Record:
    """A ``Record``, its JSON bytes, or a tfds example ``{"record": bytes}``."""
    if isinstance(item, Record):
        return item
    if isinstance(item, dict):
        item = item["record"]
    return Record.loads(item)


class Featurizer:
    """Record -> dict of fixed-shape numpy arrays: one example of ``data.batch.Batch``.

    A ranker template that returns a (question, passage) pair is tokenised as a sentence
    pair, the passage cut first (cross-encoders: ``data.templates.cross_encoder_pair``).
    ``n`` is ``spec.num_candidates``; the fields and their shapes are ``Batch``'s.
    """

    def __init__(self, reader_tokenizer, ranker_tokenizer, spec: FeatureSpec, *,
                 reader_template: Callable = fid_passage_text,
                 ranker_template: Callable = rankt5_text):
        self.reader_tokenizer, self.ranker_tokenizer = reader_tokenizer, ranker_tokenizer
        self.spec = spec
        self.reader_template, self.ranker_template = reader_template, ranker_template

    def __call__(self, item) -> dict[str, np.ndarray]:
        record = as_record(item)
        spec = self.spec
        passages = record.ctxs[: spec.num_candidates]
        count = len(passages)
        reader = [self.reader_template(record.question, p.title, p.text) for p in passages]
        ranker = [self.ranker_template(record.question, p.title, p.text) for p in passages]
        n = spec.num_candidates
        reader_ids, reader_mask = encode_texts(self.reader_tokenizer, reader,
                                               spec.reader_length, n)[:2]
        ranker_ids, ranker_mask = encode_texts(self.ranker_tokenizer, ranker,
                                               spec.ranker_length, n)[:2]
        answer_ids, answer_mask = encode_texts(self.reader_tokenizer, [record.answers[0]],
                                               spec.answer_length, 1)[:2]

        def per_candidate(values):
            out = np.zeros(spec.num_candidates, bool)
            out[:count] = values[:count]
            return out

        return Batch(
            reader_ids=reader_ids, reader_mask=reader_mask,
            ranker_ids=ranker_ids, ranker_mask=ranker_mask,
            doc_valid=per_candidate([True] * count),
            answer_ids=answer_ids[0], answer_mask=answer_mask[0],
            gold=per_candidate(record.gold), indirect=per_candidate(record.indirect),
            example_id=np.int32(example_id(record.id)),
        ).to_dict()


def stack_examples(examples: Sequence[dict]) -> dict[str, np.ndarray]:
    """Featurised examples (dicts of equal-shape arrays) -> one batch dict."""
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def encode_texts(tokenizer, texts: Sequence, length: int, rows: int):
    """The one tokenisation policy of the project (training and interactive scoring):
    ``(ids, mask, token_types)``, each ``[rows, length]`` (int32, bool, int32), rows past
    ``len(texts)`` empty.

    Plain texts are cut to ``length`` keeping a final EOS; sentence pairs (a cross-encoder's
    ``(question, passage)``) keep their special tokens, cut the passage first and the
    question to at most half the room. Padding and truncation happen here, not in the
    tokenizer: a fast tokenizer's padding settings are shared state, and grain featurises in
    several threads. ``token_types`` are the tokenizer's segment ids (zeros when it has
    none).
    """
    ids = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), bool)
    types = np.zeros((rows, length), np.int32)
    if not texts:
        return ids, mask, types
    if isinstance(texts[0], tuple):  # sentence pairs (a cross-encoder's input)
        encoded = tokenizer([a for a, _ in texts], [b for _, b in texts])
        kept = [_pair_positions(encoded.sequence_ids(row), length)
                for row in range(len(texts))]
    else:
        encoded = tokenizer(list(texts))
        kept = [_positions(tokens, length, tokenizer.eos_token_id)
                for tokens in encoded["input_ids"]]
    segments = encoded.get("token_type_ids")
    for row, positions in enumerate(kept):
        tokens = encoded["input_ids"][row]
        ids[row, : len(positions)] = [tokens[i] for i in positions]
        mask[row, : len(positions)] = True
        if segments is not None:
            types[row, : len(positions)] = [segments[row][i] for i in positions]
    return ids, mask, types


def _positions(tokens: list[int], length: int, eos_id: int | None) -> list[int]:
    """The token positions kept when cutting to ``length``, keeping a final EOS (as T5's
    tokenizer does)."""
    if len(tokens) <= length:
        return list(range(len(tokens)))
    if eos_id is not None and tokens[-1] == eos_id:
        return [*range(length - 1), len(tokens) - 1]
    return list(range(length))


def _pair_positions(sequence_ids: list, length: int) -> list[int]:
    """The positions kept when cutting a sentence pair to ``length`` tokens, keeping its
    special tokens. The passage (sequence 1) is cut first; a question (sequence 0) longer than
    half the room (the tokens left after the special ones) is cut to that half, so the
    passage keeps the other half."""
    if len(sequence_ids) <= length:
        return list(range(len(sequence_ids)))
    question = [i for i, s in enumerate(sequence_ids) if s == 0]
    passage = [i for i, s in enumerate(sequence_ids) if s == 1]
    room = length - (len(sequence_ids) - len(question) - len(passage))
    if room < 2:
        raise ValueError(f"length {length} cannot hold a sentence pair and its special tokens")
    keep_question = min(len(question), max(room - len(passage), room // 2))
    keep_passage = min(len(passage), room - keep_question)
    drop = set(question[keep_question:]) | set(passage[keep_passage:])
    return [i for i in range(len(sequence_ids)) if i not in drop]


def make_dataset(source: Sequence, featurizer: Callable, *, batch_size: int, seed: int,
                 shuffle: bool = True, num_epochs: int | None = None,
                 drop_remainder: bool = True, shard_index: int | None = None,
                 shard_count: int | None = None) -> grain.IterDataset:
    """Batches of featurised examples for this process.

    The global batches (``batch_size * shard_count`` examples) are the same whatever the
    number of processes: one shuffled stream of ``source``, cut into global batches, of which
    process i holds rows ``[i * batch_size, (i + 1) * batch_size)`` (the order in which
    ``sharding.shard_batch`` assembles them), so a run over several hosts sees the batches of
    a run on one.

    Args:
      source: random-access records (a list of ``Record``s, or a ``tfds.data_source``).
      featurizer: record -> dict of arrays (a ``Featurizer``).
      batch_size: examples per batch *on this process* (global batch / process count).
      seed: shuffle seed; each epoch has its own order.
      num_epochs: None repeats forever.
      drop_remainder: drop a last, smaller batch (with several shards it is always dropped:
        a partial global batch does not split evenly).
      shard_index, shard_count: this process's shard (default: ``jax.process_index()`` of
        ``jax.process_count()``).

    Returns:
      a grain ``IterDataset``; ``iter(...)`` gives an iterator with ``get_state()`` /
      ``set_state()`` for exact resume.
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.seed(seed).shuffle()
    dataset = dataset.repeat(num_epochs)
    if shard_count > 1:
        dataset = _rows_of_shard(dataset, batch_size, shard_index, shard_count)
    dataset = dataset.map(featurizer)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset()


def _rows_of_shard(dataset: grain.MapDataset, batch_size: int, shard_index: int,
                   shard_count: int) -> grain.MapDataset:
    """Shard ``shard_index``'s ``batch_size`` rows of every full global batch of
    ``dataset`` (a global batch: ``batch_size * shard_count`` consecutive elements)."""
    global_batch = batch_size * shard_count

    def element(index: int):
        batch, row = divmod(index, batch_size)
        return dataset[batch * global_batch + shard_index * batch_size + row]

    return grain.MapDataset.range(len(dataset) // global_batch * batch_size).map(element)
