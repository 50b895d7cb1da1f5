"""SFT vs SimPO (seed 002's own-failure pairs) or RFT (seed 001) on a bundled eval split, continuing a
learning-gain run.

    python benchmarks/learning_gain.py --eval hotpotqa --eval-limit 40 --out runs/lg-hotpotqa     # first
    python benchmarks/preference_gain.py --run runs/lg-hotpotqa --data hotpotqa --mine-limit 40 --learning-rate 1e-4
    python benchmarks/preference_gain.py --run runs/lg-hotpotqa --data hotpotqa --method rft --mine-limit 20

Takes the SFT adapter (`RUN/sft`) and its eval (`RUN/eval-sft`) from the learning-gain run.

- `--method simpo` (default): runs the adapter on `--mine-limit` *train* questions, pairs every failure with
  a kept synthetic trace of the same question (`RUN/traces-*/kept.jsonl`), trains SimPO (preset seed002,
  or `--preset dpo`) on the adapter. The pairs land under RUN/preference-pairs (shared by every preset and
  learning rate: mining is the slow part), the adapter under RUN/preference-<preset>[-lr<LR>].
- `--method rft`: samples the adapter `--samples` times per train question at `--temperature`, keeps the
  correct episodes that searched, and trains the adapter further on them (RUN/rft[-lr<LR>]).

Either way the new adapter is evaluated on the same eval questions, with the same prompt setup, as the SFT
adapter, and the script prints the paired comparison table and one line

    sft -> simpo: EM X% -> Y% (+Zpt, McNemar p = ...); F1 ... (paired 95% CI [...]); cover-EM ...; n=N paired;
    tool use A -> B; pairs/steps; minutes

A rerun resumes (mined episodes, samples, a trained adapter and finished eval episodes are kept);
`--print-only` reprints the last run's record (OUT/preference_gain.json) without running anything.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from hopsmith.config import from_saved, update
from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.leakage import TRAINED_KEYS
from hopsmith.metrics import aggregate, format_comparison, headline
from stages import evaluate, preference, rft


def _simpo(args, run: Path, base: evaluate.EvalConfig) -> tuple[Path, dict, str]:
    shared = run / "preference-pairs"
    out = _out_dir(args, run)
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
        learning_rate=args.learning_rate, epochs=args.epochs, max_length=1536, probe_data=args.data,
        probe_every=args.probe_every), out / "adapter")
    b, a = training["behaviour_before"], training["behaviour_after"]
    summary = (f"{pairs['pairs']} pairs, {training['steps']} steps; probe tool use {b['tool_use_rate']:.0%} -> "
               f"{a['tool_use_rate']:.0%}, collapse flags {len(training['collapse'])}")
    record = {"pairs": pairs, "training": {k: v for k, v in training.items() if k not in TRAINED_KEYS}}
    return out, record, summary


def _rft(args, run: Path, base: evaluate.EvalConfig) -> tuple[Path, dict, str]:
    out = _out_dir(args, run)
    a = base.agent
    cfg = update(rft.RFTConfig(), data=args.data, model=a.model, adapter=str(run / "sft"), limit=args.mine_limit,
                 samples=args.samples, temperature=args.temperature, max_turns=a.max_turns,
                 max_new_tokens=a.max_new_tokens, top_k=a.top_k, max_chars=a.max_chars,
                 epochs=args.epochs or 2.0, learning_rate=args.learning_rate or 1e-4, max_length=1536)
    done = out / "rft_summary.json"
    summary = json.loads(done.read_text()) if done.exists() else rft.run(cfg, out)
    if not summary.get("trained"):
        raise SystemExit(f"rft: no sample of {summary['samples']} passed the filters; nothing to compare")
    steps = summary.get("sft_steps") or summary["sft"]["steps"]
    b = summary["behaviour"]
    line = (f"{summary['kept']} of {summary['samples']} samples kept ({summary['questions_with_a_kept_sample']} of "
            f"{summary['questions']} questions), {steps} steps; sample tool use {b['tool_use_rate']:.0%}")
    return out, {"rft": {k: v for k, v in summary.items() if k != "sft"}}, line


def report(record: dict, name: str) -> str:
    """The printout of a preference_gain.json record: the paired comparison table, then one line with EM
    and F1 first (McNemar's p, the F1 change's paired interval) and the method's own summary."""
    s, t = record["sft"], record["tuned"]
    line = (headline(s, t, names=("sft", name)) + f"; tool use {s['tool_use_rate']:.0%} -> {t['tool_use_rate']:.0%}; "
            f"{record.get('summary', '')}; {record.get('seconds', 0) / 60:.1f} min")
    return format_comparison(s, t, names=("sft", name)) + "\n" + line


