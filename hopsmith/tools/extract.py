"""The extractor behind `llm_query(question, text)`: a model reads text and returns a short answer.

Seed 000's setups: A uses the agent's own model with this prompt, B/C another backend. The prompt asks
for a best guess rather than a refusal when the text is unclear: in seed 000 a guessing extractor kept
chains alive and beat a more honest, stronger reader (46% vs 44%).
"""
from __future__ import annotations

from ..backends import Backend
from ..chat import strip_thinking
from ..untrusted import neutralize

EXTRACT_SYSTEM = (
    "You read a text and answer one question about it. Reply with the answer only: a name, a date, "
    "a number or a short phrase, no sentence. If the text does not state it plainly, give your best guess "
    "from the text."
)


def extraction_messages(question: str, text: str) -> list[dict]:
    return [
        {"role": "system", "content": EXTRACT_SYSTEM},
        # The text is retrieved paragraphs (untrusted): the reader must not get turns or tokens from it.
        {"role": "user", "content": f"Text:\n{neutralize(text)}\n\nQuestion: {question}\nAnswer:"},
    ]


class Extractor:
    """Answers (question, text) pairs in batches with any backend."""

    def __init__(self, backend: Backend, *, max_new_tokens: int = 32):
        self.backend = backend
        self.max_new_tokens = max_new_tokens

    def extract_many(self, pairs: list[tuple[str, str]]) -> list[str]:
        if not pairs:
            return []
        gens = self.backend.generate(
            [extraction_messages(q, t) for q, t in pairs], max_new_tokens=self.max_new_tokens, temperature=0.0
        )
        return [clean_extraction(g.text) if not g.overflow else "" for g in gens]

    def extract(self, question: str, text: str) -> str:
        return self.extract_many([(question, text)])[0]


def clean_extraction(text: str) -> str:
    text = strip_thinking(text).strip()
    first = text.split("\n")[0].strip()
    for prefix in ("Answer:", "answer:", "A:"):
        if first.startswith(prefix):
            first = first[len(prefix) :].strip()
    return first.rstrip(".").strip()
