"""The multi-hop QA environment of the LoRA multi-hop recipe: `search` over the question's paragraph pool
and `llm_query`, an extractor that reads text and answers a focused question.

One `MultihopEnv` lives for one episode (the `hopsmith.envs.base.Env` contract). It remembers every
paragraph a search returned (for supporting-paragraph recall and the failure taxonomy) and the last
search's hits, which `llm_query` reads when it is given no text: copying five paragraphs into a tool call
costs a small model hundreds of generated tokens, so the call can say "the last results" or name
paragraph ids instead. All `llm_query` calls of a turn, across episodes, run as one extractor batch
(`finish_turn`). Its result row is scored with the official EM/F1 (`hopsmith.metrics.score`).

    make_env = make(AgentConfig(top_k=3), pools=pools, extractor=Extractor(backend))
    rows = run_episodes(questions, make_env, backend, AgentConfig(top_k=3))
"""
from __future__ import annotations

import random
import re
import time
from functools import lru_cache

from ..chat import Action, HermesFormat, ToolCall
from ..config import AgentConfig, ConfigError
from ..metrics import normalize_answer, score
from ..records import Paragraph, Question
from ..tools import check_arguments, tool_schema
from ..tools.extract import Extractor
from ..tools.search import NO_RESULTS, BM25Index, IndexCache, format_hits, paragraph_label
from ..untrusted import neutralize
from .base import Episode

_LABEL_RE = re.compile(r"\b(p[0-9a-f]{6})\b")
# Seed 001's robustness test replaces a share of retrievals with failed ones; half of ours come back
# empty, half as a service error.
SEARCH_ERROR = "Error: the search service did not respond in time. Try the search again."
CALL_HINT = 'Write a call as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'

# -- the prompts --------------------------------------------------------------------------------------

AGENT_SYSTEM = """You answer multi-hop questions by searching a collection of paragraphs.
Work one fact at a time: search for the first fact, read the results, then search for the next fact using what you found. You may call llm_query to pull a fact out of the last search results.
When you know the answer, reply with FINAL(answer) and no tool call. The answer is short: a name, a date, a number or a phrase."""

FEW_SHOT = """

Example.
Question: In which county was Lloyd Dane born?
Assistant:
<tool_call>
{"name": "search", "arguments": {"query": "Lloyd Dane born"}}
</tool_call>
Tool: [p3f9a21] Lloyd Dane
Lloyd Dane was an American racing driver, born in Eldon, Missouri.
Assistant:
<tool_call>
{"name": "search", "arguments": {"query": "Eldon Missouri county"}}
</tool_call>
Tool: [p7c04e8] Eldon, Missouri
Eldon is a city in Miller County, Missouri, United States.
Assistant:
FINAL(Miller County)"""

THINKING_NOTE = "\nBefore each step, think inside <think> </think> about what you know and what is missing."


def agent_system_prompt(*, few_shot: bool = True, thinking: bool = False) -> str:
    return AGENT_SYSTEM + (THINKING_NOTE if thinking else "") + (FEW_SHOT if few_shot else "")


# A 135M model ignores tools when the question comes alone; naming the call format in the user turn
# took SmolLM2-135M's first-turn tool calls from 0/16 to 11/16 on bundled MuSiQue questions.
USER_TEMPLATE = "Question: {question}\nCall the search tool with a <tool_call> block. When you know the answer, reply with FINAL(answer)."


def agent_user_prompt(question: str, template: str = USER_TEMPLATE) -> str:
    return template.format(question=question)


# The turn cap's last turn: a small model that keeps searching still read the results, and an answer from
# them is worth more than none.
ANSWER_NOW = "You have no searches left. Reply now with FINAL(answer), using what the searches returned."


# -- the environment ----------------------------------------------------------------------------------

def make(cfg: AgentConfig, *, pools: dict[str, list[Paragraph]] | None = None, extractor: Extractor | None = None,
         index_cache: IndexCache | None = None, **_context):
    """`make_env(question)` for a run: each question searches its pool (`pools[question.id]`)."""
    if pools is None:
        raise ConfigError("the multihop environment searches each question's paragraph pool: give pools")
    cache = index_cache or IndexCache()
    system = agent_system_prompt(few_shot=cfg.shows_example, thinking=cfg.thinking)
    stop = ("</tool_call>", "<tool_response>") if cfg.one_call_per_turn else ("<tool_response>",)

    def make_env(q: Question) -> "MultihopEnv":
        return MultihopEnv(cache.get(pools[q.id]), k=cfg.top_k, max_chars=cfg.max_chars, extractor=extractor,
                           search_failure_rate=cfg.search_failure_rate, search_failure_seed=cfg.search_failure_seed,
                           noise_key=q.id, question=q, system=system, stop_strings=stop)
    return make_env


