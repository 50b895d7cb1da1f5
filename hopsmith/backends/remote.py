"""What every remote backend shares: errors, retries, and the mapping between our messages and an API's.

Remote backends (`openai_compat.OpenAICompatBackend`, `gemini.GeminiBackend`) send each conversation as
one HTTP request. This module gives them:

- `BackendError` / `MissingKeyError`: one error type whose message names the backend, where it was
  talking to (URL or model), the HTTP status and the start of the response body;
- `with_retries(fn, ...)` / `RetryPolicy`: retry a call on 429, 5xx, connection errors and timeouts
  with exponential backoff and jitter, honouring `Retry-After`; any other error is raised at once;
- `normalize_messages`: our TRL-style chat turns turned into a shape both wire formats can take
  (every tool result paired with the call it answers, ids included);
- `render_tool_call`: a native tool call written back as the Hermes `<tool_call>` text the agent
  loop's `HermesFormat` parses, so remote and local models look the same to the loop.

Usage:
    data = with_retries(lambda: post(...), attempts=5)        # or RetryPolicy(attempts=5).run(...)
"""
from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, Callable, TypeVar

from ..chat import strip_thinking

log = logging.getLogger(__name__)

T = TypeVar("T")

# 408 is a timeout by another name; 429 and the 5xx gateway family are the transient failures
# hosted APIs and vLLM behind a proxy actually return under load.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A Retry-After far in the future is more likely a bug than a plan; never sleep longer than this.
MAX_RETRY_AFTER = 600.0
BODY_SNIPPET = 500

# How APIs say "the prompt does not fit": OpenAI ("maximum context length", code
# context_length_exceeded), vLLM (same words), Gemini ("input token count ... exceeds the maximum
# number of tokens allowed").
CONTEXT_OVERFLOW_RE = re.compile(
    r"context[_ ]length|maximum context|context window|prompt is too long|input token count"
    r"|exceeds the maximum number of tokens",
    re.I,
)


class BackendError(RuntimeError):
    """A remote backend call that failed; `status` is the HTTP status (None for connection errors)."""

    def __init__(
        self,
        detail: str,
        *,
        backend: str,
        where: str,
        status: int | None = None,
        body: str = "",
        retryable: bool | None = None,
        retry_after: float | None = None,
    ):
        self.backend = backend
        self.where = where
        self.status = status
        self.body = body
        self.retryable = (status in RETRYABLE_STATUS) if retryable is None else retryable
        self.retry_after = retry_after
        parts = [f"{backend} backend ({where})"]
        if status is not None:
            parts.append(f"HTTP {status}")
        parts.append(detail)
        if body:
            parts.append(f"body: {snippet(body)}")
        super().__init__(": ".join(parts))


class MissingKeyError(BackendError):
    """No API key: the message names the environment variable to set."""

    def __init__(self, *, backend: str, where: str, env_vars: tuple[str, ...]):
        self.env_vars = env_vars
        names = " or ".join(env_vars)
        super().__init__(
            f"no API key; set {names} (or pass api_key=...)", backend=backend, where=where, retryable=False
        )


def snippet(body: str, limit: int = BODY_SNIPPET) -> str:
    flat = " ".join(str(body).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def key_from_env(explicit: str | None, env_vars: tuple[str, ...]) -> str | None:
    """`explicit` if given, else the first of `env_vars` that is set and non-empty."""
    if explicit:
        return explicit
    return next((os.environ[v] for v in env_vars if os.environ.get(v)), None)


def is_context_overflow(status: int | None, body: str) -> bool:
    return status in (400, 413) and bool(CONTEXT_OVERFLOW_RE.search(body or ""))


# ---------------------------------------------------------------------------------------------------
# Retries


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _transient_exception_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import requests

        kinds += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    try:
        # google-genai talks through httpx.
        import httpx

        kinds += [httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError]
    except ImportError:
        pass
    return tuple(kinds)


_TRANSIENT = _transient_exception_types()


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, BackendError):
        return exc.status
    code = getattr(exc, "code", None)  # google.genai.errors.APIError
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)  # requests.HTTPError
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_retryable(exc: BaseException) -> bool:
    """Whether `exc` is worth another try: a retryable status, a connection error or a timeout."""
    if isinstance(exc, BackendError):
        return exc.retryable
    if isinstance(exc, _TRANSIENT):
        return True
    return _status_of(exc) in RETRYABLE_STATUS


def retry_after_of(exc: BaseException) -> float | None:
    """The server's requested wait, from a BackendError or from the headers of the failed response."""
    if isinstance(exc, BackendError) and exc.retry_after is not None:
        return exc.retry_after
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is None:
        return None
    try:
        return parse_retry_after(headers.get("Retry-After"))
    except AttributeError:
        return None


def backoff_delay(retry: int, base_delay: float, max_delay: float) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so concurrent
    workers that failed together do not all come back at the same instant."""
    step = min(max_delay, base_delay * (2**retry))
    return step / 2 + random.uniform(0, step / 2)


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], Any] = time.sleep,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> T:
    """`fn()`, tried up to `attempts` times while it raises retryable errors; the last error is raised.

    The wait before retry k (0-based) is the server's `Retry-After` when it sent one, else
    `backoff_delay(k, base_delay, max_delay)`. A non-retryable error is raised at once.
    """
    attempts = max(1, int(attempts))
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not retryable(exc):
                raise
            wait = retry_after_of(exc)
            if wait is None:
                wait = backoff_delay(attempt, base_delay, max_delay)
            log.warning("retrying in %.2fs (attempt %d of %d): %s", wait, attempt + 2, attempts, exc)
            sleep(wait)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class RetryPolicy:
    """The retry settings a backend passes to `with_retries`; tests swap `sleep` for a recorder."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], Any] = field(default=time.sleep, compare=False)

    def run(self, fn: Callable[[], T]) -> T:
        return with_retries(
            fn, attempts=self.attempts, base_delay=self.base_delay, max_delay=self.max_delay, sleep=self.sleep
        )


