"""The episode loop: every live episode of a batch takes its turn together, in any environment.

    rows = run_episodes(questions, multihop.make(cfg, pools=pools, extractor=extractor), backend, cfg)

Per turn: one `backend.generate` call for all live conversations (the HF backend decodes them in one
batch), each reply read by its environment's action format and appended, the action handed to the
environment (`env.step`: tool calls run, errors answered, a final answer ends the episode), then the
turn's batched work (`finish_turn`: every `llm_query` of the turn in one extractor batch). An episode
leaves the batch when its environment ends it, at the turn cap, or when it outgrows the model's context.
At the turn cap an episode gets one last turn that asks for the answer (`answer_at_cap`, where the
environment has an `answer_now` message); a reply that calls a tool instead ends it. What an environment
must provide is in `hopsmith.envs.base`.

`on_done(row)` is called as soon as an episode ends, so callers write results incrementally.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from ..backends import Backend
from ..config import AgentConfig
from ..envs.base import Episode, MakeEnv


def run_episodes(items: Iterable[Any], make_env: MakeEnv, backend: Backend, cfg: AgentConfig = AgentConfig(), *,
                 on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the agent on every item, `cfg.batch_size` episodes live at a time; return the result rows in the
    order the episodes ended."""
    pending = list(items)
    model = getattr(backend, "name", "?")
    live: list[Episode] = []
    rows: list[dict] = []
    while pending or live:
        while pending and len(live) < cfg.batch_size:
            item = pending.pop(0)
            live.append(Episode(item, make_env(item), model))
        take_turn(live, backend, cfg)
        for ep in [ep for ep in live if ep.stop is not None]:
            row = ep.env.result(ep)
            rows.append(row)
            if on_done:
                on_done(row)
        live = [ep for ep in live if ep.stop is None]
    return rows


def take_turn(live: list[Episode], backend: Backend, cfg: AgentConfig) -> None:
    """One turn of every live episode: generate, read, step, finish the turn's batched work, apply the cap."""
    env = live[0].env
    gens = backend.generate([ep.env.messages for ep in live], tools=env.tools, max_new_tokens=cfg.max_new_tokens,
                            temperature=cfg.temperature, thinking=cfg.thinking, stop=list(env.stop_strings))
    if len(gens) != len(live):
        raise RuntimeError(f"backend returned {len(gens)} replies for {len(live)} conversations")
    for ep, gen in zip(live, gens):
        ep.prompt_tokens += gen.prompt_tokens
        ep.completion_tokens += gen.completion_tokens
        if gen.overflow or gen.prompt_tokens > cfg.max_context_tokens:
            ep.stop = "context_overflow"
            continue
        ep.turns += 1
        action = ep.env.format.parse(gen.text)
        ep.env.messages.append(ep.env.format.assistant_message(gen.text, action))
        if ep.at_cap and not action.is_final:
            ep.stop = "max_turns"  # asked for the answer and called a tool instead
            continue
        ep.stop = ep.env.step(action, gen.text)
    type(env).finish_turn([ep.env for ep in live if ep.stop is None])
    for ep in live:
        if ep.stop is None and ep.turns >= cfg.max_turns and not ep.at_cap:
            if cfg.answer_at_cap and ep.env.answer_now:
                ep.at_cap = True
                ep.env.messages.append({"role": "user", "content": ep.env.answer_now})
            else:
                ep.stop = "max_turns"
