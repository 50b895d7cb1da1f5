"""The eval endpoint over real HTTP: auth, bad bodies, /answer on given paragraphs and on a bundled
question, /evaluate; and the vLLM backend's wiring against a stand-in `vllm` module."""
import json
import sys
import threading
import types
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from conftest import ScriptedBackend, call

from hopsmith.config import ConfigError
from hopsmith.data import hop_question, load_questions
from stages import serve

TOKEN = "s3cret-token"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture()
def endpoint():
    """Start a server around a given backend; yields a request function."""
    servers = []

    def start(backend, **cfg):
        service = serve.AgentService(serve.ServeConfig(**cfg), backend)
        server = make_server("127.0.0.1", 0, serve.make_app(service, TOKEN), handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        base = f"http://127.0.0.1:{server.server_port}"

        def request(path, body=None, *, token=TOKEN, method=None, raw=None):
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            req = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"))
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        return request

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_auth_routes_and_bad_bodies(endpoint):
    request = endpoint(ScriptedBackend({}))
    assert request("/health", token=None) == (200, {"ok": True, "model": "scripted"})
    status, body = request("/answer", {"question": "q", "paragraphs": [{"text": "t"}]}, token=None)
    assert status == 401 and "missing bearer token" in body["error"]
    status, body = request("/answer", {"question": "q", "paragraphs": [{"text": "t"}]}, token="wrong")
    assert status == 401 and "wrong bearer token" in body["error"]
    status, body = request("/answer", raw=b"{not json")
    assert status == 400 and "not JSON" in body["error"]
    status, body = request("/answer", [1, 2])
    assert status == 400 and "JSON object" in body["error"]
    status, body = request("/answer", {"paragraphs": [{"text": "t"}]})
    assert status == 400 and "'question'" in body["error"]
    status, body = request("/answer", {"question": "q"})
    assert status == 400 and "'paragraphs'" in body["error"]
    status, body = request("/answer", {"question": "q", "paragraphs": [{"title": "no text"}]})
    assert status == 400 and "paragraphs[0]" in body["error"]
    status, body = request("/answer", {"question": "q", "paragraphs": [{"text": "t"}], "max_turns": 99})
    assert status == 400 and "max_turns" in body["error"]
    status, body = request("/evaluate", {"data": "musique", "limit": 10_000})
    assert status == 400 and "'limit'" in body["error"]
    status, body = request("/evaluate", {"data": "nope"})
    assert status == 400 and "'data'" in body["error"]
    assert request("/answer", method="GET")[0] == 405
    assert request("/nowhere", {})[0] == 404


def test_answer_searches_the_given_paragraphs(endpoint):
    script = [call("search", query="Eldon county"), "FINAL(Miller County)"]
    request = endpoint(ScriptedBackend({}, default=script))
    paragraphs = [{"id": "a", "title": "Eldon, Missouri", "text": "Eldon is a city in Miller County, Missouri."},
                  {"id": "b", "title": "Lloyd Dane", "text": "Lloyd Dane was born in Eldon, Missouri."}]
    status, body = request("/answer", {"question": "In which county was Lloyd Dane born?", "paragraphs": paragraphs})
    assert status == 200 and body["answer"] == "Miller County" and body["finished"]
    assert body["tool_calls"][0]["name"] == "search" and body["tool_calls"][0]["valid"]
    tool_msg = next(m for m in body["messages"] if m["role"] == "tool")
    assert "Miller County" in tool_msg["content"]  # the search ran over the request's paragraphs
    assert "metrics" not in body  # no gold answer, no score


def test_answer_and_evaluate_on_bundled_questions(endpoint):
    qs = load_questions("musique", split="eval", limit=2)
    script = {q.question: [call("search", query=hop_question(q, 0)), f"FINAL({q.answer})"] for q in qs}
    request = endpoint(ScriptedBackend(script))
    status, body = request("/answer", {"data": "musique", "question_id": qs[0].id})
    assert status == 200 and body["answer"] == qs[0].answer and body["metrics"]["acc"] == 1.0
    status, body = request("/answer", {"data": "musique", "question_id": "missing"})
    assert status == 400 and "missing" in body["error"]
    status, body = request("/evaluate", {"data": "musique", "limit": 2})
    assert status == 200 and body["n"] == 2 and body["acc"]["mean"] == 1.0 and "lo" in body["acc"]


def test_the_real_model_path_answers_over_http(endpoint, tiny_backend):
    request = endpoint(tiny_backend, max_new_tokens=4, max_turns=1)
    status, body = request("/answer", {"question": "Who?", "paragraphs": [{"text": "Someone."}]})
    assert status == 200 and body["turns"] >= 1 and isinstance(body["messages"], list)


def test_serve_refuses_to_start_without_a_token(monkeypatch):
    service = serve.AgentService(serve.ServeConfig(), ScriptedBackend({}))
    with pytest.raises(ConfigError, match="HOPSMITH_API_TOKEN"):
        serve.make_app(service, None)


def test_vllm_backend_sends_the_adapter_and_stops(monkeypatch, tiny_dir, tmp_path):
    """vLLM is not installed here: a stand-in module records what the backend asks of it."""
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            seen["params"] = kw

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.args = (name, int_id, path)

    class LLM:
        def __init__(self, **kw):
            seen["llm"] = kw

        def generate(self, prompts, params, *, lora_request=None, use_tqdm=True):
            seen["prompts"], seen["lora"] = prompts, lora_request
            out = types.SimpleNamespace(text='<tool_call>\n{"name": "search"}\n</tool_call> extra', token_ids=[1, 2, 3])
            return [types.SimpleNamespace(outputs=[out]) for _ in prompts]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora_mod)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    from hopsmith.backends.vllm_engine import VLLMBackend

    b = VLLMBackend(str(tiny_dir), adapter=str(adapter), max_model_len=4096)
    assert seen["llm"]["enable_lora"] is True
    conv = [{"role": "user", "content": "hello"}]
    huge = [{"role": "user", "content": "word " * 5000}]
    gens = b.generate([conv, huge], max_new_tokens=16, stop=["</tool_call>"])
    assert gens[0].text.endswith("</tool_call>") and gens[0].completion_tokens == 3
    assert gens[1].overflow and len(seen["prompts"]) == 1  # the prompt past the context never reached the engine
    assert seen["lora"].args == ("adapter", 1, str(adapter))
    assert seen["params"]["stop"] == ["</tool_call>"] and seen["params"]["include_stop_str_in_output"]
    assert "<|im_start|>user\nhello" in seen["prompts"][0]
    with pytest.raises(ValueError, match="no adapter_config.json"):
        VLLMBackend(str(tiny_dir), adapter=str(tmp_path))
