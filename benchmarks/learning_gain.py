"""Learning gain of the ladder: the embedded model before and after LoRA SFT on synthetic traces, and after
each stage `--with` adds (RFT, then SimPO or DPO on the policy's own pairs), each continuing the adapter kept.

    python benchmarks/learning_gain.py [--eval musique] [--train musique,hotpotqa,2wiki] [--max-traces 120]
    python benchmarks/learning_gain.py --eval hotpotqa --eval-limit 50 --with rft,simpo --out runs/lg-hotpotqa
    python benchmarks/learning_gain.py --out runs/learning-gain --print-only     # reprint a finished run

Beside the base and tuned agents it runs two baselines with the base model on the same questions and pools
(`hopsmith.baselines`): closed-book (the question alone) and naive retrieve-then-read (BM25 top-k of the
question, then one answer); a search agent earns its keep only above them (`--baselines none` skips them).

Trains only on bundled *train*-split questions (traces -> rule judge -> SFT), then evaluates the base model
and the adapter on `--eval` (a bundled set's eval split, or any original-format file; the leakage guard
refuses overlap). The tuned model runs zero-shot, as it was trained; the base model runs both one-shot (its
best chance at the tool format) and zero-shot (like with like), and each is compared with the tuned run
question by question. It prints both comparison tables and one line per comparison:

    base -> tuned: EM X% -> Y% (+Zpt, McNemar p = ...); F1 ... (paired 95% CI [...]); cover-EM ...; n=N paired

With `--with rft,simpo` the stages run as `hopsmith pipeline --with rft,simpo` runs them (`stages.pipeline`):
RFT samples the SFT adapter `--rft-samples` times per train question of the eval set, and trains it further on
the correct episodes that searched; the preference pairs set the kept policy's own correct sample against its failed one
on the same question (`--pair-chosen traces`: its greedy failures against the synthetic traces); after each
stage the collapse guard keeps the better adapter. The guard decides on the dev split (about a quarter of the
train side, held out of every trace, sample and pair: `hopsmith.data.split`), so the eval split reports the
ladder without choosing its adapter; `--no-dev` trains on the whole train side and lets the guard read the
eval split, as `hopsmith pipeline --no-dev` does. The ladder table then shows every stage on the same eval
questions, each with its paired change against the adapter before it.

Goal from the issue: tuned >= 3x base and >= +10 points. Everything lands in --out, so a rerun resumes
instead of starting over.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hopsmith.baselines import baseline_kinds
from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.metrics import format_comparison, headline

# The base runs: (key in learning_gain.json, run directory, few-shot, name in the printout).
BASE_RUNS = {"one-shot": ("base", "eval-base", True, "base 1-shot"),
             "zero-shot": ("base_zeroshot", "eval-base-zeroshot", False, "base 0-shot")}


def _ratio(b: float, t: float) -> str:
    return "inf" if b == 0 else f"{t / b:.1f}x"


def report(record: dict) -> str:
    """The printout of a learning_gain.json record: a paired comparison table per base run, then one
    headline line each (EM and F1 first, with McNemar's p and the F1 change's paired interval)."""
    tuned = record["tuned"]
    blocks, lines = [], []
    for key, _, _, name in BASE_RUNS.values():
        base = record.get(key)
        if not base:
            continue
        blocks.append(format_comparison(base, tuned, names=(name, "tuned")))
        lines.append(headline(base, tuned, names=(name, "tuned"))
                     + f"; EM {_ratio(base['em']['mean'], tuned['em']['mean'])}")
    if record.get("ladder"):
        lines.append(ladder_table(record))
    if record.get("baselines"):
        lines.append(baselines_table(record))
    sft = record.get("sft") or {}
    lines.append(f"{record.get('traces', '?')} traces, {sft.get('steps', '?')} SFT steps; "
                 f"{record.get('seconds', 0) / 60:.1f} min")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(lines)


def ladder_table(record: dict) -> str:
    """One row per stage of the ladder on the same eval questions (EM, F1, tool use with 95% intervals, the
    invalid-call rate), then each stage's paired headline against the adapter it continued (and on the dev
    split, where the guard decided, when it ran there), and its guard line."""
    from hopsmith.metrics import headline

    base = record.get("base") or record.get("base_zeroshot")
    runs = [("base", base), ("sft", record["tuned"])] if base else [("sft", record["tuned"])]
    stages = record["ladder"]
    runs += [(name, stage[name]) for name, stage in stages.items() if not stage.get("skipped")]

    def ci(m: dict) -> str:
        return f"{100 * m['mean']:5.1f} [{100 * m['lo']:4.1f},{100 * m['hi']:5.1f}]"

    head = f"ladder (n={record['tuned']['n']})"
    lines = [f"{head:<14}{'EM':>19}{'F1':>19}{'tool use':>19}{'invalid calls':>15}"]
    lines += [f"{name:<14}{ci(m['em']):>19}{ci(m['f1']):>19}{ci(m['rate_ci']['tool_use_rate']):>19}"
              f"{100 * m['invalid_call_rate']:>14.1f}%" for name, m in runs]
    for name, stage in stages.items():
        if stage.get("skipped"):
            why = stage.get("why") or ("no sample was correct and searched" if name == "rft" else "no preference pairs")
            lines.append(f"{name}: skipped ({why})")
            continue
        before = stage["against"]
        lines.append(headline(stage[before], stage[name], names=(before, name)))
        if stage.get("dev"):  # where the guard decided: the held-out train questions
            lines.append("on the dev split, " + headline(stage["dev"][before], stage["dev"][name], names=(before, name)))
        lines.append(stage["promotion"]["line"])
    if record.get("kept"):
        lines.append(f"the ladder ends on {record['kept']}")
    return "\n".join(lines)


def ladder_config(args):
    """The pipeline config the `--with` stages run under: this benchmark's eval and SFT settings."""
    from stages import pipeline

    return pipeline.PipelineConfig(data=args.eval, eval_limit=args.eval_limit, max_turns=args.max_turns,
                                   max_new_tokens=96, top_k=args.top_k, max_chars=args.max_chars, epochs=args.epochs,
                                   learning_rate=args.learning_rate, max_length=1536, with_stages=args.with_stages,
                                   rft_samples=args.rft_samples, rft_limit=args.rft_limit, max_pairs=args.max_pairs,
                                   pair_chosen=args.pair_chosen, preference_preset=args.preference_preset,
                                   preference_learning_rate=args.preference_learning_rate,
                                   dev=args.dev).resolved()


