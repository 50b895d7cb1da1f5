"""SFT train tokens per second: one trace a forward with assistant-only logits vs TRL's padded batches.

    python benchmarks/sft_speed.py [--traces 32] [--model embedded] [--rounds 1] [--threads N]

Builds `--traces` synthetic traces from the bundled train questions in the local preset's environment
(top_k 3, 200 characters a paragraph), sampled over the five types among those that fit `--max-length`,
prints their token lengths by type, then trains the same LoRA (seed 000's preset, batch 2, one epoch, the
same seed) twice on them: `collation="padded"` (the path before: TRL's padded batches, every position
scored) and `collation="per_trace"` (the default now). Prints train tokens/s of each, by wall time and by
process CPU time (on a machine other jobs share the CPU rate is the robust one, with `--threads 1`), the
ratio (goal >= 2x) and both loss curves step by step (same batches in the same order: the curves agree
within LoRA dropout's noise). With `--rounds 2` the order alternates.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from hopsmith.data import build_pools, load_questions
from hopsmith.io import write_jsonl
from hopsmith.traces import synthetic
from stages import sft
from hopsmith.traces import sample_traces


def build(n: int, max_length: int, model: str, seed: int) -> tuple[list[dict], dict]:
    traces = []
    for data in ("musique", "hotpotqa", "2wiki"):
        questions = load_questions(data, split="train")
        pools = build_pools(questions, others=load_questions(data))
        made, _ = synthetic.generate(questions, pools, top_k=3, max_chars=200, thinking_fraction=0.0, seed=seed)
        traces += made
    lengths = sft.trace_lengths(traces, model)
    by_type: dict[str, list[int]] = {}
    for t, k in zip(traces, lengths):
        by_type.setdefault(f"{t['type']} ({len(t['tool_calls'])} calls)", []).append(k)
    fit = [t for t, k in zip(traces, lengths) if k <= max_length]
    return sample_traces(fit, n, seed), by_type


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", type=int, default=32)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; on a machine other jobs share, 1 keeps OpenMP barriers from measuring the OS scheduler")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="sft-speed-"))
    out.mkdir(parents=True, exist_ok=True)
    traces, by_type = build(args.traces, args.max_length, args.model, seed=0)
    print("trace tokens by type (all built, local preset env):")
    for kind, ks in sorted(by_type.items()):
        print(f"  {kind:20s} n={len(ks):3d} median {statistics.median(ks):6.0f} max {max(ks):5d} "
              f"<=1024: {sum(k <= 1024 for k in ks)}/{len(ks)}  <={args.max_length}: {sum(k <= args.max_length for k in ks)}/{len(ks)}")
    write_jsonl(out / "traces.jsonl", traces)
    tokens = sum(sft.trace_lengths(traces, args.model))
    print(f"{len(traces)} traces sampled ({tokens} tokens) over {len({t['type'] for t in traces})} types; "
          f"{torch.get_num_threads()} threads", flush=True)

    results: dict[str, list[dict]] = {"padded": [], "per_trace": []}
    for r in range(args.rounds):
        order = ["padded", "per_trace"] if r % 2 == 0 else ["per_trace", "padded"]
        for collation in order:
            cfg = sft.SFTConfig(traces=str(out / "traces.jsonl"), model=args.model, epochs=1.0,
                                batch_size=args.batch_size, learning_rate=args.learning_rate,
                                max_length=args.max_length, save_steps=10**6, collation=collation)
            summary = sft.run(cfg, out / f"{collation}-{r}")
            losses = _losses(out / f"{collation}-{r}")
            results[collation].append({"seconds": summary["seconds"], "cpu": summary["cpu_seconds"],
                                       "tokens": summary["tokens"], "losses": losses})
            print(f"  round {r + 1} {collation:9s}: {summary['seconds']:7.1f} s wall, {summary['cpu_seconds']:7.1f} s CPU, "
                  f"{summary['tokens'] / summary['seconds']:6.1f} train tokens/s", flush=True)

    speed = {k: sum(x["tokens"] for x in v) / sum(x["seconds"] for x in v) for k, v in results.items()}
    cpu_speed = {k: sum(x["tokens"] for x in v) / sum(x["cpu"] for x in v) for k, v in results.items()}
    before, after = results["padded"][0]["losses"], results["per_trace"][0]["losses"]
    print("\nstep  loss padded  loss per-trace")
    for i, (a, b) in enumerate(zip(before, after), start=1):
        print(f"{i:4d}  {a:11.4f}  {b:14.4f}")
    diffs = [abs(a - b) for a, b in zip(before, after)]
    print(f"mean |loss difference| {statistics.mean(diffs):.4f} (max {max(diffs):.4f}); mean loss "
          f"{statistics.mean(before):.4f} padded, {statistics.mean(after):.4f} per-trace")
    print(f"padded: {speed['padded']:.1f} train tokens/s ({cpu_speed['padded']:.1f} per CPU-second); per-trace + "
          f"assistant-only logits: {speed['per_trace']:.1f} ({cpu_speed['per_trace']:.1f} per CPU-second); "
          f"{speed['per_trace'] / speed['padded']:.2f}x wall, {cpu_speed['per_trace'] / cpu_speed['padded']:.2f}x CPU (goal >= 2x)")


def _losses(run: Path) -> list[float]:
    import json

    return [x["loss"] for x in json.loads((run / "loss.json").read_text())]


if __name__ == "__main__":
    main()
