"""Learning gain of the ladder: the embedded model before and after LoRA SFT on synthetic traces.

    python benchmarks/learning_gain.py [--eval musique] [--train musique,hotpotqa,2wiki] [--max-traces 120]

Trains only on bundled *train*-split questions (traces -> rule judge -> SFT), then evaluates the base model
and the adapter on `--eval` (a bundled set's eval split, or any original-format file; the leakage guard
refuses overlap) and prints

    base X% tuned Y% (95% CI ...)

Goal from the issue: tuned >= 3x base and >= +10 points of accuracy. Everything lands in --out, so a rerun
resumes instead of starting over.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.metrics import format_comparison
from stages import evaluate, judge, sft, traces
from stages.pipeline import sample_traces


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", default="musique", help="bundled set name (its eval split) or an original-format file")
    ap.add_argument("--eval-limit", type=int, default=None)
    ap.add_argument("--train", default="musique,hotpotqa,2wiki", help="bundled sets whose train split makes traces")
    ap.add_argument("--max-traces", type=int, default=80)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--max-turns", type=int, default=6)
    ap.add_argument("--max-chars", type=int, default=300)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--out", default="runs/learning-gain")
    args = ap.parse_args()
    root = Path(args.out)
    started = time.perf_counter()

    all_traces = []
    for name in args.train.split(","):
        sub = root / f"traces-{name}"
        traces.run(traces.TracesConfig(data=name, split="train", top_k=args.top_k, max_chars=args.max_chars,
                                       thinking_fraction=0.0), sub)
        judge.run(judge.JudgeConfig(), sub)
        all_traces += read_jsonl(sub / "kept.jsonl")
    # Sampled among the traces SFT can take whole (max_length 1536), so none is dropped after sampling.
    fit = [t for t, n in zip(all_traces, sft.trace_lengths(all_traces)) if n <= 1536]
    train = sample_traces(fit, args.max_traces, seed=0)
    write_jsonl(root / "train.jsonl", train)
    t_traces = time.perf_counter() - started

    summary = sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), epochs=args.epochs,
                                    learning_rate=args.learning_rate, max_length=1536), root / "sft")

    def cfg(adapter=None):
        return evaluate.EvalConfig(data=args.eval, split="eval", limit=args.eval_limit, adapter=adapter,
                                   few_shot=adapter is None, max_turns=args.max_turns, max_new_tokens=96,
                                   top_k=args.top_k, max_chars=args.max_chars,
                                   extraction_bench=adapter is None)  # the extractor does not change

    base = evaluate.run(cfg(), root / "eval-base")
    tuned = evaluate.run(cfg(str(root / "sft")), root / "eval-sft")
    total = time.perf_counter() - started
    write_json(root / "learning_gain.json", {"base": base, "tuned": tuned, "sft": summary, "seconds": total,
                                             "traces_seconds": t_traces, "args": vars(args)})
    print(format_comparison(base, tuned, names=("base", "tuned")))
    b, t = base["acc"], tuned["acc"]
    ratio = "inf" if b["mean"] == 0 else f"{t['mean'] / b['mean']:.1f}x"
    print(f"base {100 * b['mean']:.1f}% tuned {100 * t['mean']:.1f}% "
          f"(95% CI base [{100 * b['lo']:.1f}, {100 * b['hi']:.1f}], tuned [{100 * t['lo']:.1f}, {100 * t['hi']:.1f}]; "
          f"{ratio}, {100 * (t['mean'] - b['mean']):+.1f} pt; EM {100 * base['em']['mean']:.1f} -> {100 * tuned['em']['mean']:.1f}, "
          f"F1 {100 * base['f1']['mean']:.1f} -> {100 * tuned['f1']['mean']:.1f}; n={t['n']}; "
          f"{len(train)} traces, {summary['steps']} SFT steps; {total / 60:.1f} min)")


if __name__ == "__main__":
    main()
