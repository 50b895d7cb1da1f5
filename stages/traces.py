"""Write agent traces for SFT from the train split: synthetic (the LoRA multi-hop recipe's five types) or a
teacher's (filtered by the always-search recipe's Always-Search Policy).

    hopsmith traces --root runs/ladder --data musique                        synthetic, train split
    hopsmith traces --root runs/ladder --weights "chain=2,retry=1" --per-question 1 --thinking-fraction 1
    hopsmith traces --root runs/ladder --teacher openai:gpt-4o-mini          a teacher, ASP-filtered
    hopsmith traces --root runs/ladder --shard 1 --num-shards 4              one of four workers
    hopsmith traces --root runs/wikicode --env wikicode --data hotpotqa     code-as-action programs

Writes under `root/traces/`:
- `shard-<i>.jsonl`: the traces of shard i (questions[i::num_shards]); in teacher mode only the kept ones.
  Written whole under a temporary name and renamed, only when the shard is complete.
- `rejected-<i>.jsonl` (teacher mode): traces the ASP filters rejected, each with its `asp` reasons.
- `summary-<i>.json`: counts per type and variant, skipped types with their reasons, kept/rejected.
- `config-<i>.json`: the configuration (in teacher mode with `backends.teacher`: the spec, and how tool specs
  reached the teacher: the `tools` field or its system prompt); a rerun with another one is refused rather
  than mixed.
A rerun skips a complete shard. Teacher episodes are costly, so they are also appended, as they finish,
to `.teacher-<i>.partial.jsonl`, and an interrupted teacher shard resumes from there. The teacher is built
and checked (a remote one contacted: key, URL, model name, tool handling) before anything is written, and
the config is written with the first trace: a shard that fails before it leaves nothing behind.

Questions come from the `train` split by default, so training never sees an eval question; `eval` and
`all` are refused unless `allow_eval_questions` is set. Pools are built as `hopsmith eval` builds them
(distractors from every row of the source on the question's side of the split, so a train trace never
shows an eval question's paragraph), and a trace's tool messages are what eval's search returns.

`--env wikicode` writes one code-as-action trace per question instead (`hopsmith.traces.code`: each gold
hop as a program that loops over the top pages, run in the environment's sandbox; then `<answer>`), the
warm start GRPO on that environment needs when the model has never written a program.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from hopsmith.agent.backends import agent_backends
from hopsmith.agent.loop import run_episodes
from hopsmith.backends.factory import canonical, describe
from hopsmith.config import (AgentConfig, ConfigError, RunDirError, flat_config, flat_knobs, refuse_other_config,
                             to_dict)
from hopsmith.data import load_with_pools
from hopsmith.envs import multihop, wikicode
from hopsmith.io import JsonlAppender, read_jsonl, write_json, write_jsonl
from hopsmith.tools.search import IndexCache
from hopsmith.traces import asp_filter, generate, hop_paragraph_ids, parse_weights
from hopsmith.traces.code import code_traces
from hopsmith.traces.synthetic import as_extractor, tool_schemas
from hopsmith.runlock import locked

# Keys that do not change what a shard holds, so a rerun may change them (a teacher's timeout or concurrency).
_FREE_KEYS = ("batch_size", "teacher_options", "kv_cache_gb")


@flat_knobs
@dataclass(frozen=True)
class TracesConfig:
    """`hopsmith traces`: synthetic or teacher agent traces for SFT."""

    data: str = "musique"  # bundled set name (musique | hotpotqa | 2wiki) or a file in an original format
    split: str = "train"  # train | fit (the train side less its dev split) | eval | all (eval, all: allow_eval_questions)
    allow_eval_questions: bool = False  # let traces be written for eval questions (then nothing evaluates held out)
    limit: int | None = None  # the first `limit` questions of the split
    pool_size: int = 400  # paragraphs in each question's pool, as eval builds it
    pool_seed: int = 0  # seeds which distractors join a pool
    # Synthetic traces: relative weights of the five types (left-out types weigh 0). Equal by default:
    # the LoRA multi-hop recipe names the five types but not their mix.
    weights: str = "chain=1,retry=1,labels=1,verify=1,warmup=1"
    per_question: int = 2  # traces of distinct types per question (teacher mode: always 1)
    fallback: bool = True  # a type that cannot be built for a question makes way for the next drawn
    thinking_fraction: float = 0.5  # share of traces (and teacher episodes) in the thinking variant
    use_llm_query: bool = False  # synthetic: an llm_query turn per hop, answered by the given extractor
    # List llm_query among a trace's tools even when no turn calls it: `hopsmith eval` offers it with
    # its default extractor, and SFT should render the prompt inference renders.
    advertise_llm_query: bool = True
    teacher: str | None = None  # backend spec of a teacher model whose episodes become traces; None: synthetic
    teacher_options: dict | None = None  # the teacher spec's options as a table (hopsmith.backends.factory)
    f1_threshold: float = 0.65  # ASP String-F1 cut for teacher traces
    shard: int = 0  # this worker writes questions[shard::num_shards]
    num_shards: int = 1  # workers writing traces side by side
    seed: int = 0  # seeds the type order, the thinking variants and the poor queries of each question
    # The env of every trace (top_k, max_chars: keep them equal to eval's, so traces show what inference
    # shows) and the teacher's episodes; the teacher is `teacher`, its thinking drawn per question.
    agent: AgentConfig = field(default_factory=lambda: AgentConfig(extractor="none", few_shot=False,
                                                                   max_new_tokens=512),
                               metadata={"omit": ("model", "adapter", "thinking", "model_options",
                                                   "extractor_options")})

    def __post_init__(self):
        if self.teacher is not None and self.teacher.strip().lower() in ("", "none", "null"):
            object.__setattr__(self, "teacher", None)  # how a flag or TOML says "no teacher"
        if self.split not in ("train", "fit", "eval", "all"):
            raise ConfigError(f"TracesConfig.split must be train, fit, eval or all, got {self.split!r}")
        if self.split not in ("train", "fit") and not self.allow_eval_questions:
            raise ConfigError(f"TracesConfig.split={self.split!r} would train on eval questions; "
                              "use split=train, or set allow_eval_questions")
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"TracesConfig: shard {self.shard} is not in 0..{self.num_shards - 1}")
        if not 0.0 <= self.thinking_fraction <= 1.0:
            raise ConfigError(f"TracesConfig.thinking_fraction must be in [0, 1], got {self.thinking_fraction}")
        if self.per_question < 1:
            raise ConfigError(f"TracesConfig.per_question must be >= 1, got {self.per_question}")
        if self.agent.top_k < 1:
            raise ConfigError(f"TracesConfig.top_k must be >= 1, got {self.agent.top_k}")
        try:
            parse_weights(self.weights)
        except ValueError as exc:
            raise ConfigError(f"TracesConfig.{exc}") from None
        if self.agent.env not in ("multihop", "wikicode"):
            raise ConfigError(f"TracesConfig.env: traces are written for the multihop and wikicode environments, "
                              f"not {self.agent.env!r} (enterprise gold traces: hopsmith.envs.enterprise.gold_trace)")
        if self.agent.env == "wikicode" and self.teacher is not None:
            raise ConfigError("TracesConfig: a teacher writes multihop traces; wikicode traces are synthetic only "
                              "(drop --teacher or --env wikicode)")


class TracesRunError(RunDirError):
    """The run root holds traces of another configuration."""


def load_train_questions(cfg: TracesConfig):
    """The shard's questions and their pools (built as `hopsmith eval` builds them)."""
    return load_with_pools(cfg.data, split=None if cfg.split == "all" else cfg.split, limit=cfg.limit,
                           size=cfg.pool_size, seed=cfg.pool_seed, shard=cfg.shard, num_shards=cfg.num_shards)


