"""Backend for any server speaking the OpenAI Chat Completions API: OpenAI itself, vLLM, SGLang, llama.cpp.

Each conversation is one POST to `{base_url}/chat/completions`, sent `concurrency` at a time from a
thread pool; replies come back in input order. Native tool calls in a reply are written back as Hermes
`<tool_call>` text, so the agent loop parses a hosted model's calls exactly as a local model's.

    backend = OpenAICompatBackend("gpt-4o-mini")                                  # OPENAI_API_KEY
    backend = OpenAICompatBackend("Qwen/Qwen3-8B", base_url="http://localhost:8000/v1")  # vLLM, no key
    gens = backend.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=32)

base_url: the argument, else $OPENAI_BASE_URL, else https://api.openai.com/v1. A key (argument, else
$OPENAI_API_KEY, or the variable named by `api_key_env`) is required unless the server is on this
machine. Newer OpenAI reasoning models refuse `max_tokens`; pass `max_tokens_field="max_completion_tokens"`.
`thinking=True` only shows reasoning the server returns (`reasoning_content`); switching a vLLM model's
thinking on or off is server-specific, e.g. `extra_body={"chat_template_kwargs": {"enable_thinking": False}}`.
A prompt the server rejects as too long comes back as `Generation(overflow=True)`, as from the HF backend.
"""
from __future__ import annotations

import json
import os
import threading
from urllib.parse import urlparse

import requests

from . import Generation, cut_at_stop
from .remote import (
    ConcurrentBackend,
    BackendError,
    MissingKeyError,
    RetryPolicy,
    clean_tools,
    is_context_overflow,
    join_reply,
    key_from_env,
    normalize_messages,
    parse_retry_after,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
# The Chat Completions API takes at most 4 stop strings; the rest are applied by cut_at_stop.
MAX_STOP = 4


def is_local_url(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.endswith(".localhost")


class OpenAICompatBackend(ConcurrentBackend):
    """Generate through an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        max_tokens_field: str = "max_tokens",
        extra_body: dict | None = None,
    ):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.where = f"{self.url}, model {model}"
        self.api_key = key_from_env(api_key, (api_key_env,))
        if not self.api_key and not is_local_url(self.base_url):
            # Fail when the backend is built, not after the first batch of an expensive run.
            raise MissingKeyError(backend="openai", where=self.base_url, env_vars=(api_key_env,))
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_tokens_field = max_tokens_field
        self.extra_body = dict(extra_body or {})
        default_name = f"openai:{model}" if self.base_url == DEFAULT_BASE_URL else f"openai:{model}@{self.base_url}"
        self.name = name or default_name
        # requests.Session is not documented as thread-safe: one per worker thread, reused for keep-alive.
        self._local = threading.local()

    # -- wire format ---------------------------------------------------------------------------------

    def wire_messages(self, conversation: list[dict]) -> list[dict]:
        """Our messages in Chat Completions form: assistant calls with ids and JSON-string arguments,
        each tool result carrying the `tool_call_id` of the call it answers."""
        wire = []
        for m in normalize_messages(conversation):
            if m["role"] == "assistant":
                msg: dict = {"role": "assistant", "content": m["content"]}
                if m["calls"]:
                    msg["tool_calls"] = [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {
                                "name": c["name"],
                                "arguments": c["arguments"] if isinstance(c["arguments"], str)
                                else json.dumps(c["arguments"], ensure_ascii=False),
                            },
                        }
                        for c in m["calls"]
                    ]
                    # The API's own replies carry null content beside tool calls.
                    msg["content"] = m["content"] or None
                wire.append(msg)
            elif m["role"] == "tool":
                wire.append({"role": "tool", "tool_call_id": m["id"], "name": m["name"], "content": m["content"]})
            else:
                wire.append({"role": m["role"], "content": m["content"]})
        return wire

    def request_body(
        self, conversation: list[dict], *, tools=None, max_new_tokens=256, temperature=0.0, stop=None
    ) -> dict:
        body: dict = {
            "model": self.model,
            "messages": self.wire_messages(conversation),
            self.max_tokens_field: int(max_new_tokens),
            "temperature": float(temperature),
        }
        if tools:
            body["tools"] = clean_tools(tools)
        if stop:
            body["stop"] = list(stop)[:MAX_STOP]
        body.update(self.extra_body)
        return body

    def parse_reply(self, data: dict, *, thinking: bool, stop: list[str] | None) -> Generation:
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise BackendError("reply has no choices", backend="openai", where=self.where, body=json.dumps(data)) from None
        content = message.get("content") or ""
        stop_reason = choice.get("stop_reason")
        if stop and isinstance(stop_reason, str) and stop_reason in stop:
            # vLLM names the stop string it ended on but leaves it out of the text; a local model keeps
            # it (`</tool_call>` closes the call), so put it back.
            content += stop_reason
        calls = []
        for tc in message.get("tool_calls") or []:
            fn = tc.get("function") or {}
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError:
                    # Left as the string: HermesFormat reports it as a malformed call, as for a local model.
                    pass
            calls.append((fn.get("name") or "", {} if args is None else args))
        # vLLM's reasoning parsers and DeepSeek use reasoning_content; newer vLLM and OpenRouter "reasoning".
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        text = join_reply(content, calls, reasoning if thinking and isinstance(reasoning, str) else "")
        usage = data.get("usage") or {}
        return Generation(
            cut_at_stop(text, stop),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    # -- transport -----------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _post_once(self, body: dict) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            response = self._session().post(self.url, json=body, headers=headers, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise BackendError(f"request failed: {exc}", backend="openai", where=self.where, retryable=True) from exc
        if response.status_code == 200:
            return response
        if is_context_overflow(response.status_code, response.text):
            return response  # the caller turns it into Generation(overflow=True)
        raise BackendError(
            "request rejected",
            backend="openai",
            where=self.where,
            status=response.status_code,
            body=response.text,
            # OpenAI answers an exhausted billing quota with 429 too; waiting does not fix that.
            retryable=False if "insufficient_quota" in response.text else None,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def _generate_one(self, conversation, *, tools, max_new_tokens, temperature, thinking, stop) -> Generation:
        body = self.request_body(conversation, tools=tools, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        response = self.retry.run(lambda: self._post_once(body))
        if response.status_code != 200:
            return Generation("", overflow=True)
        try:
            data = response.json()
        except ValueError:
            raise BackendError("reply is not JSON", backend="openai", where=self.where, status=200, body=response.text) from None
        return self.parse_reply(data, thinking=thinking, stop=stop)
