"""The eval endpoint: a search agent (base model or adapter) behind a bearer token, over HTTP.

    HOPSMITH_API_TOKEN=dev hopsmith serve --adapter runs/ladder/sft --port 8000
    curl -H "Authorization: Bearer dev" -d '{"data": "musique", "question_id": "2hop__..."}' localhost:8000/answer

An ASGI app (FastAPI): `hopsmith serve` runs it under uvicorn, `modal deploy app.py` under
`@modal.asgi_app()`. Concurrent `/answer` requests are gathered into batches: a queue and one worker thread
that owns the model, which runs every request of a batch as one set of episodes (`run_episodes` steps them
together, one batched `generate` per turn). Long evaluations are jobs. Routes:

- `GET /health` (no token, never waits on the model): `{"ok", "model", "adapter": {run, stage, path,
  sha256, base_model, steps, traces} | null, "queued"}`.
- `POST /answer` `{"question": str, "paragraphs": [{"id", "title", "text"}]?, "data": name?, "question_id": id?,
  "max_turns": int?}`: runs the agent on one question, searching the given paragraphs, or the pool of a
  bundled question (`data` + `question_id`); returns the answer, the tool calls and the transcript.
- `POST /evaluate` `{"data": name, "limit": int <= max_eval, "split": "eval"}`: starts an evaluation of the
  served agent on a bundled set; answers 202 with `{"job": id, "status", "poll": "/jobs/<id>"}` at once.
- `GET /jobs/<id>`: `{"job", "status": queued|running|done|failed, "result": metrics (accuracy, EM, F1 with
  CIs, rates, failure taxonomy) when done, "error" when failed}`.

Every other request gets a JSON `{"error": ...}`: 401 without or with a wrong token, 400 for a body that is
not JSON or misses a field (the message names it), 404 for an unknown path or job, 405 for a wrong method,
413 for a body over 4 MiB, 408 for a request whose headers (`header_timeout`) or body (`body_timeout`) do
not arrive in time: a silent or trickling client holds a socket for seconds, not forever.
"""
# No `from __future__ import annotations` here: FastAPI reads the route handlers' annotations (`Request`)
# at definition time, inside make_app.
import asyncio
import concurrent.futures
import hashlib
import hmac
import itertools
import json
import os
import queue
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from hopsmith.agent.backends import agent_backends
from hopsmith.evaluation import run as run_eval
from hopsmith.agent.loop import run_episodes
from hopsmith.config import AgentConfig, ConfigError, EvalConfig, flat_knobs
from hopsmith.data import BUNDLED, build_pools, load_questions
from hopsmith.envs import multihop
from hopsmith.records import Paragraph, Question

MAX_BODY = 4 * 1024 * 1024


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@flat_knobs
@dataclass(frozen=True)
class ServeConfig:
    """`hopsmith serve`: the agent behind a bearer token, over HTTP."""

    token_env: str = "HOPSMITH_API_TOKEN"  # the bearer token is read from this environment variable
    host: str = "127.0.0.1"  # the address uvicorn listens on
    port: int = 8000  # the port uvicorn listens on
    max_eval: int = 50  # /evaluate refuses larger requests
    max_batch: int = 16  # /answer requests answered together
    batch_wait_ms: int = 20  # how long the first request of a batch waits for others to join
    # A connection that has not finished sending a request's headers this many seconds after it opened (or
    # after its last response) is closed with 408: a slow or silent client holds no socket for long
    header_timeout: float = 10.0
    # A request whose body has not fully arrived this many seconds after its headers gets 408
    body_timeout: float = 30.0
    # The agent served (model, adapter) and how it answers; a request may lower max_turns
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(max_turns=8, max_new_tokens=160, few_shot=None),
                               metadata={"omit": ("env", "batch_size")})


# -- the worker that owns the model ---------------------------------------------------------------------

