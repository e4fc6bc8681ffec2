"""Reporting bad input: every problem names the file, the line or record, the field and the
reason; counts per reason; a limit beyond which the run stops with one clear error."""

from __future__ import annotations

import collections
import dataclasses


class DataError(ValueError):
    """A data problem that stops the run; its message is meant for the user as is."""


class RecordError(ValueError):
    """One record is malformed; the reader reports it and continues."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclasses.dataclass(frozen=True)
class Problem:
    file: str
    location: str  # "line 12" or "record 3 (line 40)"
    field: str
    reason: str
    fatal_to_record: bool = True  # False: a warning, the record was kept (e.g. truncated)

    def __str__(self) -> str:
        kind = "skipped" if self.fatal_to_record else "kept"
        return f"{self.file}, {self.location}: {self.field}: {self.reason} ({kind})"


class ValidationReport:
    """Collects problems while records stream by.

    Args:
      max_bad_records: how many records may be skipped before the run stops with a
        ``DataError`` (warnings about kept records never stop it).
      keep: how many problems to keep verbatim for the summary (all are counted).
    """

    def __init__(self, max_bad_records: int = 100, keep: int = 50):
        self.max_bad_records = max_bad_records
        self.keep = keep
        self.problems: list[Problem] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.skipped = 0
        self.warnings = 0
        self.records = 0

    def add(self, problem: Problem) -> None:
        self.counts[problem.reason.split(":")[0]] += 1
        if len(self.problems) < self.keep:
            self.problems.append(problem)
        if not problem.fatal_to_record:
            self.warnings += 1
            return
        self.skipped += 1
        if self.skipped > self.max_bad_records:
            raise DataError(f"too many bad records: {self.skipped} skipped, more than the "
                            f"limit of {self.max_bad_records}.\n{self.summary()}")

    def summary(self) -> str:
        lines = [f"{self.records} records read, {self.skipped} skipped, "
                 f"{self.warnings} kept with warnings"]
        lines += [f"  {count} x {reason}" for reason, count in self.counts.most_common()]
        lines += [f"  {problem}" for problem in self.problems]
        if sum(self.counts.values()) > len(self.problems):
            lines.append(f"  ... ({sum(self.counts.values()) - len(self.problems)} more)")
        return "\n".join(lines)
