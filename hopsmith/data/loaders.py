"""Load MuSiQue, HotpotQA, 2WikiMultiHopQA and Bamboogle rows, in their original formats, into `Question` records.

    from hopsmith.data import load_questions, hop_question
    qs = load_questions("musique", split="eval", limit=20)    # a bundled sample
    qs = load_questions("path/to/hotpot_dev_distractor_v1.json")  # an official release file
    qs = load_questions("Bamboogle Prerelease - Sheet1.csv")     # Bamboogle as its authors published it
    hop_question(qs[0], 1)  # hop 2 as plain text, hop 1's answer filled in

The format of a file is detected from the keys of its rows, so the official releases (MuSiQue `.jsonl`,
HotpotQA and 2Wiki `.json` lists, Bamboogle's CSV of Question/Answer columns) and their JSON/JSONL forms
load the same way, as do files of `Question.to_dict()` rows written by hopsmith itself. MuSiQue rows marked
unanswerable (MuSiQue-Full) are left out, as the official script leaves them out of answer EM/F1. Every
problem with the input raises `DataError` naming the file and the line (JSONL, CSV) or row (JSON list) at fault.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from hopsmith.data.split import mark_sides
from hopsmith.io import json_object
from hopsmith.records import Hop, Paragraph, Question

BUNDLED_DIR = Path(__file__).parent / "bundled"
BUNDLED = {
    "musique": BUNDLED_DIR / "musique_ans_dev_sample.jsonl",
    "hotpotqa": BUNDLED_DIR / "hotpot_dev_distractor_sample.jsonl",
    "2wiki": BUNDLED_DIR / "2wiki_dev_sample.jsonl",
}
SPLITS = ("train", "eval")
# The train side divided: `dev` (about a quarter of its components, for choosing among adapters) and `fit`
# (the rest, to train on). See `hopsmith.data.split`.
HOLDOUT_SPLITS = ("dev", "fit")

# "comparison" is a type of both HotpotQA and 2Wiki, so only these mark a row without evidences as 2Wiki.
_TWOWIKI_ONLY_TYPES = {"bridge_comparison", "compositional", "inference"}


class DataError(ValueError):
    """Input data that cannot be loaded: missing file, unknown name or format, malformed row, empty set."""


def load_questions(source: str | Path, *, limit: int | None = None, split: str | None = None) -> list[Question]:
    """Questions from a bundled set (`"musique"`, `"hotpotqa"`, `"2wiki"`) or a file path.

    Every question carries its side in `meta["split"]` (see `hopsmith.data.split`: questions sharing a
    single-hop id, an answer, a question text or a supporting paragraph stay on one side; the bundled sets
    are split together). `split` keeps only the `"train"` or `"eval"` questions, or the train side's `"dev"`
    (`meta["dev"]`) or `"fit"` part; `limit` then keeps the first `limit` of them in file order. Raises
    `DataError` when nothing is left.
    """
    if split is not None and split not in SPLITS + HOLDOUT_SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS + HOLDOUT_SPLITS)}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    path = _resolve(source)
    if path.resolve() in _BUNDLED_PATHS:
        questions = list(_bundled_questions()[path.resolve()])
    else:
        questions = _load_file(path)
        mark_sides(questions)
    if split in SPLITS:
        questions = [q for q in questions if q.meta["split"] == split]
    elif split is not None:  # dev or fit: the train side, held out or not
        questions = [q for q in questions if q.meta["split"] == "train" and q.meta.get("dev", False) == (split == "dev")]
    if limit is not None:
        questions = questions[:limit]
    if not questions:
        why = f"limit={limit}" if limit == 0 else f"split {split!r}"
        raise DataError(f"{path}: {why} leaves no questions")
    return [_copy(q) for q in questions]


_BUNDLED_PATHS = frozenset(p.resolve() for p in BUNDLED.values())


@functools.lru_cache(maxsize=1)
def _bundled_questions() -> dict[Path, tuple[Question, ...]]:
    """Every bundled set, split as one graph (a train question of one set shares nothing with an eval
    question of another); loaded once per process."""
    by_path = {p.resolve(): _load_file(p) for p in BUNDLED.values()}
    mark_sides([q for qs in by_path.values() for q in qs])
    return {p: tuple(qs) for p, qs in by_path.items()}


def _copy(q: Question) -> Question:
    # Records are frozen but `meta` is a dict: a caller that edits it must not edit the cached copy.
    return Question(**{**q.__dict__, "meta": dict(q.meta)})


def _load_file(path: Path) -> list[Question]:
    rows = list(_read_rows(path))
    if not rows:
        raise DataError(f"{path} has no rows")
    convert = _detect(path, rows)
    questions, seen = [], {}
    for i, (where, row) in enumerate(rows):
        if convert is _from_bamboogle:
            row = {**row, "_row": i}
        question = _convert_row(convert, where, row)
        if question.dataset == "musique" and question.meta.get("answerable") is False:
            continue
        if question.id in seen:
            raise DataError(f"{where}: duplicate question id {question.id!r} (first at {seen[question.id]})")
        seen[question.id] = where
        questions.append(question)
    if not questions:
        raise DataError(f"{path}: every row is marked unanswerable; hopsmith scores answerable questions only")
    return questions


def _resolve(source: str | Path) -> Path:
    if isinstance(source, str) and source in BUNDLED:
        return BUNDLED[source]
    path = Path(source)
    if path.is_file():
        return path
    if isinstance(source, str) and not path.suffix and len(path.parts) == 1:
        raise DataError(f"unknown bundled set {source!r}; valid names: {', '.join(BUNDLED)} (or a file path)")
    raise DataError(f"no such file: {path}")


def _read_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield (where, row): `where` is "FILE:LINE" for JSON Lines, "FILE: row N (0-based)" for a JSON list.

    A file whose text starts with `[` is read as one JSON list whatever its suffix, a `.csv` file as CSV
    with a header row ("FILE:LINE"), anything else as JSONL.
    """
    csv_file = path.suffix.lower() == ".csv"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        text = None
        if csv_file:  # a spreadsheet export (Bamboogle's circulates so) may be in the Windows code page
            try:
                text = path.read_text(encoding="cp1252")
            except UnicodeDecodeError:
                pass
        if text is None:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if csv_file:
        yield from _read_csv(path, text)
        return
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        for i, row in enumerate(rows):
            where = f"{path}: row {i} (0-based)"
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, row
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json_object(line)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from None
        yield f"{path}:{lineno}", row


