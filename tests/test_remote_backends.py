"""Remote backends against local fake servers that speak the real wire formats.

Each test starts an `http.server` on 127.0.0.1 (port 0) in a thread, points a backend at it and checks
both directions: the request body the backend sends and the `Generation` it makes of the reply.
Retries use a recording `sleep` (the Gemini backend's policy takes one; the `openai` client's sleep is
swapped by the `openai_sleeps` fixture), so no test waits for a backoff. Servers stop when their test ends.
"""
from __future__ import annotations

import json
import re

import pytest
from fake_servers import FakeServer, Sleeps, chat_reply, gemini_error, gemini_reply, models_list

from hopsmith.chat import HermesFormat
from hopsmith.backends.factory import make_backend
from hopsmith.backends.gemini import GeminiBackend, clean_schema
from hopsmith.backends.openai_compat import OpenAICompatBackend
from hopsmith.backends.remote import (
    BackendError,
    MissingKeyError,
    RetryPolicy,
    normalize_messages,
    parse_retry_after,
    with_retries,
)

# A trace as the agent loop builds it: a structured call, its result, then a malformed call (kept as text)
# whose error comes back as a tool message named "invalid", plus the loop's internal "_call" key.
TRACE = [
    {"role": "system", "content": "You are a search agent."},
    {"role": "user", "content": "Where was Lloyd Dane born?"},
    {
        "role": "assistant",
        "content": "<think>search first</think>",
        "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Lloyd Dane"}}}],
    },
    {"role": "tool", "name": "search", "content": "[p1] Lloyd Dane was born in Eldon.", "_call": 0},
    {"role": "assistant", "content": "<tool_call>{not json</tool_call>"},
    {"role": "tool", "name": "invalid", "content": "Error: tool call is not valid JSON", "_call": 1},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the paragraphs.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "Keywords."}}, "required": ["query"]},
            "return": {"type": "string"},
        },
    }
]


# ---------------------------------------------------------------------------------------------------
# OpenAI-compatible


def openai_backend(server: FakeServer, **kw) -> OpenAICompatBackend:
    return OpenAICompatBackend("test-model", base_url=f"{server.url}/v1", **kw)


def test_openai_plain_text_and_request_body(serve, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = serve([chat_reply("FINAL(Eldon)")])
    backend = openai_backend(server)  # local URL: no key needed
    [gen] = backend.generate([TRACE], tools=TOOLS, max_new_tokens=64, temperature=0.3, stop=["</tool_call>"])
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens, gen.overflow) == ("FINAL(Eldon)", 11, 3, False)

    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert "authorization" not in req["headers"]  # no key: none sent, not even a placeholder
    body = req["body"]
    assert body["model"] == "test-model"
    assert (body["max_completion_tokens"], body["temperature"], body["stop"]) == (64, 0.3, ["</tool_call>"])
    assert "max_tokens" not in body
    assert body["tools"] == [{"type": "function", "function": {k: v for k, v in TOOLS[0]["function"].items() if k != "return"}}]
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "user"]
    call = msgs[2]["tool_calls"][0]
    assert call == {"id": "call_2_0", "type": "function", "function": {"name": "search", "arguments": '{"query": "Lloyd Dane"}'}}
    assert msgs[2]["content"] is None  # thinking is not sent back, and nothing else was said
    assert msgs[3] == {"role": "tool", "tool_call_id": "call_2_0", "name": "search", "content": "[p1] Lloyd Dane was born in Eldon."}
    # The malformed call stays as text; its error reply has no call to answer, so it goes back as text.
    assert msgs[4] == {"role": "assistant", "content": "<tool_call>{not json</tool_call>"}
    assert msgs[5] == {"role": "user", "content": "<tool_response>\nError: tool call is not valid JSON\n</tool_response>"}
    assert not any("_call" in m for m in msgs)


