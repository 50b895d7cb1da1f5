"""Throughput of batched vs one-at-a-time agent rollouts on the same questions.

    python benchmarks/batched_rollouts.py [--n 16] [--model embedded] [--max-turns 4]

Runs the same episodes twice with greedy decoding: once with all episodes stepped together (one
`generate` per turn, left padding), once with batch size 1. Prints generated tokens per second for both
and the ratio (goal >= 5x on 16 questions). Greedy decoding makes both runs produce the same episodes,
so the token counts should match; the script says so when they do not.
"""
from __future__ import annotations

import argparse
import time

from hopsmith.agent.loop import AgentConfig, run_episodes
from hopsmith.backends.hf import HFBackend
from hopsmith.data import build_pools, load_questions
from hopsmith.tools.extract import Extractor
from hopsmith.tools.search import IndexCache


def measure(backend, questions, pools, cfg, batch_size):
    backend.batch_size = batch_size
    t0 = time.perf_counter()
    rows = run_episodes(questions, pools, backend, cfg, extractor=Extractor(backend), index_cache=IndexCache(),
                        batch_size=batch_size)
    seconds = time.perf_counter() - t0
    tokens = sum(r["tokens"]["completion"] for r in rows)
    return seconds, tokens, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--data", default="musique")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()

    questions = load_questions(args.data, limit=args.n, split="eval")
    pools = build_pools(questions, others=load_questions(args.data))
    backend = HFBackend(args.model)
    cfg = AgentConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens)
    b_s, b_tok, b_rows = measure(backend, questions, pools, cfg, batch_size=len(questions))
    s_s, s_tok, s_rows = measure(backend, questions, pools, cfg, batch_size=1)
    same = [r["prediction"] for r in sorted(b_rows, key=lambda r: r["question_id"])] == [
        r["prediction"] for r in sorted(s_rows, key=lambda r: r["question_id"])]
    print(f"batched:    {b_s:7.1f} s  {b_tok} tokens  {b_tok / b_s:6.1f} tok/s")
    print(f"sequential: {s_s:7.1f} s  {s_tok} tokens  {s_tok / s_s:6.1f} tok/s")
    if not same:
        print("note: batched and sequential predictions differ (padding changes float rounding)")
    print(f"batched/sequential throughput: {(b_tok / b_s) / (s_tok / s_s):.2f}x on {len(questions)} questions "
          f"({args.model}, max {args.max_turns} turns)")


if __name__ == "__main__":
    main()
