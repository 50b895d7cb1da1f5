"""The episode loop: every live episode of a batch takes its turn together.

Per turn: one `backend.generate` call for all live conversations (the HF backend pads them left and
decodes them in one `generate`), each reply parsed by the action format, tool calls executed (all
`llm_query` calls of the turn in one extractor batch), results appended as `tool` messages. An episode
leaves the batch when it answers, reaches the turn cap, or outgrows the model's context. At the turn cap
an episode gets one last turn that asks for the answer (`answer_at_cap`): a small model that keeps
searching still read the results, and an answer from them is worth more than none; such rows say
`answered_at_cap`. A malformed or unknown call is answered with an error message, counted, and the
episode goes on.

`on_done(row)` is called as soon as an episode ends, so callers write results incrementally.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..backends import Backend
from ..metrics import normalize_answer, score
from ..records import Paragraph, Question
from ..tools.extract import Extractor
from ..tools.search import IndexCache
from ..untrusted import neutralize
from ..envs.multihop import MultihopEnv
from .format import ActionFormat, HermesFormat, ToolCall
from .prompts import agent_system_prompt, agent_user_prompt


@dataclass(frozen=True)
class AgentConfig:
    max_turns: int = 20
    max_new_tokens: int = 256
    temperature: float = 0.0
    thinking: bool = False
    few_shot: bool = True
    top_k: int = 5
    max_chars: int | None = 600  # per paragraph shown to the agent; None shows it whole
    # End a reply at its first </tool_call>: one action per turn, and no tokens spent on what a small
    # model writes after its call. A reply always ends where the model starts writing a <tool_response>
    # itself: that is the model imagining a tool's answer (SmolLM2-135M does it on most second turns).
    one_call_per_turn: bool = True
    # An episode whose prompt passes this many tokens ends (stop "context_overflow"); the backend also
    # stops at the model's own context length, whichever is smaller.
    max_context_tokens: int = 8192
    # At the turn cap, one more turn that asks for FINAL(answer) from what was found; off = the episode
    # ends there without an answer.
    answer_at_cap: bool = True
    # Noisy retrieval (seed 001's robustness test): this share of searches fails (an empty result or a
    # service error), drawn per question, query and attempt from `search_failure_seed`.
    search_failure_rate: float = 0.0
    search_failure_seed: int = 0


ANSWER_NOW = "You have no searches left. Reply now with FINAL(answer), using what the searches returned."


@dataclass
class _Episode:
    question: Question
    env: MultihopEnv
    messages: list[dict]
    started: float
    turns: int = 0
    calls: list[dict] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prediction: str | None = None
    stop: str | None = None
    at_cap: bool = False


def run_episodes(
    questions: Iterable[Question],
    pools: dict[str, list[Paragraph]],
    backend: Backend,
    cfg: AgentConfig = AgentConfig(),
    *,
    extractor: Extractor | None = None,
    action_format: ActionFormat | None = None,
    index_cache: IndexCache | None = None,
    batch_size: int = 16,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run the agent on every question, `batch_size` episodes live at a time; return the result rows."""
    fmt = action_format or HermesFormat()
    cache = index_cache or IndexCache()
    pending = list(questions)
    rows: list[dict] = []
    system = agent_system_prompt(few_shot=cfg.few_shot, thinking=cfg.thinking)
    live: list[_Episode] = []

    def admit():
        while pending and len(live) < batch_size:
            q = pending.pop(0)
            env = MultihopEnv(cache.get(pools[q.id]), k=cfg.top_k, max_chars=cfg.max_chars, extractor=extractor,
                              search_failure_rate=cfg.search_failure_rate, search_failure_seed=cfg.search_failure_seed,
                              noise_key=q.id)
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": agent_user_prompt(q.question)}]
            live.append(_Episode(q, env, msgs, time.perf_counter()))

    admit()
    while live:
        tools = live[0].env.schemas()
        gens = backend.generate(
            [ep.messages for ep in live],
            tools=tools,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            thinking=cfg.thinking,
            stop=["</tool_call>", "<tool_response>"] if cfg.one_call_per_turn else ["<tool_response>"],
        )
        llm_queries: list[tuple[_Episode, ToolCall, int]] = []
        for ep, gen in zip(live, gens):
            ep.prompt_tokens += gen.prompt_tokens
            ep.completion_tokens += gen.completion_tokens
            if gen.overflow or gen.prompt_tokens > cfg.max_context_tokens:
                ep.stop = "context_overflow"
                continue
            ep.turns += 1
            action = fmt.parse(gen.text)
            ep.messages.append(fmt.assistant_message(gen.text, action))
            if action.is_final:
                # An empty answer (nothing before an imitated tool reply, or a blank reply) is no answer.
                ep.prediction, ep.stop = action.answer, "final" if action.answer else "empty_answer"
                continue
            if ep.at_cap:
                ep.stop = "max_turns"  # asked for the answer and called a tool instead
                continue
            for call in action.calls:
                error = call.error or ep.env.validate(call.name, call.arguments)
                if error:
                    _record(ep, call, f"Error: {error}. Write a call as <tool_call>{{\"name\": ..., \"arguments\": {{...}}}}</tool_call>.", 0.0, error)
                elif call.name == "llm_query":
                    # Placeholder now, filled once the turn's extractor batch has run.
                    llm_queries.append((ep, call, _record(ep, call, "", 0.0, None)))
                else:
                    t0 = time.perf_counter()
                    result = getattr(ep.env, call.name)(**call.arguments)
                    _record(ep, call, result, time.perf_counter() - t0, None)
        if llm_queries:
            t0 = time.perf_counter()
            answers = MultihopEnv.run_llm_queries([(ep.env, call.arguments) for ep, call, _ in llm_queries])
            # The batch's wall time is shared evenly: the latency one call costs when calls are batched.
            each = (time.perf_counter() - t0) / len(llm_queries)
            for (ep, _call, pos), answer in zip(llm_queries, answers):
                ep.messages[pos]["content"] = neutralize(answer) or "(no answer found)"
                ep.calls[ep.messages[pos]["_call"]]["seconds"] = each
        for ep in live:
            if ep.stop is None and ep.turns >= cfg.max_turns and not ep.at_cap:
                if cfg.answer_at_cap:
                    ep.at_cap = True
                    ep.messages.append({"role": "user", "content": ANSWER_NOW})
                else:
                    ep.stop = "max_turns"
        done = [ep for ep in live if ep.stop is not None]
        live = [ep for ep in live if ep.stop is None]
        for ep in done:
            row = _result_row(ep, backend)
            rows.append(row)
            if on_done:
                on_done(row)
        admit()
    for row in rows:
        for m in row["messages"]:
            m.pop("_call", None)
    return rows