def _paths(root: Path, i: int) -> dict[str, Path]:
    d = root / "traces"
    return {"shard": d / f"shard-{i}.jsonl", "summary": d / f"summary-{i}.json", "config": d / f"config-{i}.json",
            "rejected": d / f"rejected-{i}.jsonl", "partial": d / f".teacher-{i}.partial.jsonl"}


def _check_config(path: Path, cfg: TracesConfig) -> None:
    """A rerun into a root of another configuration is refused; a key a saved config lacks meant its default."""
    defaults = flat_config(to_dict(TracesConfig()))
    keys = [k for k in flat_config(to_dict(cfg)) if k not in _FREE_KEYS]
    try:
        refuse_other_config(path, cfg, keys, what="traces", added=defaults, normalize=_canonical_teacher)
    except RunDirError as exc:
        raise TracesRunError(str(exc)) from None


def _canonical_teacher(flat: dict) -> None:
    """The teacher's transport options (timeout, concurrency, ...) may change on a rerun."""
    flat["teacher"] = canonical(flat.get("teacher"), flat.get("teacher_options"))


@locked
def run(cfg: TracesConfig, root: str | Path, *, backend=None, extractor=None) -> dict:
    """Write shard `cfg.shard` of the traces under `root/traces/`; return its summary.

    `backend` is the teacher (built from `cfg.teacher` when not given); giving one turns on teacher mode.
    `extractor` answers llm_query: an `Extractor` or a function (question, text) -> str.
    """
    root = Path(root)
    paths = _paths(root, cfg.shard)
    _check_config(paths["config"], cfg)
    if paths["shard"].exists() and paths["summary"].exists():
        summary = json.loads(paths["summary"].read_text())
        return {**summary, "resumed": True}

    started = time.perf_counter()
    questions, pools = load_train_questions(cfg)
    teacher = backend is not None or cfg.teacher is not None
    written: list[bool] = []

    def write_config() -> None:  # once, with the first trace
        if not written:
            extra = {"backends": {"teacher": _describe(cfg, backend)}} if teacher else {}
            write_json(paths["config"], {**to_dict(cfg), **extra})
            written.append(True)

    if teacher:
        backend = _teacher_backend(cfg, backend)  # built and checked before anything is written
        summary = _run_teacher(cfg, questions, pools, paths, backend, extractor, write_config)
        summary["tools"] = _describe(cfg, backend)
    elif cfg.agent.env == "wikicode":
        summary = _run_code(cfg, questions, pools, paths, write_config)
    else:
        summary = _run_synthetic(cfg, questions, pools, paths, extractor, write_config)
    write_config()
    summary.update(shard=cfg.shard, num_shards=cfg.num_shards, questions=len(questions),
                   seconds=time.perf_counter() - started, config=to_dict(cfg),
                   files={k: str(v) for k, v in paths.items() if k in ("shard", "rejected") and v.exists()})
    # The summary is written last: a shard counts as complete only once both files exist.
    write_json(paths["summary"], summary)
    return {**summary, "resumed": False}


