"""Synthetic agent traces built from gold decompositions: seed 000's five trace types.

Seed 000 trained its 1.7B agent on 1,100 synthetic traces of five types. Here each is built from a
question's gold hops, and every search in a trace is a real `MultihopEnv.search` on the question's real
pool, so a tool message is exactly what the agent would read at inference:

- `chain`: search each hop, state the fact found, go on; FINAL(answer).
- `retry`: the first search uses a deliberately poor query whose real results miss the hop's supporting
  paragraph; the assistant notes the miss and searches well.
- `labels`: explicit intermediate labels ("Hop 1: ... -> Mountrail County").
- `verify`: after the last hop, one more search that confirms the answer, then FINAL.
- `warmup`: single hop: the last hop's sub-question is the user question; one search, FINAL(hop answer).

A type whose real searches do not bring back what it needs (the hop's supporting paragraph with the
hop's answer visible in the text shown, or a poor query that really misses) is skipped for that
question with a reason (`TraceSkipped`), never faked. `replay_trace` re-runs a trace's searches and
lists every tool message that no longer matches.

Library use (the stage `stages/traces.py` drives it: `hopsmith traces --root runs/ladder`):

    from hopsmith.traces import build_trace, replay_trace
    trace = build_trace(q, pools[q.id], "chain", thinking=True)
    assert replay_trace(trace, pools) == []
"""
from __future__ import annotations

import copy
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from hopsmith.data.loaders import hop_question
from hopsmith.envs.multihop import MultihopEnv, agent_system_prompt, agent_user_prompt
from hopsmith.metrics import f1, normalize_answer
from hopsmith.records import Paragraph, Question
from hopsmith.tools.search import BM25Index, IndexCache, format_hits

from .filters import STOPWORDS, call_error, shows, tool_exchanges, trace_schemas

TRACE_TYPES = ("chain", "retry", "labels", "verify", "warmup")
DEFAULT_TOP_K = 5  # AgentConfig's defaults: the env a trace is built in must be the one inference uses
DEFAULT_MAX_CHARS = 600
_YES_NO = {"yes", "no"}
_WH = {"what", "which", "who", "whom", "whose", "when", "where", "why", "how"}
_MAX_POOR_TRIES = 8


class TraceSkipped(Exception):
    """A trace type that cannot be built honestly for a question. `reason` is a short category for
    counting ("support_not_found", "no_poor_query", ...), `detail` says what exactly."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


ExtractFn = Callable[[str, str], str]


class FnExtractor:
    """An `Extractor`-shaped wrapper of a plain `extract_fn(question, text) -> str`."""

    def __init__(self, fn: ExtractFn):
        self.fn = fn

    def extract(self, question: str, text: str) -> str:
        return self.fn(question, text)

    def extract_many(self, pairs: list[tuple[str, str]]) -> list[str]:
        return [self.fn(q, t) for q, t in pairs]


def as_extractor(x) -> object | None:
    """None, an object with `extract_many` (e.g. `hopsmith.tools.extract.Extractor`), or a function."""
    if x is None or hasattr(x, "extract_many"):
        return x
    if callable(x):
        return FnExtractor(x)
    raise TypeError(f"extractor must be an Extractor or a function (question, text) -> str, got {type(x).__name__}")


def tool_schemas(llm_query: bool) -> list[dict]:
    """The OpenAI schemas the env exposes: search, plus llm_query when an extractor is present."""
    return copy.deepcopy(_tool_schemas(llm_query))


@lru_cache(maxsize=2)
def _tool_schemas(llm_query: bool) -> list[dict]:
    return MultihopEnv(BM25Index([]), extractor=FnExtractor(lambda q, t: "") if llm_query else None).schemas()


# -- plans: the gold hops as steps ---------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One hop as the trace performs it.

    `queries` are tried in order and the first whose real results satisfy the step is used: one of
    `paragraph_ids` among the hits and, when `answer` is set, the answer visible in such a hit as shown
    (paragraphs are cut at `max_chars`). `fact` is what the assistant says it found.
    """

    need: str
    queries: tuple[str, ...]
    paragraph_ids: frozenset[str]
    answer: str | None
    fact: str
    label: str  # the value after "->" in the labels type
    subject: str = ""


