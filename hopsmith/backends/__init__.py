"""Text generation backends: one interface, several engines.

Every backend turns a batch of chat conversations into one assistant reply each. The agent loop, the
extractor and (later) judges and teachers talk only to `Backend`, so a local HF model, a vLLM server or
a hosted API are interchangeable.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The local engine's prefix cache budget: the full contexts of a batch of live episodes of a <=1B model in
# fp32 fit, with room for the model and the decode buffer on a 24 GB machine (EvalConfig.kv_cache_gb).
DEFAULT_KV_CACHE_GB = 3.0


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
        stop: list[str] | None = None,
    ) -> list[Generation]:
        """One reply per conversation, in order; a reply ends after the first of `stop` it writes."""
        ...


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """`text` up to and including the earliest stop string (engines may overshoot by a few tokens)."""
    ends = [text.find(s) + len(s) for s in stop or () if s and s in text]
    return text[: min(ends)] if ends else text
