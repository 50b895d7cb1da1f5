"""Single-hop reading traces: every gold hop of a question as its own one-search question.

The `warmup` type of `hopsmith.traces.synthetic` teaches the last hop only. The reading step is the
ladder's other wall (issue 14: the tuned agent reads 0 of 4 fully retrieved episodes correctly), and a
question's first hop is as good a reading exercise as its last: the hop's sub-question (earlier answers
filled in) is the user question, one real search over the question's pool brings back the hop's
supporting paragraph with the answer visible at `max_chars`, and the assistant answers FINAL(hop answer).
A hop whose searches miss is skipped with a reason, never faked, as every synthetic type is.

    from hopsmith.traces.hops import hop_traces
    traces, skips = hop_traces(questions, pools, top_k=3, max_chars=200)
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence

from hopsmith.envs.multihop import MultihopEnv
from hopsmith.metrics import normalize_answer
from hopsmith.records import Paragraph, Question
from hopsmith.tools.search import IndexCache

from .synthetic import (DEFAULT_MAX_CHARS, DEFAULT_TOP_K, Plan, TraceSkipped, _Conversation, _decomposition_step,
                        _is_yes_no, _resolve, _write, tool_schemas)


def hop_plan(q: Question, i: int, *, rng: random.Random | None = None) -> Plan:
    """Hop `i` (0-based) alone, its sub-question as the user question; `warmup_plan` is hop -1."""
    if not q.decomposition:
        raise TraceSkipped("no_subquestions", "no gold hops to take a single-hop question from")
    step = _decomposition_step(q, i, rng or random.Random(f"{q.id}:{i}"))
    answer = step.answer or ""
    answers = q.answers if normalize_answer(answer) == normalize_answer(q.answer) else (answer,)
    return Plan(step.need, (step,), answer, answers, answer_must_show=not _is_yes_no(answer))


def hop_trace(q: Question, pool: Sequence[Paragraph], i: int, *, top_k: int = DEFAULT_TOP_K,
              max_chars: int | None = DEFAULT_MAX_CHARS, index_cache: IndexCache | None = None,
              advertise_llm_query: bool = True) -> dict:
    """The trace row of hop `i` of `q` (type "hop"); raises `TraceSkipped` when no query finds it."""
    started = time.perf_counter()
    plan = hop_plan(q, i)
    index = (IndexCache() if index_cache is None else index_cache).get(pool)
    found = [_resolve(plan.steps[0], index, set(), top_k, max_chars, 1)]
    env = MultihopEnv(index, k=top_k, max_chars=max_chars)
    conv = _Conversation(plan.question, env, thinking=False)
    _write("chain", plan, conv, found, None, None, False)
    return {
        "id": f"{q.id}:hop{i + 1}:plain", "question_id": q.id, "dataset": q.dataset, "source": "synthetic:hop",
        "type": "hop", "variant": "plain", "question": plan.question, "messages": conv.messages,
        "tools": tool_schemas(advertise_llm_query), "answer": plan.answer, "answers": list(plan.answers),
        "tool_calls": conv.calls, "searched_supporting": [bool(plan.steps[0].paragraph_ids & env.retrieved.keys())],
        "thinking": False, "tokens": None, "seconds": time.perf_counter() - started,
        "env": {"top_k": top_k, "max_chars": max_chars},
    }


def hop_traces(questions: Sequence[Question], pools: dict[str, list[Paragraph]], *, top_k: int = DEFAULT_TOP_K,
               max_chars: int | None = DEFAULT_MAX_CHARS, skip_last: bool = False,
               index_cache: IndexCache | None = None) -> tuple[list[dict], list[dict]]:
    """One trace per gold hop of every question that has a decomposition: (traces, skips). `skip_last`
    leaves out each question's last hop (when `warmup` traces already teach it)."""
    cache = IndexCache() if index_cache is None else index_cache
    traces, skips = [], []
    for q in questions:
        hops = len(q.decomposition) - (1 if skip_last else 0)
        for i in range(hops):
            try:
                traces.append(hop_trace(q, pools[q.id], i, top_k=top_k, max_chars=max_chars, index_cache=cache))
            except TraceSkipped as skip:
                skips.append({"question_id": q.id, "type": f"hop{i + 1}", "reason": skip.reason, "detail": skip.detail})
    return traces, skips
