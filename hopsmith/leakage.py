"""The leakage guard: an eval question must share nothing with what the evaluated adapter was trained on.

    hopsmith check-leakage                       the bundled sets: train vs eval side, and their pools
    hopsmith check-leakage --data musique        one set (a bundled name or a file in an original format)
    hopsmith check-leakage --data musique --adapter runs/ladder/sft   also what that adapter trained on

Sharing the question id is not the only leak. An eval question leaks when a trained question has
- the same id,
- a single-hop id in common (MuSiQue-style ids, `2hop__92051_827343`: the two questions are built on the
  same single-hop fact, usually the answer-bearing last hop),
- a gold answer that was an answer in training (normalised as EM normalises it; yes/no/noanswer do not
  count; a trained question's hop answers count where they are known), or
- the same normalised question text.
Every training stage records these in its adapter's `training.json` (`training_record`): the question ids
as before (`trained_question_ids`) plus `trained_answers` and `trained_questions`. For an adapter that
recorded only ids, the answers and texts of ids found in the bundled sets are filled in from there.

`guard` refuses an eval set that overlaps (`LeakageError`), or with `drop=True` drops the overlapping
questions and counts them, or with `allow=True` keeps them and reports the overlap. `split_report` checks a
data set's own train/eval split and its paragraph pools (what `hopsmith check-leakage` prints).
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hopsmith.data import BUNDLED, load_questions
from hopsmith.data.pools import build_pools
from hopsmith.data.split import all_answer_keys, answer_keys, paragraph_key, question_key, single_hop_ids
from hopsmith.records import Question

REASONS = ("id", "single_hop_id", "answer", "question")
# The keys `training_record` adds to a training summary (long lists: summaries printed for people skip them).
TRAINED_KEYS = ("trained_question_ids", "trained_answers", "trained_questions")


class LeakageError(ValueError):
    """Eval questions overlap what the adapter was trained on."""


@dataclass(frozen=True)
class Fingerprint:
    """What a set of questions (or an adapter's training data) exposes: ids, single-hop ids, normalised
    answers (gold answers, and hop answers where known) and normalised question texts."""

    ids: frozenset[str] = frozenset()
    single_hop_ids: frozenset[str] = frozenset()
    answers: frozenset[str] = frozenset()
    questions: frozenset[str] = frozenset()

    @classmethod
    def of(cls, items: Iterable[Question | Mapping]) -> "Fingerprint":
        """From `Question`s (their gold and hop answers), or from rows with `question_id` (or `id`),
        `question` and `answers` (traces, result rows); a missing question or answers field contributes
        nothing."""
        ids, hops, answers, questions = set(), set(), set(), set()
        for it in items:
            if isinstance(it, Question):
                qid, text = it.id, it.question
                answers |= all_answer_keys(it)
            else:
                qid = it.get("question_id") or it.get("id")
                text = it.get("question")
                answers |= answer_keys(str(a) for a in it.get("answers") or ())
            if qid:
                ids.add(str(qid))
                hops.update(single_hop_ids(str(qid)))
            if text:
                questions.add(question_key(str(text)))
        questions.discard("")
        return cls(frozenset(ids), frozenset(hops), frozenset(answers), frozenset(questions))

    def __or__(self, other: "Fingerprint") -> "Fingerprint":
        return Fingerprint(self.ids | other.ids, self.single_hop_ids | other.single_hop_ids,
                           self.answers | other.answers, self.questions | other.questions)

    def reasons(self, q: Question) -> list[str]:
        """Why `q` overlaps this fingerprint (a subset of REASONS, in that order); [] when it does not.
        `answer` means one of q's gold answers (or aliases) is among the fingerprint's answers."""
        found = []
        if q.id in self.ids:
            found.append("id")
        if self.single_hop_ids.intersection(single_hop_ids(q.id)):
            found.append("single_hop_id")
        if self.answers.intersection(answer_keys(q.answers)):
            found.append("answer")
        if question_key(q.question) in self.questions:
            found.append("question")
        return found


def training_record(items: Iterable[Question | Mapping], *, base_adapter: str | Path | None = None) -> dict:
    """The keys a training stage writes into its adapter's `training.json` so the guard can check later.

    `items` are what was trained on (traces, preference pairs, questions); an adapter continued from
    `base_adapter` has seen that one's questions too."""
    fp = Fingerprint.of(items)
    if base_adapter:
        fp = fp | trained_fingerprint(base_adapter)
    return {"trained_question_ids": sorted(fp.ids), "trained_answers": sorted(fp.answers),
            "trained_questions": sorted(fp.questions)}


def _training_json(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def trained_question_ids(adapter_dir: str | Path) -> set[str]:
    """The question ids an adapter was trained on (empty when it carries no record)."""
    return set(_training_json(adapter_dir).get("trained_question_ids", []))


def trained_fingerprint(adapter_dir: str | Path) -> Fingerprint:
    """Everything the adapter's `training.json` says it was trained on, plus the answers and question texts
    of its trained ids that are bundled questions (adapters older than `trained_answers` recorded ids only)."""
    record = _training_json(adapter_dir)
    ids = frozenset(str(i) for i in record.get("trained_question_ids", []))
    fp = Fingerprint(ids=ids, single_hop_ids=frozenset(h for i in ids for h in single_hop_ids(i)),
                     answers=frozenset(record.get("trained_answers", [])),
                     questions=frozenset(record.get("trained_questions", [])))
    known = [q for q in _bundled() if q.id in ids]
    return fp | Fingerprint.of(known) if known else fp


def _bundled() -> list[Question]:
    return [q for name in BUNDLED for q in load_questions(name)]


def overlap(questions: Sequence[Question], trained: Fingerprint) -> dict[str, list[str]]:
    """Question id -> reasons, for the questions that overlap `trained`."""
    out = {}
    for q in questions:
        found = trained.reasons(q)
        if found:
            out[q.id] = found
    return out


def guard(questions: Sequence[Question], adapter: str | Path | None, *, split: str | None = None,
          allow: bool = False, drop: bool = False) -> tuple[list[Question], dict | None]:
    """(questions to evaluate, report) for evaluating `adapter` on `questions`.

    No adapter: everything, report None. No overlap: everything, a report with count 0. Overlap: raises
    `LeakageError`, unless `drop` (the overlapping questions are left out and counted; all of them
    overlapping is still an error) or `allow` (all kept, the overlap reported). The report is
    {"count", "ids", "by_reason", "dropped", "message"}; `message` is None without overlap."""
    if not adapter:
        return list(questions), None
    found = overlap(questions, trained_fingerprint(adapter))
    by_reason = Counter(r for rs in found.values() for r in rs)
    report = {"count": len(found), "ids": sorted(found), "by_reason": {r: by_reason[r] for r in REASONS},
              "dropped": 0, "message": None}
    if not found:
        return list(questions), report
    detail = ", ".join(f"{by_reason[r]} by {r.replace('_', '-')}" for r in REASONS if by_reason[r])
    where = f"{split}-split " if split else ""
    message = (f"{len(found)} of {len(questions)} {where}questions overlap the training set of adapter {adapter} "
               f"({detail}; e.g. {', '.join(sorted(found)[:3])})")
    report["message"] = message
    if drop and not allow:
        kept = [q for q in questions if q.id not in found]
        if not kept:
            raise LeakageError(message + "; dropping them leaves no questions: evaluate on other questions")
        report["dropped"] = len(found)
        return kept, report
    if not allow:
        raise LeakageError(message + "; evaluate on the eval split, pass --drop-leakage to leave them out, "
                           "or --allow-leakage to report it anyway")
    return list(questions), report


# -- checking a split ---------------------------------------------------------------------------

def split_report(questions: Sequence[Question], *, pool_size: int = 400, pool_seed: int = 0) -> dict:
    """How a loaded set's train and eval sides overlap (`meta["split"]` from `load_questions`).

    Counts the ids, single-hop ids, answers (gold and hop answers) and question texts found on both sides, the eval
    questions a model trained on the whole train side would leak into, and the eval paragraphs
    (normalised title and text of any paragraph of an eval question) that `build_pools` puts in a train
    question's pool."""
    train = [q for q in questions if q.meta.get("split") == "train"]
    evals = [q for q in questions if q.meta.get("split") == "eval"]
    t, e = Fingerprint.of(train), Fingerprint.of(evals)
    eval_paragraphs = {paragraph_key(p) for q in evals for p in q.paragraphs}
    eval_supporting = {paragraph_key(p) for q in evals for p in q.paragraphs if p.supporting}
    in_train_pools: set = set()
    for pool in build_pools(train, size=pool_size, seed=pool_seed, others=questions).values():
        in_train_pools.update(k for k in map(paragraph_key, pool) if k in eval_paragraphs)
    return {
        "questions": len(questions), "train": len(train), "eval": len(evals),
        "shared_ids": len(t.ids & e.ids),
        "shared_single_hop_ids": len(t.single_hop_ids & e.single_hop_ids),
        "shared_answers": len(t.answers & e.answers),
        "shared_questions": len(t.questions & e.questions),
        "leaked_eval_questions": len(overlap(evals, t)),
        "eval_paragraphs_in_train_pools": len(in_train_pools),
        "eval_supporting_paragraphs_in_train_pools": len(in_train_pools & eval_supporting),
    }


_REPORT_LINES = (
    ("shared_ids", "question ids on both sides"),
    ("shared_single_hop_ids", "single-hop ids on both sides"),
    ("shared_answers", "answers (gold or hop) on both sides"),
    ("shared_questions", "question texts on both sides"),
    ("leaked_eval_questions", "eval questions sharing any of these"),
    ("eval_paragraphs_in_train_pools", "eval paragraphs in train pools"),
    ("eval_supporting_paragraphs_in_train_pools", "  of which supporting"),
)


def format_split_report(name: str, report: dict) -> str:
    lines = [f"{name}: {report['questions']} questions, {report['train']} train / {report['eval']} eval"]
    lines += [f"  {label:<40}{report[key]:>6}" for key, label in _REPORT_LINES]
    return "\n".join(lines)


def leaks(report: dict) -> bool:
    return any(report[key] for key, _ in _REPORT_LINES)