def run_ladder(args, root: Path, tuned: dict) -> dict:
    """The stages `--with` names, each continuing the adapter the collapse guard kept, with the pipeline's own
    step functions (so this benchmark and `hopsmith pipeline --with rft,simpo` cannot run different recipes)."""
    from stages import pipeline

    kept = {"name": "sft", "adapter": str(root / "sft"), "metrics": tuned}
    out = {}
    for name, stage, kept in pipeline.after_sft(ladder_config(args), root, kept, print):
        out[name] = stage
    return {"stages": out, "kept": kept["name"]}


def baselines_table(record: dict) -> str:
    """Closed-book and retrieve-then-read beside the base and tuned agents (same questions, same model), and
    the tuned agent's paired comparison with each baseline (and the ladder's final adapter's, when a stage
    after SFT was kept)."""
    from hopsmith.metrics import headline

    runs = [(name, record["baselines"][key]) for key, name in (("closed_book", "closed-book"), ("rag", "BM25 top-k + read"))
            if key in record["baselines"]]
    runs += [(name, record[key]) for key, _, _, name in BASE_RUNS.values() if record.get(key)]
    runs.append(("tuned agent", record["tuned"]))
    kept = record.get("kept")
    final = record["ladder"][kept][kept] if kept and kept != "sft" and kept in (record.get("ladder") or {}) else None
    if final is not None:  # the adapter the ladder ends on, when a stage after SFT was promoted
        runs.append((f"ladder's {kept}", final))

    def cell(m: dict) -> str:
        return f"{100 * m['mean']:5.1f} [{100 * m['lo']:4.1f},{100 * m['hi']:5.1f}]"

    lines = [f"{'baselines (n=' + str(record['tuned']['n']) + ')':<20}{'EM':>19}{'F1':>19}{'cover-EM':>19}"]
    lines += [f"{name:<20}{cell(m['em']):>19}{cell(m['f1']):>19}{cell(m['acc']):>19}" for name, m in runs]
    lines += [headline(m, record["tuned"], names=(name, "tuned")) for name, m in runs[:len(record["baselines"])]]
    if final is not None:
        lines += [headline(m, final, names=(name, kept)) for name, m in runs[:len(record["baselines"])]]
    return "\n".join(lines)


