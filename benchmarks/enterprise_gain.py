"""The enterprise agent before and after SFT on balanced gold traces, then after SimPO on its own wrong
actions: the confusion matrices side by side.

    python benchmarks/enterprise_gain.py [--eval-per-category 3] [--per-action 12] [--model embedded]
                                         [--epochs 2] [--max-turns 4] [--out runs/enterprise-gain]
                                         [--no-simpo] [--simpo-learning-rate 1e-4] [--mine-cases 28]

The bundled cases split per category: the first `--eval-per-category` of each are held out, the rest
train. Gold traces of the train cases (`balanced_gold_traces`: at most `--per-action` per expected action,
so the minority actions are not drowned by call_tool, the enterprise recipe's advice) train a LoRA (the
LoRA multi-hop recipe's SFT preset); the base model (one-shot free: the enterprise prompt has no example)
and the adapter then play the held-out cases through `hopsmith eval --env enterprise`. Prints both
reports (per category, per expected action, the confusion matrix, think-vs-action mismatches), then the
paired change of decision accuracy (McNemar's exact p over the same cases).

Then the SFT adapter plays `--mine-cases` train cases; every episode whose decision was wrong becomes a
preference pair (`hopsmith.envs.enterprise.preference_pair`: the prompt up to the decision, rejected = the
model's own decision turn verbatim, chosen = the gold action with its reasoning: the enterprise recipe's
pairs), and SimPO (the enterprise recipe's preset, at `--simpo-learning-rate`: its 5e-7 is for a full
fine-tune, not a LoRA) continues the SFT adapter. The SimPO adapter plays the same held-out cases; its
report and the paired change SFT -> SimPO follow. The multi-hop behaviour probes are off here
(`probe_questions=0`): the held-out confusion matrix is this policy's guard. Reruns resume every eval.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from hopsmith.config import AgentConfig, EvalConfig
from hopsmith.envs.enterprise import balanced_gold_traces, preference_pair
from hopsmith.envs.enterprise_cases import load_cases
from hopsmith.envs.enterprise_scoring import format_report
from hopsmith.evaluation import run as evaluate
from hopsmith.io import read_jsonl, write_jsonl
from hopsmith.metrics import mcnemar_exact
from stages import preference, sft


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
    ap.add_argument("--simpo", action=argparse.BooleanOptionalAction, default=True,
                    help="mine the SFT agent's wrong actions on train cases and continue it with SimPO")
    ap.add_argument("--mine-cases", type=int, default=28, help="train cases the SFT agent plays to find its failures")
    ap.add_argument("--simpo-learning-rate", type=float, default=1e-4)
    ap.add_argument("--simpo-epochs", type=float, default=2.0)
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
    print("\n== base\n" + format_report(base))
    print("\n== SFT on balanced gold traces\n" + format_report(tuned))
    print("\n" + paired(root / "eval-base", root / "eval-sft", "base", "SFT") +
          f"; SFT {summary['steps']} steps on {summary['traces']} traces; base eval {t_base / 60:.1f} min")
    if args.simpo:
        pairs = mine_pairs(root, spread(train, args.mine_cases), tuned_agent)
        print(f"\n{len(pairs)} pairs from the SFT agent's wrong actions on {min(args.mine_cases, len(train))} train "
              f"cases: {dict(Counter(p['why'] for p in pairs).most_common())}", flush=True)
        if pairs:
            pcfg = preference.PreferenceConfig(
                pairs=str(root / "pairs.jsonl"), learning_rate=args.simpo_learning_rate, epochs=args.simpo_epochs,
                max_length=args.max_length, probe_questions=0,
                agent=replace(preference.PreferenceConfig().agent, model=args.model, adapter=str(root / "sft")))
            trained = preference.train(pcfg, root / "simpo")
            simpo = evaluate(EvalConfig(data=str(root / "eval_cases.jsonl"), limit=None, bootstrap=200,
                                        agent=replace(agent, adapter=str(root / "simpo"))),
                             root / "eval-simpo", progress=False)
            print("\n== SimPO on the SFT agent's own wrong actions\n" + format_report(simpo))
            print("\n" + paired(root / "eval-sft", root / "eval-simpo", "SFT", "SimPO") +
                  f"; SimPO {trained['steps']} steps on {trained['pairs_used']} pairs")
    print(f"all {(time.perf_counter() - started) / 60:.1f} min")


def spread(cases, n: int) -> list:
    """The first `n` cases taken round-robin over the categories (the case list is grouped by category)."""
    by_cat: dict[str, list] = {}
    for c in cases:
        by_cat.setdefault(c.category, []).append(c)
    out, k = [], 0
    while len(out) < min(n, len(cases)):
        out += [group[k] for group in by_cat.values() if k < len(group)][: n - len(out)]
        k += 1
    return out


def mine_pairs(root: Path, cases, agent: AgentConfig) -> list[dict]:
    """The agent plays `cases`; each wrong decision is a preference pair (written to `pairs.jsonl`)."""
    write_jsonl(root / "mine_cases.jsonl", [c.to_dict() for c in cases])
    # Train cases on purpose: the failures mined are the adapter's own on what it was trained for.
    evaluate(EvalConfig(data=str(root / "mine_cases.jsonl"), limit=None, agent=agent, bootstrap=0, allow_leakage=True),
             root / "mine-sft", progress=False)
    by_id = {c.id: c for c in cases}
    pairs = []
    for row in read_jsonl(root / "mine-sft" / "results.jsonl"):
        pair = preference_pair(row, by_id[row["case_id"]], thinking=False)
        if pair is not None:
            pairs.append({**pair, "question_id": pair["case_id"]})
    write_jsonl(root / "pairs.jsonl", pairs)
    return pairs


def paired(before_dir: Path, after_dir: Path, a: str, b: str) -> str:
    """Decision accuracy of two evals over their common cases, with McNemar's exact p."""
    before = {r["case_id"]: bool(r.get("correct")) for r in read_jsonl(before_dir / "results.jsonl")}
    after = {r["case_id"]: bool(r.get("correct")) for r in read_jsonl(after_dir / "results.jsonl")}
    ids = sorted(before.keys() & after.keys())
    gained = sum(after[i] and not before[i] for i in ids)
    lost = sum(before[i] and not after[i] for i in ids)
    acc_b, acc_a = sum(before[i] for i in ids) / len(ids), sum(after[i] for i in ids) / len(ids)
    return (f"decision accuracy {a} {100 * acc_b:.1f}% -> {b} {100 * acc_a:.1f}% on {len(ids)} paired cases "
            f"({gained} gained, {lost} lost; McNemar exact p = {mcnemar_exact(gained, lost):.3g})")


if __name__ == "__main__":
    main()
