"""Train/eval splits that cannot leak: questions that share a fact stay on one side.

Hashing each question id on its own (what hopsmith did first) lets related questions land on both sides.
MuSiQue builds every question from single-hop questions and its ids list them (`2hop__92051_827343` is
made of single-hop questions 92051 and 827343), so two questions built on the same final hop share that
hop's answer; on the bundled sample 24 of 74 eval questions shared their gold answer with a train question.

Here the questions of a set form a graph, and two questions are linked when they share
- a single-hop id (any id of MuSiQue's form `<k>hop<j>__<id>_<id>...`, bundled or a user's file),
- an answer: a gold answer or alias, or the answer of one of its hops (MuSiQue's and 2Wiki's
  decompositions: training traces state hop answers too, so a train question whose middle hop answers
  "1952" exposes the gold answer of an eval question answering "1952"), normalised as EM normalises
  it, except yes/no/noanswer (half of HotpotQA's comparison questions answer "yes" or "no": sharing
  that is no leak, and linking them would glue a hundred questions together),
- the normalised question text, or
- a paragraph (normalised title and text) that supports at least one question of the set: a supporting
  paragraph in one question's context that is a distractor in another's would otherwise show the
  second question's training traces the first one's evidence.
Each connected component goes to one side, chosen by `split_of` of the component's smallest question id:
so a question linked to nothing keeps the side its id alone gives, the split is the same on every
machine and in every file order, and about half of the components land on each side. A question's side
depends on the whole file (its component), not on its id alone; a file with more rows can move the
questions whose component grew.

The three bundled sets are split together, as one graph: the ladder trains on the train side of all
three and evaluates on the eval side of one, so no bundled train question may share an answer with any
bundled eval question. Pools keep the sides apart too (see `hopsmith.data.pools`).

A dev split for choosing among adapters is carved from the train side the same way: a train component
whose smallest id `dev_of` picks (about a quarter of them) has `meta["dev"] = True`; `split="dev"` loads those
questions and `split="fit"` the rest of the train side. A ladder that trains on `fit` and decides on `dev`
never reads an eval question to choose its adapter, and no dev question shares a fact with a fit one.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from hopsmith.chat import normalize_answer
from hopsmith.records import Paragraph, Question

_MUSIQUE_ID = re.compile(r"^\d+hop\d*__(\d+(?:_\d+)*)$")
_YES_NO = frozenset({"yes", "no", "noanswer"})


def split_of(question_id: str) -> str:
    """`"eval"` when the SHA-256 of the id is even, else `"train"`: the side of a component whose
    smallest id this is (and of a question that shares nothing with another)."""
    digest = hashlib.sha256(question_id.encode("utf-8")).digest()
    return "eval" if digest[-1] % 2 == 0 else "train"


def dev_of(question_id: str) -> bool:
    """Whether the train component whose smallest id this is goes to the dev split: a second hash of the id
    (salted, so it is independent of `split_of`) picks about one component in four."""
    return hashlib.sha256(b"dev:" + question_id.encode("utf-8")).digest()[-1] % 4 == 0


def single_hop_ids(question_id: str) -> tuple[str, ...]:
    """The single-hop question ids a MuSiQue-style id is composed of; () for any other id."""
    m = _MUSIQUE_ID.match(question_id)
    return tuple(m.group(1).split("_")) if m else ()


def answer_keys(answers: Iterable[str]) -> set[str]:
    """Normalised gold answers and aliases that count as shared facts (yes/no/noanswer and "" do not)."""
    return {a for a in (normalize_answer(x) for x in answers) if a and a not in _YES_NO}


def all_answer_keys(q: Question) -> set[str]:
    """`answer_keys` of a question's gold answers and its hops' answers."""
    return answer_keys((*q.answers, *(h.answer for h in q.decomposition)))


def question_key(text: str) -> str:
    return normalize_answer(text)


def paragraph_key(p: Paragraph) -> tuple[str, str]:
    """A paragraph's normalised title and text: two copies of a passage in two rows are one paragraph."""
    return " ".join(p.title.casefold().split()), " ".join(p.text.casefold().split())


def _links(q: Question, supporting: set[tuple[str, str]]) -> set[tuple]:
    keys: set[tuple] = {("hop", h) for h in single_hop_ids(q.id)}
    keys |= {("answer", a) for a in all_answer_keys(q)}
    keys.add(("question", question_key(q.question)))
    keys |= {("paragraph", k) for k in map(paragraph_key, q.paragraphs) if k in supporting}
    return keys


def components(questions: Sequence[Question]) -> list[list[Question]]:
    """The connected components of the sharing graph (see the module docstring), in first-seen order."""
    supporting = {paragraph_key(p) for q in questions for p in q.paragraphs if p.supporting}
    parent = list(range(len(questions)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple, int] = {}
    for i, q in enumerate(questions):
        for key in _links(q, supporting):
            j = owner.setdefault(key, i)
            if j != i:
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[Question]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(root(i), []).append(q)
    return list(groups.values())


def assign_splits(questions: Sequence[Question]) -> dict[str, str]:
    """Question id -> "train" | "eval", one side per connected component."""
    return {i: "eval" if s == "eval" else "train" for i, s in assign_sides(questions).items()}


def assign_sides(questions: Sequence[Question]) -> dict[str, str]:
    """Question id -> "eval" | "fit" | "dev": the split's side per connected component, the train side
    divided into fit and dev (`dev_of`)."""
    sides: dict[str, str] = {}
    for group in components(questions):
        smallest = min(q.id for q in group)
        side = split_of(smallest)
        if side == "train":
            side = "dev" if dev_of(smallest) else "fit"
        for q in group:
            sides[q.id] = side
    return sides


def mark_sides(questions: Sequence[Question]) -> None:
    """Set `meta["split"]` ("train" | "eval") on every question, and `meta["dev"] = True` on the train
    questions held out for choosing adapters, from one pass over the sharing graph."""
    sides = assign_sides(questions)
    for q in questions:
        q.meta["split"] = "eval" if sides[q.id] == "eval" else "train"
        if sides[q.id] == "dev":
            q.meta["dev"] = True
