"""What an environment is: the one contract between a task and the episode loop.

The loop (`hopsmith.agent.loop.run_episodes`) knows no task. It is handed the items to run (questions,
cases, ...), `make_env(item) -> Env`, a backend and an `AgentConfig`, and per turn it: generates one reply
for every live episode (one batched call), reads each reply with the episode's action format, appends it,
hands the action to `env.step`, lets the environment finish the turn's batched work (`finish_turn`), and
applies the turn cap. Everything about the task is the environment's:

- `messages`: the conversation, starting with its system prompt and first user message; `step` appends
  what the environment answers (tool results, a simulated caller's reply).
- `tools`: the tool schemas the backend's chat template lists (typed functions; `hopsmith.tools.tool_schema`).
- `format`: how a reply is read into an `Action` (`hopsmith.chat`: HermesFormat, CodeFormat).
- `stop_strings`: the strings a reply ends at.
- `answer_now`: the user message that asks for the answer at the turn cap; None ends the episode there.
- `step(action, text) -> str | None`: run one action; return why the episode ended ("final", ...) or None.
- `finish_turn(envs)`: a class method for work batched across the turn's live episodes (the multi-hop env
  answers every `llm_query` of a turn in one extractor batch); the default does nothing.
- `result(episode) -> dict`: the episode's result row: what the item was, what happened, its scores.

An environment is added with one file in this package and one line in `hopsmith.envs.ENVS`; its factory
`make(cfg, **context) -> make_env` receives the run's `AgentConfig` and what the caller has for it
(`pools`, `extractor`, `index_cache`, `seed`), taking what it needs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from ..chat import Action, ActionFormat


@dataclass
class Episode:
    """The loop's record of one episode: what the environment does not keep itself."""

    item: Any
    env: "Env"
    model: str = "?"
    started: float = field(default_factory=time.perf_counter)
    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop: str | None = None  # why it ended; None while it runs
    at_cap: bool = False  # asked for the answer at the turn cap

    @property
    def tokens(self) -> dict:
        return {"prompt": self.prompt_tokens, "completion": self.completion_tokens}

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class Env(Protocol):
    messages: list[dict]
    tools: list[dict]
    format: ActionFormat
    stop_strings: tuple[str, ...]
    answer_now: ClassVar[str | None]

    def step(self, action: Action, text: str) -> str | None: ...

    @classmethod
    def finish_turn(cls, envs: list["Env"]) -> None: ...

    def result(self, episode: Episode) -> dict: ...


MakeEnv = Callable[[Any], Env]


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment. `make` builds `make_env` for a run; `load`, `summarize` and `describe` say
    how `hopsmith eval` reads its items and scores its rows when they are not questions with paragraph pools
    (None: `hopsmith.data` questions, `hopsmith.metrics.aggregate`, `hopsmith.metrics.format_table`)."""

    make: Callable[..., MakeEnv]
    load: Callable[..., list] | None = None  # (data, limit) -> items with an `id`
    summarize: Callable[..., dict] | None = None  # (rows, n_boot, seed) -> metrics
    describe: Callable[[dict], str] | None = None  # metrics -> the table printed
    id_key: str = "question_id"  # the row field naming its item
