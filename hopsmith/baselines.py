"""The two baselines a search agent must beat, on the same questions, pools and model.

- closed-book: the question alone; the model answers from what it knows.
- retrieve-then-read (naive RAG): one BM25 search of the question itself over the question's pool (the
  agent's own index, `top_k` hits cut at `max_chars` as the agent sees them), then one answer.

Both ask for a short answer in one generation (`hopsmith.tools.extract`'s reader prompt: the extractor an
agent calls with `llm_query` is the same reader), and return result rows shaped like the agent loop's, so
`hopsmith.metrics.aggregate` scores them (EM, F1, cover-EM with intervals; supporting recall for RAG) and
`compare` pairs them with an agent run question by question.

    from hopsmith.baselines import run_baseline
    rows = run_baseline("rag", questions, pools, backend, top_k=3, max_chars=300)
"""
from __future__ import annotations

import time
from collections.abc import Sequence

from .metrics import normalize_answer, score
from .records import Paragraph, Question
from .tools.extract import EXTRACT_SYSTEM, clean_extraction
from .tools.search import IndexCache, format_hits

BASELINES = ("closed_book", "rag")


def baseline_kinds(spec: str) -> list[str]:
    """The baselines a comma-separated option names ('none' or '' for none), refused whole when one is unknown."""
    kinds = [k.strip() for k in spec.split(",") if k.strip() and k.strip() != "none"]
    unknown = sorted(set(kinds) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown {unknown}; choose from {', '.join(BASELINES)}")
    return kinds


CLOSED_BOOK_SYSTEM = ("You answer questions from what you know. Reply with the answer only: a name, a date, "
                      "a number or a short phrase, no sentence.")


def baseline_messages(kind: str, question: str, context: str | None = None) -> list[dict]:
    if kind == "closed_book":
        return [{"role": "system", "content": CLOSED_BOOK_SYSTEM},
                {"role": "user", "content": f"Question: {question}\nAnswer:"}]
    if kind == "rag":
        return [{"role": "system", "content": EXTRACT_SYSTEM},
                {"role": "user", "content": f"Text:\n{context}\n\nQuestion: {question}\nAnswer:"}]
    raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")


def run_baseline(kind: str, questions: Sequence[Question], pools: dict[str, list[Paragraph]], backend, *,
                 top_k: int = 5, max_chars: int | None = 600, max_new_tokens: int = 32, batch_size: int = 16,
                 index_cache: IndexCache | None = None) -> list[dict]:
    """One result row per question (prediction, metrics, retrieved ids), in question order."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    cache = IndexCache() if index_cache is None else index_cache
    rows: list[dict] = []
    for start in range(0, len(questions), batch_size):
        batch = list(questions[start:start + batch_size])
        hits = [cache.get(pools[q.id]).search(q.question, k=top_k) if kind == "rag" else [] for q in batch]
        convs = [baseline_messages(kind, q.question, format_hits(h, max_chars=max_chars) if kind == "rag" else None)
                 for q, h in zip(batch, hits)]
        t0 = time.perf_counter()
        gens = backend.generate(convs, max_new_tokens=max_new_tokens, temperature=0.0)
        each = (time.perf_counter() - t0) / max(1, len(batch))
        for q, h, conv, g in zip(batch, hits, convs, gens):
            prediction = None if g.overflow else clean_extraction(g.text)
            shown = " ".join(normalize_answer(p.text) for p, _ in h)
            rows.append({
                "question_id": q.id, "dataset": q.dataset, "hops": q.hops, "type": q.type, "question": q.question,
                "answers": list(q.answers), "prediction": prediction, "finished": prediction is not None,
                "stop": "overflow" if g.overflow else "final", "turns": 1, "tool_calls": [],
                "supporting_ids": q.supporting_ids if kind == "rag" else [],
                "retrieved_ids": [p.id for p, _ in h],
                "retrieved_text_has_answer": any(a and f" {a} " in f" {shown} " for a in map(normalize_answer, q.answers)),
                "seconds": each, "tokens": {"prompt": g.prompt_tokens, "completion": g.completion_tokens},
                "model": getattr(backend, "name", "?"), "baseline": kind,
                "messages": [*conv, {"role": "assistant", "content": g.text}],
                "metrics": score(prediction, list(q.answers), q.dataset),
            })
    return rows
