"""Evaluation: rank each question's candidates with the reranker, then let the reader read the
hard top-k. Ranking metrics over gold and over indirect (bridge) passages, answer recall,
EM / F1 of the generated answers, and per-question predictions so any metric can be
recomputed later.

Which metric is defined where (docs/reproduce.md, "Metrics"): the gold metrics (``recall@c``,
``ndcg@c``, ``mrr`` and their ``indirect_`` versions) only for questions whose source marks
gold passages (multi-hop sets, the synthetic world); FiD's NQ / TriviaQA mark none, so they
are absent there rather than NaN. ``answer_recall@c`` (top-c accuracy: an answer-containing
passage in the top c) is defined for every question. Ranking metrics are reported at the
run's k and the paper's 5 (``metrics.ranking_cutoffs``); MRR is not cut.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gumbel_jax import metrics, ops
from gumbel_jax.data.batch import Batch
from gumbel_jax.data.pipeline import stack_examples
from gumbel_jax.training import multihost
from gumbel_jax.training.run_folder import run_path, write_text


@functools.lru_cache(maxsize=16)
def _scorer(ranker_graph, reader_graph, k: int, max_answer_length: int, generate: bool,
            num_beams: int = 1):
    """One jitted scoring (and answering) function per architecture and setting, shared by
    every ``evaluate`` call, so evaluating many runs of one model compiles once."""

    @jax.jit
    def scores_and_answers(ranker_params, reader_state, batch):
        batch = Batch.of(batch)
        scores = nnx.merge(ranker_graph, ranker_params)(batch.ranker_ids,
                                                        batch.ranker_mask)
        scores = jnp.where(batch.doc_valid, scores, jnp.finfo(jnp.float32).min)
        if not generate:
            return scores, None
        hard = ops.topk_mask(scores, k, where=batch.doc_valid)
        reader = nnx.merge(reader_graph, reader_state)
        answer = reader.generate(reader.encode(batch.reader_ids, batch.reader_mask),
                                 ops.mask_to_log_mask(hard), max_length=max_answer_length,
                                 num_beams=num_beams)
        return scores, answer

    return scores_and_answers


def evaluate(ranker, reader, records, featurize, *, k: int, batch_size: int = 32,
             tokenizer=None, max_answer_length: int = 16, num_beams: int = 1) -> dict:
    """Metrics and predictions over ``records`` (a list of ``Record``s).

    With a ``tokenizer`` (the reader's) the reader generates an answer from the reranker's
    hard top-k (greedy, as FiD evaluates, or beam search with ``num_beams`` > 1) and EM / F1
    are reported; without one, ranking metrics only.

    With several processes (multi-host) every one must call it, with the same ``records``:
    each scores its share (``multihost.process_share``) on its own devices, from a host copy
    of parameters that span processes, and every process returns the results of all, in
    ``records``' order.
    """
    ranker_graph, ranker_params = nnx.split(ranker)
    reader_graph, reader_state = nnx.split(reader)
    ranker_params, reader_state = multihost.local_copy((ranker_params, reader_state))
    records = multihost.process_share(list(records))
    scores_and_answers = _scorer(ranker_graph, reader_graph, k, max_answer_length,
                                 tokenizer is not None, num_beams)

    per_question, predictions = [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        examples = [featurize(r) for r in chunk]
        padded = examples + [examples[-1]] * (batch_size - len(examples))  # one shape
        scores, answers = scores_and_answers(ranker_params, reader_state, stack_examples(padded))
        scores = np.asarray(scores)
        for row, (record, example) in enumerate(zip(chunk, examples, strict=True)):
            result, prediction = _score_question(record, example, scores[row], k)
            if answers is not None:
                text = tokenizer.decode(np.asarray(answers[row]), skip_special_tokens=True)
                prediction["answer"] = text
                result["em"] = metrics.exact_match(text, record.answers)
                result["f1"] = metrics.f1_score(text, record.answers)
            per_question.append(result)
            predictions.append(prediction)
    per_question, predictions = multihost.gather(per_question), multihost.gather(predictions)
    names = dict.fromkeys(name for q in per_question for name in q)  # first-seen order
    summary = {name: _mean_defined([q[name] for q in per_question if name in q])
               for name in names}
    summary["num_questions"] = len(per_question)
    return {"metrics": summary, "predictions": predictions}


def _mean_defined(values) -> float:
    """Mean over the questions where a metric is defined (NaN where it is not: indirect
    metrics of a question without indirect passages); NaN if it is defined for none."""
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def ranking_metrics(scores, valid, *, k: int, gold=None, indirect=None,
                    answer=None) -> dict[str, float]:
    """One question's ranking metrics at ``metrics.ranking_cutoffs(k)``.

    Args:
      scores: ``[n]`` reranker scores; valid: ``[n]`` bool, False for padded candidates.
      gold, indirect: ``[n]`` bool gold / indirect passages, or None when the source marks
        no gold passages (then no gold metric is reported, rather than a NaN).
      answer: ``[n]`` bool passages containing an answer (answer recall), or None.
    """
    cutoffs = metrics.ranking_cutoffs(k)
    result = {}
    if gold is not None:
        for prefix, relevant in (("", gold), ("indirect_", indirect)):
            for c in cutoffs:
                result[f"{prefix}recall@{c}"] = metrics.recall_at_k(scores, relevant, c, valid)
            for c in cutoffs:
                result[f"{prefix}ndcg@{c}"] = metrics.ndcg_at_k(scores, relevant, c, valid)
            result[f"{prefix}mrr"] = metrics.mrr(scores, relevant, valid)
    if answer is not None:
        for c in cutoffs:
            result[f"answer_recall@{c}"] = metrics.answer_recall_at_k(scores, answer, c, valid)
    return result


def _score_question(record, example, scores, k):
    valid = example["doc_valid"]
    count = int(valid.sum())  # the featurizer keeps the first n passages
    answer = np.zeros(len(valid), bool)
    answer[:count] = record.answer_passages[:count]
    labelled = record.has_gold_labels
    result = ranking_metrics(scores, valid, k=k, answer=answer,
                             gold=example["gold"] if labelled else None,
                             indirect=example["indirect"] if labelled else None)
    order = metrics.ranking(scores, valid)
    ranking = [int(i) for i in order if valid[i]]  # positions in the record's ctxs
    prediction = {"id": record.id, "ranking": ranking,
                  "ranked_titles": [record.ctxs[i].title for i in ranking],
                  "scores": [float(s) for s in scores[: int(valid.sum())]]}
    return result, prediction


def write_evaluation(workdir, results: dict, *, name: str = "eval") -> None:
    """``{name}_predictions.jsonl``, ``{name}.md`` (a table) and, last, ``{name}.json``
    (metrics; its presence marks a finished evaluation) in ``workdir`` (local or ``gs://``).
    With several processes only the first one writes (call it from every one)."""
    if not multihost.is_writer():
        return
    workdir = run_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary = results["metrics"]
    write_text(workdir / f"{name}_predictions.jsonl",
               "".join(json.dumps(prediction) + "\n" for prediction in results["predictions"]))
    rows = "\n".join(f"| {key} | {value:.4f} |" if isinstance(value, float) else
                     f"| {key} | {value} |" for key, value in summary.items())
    write_text(workdir / f"{name}.md", f"| metric | value |\n|---|---|\n{rows}\n")
    write_text(workdir / f"{name}.json", json.dumps(summary, indent=2) + "\n")