@dataclass
class _Item:
    kind: str  # "answer": joins a batch; "call": runs alone (an evaluation job)
    payload: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class Batcher:
    """A queue and one worker thread. `submit(payload)` items are gathered (up to `max_batch`, waiting at
    most `wait_s` after the first) and handed to `run_batch(payloads) -> results` together; `call(fn)` runs
    `fn()` on the same thread, alone, so nothing else touches the model meanwhile. `batches` records the
    size of every batch run."""

    def __init__(self, run_batch: Callable[[list], list], *, max_batch: int = 16, wait_s: float = 0.02):
        self.run_batch, self.max_batch, self.wait_s = run_batch, max(1, max_batch), wait_s
        self.queue: queue.Queue = queue.Queue()
        self.held: deque = deque()
        self.batches: list[int] = []
        self.thread = threading.Thread(target=self._loop, name="hopsmith-batcher", daemon=True)
        self.thread.start()

    def submit(self, payload) -> concurrent.futures.Future:
        item = _Item("answer", payload)
        self.queue.put(item)
        return item.future

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        item = _Item("call", fn)
        self.queue.put(item)
        return item.future

    def pending(self) -> int:
        return self.queue.qsize() + len(self.held)

    def close(self) -> None:
        self.queue.put(None)

    def _next(self, timeout: float | None):
        if self.held:
            return self.held.popleft()
        return self.queue.get(timeout=timeout) if timeout is not None else self.queue.get()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            if first.kind == "call":
                self._resolve([first], lambda fns: [fns[0]()])
                continue
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self._next(max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:  # closing: finish this batch, then stop
                    self.queue.put(None)
                    break
                if item.kind != "answer":  # a job waits for the batch before it to finish
                    self.held.appendleft(item)
                    break
                batch.append(item)
            self.batches.append(len(batch))
            self._resolve(batch, self.run_batch)

    @staticmethod
    def _resolve(items: list[_Item], run: Callable[[list], list]) -> None:
        try:
            results = run([i.payload for i in items])
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request, the worker lives on
            for i in items:
                i.future.set_exception(exc)
            return
        for i, r in zip(items, results):
            if isinstance(r, BaseException):
                i.future.set_exception(r)
            else:
                i.future.set_result(r)


# -- the work behind the routes -------------------------------------------------------------------------

@dataclass
class AnswerRequest:
    question: Any  # a hopsmith.records.Question with a unique id
    pool: list
    max_turns: int
    answers: tuple


class AgentService:
    """Validates requests, runs batches of them on the backend, evaluates; `identity` describes the adapter.
    `evaluate` runs an /evaluate job (`hopsmith.evaluation.run`, what `hopsmith eval` runs, unless another
    is given)."""

    def __init__(self, cfg: ServeConfig, backend, extractor=None, *, identity: dict | None = None,
                 evaluate: Callable | None = None):
        self.cfg, self.backend, self.extractor, self.run_eval = cfg, backend, extractor, evaluate or run_eval
        adapter = cfg.agent.adapter
        self.identity = identity if identity is not None else (adapter_identity(adapter) if adapter else None)
        self._bundled_sets: dict[str, list] = {}
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()

    # /answer
    def parse_answer(self, body: dict) -> AnswerRequest:
        question = body.get("question")
        if body.get("data") or body.get("question_id"):
            q, pool = self._bundled(body)
            question = question or q.question
            answers = tuple(q.answers)
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
        max_turns = body.get("max_turns", self.cfg.agent.max_turns)
        if not isinstance(max_turns, int) or isinstance(max_turns, bool) or not 1 <= max_turns <= 20:
            raise HTTPError(400, "field 'max_turns' must be an integer from 1 to 20")
        with self._ids_lock:
            rid = f"request-{next(self._ids)}"
        q = Question(id=rid, dataset="request", question=question, answers=answers, hops=0, paragraphs=tuple(pool))
        return AnswerRequest(q, list(pool), max_turns, answers)

    def run_answers(self, requests: list[AnswerRequest]) -> list[dict]:
        """One set of episodes per distinct max_turns, every request of it stepped together."""
        rows: dict[str, dict] = {}
        for turns in sorted({r.max_turns for r in requests}):
            group = [r for r in requests if r.max_turns == turns]
            agent = replace(self.cfg.agent, max_turns=turns, batch_size=len(group))
            make_env = multihop.make(agent, pools={r.question.id: r.pool for r in group}, extractor=self.extractor)
            out = run_episodes([r.question for r in group], make_env, self.backend, agent)
            rows.update({row["question_id"]: row for row in out})
        return [self._answer_payload(rows[r.question.id], r) for r in requests]

    @staticmethod
    def _answer_payload(row: dict, req: AnswerRequest) -> dict:
        out = {"answer": row["prediction"], "finished": row["finished"], "stop": row["stop"], "turns": row["turns"],
               "tool_calls": row["tool_calls"], "messages": row["messages"], "seconds": row["seconds"]}
        if req.answers:
            out["gold"] = list(req.answers)
            out["metrics"] = row["metrics"]
        return out

    def _bundled(self, body: dict):
        data, qid = body.get("data"), body.get("question_id")
        if data not in BUNDLED:
            raise HTTPError(400, f"field 'data' must name a bundled set ({', '.join(BUNDLED)}), got {data!r}")
        if data not in self._bundled_sets:
            self._bundled_sets[data] = load_questions(data)
        everything = self._bundled_sets[data]
        match = [q for q in everything if q.id == qid]
        if not match:
            raise HTTPError(400, f"no question with question_id {qid!r} in {data}")
        return match[0], build_pools(match, others=everything)[match[0].id]

    # /evaluate
    def parse_evaluate(self, body: dict) -> EvalConfig:
        data, limit, split = body.get("data"), body.get("limit", 10), body.get("split", "eval")
        if data not in BUNDLED:
            raise HTTPError(400, f"field 'data' must name a bundled set ({', '.join(BUNDLED)}), got {data!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= self.cfg.max_eval:
            raise HTTPError(400, f"field 'limit' must be an integer from 1 to {self.cfg.max_eval}")
        if split not in ("eval", "train", "all"):
            raise HTTPError(400, "field 'split' must be eval, train or all")
        return eval_config(self.cfg, data=data, limit=limit, split=split)

    def evaluate(self, ecfg: EvalConfig, root: str | Path | None = None) -> dict:
        """Run the evaluation on this service's backend (into `root`, else a temporary directory)."""
        with tempfile.TemporaryDirectory() as d:
            metrics = self.run_eval(ecfg, root or d, backend=self.backend, extractor=self.extractor, progress=False)
        return summarise(metrics)


KEEP_METRICS = ("n", "acc", "em", "f1", "tool_use_rate", "invalid_call_rate", "answered_without_search_rate",
                "no_final_answer_rate", "avg_tool_calls", "avg_turns", "supporting_recall", "failures", "latency")


def summarise(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in KEEP_METRICS}


def eval_config(cfg: ServeConfig, **kw) -> EvalConfig:
    """The EvalConfig of an /evaluate job: the served agent's settings on a bundled set."""
    agent = replace(cfg.agent, few_shot=cfg.agent.shows_example, batch_size=cfg.max_batch)
    return replace(EvalConfig(agent=agent, extraction_bench=False, bootstrap=500), **kw)


def adapter_identity(adapter: str | Path) -> dict:
    """What /health says about the served adapter: where it is, a digest of its weights, what it was trained on."""
    path = Path(adapter)
    weights = path / "adapter_model.safetensors"
    digest = None
    if weights.exists():
        h = hashlib.sha256()
        with weights.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()[:16]
    config = json.loads((path / "adapter_config.json").read_text()) if (path / "adapter_config.json").exists() else {}
    training = json.loads((path / "training.json").read_text()) if (path / "training.json").exists() else {}
    return {"path": str(path), "run": path.parent.name, "stage": path.name, "sha256": digest,
            "base_model": config.get("base_model_name_or_path"), "steps": training.get("steps"),
            "traces": training.get("traces", training.get("pairs_used"))}


# -- evaluation jobs --------------------------------------------------------------------------------------

class LocalJobs:
    """/evaluate jobs run on the service's worker thread (after the batches queued before them); results stay
    in memory and, with `root`, under `root/<job>/` (the eval's results.jsonl and metrics.json)."""

    def __init__(self, service: AgentService, batcher: Batcher, root: str | Path | None = None):
        self.service, self.batcher, self.root = service, batcher, Path(root) if root else None
        self.jobs: dict[str, dict] = {}

    def submit(self, ecfg: EvalConfig) -> str:
        job = uuid.uuid4().hex[:12]
        self.jobs[job] = {"job": job, "status": "queued"}

        def run():
            self.jobs[job]["status"] = "running"
            return self.service.evaluate(ecfg, self.root / job if self.root else None)

        def done(fut: concurrent.futures.Future):
            exc = fut.exception()
            self.jobs[job].update({"status": "failed", "error": f"{type(exc).__name__}: {exc}"} if exc else
                                  {"status": "done", "result": fut.result()})

        self.batcher.call(run).add_done_callback(done)
        return job

    def status(self, job: str) -> dict | None:
        return self.jobs.get(job)


# -- the ASGI app -----------------------------------------------------------------------------------------

def make_app(service: AgentService, token: str | None, *, jobs=None, batcher: Batcher | None = None):
    """The FastAPI application. `token` None or empty refuses to start: an endpoint without auth is a leak.
    `jobs` runs /evaluate (`LocalJobs` on this process's worker unless given, e.g. the cloud's `.spawn`)."""
    if not token:
        raise ConfigError(f"no API token: set ${service.cfg.token_env} (the endpoint refuses to run without auth)")
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool

    batcher = batcher or Batcher(service.run_answers, max_batch=service.cfg.max_batch,
                                 wait_s=service.cfg.batch_wait_ms / 1000)
    jobs = jobs or LocalJobs(service, batcher)
    app = FastAPI(title="hopsmith", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyDeadline, seconds=service.cfg.body_timeout)
    app.state.service, app.state.batcher, app.state.jobs = service, batcher, jobs

    _error_handlers(app)

    @app.get("/health")
    async def health():
        return {"ok": True, "model": getattr(service.backend, "name", service.cfg.agent.model), "adapter": service.identity,
                "queued": batcher.pending()}

    @app.post("/answer")
    async def answer(request: Request):
        body = await _authorised_json(request, token)
        req = await run_in_threadpool(service.parse_answer, body)
        return await asyncio.wrap_future(batcher.submit(req))

    @app.post("/evaluate", status_code=202)
    async def evaluate(request: Request):
        body = await _authorised_json(request, token)
        ecfg = service.parse_evaluate(body)
        job = await run_in_threadpool(jobs.submit, ecfg)
        return {"job": job, "status": "queued", "poll": f"/jobs/{job}"}

    @app.get("/jobs/{job}")
    async def job_status(job: str, request: Request):
        _check_token(request.headers.get("authorization", ""), token)
        state = await run_in_threadpool(jobs.status, job)
        if state is None:
            raise HTTPError(404, f"no job {job!r}")
        return state

    return app


def _error_handlers(app) -> None:
    """Every error as {"error": "..."} JSON with its status; a crash is a 500, never a dead server."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(HTTPError)
    async def _ours(request, exc: HTTPError):
        # After a 408 the rest of the body may still be on its way: the connection cannot carry another request
        headers = {"connection": "close"} if exc.status == 408 else None
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request, exc: StarletteHTTPException):
        detail = {404: f"no route {request.url.path}; routes: /health, /answer, /evaluate, /jobs/<id>",
                  405: f"{request.url.path} does not take {request.method}"}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": detail}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, exc: Exception):  # a request never takes the server down
        return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)


async def _authorised_json(request, token: str) -> dict:
    """The JSON object of an authorised request's body (401, 413 or 400 otherwise)."""
    _check_token(request.headers.get("authorization", ""), token)
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > MAX_BODY:
        raise HTTPError(413, f"body of {size} bytes is over the {MAX_BODY}-byte limit")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPError(413, f"body of {len(raw)} bytes is over the {MAX_BODY}-byte limit")
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "body must be a JSON object")
    return body


class BodyDeadline:
    """ASGI middleware: a request body must arrive in full within `seconds` of its headers, or the request
    ends with 408 (the route's `receive` raises, and the HTTPError handler answers). Once the last body
    message is in, `receive` is the server's own again: a long answer is never cut. Runs on Modal too."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = asyncio.get_running_loop().time() + self.seconds
        body_in = False

        async def timed_receive():
            nonlocal body_in
            if body_in:
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                raise HTTPError(408, f"the request body did not arrive within {self.seconds:g} s") from None
            body_in = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s")


def header_deadline_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline on request headers, which uvicorn itself does not have: a
    connection that opened (or finished its last response) and has not sent a whole request head within
    `seconds` is answered 408 and closed, however slowly its bytes trickle in."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._watch_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_headers()

        def connection_lost(self, exc) -> None:
            self._stop_watch()
            super().connection_lost(exc)

        def _watch_headers(self) -> None:
            """Arm the deadline while the client owes us a request head; disarm once it arrived."""
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                self._stop_watch()
            elif self.header_timer is None:
                self.header_timer = self.loop.call_later(seconds, self._headers_late)

        def _stop_watch(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_late(self) -> None:
            self.header_timer = None
            if not self.transport.is_closing():
                body = json.dumps({"error": f"request headers did not arrive within {seconds:g} s"}).encode()
                self.transport.write(_TIMEOUT_408 % (len(body), body))
                self.transport.close()

    return HeaderDeadlineProtocol


def server_config(app, cfg: ServeConfig, **kw):
    """The uvicorn config `hopsmith serve` runs under: host, port and the header deadline, `kw` on top."""
    import uvicorn

    kw = {"host": cfg.host, "port": cfg.port, "log_level": "warning", **kw}
    return uvicorn.Config(app, http=header_deadline_protocol(cfg.header_timeout), **kw)


def _check_token(header: str, token: str) -> None:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPError(401, "missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPError(401, "wrong bearer token")


def build_service(cfg: ServeConfig, *, backend=None, extractor=None, identity: dict | None = None,
                  evaluate: Callable | None = None) -> AgentService:
    if backend is None:
        # The same factory as `hopsmith eval`, so the endpoint answers as eval scores; one row per batched request.
        backend, extractor = agent_backends(eval_config(cfg).agent, batch_size=cfg.max_batch)
    return AgentService(cfg, backend, extractor, identity=identity, evaluate=evaluate)


def serve_forever(cfg: ServeConfig, *, evaluate: Callable | None = None) -> None:
    """Serve under uvicorn until interrupted; `evaluate` runs /evaluate jobs (default `hopsmith.evaluation.run`)."""
    import uvicorn  # the server loads only when one is started

    token = os.environ.get(cfg.token_env)
    if not token:  # before the model loads: a missing token is a one-line error, not a minute's wait
        raise ConfigError(f"no API token: set ${cfg.token_env} (the endpoint refuses to run without auth)")
    app = make_app(build_service(cfg, evaluate=evaluate), token)
    print(f"serving {cfg.agent.adapter or cfg.agent.model} on http://{cfg.host}:{cfg.port} (token from ${cfg.token_env})", flush=True)
    uvicorn.Server(server_config(app, cfg)).run()
