"""Paragraph pools: the collection of paragraphs each question is searched over.

A question's own paragraphs (20 in MuSiQue, 10 in HotpotQA and 2Wiki) are too few for retrieval to be
hard, so, as in the seed write-up, each question gets a pool of about 400 paragraphs: its own plus
whole blocks of other questions' paragraphs as distractors. Only a question's own supporting paragraphs
are flagged `supporting` in its pool. Distractors never cross the train/eval split: an eval question's
pool draws from eval questions only and a train question's from train questions only, and a train pool
holds no paragraph that is also an eval question's, so training traces never show eval evidence. A user corpus replaces the pools: every question then searches the
whole corpus (`load_corpus`, `corpus_pools`). `pool_key` names a pool so an index is built once per pool.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from hopsmith.data.loaders import DataError, load_questions
from hopsmith.data.split import paragraph_key
from hopsmith.io import json_object
from hopsmith.records import Paragraph, Question

_content_key = paragraph_key


def build_pools(
    questions: Sequence[Question],
    size: int = 400,
    seed: int = 0,
    others: Sequence[Question] | None = None,
    hold_out_dev: bool = False,
) -> dict[str, list[Paragraph]]:
    """Map each question id to its pool: its own paragraphs first, then distractors up to `size`.

    Distractors come from `others` (default: `questions`), excluding the question itself and every
    question on the other side of the split (`meta["split"]`, set by `load_questions`; questions without
    it are all one side): the donor questions are shuffled with a generator seeded by `seed` and the
    question id, and their paragraphs are taken block by block, the last block cut at `size`. A paragraph
    whose normalised title and text equal one already in the pool is skipped, so the question's own copy
    always wins. In a train question's pool, a paragraph that is also an eval question's (among
    `questions` and `others`) is skipped, even one of the question's own distractors; its supporting
    paragraphs never are (the split keeps questions sharing one on one side). The pool is smaller than
    `size` when the donors run out, and holds all own paragraphs even if they exceed `size`. Sorting the
    donors by id first makes a pool independent of the order and of the other members of `questions`, so
    a 20-question eval run sees the same pools as the full set. With `hold_out_dev` (the `fit` split) a
    train question that is not a dev one is banned the dev questions' paragraphs too, so what it trains on
    never shows the evidence the dev split chooses adapters by.
    """
    donors = sorted(questions if others is None else others, key=lambda q: q.id)
    eval_keys = {_content_key(p) for d in (*donors, *questions) if d.meta.get("split") == "eval"
                 for p in d.paragraphs}
    # What a fit question may not show: the eval paragraphs, and with hold_out_dev the dev ones (one set, built once)
    fit_banned = (eval_keys | {_content_key(p) for d in (*donors, *questions) if d.meta.get("dev") for p in d.paragraphs}
                  if hold_out_dev else eval_keys)
    pools: dict[str, list[Paragraph]] = {}
    for q in questions:
        side = q.meta.get("split")
        banned = (eval_keys if q.meta.get("dev") else fit_banned) if side == "train" else set()
        order = [d for d in donors if d.id != q.id and d.meta.get("split") == side]
        random.Random(f"{seed}:{q.id}").shuffle(order)
        pool = [p for p in q.paragraphs if p.supporting or _content_key(p) not in banned]
        seen = {_content_key(p) for p in pool} | banned
        distractors = (p for d in order for p in d.paragraphs)
        for p in distractors:
            if len(pool) >= size:
                break
            key = _content_key(p)
            if key not in seen:
                seen.add(key)
                pool.append(_flagged(p, False))
        pools[q.id] = pool
    return pools


def load_with_pools(data: str, *, split: str | None = None, limit: int | None = None, size: int = 400, seed: int = 0,
                    corpus: str | Path | None = None, shard: int = 0,
                    num_shards: int = 1) -> tuple[list[Question], dict[str, list[Paragraph]]]:
    """The questions of `data` (its `split` side, the first `limit`, then every `num_shards`-th from `shard`) and
    every one's pool: `size` paragraphs with distractors from every question of `data` on its side of the
    split (`build_pools`), or the whole `corpus` file when given. Eval, traces, RFT and GRPO load this way,
    so a trace's searches return what eval's do."""
    questions = load_questions(data, limit=limit, split=split)[shard::num_shards]
    if corpus:
        return questions, corpus_pools(questions, load_corpus(corpus))
    if not any(q.paragraphs for q in questions):
        raise DataError(f"{data}: its questions come without paragraphs (Bamboogle does); "
                        "give a corpus to search with --corpus FILE.jsonl")
    return questions, build_pools(questions, size=size, seed=seed, others=load_questions(data),
                                  hold_out_dev=split == "fit")


def load_corpus(path: str | Path) -> list[Paragraph]:
    """Paragraphs from a JSONL file of `{"id", "title", "text"}` objects (`title` may be omitted).

    Ids must be unique; blank lines are skipped. Problems raise `DataError` naming FILE:LINE.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    corpus: list[Paragraph] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json_object(line)
            except ValueError as exc:
                raise DataError(f"{where}: {exc}") from None
            for key in ("id", "text"):
                if key not in row:
                    raise DataError(f"{where}: missing required key {key!r}")
            pid = str(row["id"])
            if pid in seen:
                raise DataError(f"{where}: duplicate id {pid!r} (first on line {seen[pid]})")
            seen[pid] = lineno
            title, text = str(row.get("title", "")), str(row["text"])
            corpus.append(Paragraph(pid, " ".join(title.split()), " ".join(text.split())))
    if not corpus:
        raise DataError(f"{path} has no rows")
    return corpus


def corpus_pools(questions: Iterable[Question], corpus: Sequence[Paragraph]) -> dict[str, list[Paragraph]]:
    """Every question's pool is the whole corpus, in corpus order.

    A corpus paragraph is flagged `supporting` for a question when its normalised title and text equal
    those of one of the question's own supporting paragraphs; a corpus that words them differently leaves
    the question with no supporting paragraph in its pool, and `Hop.paragraph_id` keeps naming the
    question's own paragraph ids. All pools share their paragraph ids, so they share one index.
    """
    pools: dict[str, list[Paragraph]] = {}
    for q in questions:
        gold = {_content_key(p) for p in q.paragraphs if p.supporting}
        pools[q.id] = [_flagged(p, _content_key(p) in gold) for p in corpus]
    return pools


def pool_key(pool: Sequence[Paragraph]) -> str:
    """A stable name for a pool: SHA-256 over its paragraph ids in order (16 hex digits)."""
    digest = hashlib.sha256("\x1f".join(p.id for p in pool).encode("utf-8"))
    return digest.hexdigest()[:16]


def _flagged(p: Paragraph, supporting: bool) -> Paragraph:
    return p if p.supporting == supporting else replace(p, supporting=supporting)
