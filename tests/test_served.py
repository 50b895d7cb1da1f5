"""Against a real OpenAI-compatible server: `transformers serve` with the embedded model on 127.0.0.1, started and
stopped by this module's fixture, behind a recording proxy that keeps every request and the server's status.

The served agent with a served extractor, a served teacher and a served judge each run on 2 questions through
the command line and exit 0 with well-formed requests; a wrong model name and a base URL without /v1 fail as one line before
anything is written. Generation is kept to a few tokens and one turn: the point is the wire, not the answers.
The SmolLM2 template renders no tools and the server drops the `tools` field silently; the check must find
that and put the tool specs in the system prompt, and the run's config must say so.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hopsmith.cli import main
from hopsmith.io import read_jsonl
from hopsmith.tools.extract import EXTRACT_SYSTEM

START_TIMEOUT_S = 240  # a cold CI machine imports torch and transformers, then loads the model
WIRE_KEYS = {"model", "messages", "max_completion_tokens", "max_tokens", "temperature", "stop", "tools"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proxy:
    """Forwards every request to `upstream` and records (method, path, JSON body, status)."""

    upstream: str
    records: list = field(default_factory=list)

    def start(self) -> "Proxy":
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self, method: str):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else None
                req = urllib.request.Request(proxy.upstream + self.path, data=raw, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as resp:
                        status, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                proxy.records.append({"method": method, "path": self.path, "status": status,
                                      "body": json.loads(raw) if raw else None,
                                      "reply": json.loads(data) if data.startswith(b"{") else None})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Served:
    model: str  # the name the server answers to: the model directory it was started with
    proxy: Proxy
    log: Path

    def spec(self, options: str = "") -> str:
        return f"openai:{self.model}@{self.proxy.url}/v1" + (f"?{options}" if options else "")

    def since(self, mark: int) -> list[dict]:
        return self.proxy.records[mark:]


def _tail(path: Path, n: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`transformers serve <embedded model>` on 127.0.0.1, up within START_TIMEOUT_S or the test fails (never
    hangs); terminated (then killed) when the module's tests end."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers serve needs the serving extra: pip install 'transformers[serving]'")
    from hopsmith.models import resolve_model

    model = resolve_model("embedded")
    port = _free_port()
    log = tmp_path_factory.mktemp("served") / "serve.log"
    launcher = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; sys.exit(main())"
    cmd = [sys.executable, "-c", launcher, "serve", model, "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--log-level", "info"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode} before answering:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer within {START_TIMEOUT_S} s:\n{_tail(log)}")
            time.sleep(0.5)
        proxy = Proxy(f"http://127.0.0.1:{port}").start()
        yield Served(model, proxy, log)
        proxy.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def well_formed(records: list[dict], model: str) -> list[dict]:
    """Every chat request of `records`, checked: the right path and model, known fields only, chat messages with
    text content, a small completion budget, answered 200. Returns their bodies."""
    chats = [r for r in records if r["method"] == "POST"]
    assert chats, "no request reached the server"
    for r in chats:
        body = r["body"]
        assert r["path"] == "/v1/chat/completions" and r["status"] == 200, (r["path"], r["status"], r["reply"])
        assert set(body) <= WIRE_KEYS and body["model"] == model, body.keys()
        assert isinstance(body["max_completion_tokens"], int) and 1 <= body["max_completion_tokens"] <= 16
        assert body["messages"] and all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                                        for m in body["messages"])
        assert r["reply"]["choices"][0]["message"]["role"] == "assistant"
    return [r["body"] for r in chats]


def test_eval_with_the_served_agent_and_the_served_extractor(served, tmp_path):
    mark = len(served.proxy.records)
    out = tmp_path / "eval"
    # the extractor's options differ from the agent's, so it is a second backend with its own check
    assert main(["eval", "--data", "musique", "--limit", "2", "--max-turns", "1", "--no-answer-at-cap", "--no-few-shot",
                 "--max-new-tokens", "8", "--bootstrap", "20", "--quiet", "--model", served.spec(),
                 "--extractor", served.spec("max_completion_tokens=4"), "--out", str(out)]) == 0
    backends = json.loads((out / "config.json").read_text())["backends"]
    agent, extractor = backends["agent"], backends["extractor"]
    assert agent["tools"] == "prompt" and "ignores the tools field" in agent["tools_detail"]
    assert extractor["kind"] == "openai" and not extractor["same_as_agent"]
    assert len(read_jsonl(out / "results.jsonl")) == 2
    bodies = well_formed(served.since(mark), served.model)
    probes = [b for b in bodies if b["max_completion_tokens"] == 1]
    # the agent's two probes (without, then with a tool spec: ignored), the extractor's one
    assert len(probes) == 3 and ["tools" in b for b in probes] == [False, True, False]
    turns = [b for b in bodies if b["max_completion_tokens"] == 8]
    assert len(turns) == 2 and all("tools" not in b and "# Tools" in b["messages"][0]["content"]
                                   and '"name": "search"' in b["messages"][0]["content"] for b in turns)
    reads = [b for b in bodies if b["max_completion_tokens"] == 4]
    assert len(reads) >= len(read_jsonl(out / "extraction.jsonl")) > 0  # the benchmark's hops (+ any llm_query)
    assert all(b["messages"][0]["content"] == EXTRACT_SYSTEM for b in reads)


def test_teacher_traces_and_the_judge(served, tmp_path):
    mark = len(served.proxy.records)
    root = tmp_path / "ladder"
    assert main(["traces", "--root", str(root), "--limit", "2", "--max-turns", "1", "--max-new-tokens", "8",
                 "--thinking-fraction", "0", "--teacher", served.spec()]) == 0
    assert json.loads((root / "traces" / "config-0.json").read_text())["backends"]["teacher"]["tools"] == "prompt"
    teacher = read_jsonl(root / "traces" / "shard-0.jsonl") + read_jsonl(root / "traces" / "rejected-0.jsonl")
    assert len(teacher) == 2
    well_formed(served.since(mark), served.model)

    # the judge reads two synthetic traces (one per question), with a few tokens each: a reply that does not
    # parse is recorded as a judge error, never a pass; what is checked here is the wire
    mark = len(served.proxy.records)
    judged = tmp_path / "judged"
    assert main(["traces", "--root", str(judged), "--limit", "2", "--per-question", "1"]) == 0
    assert main(["judge", "--root", str(judged), "--retries", "0", "--max-result-chars", "120",
                 "--judge", served.spec("max_completion_tokens=8")]) == 0
    summary = json.loads((judged / "judge_summary.json").read_text())
    assert summary["traces"] == 2 and summary["llm"]["judged"] == 2
    asked = [b for b in well_formed(served.since(mark), served.model) if b["max_completion_tokens"] != 1]
    assert len(asked) == 2 and all(b["messages"][0]["content"].startswith("You review one transcript") for b in asked)


def test_a_wrong_model_or_url_is_one_line_before_anything_is_written(served, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["eval", "--limit", "2", "--extractor", "none", "--model", f"openai:wrong@{served.proxy.url}/v1",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"does not serve model 'wrong'; {served.proxy.url}/v1/models lists: {served.model}" in err
    assert main(["eval", "--limit", "2", "--extractor", "none", "--model", f"openai:{served.model}@{served.proxy.url}",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does the base URL end in /v1?" in err and "Traceback" not in err and not out.exists()
