"""Collapse guards for preference and RL training (seed 000's failure: tool use collapsed, queries turned
to gibberish, the model learned to answer without searching).

`behaviour(rows)` summarises a batch of episodes (eval result rows or rollouts): tool-use rate,
answered-without-search rate, query diversity and mean turns. `CollapseGuard` compares each probe with
the run's first one and says when to stop: tool use below an absolute floor, or fallen by more than a
set share, or queries that stopped being words.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"[A-Za-z]{2,}")


def _queries(row: dict) -> list[str]:
    """The queries an episode searched with: each valid `search` call's, and the searches its valid programs
    made (a code-as-action call records them as `queries`)."""
    out = []
    for c in row.get("tool_calls") or []:
        if not c.get("valid"):
            continue
        if c.get("name") == "search":
            out.append(str((c.get("arguments") or {}).get("query", "")))
        out.extend(str(q) for q in c.get("queries") or [])
    return out


def searched(row: dict) -> bool:
    """Whether an episode searched at all (a search call, or a program that called the search primitive)."""
    return bool(_queries(row))


def behaviour(rows: list[dict]) -> dict:
    """Tool-use and search statistics of a batch of episodes (all rates in [0, 1])."""
    n = len(rows)
    if not n:
        return {"n": 0, "tool_use_rate": 0.0, "answered_without_search_rate": 0.0, "query_diversity": 0.0,
                "query_wordiness": 0.0, "mean_turns": 0.0, "mean_searches": 0.0}
    queries = [q for r in rows for q in _queries(r)]
    did_search = [searched(r) for r in rows]
    finished = [bool(r.get("finished", r.get("prediction") is not None)) for r in rows]
    # Share of query tokens that look like words: gibberish queries (seed 000's REINFORCE) score low.
    tokens = [t for q in queries for t in q.split()]
    wordy = sum(1 for t in tokens if _WORD.search(t)) / len(tokens) if tokens else 0.0
    return {
        "n": n,
        "tool_use_rate": sum(1 for r in rows if any(c.get("valid") for c in r.get("tool_calls") or [])) / n,
        "answered_without_search_rate": sum(1 for s, f in zip(did_search, finished) if f and not s) / n,
        # distinct queries / queries: 1.0 when every search asks something new, low when the model repeats itself
        "query_diversity": len({" ".join(q.lower().split()) for q in queries}) / len(queries) if queries else 0.0,
        "query_wordiness": wordy,
        "mean_turns": sum(int(r.get("turns") or 0) for r in rows) / n,
        "mean_searches": len(queries) / n,
    }


@dataclass
class CollapseGuard:
    """Flags collapse against the first probe of a run.

    min_tool_use: absolute floor of the tool-use rate; max_drop: the largest allowed fall of tool use
    from the first probe, as a share of it (0.25: 100% may fall to 75%, not to 50%); max_no_search_rise:
    the largest allowed rise of the answered-without-search rate (points); min_wordiness: share of query
    tokens that must be words. The defaults were tightened after a SimPO run on the embedded model went
    from 100% to 50% tool use on its probe unflagged, and to 5% on the eval split (seed 000's collapse)."""

    min_tool_use: float = 0.5
    max_drop: float = 0.25
    max_no_search_rise: float = 0.25
    min_wordiness: float = 0.5
    history: list[dict] = field(default_factory=list)

    def check(self, stats: dict, step: int | None = None) -> list[str]:
        """Record a probe; return the reasons it counts as collapse (empty: healthy)."""
        self.history.append({"step": step, **stats})
        first = self.history[0]
        reasons = []
        if stats["tool_use_rate"] < self.min_tool_use:
            already = first["tool_use_rate"] < self.min_tool_use
            reasons.append(f"tool use {stats['tool_use_rate']:.0%} is below the floor of {self.min_tool_use:.0%}"
                           + (f" (and was at the first probe, {first['tool_use_rate']:.0%}: the starting adapter "
                              "barely uses tools)" if already else ""))
        if first["tool_use_rate"] > 0 and stats["tool_use_rate"] < first["tool_use_rate"] * (1 - self.max_drop) - 1e-9:
            reasons.append(f"tool use fell from {first['tool_use_rate']:.0%} to {stats['tool_use_rate']:.0%}")
        rise = stats.get("answered_without_search_rate", 0.0) - first.get("answered_without_search_rate", 0.0)
        if rise > self.max_no_search_rise + 1e-9:
            reasons.append(f"answered without search rose from {first['answered_without_search_rate']:.0%} to "
                           f"{stats['answered_without_search_rate']:.0%}")
        if stats.get("mean_searches", 0) > 0 and stats["query_wordiness"] < self.min_wordiness:
            reasons.append(f"only {stats['query_wordiness']:.0%} of query tokens are words (gibberish queries)")
        return reasons
