"""Rerank your own records with a trained (exported) or public reranker:
``python -m experiments.rerank --reranker DIR_OR_HUB_NAME --input records.jsonl
--output ranked.jsonl [--k 5] [--batch_size N] [--reader DIR] [--resume] [--mesh …]``.

Input: the project's schema (FiD JSON lines or a JSON array) or an official format
(``--format hotpotqa`` …). Output: one JSON line per record, its passages sorted by score,
each with ``score`` and ``input_rank`` (its position in the input); with ``--reader`` the
reader's ``answer`` from the top k. The file streams through in bounded memory; bad records
are reported (file, line, reason), skipped and counted; an interrupted run continues with
``--resume`` (ids already in the output are skipped, a half-written last line is cut).
Ranking metrics are reported when the records have gold flags.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from experiments.cli import add_parallel_arguments, fail, start_parallel, user_path

# -------------------------------------------------------------------- scoring


class PairScorer:
    """Tokenises a record's (question, passage) pairs the way training does
    (``data.inputs``) and scores fixed-size batches of pairs with one compiled function."""

    def __init__(self, loaded, *, max_length: int, batch_size: int, mesh=None):
        from flax import nnx

        from gumbel_jax import sharding

        self.tokenizer, self.kind = loaded.tokenizer, loaded.kind
        self.max_length, self.batch_size, self.mesh = max_length, batch_size, mesh
        graph, state = nnx.split(loaded.model)
        if mesh is not None:
            sharding.check_batch_size(batch_size, mesh)
            state = sharding.shard_parameters(state, mesh)
        self.state = state
        self._score = _scoring_function(graph)

    def tokenize(self, record) -> dict[str, np.ndarray]:
        """``{input name: [passages, max_length]}`` for one record."""
        from gumbel_jax.data.inputs import tokenize_cross_encoder, tokenize_passages
        from gumbel_jax.data.templates import rankt5_text

        passages = [(p.title, p.text) for p in record.ctxs]
        if self.kind == "cross_encoder":
            arrays = tokenize_cross_encoder(self.tokenizer, record.question, passages,
                                            max_length=self.max_length)
        else:
            arrays = tokenize_passages(self.tokenizer, record.question, passages,
                                       max_length=self.max_length, template=rankt5_text)
        return {name: value[0] for name, value in arrays.items()}

    def dispatch(self, batch: dict[str, np.ndarray]):
        """Start scoring ``[batch_size, max_length]`` inputs; returns the device array."""
        if self.mesh is not None:
            from gumbel_jax.sharding import shard_batch

            batch = shard_batch(batch, self.mesh)
        return self._score(self.state, batch)


@functools.lru_cache(maxsize=8)
def _scoring_function(graph):
    """One jitted scorer per architecture, so scoring several files (or the tests' runs)
    with one model compiles once."""
    import jax
    from flax import nnx

    return jax.jit(lambda state, batch: nnx.merge(graph, state)(**batch))


@functools.lru_cache(maxsize=8)
def _answering_function(graph, answer_length: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gumbel_jax import ops

    def answer(state, ids, mask, valid):
        reader = nnx.merge(graph, state)
        log_mask = ops.mask_to_log_mask(valid.astype(jnp.float32))
        return reader.generate(reader.encode(ids, mask), log_mask, max_length=answer_length)

    return jax.jit(answer)


def score_records(records: Iterable, scorer: PairScorer) -> Iterator[tuple[object, np.ndarray]]:
    """``(record, scores [passages])`` in input order. Pairs of consecutive records are
    packed into batches of ``scorer.batch_size`` (one shape, one compilation), and one batch
    is scored while the next is tokenised; at most about two batches of pairs and the records
    they belong to are held."""
    size = scorer.batch_size
    waiting: collections.deque = collections.deque()  # records whose scores are not all in
    chunks: list[dict] = []  # tokenised pairs not yet dispatched
    buffered = 0
    received = np.zeros(0, np.float32)  # scores not yet handed to a record
    inflight = None  # (device scores, real rows) of the batch being scored

    def collect():
        nonlocal received
        if inflight is not None:
            result, count = inflight
            received = np.concatenate([received, np.asarray(result, np.float32)[:count]])

    def finished():
        nonlocal received
        while waiting and len(received) >= len(waiting[0].ctxs):
            record = waiting.popleft()
            n = len(record.ctxs)
            scores, received = received[:n], received[n:]
            yield record, scores

    def dispatch(count):
        nonlocal chunks, buffered, inflight
        pairs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        batch = {k: v[:count] for k, v in pairs.items()}
        if count < size:  # the last batch: pad with copies of its first row (one shape)
            batch = {k: np.concatenate([v, np.repeat(v[:1], size - count, 0)])
                     for k, v in batch.items()}
        buffered -= count
        chunks = [{k: v[count:] for k, v in pairs.items()}] if buffered else []
        collect()
        inflight = (scorer.dispatch(batch), count)

    for record in records:
        waiting.append(record)
        chunks.append(scorer.tokenize(record))
        buffered += len(record.ctxs)
        while buffered >= size:
            dispatch(size)
            yield from finished()
    while buffered:
        dispatch(min(buffered, size))
    collect()
    yield from finished()


class ReaderAnswerer:
    """The reader's answer from a record's top-k passages (greedy), for groups of records:
    FiD reads only the selected passages, which equals reading all of them under the hard
    top-k mask (R8)."""

    def __init__(self, loaded, *, k: int, max_length: int, answer_length: int,
                 group_size: int):
        from flax import nnx

        self.tokenizer, self.k, self.max_length = loaded.tokenizer, k, max_length
        self.group_size = group_size
        graph, self.state = nnx.split(loaded.model)
        self._answer = _answering_function(graph, answer_length)

    def __call__(self, group: list) -> list[str]:
        """``[(record, scores)]`` (at most ``group_size``) -> answers."""
        from gumbel_jax.data.inputs import tokenize_passages
        from gumbel_jax.metrics import ranking

        shape = (self.group_size, self.k, self.max_length)
        ids, mask = np.zeros(shape, np.int32), np.zeros(shape, bool)
        valid = np.zeros(shape[:2], bool)
        for row, (record, scores) in enumerate(group):
            top = ranking(scores)[: self.k]
            inputs = tokenize_passages(self.tokenizer, record.question,
                                       [(record.ctxs[i].title, record.ctxs[i].text)
                                        for i in top], max_length=self.max_length)
            ids[row, : len(top)], mask[row, : len(top)] = (inputs["input_ids"][0],
                                                           inputs["attention_mask"][0])
            valid[row, : len(top)] = True
        for row in range(len(group), self.group_size):  # padding rows read one empty passage
            valid[row, 0] = True
        tokens = np.asarray(self._answer(self.state, ids, mask, valid))
        return [self.tokenizer.decode(tokens[row], skip_special_tokens=True).strip()
                for row in range(len(group))]


def with_answers(scored: Iterable, answerer: ReaderAnswerer | None) -> Iterator[tuple]:
    """``(record, scores, answer or None)``, answering in groups when there is a reader."""
    if answerer is None:
        for record, scores in scored:
            yield record, scores, None
        return
    group: list = []
    for item in scored:
        group.append(item)
        if len(group) == answerer.group_size:
            yield from ((*item, a) for item, a in zip(group, answerer(group), strict=True))
            group = []
    if group:
        yield from ((*item, a) for item, a in zip(group, answerer(group), strict=True))


# -------------------------------------------------------------------- output and metrics


def ranked_json(record, scores: np.ndarray, answer: str | None = None) -> dict:
    """The record in the project's schema, its passages best first, each with its ``score``
    and ``input_rank``; ties keep the input order."""
    from gumbel_jax.metrics import ranking

    out = record.to_json()
    ctxs = out["ctxs"]
    out["ctxs"] = [{**ctxs[i], "score": float(scores[i]), "input_rank": int(i)}
                   for i in ranking(scores)]
    if answer is not None:
        out["answer"] = answer
    return out


def from_ranked_json(obj: dict):
    """``(record, scores, answer)`` back from an output line (for resumed metrics)."""
    from gumbel_jax.data.records import Passage, Record

    ctxs = tuple(Passage(c["title"], c["text"], c.get("is_gold"), c.get("has_answer"))
                 for c in obj["ctxs"])
    record = Record(obj["id"], obj["question"], tuple(obj.get("answers", ())), ctxs)
    return record, np.asarray([c["score"] for c in obj["ctxs"]], np.float64), obj.get("answer")


class RankingTotals:
    """Running means of the ranking metrics over the records that have gold flags (and of
    ``answer_recall@k``, EM and F1 over those with answers), as ``training.evaluation``."""

    def __init__(self, k: int):
        self.k = k
        self.sums: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()

    def add(self, record, scores, answer: str | None = None) -> None:
        from gumbel_jax import metrics

        k, values = self.k, {}
        if record.has_gold_labels:
            for prefix, relevant in (("", record.gold), ("indirect_", record.indirect)):
                values[f"{prefix}recall@{k}"] = metrics.recall_at_k(scores, relevant, k)
                values[f"{prefix}ndcg@{k}"] = metrics.ndcg_at_k(scores, relevant, k)
                values[f"{prefix}mrr"] = metrics.mrr(scores, relevant)
        if record.answers:
            values[f"answer_recall@{k}"] = metrics.answer_recall_at_k(
                scores, record.answer_passages, k)
            if answer is not None:
                values["em"] = metrics.exact_match(answer, record.answers)
                values["f1"] = metrics.f1_score(answer, record.answers)
        for name, value in values.items():
            if not np.isnan(value):
                self.sums[name] += value
                self.counts[name] += 1

    def summary(self) -> dict:
        return {name: self.sums[name] / count for name, count in self.counts.items()}


def read_finished(path: pathlib.Path, totals: RankingTotals) -> set[str]:
    """The ids already in an output file (their metrics added to ``totals``). A last line
    cut short by an interruption is removed; any other unreadable line is an error."""
    from gumbel_jax.data.validation import DataError

    done: set[str] = set()
    keep = 0  # bytes of complete, valid lines
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break  # the interrupted last line
            try:
                obj = json.loads(line)
                done.add(obj["id"])
                totals.add(*from_ranked_json(obj))
            except (ValueError, KeyError, TypeError) as error:
                raise DataError(f"{path}, line {number}: not a line this command wrote "
                                f"({type(error).__name__}: {error}); cannot resume into it"
                                ) from None
            keep += len(line)
    if keep < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(keep)
    return done


# -------------------------------------------------------------------- the command


def _progress():
    from tqdm import tqdm

    return tqdm(unit="rec", dynamic_ncols=True, disable=not sys.stderr.isatty())


def rerank_file(records: Iterable, output: pathlib.Path, scorer: PairScorer, *,
                answerer: ReaderAnswerer | None = None, totals: RankingTotals,
                flush_every: float = 1.0, clock: Callable[[], float] = time.monotonic) -> dict:
    """Score ``records`` and append them to ``output``; lines are flushed at least every
    ``flush_every`` seconds and always at the end, on an error or an interruption."""
    counts = {"records": 0, "passages": 0}
    start = last_flush = clock()
    with open(output, "ab") as handle, _progress() as bar:
        try:
            for record, scores, answer in with_answers(score_records(records, scorer),
                                                       answerer):
                handle.write(json.dumps(ranked_json(record, scores, answer),
                                        ensure_ascii=False).encode("utf-8") + b"\n")
                totals.add(record, scores, answer)
                counts["records"] += 1
                counts["passages"] += len(record.ctxs)
                bar.update()
                if clock() - last_flush >= flush_every:
                    handle.flush()
                    last_flush = clock()
        finally:
            handle.flush()
            counts["seconds"] = clock() - start
    return counts


def _skip_finished(records: Iterable, done: set[str], errors: list) -> Iterator:
    """The records not in ``done``. An input error ends the stream (kept in ``errors``) so
    the records read before it are still scored and written."""
    from gumbel_jax.data.validation import DataError

    try:
        for record in records:
            if record.id not in done:
                yield record
    except DataError as error:
        errors.append(error)


def _load(args, mesh):
    import jax.numpy as jnp

    from gumbel_jax.checkpoints import load_exported_reader, load_exported_reranker

    overrides = {"dtype": jnp.dtype(args.dtype)} if args.dtype != "float32" else {}
    loaded = load_exported_reranker(args.reranker, **overrides)
    max_length = args.max_length or loaded.metadata.get("max_length") or 512
    scorer = PairScorer(loaded, max_length=max_length, batch_size=args.batch_size, mesh=mesh)
    answerer = None
    if args.reader:
        reader = load_exported_reader(args.reader, **overrides)
        answerer = ReaderAnswerer(
            reader, k=args.k, group_size=max(1, args.batch_size // args.k),
            max_length=args.reader_length or reader.metadata.get("max_length") or 250,
            answer_length=args.answer_length or reader.metadata.get("answer_length") or 16)
    return scorer, answerer


def _check_paths(args) -> None:
    output = pathlib.Path(args.output)
    if output.exists() and output.resolve() == pathlib.Path(args.input).resolve():
        raise ValueError(f"{output}: the output would overwrite the input")
    if output.exists() and not args.resume and output.stat().st_size:
        raise ValueError(f"{output}: exists; pass --resume to continue it (records already "
                         "in it are skipped) or choose another --output")
    if args.k < 1 or args.batch_size < 1:
        raise ValueError(f"--k {args.k} and --batch_size {args.batch_size} must be >= 1")


def _parser() -> argparse.ArgumentParser:
    from gumbel_jax.data.formats import CONVERTERS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reranker", required=True,
                   help="an exported reranker folder, or a RankT5 / cross-encoder checkpoint "
                        "(folder or Hugging Face hub name)")
    p.add_argument("--input", required=True, type=user_path)
    p.add_argument("--output", required=True, type=user_path)
    p.add_argument("--format", default="fid", choices=sorted(CONVERTERS),
                   help="input format: fid (the project's schema; NQ / TriviaQA) or an "
                        "official dataset file")
    p.add_argument("--k", type=int, default=5, help="top k for the metrics and the reader")
    p.add_argument("--batch_size", type=int, default=64, help="(question, passage) pairs "
                   "scored at once")
    p.add_argument("--max_length", type=int, default=None, help="tokens per pair (default: "
                   "the export's training length, else 512)")
    p.add_argument("--reader", default=None, help="a FiD reader folder: answer from the top k")
    p.add_argument("--reader_length", type=int, default=None)
    p.add_argument("--answer_length", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: skip ids already in --output")
    p.add_argument("--max_bad_records", type=int, default=100,
                   help="stop (keeping what was written) after this many bad records")
    add_parallel_arguments(p)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from gumbel_jax.checkpoints import CheckpointError
    from gumbel_jax.data.reading import read_records
    from gumbel_jax.data.validation import DataError, ValidationReport

    report = ValidationReport(max_bad_records=args.max_bad_records)
    totals = RankingTotals(args.k)
    output = pathlib.Path(args.output)
    try:
        _check_paths(args)
        if args.distributed:
            raise ValueError("rerank runs in one process (--mesh spreads it over this "
                             "host's devices); --distributed is not supported")
        if not os.path.isfile(args.input):
            raise DataError(f"{args.input}: no such file")
        mesh = start_parallel(args)
        if mesh is not None:
            from gumbel_jax.sharding import check_batch_size

            check_batch_size(args.batch_size, mesh)  # before the models load
        scorer, answerer = _load(args, mesh)
        output.parent.mkdir(parents=True, exist_ok=True)
        done = read_finished(output, totals) if output.exists() else set()
        errors: list = []
        records = _skip_finished(read_records(args.input, args.format, report=report), done,
                                 errors)
        counts = rerank_file(records, output, scorer, answerer=answerer, totals=totals)
        if errors:
            raise errors[0]
    except KeyboardInterrupt:
        print(f"interrupted; {output} keeps every finished record: run again with --resume "
              "to continue", file=sys.stderr)
        return 130
    except (ValueError, DataError, CheckpointError, FileNotFoundError) as error:
        if report.problems:
            print(report.summary(), file=sys.stderr)
        return fail(f"{error}" + (f"\n(records finished so far are in {output}; fix the "
                                  "input, then --resume)" if output.exists() else ""))
    if report.problems:
        print(report.summary(), file=sys.stderr)
    seconds = max(counts["seconds"], 1e-9)
    summary = {"output": str(output), "records": counts["records"],
               "passages": counts["passages"], "resumed_past": len(done),
               "skipped_bad": report.skipped, "seconds": round(counts["seconds"], 3),
               "records_per_s": round(counts["records"] / seconds, 2),
               "passages_per_s": round(counts["passages"] / seconds, 2),
               "metrics": totals.summary()}
    print(f"reranked {counts['records']} records ({counts['passages']} passages) in "
          f"{counts['seconds']:.1f} s: {summary['records_per_s']} records/s, "
          f"{summary['passages_per_s']} passages/s; {report.skipped} bad records skipped",
          file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
