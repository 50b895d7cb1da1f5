"""Agent rollout speed of the KV engine against the generate paths it replaced, side by side.

    python benchmarks/rollout_speed.py [--n 32] [--batch 16] [--max-turns 4] [--model embedded]

The same greedy episodes (bundled MuSiQue eval questions, the agent's own model as llm_query extractor,
AgentConfig's top_k/max_chars defaults) run three ways on one loaded model:

  (a) one at a time, stateless `model.generate` per turn (HFBackend(engine="generate"), batch 1)
  (b) today's batched path: `batch` episodes stepped together, one left-padded `generate` per turn
  (c) the KV engine (HFBackend's default): prefix cache across turns, shared system prompt, in-place decode

Questions go in groups of `--group` (default: all of them, so finished episodes make way for waiting ones
as they do in an eval), each group through (c), (b), (a) in turn. Prints episodes per minute
of wall time and of process CPU time (on a machine other jobs share, wall time mostly measures their load;
with `--threads 1` CPU time is the work done), the prompt tokens the model computed per episode, the
ratios (goals: (c) >= 8x (a) and >= 4x (b) at batch 16), and how many episodes are token-for-token the
same as (a)'s (greedy decoding; float rounding of padded batches can flip a near-tie). `--adapter` runs a
tuned agent, whose episodes run more turns than the base model's, prompted as it was trained (zero-shot;
`--few-shot` to override).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from hopsmith.agent.loop import run_episodes
from hopsmith.backends.hf import HFBackend
from hopsmith.config import AgentConfig
from hopsmith.data import build_pools, load_questions
from hopsmith.envs import multihop
from hopsmith.tools.extract import Extractor
from hopsmith.tools.search import IndexCache


def run(backend, questions, pools, cfg, batch):
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = replace(cfg, batch_size=batch)
    make_env = multihop.make(cfg, pools=pools, extractor=Extractor(backend), index_cache=IndexCache())
    rows = run_episodes(questions, make_env, backend, cfg)
    return time.perf_counter() - t0, time.process_time() - c0, rows


def transcript(row) -> list:
    return [(m["role"], m.get("content"), repr(m.get("tool_calls"))) for m in row["messages"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--data", default="musique")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--adapter", default=None, help="a LoRA adapter directory (a tuned agent runs longer episodes)")
    ap.add_argument("--group", type=int, default=None, help="questions per pass of each path (default: all)")
    ap.add_argument("--few-shot", action=argparse.BooleanOptionalAction, default=None,
                    help="the one-shot example in the prompt (default: on for the base model, off with --adapter)")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--top-k", type=int, default=AgentConfig.top_k)
    ap.add_argument("--max-chars", type=int, default=AgentConfig.max_chars)
    ap.add_argument("--skip-one-at-a-time", action="store_true", help="leave out (a), the slowest")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; on a machine other jobs share, 1 keeps OpenMP barriers from measuring the OS scheduler")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    questions = load_questions(args.data, limit=args.n, split="eval")
    pools = build_pools(questions, others=load_questions(args.data))
    engine = HFBackend(args.model, adapter=args.adapter, batch_size=args.batch)
    model, tok = engine.model, engine.tokenizer
    plain_batched = HFBackend(model_obj=model, tokenizer=tok, batch_size=args.batch, engine="generate")
    plain_single = HFBackend(model_obj=model, tokenizer=tok, batch_size=1, engine="generate")
    few_shot = (args.adapter is None) if args.few_shot is None else args.few_shot
    cfg = AgentConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, top_k=args.top_k,
                      max_chars=args.max_chars, few_shot=few_shot)
    print(f"{len(questions)} questions, batch {args.batch}, {args.max_turns} turns (+1 to answer at the cap), "
          f"{args.max_new_tokens} new tokens, top_k {args.top_k}, max_chars {args.max_chars}, "
          f"{__import__('torch').get_num_threads()} threads; {engine.engine_info}",
          flush=True)

    paths = {"c": (engine, args.batch), "b": (plain_batched, args.batch)}
    if not args.skip_one_at_a_time:
        paths["a"] = (plain_single, 1)
    seconds = dict.fromkeys(paths, 0.0)
    cpu = dict.fromkeys(paths, 0.0)
    rows: dict[str, list] = {k: [] for k in paths}
    size = args.group or len(questions)
    for g in range(0, len(questions), size):
        group = questions[g : g + size]
        for key, (backend, batch) in paths.items():
            s, c, r = run(backend, group, pools, cfg, batch)
            seconds[key] += s
            cpu[key] += c
            rows[key] += r
            print(f"  group {g // size + 1}, ({key}): {s:7.1f} s wall, {c:7.1f} s CPU", flush=True)

    names = {"a": "(a) one at a time, generate", "b": "(b) batched generate (before)", "c": "(c) KV engine"}
    per_min, per_cpu_min = {}, {}
    print(f"\n{'path':32s} {'episodes/min':>12s} {'/CPU-min':>9s} {'prefill tok/ep':>15s} {'cached tok/ep':>14s} "
          f"{'turns/ep':>9s} {'wall s':>7s} {'CPU s':>7s}")
    for key in sorted(paths):
        backend = paths[key][0]
        n = len(rows[key])
        per_min[key], per_cpu_min[key] = 60 * n / seconds[key], 60 * n / cpu[key]
        st = backend.stats
        turns = sum(r["turns"] for r in rows[key]) / n
        print(f"{names[key]:32s} {per_min[key]:12.2f} {per_cpu_min[key]:9.2f} {st.prefill_tokens / n:15.0f} "
              f"{st.cached_tokens / n:14.0f} {turns:9.2f} {seconds[key]:7.1f} {cpu[key]:7.1f}")
    st = engine.stats
    print(f"KV engine time: prefill {st.prefill_seconds:.0f} s ({st.prefill_tokens} tokens computed, {st.cached_tokens} "
          f"reused), decode {st.decode_steps} batched steps {st.decode_seconds:.0f} s ({st.generated_tokens} tokens)")
    ref = "a" if "a" in rows else "b"
    by_q = {k: {r["question_id"]: transcript(r) for r in v} for k, v in rows.items()}
    for key in sorted(paths):
        if key != ref:
            same = sum(by_q[key][q] == by_q[ref][q] for q in by_q[ref])
            print(f"episodes identical to ({ref}): ({key}) {same}/{len(by_q[ref])}")
    def ratio(x, y):
        return f"{per_min[x] / per_min[y]:.2f}x wall, {per_cpu_min[x] / per_cpu_min[y]:.2f}x CPU"

    if "a" in per_min:
        print(f"KV engine vs one at a time: {ratio('c', 'a')} episodes/min (goal >= 8x)")
    print(f"KV engine vs batched generate: {ratio('c', 'b')} episodes/min (goal >= 4x)")
    if "a" in per_min:
        print(f"batched generate vs one at a time: {ratio('b', 'a')}")


if __name__ == "__main__":
    main()
