"""Evaluate an agent: run it on a question set (or another environment's cases) and score it.

    hopsmith eval --data musique --limit 20 --model embedded --out runs/base
    hopsmith eval --env enterprise --data enterprise --limit 1 --max-turns 16 --out runs/enterprise

Writes into the run directory: `config.json` (the configuration and, under `backends`, what each role's
spec built and how tool specs reached the agent), `results.jsonl` (one finished episode a line: messages,
prediction, tool calls, per-question metrics and failure kind), `extraction.jsonl` (the standalone
extraction benchmark, for the ceiling) and `metrics.json` (see `hopsmith.metrics.aggregate`, plus `setup`:
the prompt setup, and `leakage`). Results are appended as episodes finish; a rerun into the same directory
skips the questions already done, and a directory holding another configuration's results is refused
rather than mixed. The backends are built and checked (a remote one contacted) before anything is written,
and `config.json` is written with the first result: a run that fails before it leaves nothing behind.
An adapter is evaluated only on questions that share nothing with its training data
(`hopsmith.leakage`): overlap is refused, or left out and counted with `--drop-leakage`. Last it writes
`report.html` (`hopsmith.report`: the numbers, plots and every episode in one page).

Another environment (`--env`, `hopsmith.envs.ENVS`) brings its own items and scores: the enterprise
environment runs the bundled cases (`--limit` of each category) and writes its per-category,
per-action and confusion tables into `metrics.json`; `--judge SPEC` adds the four judge dimensions.
"""
from __future__ import annotations

from pathlib import Path

from hopsmith.agent.backends import agent_backends
from hopsmith.config import EvalConfig, RunDirError
from hopsmith.evaluation import (check_leakage, check_run_dir, describe, load_eval_questions, merge, prompt_setup, run,
                                 run_shard, shard_path)
from hopsmith.leakage import LeakageError

__all__ = ["EvalConfig", "LeakageError", "RunDirError", "check_leakage", "check_run_dir", "describe",
           "load_eval_questions", "make_backends", "merge", "prompt_setup", "run", "run_baselines", "run_shard",
           "shard_path"]


def make_backends(cfg: EvalConfig):
    """The agent and its extractor, as every eval builds them (`hopsmith.agent.backends.agent_backends`)."""
    return agent_backends(cfg.agent, engine="hf")


def run_baselines(cfg: EvalConfig, root: Path, kinds: list[str]) -> dict:
    """Closed-book and naive RAG (`hopsmith.baselines`) with the base model on the eval questions and pools
    `cfg` selects, at its top-k and snippet length; each kind's rows are cached in ROOT/baseline-<kind>/
    results.jsonl and reused while they cover the same number of questions. Returns each kind's metrics."""
    from hopsmith.baselines import run_baseline
    from hopsmith.io import read_jsonl, write_jsonl
    from hopsmith.metrics import aggregate

    questions, pools = load_eval_questions(cfg)
    backend = None
    out = {}
    for kind in kinds:
        path = Path(root) / f"baseline-{kind}" / "results.jsonl"
        rows = read_jsonl(path) if path.exists() else None
        if rows is None or len(rows) != len(questions):
            if backend is None:
                backend, _ = make_backends(cfg)
            rows = run_baseline(kind, questions, pools, backend, top_k=cfg.agent.top_k, max_chars=cfg.agent.max_chars)
            write_jsonl(path, rows)
        out[kind] = aggregate(rows)
    return out
