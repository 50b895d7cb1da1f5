"""Backend for any server speaking the OpenAI Chat Completions API (OpenAI, vLLM, SGLang, `transformers
serve`, llama.cpp), through the official `openai` client.

Each conversation is one `chat.completions.create` call, `concurrency` at a time from a thread pool;
replies come back in input order. Native tool calls in a reply are written back as Hermes `<tool_call>`
text, so the agent loop parses a hosted model's calls exactly as a local model's.

    backend = OpenAICompatBackend("gpt-4o-mini")                                  # OPENAI_API_KEY
    backend = OpenAICompatBackend("Qwen/Qwen3-8B", base_url="http://localhost:8000/v1")  # vLLM, no key
    backend.check(tools=True)     # before a run: key, URL, model name, and whether the server renders tools
    gens = backend.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=32)

Timeouts, retries and error types are the client's: `timeout` seconds per request, `max_retries` retries
of connection errors, timeouts, 408/409/429 and 5xx with the client's backoff, honouring `Retry-After` up
to two minutes (a longer one is not waited for). A 429 that says the account's quota is used up
(`insufficient_quota`) is never retried: waiting does not add credit. Every failure reaches the caller as
a `BackendError` whose one-line message says what to fix (a 404 asks whether the base URL ends in /v1; an
unknown model lists the ids the server's /v1/models gives).

base_url: the argument, else $OPENAI_BASE_URL, else https://api.openai.com/v1. A key (argument, else
$OPENAI_API_KEY, or the variable named by `api_key_env`) is required unless the server is on this
machine. The completion budget goes in `max_completion_tokens` (the current API field); older servers
that only know `max_tokens` take `max_tokens_field="max_tokens"`; `max_completion_tokens=N` sends N in
every request whatever the stage asks (a reasoning model needs room to think). `extra_body` fields go
into every request, e.g. `{"chat_template_kwargs": {"enable_thinking": False}}` for a vLLM Qwen3.

Tools: `tools="field"` sends the tool specs in the request's `tools` field; `"prompt"` writes them into
the system prompt with the project's ChatML-with-tools template (`remote.tools_in_prompt`), for servers
whose model template renders no tools; `"auto"` (the default) lets `check(tools=True)` decide by probing
(see `check`). `thinking=True` only shows reasoning the server returns (`reasoning_content`). A prompt the
server rejects as too long comes back as `Generation(overflow=True)`, as from the HF backend.
"""
from __future__ import annotations

import json
import os
from urllib.parse import urlparse

from . import Generation, cut_at_stop
from .remote import (
    TOOL_MODES,
    BackendError,
    BackendSetupError,
    ConcurrentBackend,
    MissingKeyError,
    clean_tools,
    close_tool_call,
    is_context_overflow,
    join_reply,
    key_from_env,
    normalize_messages,
    snippet,
    some_of,
    tools_in_prompt,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
# The Chat Completions API takes at most 4 stop strings; the rest are applied by cut_at_stop.
MAX_STOP = 4
MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")
# The probe's tool: a template that renders tools adds its spec (some 40 tokens) to the prompt.
PROBE_TOOL = {"type": "function", "function": {
    "name": "lookup", "description": "Look up a fact in the reference collection and return the passages that state it.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "What to look up."}},
                   "required": ["query"]}}}
PROBE = [{"role": "user", "content": "Reply with the word OK."}]
_MODEL_WORDS = ("model", "pinned")


def is_plain_remote(url: str) -> bool:
    """An http:// URL of another machine: no credential is sent there."""
    return urlparse(url).scheme == "http" and not is_local_url(url)


