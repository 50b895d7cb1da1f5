"""Answer metrics, confidence intervals, run aggregation and the failure taxonomy.

Definitions:
- `exact_match` and `f1` follow SQuAD: lowercase, drop punctuation and the articles a/an/the, collapse
  whitespace; F1 is token overlap; yes/no/noanswer only score F1 when they match exactly. Both take the
  best over the gold answer and its aliases.
- `accuracy` is seed 000's: the normalised gold answer (or an alias) appears in the normalised prediction
  as a whole-token sequence. It flatters long answers, so EM and F1 are always reported beside it.
- Every rate comes with a 95% percentile bootstrap interval of the mean and its n.
- Failure taxonomy (seed 000), for each wrong answer, in this order:
  no_final_answer (turn cap or context overflow) > search_failure (not every supporting paragraph was
  retrieved and no retrieved text contains the answer: the facts never reached the model, never searching
  included) > extraction_failure (all supporting paragraphs retrieved, or some retrieved text contains the
  answer, and the answer is still wrong) > other (supporting paragraphs unknown and the answer absent).
- Ceiling (seed 000) = retrieval success x extraction success: with BM25 on gold sub-questions and the
  standalone extraction benchmark when given, otherwise estimated from the run itself.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_SPECIAL = {"yes", "no", "noanswer"}
FAILURE_KINDS = ("search_failure", "extraction_failure", "no_final_answer", "other")


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in (s or "").lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers if a is not None))


def _f1_one(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction), normalize_answer(answer)
    if (pred in _SPECIAL or gold in _SPECIAL) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: list[str]) -> float:
    return max((_f1_one(prediction, a) for a in answers if a is not None), default=0.0)


def contains_answer(text: str, answers: list[str]) -> bool:
    """A normalised answer occurs in the normalised text as whole tokens ("par" is not in "paris")."""
    hay = f" {normalize_answer(text)} "
    return any((g := normalize_answer(a)) and f" {g} " in hay for a in answers if a)


def accuracy(prediction: str, answers: list[str]) -> float:
    if not prediction or not normalize_answer(prediction):
        return 0.0
    return float(contains_answer(prediction, answers))


def score(prediction: str, answers: list[str]) -> dict:
    prediction = prediction or ""
    return {"acc": accuracy(prediction, answers), "em": exact_match(prediction, answers), "f1": f1(prediction, answers)}


# -- confidence intervals -----------------------------------------------------------------------

def bootstrap_ci(values, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def mean_ci(values, **kw) -> dict:
    x = [float(v) for v in values]
    lo, hi = bootstrap_ci(x, **kw)
    return {"mean": sum(x) / len(x) if x else math.nan, "lo": lo, "hi": hi, "n": len(x)}


# -- per-run aggregation ------------------------------------------------------------------------

def _row_score(row: dict) -> dict:
    if "metrics" in row:
        return row["metrics"]
    return score(row.get("prediction") or "", row.get("answers") or [])


def failure_kind(row: dict) -> str | None:
    """None for a correct row, else one of FAILURE_KINDS (rule in the module docstring)."""
    if _row_score(row)["acc"] >= 1.0:
        return None
    if not row.get("finished", row.get("prediction") is not None):
        return "no_final_answer"
    supporting = set(row.get("supporting_ids") or [])
    retrieved = set(row.get("retrieved_ids") or [])
    all_found = bool(supporting) and supporting <= retrieved
    has_answer = bool(row.get("retrieved_text_has_answer"))
    if all_found or has_answer:
        return "extraction_failure"
    if supporting:
        return "search_failure"
    return "other"


def _answer_block(rows: list[dict], n_boot: int, seed: int) -> dict:
    scores = [_row_score(r) for r in rows]
    return {k: mean_ci([s[k] for s in scores], n_boot=n_boot, seed=seed) for k in ("acc", "em", "f1")}


def _valid_calls(row: dict, name: str | None = None) -> int:
    return sum(1 for c in row.get("tool_calls") or [] if c.get("valid") and (name is None or c.get("name") == name))


def aggregate(rows: list[dict], *, extraction_accuracy: float | None = None, oracle_retrieval: float | None = None,
              n_boot: int = 1000, seed: int = 0) -> dict:
    """Every run-level metric of a list of result rows, JSON-serialisable."""
    if not rows:
        raise ValueError("no results to aggregate")
    n = len(rows)
    out: dict = {"n": n, **_answer_block(rows, n_boot, seed)}
    for key, field in (("by_hops", "hops"), ("by_dataset", "dataset")):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(str(r.get(field)), []).append(r)
        out[key] = {k: {"n": len(g), **_answer_block(g, n_boot, seed)} for k, g in sorted(groups.items())}

    calls = [c for r in rows for c in r.get("tool_calls") or []]
    out["avg_tool_calls"] = len(calls) / n
    out["avg_turns"] = sum(r.get("turns", 0) for r in rows) / n
    out["invalid_call_rate"] = sum(1 for c in calls if not c.get("valid")) / len(calls) if calls else 0.0
    out["answered_without_search_rate"] = sum(1 for r in rows if r.get("finished") and _valid_calls(r, "search") == 0) / n
    out["tool_use_rate"] = sum(1 for r in rows if _valid_calls(r) > 0) / n
    out["no_final_answer_rate"] = sum(1 for r in rows if not r.get("finished")) / n

    episode_s = np.array([float(r.get("seconds", 0.0)) for r in rows])
    per_tool: dict[str, list[float]] = {}
    for c in calls:
        if c.get("valid"):
            per_tool.setdefault(c.get("name") or "?", []).append(float(c.get("seconds", 0.0)))
    timed = [s for v in per_tool.values() for s in v]
    out["latency"] = {
        "episode_s": float(episode_s.mean()),
        "episode_p50_s": float(np.quantile(episode_s, 0.5)),
        "episode_p90_s": float(np.quantile(episode_s, 0.9)),
        "tool_call_s": sum(timed) / len(timed) if timed else None,
        "per_tool": {k: sum(v) / len(v) for k, v in sorted(per_tool.items())},
    }

    known = [r for r in rows if r.get("supporting_ids")]
    recalls = [len(set(r["supporting_ids"]) & set(r.get("retrieved_ids") or [])) / len(set(r["supporting_ids"])) for r in known]
    full = [r for r in known if set(r["supporting_ids"]) <= set(r.get("retrieved_ids") or [])]
    out["supporting_recall"] = sum(recalls) / len(recalls) if known else None
    out["retrieval_success"] = len(full) / len(known) if known else None

    kinds = [failure_kind(r) for r in rows]
    wrong = sum(1 for k in kinds if k is not None)
    out["failures"] = {k: kinds.count(k) for k in FAILURE_KINDS}
    out["failure_rates"] = {k: (kinds.count(k) / wrong if wrong else 0.0) for k in FAILURE_KINDS}

    retrieval, r_src = (oracle_retrieval, "oracle") if oracle_retrieval is not None else (out["retrieval_success"], "run")
    if extraction_accuracy is not None:
        extraction, e_src = extraction_accuracy, "benchmark"
    else:
        extraction = sum(_row_score(r)["acc"] for r in full) / len(full) if full else None
        e_src = "run"
    actual = out["acc"]["mean"]
    ceiling = retrieval * extraction if retrieval is not None and extraction is not None else None
    out["ceiling"] = {
        "retrieval": retrieval, "retrieval_source": r_src,
        "extraction": extraction, "extraction_source": e_src,
        "ceiling": ceiling, "actual": actual,
        "share_of_ceiling": actual / ceiling if ceiling else None,
    }
    return out


# -- presentation -------------------------------------------------------------------------------

def _pct(x) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}%"


def _ci_line(label: str, m: dict) -> str:
    return f"{label:<22}{_pct(m['mean'])}  [{_pct(m['lo']).strip():>6}, {_pct(m['hi']).strip():>6}]  n={m['n']}"


def format_table(metrics: dict) -> str:
    """The metrics as a compact terminal table (fits 80 columns)."""
    m = metrics
    lines = [_ci_line("accuracy", m["acc"]), _ci_line("exact match", m["em"]), _ci_line("F1", m["f1"])]
    for hops, block in m.get("by_hops", {}).items():
        lines.append(_ci_line(f"  {hops}-hop accuracy", block["acc"]) + f"  (EM {_pct(block['em']['mean']).strip()}, F1 {_pct(block['f1']['mean']).strip()})")
    if len(m.get("by_dataset", {})) > 1:
        for name, block in m["by_dataset"].items():
            lines.append(_ci_line(f"  {name} accuracy", block["acc"]))
    lines += [
        f"{'tool calls / episode':<22}{m['avg_tool_calls']:6.2f}   turns / episode {m['avg_turns']:.2f}",
        f"{'tool use':<22}{_pct(m['tool_use_rate'])}   invalid calls {_pct(m['invalid_call_rate']).strip()}",
        f"{'answered w/o search':<22}{_pct(m['answered_without_search_rate'])}   no final answer {_pct(m['no_final_answer_rate']).strip()}",
    ]
    lat = m["latency"]
    tool_s = "n/a" if lat["tool_call_s"] is None else f"{lat['tool_call_s']:.2f} s"
    lines.append(f"{'latency / episode':<22}{lat['episode_s']:6.1f} s (p90 {lat['episode_p90_s']:.1f} s)   / tool call {tool_s}")
    lines.append(f"{'supporting recall':<22}{_pct(m['supporting_recall'])}   all supporting found {_pct(m['retrieval_success']).strip()}")
    f = m["failures"]
    lines.append(f"{'failures':<22}search {f['search_failure']}, extraction {f['extraction_failure']}, "
                 f"no answer {f['no_final_answer']}, other {f['other']}")
    c = m["ceiling"]
    if c["ceiling"] is not None:
        lines.append(f"{'ceiling':<22}{_pct(c['ceiling'])} = retrieval {_pct(c['retrieval']).strip()} ({c['retrieval_source']})"
                     f" x extraction {_pct(c['extraction']).strip()} ({c['extraction_source']})")
    return "\n".join(lines)


def compare(base: dict, tuned: dict) -> dict:
    """Side-by-side numbers of two runs' metrics, with the change in each."""
    out = {}
    for key in ("acc", "em", "f1"):
        out[key] = {"base": base[key], "tuned": tuned[key], "delta": tuned[key]["mean"] - base[key]["mean"]}
    for key in ("avg_tool_calls", "avg_turns", "invalid_call_rate", "answered_without_search_rate", "tool_use_rate",
                "no_final_answer_rate", "supporting_recall"):
        b, t = base.get(key), tuned.get(key)
        out[key] = {"base": b, "tuned": t, "delta": (t - b) if b is not None and t is not None else None}
    out["failures"] = {"base": base["failures"], "tuned": tuned["failures"]}
    return out


