"""The records every stage passes around: questions, paragraphs and hops.

A `Question` is the one shape that MuSiQue, HotpotQA and 2WikiMultiHopQA rows are loaded into
(see `hopsmith.data`). Records are frozen dataclasses so a pool or an index can hold them safely;
`to_dict`/`from_dict` give the JSON form written into run directories.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Paragraph:
    """One retrievable passage. `id` is unique across a pool: `<question id>::<index in its row>`."""

    id: str
    title: str
    text: str
    supporting: bool = False


@dataclass(frozen=True)
class Hop:
    """One step of a gold decomposition.

    `question` is the sub-question as the dataset writes it (MuSiQue: "X >> relation" or "#1 >> capital";
    2Wiki: built from an evidence triple); `hopsmith.data.hop_question` turns it into plain text with
    earlier answers substituted. `paragraph_id` names the supporting paragraph when the set says which.
    """

    question: str
    answer: str
    paragraph_id: str | None = None


@dataclass(frozen=True)
class Question:
    """A multi-hop question with its own paragraphs.

    `answers[0]` is the gold answer, the rest are aliases. `hops` is the number of reasoning steps
    (MuSiQue: from the decomposition; HotpotQA: 2; 2Wiki: number of evidence triples, at least 2).
    """

    id: str
    dataset: str
    question: str
    answers: tuple[str, ...]
    hops: int
    paragraphs: tuple[Paragraph, ...]
    decomposition: tuple[Hop, ...] = ()
    type: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def answer(self) -> str:
        return self.answers[0]

    @property
    def supporting_ids(self) -> list[str]:
        return [p.id for p in self.paragraphs if p.supporting]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Question":
        return cls(
            id=d["id"],
            dataset=d["dataset"],
            question=d["question"],
            answers=tuple(d["answers"]),
            hops=int(d["hops"]),
            paragraphs=tuple(Paragraph(**p) for p in d["paragraphs"]),
            decomposition=tuple(Hop(**h) for h in d.get("decomposition", ())),
            type=d.get("type"),
            meta=dict(d.get("meta") or {}),
        )
