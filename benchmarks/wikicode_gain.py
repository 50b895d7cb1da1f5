"""The code-as-action recipe's ladder on the embedded model: the base agent, SFT on synthetic code traces,
then GRPO, all on the same eval questions, each paired with the one before it.

    python benchmarks/wikicode_gain.py [--data hotpotqa] [--train hotpotqa] [--eval-limit 50] [--grpo-steps 12]
                                       [--num-generations 4] [--out runs/wikicode-gain]

The code-as-action recipe trains with GRPO alone; the embedded 135M model, shown the prompt's worked
example, never writes a program (tool use 0%), so every GRPO group would be all failures and teach nothing.
So the ladder first fine-tunes a LoRA on one synthetic code trace per train question of the `--train` sets
(`hopsmith traces --env wikicode`: each gold hop as a program that loops over the top pages, really run in
the sandbox), then continues that adapter with GRPO on the train questions (the recipe's temperature range,
zero-variance fallbacks and 0.75 correctness + 0.25 approach reward, with the rule approach score). Every
agent plays the same `--eval-limit` eval questions (`hopsmith eval --env wikicode`): the base one-shot, as
a user would first run it, the adapters zero-shot, as they were trained. Prints each run's metrics (EM,
F1, cover-EM, tool use, programs, code errors, composition in a loop), the paired headline of each step
(McNemar's exact p for EM and cover-EM, the paired 95% interval of F1's change), each tuned agent's against
the two baselines a search agent must beat (closed-book and BM25-then-read with the base model, on the same
questions and pools of 400: `--baselines none` skips them) and the wall time of each stage. Everything
lands in `--out`; a rerun resumes every eval and the baselines and reuses the traces and adapters.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from hopsmith.baselines import baseline_kinds
from hopsmith.config import AgentConfig, EvalConfig
from hopsmith.data import BUNDLED
from hopsmith.evaluation import run as evaluate
from hopsmith.io import read_jsonl, write_jsonl
from hopsmith.metrics import headline
from stages import grpo, sft
from stages.evaluate import run_baselines
from stages import traces as traces_stage


def row(name: str, m: dict, *, agent: bool = True) -> str:
    code = m.get("code") or {}

    def ci(key: str) -> str:
        x = m[key]
        return f"{100 * x['mean']:5.1f} [{100 * x['lo']:4.1f},{100 * x['hi']:5.1f}]"
    answer = f"{name:<12}{ci('em'):>19}{ci('f1'):>19}{ci('acc'):>19}"
    if not agent:  # a baseline answers in one generation: no tools, no programs
        return answer
    return (answer + f"{100 * m['tool_use_rate']:>9.0f}%"
            f"{code.get('programs_per_episode', 0):>10.2f}{code.get('code_errors_per_episode', 0):>8.2f}"
            f"{100 * code.get('composed_in_loop', 0):>7.0f}%")


def table(runs: list[tuple[str, dict]], baselines: list[tuple[str, dict]] = ()) -> str:
    n = runs[0][1]["n"]
    head = (f"{'n=' + str(n):<12}{'EM':>19}{'F1':>19}{'cover-EM':>19}{'tool use':>10}{'programs':>10}{'errors':>8}"
            f"{'loop':>8}")
    return "\n".join([head] + [row(name, m, agent=False) for name, m in baselines] + [row(name, m) for name, m in runs])


def report(runs: list[tuple[str, dict]], baselines: list[tuple[str, dict]] = ()) -> str:
    """The table (the baselines first), then each step's paired headline against the run before it (and the
    last against the first), then each tuned agent's against each baseline."""
    lines = [table(runs, baselines)]
    lines += [headline(ma, mb, names=(a, b)) for (a, ma), (b, mb) in zip(runs, runs[1:])]
    if len(runs) > 2:
        lines.append(headline(runs[0][1], runs[-1][1], names=(runs[0][0], runs[-1][0])))
    lines += [headline(mb, ma, names=(b, a)) for b, mb in baselines for a, ma in runs[1:]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="hotpotqa")
    ap.add_argument("--train", default=None,
                    help="bundled sets whose train split makes the code traces, comma-separated (default: --data)")
    ap.add_argument("--eval-limit", type=int, default=50)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sft-epochs", type=float, default=2.0)
    ap.add_argument("--sft-learning-rate", type=float, default=2e-4)
    ap.add_argument("--grpo", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--grpo-steps", type=int, default=12)
    ap.add_argument("--grpo-limit", type=int, default=None, help="train questions GRPO plays (default: all)")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--questions-per-step", type=int, default=2)
    ap.add_argument("--grpo-learning-rate", type=float, default=1e-4, help="the code-as-action recipe's 1e-4")
    ap.add_argument("--baselines", default="closed_book,rag",
                    help="baselines run with the base model on the same questions (closed_book, rag; 'none': skip)")
    ap.add_argument("--top-k", type=int, default=3, help="the retrieve-then-read baseline's hits")
    ap.add_argument("--max-chars", type=int, default=300, help="the retrieve-then-read baseline's snippet length")
    ap.add_argument("--weak-sandbox", action="store_true", help="accept rlimit-only isolation without bubblewrap")
    ap.add_argument("--out", default="runs/wikicode-gain")
    args = ap.parse_args()
    try:  # refused now, not after the evals, traces and training
        kinds = baseline_kinds(args.baselines)
    except ValueError as e:
        ap.error(f"--baselines: {e}")
    train_sets = [t.strip() for t in (args.train or args.data).split(",") if t.strip()]
    unknown = [t for t in train_sets if t not in BUNDLED]
    if unknown:
        ap.error(f"--train: unknown bundled set(s) {unknown}; choose from {', '.join(BUNDLED)}")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    # few_shot None: the base model sees the worked example, an adapter the prompt it was trained with.
    agent = AgentConfig(env="wikicode", model=args.model, extractor="none", max_turns=args.max_turns,
                        max_new_tokens=args.max_new_tokens, weak_sandbox=args.weak_sandbox, few_shot=None)

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - t0
        print(f"{name}: {seconds[name] / 60:.1f} min", flush=True)
        return out

    def play(name: str, adapter: str | None) -> dict:
        cfg = EvalConfig(data=args.data, limit=args.eval_limit, extraction_bench=False,
                         agent=replace(agent, adapter=adapter))
        return timed(f"eval {name}", lambda: evaluate(cfg, root / f"eval-{name}", progress=False))

    runs = [("base", play("base", None))]
    shards = []
    for name in train_sets:
        sub = root if train_sets == [args.data] else root / f"traces-{name}"
        tcfg = traces_stage.TracesConfig(data=name, agent=replace(traces_stage.TracesConfig().agent, env="wikicode",
                                                                  weak_sandbox=args.weak_sandbox))
        written = timed(f"traces {name}", partial(traces_stage.run, tcfg, sub))
        print(f"{name}: {written['traces']} code traces from {written['questions']} train questions; skipped: "
              f"{json.dumps(written['skipped']['by_type'].get('code', {}))}", flush=True)
        shards.append(sub / "traces" / "shard-0.jsonl")
    traces_file = shards[0]
    if len(shards) > 1:  # one SFT on every set's traces
        traces_file = root / "train.jsonl"
        write_jsonl(traces_file, [row for shard in shards for row in read_jsonl(shard)])
    scfg = sft.SFTConfig(traces=str(traces_file), model=args.model, epochs=args.sft_epochs,
                         learning_rate=args.sft_learning_rate)
    trained = timed("sft", lambda: sft.run(scfg, root / "sft"))
    runs.append(("sft", play("sft", str(root / "sft"))))
    if args.grpo:
        gcfg = grpo.GRPOConfig(data=args.data, limit=args.grpo_limit, num_generations=args.num_generations,
                               questions_per_step=args.questions_per_step, learning_rate=args.grpo_learning_rate,
                               max_steps=args.grpo_steps,
                               agent=replace(grpo.GRPOConfig().agent, env="wikicode", model=args.model,
                                             adapter=str(root / "sft"), max_turns=args.max_turns,
                                             max_new_tokens=args.max_new_tokens, weak_sandbox=args.weak_sandbox))
        if (root / "grpo" / "training.json").exists():
            rl = json.loads((root / "grpo" / "training.json").read_text())
        else:
            rl = timed("grpo", lambda: grpo.run(gcfg, root / "grpo"))
        runs.append(("grpo", play("grpo", str(root / "grpo"))))
    named = {"closed_book": "closed-book", "rag": "BM25+read"}
    bcfg = EvalConfig(data=args.data, limit=args.eval_limit, top_k=args.top_k, max_chars=args.max_chars,
                      extractor="none", model=args.model)
    found = timed("baselines", lambda: run_baselines(bcfg, root, kinds)) if kinds else {}
    print("\n" + report(runs, [(named.get(k, k), found[k]) for k in kinds]))
    print(f"sft: {trained.get('steps')} steps on {trained.get('traces')} traces"
          + (f"; grpo: {rl.get('steps')} steps, groups {rl.get('groups')}, collapse {bool(rl.get('collapse'))}"
             if args.grpo else ""))
    print("wall: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
          + f"; all {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