def _counts(traces: list[dict]) -> dict:
    return {
        "traces": len(traces),
        "by_type": dict(sorted(Counter(t.get("type", "?") for t in traces).items())),
        "by_variant": dict(sorted(Counter(t.get("variant", "?") for t in traces).items())),
        "by_dataset": dict(sorted(Counter(t.get("dataset", "?") for t in traces).items())),
    }


def _describe(cfg: TracesConfig, backend) -> dict:
    return describe(backend, cfg.teacher)


def _run_synthetic(cfg: TracesConfig, questions, pools, paths, extractor, write_config) -> dict:
    if cfg.use_llm_query and extractor is None:
        raise ConfigError("TracesConfig.use_llm_query needs an extractor: pass extractor= to stages.traces.run")
    traces, skips = generate(
        questions, pools, weights=cfg.weights, per_question=cfg.per_question, thinking_fraction=cfg.thinking_fraction,
        fallback=cfg.fallback, seed=cfg.seed, top_k=cfg.agent.top_k, max_chars=cfg.agent.max_chars,
        use_llm_query=cfg.use_llm_query, extractor=extractor, advertise_llm_query=cfg.advertise_llm_query)
    return _write_synthetic(questions, traces, skips, paths, write_config)


def _run_code(cfg: TracesConfig, questions, pools, paths, write_config) -> dict:
    """One code-as-action trace per question (`hopsmith.traces.code`), its programs run in the sandbox."""
    traces, skips = code_traces(questions, wikicode.make(cfg.agent, pools=pools))
    return _write_synthetic(questions, traces, skips, paths, write_config)


def _write_synthetic(questions, traces: list[dict], skips: list[dict], paths, write_config) -> dict:
    """Write the shard; the summary counts the traces and every skip by type and reason."""
    write_config()
    write_jsonl(paths["shard"], traces)
    by_type: dict[str, Counter] = {}
    for s in skips:
        by_type.setdefault(s["type"], Counter())[s["reason"]] += 1
    made = {t["question_id"] for t in traces}
    return {
        "mode": "synthetic",
        **_counts(traces),
        "skipped": {
            "count": len(skips),
            "by_type": {k: dict(v.most_common()) for k, v in sorted(by_type.items())},
            "questions_without_trace": sorted({q.id for q in questions} - made),
            "examples": skips[:20],
        },
    }


