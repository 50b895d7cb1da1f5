"""The multi-hop QA environment of seed 000: `search` over the question's paragraph pool and
`llm_query`, an extractor that reads text and answers a focused question.

One `MultihopEnv` lives for one episode. It remembers every paragraph a search returned (for
supporting-paragraph recall and the failure taxonomy) and the last search's hits, which `llm_query`
reads when it is given no text: copying five paragraphs into a tool call costs a small model hundreds of
generated tokens, so the call can say "the last results" or name paragraph ids instead.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from ..records import Paragraph
from ..tools import check_arguments, tool_schema
from ..tools.extract import Extractor
from ..tools.search import NO_RESULTS, BM25Index, format_hits, paragraph_label
from ..untrusted import neutralize

_LABEL_RE = re.compile(r"\b(p[0-9a-f]{6})\b")
# Seed 001's robustness test replaces a share of retrievals with failed ones; half of ours come back
# empty, half as a service error.
SEARCH_ERROR = "Error: the search service did not respond in time. Try the search again."


class MultihopEnv:
    tool_names = ("search", "llm_query")

    def __init__(self, index: BM25Index, *, k: int = 5, max_chars: int | None = None, extractor: Extractor | None = None,
                 search_failure_rate: float = 0.0, search_failure_seed: int = 0, noise_key: str = ""):
        if not 0.0 <= search_failure_rate <= 1.0:
            raise ValueError(f"search_failure_rate must be in [0, 1], got {search_failure_rate}")
        self.index = index
        self.search_failure_rate = search_failure_rate
        self.search_failure_seed = search_failure_seed
        self.noise_key = noise_key  # the episode's id: which searches fail depends on it, the query and the attempt
        self.search_failures = 0
        self._attempts: dict[str, int] = {}
        self.k = k
        self.max_chars = max_chars
        self.extractor = extractor
        self.retrieved: dict[str, Paragraph] = {}
        self.by_label: dict[str, Paragraph] = {}
        self.last_hits: list[Paragraph] = []
        self.queries: set[str] = set()

    @property
    def tool_names_enabled(self) -> tuple[str, ...]:
        return self.tool_names if self.extractor is not None else ("search",)

    def schemas(self) -> list[dict]:
        return [_schema(n) for n in self.tool_names_enabled]

    def search(self, query: str) -> str:
        """Find paragraphs that match a query, best first.

        Args:
            query: Keywords, e.g. "Lloyd Dane birthplace".
        """
        key = " ".join(query.lower().split())
        if key in self.queries:
            # The same results again would only grow the context; say so and nudge towards a new query.
            return neutralize(f'You already searched for "{query}"; its results are above. Search for something else or answer.')
        failed = self._failed_search(key)
        if failed is not None:
            # Not remembered as searched: retrying a failed search is what a robust agent should do.
            return failed
        self.queries.add(key)
        hits = [p for p, _ in self.index.search(query, k=self.k)]
        self.last_hits = hits
        for p in hits:
            self.retrieved.setdefault(p.id, p)
            self.by_label[paragraph_label(p.id)] = p
        # Paragraphs are untrusted text: no control token or answer marker in them reaches the prompt.
        return neutralize(format_hits([(p, 0.0) for p in hits], max_chars=self.max_chars))

    def _failed_search(self, key: str) -> str | None:
        """The failure text when this attempt of this query fails (noisy retrieval), else None."""
        if self.search_failure_rate <= 0.0:
            return None
        n = self._attempts[key] = self._attempts.get(key, 0) + 1
        # str seeds hash with SHA-512: the same episode, query and attempt fail the same way in every run.
        rng = random.Random(f"{self.search_failure_seed}\x00{self.noise_key}\x00{key}\x00{n}")
        if rng.random() >= self.search_failure_rate:
            return None
        self.search_failures += 1
        return NO_RESULTS if rng.random() < 0.5 else SEARCH_ERROR

    def llm_query(self, question: str, text: str = "") -> str:
        """Ask a reader one question about text; it answers briefly.

        Args:
            question: One factual question, e.g. "Where was Lloyd Dane born?".
            text: The text, or paragraph labels like [p1a2b3c]; empty reads the last search results.
        """
        return neutralize(self.extractor.extract(question, self.resolve_text(text)))

    def resolve_text(self, text: str) -> str:
        ids = _LABEL_RE.findall(text or "")
        chosen = [self.by_label[i] for i in ids if i in self.by_label]
        if chosen:
            return "\n\n".join(f"{p.title}: {p.text}" for p in chosen)
        if text and text.strip() and not ids:
            return text
        return "\n\n".join(f"{p.title}: {p.text}" for p in self.last_hits) or "(no text)"

    # -- execution, used by the agent loop --------------------------------------------------------

    def validate(self, name: str | None, arguments: dict) -> str | None:
        """Why a call cannot run, or None."""
        if name not in self.tool_names_enabled:
            return f"unknown tool '{name}'; available: {', '.join(self.tool_names_enabled)}"
        return check_arguments(_schema(name), arguments)

    @staticmethod
    def run_llm_queries(requests: list[tuple["MultihopEnv", dict]]) -> list[str]:
        """Every llm_query of a turn, across episodes, answered in one batch."""
        if not requests:
            return []
        extractor = requests[0][0].extractor
        pairs = [(args["question"], env.resolve_text(args.get("text", ""))) for env, args in requests]
        return [neutralize(a) for a in extractor.extract_many(pairs)]


@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    # The specs are in every prompt the agent sees and trains on: their docstrings are kept terse, and the
    # "return" key transformers adds (every tool returns text) is left out.
    schema = tool_schema(getattr(MultihopEnv, name))
    schema["function"].pop("return", None)
    return schema