@dataclass(frozen=True)
class Plan:
    question: str
    steps: tuple[Step, ...]
    answer: str
    answers: tuple[str, ...]
    answer_must_show: bool  # the final answer must appear in some search result (not for yes/no)


def keywords(text: str) -> str:
    """A keyword query from a question: its words minus question words and stopwords, case kept."""
    words = re.findall(r"\w[\w'’.&-]*\w|\w", text)
    kept = [re.sub(r"['’]s$", "", w) for w in words]
    return " ".join(w for w in kept if w and w.lower() not in STOPWORDS and w.lower() not in _WH)


def _core_title(title: str) -> str:
    return re.sub(r"\s*\(.*\)\s*$", "", title).strip() or title


def _fact(need: str, answer: str) -> str:
    need = need.rstrip()
    return f"{need} {answer}." if need.endswith("?") else f"{need}: {answer}."


def _norm_key(query: str) -> str:
    # MultihopEnv.search treats queries equal after lower-casing and space folding as repeats.
    return " ".join(query.lower().split())


def _dedupe(queries: Sequence[str]) -> tuple[str, ...]:
    seen, out = set(), []
    for query in queries:
        key = _norm_key(query)
        if key and key not in seen:
            seen.add(key)
            out.append(" ".join(query.split()))
    return tuple(out)


def _hop_paragraphs(q: Question, i: int) -> frozenset[str]:
    """The hop's supporting paragraph: the one the set names, else (2Wiki ties) the supporting
    paragraphs whose text holds the hop's answer, else every supporting paragraph."""
    hop = q.decomposition[i]
    if hop.paragraph_id:
        return frozenset({hop.paragraph_id})
    supporting = [p for p in q.paragraphs if p.supporting]
    holding = [p.id for p in supporting if shows(f"{p.title} {p.text}", [hop.answer])]
    return frozenset(holding or [p.id for p in supporting])


def hop_paragraph_ids(q: Question) -> list[frozenset[str]]:
    """Each hop's supporting paragraph ids; without a decomposition (HotpotQA) each supporting paragraph
    is a hop. Used for `searched_supporting`, also for teacher traces."""
    if q.decomposition:
        return [_hop_paragraphs(q, i) for i in range(len(q.decomposition))]
    return [frozenset({p.id}) for p in q.paragraphs if p.supporting]


def _decomposition_step(q: Question, i: int, rng: random.Random) -> Step:
    hop = q.decomposition[i]
    need = hop_question(q, i)
    raw = re.sub(r"#(\d+)", lambda m: q.decomposition[int(m.group(1)) - 1].answer
                 if 1 <= int(m.group(1)) <= len(q.decomposition) else m.group(0), hop.question)
    subject, extra = "", []
    if " >> " in raw:
        subject, relation = (s.strip() for s in raw.split(" >> ", 1))
        extra = [f"{subject} {relation}", subject]
    # Half the traces search with the sub-question, half with its keywords (the few-shot's style).
    first = [need, keywords(need)] if rng.random() < 0.5 else [keywords(need), need]
    return Step(need=need, queries=_dedupe(first + extra), paragraph_ids=_hop_paragraphs(q, i),
                answer=hop.answer, fact=_fact(need, hop.answer), label=hop.answer, subject=subject)


def _visible(p: Paragraph, max_chars: int | None) -> str:
    return format_hits([(p, 0.0)], max_chars=max_chars)


