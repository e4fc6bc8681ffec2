"""Converters from the official dataset releases to ``Record``s, keeping each dataset's own
candidate pool. Each converter raises ``RecordError(field, reason)`` on malformed input."""

from __future__ import annotations

from collections.abc import Callable

from gumbel_jax.data.records import Passage, Record, with_answer_flags
from gumbel_jax.data.validation import RecordError


def _require(obj: dict, field: str, kind: type | tuple, *, allow_empty=False):
    if not isinstance(obj, dict):
        raise RecordError("record", f"expected a JSON object, got {type(obj).__name__}")
    if field not in obj or obj[field] is None:
        raise RecordError(field, "missing")
    value = obj[field]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RecordError(field, f"wrong type: expected {names}, got {type(value).__name__}")
    is_empty = isinstance(value, str | list) and not (value.strip() if isinstance(value, str)
                                                       else value)
    if is_empty and not allow_empty:
        raise RecordError(field, "empty")
    return value


def _string_list(values, field: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in values):
        raise RecordError(field, "wrong type: expected a list of strings")
    cleaned = tuple(v.strip() for v in values if v.strip())
    if not cleaned:
        raise RecordError(field, "empty: no non-blank answer")
    return cleaned


def _sentences(value, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return "".join(value)  # the official sentences keep their leading spaces
    raise RecordError(field, "wrong type: expected a list of sentences")


def _title_sentence_pairs(context, field: str) -> list[tuple[str, str]]:
    if not isinstance(context, list) or not context:
        raise RecordError(field, "empty" if isinstance(context, list) else "wrong type")
    pairs = []
    for i, item in enumerate(context):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise RecordError(f"{field}[{i}]", "expected [title, sentences]")
        pairs.append((item[0], _sentences(item[1], f"{field}[{i}]")))
    return pairs


def _supporting_titles(obj, field="supporting_facts") -> set[str]:
    facts = obj.get(field)
    if facts is None:
        return set()
    if not isinstance(facts, list) or not all(isinstance(f, list) and f for f in facts):
        raise RecordError(field, "expected a list of [title, sentence_id]")
    return {f[0] for f in facts}


def from_hotpotqa(obj) -> Record:
    """HotpotQA (distractor setting): ``_id, question, answer, context [[title, sentences]],
    supporting_facts [[title, sentence_id]]``. Gold = a title among the supporting facts."""
    qid = _require(obj, "_id", str)
    question = _require(obj, "question", str)
    answers = _string_list([_require(obj, "answer", str)], "answer")
    support = _supporting_titles(obj)
    passages = [Passage(title, text, is_gold=title in support if support else None)
                for title, text in _title_sentence_pairs(_require(obj, "context", list),
                                                         "context")]
    metadata = {k: obj[k] for k in ("type", "level") if k in obj}
    return Record(qid, question, answers, with_answer_flags(passages, answers), metadata)


def from_two_wiki(obj) -> Record:
    """2WikiMultiHopQA: HotpotQA's layout plus ``evidences`` [[subject, relation, object]]
    (kept as metadata)."""
    record = from_hotpotqa(obj)
    metadata = dict(record.metadata)
    if isinstance(obj.get("evidences"), list):
        metadata["evidences"] = obj["evidences"]
    return Record(record.id, record.question, record.answers, record.ctxs, metadata)


def from_musique(obj) -> Record:
    """MuSiQue (answerable): ``id, question, answer, answer_aliases, paragraphs [{idx,
    title, paragraph_text, is_supporting}]``; decomposition kept as metadata."""
    qid = _require(obj, "id", str)
    question = _require(obj, "question", str)
    aliases = obj.get("answer_aliases") or []
    if not isinstance(aliases, list):
        raise RecordError("answer_aliases", "wrong type: expected a list of strings")
    answers = _string_list([_require(obj, "answer", str), *aliases], "answer")
    passages = []
    for i, paragraph in enumerate(_require(obj, "paragraphs", list)):
        if not isinstance(paragraph, dict):
            raise RecordError(f"paragraphs[{i}]", "expected an object")
        title = _require(paragraph, "title", str, allow_empty=True)
        text = _require(paragraph, "paragraph_text", str)
        supporting = paragraph.get("is_supporting")
        passages.append(Passage(title, text, is_gold=bool(supporting)
                                if supporting is not None else None))
    metadata = {k: obj[k] for k in ("question_decomposition", "answerable") if k in obj}
    return Record(qid, question, answers, with_answer_flags(passages, answers), metadata)


def from_fid(obj, index: int = 0) -> Record:
    """FiD's NQ / TriviaQA files (and our own records): ``id?, question, answers, target?,
    ctxs [{title, text, has_answer?, is_gold?}]``."""
    qid = obj.get("id", index) if isinstance(obj, dict) else index
    question = _require(obj, "question", str)
    raw_answers = obj.get("answers")
    if raw_answers is None and isinstance(obj.get("target"), str):
        raw_answers = [obj["target"]]
    if raw_answers is None:
        raise RecordError("answers", "missing")
    if not isinstance(raw_answers, list):
        raise RecordError("answers", f"wrong type: expected list, got "
                                     f"{type(raw_answers).__name__}")
    answers = _string_list(raw_answers, "answers")
    passages = []
    for i, ctx in enumerate(_require(obj, "ctxs", list)):
        if not isinstance(ctx, dict):
            raise RecordError(f"ctxs[{i}]", "expected an object")
        title = ctx.get("title", "")
        text = _require(ctx, "text", str)
        if not isinstance(title, str):
            raise RecordError(f"ctxs[{i}].title", "wrong type: expected str")
        flags = {k: bool(ctx[k]) for k in ("is_gold", "has_answer") if ctx.get(k) is not None}
        passages.append(Passage(title, text, **flags))
    metadata = obj.get("metadata", {}) if isinstance(obj.get("metadata"), dict) else {}
    return Record(str(qid), question, answers, with_answer_flags(passages, answers), metadata)


CONVERTERS: dict[str, Callable] = {
    "hotpotqa": from_hotpotqa,
    "2wiki": from_two_wiki,
    "musique": from_musique,
    "fid": from_fid,  # NQ, TriviaQA, and our own record files
    "nq": from_fid,
    "triviaqa": from_fid,
}


# What the ranking metrics count as relevant on each dataset (docs/reproduce.md, "Metrics"):
# "gold": the supporting passages the release marks (Recall@k = the fraction of them in the
# top k); "answer": passages containing an answer alias, because FiD's NQ / TriviaQA files
# mark no gold passages (answer recall = top-k accuracy, as DPR and FiD report it).
RANKING_LABELS: dict[str, str] = {"hotpotqa": "gold", "musique": "gold", "2wiki": "gold",
                                  "nq": "answer", "triviaqa": "answer"}
# Where each format keeps its gold flags, to name the field in an error.
_GOLD_FIELDS = {"hotpotqa": "supporting_facts", "2wiki": "supporting_facts",
                "musique": "paragraphs[].is_supporting"}


def check_ranking_labels(record: Record, dataset: str) -> None:
    """Raise ``RecordError`` when ``dataset``'s ranking metric cannot be computed for
    ``record`` (a gold dataset's record without any gold passage), so that preparing an
    evaluation set fails on the record instead of reporting a NaN metric later.

    Answer recall needs only the answers, which every converter requires.
    """
    if RANKING_LABELS.get(dataset) != "gold":
        return
    field = _GOLD_FIELDS[dataset]
    if not record.has_gold_labels:
        raise RecordError(field, "missing: no gold passages, so Recall@k, NDCG@k and MRR on "
                                 f"gold passages ({dataset}'s ranking metrics) cannot be "
                                 "computed for this record")
    if not any(record.gold):
        raise RecordError(field, "no gold passage among the candidates (no supporting title "
                                 "or paragraph matches one): Recall@k, NDCG@k and MRR on gold "
                                 "passages cannot be computed for this record")
