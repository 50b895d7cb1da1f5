"""The eval endpoint: a search agent (base model or adapter) behind a bearer token, over HTTP.

    hopsmith serve --adapter runs/ladder/sft --port 8000 --token-env HOPSMITH_API_TOKEN
    curl -H "Authorization: Bearer $HOPSMITH_API_TOKEN" -d '{"question": "..."}' localhost:8000/answer

A WSGI app, so the same object runs under the standard library's server here and under
`@modal.wsgi_app()` in the cloud (`modal deploy app.py`). Routes:

- `GET /health` (no token): `{"ok": true, "model": ...}`.
- `POST /answer` `{"question": str, "paragraphs": [{"id", "title", "text"}]?, "data": name?, "question_id": id?,
  "max_turns": int?}`: runs the agent on one question, searching the given paragraphs, or the pool of a
  bundled question (`data` + `question_id`); returns the answer, the tool calls and the transcript.
- `POST /evaluate` `{"data": name, "limit": int <= max_eval, "split": "eval"}`: evaluates the served
  agent on a bundled set and returns the metrics (accuracy, EM, F1 with CIs, rates, failure taxonomy).

Every other request gets a JSON error: 401 without or with a wrong token, 400 for a body that is not
JSON or misses a field (the message names it), 404 for an unknown path, 405 for a wrong method.
"""
from __future__ import annotations

import hmac
import json
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

from hopsmith.config import EvalConfig

MAX_BODY = 4 * 1024 * 1024


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error"}


@dataclass(frozen=True)
class ServeConfig:
    model: str = "embedded"
    adapter: str | None = None
    token_env: str = "HOPSMITH_API_TOKEN"  # the bearer token is read from this environment variable
    host: str = "127.0.0.1"
    port: int = 8000
    max_turns: int = 8
    max_new_tokens: int = 160
    top_k: int = 5
    max_chars: int | None = 600
    max_eval: int = 50  # /evaluate refuses larger requests (an endpoint call should end in minutes)


class AgentService:
    """The work behind the routes; one generation at a time (the model is not thread-safe)."""

    def __init__(self, cfg: ServeConfig, backend, extractor=None):
        self.cfg, self.backend, self.extractor = cfg, backend, extractor
        self.lock = threading.Lock()

    def answer(self, body: dict) -> dict:
        from hopsmith.agent.loop import AgentConfig, run_episodes
        from hopsmith.records import Paragraph, Question

        question = body.get("question")
        pool = None
        if body.get("data") or body.get("question_id"):
            q, pool = self._bundled(body)
            question = question or q.question
            answers = q.answers
        else:
            if not isinstance(question, str) or not question.strip():
                raise HTTPError(400, "field 'question' (a non-empty string) is required")
            paragraphs = body.get("paragraphs")
            if not isinstance(paragraphs, list) or not paragraphs:
                raise HTTPError(400, "field 'paragraphs' (a non-empty list of {id, title, text}) is required "
                                     "unless 'data' and 'question_id' name a bundled question")
            pool = []
            for k, p in enumerate(paragraphs):
                if not isinstance(p, dict) or not isinstance(p.get("text"), str):
                    raise HTTPError(400, f"paragraphs[{k}] must be an object with a string 'text'")
                pool.append(Paragraph(id=str(p.get("id", k)), title=str(p.get("title", "")), text=p["text"]))
            answers = ()
        max_turns = body.get("max_turns", self.cfg.max_turns)
        if not isinstance(max_turns, int) or not 1 <= max_turns <= 20:
            raise HTTPError(400, "field 'max_turns' must be an integer from 1 to 20")
        q = Question(id="request", dataset="request", question=question, answers=tuple(answers), hops=0,
                     paragraphs=tuple(pool))
        agent = AgentConfig(max_turns=max_turns, max_new_tokens=self.cfg.max_new_tokens, top_k=self.cfg.top_k,
                            max_chars=self.cfg.max_chars, few_shot=self.cfg.adapter is None)
        with self.lock:
            row = run_episodes([q], {q.id: list(pool)}, self.backend, agent, extractor=self.extractor)[0]
        out = {"answer": row["prediction"], "finished": row["finished"], "stop": row["stop"], "turns": row["turns"],
               "tool_calls": row["tool_calls"], "messages": row["messages"], "seconds": row["seconds"]}
        if answers:
            out["gold"] = list(answers)
            out["metrics"] = row["metrics"]
        return out

    def _bundled(self, body: dict):
        from hopsmith.data import BUNDLED, load_questions
        from hopsmith.data.pools import build_pools

        data, qid = body.get("data"), body.get("question_id")
        if data not in BUNDLED:
            raise HTTPError(400, f"field 'data' must name a bundled set ({', '.join(BUNDLED)}), got {data!r}")
        everything = load_questions(data)
        match = [q for q in everything if q.id == qid]
        if not match:
            raise HTTPError(400, f"no question with question_id {qid!r} in {data}")
        return match[0], build_pools(match, others=everything)[match[0].id]

    def evaluate(self, body: dict) -> dict:
        from hopsmith.data import BUNDLED
        from stages import evaluate

        data, limit, split = body.get("data"), body.get("limit", 10), body.get("split", "eval")
        if data not in BUNDLED:
            raise HTTPError(400, f"field 'data' must name a bundled set ({', '.join(BUNDLED)}), got {data!r}")
        if not isinstance(limit, int) or not 1 <= limit <= self.cfg.max_eval:
            raise HTTPError(400, f"field 'limit' must be an integer from 1 to {self.cfg.max_eval}")
        if split not in ("eval", "train", "all"):
            raise HTTPError(400, "field 'split' must be eval, train or all")
        ecfg = EvalConfig(data=data, split=split, limit=limit, model=self.cfg.model, adapter=self.cfg.adapter,
                          max_turns=self.cfg.max_turns, max_new_tokens=self.cfg.max_new_tokens, top_k=self.cfg.top_k,
                          max_chars=self.cfg.max_chars, few_shot=self.cfg.adapter is None, extraction_bench=False,
                          bootstrap=500)
        with self.lock, tempfile.TemporaryDirectory() as d:
            try:
                metrics = evaluate.run(ecfg, d, backend=self.backend, extractor=self.extractor, progress=False)
            except evaluate.LeakageError as exc:
                raise HTTPError(400, str(exc)) from None
        keep = ("n", "acc", "em", "f1", "tool_use_rate", "invalid_call_rate", "answered_without_search_rate",
                "no_final_answer_rate", "avg_tool_calls", "avg_turns", "supporting_recall", "failures", "latency")
        return {k: metrics.get(k) for k in keep}


