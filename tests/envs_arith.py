"""A second environment, defined here in one file to show what adding one takes: sums with one `add` tool.

The loop (`hopsmith.agent.loop.run_episodes`), the metrics (`hopsmith.metrics.aggregate`) and the judge's
rules (`hopsmith.judge.rule_checks`) run it unchanged; `register()` is the one registry line that makes
`hopsmith eval --env arith` pick it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from hopsmith.chat import HermesFormat
from hopsmith.envs import ENVS, EnvSpec
from hopsmith.envs.base import Episode
from hopsmith.metrics import score
from hopsmith.tools import check_arguments, tool_schema

SYSTEM = ("You add numbers. Call the add tool as <tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}"
          "</tool_call>, one call per turn; when you know the sum, reply FINAL(sum).")


@dataclass(frozen=True)
class Sum:
    id: str
    numbers: tuple[int, ...]

    @property
    def question(self) -> str:
        return "What is " + " + ".join(map(str, self.numbers)) + "?"

    @property
    def answers(self) -> list[str]:
        return [str(sum(self.numbers))]


def add(a: int, b: int) -> str:
    """Add two whole numbers.

    Args:
        a: the first number
        b: the second number
    """
    return str(a + b)


class ArithEnv:
    format = HermesFormat()
    stop_strings = ("</tool_call>", "<tool_response>")
    answer_now = "No more tool calls. Reply now with FINAL(sum)."
    tools = [tool_schema(add)]

    def __init__(self, item: Sum):
        self.item = item
        self.messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": item.question}]
        self.calls: list[dict] = []
        self.prediction: str | None = None

    def step(self, action, text: str) -> str | None:
        if action.is_final:
            self.prediction = action.answer
            return "final" if action.answer else "empty_answer"
        for call in action.calls:
            error = call.error or (None if call.name == "add" else f"unknown tool {call.name!r}") \
                or check_arguments(self.tools[0], call.arguments)
            result = f"Error: {error}" if error else add(**call.arguments)
            self.calls.append({"name": call.name, "arguments": call.arguments, "valid": error is None,
                               "error": error, "seconds": 0.0})
            self.messages.append({"role": "tool", "name": call.name or "invalid", "content": result})
        return None

    @classmethod
    def finish_turn(cls, envs) -> None:
        pass

    def result(self, ep: Episode) -> dict:
        prediction = self.prediction if ep.stop == "final" else None
        return {"question_id": self.item.id, "dataset": "arith", "hops": len(self.item.numbers) - 1, "type": "sum",
                "question": self.item.question, "answers": self.item.answers, "prediction": prediction,
                "finished": ep.stop == "final", "stop": ep.stop, "answered_at_cap": ep.at_cap and ep.stop == "final",
                "turns": ep.turns, "tool_calls": self.calls, "seconds": ep.seconds, "tokens": ep.tokens,
                "model": ep.model, "tools": self.tools, "messages": self.messages,
                "metrics": score(prediction, self.item.answers)}


def make(cfg, **_context):
    return ArithEnv


def load(data: str, limit: int | None) -> list[Sum]:
    """`--data` is a JSON list of number lists, e.g. "[[1, 2], [3, 4, 5]]"."""
    sums = [Sum(f"sum-{i}", tuple(ns)) for i, ns in enumerate(json.loads(data))]
    return sums[:limit] if limit else sums


def register() -> None:
    ENVS["arith"] = EnvSpec(make, load=load)
