"""Judge traces before SFT: rules on every trace, then (given a judge model) an LLM judge; keep the good.

    hopsmith judge --root runs/demo                                          rules only
    hopsmith judge --root runs/demo --judge SPEC --min-score 0.7             rules, then the LLM judge
    hopsmith judge --root runs/demo --judge SPEC --shard 0 --num-shards 4    one of four workers

Reads `root/traces/shard-*.jsonl` (or the `--traces` glob). Writes under `root`:
- `judged/<shard name>`: every trace of the shard with a `judge` field {rules, llm, score, verdict,
  reasons, judge_model}; written whole and renamed into place, so a file that exists is complete and a
  rerun skips it (the LLM calls are the expensive part; rules and the keep decision are recomputed, so a
  new `min_score` needs no new judge calls).
- `kept.jsonl`: the traces that pass: rules passed (when `require_rules`) and, with a judge, verdict
  "pass" and score >= `min_score`. A `judge_error` is never kept.
- `judge_summary.json`: counts, failures per rule, kept rate per source, LLM scores, and how well the
  rules and the judge agree (Cohen's kappa), and `judge_config.json`.
With several workers, each writes `kept.jsonl` and the summary from every judged shard present when it
finishes, so the last one to finish leaves the complete files (`shards.complete` says whether they are).
A root judged by one judge model is refused to another rather than mixed.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from hopsmith.backends.factory import canonical
from hopsmith.backends.factory import describe as describe_backend
from hopsmith.config import ConfigError, flat_knobs, to_dict
from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.judge import (DIMENSIONS, RULES, KeepRules, LLMJudge, agreement, judge_backend, judge_field,
                            judge_traces)
from hopsmith.runlock import locked


@flat_knobs
@dataclass(frozen=True)
class JudgeConfig:
    """`hopsmith judge`: filter traces with rules and an LLM judge."""

    traces: str | None = None  # glob of trace shards; None: <root>/traces/shard-*.jsonl
    judge: str | None = None  # backend spec of the judge model; None: rules only
    judge_options: dict | None = None  # the judge spec's options as a table (hopsmith.backends.factory)
    retries: int = 2  # asks again when a judge reply does not parse, then records judge_error
    max_new_tokens: int = 300  # tokens of each judge reply
    temperature: float = 0.0  # the judge's sampling temperature
    max_result_chars: int = 600  # of each tool result shown to the judge
    shard: int = 0  # this worker takes the input shards whose position % num_shards == shard
    num_shards: int = 1  # workers judging side by side
    seed: int = 0  # recorded with the run; the stage draws no random numbers itself
    keep: KeepRules = field(default_factory=KeepRules)

    def __post_init__(self):
        if self.judge is not None and self.judge.strip().lower() in ("", "none", "null"):
            # A flag or TOML string cannot spell None; "none" is how they say "rules only".
            object.__setattr__(self, "judge", None)
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ConfigError(f"JudgeConfig: shard {self.shard} is not in 0..{self.num_shards - 1}")


class JudgeRunError(ValueError):
    pass


def _input_shards(cfg: JudgeConfig, root: Path) -> list[Path]:
    pattern = cfg.traces or str(root / "traces" / "shard-*.jsonl")

    def order(p: Path):
        # shard-10 after shard-9: numeric where the suffix is a number.
        suffix = p.stem.rsplit("-", 1)[-1]
        return (0, int(suffix), p.name) if suffix.isdigit() else (1, 0, p.name)

    shards = sorted((Path(p) for p in glob.glob(pattern)), key=order)
    names = [p.name for p in shards]
    if len(set(names)) != len(names):
        raise JudgeRunError(f"{pattern} matches two shards with the same file name; judged/ keys on the name")
    return shards


def _ids(rows: list[dict]) -> list:
    return [r.get("id") for r in rows]


@locked
def run(cfg: JudgeConfig, root: str | Path, *, backend=None) -> dict:
    """Judge this worker's shards (skipping complete ones), then gather kept.jsonl and the summary."""
    root = Path(root)
    shards = _input_shards(cfg, root)
    if not shards:
        raise JudgeRunError(f"no trace shards match {cfg.traces or root / 'traces' / 'shard-*.jsonl'}")
    if backend is None and cfg.judge:
        backend = judge_backend(cfg.judge, cfg.judge_options)
    judge = None
    judge_model = None
    if backend is not None:
        judge = LLMJudge(backend, retries=cfg.retries, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, max_result_chars=cfg.max_result_chars)
        # The spec without its transport options: a rerun with another timeout reuses the replies.
        judge_model = canonical(cfg.judge, cfg.judge_options) if cfg.judge else judge.name
    out_dir = root / "judged"
    _refuse_other_judge(out_dir, shards, judge_model)

    def write_config() -> None:  # with the first judged shard: a run that judged nothing leaves no config
        backends = {"judge": describe_backend(backend, cfg.judge)} if backend is not None else {}
        write_json(root / "judge_config.json", {**to_dict(cfg), "judge_model": judge_model, "backends": backends})

    mine = [p for k, p in enumerate(shards) if k % cfg.num_shards == cfg.shard]
    judged_now, skipped, rejudged = [], [], []
    for path in mine:
        traces = read_jsonl(path)
        out = out_dir / path.name
        saved = read_jsonl(out) if out.exists() else None
        if saved is not None and _ids(saved) == _ids(traces) and _saved_model(saved) == judge_model:
            skipped.append(path.name)
            continue
        if saved is not None:
            # Input shard regenerated, or judged by rules only and now a judge is given.
            rejudged.append(path.name)
        judged = judge_traces(traces, cfg.keep, judge, judge_model)
        if not judged_now:
            write_config()
        write_jsonl(out, judged)
        judged_now.append(path.name)

    rows, missing = _gather(cfg, shards, out_dir, {p.name for p in mine})
    kept = [r for r in rows if r["judge"]["verdict"] == "pass"]
    write_config()
    write_jsonl(root / "kept.jsonl", kept)
    summary = _summary(rows, kept, cfg, judge_model)
    summary["shards"] = {"total": len(shards), "judged_now": judged_now, "skipped": skipped, "rejudged": rejudged,
                         "missing": missing, "complete": not missing}
    write_json(root / "judge_summary.json", summary)
    return summary