def _read_csv(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        for row in reader:
            # Bamboogle's sheet has unnamed empty columns; a short row leaves None values behind.
            row = {k.strip(): (v or "") for k, v in row.items() if k and k.strip()}
            if any(v.strip() for v in row.values()):
                yield f"{path}:{reader.line_num}", row
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: invalid CSV ({e})") from None


def _detect(path: Path, rows: list[tuple[str, dict]]) -> Callable[[dict], Question]:
    first = rows[0][1]
    paragraphs = first.get("paragraphs")
    if "dataset" in first and isinstance(paragraphs, list) and all(
        isinstance(p, dict) and "supporting" in p for p in paragraphs
    ):
        return Question.from_dict
    if "paragraphs" in first and "question_decomposition" in first:
        return _from_musique
    if {"_id", "context", "supporting_facts"} <= first.keys():
        # Decided over all rows: a 2Wiki file need not start with a row that carries its marks.
        if any("evidences" in r or r.get("type") in _TWOWIKI_ONLY_TYPES for _, r in rows):
            return _from_2wiki
        return _from_hotpotqa
    if {"Question", "Answer"} <= first.keys() or {"question", "golden_answers"} <= first.keys():
        return _from_bamboogle
    raise DataError(
        f"{path}: unrecognised format; first row has keys {sorted(first)}. Expected MuSiQue "
        "(paragraphs, question_decomposition), HotpotQA (_id, context, supporting_facts), "
        "2WikiMultiHopQA (_id, context, supporting_facts, evidences), Bamboogle (Question, Answer) "
        "or hopsmith (dataset, paragraphs)"
    )


def _convert_row(convert: Callable[[dict], Question], where: str, row: dict) -> Question:
    try:
        return convert(row)
    except KeyError as e:
        raise DataError(f"{where}: missing required key {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise DataError(f"{where}: malformed row ({e})") from None


def _answers(first: str, aliases: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for a in (first, *aliases):
        a = str(a).strip()
        if a:
            seen.setdefault(a, None)
    if not seen:
        raise ValueError("no non-empty answer")
    return tuple(seen)


def _from_musique(row: dict) -> Question:
    qid = row["id"]
    paragraphs = []
    pid_of_idx: dict[int, str] = {}
    for i, p in enumerate(row["paragraphs"]):
        idx = p.get("idx", i)
        pid = f"{qid}::{idx}"
        pid_of_idx[idx] = pid
        paragraphs.append(
            Paragraph(pid, p["title"].strip(), _squash(p["paragraph_text"]), bool(p.get("is_supporting", False)))
        )
    hops = tuple(
        Hop(h["question"], str(h["answer"]), pid_of_idx.get(h.get("paragraph_support_idx")))
        for h in row["question_decomposition"]
    )
    return Question(
        id=qid,
        dataset="musique",
        question=row["question"],
        answers=_answers(row["answer"], row.get("answer_aliases") or ()),
        hops=len(hops),
        paragraphs=tuple(paragraphs),
        decomposition=hops,
        type=qid.split("__")[0] if "__" in qid else None,
        meta={"answerable": bool(row.get("answerable", True))},
    )


def _from_bamboogle(row: dict) -> Question:
    """A Bamboogle row: the authors' sheet (Question, Answer, optional "Answer 2" alias) as CSV or JSON, or
    the {id, question, golden_answers} JSONL some toolkits re-publish. Bamboogle has no paragraphs of its
    own, so it is searched over a corpus (`hopsmith eval --corpus FILE`). Ids are `bamboogle_<row>` (0-based)."""
    if "golden_answers" in row:
        question, answers = row["question"], list(row["golden_answers"])
        qid = str(row.get("id") or f"bamboogle_{row['_row']}")
    else:
        question, answers = row["Question"], [row["Answer"], row.get("Answer 2") or ""]
        qid = f"bamboogle_{row['_row']}"
    question = _squash(str(question))
    if not question:
        raise ValueError("empty question")
    if not answers:
        raise ValueError("no answer")
    return Question(id=qid, dataset="bamboogle", question=question, answers=_answers(answers[0], answers[1:]),
                    hops=2, paragraphs=(), meta={"answerable": True})


def _context_paragraphs(row: dict, sep: str) -> tuple[Paragraph, ...]:
    """HotpotQA/2Wiki `context` pairs as paragraphs; `sep` joins sentences (HotpotQA keeps its own spaces)."""
    supporting = {title for title, _ in row["supporting_facts"]}
    return tuple(
        Paragraph(f"{row['_id']}::{i}", title.strip(), _squash(sep.join(sentences)), title in supporting)
        for i, (title, sentences) in enumerate(row["context"])
    )


def _from_hotpotqa(row: dict) -> Question:
    return Question(
        id=row["_id"],
        dataset="hotpotqa",
        question=row["question"],
        answers=_answers(row["answer"]),
        hops=2,
        paragraphs=_context_paragraphs(row, sep=""),
        type=row.get("type"),
        meta={"level": row["level"]} if "level" in row else {},
    )


def _from_2wiki(row: dict) -> Question:
    paragraphs = _context_paragraphs(row, sep=" ")
    evidences = row.get("evidences") or []
    hops = tuple(
        Hop(f"{subj} >> {relation}", str(obj), _paragraph_for_subject(subj, paragraphs))
        for subj, relation, obj in evidences
    )
    return Question(
        id=row["_id"],
        dataset="2wiki",
        question=row["question"],
        answers=_answers(row["answer"]),
        hops=max(2, len(hops)),
        paragraphs=paragraphs,
        decomposition=hops,
        type=row.get("type"),
    )


def _paragraph_for_subject(subject: str, paragraphs: tuple[Paragraph, ...]) -> str | None:
    """The paragraph an evidence triple comes from: the one titled by its subject.

    2Wiki subjects often differ from the page title ("The Zone" vs "The Zone (2017 film)", "Thomas Stanley"
    vs "Thomas Stanley, 1st Earl of Derby"), so after an exact title match we compare titles without their
    parenthesis or comma suffix, and then the supporting paragraph sharing most words with the subject;
    ties leave the hop without a paragraph rather than guess.
    """
    for p in paragraphs:
        if p.title == subject:
            return p.id
    key = subject.casefold()
    supporting = [p for p in paragraphs if p.supporting]
    for candidates in (
        [p for p in supporting if p.title.casefold() == key],
        [p for p in supporting if re.sub(r"\s*[(,].*$", "", p.title).casefold() == key],
    ):
        if len(candidates) == 1:
            return candidates[0].id
    words = set(re.findall(r"\w+", key))
    overlaps = sorted(
        ((len(words & set(re.findall(r"\w+", p.title.casefold()))), p.id) for p in supporting), reverse=True
    )
    if overlaps and overlaps[0][0] > 0 and (len(overlaps) == 1 or overlaps[1][0] < overlaps[0][0]):
        return overlaps[0][1]
    return None


def _squash(text: str) -> str:
    return " ".join(text.split())


# A few frequent Wikidata relations read better as their own question; the rest use the generic form.
_RELATION_QUESTIONS = {
    "place of birth": "Where was {} born?",
    "place of death": "Where did {} die?",
    "date of birth": "When was {} born?",
    "date of death": "When did {} die?",
    "director": "Who directed {}?",
    "author": "Who wrote {}?",
    "located in the administrative territorial entity": "In which administrative territorial entity is {} located?",
    "shares border with": "What does {} share a border with?",
    "capital of": "What is {} the capital of?",
    "educated at": "Where was {} educated?",
}
# "X >> owned by" reads as "What is X owned by?", not "What is the owned by of X?".
_TRAILING_PREPOSITIONS = {"of", "by", "with", "after", "at", "in", "on", "from", "to", "for"}


def hop_question(question: Question, i: int) -> str:
    """Hop `i` (0-based index into `question.decomposition`) as a plain-text question.

    `#k` becomes the answer of hop k (1-based, as the datasets write it) and `"subject >> relation"`
    becomes a question about the subject; sub-questions already in plain text only get `#k` filled in.
    """
    hops = question.decomposition
    if not 0 <= i < len(hops):
        raise IndexError(f"question {question.id} has {len(hops)} hops; no hop {i}")

    def answer_of(m: re.Match) -> str:
        k = int(m.group(1))
        return hops[k - 1].answer if 1 <= k <= len(hops) else m.group(0)

    text = re.sub(r"#(\d+)", answer_of, hops[i].question)
    if " >> " in text:
        subject, relation = (s.strip() for s in text.split(" >> ", 1))
        template = _RELATION_QUESTIONS.get(relation.casefold())
        if template is None:
            trailing = relation.rsplit(" ", 1)[-1].casefold()
            if trailing in _TRAILING_PREPOSITIONS:
                template = f"What is {{}} {relation}?"
            else:
                template = f"What is the {relation} of {{}}?"
        text = template.format(subject)
    # Substituted answers leave "Avicenna 's" and "Paris ?" behind.
    text = re.sub(r"\s+('s\b|[?.,])", r"\1", _squash(text))
    return text