class MultihopEnv:
    tool_names = ("search", "llm_query")
    format = HermesFormat()
    answer_now = ANSWER_NOW

    def __init__(self, index: BM25Index, *, k: int = 5, max_chars: int | None = None, extractor: Extractor | None = None,
                 search_failure_rate: float = 0.0, search_failure_seed: int = 0, noise_key: str = "",
                 question: Question | None = None, system: str | None = None,
                 stop_strings: tuple[str, ...] = ("</tool_call>", "<tool_response>")):
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
        self.question = question
        self.stop_strings = stop_strings
        self.calls: list[dict] = []  # every call of the episode, as the result row lists them
        self._waiting: list[tuple[int, int]] = []  # llm_query calls of this turn: (call, message) positions
        self.prediction: str | None = None
        self.messages: list[dict] = []
        if question is not None:
            self.messages = [{"role": "system", "content": system or agent_system_prompt()},
                             {"role": "user", "content": agent_user_prompt(question.question)}]

    @property
    def tool_names_enabled(self) -> tuple[str, ...]:
        return self.tool_names if self.extractor is not None else ("search",)

    def schemas(self) -> list[dict]:
        return [_schema(n) for n in self.tool_names_enabled]

    @property
    def tools(self) -> list[dict]:
        return self.schemas()

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

    # -- the episode, as the agent loop drives it -------------------------------------------------

    def validate(self, name: str | None, arguments: dict) -> str | None:
        """Why a call cannot run, or None."""
        if name not in self.tool_names_enabled:
            return f"unknown tool '{name}'; available: {', '.join(self.tool_names_enabled)}"
        return check_arguments(_schema(name), arguments)

    def step(self, action: Action, text: str) -> str | None:
        """A final reply ends the episode; every call runs (llm_query waits for `finish_turn`), and a malformed
        or unknown one is answered with an error, counted, and the episode goes on."""
        if action.is_final:
            # An empty answer (nothing before an imitated tool reply, or a blank reply) is no answer.
            self.prediction = action.answer
            return "final" if action.answer else "empty_answer"
        for call in action.calls:
            error = call.error or self.validate(call.name, call.arguments)
            if error:
                self._record(call, f"Error: {error}. {CALL_HINT}", 0.0, error)
            elif call.name == "llm_query":
                self._waiting.append((len(self.calls), self._record(call, "", 0.0, None)))
            else:
                t0 = time.perf_counter()
                result = getattr(self, call.name)(**call.arguments)
                self._record(call, result, time.perf_counter() - t0, None)
        return None

    def _record(self, call: ToolCall, result: str, seconds: float, error: str | None) -> int:
        self.calls.append({"name": call.name, "arguments": call.arguments, "valid": error is None, "error": error,
                           "seconds": seconds})
        # Whatever a tool returns is untrusted (hopsmith/untrusted.py): the tools neutralize it, this is the backstop.
        self.messages.append({"role": "tool", "name": call.name or "invalid", "content": neutralize(result)})
        return len(self.messages) - 1

    @classmethod
    def finish_turn(cls, envs: list["MultihopEnv"]) -> None:
        """Every llm_query of the turn, across episodes, answered in one extractor batch."""
        waiting = [(env, c, m) for env in envs for c, m in env._waiting]
        if not waiting:
            return
        t0 = time.perf_counter()
        answers = cls.run_llm_queries([(env, env.calls[c]["arguments"]) for env, c, _ in waiting])
        # The batch's wall time is shared evenly: the latency one call costs when calls are batched.
        each = (time.perf_counter() - t0) / len(waiting)
        for (env, c, m), answer in zip(waiting, answers):
            env.messages[m]["content"] = neutralize(answer) or "(no answer found)"
            env.calls[c]["seconds"] = each
        for env in envs:
            env._waiting.clear()

    @staticmethod
    def run_llm_queries(requests: list[tuple["MultihopEnv", dict]]) -> list[str]:
        """llm_query calls answered in one batch (by the first episode's extractor)."""
        if not requests:
            return []
        extractor = requests[0][0].extractor
        pairs = [(args["question"], env.resolve_text(args.get("text", ""))) for env, args in requests]
        return [neutralize(a) for a in extractor.extract_many(pairs)]

    def result(self, ep: Episode) -> dict:
        q = self.question
        gold = [normalize_answer(a) for a in q.answers]
        seen = " ".join(normalize_answer(p.text) for p in self.retrieved.values())
        prediction = self.prediction if ep.stop == "final" else None
        row = {
            "question_id": q.id,
            "dataset": q.dataset,
            "hops": q.hops,
            "type": q.type,
            "question": q.question,
            "answers": list(q.answers),
            "prediction": prediction,
            "finished": ep.stop == "final",
            "stop": ep.stop,
            "answered_at_cap": ep.at_cap and ep.stop == "final",
            "turns": ep.turns,
            "tool_calls": self.calls,
            "supporting_ids": q.supporting_ids,
            "retrieved_ids": list(self.retrieved),
            "retrieved_text_has_answer": any(g and f" {g} " in f" {seen} " for g in gold),
            "search_failures": self.search_failures,
            "seconds": ep.seconds,
            "tokens": ep.tokens,
            "model": ep.model,
            "messages": self.messages,
        }
        row["metrics"] = score(prediction, list(q.answers), q.dataset)
        return row


@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    # The specs are in every prompt the agent sees and trains on: their docstrings are kept terse, and the
    # "return" key transformers adds (every tool returns text) is left out.
    schema = tool_schema(getattr(MultihopEnv, name))
    schema["function"].pop("return", None)
    return schema
