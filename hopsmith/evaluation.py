"""Evaluating an agent into a run directory: what `hopsmith eval` (stages/evaluate.py), the matrix's cells
and the cloud's eval shards share. The stage's docstring says what the run directory holds.

    metrics = run(EvalConfig(limit=4, agent=AgentConfig(max_turns=3)), "runs/base")
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from hopsmith.agent.backends import agent_backends, describe_backends
from hopsmith.agent.loop import run_episodes
from hopsmith.backends.factory import canonical, make_backend
from hopsmith.ceiling import extraction_benchmark, extraction_items, oracle_retrieval
from hopsmith.config import ConfigError, EvalConfig, RunDirError, refuse_other_config, to_dict
from hopsmith.data import BUNDLED, load_with_pools
from hopsmith.enterprise_judge import EpisodeJudge
from hopsmith.envs import get_env
from hopsmith.io import JsonlAppender, read_jsonl, write_json, write_jsonl
from hopsmith.leakage import guard
from hopsmith.metrics import aggregate, answer_summary, failure_kind, format_table
from hopsmith.report import try_write_report
from hopsmith.tools.search import IndexCache
from hopsmith.runlock import locked
from tqdm.auto import tqdm

# Keys whose change makes earlier results incomparable; limit/batch size/bootstrap may change on resume.
RESULT_KEYS = ("data", "split", "model", "adapter", "extractor", "env", "corpus", "pool_size", "pool_seed",
               "max_turns", "max_new_tokens", "temperature", "thinking", "few_shot", "top_k", "max_chars",
               "one_call_per_turn", "max_context_tokens", "answer_at_cap", "seed", "allow_leakage", "drop_leakage",
               "search_failure_rate", "search_failure_seed", "tools_in_prompt")
# What a key means in a config.json written before the key existed.
_ADDED_KEYS = {"drop_leakage": False, "search_failure_rate": 0.0, "search_failure_seed": 0, "env": "multihop",
               "tools_in_prompt": False}
# The environments whose episodes an LLM judge scores here (multi-hop traces are judged by `hopsmith judge`).
EPISODE_JUDGES = {"enterprise": EpisodeJudge}


def check_leakage(cfg: EvalConfig, questions, *, quiet: bool = False) -> tuple[list, dict | None]:
    """(questions to evaluate, leakage report): refuse eval questions that overlap the adapter's training
    data, or drop and count them (drop_leakage), or keep and report them (allow_leakage)."""
    split = cfg.split if cfg.data in BUNDLED else None  # a file is evaluated whole
    kept, report = guard(questions, cfg.agent.adapter, split=split, allow=cfg.allow_leakage, drop=cfg.drop_leakage)
    if report and report["message"] and not quiet:
        message = report["message"]
        if report["dropped"]:
            print(f"note: {message}; left out of this eval ({len(kept)} questions remain)", file=sys.stderr)
        elif split == "train":  # mining the policy's own behaviour on its training questions: expected
            print(f"note: {message}; expected on the {split} split, these results are not a held-out eval",
                  file=sys.stderr)
        else:
            print(f"WARNING: LEAKAGE: {message}; these results overstate the adapter", file=sys.stderr)
    return kept, report


def load_eval_questions(cfg: EvalConfig):
    """The questions to evaluate and every question's pool.

    Pools draw distractors from the evaluated questions' own side of the split only (see
    `hopsmith.data.pools.build_pools`), from every row of that side, as in the LoRA multi-hop recipe's
    400-paragraph pools."""
    split = (None if cfg.split in (None, "all") else cfg.split) if cfg.data in BUNDLED else None
    return load_with_pools(cfg.data, split=split, limit=cfg.limit, size=cfg.pool_size, seed=cfg.pool_seed,
                           corpus=cfg.corpus)


def check_run_dir(root: Path, cfg: EvalConfig) -> None:
    refuse_other_config(root / "config.json", cfg, RESULT_KEYS, what="results", added=_ADDED_KEYS,
                        normalize=canonical_specs)


def canonical_specs(flat: dict) -> None:
    """A spec's transport options (timeout, concurrency, ...) may change on a rerun: compare specs without them.
    `few_shot` compares as what it resolves to (None: the example for a base model only), so a run written
    with an explicit value resumes under the default that means the same."""
    for key in ("model", "extractor"):
        flat[key] = canonical(flat.get(key), flat.get(f"{key}_options"))
    if "few_shot" in flat and flat["few_shot"] is None:
        flat["few_shot"] = not flat.get("adapter")


def config_writer(root: Path, cfg: EvalConfig, backend, extractor):
    """A function that writes `config.json` (the config and the backends' description) once; called with the
    first result, so a run that fails before any result leaves no config behind."""
    written = []

    def write() -> None:
        if not written:
            write_json(root / "config.json", {**to_dict(cfg), "backends": describe_backends(cfg.agent, backend, extractor)})
            written.append(True)
    return write


@locked
def run(cfg: EvalConfig, root: str | Path, *, backend=None, extractor=None, progress: bool = True) -> dict:
    """Evaluate, resume-safe; returns the metrics dict (also written to `root/metrics.json`)."""
    root = Path(root)
    check_run_dir(root, cfg)
    if get_env(cfg.agent.env).load is not None:
        return _run_items(cfg, root, backend, progress)
    questions, pools = load_eval_questions(cfg)
    questions, leakage = check_leakage(cfg, questions)
    if cfg.judge:
        raise ConfigError(f"--judge scores episodes of {', '.join(EPISODE_JUDGES)}; multi-hop traces are judged by "
                          "`hopsmith judge`")
    if backend is None:
        backend, extractor = agent_backends(cfg.agent)
    write_config = config_writer(root, cfg, backend, extractor)

    started = time.perf_counter()
    cache = IndexCache()
    rows = _episodes(cfg, questions, backend, root / "results.jsonl", progress, on_first=write_config,
                     pools=pools, extractor=extractor, index_cache=cache)
    write_config()
    extraction_rows = None
    if cfg.extraction_bench and extractor is not None:
        extraction_rows = _extraction(root, questions, extractor)
    metrics = _metrics(cfg, questions, pools, rows, extraction_rows, cache)
    metrics["model"] = getattr(backend, "name", cfg.agent.model)
    metrics["wall_seconds_this_run"] = time.perf_counter() - started
    metrics["leakage"] = leakage
    metrics["backends"] = describe_backends(cfg.agent, backend, extractor)
    write_json(root / "metrics.json", metrics)
    try_write_report([root])
    return metrics


def _run_items(cfg: EvalConfig, root: Path, backend, progress: bool) -> dict:
    """An environment with its own items (enterprise cases): episodes, an optional judge, its scores (its own
    tables, or `hopsmith.metrics.aggregate` when the rows are scored as answers)."""
    spec = get_env(cfg.agent.env)
    judge_cls = EPISODE_JUDGES.get(cfg.agent.env) if cfg.judge else None
    if cfg.judge and judge_cls is None:
        raise ConfigError(f"--judge scores episodes of {', '.join(EPISODE_JUDGES)}, not {cfg.agent.env}")
    items = spec.load(cfg.data, cfg.limit)
    if backend is None:
        backend, _ = agent_backends(cfg.agent)
    write_config = config_writer(root, cfg, backend, None)
    rows = _episodes(cfg, items, backend, root / "results.jsonl", progress, on_first=write_config, seed=cfg.seed)
    write_config()
    if judge_cls is not None:
        todo = [r for r in rows if "judge" not in r]
        for row, verdict in zip(todo, judge_cls(make_backend(cfg.judge)).judge_many(todo)):
            row["judge"] = verdict
        write_jsonl(root / "results.jsonl", rows)
    summarize = spec.summarize or aggregate
    metrics = summarize(rows, n_boot=cfg.bootstrap, seed=cfg.seed)
    metrics["config"] = to_dict(cfg)
    write_json(root / "metrics.json", metrics)
    return metrics


def describe(cfg: EvalConfig, metrics: dict) -> str:
    """The metrics as the table `hopsmith eval` prints."""
    return (get_env(cfg.agent.env).describe or format_table)(metrics)


def _episodes(cfg: EvalConfig, items, backend, results_path: Path, progress: bool, on_first=None, **context):
    """Run the episodes not yet in `results_path` (appending each as it ends); all rows, in item order.
    `on_first()` runs before the first row is written (the run's config goes with its first result)."""
    spec = get_env(cfg.agent.env)
    key = spec.id_key
    done = {r[key]: r for r in read_jsonl(results_path, repair=True)}
    todo = [q for q in items if q.id not in done]
    bar = _progress(len(items), len(items) - len(todo), progress)
    with JsonlAppender(results_path) as out:
        def finished(row):
            if key == "question_id":
                row["failure"] = failure_kind(row)
            if on_first is not None:
                on_first()
            out.append(row)
            done[row[key]] = row
            bar.update(1)

        run_episodes(todo, spec.make(cfg.agent, **context), backend, cfg.agent, on_done=finished)
    bar.close()
    return [done[q.id] for q in items if q.id in done]


def prompt_setup(cfg: EvalConfig) -> dict:
    """What a comparison must show beside the numbers: how the run prompted the model (`metrics["setup"]`)."""
    a = cfg.agent
    return {"few_shot": a.shows_example, "thinking": a.thinking, "max_turns": a.max_turns, "temperature": a.temperature,
            "split": cfg.split, "limit": cfg.limit}


def _metrics(cfg: EvalConfig, questions, pools, rows, extraction_rows, cache=None) -> dict:
    """Everything `metrics.json` holds that depends on the results alone (no timing of this process)."""
    oracle = oracle_retrieval(questions, pools, k=cfg.agent.top_k, cache=cache)
    extraction = None
    if extraction_rows:
        extraction = answer_summary([r["metrics"] for r in extraction_rows], n_boot=cfg.bootstrap, seed=cfg.seed)
    types = {q.id: q.type for q in questions}
    for r in rows:  # rows written before result rows carried the question type
        r.setdefault("type", types.get(r["question_id"]))
    summarize = get_env(cfg.agent.env).summarize or aggregate  # an environment may add its own metrics
    metrics = summarize(rows, extraction_accuracy=extraction["acc"]["mean"] if extraction else None,
                        oracle_retrieval=oracle["rate"], n_boot=cfg.bootstrap, seed=cfg.seed)
    metrics["oracle_retrieval"] = oracle
    metrics["extraction_benchmark"] = extraction
    metrics["model"] = cfg.agent.model if not cfg.agent.adapter else f"{cfg.agent.model}+{cfg.agent.adapter}"
    metrics["data"] = cfg.data
    metrics["setup"] = prompt_setup(cfg)
    metrics["questions_not_in_results"] = sorted({q.id for q in questions} - {r["question_id"] for r in rows})
    metrics["search_failure_rate"] = cfg.agent.search_failure_rate  # noisy retrieval: the share of searches set to fail
    metrics["search_failures"] = sum(int(r.get("search_failures") or 0) for r in rows)
    return metrics


# -- sharded evaluation: the cloud runs one shard per container and merges -----------------------------

def shard_path(root: Path, shard: int) -> Path:
    return Path(root) / "results" / f"shard-{shard}.jsonl"


def run_shard(cfg: EvalConfig, root: str | Path, shard: int, num_shards: int, *, backend=None, extractor=None,
              progress: bool = False) -> dict:
    """Evaluate questions[shard::num_shards] into `root/results/shard-<shard>.jsonl`.

    Episodes are appended to `results/.shard-<i>.partial.jsonl` as they end (a retried shard resumes
    there), and the file is renamed to its final name only when every question of the shard is in it:
    a shard file that exists is complete, and a rerun returns at once. The extraction benchmark of the
    shard's questions goes to `extraction/shard-<i>.jsonl` the same way."""
    if get_env(cfg.agent.env).load is not None:
        raise ConfigError(f"sharded eval runs question sets; run --env {cfg.agent.env} in one process")
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ConfigError(f"eval shard {shard} is not in 0..{num_shards - 1}")
    root = Path(root)
    final = shard_path(root, shard)
    if final.exists():
        return {"shard": shard, "questions": len(read_jsonl(final)), "resumed": True}
    check_run_dir(root, cfg)
    questions, pools = load_eval_questions(cfg)
    questions, _ = check_leakage(cfg, questions)  # before sharding, so every shard drops the same questions
    mine = questions[shard::num_shards]
    if backend is None:
        backend, extractor = agent_backends(cfg.agent)
    write_config = config_writer(root, cfg, backend, extractor)
    started = time.perf_counter()
    partial = final.with_name(f".shard-{shard}.partial.jsonl")
    rows = _episodes(cfg, mine, backend, partial, progress, on_first=write_config, pools=pools, extractor=extractor)
    write_config()
    if cfg.extraction_bench and extractor is not None:
        ex_path = root / "extraction" / f"shard-{shard}.jsonl"
        if not ex_path.exists() and extraction_items(mine):
            write_jsonl(ex_path, extraction_benchmark(mine, extractor, n_boot=10, seed=cfg.seed)["rows"])
    if len(rows) != len(mine):
        raise RuntimeError(f"eval shard {shard}: {len(mine) - len(rows)} questions have no result; rerun to resume")
    write_jsonl(final, rows)  # whole file under a temp name, then renamed
    partial.unlink(missing_ok=True)
    tokens = sum(r["tokens"]["prompt"] + r["tokens"]["completion"] for r in rows)
    return {"shard": shard, "questions": len(rows), "resumed": False, "seconds": time.perf_counter() - started,
            "tokens": tokens, "completion_tokens": sum(r["tokens"]["completion"] for r in rows)}


def merge(cfg: EvalConfig, root: str | Path, num_shards: int) -> dict:
    """Join the shard files into `results.jsonl` and `metrics.json` (the same metrics a single run gives).

    A missing shard is an error naming it. A question found twice (a shard run twice by a retry that
    raced its first attempt) is kept once; the count of dropped copies is in `duplicates_dropped`."""
    root = Path(root)
    missing = [i for i in range(num_shards) if not shard_path(root, i).exists()]
    if missing:
        raise RunDirError(f"{root}: eval shards {missing} of {num_shards} are not complete; run them before merging")
    questions, pools = load_eval_questions(cfg)
    questions, leakage = check_leakage(cfg, questions, quiet=True)  # the shards already said it
    by_id: dict[str, dict] = {}
    dropped = 0
    for i in range(num_shards):
        for row in read_jsonl(shard_path(root, i)):
            if row["question_id"] in by_id:
                dropped += 1
            else:
                by_id[row["question_id"]] = row
    rows = [by_id[q.id] for q in questions if q.id in by_id]
    extraction_rows = []
    for i in range(num_shards):
        extraction_rows += read_jsonl(root / "extraction" / f"shard-{i}.jsonl")
    order = {q.id: k for k, q in enumerate(questions)}
    extraction_rows.sort(key=lambda r: (order.get(r["question_id"], len(order)), r["hop"]))
    write_jsonl(root / "results.jsonl", rows)
    if extraction_rows:
        write_jsonl(root / "extraction.jsonl", extraction_rows)
    metrics = _metrics(cfg, questions, pools, rows, extraction_rows)
    metrics["shards"] = num_shards
    metrics["duplicates_dropped"] = dropped
    metrics["leakage"] = leakage
    write_json(root / "metrics.json", metrics)
    try_write_report([root])
    return metrics


def _extraction(root: Path, questions, extractor) -> list[dict] | None:
    """The extraction benchmark's rows, from `extraction.jsonl` when it holds every item, else run now."""
    path = root / "extraction.jsonl"
    keys = {(it["question_id"], it["hop"]) for it in extraction_items(questions)}
    if not keys:
        return None
    saved = read_jsonl(path, repair=True)
    if {(r["question_id"], r["hop"]) for r in saved} == keys:
        return saved
    # Only the rows are kept: `_metrics` summarises them once, with the run's bootstrap settings.
    rows = extraction_benchmark(questions, extractor, n_boot=10, seed=0)["rows"]
    write_jsonl(path, rows)
    return rows


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=initial, desc="episodes", unit="q")
