"""Evaluate a search agent on a multi-hop question set.

    hopsmith eval --data musique --limit 20 --model embedded --out runs/base

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
"""
from __future__ import annotations

import time
from pathlib import Path

from hopsmith.config import EvalConfig, to_dict
from hopsmith.io import JsonlAppender, read_jsonl, write_json, write_jsonl
from hopsmith.leakage import LeakageError  # noqa: F401  (re-exported: callers catch evaluate.LeakageError)
from hopsmith.report import try_write_report
from hopsmith.runlock import locked

# Keys whose change makes earlier results incomparable; limit/batch size/bootstrap may change on resume.
_RESULT_KEYS = ("data", "split", "model", "adapter", "extractor", "corpus", "pool_size", "pool_seed", "max_turns",
                "max_new_tokens", "temperature", "thinking", "few_shot", "top_k", "max_chars", "one_call_per_turn", "max_context_tokens", "answer_at_cap", "seed", "allow_leakage",
                "drop_leakage", "search_failure_rate", "search_failure_seed", "tools_in_prompt")
# What a key means in a config.json written before the key existed.
_ADDED_KEYS = {"drop_leakage": False, "search_failure_rate": 0.0, "search_failure_seed": 0, "tools_in_prompt": False}


class RunDirError(ValueError):
    pass


def check_leakage(cfg: EvalConfig, questions, *, quiet: bool = False) -> tuple[list, dict | None]:
    """(questions to evaluate, leakage report): refuse eval questions that overlap the adapter's training
    data, or drop and count them (drop_leakage), or keep and report them (allow_leakage)."""
    import sys

    from hopsmith.data import BUNDLED
    from hopsmith.leakage import guard

    split = cfg.split if cfg.data in BUNDLED else None  # a file is evaluated whole
    kept, report = guard(questions, cfg.adapter, split=split, allow=cfg.allow_leakage, drop=cfg.drop_leakage)
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
    `hopsmith.data.pools.build_pools`), from every row of that side, as in seed 000's 400-paragraph pools."""
    from hopsmith.data import BUNDLED, DataError, load_questions
    from hopsmith.data.pools import build_pools, corpus_pools, load_corpus

    bundled = cfg.data in BUNDLED
    split = (None if cfg.split in (None, "all") else cfg.split) if bundled else None
    questions = load_questions(cfg.data, limit=cfg.limit, split=split)
    if cfg.corpus:
        pools = corpus_pools(questions, load_corpus(cfg.corpus))
    else:
        if not any(q.paragraphs for q in questions):
            raise DataError(f"{cfg.data}: its questions come without paragraphs (Bamboogle does); "
                            "give a corpus to search with --corpus FILE.jsonl")
        pools = build_pools(questions, size=cfg.pool_size, seed=cfg.pool_seed, others=load_questions(cfg.data))
    return questions, pools


def check_run_dir(root: Path, cfg: EvalConfig) -> None:
    saved_path = root / "config.json"
    if not saved_path.exists():
        if (root / "results.jsonl").exists():
            # An eval writes its config with its first result: results without one come from something else.
            raise RunDirError(f"{root} holds results.jsonl but no config.json, so its configuration is unknown; "
                              "use another --out (or move that file away)")
        return
    import json

    from hopsmith.backends.factory import canonical

    try:
        saved = {**_ADDED_KEYS, **json.loads(saved_path.read_text())}
    except (json.JSONDecodeError, TypeError) as exc:
        raise RunDirError(f"{saved_path} is not a run config ({exc}); move it away or use another --out") from None
    mine = to_dict(cfg)
    for d in (saved, mine):  # a spec's transport options (timeout, concurrency, ...) may change on a rerun
        for key in ("model", "extractor"):
            d[key] = canonical(d.get(key), d.get(f"{key}_options"))
    diff = [k for k in _RESULT_KEYS if saved.get(k) != mine.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in diff)
        raise RunDirError(f"{root} holds results of another configuration ({detail}); use another --out")


def make_backends(cfg: EvalConfig):
    """The agent and its extractor, as every eval builds them (`hopsmith.agent.backends.agent_backends`)."""
    from hopsmith.agent.backends import agent_backends

    return agent_backends(cfg, engine="hf")


def config_writer(root: Path, cfg: EvalConfig, backend, extractor):
    """A function that writes `config.json` (the config and the backends' description) once; called with the
    first result, so a run that fails before any result leaves no config behind."""
    from hopsmith.agent.backends import describe_backends

    written = []

    def write() -> None:
        if not written:
            write_json(root / "config.json", {**to_dict(cfg), "backends": describe_backends(cfg, backend, extractor)})
            written.append(True)
    return write


