"""What every remote backend shares: errors, retries, and the mapping between our messages and an API's.

Remote backends (`openai_compat.OpenAICompatBackend`, `gemini.GeminiBackend`) send each conversation as
one HTTP request. This module gives them:

- `BackendError` / `BackendSetupError` / `MissingKeyError`: one error type whose message names the backend,
  where it was talking to (URL or model), the HTTP status, the start of the response body and, where we know
  it, the fix; `BackendSetupError` is what a backend's check finds before a run starts (a bad key, URL or
  model name: the CLI prints it as one line and exits 2);
- `with_retries(fn, ...)` / `RetryPolicy`: retry a call on 429, 5xx, connection errors and timeouts
  with exponential backoff and jitter, honouring `Retry-After` up to `MAX_RETRY_AFTER` (a longer one is
  not slept through: the error is raised); any other error is raised at once. The Gemini backend uses it;
  the OpenAI-compatible one leaves retries to the `openai` client;
- `tools_in_prompt`: a conversation with its tool specs written into the system prompt, calls and results
  as text, exactly as the project's ChatML-with-tools template renders them (for servers that ignore the
  `tools` field);
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
# A server that asks for a longer pause than this (a daily quota, a bug) is not waited for: the error is raised.
# The same limit as the `openai` client's own (two minutes).
MAX_RETRY_AFTER = 120.0
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


class BackendSetupError(BackendError):
    """A backend that cannot be used as specified: a bad key, URL or model name, found by its check before a
    run writes anything. Its message is one line that says the fix; never retried."""

    def __init__(self, detail: str, **kw):
        kw.setdefault("backend", "backend")
        kw.setdefault("where", "?")
        kw["retryable"] = False
        super().__init__(detail, **kw)


class MissingKeyError(BackendSetupError):
    """No API key: the message names the environment variable to set."""

    def __init__(self, *, backend: str, where: str, env_vars: tuple[str, ...]):
        self.env_vars = env_vars
        names = " or ".join(env_vars)
        super().__init__(f"no API key; set {names} (or api_key_env=NAME in the spec)", backend=backend, where=where)


def snippet(body: str, limit: int = BODY_SNIPPET) -> str:
    flat = " ".join(str(body).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def some_of(ids: list[str], limit: int = 12) -> str:
    """The first `limit` ids, comma-separated, and how many more there are."""
    return ", ".join(ids[:limit]) + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


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
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if unusable. Not capped
    here: `with_retries` refuses to sleep through more than MAX_RETRY_AFTER."""
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
    return max(seconds, 0.0)