def make_app(service: AgentService, token: str | None):
    """The WSGI application. `token` None or empty refuses to start: an endpoint without auth is a leak."""
    if not token:
        from hopsmith.config import ConfigError

        raise ConfigError(f"no API token: set ${service.cfg.token_env} (the endpoint refuses to run without auth)")
    routes = {"/health": ("GET", None), "/answer": ("POST", service.answer), "/evaluate": ("POST", service.evaluate)}

    def app(environ, start_response):
        status, payload = 200, None
        try:
            path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
            if path not in routes:
                raise HTTPError(404, f"no route {path}; routes: {', '.join(routes)}")
            want, handler = routes[path]
            if method != want:
                raise HTTPError(405, f"{path} takes {want}, not {method}")
            if handler is None:
                payload = {"ok": True, "model": getattr(service.backend, "name", service.cfg.model)}
            else:
                _check_token(environ, token)
                payload = handler(_json_body(environ))
        except HTTPError as exc:
            status, payload = exc.status, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            status, payload = 500, {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(payload, default=str).encode()
        start_response(f"{status} {_REASONS.get(status, '')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def _check_token(environ, token: str) -> None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPError(401, "wrong bearer token")


def _json_body(environ) -> dict[str, Any]:
    try:
        size = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HTTPError(400, "bad Content-Length") from None
    if size > MAX_BODY:
        raise HTTPError(413, f"body of {size} bytes is over the {MAX_BODY}-byte limit")
    raw = environ["wsgi.input"].read(size) if size else b""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "body must be a JSON object")
    return body


def build_service(cfg: ServeConfig, *, backend=None, extractor=None) -> AgentService:
    if backend is None:
        from stages.evaluate import make_backends

        # The same backend and extractor `hopsmith eval` builds, so the endpoint answers as eval scores.
        backend, extractor = make_backends(EvalConfig(model=cfg.model, adapter=cfg.adapter, batch_size=1))
    return AgentService(cfg, backend, extractor)


def serve_forever(cfg: ServeConfig) -> None:
    import os
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    token = os.environ.get(cfg.token_env)
    app = make_app(build_service(cfg), token)  # refuses to start without a token

    class Quiet(WSGIRequestHandler):
        def log_message(self, fmt, *args):
            print(f"{self.address_string()} {fmt % args}")

    with make_server(cfg.host, cfg.port, app, handler_class=Quiet) as server:
        print(f"serving {cfg.adapter or cfg.model} on http://{cfg.host}:{cfg.port} (token from ${cfg.token_env})")
        server.serve_forever()
