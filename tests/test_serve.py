"""The eval endpoint over real HTTP (uvicorn on a free port): auth, bad bodies, /answer on given paragraphs and
on a bundled question, /evaluate as a job to poll, concurrent requests answered in batches with /health never
waiting; and the vLLM backend's wiring against a stand-in `vllm` module."""
import json
import sys
import threading
import time
import types
import urllib.error
import urllib.request

import pytest
from conftest import ScriptedBackend, call

from hopsmith.config import ConfigError
from hopsmith.data import hop_question, load_questions
from stages import serve

TOKEN = "s3cret-token"


def start_server(app, cfg: serve.ServeConfig | None = None):
    """uvicorn serving `app` on a free port in a thread, configured as `hopsmith serve` configures it;
    returns (base url, stop)."""
    import uvicorn

    config = serve.server_config(app, cfg or serve.ServeConfig(), port=0, log_level="error", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop():
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


def client(base):
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


@pytest.fixture()
def endpoint():
    """Start a server around a given backend; yields a request function (its service on `.service`)."""
    stops = []

    def start(backend, **cfg):
        service = serve.AgentService(serve.ServeConfig(**cfg), backend)
        base, stop = start_server(serve.make_app(service, TOKEN), service.cfg)
        stops.append(stop)
        request = client(base)
        request.service, request.base = service, base
        return request

    yield start
    for stop in stops:
        stop()


def poll(request, job, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = request(f"/jobs/{job}")
        if body.get("status") in ("done", "failed"):
            return status, body
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish")


def test_auth_routes_and_bad_bodies(endpoint):
    request = endpoint(ScriptedBackend({}))
    assert request("/health", token=None) == (200, {"ok": True, "model": "scripted", "adapter": None, "queued": 0})
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
    assert request("/jobs/nope")[0] == 404 and request("/jobs/nope", token=None)[0] == 401
    assert request("/answer", method="GET")[0] == 405
    assert request("/nowhere", {})[0] == 404


def test_an_oversized_body_is_refused_unread():
    import asyncio

    import httpx

    app = serve.make_app(serve.AgentService(serve.ServeConfig(), ScriptedBackend({})), TOKEN)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/answer", content=b"x" * (serve.MAX_BODY + 1), headers={"Authorization": f"Bearer {TOKEN}"})

    resp = asyncio.run(go())
    assert resp.status_code == 413 and "over the" in resp.json()["error"]


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


def test_answer_and_evaluate_job_on_bundled_questions(endpoint):
    qs = load_questions("musique", split="eval", limit=2)
    script = {q.question: [call("search", query=hop_question(q, 0)), f"FINAL({q.answer})"] for q in qs}
    request = endpoint(ScriptedBackend(script))
    status, body = request("/answer", {"data": "musique", "question_id": qs[0].id})
    assert status == 200 and body["answer"] == qs[0].answer and body["metrics"]["acc"] == 1.0
    status, body = request("/answer", {"data": "musique", "question_id": "missing"})
    assert status == 400 and "missing" in body["error"]
    status, started = request("/evaluate", {"data": "musique", "limit": 2})
    assert status == 202 and started["status"] == "queued" and started["poll"] == f"/jobs/{started['job']}"
    status, body = poll(request, started["job"])
    assert status == 200 and body["status"] == "done", body
    result = body["result"]
    assert result["n"] == 2 and result["acc"]["mean"] == 1.0 and "lo" in result["acc"]


class Gated(ScriptedBackend):
    """Blocks inside generate until released: a model busy with a batch."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.entered, self.release = threading.Event(), threading.Event()

    def generate(self, conversations, **kw):
        self.entered.set()
        assert self.release.wait(30)
        return super().generate(conversations, **kw)


def test_concurrent_answers_are_batched_and_health_never_waits(endpoint):
    backend = Gated({}, default=["FINAL(x)"])
    request = endpoint(backend, batch_wait_ms=200)
    body = {"question": "q?", "paragraphs": [{"text": "t"}]}
    results = []
    first = threading.Thread(target=lambda: results.append(request("/answer", body)))
    first.start()
    assert backend.entered.wait(10)  # the first request's batch is on the model now
    others = [threading.Thread(target=lambda: results.append(request("/answer", body))) for _ in range(6)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, health = request("/health", token=None)  # answered while the model is busy
        assert status == 200 and health["ok"]
        if health["queued"] == 6:
            break
        time.sleep(0.02)
    assert health["queued"] == 6
    backend.release.set()
    for t in [first, *others]:
        t.join(30)
    assert len(results) == 7 and all(status == 200 and b["answer"] == "x" for status, b in results)
    assert backend.batches == [1, 6]  # the six that waited were answered in one generate call


def test_the_real_model_path_answers_over_http(endpoint, tiny_backend):
    request = endpoint(tiny_backend, max_new_tokens=4, max_turns=1)
    status, body = request("/answer", {"question": "Who?", "paragraphs": [{"text": "Someone."}]})
    assert status == 200 and body["turns"] >= 1 and isinstance(body["messages"], list)


def test_serve_refuses_to_start_without_a_token(monkeypatch):
    service = serve.AgentService(serve.ServeConfig(), ScriptedBackend({}))
    with pytest.raises(ConfigError, match="HOPSMITH_API_TOKEN"):
        serve.make_app(service, None)
    from hopsmith import cli

    monkeypatch.delenv("HOPSMITH_API_TOKEN", raising=False)
    assert cli.main(["serve", "--model", "nowhere"]) == 2  # one line, before any model loads


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
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # the files an adapter directory holds
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


def test_idle_and_half_sent_connections_never_block_health(endpoint):
    """Ten connections that opened and went silent (one mid-headers, one mid-body) do not stop /health or an
    answer: the server is asynchronous, not one connection at a time."""
    import socket
    from urllib.parse import urlparse

    request = endpoint(ScriptedBackend({}, default=["FINAL(x)"]))
    status, _ = request("/health", token=None)
    assert status == 200
    port = urlparse(request.base).port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    idle[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    idle[1].sendall(b"POST /answer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"question\"")  # body never finished
    try:
        t0 = time.monotonic()
        assert request("/health", token=None)[0] == 200
        status, body = request("/answer", {"question": "q?", "paragraphs": [{"text": "t"}]})
        assert status == 200 and body["answer"] == "x" and time.monotonic() - t0 < 10
    finally:
        for s in idle:
            s.close()


def _read_until_closed(sock, limit_s: float) -> bytes:
    """Everything the server sends on `sock` until it closes the connection (or `limit_s` passes)."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data + b"<still open>"
    return data


def test_slow_headers_and_stalled_bodies_get_408_and_lose_their_socket(endpoint):
    """A client that trickles its request head, one that sends nothing, and one that stops mid-body are each
    answered 408 and disconnected at their deadline; the server keeps answering everyone else."""
    import socket
    from urllib.parse import urlparse

    request = endpoint(ScriptedBackend({}, default=["FINAL(x)"]), header_timeout=0.6, body_timeout=0.6)
    port = urlparse(request.base).port
    silent = socket.create_connection(("127.0.0.1", port))
    trickle = socket.create_connection(("127.0.0.1", port))
    stalled = socket.create_connection(("127.0.0.1", port))
    try:
        t0 = time.monotonic()
        for byte in b"GET /healt":  # a byte every 50 ms, still mid-head when the 0.6 s deadline comes
            trickle.sendall(bytes([byte]))
            time.sleep(0.05)
        stalled.sendall(b"POST /answer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                        + b"\r\nContent-Length: 1000\r\n\r\n{\"question\"")
        replies = [_read_until_closed(s, 10) for s in (silent, trickle, stalled)]
        elapsed = time.monotonic() - t0
        for reply in replies:
            assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"headers did not arrive" in replies[0] and b"headers did not arrive" in replies[1]
        assert b"body did not arrive" in replies[2]
        assert elapsed < 5  # closed at the deadline, not at some much later idle timeout
        status, body = request("/answer", {"question": "q?", "paragraphs": [{"text": "t"}]})
        assert status == 200 and body["answer"] == "x"
    finally:
        for s in (silent, trickle, stalled):
            s.close()


def test_a_keep_alive_connection_gets_a_fresh_header_deadline_per_request(endpoint):
    """The deadline runs from the end of the previous response, so a client that sends requests on one
    connection at a normal pace is never cut off mid-conversation."""
    import http.client
    from urllib.parse import urlparse

    request = endpoint(ScriptedBackend({}, default=["FINAL(x)"]), header_timeout=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", urlparse(request.base).port, timeout=10)
    try:
        for _ in range(4):  # 4 x 0.4 s on one connection: past one deadline in all, within it each time
            conn.request("GET", "/health")
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["ok"] is True
            time.sleep(0.4)
    finally:
        conn.close()


def test_the_body_deadline_ends_when_the_body_is_in():
    """After the last body message the app may wait on `receive` as long as it likes (a disconnect watch
    during a long answer): only the body's arrival is bounded."""
    import asyncio

    async def run():
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await asyncio.sleep(0.3)  # past the 0.1 s deadline
            return {"type": "http.disconnect"}

        seen = []

        async def app(scope, receive, send):
            seen.append(await receive())
            seen.append(await receive())

        await serve.BodyDeadline(app, seconds=0.1)({"type": "http"}, receive, None)
        return seen

    assert [m["type"] for m in asyncio.run(run())] == ["http.request", "http.disconnect"]