def run_baselines(args, root: Path, kinds: list[str]) -> dict:
    """Closed-book and naive RAG with the base model on the eval questions and pools the agent is evaluated on
    (cached in OUT/baseline-<kind>/results.jsonl)."""
    from stages import evaluate

    cfg = evaluate.EvalConfig(data=args.eval, split="eval", limit=args.eval_limit, top_k=args.top_k,
                              max_chars=args.max_chars, extractor="none")
    return evaluate.run_baselines(cfg, root, kinds)


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
    ap.add_argument("--base", default="one-shot,zero-shot",
                    help="base runs to compare with the tuned one: one-shot, zero-shot or both")
    ap.add_argument("--baselines", default="closed_book,rag",
                    help="baselines run with the base model on the same questions (closed_book, rag; 'none': skip)")
    ap.add_argument("--with", dest="with_stages", default="",
                    help="stages after SFT, as `hopsmith pipeline --with rft,simpo` (run in that order)")
    ap.add_argument("--rft-samples", type=int, default=4, help="RFT and on-policy pairs: samples per train question")
    ap.add_argument("--rft-limit", type=int, default=None, help="train questions sampled (default: all)")
    ap.add_argument("--pair-chosen", default="policy", help="policy (own correct samples) | traces (synthetic)")
    ap.add_argument("--preference-preset", default="seed002", help="seed002 (SimPO) | dpo")
    ap.add_argument("--preference-learning-rate", type=float, default=1e-4)
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--dev", action=argparse.BooleanOptionalAction, default=None,
                    help="hold out the dev split and let the guard choose on it (default: on with --with)")
    ap.add_argument("--out", default="runs/learning-gain")
    ap.add_argument("--print-only", action="store_true", help="reprint OUT/learning_gain.json, run nothing")
    args = ap.parse_args()
    if args.dev is None:
        args.dev = bool(args.with_stages)
    root = Path(args.out)
    if args.print_only:
        saved = root / "learning_gain.json"
        if not saved.exists():
            raise SystemExit(f"{saved} is missing: run the benchmark first")
        print(report(json.loads(saved.read_text())))
        return
    bases = [b.strip() for b in args.base.split(",") if b.strip()]
    unknown = set(bases) - set(BASE_RUNS)
    if unknown or not bases:
        raise SystemExit(f"--base: unknown base run(s) {sorted(unknown)}; choose from {', '.join(BASE_RUNS)}")
    try:  # an unknown baseline is refused now, not after the hour of traces, training and evals
        kinds = baseline_kinds(args.baselines)
    except ValueError as e:
        ap.error(f"--baselines: {e}")
    if args.with_stages:  # a bad stage name or knob is refused now, not after the traces, SFT and evals
        from hopsmith.config import ConfigError, check_values

        try:
            check_values(ladder_config(args))
        except ConfigError as e:
            print(f"learning_gain.py: error: {e}", file=sys.stderr)
            raise SystemExit(2)

    from stages import evaluate, judge, sft, traces
    from hopsmith.config import update
    from hopsmith.traces import sample_traces
    from hopsmith.training import trace_lengths

    started = time.perf_counter()
    all_traces = []
    for name in args.train.split(","):
        sub = root / f"traces-{name}"
        traces.run(update(traces.TracesConfig(), data=name, split="fit" if args.dev else "train", top_k=args.top_k,
                          max_chars=args.max_chars, thinking_fraction=0.0), sub)
        judge.run(judge.JudgeConfig(), sub)
        all_traces += read_jsonl(sub / "kept.jsonl")
    # Sampled among the traces SFT can take whole (max_length 1536), so none is dropped after sampling.
    fit = [t for t, n in zip(all_traces, trace_lengths(all_traces)) if n <= 1536]
    train = sample_traces(fit, args.max_traces, seed=0)
    write_jsonl(root / "train.jsonl", train)
    t_traces = time.perf_counter() - started

    summary = sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), epochs=args.epochs,
                                    learning_rate=args.learning_rate, max_length=1536), root / "sft")

    def cfg(adapter=None, few_shot=False, extraction_bench=False):
        return update(evaluate.EvalConfig(), data=args.eval, split="eval", limit=args.eval_limit, adapter=adapter,
                      few_shot=few_shot, max_turns=args.max_turns, max_new_tokens=96,
                      top_k=args.top_k, max_chars=args.max_chars, extraction_bench=extraction_bench)

    record: dict = {}
    for i, b in enumerate(bases):
        key, folder, few_shot, _ = BASE_RUNS[b]
        # the extraction benchmark (the ceiling's other half) runs once: the extractor does not change
        record[key] = evaluate.run(cfg(few_shot=few_shot, extraction_bench=i == 0), root / folder)
    record["tuned"] = evaluate.run(cfg(str(root / "sft")), root / "eval-sft")
    if args.with_stages:
        ladder = run_ladder(args, root, record["tuned"])
        record["ladder"], record["kept"] = ladder["stages"], ladder["kept"]
    if kinds:
        record["baselines"] = run_baselines(args, root, kinds)
    record.update(sft=summary, traces=len(train), seconds=time.perf_counter() - started, traces_seconds=t_traces,
                  args=vars(args))
    write_json(root / "learning_gain.json", record)
    print(report(record))


if __name__ == "__main__":
    main()
