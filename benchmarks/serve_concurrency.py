"""The endpoint under concurrent load: 16 concurrent /answer calls vs the same 16 one after another.

    python benchmarks/serve_concurrency.py [--n 16] [--model embedded] [--max-turns 2] [--max-new-tokens 96]

Starts the local ASGI app (`stages/serve.py`, the app `hopsmith serve` runs) under uvicorn on a free port,
with the embedded model, and asks it about n bundled MuSiQue eval questions over HTTP: first one request
at a time (each waits for the previous answer), then all n at once. Concurrent requests are gathered into
batches by the endpoint's worker (one batched `generate` per agent turn). Prints both wall times, the
generated tokens, and the ratio sequential/concurrent wall time (goal >= 4x).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hopsmith.data import load_questions  # noqa: E402
from stages import serve  # noqa: E402

TOKEN = "bench-token"


def start(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server


def ask(base: str, body: dict) -> dict:
    req = urllib.request.Request(base + "/answer", data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=3600) as resp:
        return json.loads(resp.read())


def completion_tokens(answers: list[dict]) -> int:
    return sum(len(m.get("content") or "") for a in answers for m in a["messages"] if m["role"] == "assistant")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--data", default="musique")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--max-turns", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    cfg = serve.ServeConfig(model=args.model, max_new_tokens=args.max_new_tokens, max_batch=args.n)
    base, server = start(serve.make_app(serve.build_service(cfg), TOKEN))
    bodies = [{"data": args.data, "question_id": q.id, "max_turns": args.max_turns}
              for q in load_questions(args.data, split="eval", limit=args.n)]
    ask(base, bodies[0])  # warm-up: first-call costs (BM25 stemmer, kernels) out of both timings

    t0 = time.perf_counter()
    sequential = []
    for i, b in enumerate(bodies):
        sequential.append(ask(base, b))
        print(f"  sequential {i + 1}/{len(bodies)} at {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    seq_s = time.perf_counter() - t0

    concurrent: list = [None] * len(bodies)

    def one(i):
        concurrent[i] = ask(base, bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    con_s = time.perf_counter() - t0
    server.should_exit = True

    same = [a["answer"] for a in sequential] == [a["answer"] for a in concurrent]
    print(f"sequential: {len(bodies)} requests in {seq_s:7.1f} s ({completion_tokens(sequential)} reply chars)")
    print(f"concurrent: {len(bodies)} requests in {con_s:7.1f} s ({completion_tokens(concurrent)} reply chars)")
    if not same:
        print("note: some answers differ between the runs (batch padding changes float rounding)")
    print(f"sequential/concurrent wall time: {seq_s / con_s:.2f}x on {len(bodies)} /answer requests "
          f"({args.model}, max {args.max_turns} turns, {args.max_new_tokens} new tokens, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