@locked
def run(cfg: EvalConfig, root: str | Path, *, backend=None, extractor=None, progress: bool = True) -> dict:
    """Evaluate, resume-safe; returns the metrics dict (also written to `root/metrics.json`)."""
    from hopsmith.agent.backends import describe_backends
    from hopsmith.tools.search import IndexCache

    root = Path(root)
    check_run_dir(root, cfg)
    questions, pools = load_eval_questions(cfg)
    questions, leakage = check_leakage(cfg, questions)
    if backend is None:
        backend, extractor = make_backends(cfg)
    write_config = config_writer(root, cfg, backend, extractor)

    started = time.perf_counter()
    cache = IndexCache()
    rows = _episodes(cfg, questions, pools, backend, extractor, root / "results.jsonl", cache, progress,
                     on_first=write_config)
    write_config()
    extraction_rows = None
    if cfg.extraction_bench and extractor is not None:
        extraction_rows = _extraction(root, questions, extractor)
    metrics = _metrics(cfg, questions, pools, rows, extraction_rows, cache)
    metrics["model"] = getattr(backend, "name", cfg.model)
    metrics["wall_seconds_this_run"] = time.perf_counter() - started
    metrics["leakage"] = leakage
    metrics["backends"] = describe_backends(cfg, backend, extractor)
    write_json(root / "metrics.json", metrics)
    try_write_report([root])
    return metrics


def _episodes(cfg: EvalConfig, questions, pools, backend, extractor, results_path: Path, cache, progress: bool,
              on_first=None):
    """Run the episodes not yet in `results_path` (appending each as it ends); all rows, in question order.
    `on_first()` runs before the first row is written (the run's config goes with its first result)."""
    from hopsmith.agent.loop import run_episodes
    from hopsmith.metrics import failure_kind

    done = {r["question_id"]: r for r in read_jsonl(results_path, repair=True)}
    todo = [q for q in questions if q.id not in done]
    bar = _progress(len(questions), len(questions) - len(todo), progress)
    with JsonlAppender(results_path) as out:
        def finished(row):
            row["failure"] = failure_kind(row)
            if on_first is not None:
                on_first()
            out.append(row)
            done[row["question_id"]] = row
            bar.update(1)

        run_episodes(todo, pools, backend, cfg.agent(), extractor=extractor, index_cache=cache,
                     batch_size=cfg.batch_size, on_done=finished)
    bar.close()
    return [done[q.id] for q in questions if q.id in done]


def prompt_setup(cfg: EvalConfig) -> dict:
    """What a comparison must show beside the numbers: how the run prompted the model (`metrics["setup"]`)."""
    return {"few_shot": cfg.few_shot, "thinking": cfg.thinking, "max_turns": cfg.max_turns,
            "temperature": cfg.temperature, "split": cfg.split, "limit": cfg.limit}


def _metrics(cfg: EvalConfig, questions, pools, rows, extraction_rows, cache=None) -> dict:
    """Everything `metrics.json` holds that depends on the results alone (no timing of this process)."""
    from hopsmith.ceiling import oracle_retrieval
    from hopsmith.metrics import aggregate, answer_summary

    oracle = oracle_retrieval(questions, pools, k=cfg.top_k, cache=cache)
    extraction = None
    if extraction_rows:
        extraction = answer_summary([r["metrics"] for r in extraction_rows], n_boot=cfg.bootstrap, seed=cfg.seed)
    types = {q.id: q.type for q in questions}
    for r in rows:  # rows written before result rows carried the question type
        r.setdefault("type", types.get(r["question_id"]))
    metrics = aggregate(rows, extraction_accuracy=extraction["acc"]["mean"] if extraction else None,
                        oracle_retrieval=oracle["rate"], n_boot=cfg.bootstrap, seed=cfg.seed)
    metrics["oracle_retrieval"] = oracle
    metrics["extraction_benchmark"] = extraction
    metrics["model"] = cfg.model if not cfg.adapter else f"{cfg.model}+{cfg.adapter}"
    metrics["data"] = cfg.data
    metrics["setup"] = prompt_setup(cfg)
    metrics["questions_not_in_results"] = sorted({q.id for q in questions} - {r["question_id"] for r in rows})
    metrics["search_failure_rate"] = cfg.search_failure_rate  # noisy retrieval: the share of searches set to fail
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
    from hopsmith.config import ConfigError

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
        backend, extractor = make_backends(cfg)
    write_config = config_writer(root, cfg, backend, extractor)
    started = time.perf_counter()
    partial = final.with_name(f".shard-{shard}.partial.jsonl")
    rows = _episodes(cfg, mine, pools, backend, extractor, partial, None, progress, on_first=write_config)
    write_config()
    if cfg.extraction_bench and extractor is not None:
        from hopsmith.ceiling import extraction_benchmark, extraction_items

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
    from hopsmith.ceiling import extraction_benchmark, extraction_items

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
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="episodes", unit="q")