def _hotpot_steps(q: Question, max_chars: int | None) -> tuple[Step, ...]:
    """HotpotQA has no decomposition: search the supporting paragraphs' titles (bridge: the paragraph
    that names the other first; comparison: both entities), then answer."""
    supporting = [p for p in q.paragraphs if p.supporting]
    if len(supporting) != 2:
        raise TraceSkipped("no_decomposition", f"{len(supporting)} supporting paragraphs, expected 2")

    def title_step(p: Paragraph, answer: str | None, fact: str, label: str, first: bool = False) -> Step:
        # The title alone can lose to pages that cite it ("C. S. Forester" vs his novels), so the
        # title with the question's other words is tried next.
        title_words = {w.lower() for w in keywords(p.title).split()}
        rest = " ".join(w for w in keywords(q.question).split() if w.lower() not in title_words)
        queries = [p.title, _core_title(p.title), f"{p.title} {rest}"]
        need = f"the {p.title} article"
        if first and not shows(q.question, [_core_title(p.title)]):
            # A first title the question does not name is a leap the agent cannot make; the question's
            # own words come first, the title (the recipe's query) only when they miss.
            queries.insert(0, keywords(q.question))
            need = "the entity the question describes"
        return Step(need=need, queries=_dedupe(queries), paragraph_ids=frozenset({p.id}), answer=answer, fact=fact,
                    label=label, subject=p.title)

    a, b = supporting
    if q.type == "comparison":
        return (title_step(a, None, f"Found the {a.title} article.", "found"),
                title_step(b, None, f"Found the {b.title} article.", "found"))
    # Bridge: the second title must be something the agent has seen: named in the first paragraph as
    # shown, or in the question itself. Prefer the order in which the first is named by the question.
    orders = []
    for x, y in ((a, b), (b, a)):
        in_text = shows(_visible(x, max_chars), [_core_title(y.title)])
        in_question = shows(q.question, [_core_title(y.title)])
        x_named = shows(q.question, [_core_title(x.title)])
        if in_text or in_question:
            orders.append((not in_text, not x_named, x, y, in_text))
    if not orders:
        raise TraceSkipped("bridge_entity_not_visible",
                           f"neither {a.title!r} nor {b.title!r} is named in the other's shown text or the question")
    *_, x, y, in_text = min(orders, key=lambda o: o[:2])
    core = _core_title(y.title)
    first = (title_step(x, core, f"The {x.title} article mentions {core}.", core, first=True) if in_text
             else title_step(x, None, f"Found the {x.title} article.", "found", first=True))
    return (first, title_step(y, None, f"Found the {y.title} article.", "found"))


def _is_yes_no(answer: str) -> bool:
    return normalize_answer(answer) in _YES_NO


def plan_for(q: Question, *, max_chars: int | None = DEFAULT_MAX_CHARS, rng: random.Random | None = None) -> Plan:
    """The multi-hop plan of a question; raises `TraceSkipped` when there is none."""
    rng = rng or random.Random(q.id)
    if not q.meta.get("answerable", True):
        raise TraceSkipped("unanswerable", "MuSiQue marks the question unanswerable")
    if q.decomposition:
        steps = tuple(_decomposition_step(q, i, rng) for i in range(len(q.decomposition)))
    elif q.dataset == "hotpotqa" or q.type in ("bridge", "comparison"):
        steps = _hotpot_steps(q, max_chars)
    else:
        raise TraceSkipped("no_decomposition", "no gold hops and no HotpotQA type")
    return Plan(q.question, steps, q.answer, q.answers, answer_must_show=not _is_yes_no(q.answer))


def warmup_plan(q: Question, *, rng: random.Random | None = None) -> Plan:
    """The last hop alone, its sub-question (earlier answers filled in) as the user question."""
    rng = rng or random.Random(q.id)
    if not q.decomposition:
        raise TraceSkipped("no_subquestions", "no gold hops to take a single-hop question from")
    step = _decomposition_step(q, len(q.decomposition) - 1, rng)
    answer = step.answer or ""
    # The question's aliases apply when the hop's answer is the question's answer.
    answers = q.answers if normalize_answer(answer) == normalize_answer(q.answer) else (answer,)
    return Plan(step.need, (step,), answer, answers, answer_must_show=not _is_yes_no(answer))


# -- running searches -----------------------------------------------------------------------------

@dataclass
class _Found:
    query: str
    text: str
    hits: list[Paragraph]


def _probe(index: BM25Index, query: str, top_k: int, max_chars: int | None) -> _Found:
    """What `search(query)` shows as a first-time query, from a scratch env (the trace's env must not
    remember the queries we try and discard)."""
    env = MultihopEnv(index, k=top_k, max_chars=max_chars)
    text = env.search(query)
    return _Found(query, text, list(env.last_hits))


