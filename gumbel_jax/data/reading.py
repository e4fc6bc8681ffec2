"""Reading a dataset file into validated ``Record``s, streaming, with a problem report."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from gumbel_jax.data.formats import CONVERTERS, check_ranking_labels
from gumbel_jax.data.jsonstream import BadElement, iter_json_records
from gumbel_jax.data.records import Record
from gumbel_jax.data.validation import DataError, Problem, RecordError, ValidationReport

DEFAULT_MAX_PASSAGE_CHARS = 20_000


def read_records(path: str | os.PathLike, dataset: str, *,
                 report: ValidationReport | None = None,
                 max_passage_chars: int = DEFAULT_MAX_PASSAGE_CHARS,
                 require_ranking_labels: bool = False) -> Iterator[Record]:
    """Stream the records of one official file, converted to our schema.

    Bad records are reported (file, line or record, field, reason) and skipped; too many stop
    the run with a ``DataError``. Over-long passages are truncated and duplicate ids made
    unique (``id#2``), both kept with a warning. Valid records are never dropped.
    ``require_ranking_labels`` (datasets prepared for training and evaluation) also makes a
    record on which the dataset's ranking metric cannot be computed a bad record
    (``formats.check_ranking_labels``); unlabelled files to rerank leave it off.
    """
    if dataset not in CONVERTERS:
        raise DataError(f"unknown dataset format {dataset!r}; known: {sorted(CONVERTERS)}")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    report = report if report is not None else ValidationReport()
    convert = CONVERTERS[dataset]
    seen: dict[str, int] = {}
    for index, (line, obj) in enumerate(iter_json_records(path)):
        location = f"record {index + 1} (line {line})"
        if isinstance(obj, BadElement):
            report.add(Problem(str(path), location, "record", obj.reason))
            continue
        try:
            record = convert(obj, index) if convert.__name__ == "from_fid" else convert(obj)
            if require_ranking_labels:
                check_ranking_labels(record, dataset)
        except RecordError as error:
            report.add(Problem(str(path), location, error.field, error.reason))
            continue
        record = _truncate_passages(record, max_passage_chars, report, str(path), location)
        record = _unique_id(record, seen, report, str(path), location)
        report.records += 1
        yield record


def _truncate_passages(record, limit, report, path, location) -> Record:
    if all(len(p.text) <= limit for p in record.ctxs):
        return record
    ctxs = []
    for i, passage in enumerate(record.ctxs):
        if len(passage.text) > limit:
            report.add(Problem(path, location, f"ctxs[{i}].text",
                               f"over-long text: {len(passage.text)} characters, truncated "
                               f"to {limit}", fatal_to_record=False))
            passage = dataclasses.replace(passage, text=passage.text[:limit])
        ctxs.append(passage)
    return dataclasses.replace(record, ctxs=tuple(ctxs))


def _unique_id(record, seen, report, path, location) -> Record:
    count = seen.get(record.id, 0) + 1
    seen[record.id] = count
    if count == 1:
        return record
    new_id = f"{record.id}#{count}"
    report.add(Problem(path, location, "id", f"duplicate id {record.id!r}: renamed to "
                       f"{new_id!r}", fatal_to_record=False))
    return dataclasses.replace(record, id=new_id)
