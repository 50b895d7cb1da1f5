"""SimPO train tokens per second: each side of each pair alone with logits only where the policy wrote the next
token (`collation="per_trace"`, the default) vs TRL's padded chosen+rejected batch with logits everywhere.

    python benchmarks/simpo_speed.py --pairs runs/ladder/pairs/pairs.jsonl --adapter runs/ladder/sft \\
        [--model embedded] [--steps 4] [--threads N]

Trains the same adapter on the same pairs twice, `--steps` optimizer steps each (seed 002's SimPO preset,
batch 2, the same seed, probes off so only training is timed), once per collation, and prints train tokens
per second of each (both sides of every pair used, by wall and by process CPU time), the ratio, and both
loss curves step by step (the same batches in the same order; LoRA dropout makes them agree within noise).
The pairs are any `hopsmith mine-pairs` output, e.g. the ladder's `pairs/pairs.jsonl` after `--with simpo`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hopsmith.io import read_jsonl
from stages import preference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--adapter", required=True, help="the adapter SimPO continues (the ladder's SFT or RFT one)")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1536)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is robust on a shared machine)")
    args = ap.parse_args()
    if not Path(args.pairs).is_file():
        sys.exit(print(f"simpo_speed: no pairs file at {args.pairs}", file=sys.stderr) or 2)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pairs = read_jsonl(args.pairs)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for collation in ("padded", "per_trace"):
            cfg = preference.PreferenceConfig(pairs=args.pairs, adapter=args.adapter, model=args.model,
                                              max_steps=args.steps, max_length=args.max_length,
                                              learning_rate=args.learning_rate, probe_questions=0,
                                              collation=collation)
            cpu0 = time.process_time()
            summary = preference.train(cfg, Path(tmp) / collation)
            cpu = time.process_time() - cpu0
            losses = [x["loss"] for x in json.loads((Path(tmp) / collation / "loss.json").read_text())]
            results[collation] = {"seconds": summary["seconds"], "cpu": cpu, "losses": losses,
                                  "steps": summary["steps"]}
            print(f"  {collation:9s}: {summary['steps']} steps, {summary['seconds']:7.1f} s wall", flush=True)
    steps = results["per_trace"]["steps"]
    tokens = _tokens(pairs, args, steps)
    speed = {k: tokens / v["seconds"] for k, v in results.items()}
    cpu_speed = {k: tokens / v["cpu"] for k, v in results.items()}
    before, after = results["padded"]["losses"], results["per_trace"]["losses"]
    print("\nstep  loss padded  loss per-trace")
    for i, (a, b) in enumerate(zip(before, after), start=1):
        print(f"{i:4d}  {a:11.4f}  {b:14.4f}")
    diffs = [abs(a - b) for a, b in zip(before, after)]
    print(f"mean |loss difference| {statistics.mean(diffs):.4f} (max {max(diffs):.4f})")
    print(f"{steps} steps on about {tokens} tokens (both sides of each pair); padded: {speed['padded']:.1f} train "
          f"tokens/s ({cpu_speed['padded']:.1f} per CPU-second, CPU time includes loading); per-trace: "
          f"{speed['per_trace']:.1f} ({cpu_speed['per_trace']:.1f}); "
          f"{speed['per_trace'] / speed['padded']:.2f}x wall, {cpu_speed['per_trace'] / cpu_speed['padded']:.2f}x CPU")


def _tokens(pairs: list[dict], args, steps: int) -> int:
    """About the tokens `steps` batches of 2 pairs hold: the mean length of a pair's two sides x 2 x steps (the
    trainer's shuffle picks which pairs; both collations train the same batches, so the ratio is exact)."""
    from hopsmith.backends.templates import chat_templates
    from hopsmith.training import load_policy

    _, tok = load_policy(args.model, args.adapter)
    template = chat_templates(tok).training
    rows = [r for r in (preference._tokenized_pair(p, tok, template, args.max_length) for p in pairs) if r]
    per_pair = statistics.mean(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows)
    return round(per_pair * 2 * steps)


if __name__ == "__main__":
    main()
