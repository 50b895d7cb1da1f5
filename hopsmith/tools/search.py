"""The `search` tool: BM25 over a question's paragraph pool, and the text the agent reads back.

    index = BM25Index(pool)                  # or IndexCache().get(pool) to build once per pool
    hits = index.search("Where was Ada Lovelace born?", k=5)
    print(format_hits(hits, max_chars=600))

Title and text are indexed together, lower-cased, with English stopwords removed and Snowball
(PyStemmer) stemming, the setup under which the seed write-up measured BM25 top-5 recall.
"""
from __future__ import annotations


import copy
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.tokenization import Tokenizer

from hopsmith.data.pools import pool_key
from hopsmith.records import Paragraph

NO_RESULTS = "No results for this query."


class BM25Index:
    """A BM25 index over a fixed list of paragraphs."""

    def __init__(self, paragraphs: Sequence[Paragraph]):
        self.paragraphs = list(paragraphs)
        self._tokenizer = Tokenizer(stemmer=Stemmer.Stemmer("english"), stopwords="en")
        self._retriever = bm25s.BM25()
        if self.paragraphs:
            tokens = self._tokenizer.tokenize(
                [f"{p.title}\n{p.text}" for p in self.paragraphs], return_as="tuple", show_progress=False
            )
            self._retriever.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.paragraphs)

    def with_paragraphs(self, paragraphs: Sequence[Paragraph]) -> BM25Index:
        """This index answering with `paragraphs` instead: same ids in the same order, other flags.

        Pools over one corpus differ only in which paragraphs are flagged supporting, so they share the
        tokenised index and each gets its own paragraph objects back from `search`.
        """
        if [p.id for p in paragraphs] != [p.id for p in self.paragraphs]:
            raise ValueError("with_paragraphs needs the same paragraph ids in the same order")
        view = copy.copy(self)
        view.paragraphs = list(paragraphs)
        return view

    def search(self, query: str, k: int = 5) -> list[tuple[Paragraph, float]]:
        """The top `k` paragraphs for `query`, best first, with their BM25 scores.

        Paragraphs sharing no term with the query (score 0) are left out, so a query of only stopwords
        or unknown words returns [] rather than arbitrary paragraphs.
        """
        k = min(k, len(self.paragraphs))
        if k <= 0 or not query.strip():
            return []
        tokens = self._tokenizer.tokenize([query], update_vocab=False, return_as="tuple", show_progress=False)
        # Words outside the pool's vocabulary map to the empty token; nothing else means no real term.
        empty_id = self._tokenizer.get_vocab_dict().get("")
        if all(t == empty_id for t in tokens.ids[0]):
            return []
        docs, scores = self._retriever.retrieve(tokens, k=k, show_progress=False)
        return [
            (self.paragraphs[int(d)], float(s)) for d, s in zip(docs[0], scores[0]) if s > 0 and np.isfinite(s)
        ]


class IndexCache:
    """Builds one `BM25Index` per pool (keyed by `pool_key`) and keeps the `maxsize` most recently used."""

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self._indexes: OrderedDict[str, BM25Index] = OrderedDict()

    def __len__(self) -> int:
        return len(self._indexes)

    def get(self, pool: Sequence[Paragraph]) -> BM25Index:
        key = pool_key(pool)
        index = self._indexes.get(key)
        if index is not None:
            self._indexes.move_to_end(key)
            return index.with_paragraphs(pool)
        index = self._indexes[key] = BM25Index(pool)
        if len(self._indexes) > self.maxsize:
            self._indexes.popitem(last=False)
        return index


def paragraph_label(paragraph_id: str) -> str:
    """The short, opaque label the agent sees for a paragraph. Raw ids (`<question id>::<idx>`) would
    tell the agent which hits belong to its own question; a hash of the id tells it nothing."""
    return "p" + hashlib.sha1(paragraph_id.encode()).hexdigest()[:6]


def format_hits(hits: Sequence[tuple[Paragraph, float]], max_chars: int | None = None) -> str:
    """Hits as the agent sees them: `[label] title` then the text, one block per hit, blank line between.

    `max_chars` cuts each text at the last word boundary within the limit and marks the cut with "…".
    """
    if not hits:
        return NO_RESULTS
    return "\n\n".join(f"[{paragraph_label(p.id)}] {p.title}\n{_truncate(p.text, max_chars)}" for p, _ in hits)


def _truncate(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if text[max_chars] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"
