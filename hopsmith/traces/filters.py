"""Always-Search Policy (ASP) filters for teacher traces, after seed 001.

Seed 001 distils a teacher into a small model only from trajectories that (1) reach the gold answer
with String-F1 >= 0.65, (2) actually call the search tool, and (3) pass a keyword filter, so the student
never learns to answer from parametric memory. Here the keyword filter has two parts: the answer's
keywords must appear in what a search returned (not only in the question), and no assistant turn may
claim memory ("I remember", "I recall", ...), the phrases seed 001 names.

    from hopsmith.traces.filters import asp_filter
    kept, reasons = asp_filter(trace)        # (True, []) or (False, ["must_search: no valid search call"])

The stage that applies them is `stages/traces.py` (teacher mode):

    hopsmith traces --teacher openai:gpt-4o-mini --root runs/ladder

A trace is a row of `stages/traces.py` (or any dict with `messages`, `answers`, optionally `answer` and
`tools`). Reasons are "<check>: <detail>" so a summary can count them by check.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator

from hopsmith.chat import extract_answer, strip_thinking
from hopsmith.envs.multihop import MultihopEnv, _schema
from hopsmith.metrics import f1, normalize_answer
from hopsmith.tools import check_arguments

F1_THRESHOLD = 0.65  # seed 001's String-F1 cut

# A small English stopword list: enough to keep "the", "of", "in" from counting as answer keywords or
# query words, without a dependency. normalize_answer already drops a/an/the.
STOPWORDS = frozenset("""
a an the of in on at to for from by with about as into onto over under and or but nor not no yes is are was were
be been being am do does did has have had having it its it's this that these those there here which who whom whose
what when where why how than then so such very can could would should will shall may might must i me my we our you
your he him his she her they them their s also all any each both either neither one own same other some
""".split())

# Phrases by which a model tells it answers from memory (seed 001's "words like 'I remember'").
MEMORY_PHRASES = ("i remember", "i recall", "from memory", "from my knowledge", "from my own knowledge",
                  "i already know", "as far as i know", "without searching", "i am confident that",
                  "based on my knowledge", "off the top of my head")

ERROR_PREFIX = "Error: "  # what the agent loop answers a call it could not run with


# -- text -----------------------------------------------------------------------------------------

def text_tokens(text: str | None) -> list[str]:
    """`normalize_answer` tokens, also split at non-ASCII punctuation: "(1505–1572)" holds "1572",
    which SQuAD normalisation (ASCII punctuation only) would leave glued to "1505"."""
    return re.sub(r"[\W_]+", " ", normalize_answer(text)).split()


def shows(text: str | None, answers: list[str]) -> bool:
    """Whether some answer occurs in `text` as a whole-token sequence (tokens of `text_tokens`)."""
    hay = f" {' '.join(text_tokens(text))} "
    return any(g and f" {g} " in hay for g in (" ".join(text_tokens(a)) for a in answers))


# -- reading a trace ------------------------------------------------------------------------------

def _default_schemas() -> dict[str, dict]:
    return {n: _schema(n) for n in MultihopEnv.tool_names}


def trace_schemas(trace: dict) -> dict[str, dict]:
    """Tool schemas by name: the trace's own `tools`, else the multihop env's."""
    out = {}
    for s in trace.get("tools") or []:
        fn = s.get("function", s) if isinstance(s, dict) else None
        if isinstance(fn, dict) and fn.get("name"):
            out[fn["name"]] = {"type": "function", "function": fn}
    return out or _default_schemas()


def _call_of(tc) -> tuple[str | None, dict | None]:
    fn = tc.get("function", tc) if isinstance(tc, dict) else {}
    name, args = fn.get("name"), fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            args = None
    return (name if isinstance(name, str) else None), (args if isinstance(args, dict) else None)


def call_error(name: str | None, args: dict | None, schemas: dict[str, dict]) -> str | None:
    """Why a call cannot run (unknown tool, arguments not fitting the schema), or None."""
    if name not in schemas:
        return f"unknown tool {name!r}"
    if args is None:
        return "arguments are not a JSON object"
    return check_arguments(schemas[name], args)


def tool_exchanges(messages: list[dict], schemas: dict[str, dict] | None = None) -> Iterator[tuple[int, str | None, dict | None, dict | None]]:
    """(assistant message index, call name, arguments, tool message or None) for every structured call.

    The agent loop answers each call of a turn with one tool message, in the order the calls were
    written, and leaves a malformed call (bad JSON) in the content answered with "Error: ...". So the
    tool messages after an assistant turn pair with its `tool_calls` in order, except that an error
    reply is taken as a malformed call's when the structured call waiting for it is a well-formed one.
    """
    schemas = schemas or _default_schemas()
    for i, m in enumerate(messages):
        if m.get("role") != "assistant" or not m.get("tool_calls"):
            continue
        calls = [_call_of(tc) for tc in m["tool_calls"]]
        results = []
        for r in messages[i + 1:]:
            if r.get("role") != "tool":
                break
            results.append(r)
        c = 0
        for r in results:
            if c >= len(calls):
                break
            name, args = calls[c]
            content = r.get("content") or ""
            if content.startswith(ERROR_PREFIX) and call_error(name, args, schemas) is None:
                continue  # the reply to a malformed call left in the content
            yield i, name, args, r
            c += 1
        for name, args in calls[c:]:
            yield i, name, args, None


def final_answer(trace: dict) -> str | None:
    """The answer the transcript ends with (its last assistant turn, when that makes no call), else the
    row's `answer`. None when there is neither."""
    messages = trace.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "assistant" and not last.get("tool_calls") and "<tool_call>" not in strip_thinking(last.get("content") or ""):
        answer = extract_answer(last.get("content") or "")
        if answer:
            return answer
    answer = trace.get("answer")
    return str(answer) if answer else None


