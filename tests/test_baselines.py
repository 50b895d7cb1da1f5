"""Closed-book and retrieve-then-read baselines: what the model is shown, how rows are scored and paired."""
import pytest

from hopsmith.baselines import run_baseline
from hopsmith.metrics import aggregate, compare


class Reader:
    """Answers a RAG prompt with the gold answer when the text shown holds it, else "unknown"; records prompts."""

    name = "reader"

    def __init__(self, answers):
        self.answers = answers
        self.seen: list[list[dict]] = []

    def generate(self, conversations, *, tools=None, max_new_tokens=256, temperature=0.0, thinking=False, stop=None):
        from hopsmith.backends import Generation

        assert tools is None and temperature == 0.0
        self.seen += conversations
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            hit = next((a for a in self.answers if a in user.split("Question:")[0]), None)
            out.append(Generation(f"Answer: {hit}." if hit else "unknown\nmore text", prompt_tokens=10, completion_tokens=3))
        return out


def test_rag_shows_the_top_k_of_the_question_and_scores_rows(musique_small):
    questions, pools = musique_small
    reader = Reader([q.answer for q in questions])
    rows = run_baseline("rag", questions, pools, reader, top_k=3, max_chars=300, batch_size=4)
    assert [r["question_id"] for r in rows] == [q.id for q in questions]
    from hopsmith.tools.search import BM25Index, format_hits

    for q, r, conv in zip(questions, rows, reader.seen):
        hits = BM25Index(pools[q.id]).search(q.question, k=3)
        assert r["retrieved_ids"] == [p.id for p, _ in hits]
        assert format_hits(hits, max_chars=300) in conv[-1]["content"] and q.question in conv[-1]["content"]
        right = q.answer in format_hits(hits, max_chars=300)
        # the reader's "Answer: X." is cleaned to X, and scored as eval scores it
        assert r["prediction"] == (q.answer if right else "unknown") and r["metrics"]["em"] == float(right)
    m = aggregate(rows, n_boot=50)
    assert m["n"] == len(questions) and m["supporting_recall"] is not None
    assert m["tool_use_rate"] == 0.0 and m["invalid_call_rate"] == 0.0


def test_closed_book_sees_no_paragraph_and_pairs_with_rag(musique_small):
    questions, pools = musique_small
    reader = Reader([q.answer for q in questions])
    closed = run_baseline("closed_book", questions, pools, reader)
    assert all("Text:" not in conv[-1]["content"] for conv in reader.seen)
    assert all(r["retrieved_ids"] == [] and r["prediction"] == "unknown" for r in closed)
    rag = run_baseline("rag", questions, pools, reader, top_k=3)
    c = compare(aggregate(closed, n_boot=50), aggregate(rag, n_boot=50))
    assert c["paired_n"] == len(questions) and c["em"]["paired"]["test"] == "mcnemar_exact"


def test_baselines_run_on_a_tiny_model(musique_small, tiny_backend):
    questions, pools = musique_small
    rows = run_baseline("rag", questions[:2], pools, tiny_backend, top_k=2, max_chars=100, max_new_tokens=4)
    assert len(rows) == 2 and all(r["tokens"]["completion"] <= 4 for r in rows)
    assert all(set(r["metrics"]) == {"acc", "em", "f1"} for r in rows)


def test_unknown_baseline_is_refused(musique_small):
    questions, pools = musique_small
    with pytest.raises(ValueError, match="unknown baseline 'oracle'; known: closed_book, rag"):
        run_baseline("oracle", questions, pools, None)