# ---------------------------------------------------------------------------------------------------
# Messages


def render_tool_call(name: str, arguments: Any) -> str:
    """A tool call in the Hermes text form that `HermesFormat.parse` reads back."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


def join_reply(content: str, calls: list[tuple[str, Any]], thinking: str = "") -> str:
    """A reply's text as a local model would have written it: thinking, prose, then its tool calls."""
    pieces = [content.strip()] if content.strip() else []
    body = "\n".join(pieces + [render_tool_call(name, args) for name, args in calls])
    if thinking.strip():
        return f"<think>\n{thinking.strip()}\n</think>\n\n{body}"
    return body


def tool_response_text(content: str) -> str:
    # Hermes form of a result no structured call matches (a malformed call stays as text in the
    # assistant turn, so its error reply is shown as text too).
    return f"<tool_response>\n{content}\n</tool_response>"


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Our chat turns in a shape both wire formats accept.

    Returns dicts of four kinds: {"role": "system"|"user", "content"}, {"role": "assistant",
    "content", "calls": [{"id", "name", "arguments"}]}, and {"role": "tool", "id", "name", "content"}.

    Wire formats require every tool result to answer a call of the assistant turn just before it, and
    every call to be answered. Our traces break both rules on purpose: a malformed call stays as text
    in the assistant turn and its error comes back as a `tool` message named "invalid" (or the name the
    model wrote). So results are paired with calls by `tool_call_id` when present, else by name in order;
    unpaired results become user text after the paired ones; unanswered calls are dropped. Call ids are
    `call_<message index>_<k>`, stable as a conversation grows. `<think>` blocks are dropped from
    earlier assistant turns, as reasoning models' own chat templates do. Unknown keys (e.g. the loop's
    internal "_call") are never passed on.
    """
    out: list[dict] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        role = m.get("role")
        content = m.get("content") or ""
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if role == "assistant":
            calls = []
            for k, tc in enumerate(m.get("tool_calls") or []):
                fn = tc.get("function", tc)
                calls.append({"id": tc.get("id") or f"call_{i}_{k}", "name": fn.get("name"), "arguments": fn.get("arguments", {})})
            # Results that follow this turn, paired with its calls.
            j = i + 1
            pending = list(calls)
            paired: list[dict] = []
            orphans: list[dict] = []
            while j < len(messages) and messages[j].get("role") == "tool":
                t = messages[j]
                t_content = t.get("content") or ""
                if not isinstance(t_content, str):
                    t_content = json.dumps(t_content, ensure_ascii=False)
                want = t.get("tool_call_id")
                match = next((c for c in pending if want and c["id"] == want), None)
                if match is None and not want:
                    match = next((c for c in pending if c["name"] == t.get("name")), None)
                if match is not None:
                    pending.remove(match)
                    paired.append({"role": "tool", "id": match["id"], "name": match["name"], "content": t_content})
                else:
                    orphans.append({"role": "user", "content": tool_response_text(t_content)})
                j += 1
            answered = {p["id"] for p in paired}
            out.append({"role": "assistant", "content": strip_thinking(content), "calls": [c for c in calls if c["id"] in answered]})
            out += paired + orphans
            i = j
            continue
        if role == "tool":
            # A result with no assistant turn before it (a hand-built conversation): plain text.
            out.append({"role": "user", "content": tool_response_text(content)})
        elif role in ("system", "user"):
            out.append({"role": role, "content": content})
        else:
            raise ValueError(f"message {i}: unknown role {role!r} (expected system/user/assistant/tool)")
        i += 1
    return out


def clean_tools(tools: list[dict] | None) -> list[dict]:
    """OpenAI function schemas with only the keys APIs accept (transformers adds a "return" key)."""
    cleaned = []
    for tool in tools or []:
        fn = tool.get("function", tool)
        entry: dict = {"name": fn["name"]}
        for key in ("description", "parameters", "strict"):
            if key in fn:
                entry[key] = fn[key]
        cleaned.append({"type": "function", "function": entry})
    return cleaned



class ConcurrentBackend:
    """`generate` for request/response APIs: one request per conversation, `concurrency` at a time,
    replies in input order. Subclasses implement `_generate_one(conversation, **kw) -> Generation`."""

    concurrency: int = 8

    def generate(self, conversations: list[list[dict]], *, tools: list[dict] | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0, thinking: bool = False, stop: list[str] | None = None) -> list:
        if not conversations:
            return []
        kw = dict(tools=tools, max_new_tokens=max_new_tokens, temperature=temperature, thinking=thinking, stop=stop)
        if len(conversations) == 1:
            return [self._generate_one(conversations[0], **kw)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            # map keeps input order whatever order the requests finish in.
            return list(pool.map(lambda c: self._generate_one(c, **kw), conversations))
