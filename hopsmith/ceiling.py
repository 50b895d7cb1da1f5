"""The two halves of seed 000's ceiling: retrieval with gold sub-questions, and standalone extraction.

ceiling = P(BM25 with the gold sub-questions returns every supporting paragraph)
        x P(the extractor answers a hop's gold sub-question from its gold paragraph).
Seed 000 measured 0.855 x 0.61 = 52.2% for its tuned 1.7B model, which then reached 44.8%.
"""
from __future__ import annotations

from .data import hop_question
from .metrics import answer_summary, score
from .records import Paragraph, Question
from .tools.extract import Extractor
from .tools.search import IndexCache


def oracle_retrieval(questions: list[Question], pools: dict[str, list[Paragraph]], *, k: int = 5,
                     cache: IndexCache | None = None) -> dict:
    """Search each question's pool with its gold sub-questions; success when every supporting
    paragraph came back. Questions without a decomposition or supporting ids are not counted."""
    cache = cache or IndexCache()
    hits = []
    for q in questions:
        if not q.decomposition or not q.supporting_ids:
            continue
        index = cache.get(pools[q.id])
        found = set()
        for i in range(len(q.decomposition)):
            found.update(p.id for p, _ in index.search(hop_question(q, i), k=k))
        hits.append(1.0 if set(q.supporting_ids) <= found else 0.0)
    return {"rate": sum(hits) / len(hits) if hits else None, "n": len(hits)}


def extraction_items(questions: list[Question]) -> list[dict]:
    """One item per hop whose supporting paragraph is known: (sub-question, gold paragraph, answer)."""
    items = []
    for q in questions:
        by_id = {p.id: p for p in q.paragraphs}
        for i, hop in enumerate(q.decomposition):
            para = by_id.get(hop.paragraph_id or "")
            if para is None or not hop.answer:
                continue
            items.append({
                "question_id": q.id, "dataset": q.dataset, "hop": i + 1, "question": hop_question(q, i),
                "paragraph": f"{para.title}: {para.text}", "answers": [hop.answer],
            })
    return items


def extraction_benchmark(questions: list[Question], extractor: Extractor, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Score the extractor on gold paragraphs and gold sub-questions (seed 000's standalone benchmark)."""
    items = extraction_items(questions)
    if not items:
        raise ValueError("no hop has a gold sub-question with a known supporting paragraph "
                         "(HotpotQA has no decompositions; use MuSiQue or 2Wiki)")
    predictions = extractor.extract_many([(it["question"], it["paragraph"]) for it in items])
    rows = []
    for it, pred in zip(items, predictions):
        rows.append({**it, "prediction": pred, "metrics": score(pred, it["answers"], it["dataset"])})
    # EM and cover-EM with Wilson intervals, F1 with a bootstrap one, as every run is summarised.
    summary = answer_summary([r["metrics"] for r in rows], n_boot=n_boot, seed=seed)
    return {"summary": summary, "rows": rows}
