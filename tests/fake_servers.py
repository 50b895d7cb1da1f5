"""Fake OpenAI-compatible and Gemini servers that speak the real wire formats, for the backend tests.

`FakeServer(replies)` listens on 127.0.0.1 (port 0) in a thread and records every request; replies come from
a list (the last one repeating) or a function of the request; `get` answers GET paths (e.g. /v1/models).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# A reply: (status, json-able body or raw str, extra headers).
Reply = tuple[int, Any, dict]


class _QuietOnHangup(ThreadingHTTPServer):
    """A client that hangs up while a reply is written (the `openai` client closes on an error status) is no
    server fault: socketserver would print its traceback to stderr, where tests read the CLI's one-line error."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeServer:
    """Records every POST and answers from `replies` (a list used in order, the last one repeating)
    or from a function of the recorded request."""

    def __init__(self, replies: list[Reply] | Callable[[dict], Reply], delay: Callable[[dict], float] | None = None,
                 get: Callable[[str], Reply] | None = None):
        self.replies = replies
        self.delay = delay
        self.get = get  # GET path -> reply (e.g. /v1/models); None: 404
        self.gets: list[str] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                           "body": json.loads(raw or b"{}")}
                with server.lock:
                    n = len(server.requests)
                    server.requests.append(request)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay(request))
                    if callable(server.replies):
                        status, body, headers = server.replies(request)
                    else:
                        status, body, headers = server.replies[min(n, len(server.replies) - 1)]
                finally:
                    with server.lock:
                        server.in_flight -= 1
                self.answer(status, body, headers)

            def do_GET(self):
                server.gets.append(self.path)
                if server.get is None:
                    self.answer(404, {"detail": "Not Found"}, {})
                else:
                    self.answer(*server.get(self.path))

            def answer(self, status, body, headers):
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = _QuietOnHangup(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, and every test shuts a server down.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class Sleeps(list):
    """A `sleep` that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def chat_reply(content: str | None = "Eldon", *, tool_calls=None, usage=(11, 3), **message) -> Reply:
    msg = {"role": "assistant", "content": content, **message}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }
    return 200, body, {}


def models_list(*ids: str):
    return lambda path: (200, {"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": "x"}
                                                        for i in ids]}, {}) if path == "/v1/models" else (404, {}, {})


def gemini_reply(parts: list[dict], usage=(21, 5), thoughts=None) -> Reply:
    meta = {"promptTokenCount": usage[0], "candidatesTokenCount": usage[1], "totalTokenCount": sum(usage)}
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    body = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": meta,
        "modelVersion": "gemini-2.5-flash",
    }
    return 200, body, {}


def gemini_error(code: int, status: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "status": status}}