def _step_found(step: Step, found: _Found, max_chars: int | None) -> str | None:
    """None when the results satisfy the step, else why not."""
    mine = [p for p in found.hits if p.id in step.paragraph_ids]
    if not mine:
        return "support_not_found"
    if step.answer is not None and not _is_yes_no(step.answer):
        if not any(shows(_visible(p, max_chars), [step.answer]) for p in mine):
            return "answer_not_visible"
    return None


def _resolve(step: Step, index: BM25Index, used: set[str], top_k: int, max_chars: int | None, n: int) -> _Found:
    why = []
    for query in step.queries:
        if _norm_key(query) in used:
            continue
        found = _probe(index, query, top_k, max_chars)
        problem = _step_found(step, found, max_chars)
        if problem is None:
            used.add(_norm_key(query))
            return found
        why.append(problem)
    reason = "answer_not_visible" if "answer_not_visible" in why else "support_not_found"
    raise TraceSkipped(reason, f"hop {n}: no query of {list(step.queries)} returns the supporting paragraph"
                       + (f" with {step.answer!r} shown" if reason == "answer_not_visible" else ""))


def _poor_query(step: Step, plan: Plan, pool: Sequence[Paragraph], index: BM25Index, used: set[str],
                top_k: int, max_chars: int | None) -> _Found:
    """A poor first query whose real results miss the hop: the question's last words, then single
    question words, most common in the pool first."""
    words = keywords(plan.question).split()
    if not words:
        raise TraceSkipped("no_poor_query", "the question has no keywords")
    df: dict[str, int] = {}
    for p in pool:
        for w in set(re.findall(r"\w+", f"{p.title} {p.text}".lower())):
            df[w] = df.get(w, 0) + 1
    singles = sorted(dict.fromkeys(words), key=lambda w: (-df.get(w.lower(), 0), w))
    good = {_norm_key(q) for q in step.queries}
    candidates = [c for c in _dedupe([" ".join(words[-2:]), *singles]) if _norm_key(c) not in good | used]
    for query in candidates[:_MAX_POOR_TRIES]:
        found = _probe(index, query, top_k, max_chars)
        misses = not any(p.id in step.paragraph_ids for p in found.hits)
        reveals = step.answer is not None and not _is_yes_no(step.answer) and shows(found.text, [step.answer])
        if misses and not reveals:
            used.add(_norm_key(query))
            return found
    raise TraceSkipped("no_poor_query", f"each of {candidates[:_MAX_POOR_TRIES]} finds hop 1's paragraph or answer")


def _verify_query(plan: Plan, q: Question, index: BM25Index, used: set[str], top_k: int, max_chars: int | None) -> _Found:
    """A search confirming the answer: it must show the answer in one of the question's supporting paragraphs."""
    if not plan.answer_must_show:
        raise TraceSkipped("yes_no_answer", "a yes/no answer cannot be confirmed by a search")
    last = plan.steps[-1]
    context = keywords(last.subject or last.need).split()[:4]
    candidates = _dedupe([f"{plan.answer} {' '.join(context)}", f"{plan.answer} {' '.join(keywords(plan.question).split()[:3])}",
                          plan.answer])
    supporting = set(q.supporting_ids)
    for query in candidates:
        if _norm_key(query) in used:
            continue
        found = _probe(index, query, top_k, max_chars)
        if any(p.id in supporting and shows(_visible(p, max_chars), list(plan.answers)) for p in found.hits):
            used.add(_norm_key(query))
            return found
    raise TraceSkipped("verify_not_found", f"no query of {candidates} shows {plan.answer!r} in a supporting paragraph")


# -- writing the conversation ---------------------------------------------------------------------

