"""Noisy retrieval, seed 001's robustness test: the same agent on the same questions with every search
working and with a share of searches failing (an empty result or a service error), side by side in one run.

    python benchmarks/noisy_retrieval.py --data hotpotqa --limit 20 --rate 0.1
    python benchmarks/noisy_retrieval.py --data hotpotqa --limit 40 --max-turns 6 --top-k 3 --max-chars 300
    python benchmarks/noisy_retrieval.py --data hotpotqa --limit 40 --adapter runs/lg-hotpotqa/sft --rate 0.1

Which searches fail is drawn per question, query and attempt from `--seed`, so both runs and any rerun
see the same failures; a failed search is not remembered, so an agent may retry it. Prints the two runs'
comparison table (accuracy, EM, F1 with 95% CIs, tool use, failures) and one line:

    noisy retrieval 10%: accuracy clean X% -> noisy Y% (Z x clean, -D pt); F failed of S searches

Seed 001 reports a 12.1-point drop for vanilla small models and 1.7-2.3 points after Always-Search
training at 10% failed retrievals. Runs land in --out (clean/ and noisy-<rate>/); a rerun resumes.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from hopsmith.config import ConfigError, EvalConfig, build
from hopsmith.io import read_jsonl
from hopsmith.metrics import format_comparison
from stages import evaluate


def compare(cfg: EvalConfig, out: str | Path, rate: float, *, backend=None, extractor=None, progress: bool = True) -> dict:
    """Evaluate `cfg` clean and with `rate` of searches failing; both runs' metrics and the search counts."""
    out = Path(out)
    if backend is None:
        backend, extractor = evaluate.make_backends(cfg)  # one model load serves both runs
    runs = {}
    for name, r in (("clean", 0.0), (f"noisy-{rate:g}", rate)):
        runs[name] = evaluate.run(replace(cfg, search_failure_rate=r), out / name, backend=backend,
                                  extractor=extractor, progress=progress)
    rows = read_jsonl(out / f"noisy-{rate:g}" / "results.jsonl")
    attempts = sum(1 for row in rows for c in row.get("tool_calls") or [] if c.get("name") == "search" and c.get("valid"))
    clean, noisy = runs["clean"], runs[f"noisy-{rate:g}"]
    c, n = clean["acc"]["mean"], noisy["acc"]["mean"]
    return {"rate": rate, "clean": clean, "noisy": noisy, "searches": attempts,
            "search_failures": sum(int(row.get("search_failures") or 0) for row in rows),
            "ratio": n / c if c else None, "drop_pt": 100 * (c - n)}


def describe(result: dict) -> str:
    ratio = "n/a" if result["ratio"] is None else f"{result['ratio']:.2f} x clean"
    return (f"noisy retrieval {result['rate']:.0%}: accuracy clean {result['clean']['acc']['mean']:.1%} -> noisy "
            f"{result['noisy']['acc']['mean']:.1%} ({ratio}, {-result['drop_pt']:+.1f} pt); "
            f"{result['search_failures']} failed of {result['searches']} searches")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="hotpotqa")
    ap.add_argument("--split", default="eval")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--adapter")
    ap.add_argument("--extractor", default="self")
    ap.add_argument("--rate", type=float, default=0.1, help="share of searches that fail (seed 001: 0.1)")
    ap.add_argument("--seed", type=int, default=0, help="which searches fail")
    ap.add_argument("--max-turns", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--max-chars", type=int, default=600, help="characters of each paragraph shown")
    ap.add_argument("--out", default="runs/noisy-retrieval")
    args = ap.parse_args(argv)
    from hopsmith.data import DataError
    from hopsmith.models import ModelError

    try:
        cfg = build(EvalConfig, data=args.data, split=args.split, limit=args.limit, model=args.model,
                    adapter=args.adapter, extractor=args.extractor, max_turns=args.max_turns, top_k=args.top_k,
                    max_new_tokens=args.max_new_tokens,
                    max_chars=args.max_chars,
                    search_failure_seed=args.seed, search_failure_rate=args.rate, extraction_bench=False)
        result = compare(cfg, args.out, args.rate)
    except (ConfigError, DataError, ModelError, evaluate.RunDirError, evaluate.LeakageError, FileNotFoundError) as exc:
        print(f"noisy_retrieval: error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(result["clean"], result["noisy"], names=("clean", f"{args.rate:.0%} searches fail")))
    print(describe(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
