"""Choosing which traces train: at most n, round-robin over their sources so every trace type is represented.

    train = sample_traces(kept, n=12, seed=0)

The local ladder, the cloud's trace selection and preference mining (pairs balanced over failure kinds,
their `source`) all sample this way.
"""
from __future__ import annotations

import random


def sample_traces(traces: list[dict], n: int | None, seed: int) -> list[dict]:
    """At most n traces, round-robin over `source` so every source is represented."""
    if n is None or len(traces) <= n:
        return traces
    rng = random.Random(seed)
    by_source: dict[str, list[dict]] = {}
    for t in traces:
        by_source.setdefault(t.get("source", "?"), []).append(t)
    for group in by_source.values():
        rng.shuffle(group)
    picked: list[dict] = []
    while len(picked) < n:
        for source in sorted(by_source):
            if by_source[source] and len(picked) < n:
                picked.append(by_source[source].pop())
    return picked