def _gather(cfg: JudgeConfig, shards: list[Path], out_dir: Path, mine: set[str]) -> tuple[list[dict], list[str]]:
    """Every complete judged shard, this worker's and the others' (rows, names of the shards not judged yet).
    Rules and the decision are recomputed (cheap, and the current rule limits and min_score apply); the judge
    replies are reused."""
    rows, missing = [], []
    for path in shards:
        out = out_dir / path.name
        if not out.exists():
            missing.append(path.name)
            continue
        saved = read_jsonl(out)
        fresh = [_redecide(r, cfg) for r in saved]
        if path.name in mine and fresh != saved:
            write_jsonl(out, fresh)
        rows += fresh
    return rows, missing


def _saved_model(rows: list[dict]) -> str | None:
    return rows[0].get("judge", {}).get("judge_model") if rows else None


def _refuse_other_judge(out_dir: Path, shards: list[Path], judge_model: str | None) -> None:
    for path in shards:
        out = out_dir / path.name
        if not out.exists():
            continue
        saved = _saved_model(read_jsonl(out))
        # Rules-only shards may be upgraded by a judge; a judge's replies are never silently replaced.
        if saved is not None and saved != judge_model:
            raise JudgeRunError(f"{out} was judged by {saved!r}, this run's judge is {judge_model!r}; "
                                f"use another root or remove {out_dir} to judge again")


def _redecide(row: dict, cfg: JudgeConfig) -> dict:
    old = row["judge"]
    trace = {k: v for k, v in row.items() if k != "judge"}
    return {**trace, "judge": judge_field(trace, cfg.keep, old.get("llm"), old.get("judge_model"))}


def _rate(a: int, b: int) -> float | None:
    return a / b if b else None


def _summary(rows: list[dict], kept: list[dict], cfg: JudgeConfig, judge_model: str | None) -> dict:
    verdicts = {v: sum(1 for r in rows if r["judge"]["verdict"] == v) for v in ("pass", "fail", "judge_error")}
    rule_failures = {name: sum(1 for r in rows if name in r["judge"]["rules"]["failed"]) for name in RULES}
    by_source: dict[str, dict] = {}
    for r in rows:
        s = by_source.setdefault(str(r.get("source", "unknown")), {"n": 0, "kept": 0})
        s["n"] += 1
        s["kept"] += r["judge"]["verdict"] == "pass"
    for s in by_source.values():
        s["kept_rate"] = _rate(s["kept"], s["n"])
    summary = {
        "traces": len(rows),
        "kept": len(kept),
        "kept_rate": _rate(len(kept), len(rows)),
        "verdicts": verdicts,
        "rules_passed": sum(1 for r in rows if r["judge"]["rules"]["passed"]),
        "rule_failures": rule_failures,
        "by_source": dict(sorted(by_source.items())),
        "judge_model": judge_model,
        "min_score": cfg.keep.min_score,
        "require_rules": cfg.keep.require_rules,
        "llm": None,
        "agreement": None,
    }
    llm = [r["judge"]["llm"] for r in rows]
    if judge_model is not None:
        scored = [j for j in llm if j is not None and j.get("verdict") != "judge_error"]
        summary["llm"] = {
            "judged": sum(1 for j in llm if j is not None),
            "pass": sum(1 for j in scored if j["verdict"] == "pass"),
            "fail": sum(1 for j in scored if j["verdict"] == "fail"),
            "judge_error": sum(1 for j in llm if j is not None and j.get("verdict") == "judge_error"),
            "mean_score": _rate(sum(j["score"] for j in scored), len(scored)),
            "mean": {d: _rate(sum(j[d] for j in scored), len(scored)) for d in DIMENSIONS},
        }
        summary["agreement"] = agreement([r["judge"]["rules"] for r in rows], llm, min_score=cfg.keep.min_score)
    return summary


# -- command line ---------------------------------------------------------------------------------

def describe(s: dict, root) -> str:
    """The judge summary as a few lines for the terminal."""
    lines = [f"kept {s['kept']}/{s['traces']} traces; verdicts {s['verdicts']}",
             "rule failures: " + ", ".join(f"{k} {v}" for k, v in s["rule_failures"].items())]
    if s["agreement"]:
        a = s["agreement"]
        lines.append(f"rules vs judge: agreement {a['agreement']}, kappa {a['kappa']} (n={a['n']}, "
                     f"judge errors {a['judge_errors']})")
    lines.append(f"wrote {root}/kept.jsonl, {root}/judge_summary.json"
                 + ("" if s["shards"]["complete"] else f" (shards still missing: {', '.join(s['shards']['missing'])})"))
    return "\n".join(lines)
