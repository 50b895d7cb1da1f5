"""Rejection fine-tuning (seed 001): sample the model N times per train question, keep what a judge
accepts, and fine-tune on those episodes.

    from stages import rft; rft.run(rft.RFTConfig(adapter="runs/ladder/sft", samples=4), "runs/ladder/rft")

Each question gets `samples` episodes at `temperature` (sample i seeds the sampler with seed + i). An
episode is kept when it passes the same rule checks as any trace (`hopsmith.judge.rule_checks`: calls
parse, final answer, answer matches gold, no repeated calls, length) and, like seed 001's ASP filter, it
searched at least once; with `--judge SPEC` the LLM judge must pass it too. The kept episodes, plus the
original SFT traces when `mix_traces` is given, train the sampled adapter further (seed 001 runs RFT as a
final stage on the distilled model; `continue_adapter=False` trains a new adapter from the base). Writes
`samples.jsonl` (every episode, with its verdict), `kept.jsonl`, `train.jsonl`, `behaviour.json`
(tool use etc. of the samples) and the adapter under `adapter/`.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from hopsmith.config import ConfigError
from hopsmith.io import JsonlAppender, read_jsonl, write_json, write_jsonl
from hopsmith.runlock import locked


@dataclass(frozen=True)
class RFTConfig:
    data: str = "musique"
    model: str = "embedded"
    adapter: str | None = None  # the policy to sample (the SFT adapter); None: the base model, few-shot
    limit: int | None = None  # train questions
    samples: int = 4
    temperature: float = 0.8
    max_turns: int = 6
    max_new_tokens: int = 96
    top_k: int = 3
    max_chars: int | None = 300
    judge: str | None = None
    mix_traces: str | None = None  # also train on these traces (e.g. the SFT train.jsonl)
    continue_adapter: bool = True  # train `adapter` further; False: a new adapter from the base model
    epochs: float = 2.0
    learning_rate: float = 1e-3
    max_length: int = 1536
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"RFTConfig.samples must be >= 1, got {self.samples}")
        if self.temperature <= 0:
            raise ConfigError("RFTConfig.temperature must be > 0: rejection sampling needs varied samples")


def episode_trace(row: dict, tools: list[dict], sample: int) -> dict:
    """An eval result row as a trace the judge and SFT take."""
    return {"id": f"rft:{row['question_id']}:{sample}", "question_id": row["question_id"], "source": "policy:rft",
            "messages": row["messages"], "tools": tools, "answer": row.get("prediction"),
            "answers": row.get("answers"), "metrics": row.get("metrics"), "tool_calls": row.get("tool_calls"),
            "finished": row.get("finished"), "turns": row.get("turns"), "stop": row.get("stop")}


def accept(trace: dict, rules: dict) -> bool:
    searched = any(c.get("name") == "search" and c.get("valid") for c in trace.get("tool_calls") or [])
    return rules["passed"] and searched


@locked
def run(cfg: RFTConfig, root: str | Path, *, backend=None) -> dict:
    import torch

    from hopsmith.agent.loop import AgentConfig, run_episodes
    from hopsmith.collapse import behaviour
    from hopsmith.judge import rule_checks
    from hopsmith.tools.extract import Extractor
    from hopsmith.traces.synthetic import tool_schemas
    from stages import sft
    from stages.traces import TracesConfig, load_train_questions

    if cfg.adapter:
        from hopsmith.backends.hf import check_adapter

        check_adapter(cfg.adapter)  # before sampling, not after it when SFT would load the adapter
    judge_backend = None
    if cfg.judge:
        from stages.judge import make_judge_backend

        judge_backend = make_judge_backend(cfg.judge)  # checked (a remote one contacted) before sampling
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "config.json", asdict(cfg))
    questions, pools = load_train_questions(TracesConfig(data=cfg.data, split="train", limit=cfg.limit))
    if backend is None:
        from hopsmith.backends.hf import HFBackend

        backend = HFBackend(cfg.model, adapter=cfg.adapter, batch_size=cfg.batch_size)
    agent = AgentConfig(max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        few_shot=cfg.adapter is None, top_k=cfg.top_k, max_chars=cfg.max_chars)
    tools = tool_schemas(True)
    extractor = Extractor(backend)  # as in eval: the policy's own model reads for llm_query
    done = {(r["question_id"], r["sample"]) for r in read_jsonl(root / "samples.jsonl", repair=True)}
    with JsonlAppender(root / "samples.jsonl") as out:
        for i in range(cfg.samples):
            todo = [q for q in questions if (q.id, i) not in done]
            if not todo:
                continue
            torch.manual_seed(cfg.seed + i)
            for row in run_episodes(todo, pools, backend, agent, extractor=extractor, batch_size=cfg.batch_size):
                trace = episode_trace(row, tools, i)
                rules = rule_checks(trace)
                out.append({**trace, "sample": i, "rules": rules, "kept": accept(trace, rules)})
    rows = read_jsonl(root / "samples.jsonl")
    kept = [r for r in rows if r["kept"]]
    if cfg.judge and kept:
        from stages.judge import JudgeConfig, judge_traces
        from hopsmith.judge import LLMJudge

        judged = judge_traces(kept, JudgeConfig(judge=cfg.judge), LLMJudge(judge_backend), cfg.judge)
        kept = [t for t in judged if t["judge"]["verdict"] == "pass"]
    write_jsonl(root / "kept.jsonl", kept)
    stats = behaviour(rows)
    write_json(root / "behaviour.json", stats)
    per_question = len({r["question_id"] for r in kept})
    summary = {"samples": len(rows), "kept": len(kept), "questions": len(questions),
               "questions_with_a_kept_sample": per_question, "behaviour": stats, "config": asdict(cfg)}
    train = kept + (read_jsonl(cfg.mix_traces) if cfg.mix_traces else [])
    if not train:
        print("rft: no sample passed the filters; no adapter trained", file=sys.stderr)
        summary["trained"] = False
        write_json(root / "rft_summary.json", summary)
        return summary
    write_jsonl(root / "train.jsonl", train)
    summary["sft"] = sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), model=cfg.model, epochs=cfg.epochs,
                                           learning_rate=cfg.learning_rate, max_length=cfg.max_length, seed=cfg.seed,
                                           init_adapter=cfg.adapter if cfg.continue_adapter else None),
                             root / "adapter")
    summary["trained"] = True
    write_json(root / "rft_summary.json", {k: v for k, v in summary.items() if k != "sft"}
               | {"sft_steps": summary["sft"]["steps"]})
    return summary