class _Conversation:
    """Messages in the agent loop's format, every tool message produced by the trace's own env."""

    def __init__(self, question: str, env: MultihopEnv, thinking: bool):
        self.env = env
        self.thinking = thinking
        self.messages: list[dict] = [
            {"role": "system", "content": agent_system_prompt(few_shot=False, thinking=thinking)},
            {"role": "user", "content": agent_user_prompt(question)},
        ]
        self.calls: list[dict] = []

    def _content(self, reason: str, text: str) -> str:
        if self.thinking:
            return f"<think>{reason}</think>\n{text}".strip()
        return text.strip()

    def _call(self, reason: str, text: str, name: str, arguments: dict) -> str:
        self.messages.append({"role": "assistant", "content": self._content(reason, text),
                              "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]})
        result = getattr(self.env, name)(**arguments)
        if name == "llm_query":
            result = result or "(no answer found)"  # what the agent loop writes for an empty extraction
        self.messages.append({"role": "tool", "name": name, "content": result})
        self.calls.append({"name": name, "arguments": arguments, "valid": True})
        return result

    def search(self, reason: str, text: str, found: _Found) -> None:
        result = self._call(reason, text, "search", {"query": found.query})
        if result != found.text:  # the trace env saw this query before: a bug in query bookkeeping
            raise RuntimeError(f"search {found.query!r} returned other text in the trace than when probed")

    def llm_query(self, reason: str, question: str) -> str:
        return self._call(reason, "", "llm_query", {"question": question})

    def final(self, reason: str, text: str, answer: str) -> None:
        body = f"{text}\nFINAL({answer})" if text else f"FINAL({answer})"
        self.messages.append({"role": "assistant", "content": self._content(reason, body)})


def _check_extraction(got: str, step: Step, n: int) -> None:
    if step.answer is None:
        return
    if not (shows(got, [step.answer]) or f1(got, [step.answer]) >= 0.65):
        raise TraceSkipped("extractor_mismatch", f"hop {n}: llm_query returned {got!r}, the hop's answer is {step.answer!r}")


def _write(kind: str, plan: Plan, conv: _Conversation, found: list[_Found], poor: _Found | None,
           verify: _Found | None, use_llm_query: bool) -> None:
    steps, n = plan.steps, len(plan.steps)
    facts = [s.fact for s in steps]
    first_reason = (f"I need {n} facts. First: {steps[0].need}" if n > 1 else f"One fact answers this: {steps[0].need}")
    if kind == "labels":
        first_text = f"Hop 1: {steps[0].need}"
    else:
        first_text = ""
    if poor is not None:
        conv.search(first_reason, first_text, poor)
        conv.search(f'The query "{poor.query}" was too vague: no result answers "{steps[0].need}".',
                    "These results do not answer it. Searching more specifically.", found[0])
    else:
        conv.search(first_reason, first_text, found[0])
    for i in range(1, n + 1):
        prev = steps[i - 1]
        if use_llm_query and prev.answer is not None:
            got = conv.llm_query(f"Let me pull the answer to \"{prev.need}\" out of these results.", prev.need)
            _check_extraction(got, prev, i)
        if i == n:
            break
        nxt = steps[i]
        if kind == "labels":
            text = f"Hop {i}: {prev.need} -> {prev.label}\nHop {i + 1}: {nxt.need}"
        else:
            text = prev.fact
        conv.search(f"That settles hop {i}. Next: {nxt.need}", text, found[i])
    so = f"So the answer is {plan.answer}."
    if kind == "verify" and verify is not None:
        conv.search(f"The answer should be {plan.answer}. One more search to confirm it.", f"{facts[-1]} Checking it.", verify)
        conv.final(f"The results confirm {plan.answer}.", "", plan.answer)
    elif kind == "labels":
        conv.final(f"{facts[-1]} {so}", f"Hop {n}: {steps[-1].need} -> {steps[-1].label}", plan.answer)
    else:
        # When the last hop's answer is not the answer (comparisons), the answer follows from every fact.
        last_is_answer = normalize_answer(steps[-1].answer or "") == normalize_answer(plan.answer)
        known = facts[-1] if last_is_answer else " ".join(facts)
        conv.final(f"{known} {so}", "", plan.answer)


def build_trace(
    q: Question,
    pool: Sequence[Paragraph],
    kind: str,
    *,
    thinking: bool = False,
    rng: random.Random | None = None,
    top_k: int = DEFAULT_TOP_K,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    index_cache: IndexCache | None = None,
    use_llm_query: bool = False,
    extractor=None,
    advertise_llm_query: bool = True,
) -> dict:
    """One trace row of type `kind` for question `q` searched over `pool`; raises `TraceSkipped`.

    `use_llm_query` adds an llm_query turn after each hop's search, answered by `extractor` (an
    `Extractor` or a function (question, text) -> str); a reply that does not match the hop's answer
    skips the trace. `advertise_llm_query` lists llm_query among the trace's tools even when no turn
    calls it, as `hopsmith eval` does with its default extractor, so training renders the same prompt.
    """
    if kind not in TRACE_TYPES:
        raise ValueError(f"unknown trace type {kind!r}; known: {', '.join(TRACE_TYPES)}")
    extractor = as_extractor(extractor)
    if use_llm_query and extractor is None:
        raise ValueError("use_llm_query needs an extractor (a function (question, text) -> str)")
    started = time.perf_counter()
    rng = rng or random.Random(f"{q.id}:{kind}:{thinking}")
    plan = warmup_plan(q, rng=rng) if kind == "warmup" else plan_for(q, max_chars=max_chars, rng=rng)
    # `is None`, not `or`: an empty IndexCache is falsy (it has __len__).
    index = (IndexCache() if index_cache is None else index_cache).get(pool)

    used: set[str] = set()
    poor = _poor_query(plan.steps[0], plan, pool, index, used, top_k, max_chars) if kind == "retry" else None
    found = [_resolve(step, index, used, top_k, max_chars, n) for n, step in enumerate(plan.steps, start=1)]
    if plan.answer_must_show and not any(shows(f.text, list(plan.answers)) for f in found):
        raise TraceSkipped("final_answer_not_visible", f"{plan.answer!r} is in no result of the hop searches")
    verify = _verify_query(plan, q, index, used, top_k, max_chars) if kind == "verify" else None

    env = MultihopEnv(index, k=top_k, max_chars=max_chars, extractor=extractor if use_llm_query else None)
    conv = _Conversation(plan.question, env, thinking)
    _write(kind, plan, conv, found, poor, verify, use_llm_query)

    hop_ids = [plan.steps[0].paragraph_ids] if kind == "warmup" else [s.paragraph_ids for s in plan.steps]
    variant = "think" if thinking else "plain"
    return {
        "id": f"{q.id}:{kind}:{variant}",
        "question_id": q.id,
        "dataset": q.dataset,
        "source": f"synthetic:{kind}",
        "type": kind,
        "variant": variant,
        "question": plan.question,
        "messages": conv.messages,
        "tools": tool_schemas(use_llm_query or advertise_llm_query),
        "answer": plan.answer,
        "answers": list(plan.answers),
        "tool_calls": conv.calls,
        "searched_supporting": [bool(ids & env.retrieved.keys()) for ids in hop_ids],
        "thinking": thinking,
        "tokens": None,
        "seconds": time.perf_counter() - started,
        "env": {"top_k": top_k, "max_chars": max_chars},
    }


# -- many questions -------------------------------------------------------------------------------

def parse_weights(spec: str | dict[str, float]) -> dict[str, float]:
    """"chain=2,retry=1" (or a dict) -> weights for every type; types left out weigh 0."""
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in (s.strip() for s in spec.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"weights: {part!r} is not TYPE=WEIGHT")
            try:
                items.append((name.strip(), float(value)))
            except ValueError:
                raise ValueError(f"weights: {value.strip()!r} is not a number (in {part!r})") from None
    weights = {t: 0.0 for t in TRACE_TYPES}
    for name, value in items:
        if name not in weights:
            raise ValueError(f"weights: unknown trace type {name!r}; known: {', '.join(TRACE_TYPES)}")
        if value < 0 or value != value:
            raise ValueError(f"weights: {name} must be >= 0, got {value}")
        weights[name] = float(value)
    if not any(weights.values()):
        raise ValueError("weights: every trace type weighs 0")
    return weights


def type_order(weights: dict[str, float], rng: random.Random) -> list[str]:
    """Types with positive weight in a weighted random order without replacement (Efraimidis-Spirakis):
    the first is drawn with probability proportional to its weight, the next from the rest, and so on."""
    keyed = [(rng.random() ** (1.0 / w), t) for t, w in weights.items() if w > 0]
    return [t for _, t in sorted(keyed, reverse=True)]


def generate(
    questions: Sequence[Question],
    pools: dict[str, list[Paragraph]],
    *,
    weights: str | dict[str, float] = "chain=1,retry=1,labels=1,verify=1,warmup=1",
    per_question: int = 1,
    thinking_fraction: float = 0.5,
    fallback: bool = True,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
    max_chars: int | None = DEFAULT_MAX_CHARS,
    use_llm_query: bool = False,
    extractor=None,
    advertise_llm_query: bool = True,
    index_cache: IndexCache | None = None,
    on_trace: Callable[[dict], None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Up to `per_question` traces of distinct types per question: (traces, skips).

    Each question draws its own type order from `weights` and its thinking variants with a generator
    seeded by `seed` and the question id, so a question's traces do not depend on which other
    questions (or shard) it is generated with. With `fallback`, a type skipped for a question makes way
    for the next type in its order; every skip is returned as {question_id, type, reason, detail}.
    """
    w = parse_weights(weights)
    cache = IndexCache() if index_cache is None else index_cache
    traces, skips = [], []
    for q in questions:
        rng = random.Random(f"{seed}:{q.id}")
        order = type_order(w, rng)
        wanted = min(per_question, len(order))
        candidates = order if fallback else order[:wanted]
        made = 0
        for kind in candidates:
            if made >= wanted:
                break
            thinking = rng.random() < thinking_fraction
            try:
                trace = build_trace(q, pools[q.id], kind, thinking=thinking, rng=random.Random(f"{seed}:{q.id}:{kind}"),
                                    top_k=top_k, max_chars=max_chars, index_cache=cache, use_llm_query=use_llm_query,
                                    extractor=extractor, advertise_llm_query=advertise_llm_query)
            except TraceSkipped as skip:
                skips.append({"question_id": q.id, "type": kind, "reason": skip.reason, "detail": skip.detail})
                continue
            traces.append(trace)
            made += 1
            if on_trace:
                on_trace(trace)
    return traces, skips


# -- replay ---------------------------------------------------------------------------------------

def replay_trace(
    trace: dict,
    pools: dict[str, Sequence[Paragraph]],
    *,
    extractor=None,
    top_k: int | None = None,
    max_chars: int | None | str = "trace",
    index_cache: IndexCache | None = None,
) -> list[str]:
    """Re-run every search call of `trace` on its question's pool, in order, in a fresh env; return one
    line per tool message that differs from what the tool returns now (empty: the trace replays).

    `top_k`/`max_chars` default to the trace's recorded `env` (else the agent loop's defaults).
    llm_query calls are re-run only when an `extractor` is given; calls that could not run (answered
    with an error) are checked to still be refused.
    """
    recorded = trace.get("env") or {}
    k = top_k if top_k is not None else int(recorded.get("top_k", DEFAULT_TOP_K))
    chars = recorded.get("max_chars", DEFAULT_MAX_CHARS) if max_chars == "trace" else max_chars
    qid = trace.get("question_id")
    if qid not in pools:
        return [f"no pool for question {qid!r}"]
    index = (IndexCache() if index_cache is None else index_cache).get(pools[qid])
    extractor = as_extractor(extractor)
    env = MultihopEnv(index, k=k, max_chars=chars, extractor=extractor)
    schemas = trace_schemas(trace)
    problems = []
    for n, (at, name, args, result) in enumerate(tool_exchanges(trace.get("messages") or [], schemas), start=1):
        where = f"call {n} (message {at}, {name}({args}))"
        if result is None:
            problems.append(f"{where}: no tool message answers it")
            continue
        content = result.get("content") or ""
        if result.get("name") not in (name, "invalid"):
            problems.append(f"{where}: answered by a tool message named {result.get('name')!r}")
        error = call_error(name, args, schemas)
        if error is not None:
            if not content.startswith("Error: "):
                problems.append(f"{where}: the call is invalid ({error}) but its tool message is not an error")
            continue
        if name == "search":
            now = env.search(**args)
        elif name == "llm_query" and extractor is not None:
            now = env.llm_query(**args) or "(no answer found)"
        else:
            continue
        if now != content:
            problems.append(f"{where}: tool message differs from what {name} returns now "
                            f"(recorded {content[:80]!r}..., now {now[:80]!r}...)")
    return problems
