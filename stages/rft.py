"""Rejection fine-tuning (the always-search recipe): sample the model N times per train question, keep what a
judge accepts, and fine-tune on those episodes.

    hopsmith rft --adapter runs/ladder/sft --samples 4 --out runs/ladder/rft

Each question gets `samples` episodes at `temperature` (sample i seeds the sampler with seed + i). An
episode is kept when it passes the same rule checks as any trace (`hopsmith.judge.rule_checks`: calls
parse, final answer, answer matches gold, no repeated calls, length) and, like seed 001's ASP filter, it
searched at least once; with `--judge SPEC` the LLM judge must pass it too. The kept episodes, plus the
original SFT traces when `mix_traces` is given, train the sampled adapter further (the always-search recipe
runs RFT as a final stage on the distilled model; `continue_adapter=False` trains a new adapter from the base). Writes
`samples.jsonl` (every episode, with its verdict), `kept.jsonl`, `train.jsonl`, `behaviour.json`
(tool use etc. of the samples) and the adapter under `adapter/`.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hopsmith.agent.backends import agent_backends
from hopsmith.agent.loop import run_episodes
from hopsmith.backends.hf import check_adapter
from hopsmith.collapse import behaviour
from hopsmith.config import AgentConfig, ConfigError, flat_config, flat_knobs, refuse_other_config, to_dict
from hopsmith.data import load_with_pools
from hopsmith.envs import multihop
from hopsmith.evaluation import RESULT_KEYS, canonical_specs
from hopsmith.io import JsonlAppender, read_jsonl, write_json, write_jsonl
from hopsmith.judge import KeepRules, LLMJudge, judge_traces, rule_checks, judge_backend as make_judge_backend
from hopsmith.tools.extract import Extractor
from hopsmith.traces.synthetic import tool_schemas
from hopsmith.training import SFTConfig, train_sft
from hopsmith.runlock import locked


@flat_knobs
@dataclass(frozen=True)
class RFTConfig:
    """`hopsmith rft`: sample the policy, keep the judged-correct episodes, train it further on them."""

    data: str = "musique"  # bundled set or file whose train split is sampled
    split: str = "train"  # train | fit (the train side less its dev split, when a dev split chooses adapters)
    limit: int | None = None  # train questions
    samples: int = 4  # episodes per question (sample i seeds the sampler with seed + i)
    judge: str | None = None  # backend spec of an LLM judge a kept episode must also pass; None: rules only
    mix_traces: str | None = None  # also train on these traces (e.g. the SFT train.jsonl)
    continue_adapter: bool = True  # train the sampled adapter further; False: a new adapter from the base model
    epochs: float = 2.0  # SFT epochs over the kept episodes
    learning_rate: float = 1e-3  # SFT learning rate
    max_length: int = 1536  # SFT: longer episodes are left out (and counted)
    sft_batch_size: int = 2  # SFT: episodes per optimizer step
    seed: int = 0  # seeds the samplers and SFT
    # The policy sampled (model and adapter: the SFT adapter; no adapter samples the base model, few-shot)
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(temperature=0.8, max_turns=6, max_new_tokens=96,
                                                                   top_k=3, max_chars=300, few_shot=None),
                               metadata={"omit": ("env",)})

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"RFTConfig.samples must be >= 1, got {self.samples}")
        if self.split not in ("train", "fit"):
            raise ConfigError(f"RFTConfig.split must be train or fit (RFT trains on what it samples), got {self.split!r}")
        if self.agent.temperature <= 0:
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


def sample(cfg: RFTConfig, root: str | Path, *, backend=None) -> list[dict]:
    """`samples` episodes per train question into `root/samples.jsonl` (resuming), each with its rule verdict
    and `kept` (it passed the rules and searched); returns every row. The pipeline mines on-policy preference
    pairs from these rows too: correct samples against failed ones of the same question."""
    policy = cfg.agent
    if policy.adapter:
        check_adapter(policy.adapter)  # before sampling, not after it when SFT would load the adapter
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # Samples of another policy or sampler would be mixed with these: refused on the keys an eval's results are
    # refused on (how many questions and samples, and how the kept ones are judged and trained, may change).
    keys = [k for k in RESULT_KEYS if k in flat_config(to_dict(cfg))]
    refuse_other_config(root / "config.json", cfg, keys, what="samples", added=flat_config(to_dict(RFTConfig())),
                        normalize=canonical_specs)
    write_json(root / "config.json", asdict(cfg))
    questions, pools = load_with_pools(cfg.data, split=cfg.split, limit=cfg.limit)
    path = root / "samples.jsonl"
    done = {(r["question_id"], r["sample"]) for r in read_jsonl(path, repair=True)}
    if any((q.id, i) not in done for q in questions for i in range(cfg.samples)):  # else no model is loaded
        if backend is None:
            backend, extractor = agent_backends(policy)
        else:  # as in eval: the policy's own model (adapter included) reads for llm_query
            extractor = Extractor(backend) if policy.extractor == "self" else None
        _sample(cfg, questions, pools, backend, extractor, path, done)
    wanted = {q.id for q in questions}
    return [r for r in read_jsonl(path) if r["question_id"] in wanted and r["sample"] < cfg.samples]


@locked
def run(cfg: RFTConfig, root: str | Path, *, backend=None) -> dict:
    """Sample (resuming from `samples.jsonl`), keep, and train; returns the summary in `rft_summary.json`."""
    judge_backend = make_judge_backend(cfg.judge) if cfg.judge else None  # checked (a remote one contacted) before sampling
    root = Path(root)
    rows = sample(cfg, root, backend=backend)
    policy = cfg.agent
    kept = [r for r in rows if r["kept"]]
    if cfg.judge and kept:
        judged = judge_traces(kept, KeepRules(), LLMJudge(judge_backend), cfg.judge)
        kept = [t for t in judged if t["judge"]["verdict"] == "pass"]
    write_jsonl(root / "kept.jsonl", kept)
    stats = behaviour(rows)
    write_json(root / "behaviour.json", stats)
    per_question = len({r["question_id"] for r in kept})
    questions = {r["question_id"] for r in rows}
    summary = {"samples": len(rows), "kept": len(kept), "questions": len(questions),
               "questions_with_a_kept_sample": per_question, "behaviour": stats, "config": asdict(cfg)}
    train = kept + (read_jsonl(cfg.mix_traces) if cfg.mix_traces else [])
    if not train:
        print("rft: no sample passed the filters; no adapter trained", file=sys.stderr)
        summary["trained"] = False
        write_json(root / "rft_summary.json", summary)
        return summary
    write_jsonl(root / "train.jsonl", train)
    summary["sft"] = train_sft(SFTConfig(traces=str(root / "train.jsonl"), model=policy.model, epochs=cfg.epochs,
                                         learning_rate=cfg.learning_rate, max_length=cfg.max_length, seed=cfg.seed,
                                         batch_size=cfg.sft_batch_size,
                                         init_adapter=policy.adapter if cfg.continue_adapter else None),
                               root / "adapter")
    summary["trained"] = True
    write_json(root / "rft_summary.json", {k: v for k, v in summary.items() if k != "sft"}
               | {"sft_steps": summary["sft"]["steps"]})
    return summary


def _sample(cfg: RFTConfig, questions, pools, backend, extractor, path: Path, done: set) -> None:
    """`samples` episodes per question, appended to `path` with their rule verdicts (the (question, sample)
    pairs in `done` skipped)."""
    import torch  # torch and the trainers load only when a stage trains or samples, never at `hopsmith --help`

    make_env = multihop.make(cfg.agent, pools=pools, extractor=extractor)
    tools = tool_schemas(extractor is not None)
    with JsonlAppender(path) as out:
        for i in range(cfg.samples):
            todo = [q for q in questions if (q.id, i) not in done]
            if not todo:
                continue
            torch.manual_seed(cfg.seed + i)
            for row in run_episodes(todo, make_env, backend, cfg.agent):
                trace = episode_trace(row, tools, i)
                rules = rule_checks(trace)
                out.append({**trace, "sample": i, "rules": rules, "kept": accept(trace, rules)})