def _teacher_backend(cfg: TracesConfig, backend):
    """The teacher, built and checked (a remote one contacted) before anything is written."""
    if backend is not None:
        return backend
    teacher = replace(cfg.agent, model=cfg.teacher, model_options=cfg.teacher_options, adapter=None, extractor="none")
    return agent_backends(teacher, role="teacher")[0]


def teacher_trace(row: dict, question, *, thinking: bool, tools: list[dict], top_k: int, max_chars: int | None,
                  threshold: float) -> dict:
    """An agent-loop result row as a trace row, with the ASP verdict in `asp`."""
    retrieved = set(row.get("retrieved_ids") or [])
    variant = "think" if thinking else "plain"
    trace = {
        "id": f"{row['question_id']}:teacher:{variant}",
        "question_id": row["question_id"],
        "dataset": row.get("dataset"),
        "source": f"teacher:{row.get('model', '?')}",
        "type": "teacher",
        "variant": variant,
        "question": row.get("question"),
        "messages": row["messages"],
        "tools": tools,
        "answer": row.get("prediction"),
        "answers": list(row.get("answers") or []),
        "tool_calls": [{"name": c.get("name"), "arguments": c.get("arguments"), "valid": bool(c.get("valid"))}
                       for c in row.get("tool_calls") or []],
        "searched_supporting": [bool(ids & retrieved) for ids in hop_paragraph_ids(question)],
        "thinking": thinking,
        "tokens": row.get("tokens"),
        "seconds": row.get("seconds"),
        "env": {"top_k": top_k, "max_chars": max_chars},
        "stop": row.get("stop"),
    }
    kept, reasons = asp_filter(trace, threshold=threshold)
    trace["asp"] = {"kept": kept, "reasons": reasons}
    return trace


def _run_teacher(cfg: TracesConfig, questions, pools, paths, backend, extractor, write_config) -> dict:
    teacher = replace(cfg.agent, model=cfg.teacher or getattr(backend, "name", "?"))
    extractor = as_extractor(extractor)
    tools = tool_schemas(extractor is not None)
    by_id = {q.id: q for q in questions}
    done = {t["question_id"]: t for t in read_jsonl(paths["partial"], repair=True) if t.get("question_id") in by_id}
    todo = [q for q in questions if q.id not in done]
    # Each question's variant is drawn from the seed and its id alone, as for synthetic traces.
    thinks = {q.id: random.Random(f"{cfg.seed}:{q.id}:teacher").random() < cfg.thinking_fraction for q in questions}
    cache = IndexCache()
    with JsonlAppender(paths["partial"]) as out:
        for thinking in (False, True):
            group = [q for q in todo if thinks[q.id] == thinking]
            if not group:
                continue
            agent = replace(teacher, thinking=thinking)

            def finished(row, thinking=thinking):
                trace = teacher_trace(row, by_id[row["question_id"]], thinking=thinking, tools=tools,
                                      top_k=agent.top_k, max_chars=agent.max_chars, threshold=cfg.f1_threshold)
                write_config()
                out.append(trace)
                done[trace["question_id"]] = trace

            make_env = multihop.make(agent, pools=pools, extractor=extractor, index_cache=cache)
            run_episodes(group, make_env, backend, agent, on_done=finished)
    traces = [done[q.id] for q in questions if q.id in done]
    kept = [t for t in traces if t["asp"]["kept"]]
    rejected = [t for t in traces if not t["asp"]["kept"]]
    write_jsonl(paths["rejected"], rejected)
    write_jsonl(paths["shard"], kept)
    paths["partial"].unlink(missing_ok=True)
    reasons = Counter(r.split(":", 1)[0] for t in rejected for r in t["asp"]["reasons"])
    return {
        "mode": "teacher",
        "teacher": getattr(backend, "name", cfg.teacher),
        **_counts(kept),
        "skipped": {"count": 0, "by_type": {}, "questions_without_trace": sorted(set(by_id) - {t["question_id"] for t in kept})},
        "asp": {"episodes": len(traces), "kept": len(kept), "rejected": len(rejected),
                "reasons": dict(reasons.most_common()),
                "rejected_examples": [{"id": t["id"], "reasons": t["asp"]["reasons"]} for t in rejected[:20]]},
    }