def is_local_url(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in LOCAL_HOSTS or host.endswith(".localhost")


def _mark_quota(response) -> None:
    """httpx response hook: a 429 for a used-up quota gets the `x-should-retry: false` header that the
    `openai` client obeys, so that one 429 is not retried while a transient one is."""
    if response.status_code == 429:
        response.read()
        if b"insufficient_quota" in response.content:
            response.headers["x-should-retry"] = "false"


class OpenAICompatBackend(ConcurrentBackend):
    """Generate through an OpenAI-compatible `/chat/completions` endpoint."""

    kind = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        name: str | None = None,
        max_tokens_field: str = "max_completion_tokens",
        max_completion_tokens: int | None = None,
        extra_body: dict | None = None,
        tools: str = "auto",
    ):
        import openai

        if max_tokens_field not in MAX_TOKENS_FIELDS:
            raise BackendSetupError(f"max_tokens_field must be one of {', '.join(MAX_TOKENS_FIELDS)}, got "
                                    f"{max_tokens_field!r}", backend="openai", where=model)
        if tools not in TOOL_MODES:
            raise BackendSetupError(f"tools must be one of {', '.join(TOOL_MODES)}, got {tools!r}", backend="openai",
                                    where=model)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.where = f"{self.url}, model {model}"
        self.api_key_env = api_key_env
        self.api_key = key_from_env(api_key, (api_key_env,))
        # A key travels only over https or to this machine: a plain-http remote server gets no key.
        self.key_withheld = bool(self.api_key) and is_plain_remote(self.base_url)
        if self.key_withheld:
            self.api_key = None
        if not self.api_key and not is_local_url(self.base_url) and not is_plain_remote(self.base_url):
            # Fail when the backend is built, not after the first batch of an expensive run.
            raise MissingKeyError(backend="openai", where=self.base_url, env_vars=(api_key_env,))
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.max_tokens_field = max_tokens_field
        self.max_completion_tokens = int(max_completion_tokens) if max_completion_tokens else None
        self.extra_body = dict(extra_body or {})
        # Until `check` has probed the server, "auto" sends the field.
        self.tools_setting = tools
        self.tools_mode = "prompt" if tools == "prompt" else "field"
        self.tools_detail = {"auto": "not probed", "field": "set in the spec", "prompt": "set in the spec"}[tools]
        default_name = f"openai:{model}" if self.base_url == DEFAULT_BASE_URL else f"openai:{model}@{self.base_url}"
        self.name = name or default_name
        self._served: list[str] | None = None
        # A local server needs no key: the client still wants one, and the header is left out of every request.
        self.client = openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key or "no-key", timeout=self.timeout,
            max_retries=self.max_retries, http_client=openai.DefaultHttpxClient(event_hooks={"response": [_mark_quota]}))
        self._headers = None if self.api_key else {"Authorization": openai.Omit()}

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
        """The JSON body one conversation is sent as (the `extra_body` fields included)."""
        if tools and self.tools_mode == "prompt":
            messages, tools = tools_in_prompt(conversation, tools), None
        else:
            messages = self.wire_messages(conversation)
        body: dict = {
            "model": self.model,
            "messages": messages,
            self.max_tokens_field: int(self.max_completion_tokens or max_new_tokens),
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
        else:
            content = close_tool_call(content, stop, choice.get("finish_reason"))
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

    def _create(self, body: dict) -> dict:
        """One request through the client (its retries, its timeout); the reply as a plain dict."""
        fields = {k: v for k, v in body.items() if k not in self.extra_body}
        completion = self.client.chat.completions.create(
            **fields, extra_body=self.extra_body or None, extra_headers=self._headers)
        return completion.model_dump()

    def _generate_one(self, conversation, *, tools, max_new_tokens, temperature, thinking, stop) -> Generation:
        import openai

        body = self.request_body(conversation, tools=tools, max_new_tokens=max_new_tokens, temperature=temperature, stop=stop)
        try:
            data = self._create(body)
        except openai.APIStatusError as exc:
            if is_context_overflow(exc.status_code, _body_text(exc)):
                return Generation("", overflow=True)
            raise self.error(exc) from exc
        except openai.OpenAIError as exc:
            raise self.error(exc) from exc
        return self.parse_reply(data, thinking=thinking, stop=stop)

    # -- errors --------------------------------------------------------------------------------------

    def error(self, exc: Exception, *, setup: bool = False) -> BackendError:
        """A `BackendError` (a `BackendSetupError` during `check`) for a failure of the client, with the fix."""
        import openai

        kind = BackendSetupError if setup else BackendError
        tries = f" (after {self.max_retries} retries)" if self.max_retries else ""
        if isinstance(exc, openai.APITimeoutError):
            return kind(f"no reply within {self.timeout:g} s{tries}; give a slow server more time with "
                        "?timeout=SECONDS in the spec", backend="openai", where=self.where, retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return kind(f"cannot connect{tries}: {type(cause).__name__}: {snippet(str(cause), 160)}; is a server "
                        f"running at {self.base_url}?", backend="openai", where=self.where, retryable=True)
        if isinstance(exc, openai.APIStatusError):
            status, body = exc.status_code, _body_text(exc)
            return kind(self._hint(status, body, exc, tries), backend="openai", where=self.where, status=status,
                        body=body, retryable=False)
        return kind(f"{type(exc).__name__}: {exc}", backend="openai", where=self.where, retryable=False)

    def _hint(self, status: int, body: str, exc, tries: str) -> str:
        low = body.lower()
        about_model = any(w in low for w in _MODEL_WORDS) and (status == 404 or "exist" in low or "not found" in low
                                                               or "pinned" in low or "unknown" in low)
        if about_model:
            return self._unknown_model(self.served_ids())
        if status == 404:
            return f"nothing answers at {self.url}: does the base URL end in /v1?"
        if status in (401, 403):
            if self.key_withheld:
                return (f"the server wants an API key, and hopsmith sends ${self.api_key_env} only over https or to "
                        f"this machine, not to {self.base_url}: serve it over https")
            if not self.api_key:
                return f"the server wants an API key: set ${self.api_key_env} (or api_key_env=NAME in the spec)"
            return f"the server refused the API key from ${self.api_key_env}: check it (or api_key_env=NAME in the spec)"
        if status == 429 and "insufficient_quota" in low:
            return "the account's quota is used up (insufficient_quota; not retried): add credit or use another key"
        if status == 429:
            return f"rate limited{tries}: lower ?concurrency= or raise ?max_retries= in the spec"
        if status in (400, 422) and ("max_completion_tokens" in low or "max_tokens" in low):
            return "the server refused the token limit's field: add ?max_tokens_field=max_tokens to the spec"
        if status == 422 or (status == 400 and ("unexpected" in low or "extra" in low)):
            return "the server refused the request's fields (an extra_body key it does not know?)"
        if status >= 500:
            return f"server error{tries}"
        return "request rejected"

    def _unknown_model(self, ids: list[str] | None) -> str:
        if ids:
            return f"the server does not serve model {self.model!r}; {self.base_url}/models lists: {some_of(ids)}"
        return f"the server does not serve model {self.model!r} (GET {self.base_url}/models lists what it serves)"

    def served_ids(self) -> list[str] | None:
        """The model ids the server's /models lists (None when it lists none or cannot be asked); cached."""
        import openai

        if self._served is None:
            try:
                self._served = [m.id for m in self.client.models.list(extra_headers=self._headers).data]
            except openai.OpenAIError:
                return None
        return self._served

    # -- the check before a run ----------------------------------------------------------------------

    def _probe(self, tools: list[dict] | None) -> Generation:
        import openai

        body = self.request_body(PROBE, tools=tools, max_new_tokens=1)
        body[self.max_tokens_field] = 1
        try:
            return self.parse_reply(self._create(body), thinking=False, stop=None)
        except openai.OpenAIError as exc:
            raise self.error(exc, setup=True) from exc

    def check(self, *, tools: bool = False) -> None:
        """Find before a run what would break it: the key, the URL, the model name (a one-token request), and,
        with `tools` and `tools="auto"`, whether the server renders the `tools` field into the prompt.

        That is decided by two one-token probes of the same conversation, without and with a tool spec:
        a server whose model template renders tools reports more prompt tokens with it; one that silently
        drops the field (a template without tools, as `transformers serve` does for SmolLM2) reports the
        same count, and one that refuses it answers 400/422. Either of the last two puts the specs in the
        system prompt (`tools_mode = "prompt"`). Prompt token counts are what the server itself tokenised,
        so this needs no knowledge of the model; a server that reports none keeps the field (and says so in
        `tools_detail`). Raises BackendSetupError with the fix."""
        try:
            plain = self._probe(None)
        except BackendSetupError as exc:
            ids = self.served_ids()
            if exc.status in (400, 404, 422) and ids and self.model not in ids:
                raise BackendSetupError(self._unknown_model(ids), backend="openai", where=self.where,
                                        status=exc.status) from exc
            raise
        if not tools or self.tools_setting != "auto":
            return
        try:
            with_tools = self._probe([PROBE_TOOL])
        except BackendSetupError as exc:
            if exc.status in (400, 422):
                self.tools_mode, self.tools_detail = "prompt", f"the server refused the tools field (HTTP {exc.status})"
                return
            raise
        a, b = plain.prompt_tokens, with_tools.prompt_tokens
        if a and b:
            if b > a:
                self.tools_mode, self.tools_detail = "field", f"the tools field reaches the prompt ({a} prompt tokens without it, {b} with)"
            else:
                self.tools_mode, self.tools_detail = "prompt", f"the server ignores the tools field ({a} prompt tokens with it and without)"
        else:
            self.tools_mode, self.tools_detail = "field", ("unverified: the server reports no prompt token counts "
                                                           "(--tools-in-prompt if the model never calls a tool)")


def _body_text(exc) -> str:
    response = getattr(exc, "response", None)
    try:
        return response.text if response is not None else json.dumps(exc.body)
    except Exception:  # noqa: BLE001 - a streamed body that was closed: the parsed one is all there is
        return json.dumps(getattr(exc, "body", None), default=str)
