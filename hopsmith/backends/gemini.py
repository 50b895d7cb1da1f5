"""Backend for Google's Gemini API through the official `google-genai` client.

Each conversation is one `models.generate_content` call, `concurrency` at a time; replies come back in
input order. Our TRL-style messages become Gemini `contents` (system turns -> `system_instruction`,
assistant -> role "model", tool calls -> `function_call` parts, tool results -> `function_response`
parts), and function calls in a reply are written back as Hermes `<tool_call>` text for the agent loop.

    backend = GeminiBackend("gemini-2.5-flash")          # key from $GEMINI_API_KEY or $GOOGLE_API_KEY
    gens = backend.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=64)

Retries are ours (`remote.with_retries` on 429/5xx/connection errors, `max_retries` of them, honouring the
server's `Retry-After` or `RetryInfo` delay up to two minutes); the SDK's own are switched off so they are
testable. A 429 for a daily quota (`...PerDay...`) is not retried: it resets tomorrow, not in a minute.
`check()` asks for the model (`models.get`) before a run: a bad key or model name is one line with the fix,
an unknown model lists the models the key can use. Gemini reads the tool specs natively
(`tools_mode="field"`); `tools="prompt"` writes them into the system prompt instead. `base_url` points the client elsewhere
(tests use a local fake server). google-genai 3.x calls `{base_url}/v1/models/{model}:generateContent`
by default; `api_version="v1beta"` (or $GOOGLE_GENAI_API_VERSION=beta) selects the beta surface.

Thinking: Gemini 2.5 Flash models think unless told not to, and thinking tokens count against
`max_output_tokens`, so with `thinking=False` their budget is set to 0. Pro and Gemini 3 models cannot
switch thinking off: give them a `max_new_tokens` with room for it or a reply may come back empty.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from . import Generation, cut_at_stop
from .remote import (
    TOOL_MODES,
    BackendSetupError,
    ConcurrentBackend,
    BackendError,
    MissingKeyError,
    RetryPolicy,
    clean_tools,
    is_context_overflow,
    is_retryable,
    join_reply,
    key_from_env,
    normalize_messages,
    parse_retry_after,
    snippet,
    some_of,
    tools_in_prompt,
)

KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
# Gemini accepts at most 5 stop sequences; the rest are applied by cut_at_stop.
MAX_STOP = 5
# Gemini 3 answers 400 when a function call in the history lacks the thought signature it was sent
# with. Our traces do not keep signatures (and may come from another model), so calls carry the
# documented placeholder. The SDK base64-encodes bytes fields; decoding the placeholder first makes the
# JSON hold the literal string, which is what the API documents.
SKIP_SIGNATURE = base64.urlsafe_b64decode("skip_thought_signature_validator")
# JSON-schema keys Gemini's Schema understands (OpenAPI subset); anything else (e.g. the "return" that
# transformers adds, "additionalProperties", "$schema") is dropped rather than rejected by the API.
SCHEMA_KEYS = {
    "type", "format", "description", "nullable", "enum", "properties", "required", "items", "minItems",
    "maxItems", "minimum", "maximum", "minLength", "maxLength", "pattern", "anyOf", "title", "default",
    "propertyOrdering", "example", "minProperties", "maxProperties",
}


def clean_schema(schema: Any) -> Any:
    """A JSON schema reduced to what Gemini's `Schema` accepts (recursively)."""
    if not isinstance(schema, dict):
        return schema
    out: dict = {}
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            continue
        if key == "type" and isinstance(value, list):
            # JSON schema's ["string", "null"] is Gemini's type + nullable.
            kinds = [v for v in value if v != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            value = kinds[0] if kinds else "string"
        elif key == "properties" and isinstance(value, dict):
            value = {name: clean_schema(sub) for name, sub in value.items()}
        elif key == "items":
            value = clean_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            value = [clean_schema(sub) for sub in value]
        out[key] = value
    return out


def _thinking_config(model: str, thinking: bool):
    from google.genai import types

    if thinking:
        return types.ThinkingConfig(include_thoughts=True)
    if "2.5" in model and "pro" not in model:
        return types.ThinkingConfig(thinking_budget=0)
    return None


def _retry_delay(details) -> float | None:
    """Seconds from a google.rpc.RetryInfo in an error's details ("retryDelay": "37s"), if there is one."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    for d in error.get("details") or [] if isinstance(error, dict) else []:
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


class GeminiBackend(ConcurrentBackend):
    """Generate with a Gemini model through `google-genai`."""

    kind = "gemini"

    def __init__(
        self,
        model: str = "gemini-2.5-flash",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        concurrency: int = 8,
        name: str | None = None,
        api_version: str | None = None,
        timeout: float = 120,
        retry: RetryPolicy | None = None,
        max_retries: int | None = None,
        api_key_env: str | None = None,
        tools: str = "auto",
    ):
        from google import genai
        from google.genai import types

        self.model = model
        env_vars = (api_key_env,) if api_key_env else KEY_ENV_VARS
        self.key_env = " or ".join(f"${v}" for v in env_vars)
        key = key_from_env(api_key, env_vars)
        if not key:
            raise MissingKeyError(backend="gemini", where=f"model {model}", env_vars=env_vars)
        if tools not in TOOL_MODES:
            raise BackendSetupError(f"tools must be one of {', '.join(TOOL_MODES)}, got {tools!r}", backend="gemini",
                                    where=f"model {model}")
        # Gemini's function declarations always reach the model: "auto" is the field.
        self.tools_mode = "prompt" if tools == "prompt" else "field"
        self.tools_detail = "set in the spec" if tools != "auto" else "Gemini reads function declarations natively"
        http_options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=int(timeout * 1000),  # milliseconds
            # attempts=1: the SDK retries nothing (an explicit setting also turns off its implicit
            # connection-error retry); `self.retry` owns all retries.
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        # vertexai=False: an ambient GOOGLE_GENAI_USE_VERTEXAI must not reroute an API-key client.
        self.client = genai.Client(api_key=key, vertexai=False, http_options=http_options)
        self.where = f"{base_url or 'Gemini API'}, model {model}"
        self.concurrency = max(1, int(concurrency))
        self.retry = retry or (RetryPolicy(attempts=max_retries + 1) if max_retries is not None else RetryPolicy())
        self.name = name or f"gemini:{model}"

    # -- wire format ---------------------------------------------------------------------------------

    def contents(self, conversation: list[dict]) -> tuple[str | None, list]:
        """(system instruction, Gemini contents) for one conversation."""
        from google.genai import types

        system: list[str] = []
        contents: list[types.Content] = []
        responses: list[types.Part] = []

        def flush_responses():
            # All results of one model turn go back in one user turn, as the API expects.
            if responses:
                contents.append(types.Content(role="user", parts=list(responses)))
                responses.clear()

        for m in normalize_messages(conversation):
            if m["role"] != "tool":
                flush_responses()
            if m["role"] == "system":
                system.append(m["content"])
            elif m["role"] == "user":
                contents.append(types.Content(role="user", parts=[types.Part(text=m["content"])]))
            elif m["role"] == "assistant":
                parts = [types.Part(text=m["content"])] if m["content"] else []
                for k, call in enumerate(m["calls"]):
                    args = call["arguments"]
                    if isinstance(args, str):
                        try:
                            args = json.loads(args)
                        except json.JSONDecodeError:
                            args = {"raw": args}
                    part = types.Part(function_call=types.FunctionCall(name=call["name"], args=args))
                    if k == 0:
                        # Only the first call of a turn carries a signature (as in Gemini's own replies).
                        part.thought_signature = SKIP_SIGNATURE
                    parts.append(part)
                if parts:
                    contents.append(types.Content(role="model", parts=parts))
            else:  # tool result paired with a call
                responses.append(
                    types.Part(function_response=types.FunctionResponse(name=m["name"], response={"result": m["content"]}))
                )
        flush_responses()
        return ("\n\n".join(system) or None), contents

    @staticmethod
    def tools(tools: list[dict] | None) -> list | None:
        from google.genai import types

        if not tools:
            return None
        decls = []
        for tool in clean_tools(tools):
            fn = tool["function"]
            params = clean_schema(fn.get("parameters") or {})
            decls.append(
                types.FunctionDeclaration(
                    name=fn["name"],
                    description=fn.get("description"),
                    # An object with no properties is rejected; a function without parameters has none.
                    parameters=types.Schema.model_validate(params) if params.get("properties") else None,
                )
            )
        return [types.Tool(function_declarations=decls)]

    def config(self, conversation_system: str | None, *, tools, max_new_tokens, temperature, thinking, stop):
        from google.genai import types

        return types.GenerateContentConfig(
            system_instruction=conversation_system,
            temperature=float(temperature),
            max_output_tokens=int(max_new_tokens),
            stop_sequences=list(stop)[:MAX_STOP] if stop else None,
            tools=self.tools(tools),
            # We execute tools ourselves (the agent loop); never let the SDK call Python functions.
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            thinking_config=_thinking_config(self.model, thinking),
        )

    @staticmethod
    def parse_reply(response, *, thinking: bool, stop: list[str] | None) -> Generation:
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[tuple[str, Any]] = []
        candidates = getattr(response, "candidates", None) or []
        parts = (candidates[0].content.parts if candidates and candidates[0].content else None) or []
        for part in parts:
            if part.function_call is not None:
                calls.append((part.function_call.name or "", dict(part.function_call.args or {})))
            elif part.text:
                (thoughts if part.thought else texts).append(part.text)
        text = join_reply("".join(texts), calls, "".join(thoughts) if thinking else "")
        usage = getattr(response, "usage_metadata", None)
        prompt = (usage.prompt_token_count or 0) if usage else 0
        # Thinking tokens are billed as output and use up max_output_tokens: count them as completion.
        completion = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        return Generation(cut_at_stop(text, stop), prompt_tokens=prompt, completion_tokens=completion)

    # -- transport -----------------------------------------------------------------------------------

    def _call_once(self, contents, config):
        from google.genai import errors

        try:
            return self.client.models.generate_content(model=self.model, contents=contents, config=config)
        except errors.APIError as exc:
            body = json.dumps(exc.details) if isinstance(exc.details, (dict, list)) else str(exc.details or exc.message)
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            retry_after = parse_retry_after(headers.get("Retry-After"))
            error = BackendError(
                self._hint(exc.code, exc.status, body),
                backend="gemini",
                where=self.where,
                status=exc.code,
                body=body,
                # A daily quota resets tomorrow: waiting a minute does not help.
                retryable=False if exc.code == 429 and "PerDay" in body else None,
                retry_after=retry_after if retry_after is not None else _retry_delay(exc.details),
            )
            raise error from exc
        except Exception as exc:
            if is_retryable(exc):  # connection errors and timeouts from httpx
                raise BackendError(f"request failed: {exc!r}", backend="gemini", where=self.where, retryable=True) from exc
            raise

    def _hint(self, code: int | None, status: str | None, body: str) -> str:
        low = body.lower()
        if code in (400, 401, 403) and ("api key" in low or "api_key" in low):
            return f"the API key was refused: check {self.key_env}"
        if code == 404:
            return self._unknown_model(self.served_ids())
        if code == 429:
            if "PerDay" in body:
                return "the daily quota is used up (not retried): wait for it to reset or use another key"
            return "rate limited: lower ?concurrency= or raise ?max_retries= in the spec"
        if code == 403:
            return f"permission denied: the key from {self.key_env} may not use model {self.model!r}"
        return str(status or "error")

    def _unknown_model(self, ids: list[str] | None) -> str:
        if ids:
            return f"no Gemini model {self.model!r} for this key; it can use: {some_of(ids)}"
        return f"no Gemini model {self.model!r} for this key"

    def served_ids(self) -> list[str] | None:
        """Model names the key can use (the first page of `models.list`); None when they cannot be listed."""
        try:
            pager = self.client.models.list(config={"page_size": 100})
            return [str(m.name).removeprefix("models/") for m in pager.page]
        except Exception:  # noqa: BLE001 - only for a message; any failure means "unknown"
            return None

    def check(self, *, tools: bool = False) -> None:
        """Ask for the model before a run: a bad key, model or address fails here, as one line with the fix."""
        from google.genai import errors

        try:
            self.client.models.get(model=self.model)
        except errors.APIError as exc:
            body = json.dumps(exc.details) if isinstance(exc.details, (dict, list)) else str(exc.details or exc.message)
            raise BackendSetupError(self._hint(exc.code, exc.status, body), backend="gemini", where=self.where,
                                    status=exc.code, body=body) from exc
        except Exception as exc:
            if is_retryable(exc):
                raise BackendSetupError(f"cannot connect: {type(exc).__name__}: {snippet(str(exc), 160)}",
                                        backend="gemini", where=self.where) from exc
            raise

    def _generate_one(self, conversation, *, tools, max_new_tokens, temperature, thinking, stop) -> Generation:
        if tools and self.tools_mode == "prompt":
            conversation, tools = tools_in_prompt(conversation, tools), None
        system, contents = self.contents(conversation)
        config = self.config(system, tools=tools, max_new_tokens=max_new_tokens, temperature=temperature, thinking=thinking, stop=stop)
        try:
            response = self.retry.run(lambda: self._call_once(contents, config))
        except BackendError as exc:
            if is_context_overflow(exc.status, exc.body):
                return Generation("", overflow=True)
            raise
        return self.parse_reply(response, thinking=thinking, stop=stop)