def test_openai_sends_key_and_options(serve, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    server = serve([chat_reply("hi")])
    backend = openai_backend(server, api_key_env="MY_KEY", max_tokens_field="max_tokens",
                             extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    backend.generate([[{"role": "user", "content": "hi"}]])
    req = server.requests[0]
    assert req["headers"]["authorization"] == "Bearer sk-test"
    assert req["body"]["max_tokens"] == 256 and "max_completion_tokens" not in req["body"]
    assert req["body"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert "tools" not in req["body"] and "stop" not in req["body"]
    # max_completion_tokens in the spec overrides what the stage asks for (room for a reasoning model)
    make_backend(f"openai:test-model@{server.url}/v1?max_completion_tokens=900").generate(
        [[{"role": "user", "content": "hi"}]], max_new_tokens=32)
    assert server.requests[-1]["body"]["max_completion_tokens"] == 900


def test_openai_native_tool_call_renders_as_hermes_text(serve):
    calls = [{"id": "abc", "type": "function", "function": {"name": "search", "arguments": '{"query": "Lloyd Dane birthplace"}'}}]
    server = serve([chat_reply("Let me look.", tool_calls=calls)])
    [gen] = openai_backend(server).generate([TRACE[:2]], tools=TOOLS)
    assert gen.text == 'Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "Lloyd Dane birthplace"}}\n</tool_call>'
    action = HermesFormat().parse(gen.text)
    assert [(c.name, c.arguments, c.valid) for c in action.calls] == [("search", {"query": "Lloyd Dane birthplace"}, True)]


def test_openai_one_call_per_turn_and_reasoning(serve):
    calls = [
        {"id": "a", "type": "function", "function": {"name": "search", "arguments": '{"query": "a"}'}},
        {"id": "b", "type": "function", "function": {"name": "search", "arguments": '{"query": "b"}'}},
    ]
    server = serve([chat_reply(None, tool_calls=calls, reasoning_content="I should search.")])
    backend = openai_backend(server)
    [gen] = backend.generate([TRACE[:2]], stop=["</tool_call>"], thinking=True)
    # The stop string ends the reply after the first call, as it does for a local model.
    assert gen.text == '<think>\nI should search.\n</think>\n\n<tool_call>\n{"name": "search", "arguments": {"query": "a"}}\n</tool_call>'
    action = HermesFormat().parse(gen.text)
    assert action.thinking == "I should search." and [c.arguments for c in action.calls] == [{"query": "a"}]
    [gen] = backend.generate([TRACE[:2]], thinking=False)
    assert "<think>" not in gen.text and gen.text.count("<tool_call>") == 2


def test_openai_vllm_stop_reason_is_put_back(serve):
    status, body, headers = chat_reply('<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n')
    body["choices"][0]["stop_reason"] = "</tool_call>"
    server = serve([(status, body, headers)])
    [gen] = openai_backend(server).generate([TRACE[:2]], stop=["</tool_call>", "<tool_response>"])
    assert gen.text.endswith("</tool_call>")
    assert HermesFormat().parse(gen.text).calls[0].arguments == {"query": "x"}


def test_openai_stop_string_left_out_closes_the_call(serve):
    """OpenAI and transformers serve leave the stop string out and name none: a call written as text ends
    open; it is closed as a local model closes it."""
    server = serve([chat_reply('<tool_call>\n{"name": "search", "arguments": {"query": "x"}}')])
    [gen] = openai_backend(server).generate([TRACE[:2]], stop=["</tool_call>", "<tool_response>"])
    assert gen.text == '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>'
    assert HermesFormat().parse(gen.text).calls[0].valid


def test_openai_429_then_success_honours_retry_after(serve, openai_sleeps):
    server = serve([(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "7"}), chat_reply("ok")])
    [gen] = openai_backend(server).generate([TRACE[:2]])
    assert gen.text == "ok" and len(server.requests) == 2 and openai_sleeps == [7.0]


def test_openai_retry_after_beyond_the_cap_is_not_waited_for(serve, openai_sleeps):
    server = serve([(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "3600"}), chat_reply("ok")])
    with pytest.raises(BackendError, match="HTTP 429") as err:
        openai_backend(server).generate([TRACE[:2]])
    assert len(server.requests) == 1 and openai_sleeps == [] and "concurrency" in str(err.value)


def test_openai_500_twice_then_success_backs_off(serve, openai_sleeps):
    server = serve([(500, "oops", {}), (502, "bad gateway", {}), chat_reply("ok")])
    [gen] = openai_backend(server).generate([TRACE[:2]])
    assert gen.text == "ok" and len(server.requests) == 3
    # The client's backoff: 0.5 s doubling, less up to 25% jitter.
    assert len(openai_sleeps) == 2 and 0.375 <= openai_sleeps[0] <= 0.5 and 0.75 <= openai_sleeps[1] <= 1.0


def test_openai_gives_up_after_attempts(serve, openai_sleeps):
    server = serve([(503, "unavailable", {})])
    with pytest.raises(BackendError) as err:
        openai_backend(server, max_retries=2).generate([TRACE[:2]])
    assert len(server.requests) == 3 and err.value.status == 503 and "after 2 retries" in str(err.value)


def test_openai_400_is_not_retried(serve, openai_sleeps):
    server = serve([(400, {"error": {"message": "Invalid value for 'temperature'", "type": "invalid_request_error"}}, {})])
    with pytest.raises(BackendError) as err:
        openai_backend(server).generate([TRACE[:2]])
    assert len(server.requests) == 1 and openai_sleeps == []
    message = str(err.value)
    assert "HTTP 400" in message and "openai" in message and "/v1/chat/completions" in message
    assert "Invalid value for 'temperature'" in message and err.value.status == 400 and "\n" not in message


def test_openai_context_length_is_overflow(serve):
    error = {"error": {"message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                       "type": "invalid_request_error", "code": "context_length_exceeded"}}
    server = serve([(400, error, {})])
    [gen] = openai_backend(server).generate([TRACE[:2]])
    assert gen.overflow and gen.text == "" and len(server.requests) == 1


def _dead_port() -> int:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_openai_connection_error_is_retried_then_named(openai_sleeps):
    port = _dead_port()
    backend = OpenAICompatBackend("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(BackendError, match=f"cannot connect.*is a server running at http://127.0.0.1:{port}/v1"):
        backend.generate([TRACE[:2]])
    assert len(openai_sleeps) == 1


def test_openai_timeout_is_named_with_the_fix(serve):
    server = serve([chat_reply("late")], delay=lambda r: 1.0)
    with pytest.raises(BackendError, match=r"no reply within 0.2 s.*\?timeout=SECONDS"):
        openai_backend(server, timeout=0.2, max_retries=0).generate([TRACE[:2]])


def test_openai_missing_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(MissingKeyError, match="OPENAI_API_KEY"):
        OpenAICompatBackend("gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert OpenAICompatBackend("gpt-4o-mini").base_url == "https://api.openai.com/v1"
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1/")
    assert OpenAICompatBackend("qwen").url == "http://localhost:8000/v1/chat/completions"


def test_openai_concurrency_keeps_input_order(serve):
    def reply(request):
        question = request["body"]["messages"][-1]["content"]
        return chat_reply(f"answer to {question}")

    # Earlier questions answer later, so completion order is the reverse of input order.
    server = serve(reply, delay=lambda r: 0.02 * (8 - int(r["body"]["messages"][-1]["content"][1:])))
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    gens = openai_backend(server, concurrency=4).generate(convs)
    assert [g.text for g in gens] == [f"answer to q{i}" for i in range(6)]
    assert len(server.requests) == 6 and server.max_in_flight >= 2


def test_openai_insufficient_quota_is_not_retried_but_a_transient_429_is(serve, openai_sleeps):
    error = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}
    server = serve([(429, error, {})])
    with pytest.raises(BackendError, match="HTTP 429: the account's quota is used up"):
        openai_backend(server).generate([TRACE[:2]])
    assert len(server.requests) == 1 and openai_sleeps == []
    server = serve([(429, {"error": {"message": "Rate limit reached", "type": "requests"}}, {}), chat_reply("ok")])
    assert openai_backend(server).generate([TRACE[:2]])[0].text == "ok" and len(server.requests) == 2


def test_openai_drives_the_agent_loop(serve, musique_small):
    """End to end: a native tool call goes through the loop, and its result comes back paired by id."""
    from episodes import run_multihop
    from hopsmith.config import AgentConfig

    questions, pools = musique_small

    def reply(request):
        messages = request["body"]["messages"]
        if messages[-1]["role"] == "user":
            return chat_reply(None, tool_calls=[{"id": "srv", "type": "function",
                                                  "function": {"name": "search", "arguments": '{"query": "birthplace"}'}}])
        return chat_reply("FINAL(Eldon)")

    server = serve(reply)
    rows = run_multihop(questions[:2], pools, openai_backend(server), AgentConfig(max_turns=4), batch_size=2)
    assert [(r["stop"], r["prediction"], r["turns"]) for r in rows] == [("final", "Eldon", 2)] * 2
    assert all(r["tool_calls"][0]["name"] == "search" and r["tool_calls"][0]["valid"] for r in rows)
    second = [r["body"]["messages"] for r in server.requests if r["body"]["messages"][-1]["role"] == "tool"]
    assert len(second) == 2
    for messages in second:
        assistant, tool = messages[-2], messages[-1]
        assert assistant["tool_calls"][0]["function"] == {"name": "search", "arguments": '{"query": "birthplace"}'}
        assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"] == "call_2_0"
        assert server.requests[0]["body"]["tools"][0]["function"]["name"] == "search"


# ---------------------------------------------------------------------------------------------------
# The check before a run: key, URL, model name, and how the server treats the tools field


def counting_server(serve, *, renders_tools: bool, refuse_tools: bool = False, ids=("test-model",)):
    """A server whose prompt token count grows with the messages, and with the tools when its template renders them."""
    def reply(request):
        body = request["body"]
        if refuse_tools and body.get("tools"):
            return 400, {"error": {"message": '"auto" tool choice requires --enable-auto-tool-choice'}}, {}
        size = len(json.dumps(body["messages"])) // 4 + (len(json.dumps(body.get("tools"))) // 4 if renders_tools and body.get("tools") else 0)
        return chat_reply("OK", usage=(size, 1))
    return serve(reply, get=models_list(*ids))


def test_check_finds_whether_the_server_renders_tools(serve):
    server = counting_server(serve, renders_tools=True)
    backend = openai_backend(server)
    backend.check(tools=True)
    assert backend.tools_mode == "field" and "reaches the prompt" in backend.tools_detail
    probes = [r["body"] for r in server.requests]
    assert [b["max_completion_tokens"] for b in probes] == [1, 1] and "tools" in probes[1] and "tools" not in probes[0]

    server = counting_server(serve, renders_tools=False)
    backend = openai_backend(server)
    backend.check(tools=True)
    assert backend.tools_mode == "prompt" and "ignores the tools field" in backend.tools_detail
    backend.generate([TRACE[:2]], tools=TOOLS)
    body = server.requests[-1]["body"]
    assert "tools" not in body and body["messages"][0]["content"].startswith("You are a search agent.\n\n# Tools")

    server = counting_server(serve, renders_tools=True, refuse_tools=True)
    backend = openai_backend(server)
    backend.check(tools=True)
    assert backend.tools_mode == "prompt" and "refused the tools field (HTTP 400)" in backend.tools_detail

    server = counting_server(serve, renders_tools=False)
    backend = openai_backend(server)
    backend.check(tools=False)  # an extractor or a judge sends no tools: one probe, nothing decided
    assert len(server.requests) == 1 and backend.tools_mode == "field"
    backend = openai_backend(server, tools="field")
    backend.check(tools=True)
    assert backend.tools_mode == "field" and len(server.requests) == 2


def test_check_names_the_fix(serve, monkeypatch):
    from hopsmith.backends.remote import BackendSetupError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    pinned = serve([(400, {"detail": "Server is pinned to 'served-model'; requested 'test-model'."}, {})],
                   get=models_list("served-model"))
    with pytest.raises(BackendSetupError, match=r"does not serve model 'test-model'; .*/v1/models lists: served-model"):
        openai_backend(pinned).check()
    # No /v1 in the base URL: every path 404s
    server = serve([(404, {"detail": "Not Found"}, {})])
    with pytest.raises(BackendSetupError, match=r"HTTP 404: nothing answers at .*/chat/completions: does the base URL end in /v1\?"):
        OpenAICompatBackend("m", base_url=server.url).check()
    server = serve([(401, {"error": {"message": "Incorrect API key provided"}}, {})])
    with pytest.raises(BackendSetupError, match=r"HTTP 401: the server wants an API key: set \$OPENAI_API_KEY"):
        openai_backend(server).check()
    with pytest.raises(BackendSetupError, match="cannot connect"):
        OpenAICompatBackend("m", base_url=f"http://127.0.0.1:{_dead_port()}/v1", max_retries=0).check()


def test_tools_in_prompt_renders_as_the_project_template_does():
    """A ChatML server's plain template on the rewritten messages gives the very prompt our ChatML-with-tools
    template gives the original conversation: a served model reads what the same model reads locally."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from hopsmith.backends.remote import tools_in_prompt
    from hopsmith.backends.templates import CHATML_TOOLS_TEMPLATE
    from hopsmith.envs.multihop import _schema

    plain = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tools = [_schema("search"), _schema("llm_query")]
    conversation = [
        {"role": "system", "content": "You are a search agent."},
        {"role": "user", "content": "Where was Lloyd Dane born?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Lloyd Dane"}}}]},
        {"role": "tool", "name": "search", "content": "[p1] Lloyd Dane was born in Eldon."},
        {"role": "assistant", "content": "Two at once.", "tool_calls": [
            {"type": "function", "function": {"name": "search", "arguments": {"query": "Eldon"}}},
            {"type": "function", "function": {"name": "llm_query", "arguments": '{"question": "county?"}'}}]},
        {"role": "tool", "name": "search", "content": "[p2] Eldon, Missouri."},
        {"role": "tool", "name": "llm_query", "content": "Miller County"},
        {"role": "assistant", "content": "<tool_call>{not json</tool_call>"},
        {"role": "tool", "name": "invalid", "content": "Error: not JSON"},
    ]
    [ours], _ = render_jinja_template([conversation], tools=tools, chat_template=CHATML_TOOLS_TEMPLATE, add_generation_prompt=True)
    [served], _ = render_jinja_template([tools_in_prompt(conversation, tools)], chat_template=plain, add_generation_prompt=True)
    assert served == ours
    # without a system turn the template's default one carries the tools
    [ours], _ = render_jinja_template([conversation[1:4]], tools=tools, chat_template=CHATML_TOOLS_TEMPLATE)
    [served], _ = render_jinja_template([tools_in_prompt(conversation[1:4], tools)], chat_template=plain)
    assert served == ours


# ---------------------------------------------------------------------------------------------------
# Gemini


GEMINI_PATH = re.compile(r"^/(v1|v1beta)/models/gemini-2\.5-flash:generateContent$")


def gemini_backend(server: FakeServer, **kw) -> GeminiBackend:
    kw.setdefault("retry", RetryPolicy(sleep=Sleeps()))
    return GeminiBackend("gemini-2.5-flash", api_key="test-key", base_url=server.url, **kw)


def test_gemini_plain_text_and_request_body(serve, monkeypatch):
    monkeypatch.delenv("GOOGLE_GENAI_API_VERSION", raising=False)
    server = serve([gemini_reply([{"text": "FINAL("}, {"text": "Eldon)"}])])
    [gen] = gemini_backend(server).generate([TRACE], tools=TOOLS, max_new_tokens=64, temperature=0.2, stop=["</tool_call>"])
    assert (gen.text, gen.prompt_tokens, gen.completion_tokens, gen.overflow) == ("FINAL(Eldon)", 21, 5, False)

    [req] = server.requests
    # google-genai 3.x defaults to the v1 surface (not v1beta) and sends the key as a header.
    assert GEMINI_PATH.match(req["path"]) and req["path"].startswith("/v1/")
    assert req["headers"]["x-goog-api-key"] == "test-key"
    body = req["body"]
    assert body["systemInstruction"]["parts"] == [{"text": "You are a search agent."}]
    contents = body["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert contents[0]["parts"] == [{"text": "Where was Lloyd Dane born?"}]
    [call_part] = contents[1]["parts"]  # thinking dropped, nothing else said
    assert call_part["functionCall"] == {"name": "search", "args": {"query": "Lloyd Dane"}}
    signature = call_part.get("thoughtSignature", call_part.get("thought_signature"))
    assert signature == "skip_thought_signature_validator"
    assert contents[2]["parts"] == [{"functionResponse": {"name": "search", "response": {"result": "[p1] Lloyd Dane was born in Eldon."}}}]
    assert contents[3]["parts"] == [{"text": "<tool_call>{not json</tool_call>"}]
    assert contents[4]["parts"] == [{"text": "<tool_response>\nError: tool call is not valid JSON\n</tool_response>"}]
    config = body["generationConfig"]
    assert (config["temperature"], config["maxOutputTokens"], config["stopSequences"]) == (0.2, 64, ["</tool_call>"])
    # Flash with thinking=False: budget 0, so thinking does not eat the output tokens.
    assert config["thinkingConfig"] in ({"thinkingBudget": 0}, {"thinking_budget": 0})
    [decl] = body["tools"][0]["functionDeclarations"]
    assert decl["name"] == "search" and decl["description"] == "Search the paragraphs."
    assert decl["parameters"]["properties"]["query"]["type"] == "STRING" and decl["parameters"]["required"] == ["query"]
    assert "return" not in json.dumps(decl)


def test_gemini_api_version_selects_path(serve):
    server = serve([gemini_reply([{"text": "ok"}])])
    gemini_backend(server, api_version="v1beta").generate([TRACE[:2]])
    assert server.requests[0]["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_gemini_function_call_renders_as_hermes_text(serve):
    parts = [{"text": "Searching."}, {"functionCall": {"name": "search", "args": {"query": "Lloyd Dane birthplace"}}, "thoughtSignature": "c2ln"}]
    server = serve([gemini_reply(parts, thoughts=40)])
    [gen] = gemini_backend(server).generate([TRACE[:2]], tools=TOOLS)
    assert gen.text == 'Searching.\n<tool_call>\n{"name": "search", "arguments": {"query": "Lloyd Dane birthplace"}}\n</tool_call>'
    assert gen.completion_tokens == 45  # thinking tokens count as output
    action = HermesFormat().parse(gen.text)
    assert [(c.name, c.arguments, c.valid) for c in action.calls] == [("search", {"query": "Lloyd Dane birthplace"}, True)]


def test_gemini_thoughts_only_when_thinking(serve):
    parts = [{"text": "Think it through.", "thought": True}, {"text": "FINAL(Eldon)"}]
    server = serve([gemini_reply(parts)])
    backend = gemini_backend(server)
    [gen] = backend.generate([TRACE[:2]], thinking=True)
    assert gen.text == "<think>\nThink it through.\n</think>\n\nFINAL(Eldon)"
    assert server.requests[0]["body"]["generationConfig"]["thinkingConfig"] in ({"includeThoughts": True}, {"include_thoughts": True})
    [gen] = backend.generate([TRACE[:2]], thinking=False)
    assert gen.text == "FINAL(Eldon)"


def test_gemini_429_then_success(serve):
    server = serve([(429, gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), {"Retry-After": "3"}), gemini_reply([{"text": "ok"}])])
    sleeps = Sleeps()
    [gen] = gemini_backend(server, retry=RetryPolicy(sleep=sleeps)).generate([TRACE[:2]])
    # One retry, ours: the SDK's own retries are off.
    assert gen.text == "ok" and len(server.requests) == 2 and sleeps == [3.0]


def test_gemini_500_twice_then_success(serve):
    server = serve([(500, gemini_error(500, "INTERNAL", "boom"), {}), (503, gemini_error(503, "UNAVAILABLE", "overloaded"), {}),
                    gemini_reply([{"text": "ok"}])])
    sleeps = Sleeps()
    [gen] = gemini_backend(server, retry=RetryPolicy(sleep=sleeps)).generate([TRACE[:2]])
    assert gen.text == "ok" and len(server.requests) == 3 and len(sleeps) == 2


def test_gemini_400_is_not_retried(serve):
    server = serve([(400, gemini_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), {})])
    sleeps = Sleeps()
    with pytest.raises(BackendError) as err:
        gemini_backend(server, retry=RetryPolicy(sleep=sleeps)).generate([TRACE[:2]])
    assert len(server.requests) == 1 and sleeps == [] and err.value.status == 400
    assert "HTTP 400" in str(err.value) and "gemini-2.5-flash" in str(err.value) and "Invalid JSON payload" in str(err.value)


def test_gemini_context_length_is_overflow(serve):
    message = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    server = serve([(400, gemini_error(400, "INVALID_ARGUMENT", message), {})])
    [gen] = gemini_backend(server).generate([TRACE[:2]])
    assert gen.overflow and len(server.requests) == 1


def test_gemini_missing_key(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(MissingKeyError, match="GEMINI_API_KEY"):
        GeminiBackend()
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    assert GeminiBackend().name == "gemini:gemini-2.5-flash"


def test_gemini_concurrency_keeps_input_order(serve):
    def reply(request):
        question = request["body"]["contents"][-1]["parts"][0]["text"]
        return gemini_reply([{"text": f"answer to {question}"}])

    server = serve(reply, delay=lambda r: 0.02 * (8 - int(r["body"]["contents"][-1]["parts"][0]["text"][1:])))
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    gens = gemini_backend(server, concurrency=4).generate(convs)
    assert [g.text for g in gens] == [f"answer to q{i}" for i in range(6)]
    assert len(server.requests) == 6 and server.max_in_flight >= 2


def test_gemini_check_names_the_fix(serve):
    from hopsmith.backends.remote import BackendSetupError

    def get(path):
        if path.startswith("/v1/models/gemini-2.5-flash"):
            return 200, {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"}, {}
        if path.startswith("/v1/models/"):
            return 404, gemini_error(404, "NOT_FOUND", "models/gemini-9 is not found for API version v1"), {}
        return 200, {"models": [{"name": "models/gemini-2.5-flash"}, {"name": "models/gemini-2.5-pro"}]}, {}

    server = serve([gemini_reply([{"text": "ok"}])], get=get)
    gemini_backend(server).check()
    assert server.gets[0].startswith("/v1/models/gemini-2.5-flash") and not server.requests  # nothing generated
    with pytest.raises(BackendSetupError, match="no Gemini model 'gemini-9' for this key; it can use: gemini-2.5-flash, gemini-2.5-pro"):
        GeminiBackend("gemini-9", api_key="k", base_url=server.url).check()
    bad_key = serve([], get=lambda path: (400, gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."), {}))
    with pytest.raises(BackendSetupError, match=r"HTTP 400: the API key was refused: check \$GEMINI_API_KEY or \$GOOGLE_API_KEY"):
        gemini_backend(bad_key).check()


def test_gemini_daily_quota_is_not_retried_and_retry_info_is_honoured(serve):
    def quota(kind: str, delay: str):
        body = gemini_error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota")
        body["error"]["details"] = [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": kind}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
        return 429, body, {}

    server = serve([quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "30s"), gemini_reply([{"text": "ok"}])])
    sleeps = Sleeps()
    with pytest.raises(BackendError, match="daily quota is used up"):
        gemini_backend(server, retry=RetryPolicy(sleep=sleeps)).generate([TRACE[:2]])
    assert len(server.requests) == 1 and sleeps == []
    server = serve([quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "7s"), gemini_reply([{"text": "ok"}])])
    [gen] = gemini_backend(server, retry=RetryPolicy(sleep=sleeps)).generate([TRACE[:2]])
    assert gen.text == "ok" and sleeps == [7.0]


def test_gemini_tools_in_prompt(serve):
    server = serve([gemini_reply([{"text": '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call>'}])])
    [gen] = gemini_backend(server, tools="prompt").generate([TRACE[:2]], tools=TOOLS)
    body = server.requests[0]["body"]
    assert "tools" not in body and "# Tools" in body["systemInstruction"]["parts"][0]["text"]
    assert HermesFormat().parse(gen.text).calls[0].arguments == {"query": "x"}


def test_gemini_clean_schema():
    schema = {"type": "object", "additionalProperties": False, "$schema": "x",
              "properties": {"n": {"type": ["integer", "null"], "minimum": 1}, "tags": {"type": "array", "items": {"type": "string", "const": "a"}}}}
    assert clean_schema(schema) == {"type": "object", "properties": {"n": {"type": "integer", "nullable": True, "minimum": 1},
                                                                     "tags": {"type": "array", "items": {"type": "string"}}}}


# ---------------------------------------------------------------------------------------------------
# Shared pieces


def test_with_retries_unit():
    sleeps = Sleeps()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "done"

    assert with_retries(flaky, sleep=sleeps, base_delay=0.5) == "done" and len(calls) == 3 and len(sleeps) == 2

    def bad_request():
        calls.append(1)
        raise BackendError("nope", backend="x", where="y", status=404)

    calls.clear()
    with pytest.raises(BackendError):
        with_retries(bad_request, sleep=sleeps)
    assert len(calls) == 1

    def other():
        raise KeyError("not a transport problem")

    with pytest.raises(KeyError):
        with_retries(other, sleep=sleeps)
    # Backoff is capped at max_delay.
    sleeps.clear()
    with pytest.raises(TimeoutError):
        with_retries(lambda: (_ for _ in ()).throw(TimeoutError()), attempts=8, base_delay=1, max_delay=4, sleep=sleeps)
    assert len(sleeps) == 7 and max(sleeps) <= 4


def test_parse_retry_after_and_its_cap():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("99999") == 99999.0
    # A server that asks for more than two minutes is not waited for: the error is raised at once.
    sleeps, calls = Sleeps(), []

    def slow_down():
        calls.append(1)
        raise BackendError("slow down", backend="x", where="y", status=429, retry_after=parse_retry_after("99999"))

    with pytest.raises(BackendError):
        with_retries(slow_down, sleep=sleeps)
    assert len(calls) == 1 and sleeps == []


def test_normalize_pairs_by_id_and_drops_unanswered_calls():
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "x1", "type": "function", "function": {"name": "search", "arguments": {"query": "a"}}},
            {"id": "x2", "type": "function", "function": {"name": "search", "arguments": {"query": "b"}}},
        ]},
        {"role": "tool", "tool_call_id": "x2", "name": "search", "content": "B"},
    ]
    out = normalize_messages(msgs)
    assert [c["id"] for c in out[1]["calls"]] == ["x2"]
    assert out[2] == {"role": "tool", "id": "x2", "name": "search", "content": "B"}


def test_make_backend_specs(monkeypatch, tiny_dir, tmp_path):
    import hopsmith.backends.hf as hf
    from hopsmith.config import ConfigError
    from hopsmith.models import ModelError

    built = []

    class FakeHF:
        def __init__(self, model, **kw):
            built.append((model, kw))

    monkeypatch.setattr(hf, "HFBackend", FakeHF)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # the files an adapter directory holds
    make_backend("embedded")
    make_backend(str(tiny_dir), batch_size=2)
    make_backend(f"hf:{tiny_dir}?batch_size=3&adapter={adapter}", batch_size=2)  # the spec's options win
    assert built == [("embedded", {"adapter": None}), (str(tiny_dir), {"adapter": None, "batch_size": 2}),
                     (str(tiny_dir), {"adapter": str(adapter), "batch_size": 3})]
    # checked before anything loads: a model that is not there, an adapter that is not one
    with pytest.raises(ModelError, match=r"^extractor=Org/not-here: unknown model .*openai:MODEL@URL"):
        make_backend("Org/not-here", role="extractor")
    with pytest.raises(ModelError, match="no adapter_config.json"):
        make_backend(f"embedded?adapter={tmp_path}")
    assert len(built) == 3

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    b = make_backend("openai:gpt-4o-mini", concurrency=2, batch_size=16)  # a stage's local defaults are ignored
    assert isinstance(b, OpenAICompatBackend) and (b.model, b.base_url, b.concurrency) == ("gpt-4o-mini", "https://api.openai.com/v1", 2)
    assert b.name == "openai:gpt-4o-mini"
    b = make_backend("openai:Qwen/Qwen3-8B@http://localhost:8000/v1?timeout=30&concurrency=16&tools=prompt",
                     options={"timeout": 10, "max_retries": 1})
    assert (b.model, b.url, b.timeout, b.concurrency, b.max_retries, b.tools_mode) == (
        "Qwen/Qwen3-8B", "http://localhost:8000/v1/chat/completions", 30.0, 16, 1, "prompt")
    assert b.name == "openai:Qwen/Qwen3-8B@http://localhost:8000/v1"
    assert make_backend("openai:m@http://localhost:8000/v1", role="agent", tools_in_prompt=True).tools_mode == "prompt"

    monkeypatch.setenv("GEMINI_API_KEY", "k")
    g = make_backend("gemini:gemini-2.5-pro?concurrency=3")
    assert isinstance(g, GeminiBackend) and (g.model, g.concurrency) == ("gemini-2.5-pro", 3)
    assert make_backend("gemini:").model == "gemini-2.5-flash"

    for bad, why in (("anthropic:claude", "openai:<model>@<base_url>"), ("openai:", "no model"),
                     ("openai:m?timout=3", "unknown option 'timout' for openai backends; known: api_key_env"),
                     ("openai:m?concurrency=many", "must be a whole number"), ("openai:m?tools=maybe", "tools='maybe'"),
                     (f"openai:m@http://localhost:1/v1?adapter={adapter}", "unknown option 'adapter'")):
        with pytest.raises(ConfigError, match=re.escape(why)):
            make_backend(bad, role="judge")
    with pytest.raises(ConfigError, match=r"^teacher=openai:m@http://localhost:1/v1\?tools=field: .*contradicts"):
        make_backend("openai:m@http://localhost:1/v1?tools=field", role="teacher", tools_in_prompt=True)


# ---------------------------------------------------------------------------------------------------
# The LLM judge through real clients: a 429, then malformed judge JSON, then a valid verdict


def _judge_trace():
    return {"id": "t1", "question_id": "q1", "answers": ["Eldon"], "messages": TRACE[:4] + [
        {"role": "assistant", "content": "FINAL(Eldon)"}], "tools": TOOLS}


VERDICT = {"correctness": 5, "search_approach": 4, "grounding": 5, "format": 5, "verdict": "pass", "reasons": ["grounded"]}


def test_openai_judge_retries_429_and_malformed_json(serve, openai_sleeps):
    from hopsmith.judge import LLMJudge

    server = serve([(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}),
                    chat_reply("Sure! {\"correctness\": 5, \"search_app"),  # cut-off JSON
                    chat_reply("```json\n" + json.dumps(VERDICT) + "\n```")])
    [result] = LLMJudge(openai_backend(server)).judge_many([_judge_trace()])
    assert result["verdict"] == "pass" and result["score"] == pytest.approx(19 / 20)
    assert len(server.requests) == 3  # the 429 was retried by the backend, the bad JSON by the judge


def test_gemini_judge_never_passes_malformed_json(serve):
    from hopsmith.judge import LLMJudge

    server = serve([(429, gemini_error(429, "RESOURCE_EXHAUSTED", "Quota"), {}), gemini_reply([{"text": "not json"}])])
    [result] = LLMJudge(gemini_backend(server), retries=2).judge_many([_judge_trace()])
    assert result["verdict"] == "judge_error" and "raw" in result
    assert len(server.requests) == 4  # one 429 retried, then three malformed replies (first try + 2 retries)


def test_a_key_is_never_sent_in_plain_text_to_another_machine(monkeypatch):
    """OPENAI_API_KEY goes to https servers and to this machine; a plain-http remote server gets no key."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    remote = OpenAICompatBackend("m", base_url="http://10.1.2.3:8000/v1")
    assert remote.key_withheld and remote.api_key is None and remote._headers is not None
    assert "sk-secret" not in repr(remote.client.default_headers)
    assert "only over https" in remote._hint(401, "", None, "")
    for url in ("https://api.example.com/v1", "http://localhost:8000/v1", "http://127.0.0.1:9/v1"):
        kept = OpenAICompatBackend("m", base_url=url)
        assert kept.api_key == "sk-secret" and not kept.key_withheld
    monkeypatch.delenv("OPENAI_API_KEY")
    assert OpenAICompatBackend("m", base_url="http://10.1.2.3:8000/v1").api_key is None  # no key needed to try