def search_results(trace: dict) -> list[str]:
    """Texts returned by valid search calls. llm_query replies do not count: a caller can hand
    llm_query its own guess as `text`, so an extractor's reply proves nothing was retrieved."""
    schemas = trace_schemas(trace)
    out = []
    for _, name, args, result in tool_exchanges(trace.get("messages") or [], schemas):
        if name == "search" and result is not None and call_error(name, args, schemas) is None:
            content = result.get("content") or ""
            if not content.startswith(ERROR_PREFIX):
                out.append(content)
    return out


# -- the filters ----------------------------------------------------------------------------------

def string_f1(trace: dict) -> float:
    return f1(final_answer(trace), [str(a) for a in trace.get("answers") or []])


def string_f1_ok(trace: dict, threshold: float = F1_THRESHOLD) -> bool:
    """String-F1 of the final answer against the gold answer and its aliases reaches `threshold`."""
    return string_f1(trace) >= threshold


def must_search(trace: dict) -> bool:
    """At least one search call that fits the schema and was executed (not answered with an error)."""
    return len(search_results(trace)) >= 1


def answer_keywords(answer: str | None) -> list[str]:
    """Normalised answer tokens without stopwords: "The Battle of Hastings" -> ["battle", "hastings"]."""
    return [w for w in text_tokens(answer) if w not in STOPWORDS]


def missing_keywords(trace: dict) -> list[str]:
    """Answer keywords that no search result contains (as a whole normalised token)."""
    seen = set(text_tokens(" ".join(search_results(trace))))
    return [w for w in answer_keywords(final_answer(trace)) if w not in seen]


def keyword_ok(trace: dict) -> bool:
    """Every keyword of the final answer appears in some search result, so the answer was read, not
    recalled; finding it only in the question does not count. An answer with no keywords (yes/no)
    passes: there is nothing to look up, and the F1 and must-search checks still apply."""
    return not missing_keywords(trace)


def memory_phrases(trace: dict) -> list[str]:
    """Memory claims in the assistant's turns (thinking included)."""
    text = " ".join((m.get("content") or "") for m in trace.get("messages") or [] if m.get("role") == "assistant")
    low = " ".join(text.lower().split())
    return [p for p in MEMORY_PHRASES if re.search(rf"\b{re.escape(p)}\b", low)]


def no_memory_claims(trace: dict) -> bool:
    return not memory_phrases(trace)


def asp_filter(trace: dict, threshold: float = F1_THRESHOLD) -> tuple[bool, list[str]]:
    """(kept, reasons): kept when every ASP check passes; each failed check adds "<check>: <detail>"."""
    reasons = []
    score = string_f1(trace)
    if score < threshold:
        reasons.append(f"string_f1: {score:.2f} < {threshold:.2f} (answer {final_answer(trace)!r})")
    if not must_search(trace):
        reasons.append("must_search: no valid search call")
    missing = missing_keywords(trace)
    if missing:
        reasons.append(f"keyword: answer words {missing} are in no search result")
    phrases = memory_phrases(trace)
    if phrases:
        reasons.append(f"memory: assistant says {phrases}")
    return not reasons, reasons
