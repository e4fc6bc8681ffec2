"""The one record schema every dataset is converted into (FiD JSON lines): a question, its
answer aliases and its candidate passages, with gold (supporting) flags where known."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from gumbel_jax.metrics import contains_answer, normalize_answer

YES_NO = {"yes", "no"}


@dataclasses.dataclass(frozen=True)
class Passage:
    title: str
    text: str
    is_gold: bool | None = None  # supporting passage; None when the dataset does not say
    has_answer: bool | None = None  # contains an answer alias (computed when absent)


@dataclasses.dataclass(frozen=True)
class Record:
    """One question with its candidate pool.

    ``indirect`` passages are gold passages that contain no answer alias after SQuAD
    normalisation: the bridge passages of multi-hop questions. For yes/no answers the notion
    does not apply (the answer is not a span) and no passage is indirect.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    ctxs: tuple[Passage, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def gold(self) -> list[bool]:
        return [bool(p.is_gold) for p in self.ctxs]

    @property
    def has_gold_labels(self) -> bool:
        """Whether the source marks gold passages at all (FiD's NQ / TriviaQA do not): only
        then are the gold ranking metrics defined."""
        return any(p.is_gold is not None for p in self.ctxs)

    @property
    def answer_passages(self) -> list[bool]:
        """Passages containing an answer alias (what answer recall counts)."""
        return [bool(p.has_answer) for p in self.ctxs]

    @property
    def indirect(self) -> list[bool]:
        if {normalize_answer(a) for a in self.answers} & YES_NO:
            return [False] * len(self.ctxs)
        return [bool(p.is_gold) and not p.has_answer for p in self.ctxs]

    def to_json(self) -> dict:
        ctxs = [{k: v for k, v in dataclasses.asdict(p).items() if v is not None}
                for p in self.ctxs]
        out = {"id": self.id, "question": self.question, "answers": list(self.answers),
               "target": self.answers[0] if self.answers else "", "ctxs": ctxs}
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes | str) -> Record:
        raw = json.loads(data)
        ctxs = tuple(Passage(**c) for c in raw["ctxs"])
        return cls(raw["id"], raw["question"], tuple(raw["answers"]), ctxs,
                   raw.get("metadata", {}))


def with_answer_flags(passages: list[Passage], answers) -> tuple[Passage, ...]:
    """Fill ``has_answer`` where the source did not provide it."""
    return tuple(p if p.has_answer is not None else
                 dataclasses.replace(p, has_answer=contains_answer(p.text, answers))
                 for p in passages)