def _record(ep: _Episode, call: ToolCall, result: str, seconds: float, error: str | None) -> int:
    ep.calls.append(
        {"name": call.name, "arguments": call.arguments, "valid": error is None, "error": error, "seconds": seconds}
    )
    # Whatever a tool returns is untrusted (see hopsmith/untrusted.py); envs neutralize too, this is the backstop.
    ep.messages.append({"role": "tool", "name": call.name or "invalid", "content": neutralize(result),
                        "_call": len(ep.calls) - 1})
    return len(ep.messages) - 1


def _result_row(ep: _Episode, backend: Backend) -> dict:
    q = ep.question
    for m in ep.messages:
        m.pop("_call", None)
    retrieved = list(ep.env.retrieved)
    gold = [normalize_answer(a) for a in q.answers]
    seen = " ".join(normalize_answer(p.text) for p in ep.env.retrieved.values())
    has_answer = any(g and f" {g} " in f" {seen} " for g in gold)
    prediction = ep.prediction if ep.stop == "final" else None
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
        "tool_calls": ep.calls,
        "supporting_ids": q.supporting_ids,
        "retrieved_ids": retrieved,
        "retrieved_text_has_answer": has_answer,
        "search_failures": ep.env.search_failures,
        "seconds": time.perf_counter() - ep.started,
        "tokens": {"prompt": ep.prompt_tokens, "completion": ep.completion_tokens},
        "model": getattr(backend, "name", "?"),
        "messages": ep.messages,
    }
    row["metrics"] = score(prediction, list(q.answers), q.dataset)
    return row