def sft_eval_metrics(run: Path) -> dict:
    """RUN/eval-sft/metrics.json, completed for a pairing: a run older than per-question scores is rescored
    from its results.jsonl under the current (official, per-dataset) rules, and one older than prompt
    setups gets its setup from its config.json."""
    metrics = json.loads((run / "eval-sft" / "metrics.json").read_text())
    if "per_question" not in metrics:
        fresh = aggregate(read_jsonl(run / "eval-sft" / "results.jsonl"))
        metrics.update({k: fresh[k] for k in ("acc", "em", "f1", "by_hops", "by_type", "by_dataset", "scoring",
                                              "rate_ci", "per_question")})
    if "setup" not in metrics:
        saved = json.loads((run / "eval-sft" / "config.json").read_text())
        metrics["setup"] = evaluate.prompt_setup(from_saved(evaluate.EvalConfig, saved))
    return metrics


def _out_dir(args, run: Path) -> Path:
    suffix = "" if args.learning_rate is None else f"-lr{args.learning_rate:g}"
    return run / ((f"preference-{args.preset}" if args.method == "simpo" else "rft") + suffix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/lg-hotpotqa", help="a learning_gain.py output directory")
    ap.add_argument("--data", default="hotpotqa", help="the bundled set the run evaluated on")
    ap.add_argument("--method", default="simpo", choices=("simpo", "rft"))
    ap.add_argument("--mine-limit", type=int, default=40, help="train questions the adapter is run (or sampled) on")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--preset", default="seed002", help="simpo: seed002 (SimPO) | dpo")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="simpo: override the preset's (seed 002: 5e-7); rft: default 1e-4")
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--probe-every", type=int, default=10,
                    help="simpo: steps between collapse probes (the guard stops the run when tool use collapses)")
    ap.add_argument("--samples", type=int, default=2, help="rft: samples per question")
    ap.add_argument("--temperature", type=float, default=0.8, help="rft: sampling temperature")
    ap.add_argument("--print-only", action="store_true", help="reprint the finished run's record, run nothing")
    args = ap.parse_args()
    run = Path(args.run)
    name = "dpo" if args.method == "simpo" and args.preset == "dpo" else args.method
    if args.print_only:
        saved = _out_dir(args, run) / "preference_gain.json"
        if not saved.exists():
            raise SystemExit(f"{saved} is missing: run the benchmark first")
        print(report(json.loads(saved.read_text()), name))
        return
    for need in (run / "sft" / "adapter_config.json", run / "eval-sft" / "metrics.json"):
        if not need.exists():
            raise SystemExit(f"{need} is missing: run benchmarks/learning_gain.py --out {run} first")
    sft_eval_cfg = json.loads((run / "eval-sft" / "config.json").read_text())
    sft_metrics = sft_eval_metrics(run)
    base = from_saved(evaluate.EvalConfig, sft_eval_cfg)
    started = time.perf_counter()
    out, record, summary = (_simpo if args.method == "simpo" else _rft)(args, run, base)
    tuned = evaluate.run(update(base, adapter=str(out / "adapter")), out / "eval")
    total = time.perf_counter() - started
    record = {"sft": sft_metrics, "tuned": tuned, **record, "summary": summary, "seconds": total, "args": vars(args)}
    write_json(out / "preference_gain.json", record)
    print(report(record, name))


if __name__ == "__main__":
    main()
