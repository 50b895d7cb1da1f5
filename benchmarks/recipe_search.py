"""Search for a local SFT recipe on a dev split carved from the *train* questions (never the eval split).

    python benchmarks/recipe_search.py --out runs/recipe/a --max-traces 12                     the demo's recipe
    python benchmarks/recipe_search.py --out runs/recipe/b --max-traces 40 --max-chars 300 --per-question 1

The dev and fit questions are the library's (`hopsmith.data.split`, the splits `dev` and `fit`: the train
side's connected components, about a quarter of them held out, so questions that share a hop, an answer, a
question text or a supporting paragraph stay on one side; the ladder's guard decides on the same dev split).
Synthetic traces are built from the fit questions only, with pools that hold no dev paragraph, SFT trains on
them, and the base model (one-shot, as the pipeline evaluates it) and the adapter (zero-shot, the prompt it
was trained on) are run on the dev questions (`--dev-size` caps them), with pools built as `hopsmith eval`
builds them (distractors from the train side). It
prints the paired comparison, the verdict line and the wall time of each part; everything lands in --out and
`recipe.json`. The base run is cached under `--base-cache` per (data, dev size, top_k, max_chars, turns), so
a series of recipes pays for it once. benchmarks/RECIPES.md records what each recipe gave.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hopsmith.io import read_jsonl, write_json, write_jsonl


def _episodes(questions, pools, adapter, *, few_shot, args):
    from hopsmith.agent.backends import agent_backends
    from hopsmith.agent.loop import run_episodes
    from hopsmith.config import EvalConfig

    cfg = EvalConfig(data=args.data, adapter=adapter, few_shot=few_shot, max_turns=args.max_turns,
                     max_new_tokens=96, top_k=args.top_k, max_chars=args.max_chars, extraction_bench=False)
    backend, extractor = agent_backends(cfg)
    return run_episodes(questions, pools, backend, cfg.agent(), extractor=extractor, batch_size=16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="musique")
    ap.add_argument("--dev-size", type=int, default=None, help="dev questions run (default: the whole dev split)")
    ap.add_argument("--max-traces", type=int, default=None, help="SFT on at most this many traces (all: unset)")
    ap.add_argument("--per-question", type=int, default=2)
    ap.add_argument("--weights", default="chain=1,retry=1,labels=1,verify=1,warmup=1")
    ap.add_argument("--hop-traces", action="store_true",
                    help="add a single-hop reading trace per gold hop of each fit question (hopsmith.traces.hops)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--lora-r", type=int, default=None)
    ap.add_argument("--target-modules", default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--max-turns", type=int, default=6)
    ap.add_argument("--max-chars", type=int, default=200)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--base-cache", default="runs/recipe/base")
    args = ap.parse_args()

    from hopsmith.data import load_with_pools
    from hopsmith.guard import verdict
    from hopsmith.metrics import aggregate, format_comparison
    from hopsmith.traces import generate
    from stages import sft
    from stages.pipeline import sample_traces

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dev, dev_pools = load_with_pools(args.data, split="dev", limit=args.dev_size)
    fit, fit_pools = load_with_pools(args.data, split="fit")
    print(f"dev {len(dev)} questions, fit {len(fit)} (train split of {args.data}, split by component)")

    base_dir = Path(args.base_cache) / f"{args.data}-devsplit{args.dev_size or ''}-k{args.top_k}-c{args.max_chars}-t{args.max_turns}"
    base_rows = read_jsonl(base_dir / "results.jsonl") if (base_dir / "results.jsonl").exists() else None
    if base_rows is None:
        base_rows = _episodes(dev, dev_pools, None, few_shot=True, args=args)
        write_jsonl(base_dir / "results.jsonl", base_rows)
    t_base = time.perf_counter() - t0

    traces, skips = generate(fit, fit_pools, weights=args.weights,
                             per_question=args.per_question, thinking_fraction=0.0, top_k=args.top_k,
                             max_chars=args.max_chars)
    if args.hop_traces:
        from hopsmith.traces.hops import hop_traces

        hops, _ = hop_traces(fit, fit_pools, top_k=args.top_k, max_chars=args.max_chars)
        traces += hops
    lengths = sft.trace_lengths(traces)
    ok = [t for t, n in zip(traces, lengths) if n <= args.max_length]
    train = sample_traces(ok, args.max_traces, seed=0)
    write_jsonl(root / "train.jsonl", train)
    tokens = sum(n for t, n in zip(traces, lengths) if t in train)
    print(f"{len(traces)} traces from {len({t['question_id'] for t in traces})} fit questions "
          f"({len(traces) - len(ok)} over {args.max_length} tokens); training on {len(train)}, {tokens} tokens")

    t1 = time.perf_counter()
    summary = sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), epochs=args.epochs,
                                    learning_rate=args.learning_rate, lora_r=args.lora_r,
                                    lora_alpha=2 * args.lora_r if args.lora_r else None,
                                    target_modules=args.target_modules, batch_size=args.batch_size,
                                    max_length=args.max_length), root / "sft")
    t_sft = time.perf_counter() - t1
    t2 = time.perf_counter()
    tuned_rows = _episodes(dev, dev_pools, str(root / "sft"), few_shot=False, args=args)
    write_jsonl(root / "results-tuned.jsonl", tuned_rows)
    t_eval = time.perf_counter() - t2

    base, tuned = aggregate(base_rows), aggregate(tuned_rows)
    v = verdict(base, tuned, ("base", "tuned"))
    text = format_comparison(base, tuned, names=("base 1-shot", "tuned"))
    print(text)
    print(v["line"])
    print(f"SFT {summary['steps']} steps on {summary['traces']} traces, {t_sft:.0f} s; tuned dev eval {t_eval:.0f} s; "
          f"base {t_base:.0f} s{' (cached)' if t_base < 5 else ''}")
    write_json(root / "recipe.json", {"args": vars(args), "dev": [q.id for q in dev], "traces": len(train),
                                      "tokens": tokens, "sft": {k: summary.get(k) for k in ("steps", "traces", "train_loss")},
                                      "seconds": {"sft": t_sft, "tuned_eval": t_eval},
                                      "verdict": {k: v[k] for k in ("verdict", "better", "worse", "line")},
                                      "base": {k: base[k] for k in ("em", "f1", "acc", "tool_use_rate", "invalid_call_rate",
                                                                    "supporting_recall", "failures")},
                                      "tuned": {k: tuned[k] for k in ("em", "f1", "acc", "tool_use_rate", "invalid_call_rate",
                                                                      "supporting_recall", "failures")}})
    (root / "comparison.txt").write_text(text + "\n" + v["line"] + "\n")


if __name__ == "__main__":
    main()