def _transient_exception_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
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
    response = getattr(exc, "response", None)  # an httpx error
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
    `backoff_delay(k, base_delay, max_delay)`. A non-retryable error is raised at once, and so is one whose
    `Retry-After` asks for more than MAX_RETRY_AFTER seconds (a quota that resets tomorrow is not waited for).
    """
    attempts = max(1, int(attempts))
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt + 1 >= attempts or not retryable(exc):
                raise
            wait = retry_after_of(exc)
            if wait is not None and wait > MAX_RETRY_AFTER:
                log.warning("not retrying: the server asks to wait %.0f s, more than %.0f s: %s", wait, MAX_RETRY_AFTER, exc)
                raise
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
        if role == "assistant":
            i = _assistant_turn(messages, i, out)
            continue
        if role == "tool":
            # A result with no assistant turn before it (a hand-built conversation): plain text.
            out.append({"role": "user", "content": tool_response_text(_text(m))})
        elif role in ("system", "user"):
            out.append({"role": role, "content": _text(m)})
        else:
            raise ValueError(f"message {i}: unknown role {role!r} (expected system/user/assistant/tool)")
        i += 1
    return out


def _text(message: dict) -> str:
    content = message.get("content") or ""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def _assistant_turn(messages: list[dict], i: int, out: list[dict]) -> int:
    """Append assistant turn i and the tool results after it (paired with its calls, or as user text) to
    `out`; the index of the first message after them."""
    calls = []
    for k, tc in enumerate(messages[i].get("tool_calls") or []):
        fn = tc.get("function", tc)
        calls.append({"id": tc.get("id") or f"call_{i}_{k}", "name": fn.get("name"), "arguments": fn.get("arguments", {})})
    j = i + 1
    pending = list(calls)
    paired: list[dict] = []
    orphans: list[dict] = []
    while j < len(messages) and messages[j].get("role") == "tool":
        t = messages[j]
        want = t.get("tool_call_id")
        match = next((c for c in pending if want and c["id"] == want), None)
        if match is None and not want:
            match = next((c for c in pending if c["name"] == t.get("name")), None)
        if match is not None:
            pending.remove(match)
            paired.append({"role": "tool", "id": match["id"], "name": match["name"], "content": _text(t)})
        else:
            orphans.append({"role": "user", "content": tool_response_text(_text(t))})
        j += 1
    answered = {p["id"] for p in paired}
    out.append({"role": "assistant", "content": strip_thinking(_text(messages[i])),
                "calls": [c for c in calls if c["id"] in answered]})
    out += paired + orphans
    return j


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



# ---------------------------------------------------------------------------------------------------
# Tools in the prompt, for servers that ignore the `tools` field

TOOL_MODES = ("auto", "field", "prompt")
# What the project's ChatML-with-tools template writes in a system turn without tools (it always has one).
DEFAULT_SYSTEM = "You are a helpful assistant."


def tools_prompt(tools: list[dict]) -> str:
    """The text our ChatML-with-tools template adds to the system turn for `tools`, rendered by the template
    itself (so a served model reads exactly what a local model of the same family reads)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from .templates import CHATML_TOOLS_TEMPLATE

    marker = "\x00system\x00"
    [text], _ = render_jinja_template([[{"role": "system", "content": marker}]], tools=tools,
                                      chat_template=CHATML_TOOLS_TEMPLATE)
    return text.split(marker, 1)[1].split("<|im_end|>", 1)[0]


def _call_text(call: dict) -> str:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return '<tool_call>\n{"name": "' + str(fn.get("name")) + '", "arguments": ' + args + "}\n</tool_call>"


def tools_in_prompt(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """`messages` for a server that does not render tools: the tool specs appended to the system turn, each
    assistant call written into its turn as a `<tool_call>` block, and each run of tool results sent back as
    one user turn of `<tool_response>` blocks. This is what `hopsmith/templates/chatml_tools.jinja` renders,
    message by message, so a ChatML server's plain template yields the same prompt (tests check it)."""
    out: list[dict] = []
    rest = list(messages)
    if rest and rest[0].get("role") == "system":
        system, rest = str(rest[0].get("content") or ""), rest[1:]
    else:
        system = DEFAULT_SYSTEM
    out.append({"role": "system", "content": system + (tools_prompt(tools) if tools else "")})
    results: list[str] = []
    for m in rest:
        role = m.get("role")
        if role != "tool" and results:
            out.append({"role": "user", "content": "\n".join(results)})
            results = []
        if role == "tool":
            results.append(f"<tool_response>\n{m.get('content') or ''}\n</tool_response>")
        elif role == "assistant":
            content = m.get("content") or ""
            for k, call in enumerate(m.get("tool_calls") or []):
                content += ("\n" if content or k else "") + _call_text(call)
            out.append({"role": "assistant", "content": content})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    if results:
        out.append({"role": "user", "content": "\n".join(results)})
    return out


def close_tool_call(text: str, stop: list[str] | None, finish_reason: str | None) -> str:
    """Servers that leave the stop string out of a reply (OpenAI, transformers serve) end a call written as
    text before its `</tool_call>`: put it back, as a local model writes it."""
    if (finish_reason == "stop" and stop and "</tool_call>" in stop
            and text.rfind("<tool_call>") > text.rfind("</tool_call>")):
        return text.rstrip() + "\n</tool_call>"
    return text


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
