"""Synthetic traces for the code-as-action environment (`--env wikicode`): each gold hop as a short program.

A model that has never written a `<python>` block gets no reward to learn from: the embedded model, shown the
worked example, still answers every question in one line without code (tool use 0% on 20 HotpotQA eval
questions). These traces give GRPO a policy that writes programs. Each hop of a question's gold plan
(`hopsmith.traces.plan_for`, the plan the multi-hop traces follow) becomes one program in the example's
pattern, a loop over the top pages that prints the start of each:

    for hit in search_pages("Eldon Missouri", k=2):
        print(read_section(hit["page_id"] + ":full")[:300])

and the last turn is `<answer>gold</answer>`. Every program really runs in the environment's sandbox over
the question's own wiki, so each tool message is what the program prints at inference. A hop is written with
the first of its plan's queries whose printed pages include the hop's supporting page (and the hop's answer,
when it has one), reading the shortest page start in `chars` that does: 300 characters first, then 600 and
1,000 (a MuSiQue page gathers every paragraph with its title, so the one a hop needs is often not the first;
at 300 alone 40 of the 65 bundled MuSiQue train questions had no trace, with 600 and 1,000 as well 20). A
question where no query does, or where the final answer is never printed, is skipped with a reason, never
faked.

    hopsmith traces --env wikicode --data hotpotqa --root runs/wikicode      (the stage: stages/traces.py)
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from hopsmith.records import Question

from .filters import shows
from .synthetic import TraceSkipped, _is_yes_no, _norm_key, plan_for

WIDTHS = (300, 600, 1000)  # the page starts a hop's program may print, shortest first
PROGRAM = 'for hit in search_pages({query}, k={k}):\n    print(read_section(hit["page_id"] + ":full")[:{chars}])'


def program(query: str, *, k: int = 2, chars: int = 300) -> str:
    """One hop's program: print the first `chars` characters of each of the top `k` pages for `query`."""
    # A JSON string is a Python string literal, always in double quotes as in the prompt's example.
    return PROGRAM.format(query=json.dumps(query, ensure_ascii=False), k=k, chars=chars)


def _prints(wiki, query: str, k: int, chars: int, wanted: set[str], answer: str | None) -> bool:
    """Whether the hop's program for `query` would print one of the `wanted` pages (and `answer`, when
    given): computed here, on the wiki, to choose a query and a length."""
    hits = wiki.search_pages(query, k=k)
    text = "\n".join(wiki.read_section(h["page_id"] + ":full")[:chars] for h in hits)
    return bool({h["page_id"] for h in hits} & wanted) and (answer is None or shows(text, [answer]))


def code_trace(q: Question, make_env: Callable, *, k: int = 2, chars: int | Sequence[int] = WIDTHS) -> dict:
    """The trace of question `q` in the environment `make_env(q)` builds; raises `TraceSkipped`. `chars`: the
    page-start lengths a hop's program may print, tried shortest first (one number: that length only)."""
    widths = sorted({chars} if isinstance(chars, int) else set(chars))
    plan = plan_for(q, max_chars=widths[0])
    env = make_env(q)
    wiki = env.wiki
    page_of = {pid: page.id for page in wiki.pages for pid in page.paragraph_ids}
    used: set[str] = set()
    printed, widths_used = [], []
    for n, step in enumerate(plan.steps, start=1):
        wanted = {page_of[pid] for pid in step.paragraph_ids if pid in page_of}
        need_answer = step.answer is not None and not _is_yes_no(step.answer)
        choice = next(((query, width) for width in widths for query in step.queries
                       if _norm_key(query) not in used and _prints(wiki, query, k, width, wanted,
                                                                   step.answer if need_answer else None)), None)
        if choice is None:
            raise TraceSkipped("support_not_printed", f"hop {n}: no query of {list(step.queries)} prints the "
                               f"supporting page" + (f" with {step.answer!r}" if need_answer else "")
                               + f" in {widths[-1]} characters")
        query, width = choice
        used.add(_norm_key(query))
        widths_used.append(width)
        reply = f"<python>\n{program(query, k=k, chars=width)}\n</python>"
        action = env.format.parse(reply)
        env.messages.append(env.format.assistant_message(reply, action))
        env.step(action, reply)
        call = env.calls[-1]
        if call["status"] != "ok":
            raise TraceSkipped("program_failed", f"hop {n}: the sandbox answered {env.messages[-1]['content'][:200]!r}")
        printed.append(env.messages[-1]["content"])
    if plan.answer_must_show and not any(shows(text, list(plan.answers)) for text in printed):
        raise TraceSkipped("final_answer_not_visible", f"{plan.answer!r} is in no program's output")
    reply = f"<answer>{plan.answer}</answer>"
    env.messages.append(env.format.assistant_message(reply, env.format.parse(reply)))
    return {
        "id": f"{q.id}:code:plain",
        "question_id": q.id,
        "dataset": q.dataset,
        "source": "synthetic:code",
        "type": "code",
        "variant": "plain",
        "question": q.question,
        "messages": env.messages,
        "tools": [],
        "answer": plan.answer,
        "answers": list(plan.answers),
        "tool_calls": [{"name": "python", "arguments": c["arguments"], "valid": c["valid"]} for c in env.calls],
        "searched_supporting": [bool(s.paragraph_ids & env.read_ids.keys()) for s in plan.steps],
        "thinking": False,
        "tokens": None,
        "env": {"name": "wikicode", "k": k, "chars": widths_used},
    }


def code_traces(questions: Sequence[Question], make_env: Callable, *, k: int = 2,
                chars: int | Sequence[int] = WIDTHS) -> tuple[list[dict], list[dict]]:
    """(traces, skips): one trace per question that has one, and why each other question has none."""
    traces, skips = [], []
    for q in questions:
        try:
            traces.append(code_trace(q, make_env, k=k, chars=chars))
        except TraceSkipped as exc:
            skips.append({"question_id": q.id, "type": "code", "reason": exc.reason, "detail": exc.detail})
    return traces, skips
