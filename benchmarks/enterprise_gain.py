"""The enterprise agent before and after SFT on balanced gold traces: the confusion matrix side by side.

    python benchmarks/enterprise_gain.py [--eval-per-category 3] [--per-action 12] [--model embedded]
                                         [--epochs 2] [--max-turns 4] [--out runs/enterprise-gain]

The bundled cases split per category: the first `--eval-per-category` of each are held out, the rest
train. Gold traces of the train cases (`balanced_gold_traces`: at most `--per-action` per expected action,
so the minority actions are not drowned by call_tool, the enterprise recipe's advice) train a LoRA (the
LoRA multi-hop recipe's SFT preset); the base model (one-shot free: the enterprise prompt has no example)
and the adapter then play the held-out cases through `hopsmith eval --env enterprise`. Prints both
reports (per category, per expected action, the confusion matrix, think-vs-action mismatches), then the
paired change of decision accuracy (McNemar's exact p over the same cases). Reruns resume every stage.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from hopsmith.config import AgentConfig, EvalConfig
from hopsmith.envs.enterprise import balanced_gold_traces
from hopsmith.envs.enterprise_cases import load_cases
from hopsmith.envs.enterprise_scoring import format_report
from hopsmith.evaluation import run as evaluate
from hopsmith.io import read_jsonl, write_jsonl
from hopsmith.metrics import mcnemar_exact
from stages import sft


def split_cases(per_category: int):
    """(train, eval): the first `per_category` cases of each category held out."""
    seen: dict[str, int] = {}
    train, held = [], []
    for case in load_cases():
        k = seen[case.category] = seen.get(case.category, 0) + 1
        (held if k <= per_category else train).append(case)
    return train, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval-per-category", type=int, default=3)
    ap.add_argument("--per-action", type=int, default=12)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument("--out", default="runs/enterprise-gain")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    train, held = split_cases(args.eval_per_category)
    write_jsonl(root / "eval_cases.jsonl", [c.to_dict() for c in held])
    traces = balanced_gold_traces(train, per_action=args.per_action, thinking=False)
    write_jsonl(root / "train.jsonl", traces)
    print(f"{len(train)} train cases -> {len(traces)} balanced gold traces; {len(held)} held-out cases", flush=True)

    started = time.perf_counter()
    agent = AgentConfig(env="enterprise", model=args.model, max_turns=args.max_turns,
                        max_new_tokens=args.max_new_tokens, batch_size=16)
    base = evaluate(EvalConfig(data=str(root / "eval_cases.jsonl"), limit=None, agent=agent, bootstrap=200),
                    root / "eval-base", progress=False)
    t_base = time.perf_counter() - started
    summary = sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), model=args.model, epochs=args.epochs,
                                    learning_rate=args.learning_rate, max_length=args.max_length), root / "sft")
    tuned_agent = replace(agent, adapter=str(root / "sft"))
    tuned = evaluate(EvalConfig(data=str(root / "eval_cases.jsonl"), limit=None, agent=tuned_agent, bootstrap=200),
                     root / "eval-sft", progress=False)
    seconds = time.perf_counter() - started

    print("\n== base\n" + format_report(base))
    print("\n== SFT on balanced gold traces\n" + format_report(tuned))
    before = {r["case_id"]: bool(r.get("correct")) for r in read_jsonl(root / "eval-base" / "results.jsonl")}
    after = {r["case_id"]: bool(r.get("correct")) for r in read_jsonl(root / "eval-sft" / "results.jsonl")}
    ids = sorted(before.keys() & after.keys())
    gained = sum(after[i] and not before[i] for i in ids)
    lost = sum(before[i] and not after[i] for i in ids)
    p = mcnemar_exact(gained, lost)
    acc_b, acc_a = sum(before[i] for i in ids) / len(ids), sum(after[i] for i in ids) / len(ids)
    print(f"\ndecision accuracy {100 * acc_b:.1f}% -> {100 * acc_a:.1f}% on {len(ids)} paired cases "
          f"({gained} gained, {lost} lost; McNemar exact p = {p:.3g}); SFT {summary['steps']} steps on "
          f"{summary['traces']} traces; base eval {t_base / 60:.1f} min, all {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