def format_comparison(base: dict, tuned: dict, names: tuple[str, str] = ("base", "tuned")) -> str:
    c = compare(base, tuned)
    a, b = names
    lines = [f"{'':<22}{a:>22}{b:>22}{'change':>10}"]

    def ci(m):
        return f"{_pct(m['mean'])} [{_pct(m['lo']).strip()},{_pct(m['hi']).strip()}]"

    for key, label in (("acc", "accuracy"), ("em", "exact match"), ("f1", "F1")):
        lines.append(f"{label:<22}{ci(c[key]['base']):>22}{ci(c[key]['tuned']):>22}{100 * c[key]['delta']:>+9.1f}pt")
    for key, label in (("tool_use_rate", "tool use"), ("invalid_call_rate", "invalid calls"),
                       ("answered_without_search_rate", "answered w/o search"), ("no_final_answer_rate", "no final answer")):
        d = c[key]["delta"]
        lines.append(f"{label:<22}{_pct(c[key]['base']):>22}{_pct(c[key]['tuned']):>22}{'' if d is None else f'{100 * d:+9.1f}pt'}")
    lines.append(f"{'tool calls / episode':<22}{c['avg_tool_calls']['base']:>22.2f}{c['avg_tool_calls']['tuned']:>22.2f}")
    for kind in FAILURE_KINDS:
        lines.append(f"{'  ' + kind:<22}{c['failures']['base'][kind]:>22}{c['failures']['tuned'][kind]:>22}")
    return "\n".join(lines)
