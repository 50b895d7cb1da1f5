"""Text generation backends: one interface, several engines.

Every backend turns a batch of chat conversations into one assistant reply each. The agent loop, the
extractor and (later) judges and teachers talk only to `Backend`, so a local HF model, a vLLM server or
a hosted API are interchangeable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the prompt no longer fits the model's context: nothing was generated.
    overflow: bool = False


class Backend(Protocol):
    name: str

    def generate(
        self,
        conversations: list[list[dict]],
        *,
        tools: list[dict] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        thinking: bool = False,
    ) -> list[Generation]:
        """One reply per conversation, in order."""
        ...
