"""SFT vs SimPO (seed 002's own-failure pairs) on a bundled eval split, continuing a learning-gain run.

    python benchmarks/learning_gain.py --eval hotpotqa --eval-limit 40 --out runs/lg-hotpotqa     # first
    python benchmarks/preference_gain.py --run runs/lg-hotpotqa --data hotpotqa --mine-limit 40

Takes the SFT adapter (`RUN/sft`) and its eval (`RUN/eval-sft`) from the learning-gain run, runs the
adapter on `--mine-limit` *train* questions, pairs every failure with a kept synthetic trace of the same
question (`RUN/traces-*/kept.jsonl`), trains SimPO (preset seed002, or `--preset dpo`) on the adapter and
evaluates it on the same eval questions. Prints the comparison and

    sft X% simpo Y% (CI ...); tool use A -> B

The mined pairs land under RUN/preference-pairs (shared by every preset and learning rate: mining is the
slow part), each trained variant under RUN/preference-<preset>[-lr<LR>]; a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.metrics import format_comparison
from stages import evaluate, preference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/lg-hotpotqa", help="a learning_gain.py output directory")
    ap.add_argument("--data", default="hotpotqa", help="the bundled set the run evaluated on")
    ap.add_argument("--mine-limit", type=int, default=40)
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--preset", default="seed002", help="seed002 (SimPO) | dpo")
    ap.add_argument("--learning-rate", type=float, default=None, help="override the preset's (seed 002: 5e-7)")
    ap.add_argument("--epochs", type=float, default=None)
    args = ap.parse_args()
    run = Path(args.run)
    sft_eval_cfg = json.loads((run / "eval-sft" / "config.json").read_text())
    sft_metrics = json.loads((run / "eval-sft" / "metrics.json").read_text())
    shared = run / "preference-pairs"
    out = run / (f"preference-{args.preset}" + ("" if args.learning_rate is None else f"-lr{args.learning_rate:g}"))
    started = time.perf_counter()

    base = evaluate.EvalConfig(**{k: v for k, v in sft_eval_cfg.items() if k in evaluate.EvalConfig.__dataclass_fields__})
    mine_cfg = replace(base, data=args.data, split="train", limit=args.mine_limit, allow_leakage=True,
                       extraction_bench=False)
    evaluate.run(mine_cfg, shared / "mine")
    chosen = [t for p in sorted(run.glob("traces-*/kept.jsonl")) for t in read_jsonl(p)]
    write_jsonl(shared / "chosen.jsonl", chosen)
    pairs = preference.mine(preference.MineConfig(results=str(shared / "mine" / "results.jsonl"),
                                                  chosen=str(shared / "chosen.jsonl"), max_pairs=args.max_pairs),
                            shared / "pairs")
    print(f"pairs: {pairs['pairs']} {pairs['counts']} skipped {pairs['skipped']}", flush=True)
    trained = out / "adapter" / "training.json"
    training = json.loads(trained.read_text()) if trained.exists() else preference.train(preference.PreferenceConfig(
        pairs=str(shared / "pairs" / "pairs.jsonl"), adapter=str(run / "sft"), preset=args.preset,
        learning_rate=args.learning_rate, epochs=args.epochs, max_length=1536, probe_data=args.data), out / "adapter")
    tuned = evaluate.run(replace(base, adapter=str(out / "adapter")), out / "eval")
    total = time.perf_counter() - started
    write_json(out / "preference_gain.json", {"sft": sft_metrics, "preference": tuned, "pairs": pairs,
                                              "training": {k: v for k, v in training.items() if k != "trained_question_ids"},
                                              "seconds": total, "args": vars(args)})
    name = "simpo" if args.preset == "seed002" else args.preset
    print(format_comparison(sft_metrics, tuned, names=("sft", name)))
    s, t = sft_metrics["acc"], tuned["acc"]
    b, a = training["behaviour_before"], training["behaviour_after"]
    print(f"sft {100 * s['mean']:.1f}% {name} {100 * t['mean']:.1f}% (95% CI sft [{100 * s['lo']:.1f}, {100 * s['hi']:.1f}], "
          f"{name} [{100 * t['lo']:.1f}, {100 * t['hi']:.1f}]; EM {100 * sft_metrics['em']['mean']:.1f} -> "
          f"{100 * tuned['em']['mean']:.1f}, F1 {100 * sft_metrics['f1']['mean']:.1f} -> {100 * tuned['f1']['mean']:.1f}; "
          f"n={t['n']}; {pairs['pairs']} pairs, {training['steps']} steps; probe tool use {b['tool_use_rate']:.0%} -> "
          f"{a['tool_use_rate']:.0%}, collapse flags {len(training['collapse'])}; {total / 60:.1f} min)")


if __name__ == "__main__":
    main()
