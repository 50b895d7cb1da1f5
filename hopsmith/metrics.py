"""Answer metrics, confidence intervals, run aggregation and the failure taxonomy.

Everything hopsmith reports about a run is computed here, so that every stage (evaluation, the ceiling
benchmark, the training ladder) scores answers the same way. Pure Python and numpy.

Definitions followed:
- `normalize_answer` is SQuAD's: lowercase, drop ASCII punctuation, drop the articles a/an/the,
  collapse whitespace.
- `exact_match` and `f1` are SQuAD's, taking the best over the gold answer and its aliases. `f1` adds the
  special case of HotpotQA's official script: when either normalised side is yes/no/noanswer and the two
  differ, F1 is 0 (otherwise "yes it is" would earn partial credit against "yes"). Gold strings that
  normalise to nothing (e.g. "The") are ignored, so an empty or missing prediction never scores.
- `accuracy` is the seed write-up's: 1 when the normalised gold answer (or an alias) occurs in the
  normalised prediction as a whole-token sequence ("paris" is in "it is paris france", "par" is not).
  It flatters long answers, so EM and F1 are always reported beside it.
- Every rate in `aggregate` comes with a 95% percentile-bootstrap interval of the mean and its n.
- The failure taxonomy and the ceiling are the seed write-up's; see `failure_kind` and `aggregate`.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_YES_NO = frozenset({"yes", "no", "noanswer"})
FAILURE_KINDS = ("search_failure", "extraction_failure", "no_final_answer", "other")
ANSWER_METRICS = ("acc", "em", "f1")

# Bootstrap resamples are drawn in blocks of at most this many indices, so a large run (say 10k
# questions x 1000 resamples) does not materialise an 80 MB index matrix at once.
_BOOT_BLOCK = 2_000_000


# -- answer metrics -----------------------------------------------------------------------------

def normalize_answer(s: str | None) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in (s or "").lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(answers: Iterable[str | None]) -> list[str]:
    """Normalised, non-empty gold strings (an answer that normalises to "" matches nothing)."""
    return [g for g in (normalize_answer(a) for a in answers or () if a is not None) if g]


def exact_match(prediction: str | None, answers: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(bool(pred) and pred in _golds(answers))


def _f1_normalised(pred: str, gold: str) -> float:
    if (pred in _YES_NO or gold in _YES_NO) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str | None, answers: list[str]) -> float:
    pred = normalize_answer(prediction)
    return max((_f1_normalised(pred, g) for g in _golds(answers)), default=0.0)


def contains_answer(text: str | None, answers: list[str]) -> bool:
    """Whether a normalised answer occurs in the normalised text as whole tokens."""
    # Padding both sides with spaces turns substring search into token-sequence search.
    hay = f" {normalize_answer(text)} "
    return any(f" {g} " in hay for g in _golds(answers))


def accuracy(prediction: str | None, answers: list[str]) -> float:
    return float(contains_answer(prediction, answers))


def score(prediction: str | None, answers: list[str]) -> dict[str, float]:
    """{"acc", "em", "f1"} of one prediction; None (no final answer) scores 0 on all three."""
    return {"acc": accuracy(prediction, answers), "em": exact_match(prediction, answers),
            "f1": f1(prediction, answers)}


# -- confidence intervals -----------------------------------------------------------------------

def bootstrap_ci(values: Iterable[float], *, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) interval of the mean; (nan, nan) for no values.

    Deterministic for a given seed, n_boot and input."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    if not np.all(np.isfinite(x)):
        # A NaN would silently poison every resample; better to fail where the bad value came in.
        raise ValueError("bootstrap_ci got a non-finite value")
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK // x.size)
    means = np.concatenate([
        x[rng.integers(0, x.size, size=(min(block, n_boot - start), x.size))].mean(axis=1)
        for start in range(0, n_boot, block)
    ])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # Float summation can push the mean of identical values a hair outside them; the interval of a
    # constant sample should be that constant exactly.
    lo, hi = float(np.clip(lo, x.min(), x.max())), float(np.clip(hi, x.min(), x.max()))
    return (lo, hi)


def mean_ci(values: Iterable[float], **kw: Any) -> dict[str, Any]:
    """{"mean", "lo", "hi", "n"}; keyword arguments go to `bootstrap_ci`."""
    x = [float(v) for v in values]
    lo, hi = bootstrap_ci(x, **kw)
    return {"mean": math.fsum(x) / len(x) if x else math.nan, "lo": lo, "hi": hi, "n": len(x)}


# -- per-row helpers ----------------------------------------------------------------------------

def _row_score(row: dict) -> dict[str, float]:
    # Rescore from the prediction when the gold is present, so a resumed run's stored per-row metrics
    # can never disagree with the definitions above; fall back to stored metrics only without gold.
    if "answers" in row or "metrics" not in row:
        return score(row.get("prediction"), row.get("answers") or [])
    return row["metrics"]


def _finished(row: dict) -> bool:
    return bool(row.get("finished", row.get("prediction") is not None))


def _valid_calls(row: dict, name: str | None = None) -> int:
    return sum(1 for c in row.get("tool_calls") or []
               if c.get("valid") and (name is None or c.get("name") == name))


def _support(row: dict) -> tuple[set[str], set[str]]:
    return set(row.get("supporting_ids") or []), set(row.get("retrieved_ids") or [])


def failure_kind(row: dict) -> str | None:
    """Why a result row is wrong: None when it is correct (acc == 1), else one of FAILURE_KINDS.

    The first rule that applies wins:
    1. "no_final_answer": the episode did not finish with a final answer (turn cap, context overflow).
    2. "extraction_failure": the information was in front of the model and it still answered wrong:
       every gold supporting paragraph was retrieved, or some retrieved text contains a gold answer.
    3. "search_failure": the information never reached the model: the supporting ids are known and not
       all were retrieved, or nothing at all was retrieved (never searching counts here even when the
       supporting ids are unknown), and no retrieved text contains the answer.
    4. "other": supporting ids unknown, something was retrieved, and none of it contains the answer
       (the facts may have been there in words the containment check cannot see).
    """
    if _row_score(row)["acc"] >= 1.0:
        return None
    if not _finished(row):
        return "no_final_answer"
    supporting, retrieved = _support(row)
    if (supporting and supporting <= retrieved) or row.get("retrieved_text_has_answer"):
        return "extraction_failure"
    if supporting or not retrieved:
        return "search_failure"
    return "other"


# -- per-run aggregation ------------------------------------------------------------------------

def _answer_block(rows: list[dict], n_boot: int, seed: int) -> dict[str, dict]:
    scores = [_row_score(r) for r in rows]
    return {k: mean_ci([s[k] for s in scores], n_boot=n_boot, seed=seed) for k in ANSWER_METRICS}


def _group_key(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _natural(key: str) -> tuple:
    # "10" sorts after "2" for hop counts; non-numeric keys keep alphabetical order after numbers.
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


def _grouped(rows: list[dict], field: str, n_boot: int, seed: int) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group_key(r.get(field)), []).append(r)
    return {k: {"n": len(groups[k]), **_answer_block(groups[k], n_boot, seed)}
            for k in sorted(groups, key=_natural)}


def _mean(xs: list[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def aggregate(rows: list[dict], *, extraction_accuracy: float | None = None,
              oracle_retrieval: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every run-level metric of a list of result rows, as a JSON-serialisable dict.

    Rates are over all episodes unless said otherwise; `invalid_call_rate` is over all calls;
    `supporting_recall` and `retrieval_success` are over rows whose supporting ids are known (None when
    there are none); `failure_rates` are over wrong answers. Latencies of tool calls count only valid
    calls: invalid ones are never executed and are recorded with 0 s, which would understate latency.

    Ceiling (seed write-up): retrieval success x extraction success, e.g. 0.855 x 0.61 = 52.2%, of which
    an actual 44.8% is 86%. Retrieval is `oracle_retrieval` (BM25 with the gold sub-questions) when
    given, else this run's `retrieval_success`; extraction is `extraction_accuracy` (the standalone
    extraction benchmark) when given, else this run's accuracy on the rows whose retrieval fully
    succeeded. Any missing half makes the ceiling fields None.
    """
    if not rows:
        raise ValueError("no results to aggregate")
    n = len(rows)
    out: dict[str, Any] = {"n": n, **_answer_block(rows, n_boot, seed)}
    out["by_hops"] = _grouped(rows, "hops", n_boot, seed)
    out["by_dataset"] = _grouped(rows, "dataset", n_boot, seed)

    calls = [c for r in rows for c in r.get("tool_calls") or []]
    out["avg_tool_calls"] = len(calls) / n
    out["avg_turns"] = sum(int(r.get("turns") or 0) for r in rows) / n
    out["invalid_call_rate"] = sum(1 for c in calls if not c.get("valid")) / len(calls) if calls else 0.0
    out["answered_without_search_rate"] = sum(
        1 for r in rows if _finished(r) and _valid_calls(r, "search") == 0) / n
    out["tool_use_rate"] = sum(1 for r in rows if _valid_calls(r) > 0) / n
    out["no_final_answer_rate"] = sum(1 for r in rows if not _finished(r)) / n
    out["answered_at_cap_rate"] = sum(1 for r in rows if r.get("answered_at_cap")) / n
    from .collapse import behaviour  # the collapse guard's query statistics, so comparisons show them too

    b = behaviour(rows)
    out["query_diversity"], out["query_wordiness"] = b["query_diversity"], b["query_wordiness"]

    episode_s = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    per_tool: dict[str, list[float]] = {}
    for c in calls:
        if c.get("valid") and c.get("seconds") is not None:
            per_tool.setdefault(c.get("name") or "?", []).append(float(c["seconds"]))
    out["latency"] = {
        "episode_s": _mean(episode_s),
        "episode_p50_s": float(np.quantile(episode_s, 0.5)) if episode_s else None,
        "episode_p90_s": float(np.quantile(episode_s, 0.9)) if episode_s else None,
        "tool_call_s": _mean([s for v in per_tool.values() for s in v]),
        "per_tool": {k: _mean(v) for k, v in sorted(per_tool.items())},
    }

    known = [r for r in rows if r.get("supporting_ids")]
    recalls, full = [], []
    for r in known:
        supporting, retrieved = _support(r)
        recalls.append(len(supporting & retrieved) / len(supporting))
        if supporting <= retrieved:
            full.append(r)
    out["supporting_recall"] = _mean(recalls)
    out["retrieval_success"] = len(full) / len(known) if known else None

    kinds = [failure_kind(r) for r in rows]
    wrong = sum(1 for k in kinds if k is not None)
    out["failures"] = {k: kinds.count(k) for k in FAILURE_KINDS}
    out["failure_rates"] = {k: (kinds.count(k) / wrong if wrong else 0.0) for k in FAILURE_KINDS}

    if oracle_retrieval is not None:
        retrieval, r_src = float(oracle_retrieval), "oracle"
    else:
        retrieval, r_src = out["retrieval_success"], "run"
    if extraction_accuracy is not None:
        extraction, e_src = float(extraction_accuracy), "benchmark"
    else:
        extraction, e_src = _mean([_row_score(r)["acc"] for r in full]), "run"
    actual = out["acc"]["mean"]
    ceiling = retrieval * extraction if retrieval is not None and extraction is not None else None
    out["ceiling"] = {
        "retrieval": retrieval, "retrieval_source": r_src,
        "extraction": extraction, "extraction_source": e_src,
        # how many rows the run's own extraction rate rests on (often few: those whose retrieval fully succeeded)
        "extraction_n": len(full) if e_src == "run" else None,
        "ceiling": ceiling, "actual": actual,
        "share_of_ceiling": actual / ceiling if ceiling else None,
    }
    return out


# -- presentation -------------------------------------------------------------------------------

_LABEL = 22  # width of the label column; every line below stays within 80 columns


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: float | None) -> str:
    return "  n/a" if _missing(x) else f"{100 * x:5.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if _missing(x) else f"{100 * x:.1f}"


def _ci(m: dict) -> str:
    """'12.0%  [  4.0,  24.0]' - the interval in percentage points."""
    bounds = "" if _missing(m.get("lo")) else f"  [{100 * m['lo']:5.1f}, {100 * m['hi']:5.1f}]"
    return f"{_pct(m.get('mean'))}{bounds}"


def _ci_line(label: str, m: dict) -> str:
    return f"{label:<{_LABEL}}{_ci(m)}  n={m.get('n')}"


def _secs(x: float | None) -> str:
    if _missing(x):
        return "n/a"
    # A BM25 search takes about a millisecond; "0.00 s" would hide it.
    return f"{1000 * x:.1f} ms" if x < 0.1 else f"{x:.2f} s"


def format_table(metrics: dict) -> str:
    """The output of `aggregate` as a compact plain-text table for the terminal (fits 80 columns)."""
    m = metrics
    lines = [_ci_line("accuracy", m["acc"]), _ci_line("exact match", m["em"]), _ci_line("F1", m["f1"])]
    for hops, block in (m.get("by_hops") or {}).items():
        lines.append(_ci_line(f"  {hops}-hop accuracy", block["acc"])
                     + f"  EM {_num(block['em']['mean'])} F1 {_num(block['f1']['mean'])}")
    datasets = m.get("by_dataset") or {}
    if len(datasets) > 1:
        for name, block in datasets.items():
            lines.append(_ci_line(f"  {name[:_LABEL - 3]}", block["acc"]))
    lines += [
        f"{'tool calls / episode':<{_LABEL}}{m['avg_tool_calls']:6.2f}   turns / episode {m['avg_turns']:.2f}",
        f"{'tool use':<{_LABEL}}{_pct(m['tool_use_rate'])}   invalid calls {_pct(m['invalid_call_rate']).strip()}",
        f"{'answered w/o search':<{_LABEL}}{_pct(m['answered_without_search_rate'])}"
        f"   no final answer {_pct(m['no_final_answer_rate']).strip()}",
        f"{'answered at turn cap':<{_LABEL}}{_pct(m.get('answered_at_cap_rate', 0.0))}",
    ]
    lat = m.get("latency") or {}
    lines.append(f"{'latency / episode':<{_LABEL}}{_secs(lat.get('episode_s')):>6}"
                 f"   p50 {_secs(lat.get('episode_p50_s'))}, p90 {_secs(lat.get('episode_p90_s'))}")
    lines.append(f"{'latency / tool call':<{_LABEL}}{_secs(lat.get('tool_call_s')):>6}")
    for name, s in (lat.get("per_tool") or {}).items():
        lines.append(f"{'  ' + name[:_LABEL - 3]:<{_LABEL}}{_secs(s):>6}")
    lines.append(f"{'supporting recall':<{_LABEL}}{_pct(m.get('supporting_recall'))}"
                 f"   all supporting found {_pct(m.get('retrieval_success')).strip()}")
    f = m["failures"]
    wrong = sum(f.values())
    lines.append(f"{f'failures ({wrong} wrong)':<{_LABEL}}search {f['search_failure']}, "
                 f"extraction {f['extraction_failure']}, no answer {f['no_final_answer']}, other {f['other']}")
    c = m.get("ceiling") or {}
    if c.get("ceiling") is not None:
        lines.append(f"{'ceiling':<{_LABEL}}{_pct(c['ceiling'])}   = retrieval {_pct(c['retrieval']).strip()}"
                     f" ({c['retrieval_source']}) x extraction {_pct(c['extraction']).strip()}")
        lines.append(f"{'  actual / ceiling':<{_LABEL}}{_pct(c['share_of_ceiling'])}"
                     f"   extraction from {c['extraction_source']}"
                     + (f" ({c['extraction_n']} fully retrieved episodes)" if c.get("extraction_n") is not None else ""))
    else:
        lines.append(f"{'ceiling':<{_LABEL}}  n/a   (retrieval or extraction unknown)")
    return "\n".join(lines)


def _delta(b: float | None, t: float | None) -> float | None:
    return None if _missing(b) or _missing(t) else t - b


_COMPARED_RATES = ("avg_tool_calls", "avg_turns", "tool_use_rate", "invalid_call_rate",
                   "answered_without_search_rate", "no_final_answer_rate", "answered_at_cap_rate",
                   "supporting_recall", "retrieval_success", "query_diversity", "query_wordiness")


def compare(base: dict, tuned: dict) -> dict[str, Any]:
    """Two runs' `aggregate` outputs side by side, with tuned - base for each number.

    For acc/em/f1, "ci_overlap" says whether the two 95% intervals overlap: when they do, the
    delta is not clearly more than resampling noise (a conservative check, not a paired test)."""
    out: dict[str, Any] = {"n": {"base": base["n"], "tuned": tuned["n"]}}
    for key in ANSWER_METRICS:
        b, t = base[key], tuned[key]
        out[key] = {"base": b, "tuned": t, "delta": _delta(b["mean"], t["mean"]),
                    "ci_overlap": not (t["lo"] > b["hi"] or b["lo"] > t["hi"])}
    for key in _COMPARED_RATES:
        b, t = base.get(key), tuned.get(key)
        out[key] = {"base": b, "tuned": t, "delta": _delta(b, t)}
    for key in ("failures", "failure_rates"):
        b, t = base[key], tuned[key]
        out[key] = {"base": b, "tuned": t, "delta": {k: t[k] - b[k] for k in FAILURE_KINDS}}
    return out


def format_comparison(base: dict, tuned: dict, names: tuple[str, str] = ("base", "tuned")) -> str:
    """`compare` as a plain-text table (fits 80 columns); '*' marks deltas whose 95% CIs do not overlap."""
    c = compare(base, tuned)
    a, b = (name[:21] for name in names)
    lines = [f"{'':<{_LABEL}}{a:>22}{b:>22}{'change':>10}",
             f"{'questions':<{_LABEL}}{c['n']['base']:>22}{c['n']['tuned']:>22}"]

    def ci(m: dict) -> str:
        return f"{_pct(m['mean'])} [{_num(m['lo'])},{_num(m['hi'])}]"

    def pts(d: float | None) -> str:
        return "" if d is None else f"{100 * d:+.1f}pt"

    for key, label in (("acc", "accuracy"), ("em", "exact match"), ("f1", "F1")):
        row = c[key]
        mark = "" if row["ci_overlap"] else "*"
        lines.append(f"{label:<{_LABEL}}{ci(row['base']):>22}{ci(row['tuned']):>22}{pts(row['delta']) + mark:>10}")
    for key, label in (("avg_tool_calls", "tool calls / episode"), ("avg_turns", "turns / episode")):
        row = c[key]
        d = "" if row["delta"] is None else f"{row['delta']:+.2f}"
        lines.append(f"{label:<{_LABEL}}{row['base']:>22.2f}{row['tuned']:>22.2f}{d:>10}")
    for key, label in (("tool_use_rate", "tool use"), ("invalid_call_rate", "invalid calls"),
                       ("answered_without_search_rate", "answered w/o search"),
                       ("no_final_answer_rate", "no final answer"), ("answered_at_cap_rate", "answered at turn cap"),
                       ("supporting_recall", "supporting recall"), ("query_diversity", "distinct queries"),
                       ("query_wordiness", "query words")):
        row = c[key]
        if row["base"] is None or row["tuned"] is None:
            continue
        lines.append(f"{label:<{_LABEL}}{_pct(row['base']):>22}{_pct(row['tuned']):>22}{pts(row['delta']):>10}")
    lines.append("failures (share of wrong)")
    for kind in FAILURE_KINDS:
        cells = [f"{c['failures'][side][kind]} ({_pct(c['failure_rates'][side][kind]).strip()})"
                 for side in ("base", "tuned")]
        lines.append(f"{'  ' + kind:<{_LABEL}}{cells[0]:>22}{cells[1]:>22}{c['failures']['delta'][kind]:>+10d}")
    if not all(c[k]["ci_overlap"] for k in ANSWER_METRICS):
        lines.append("* the two 95% intervals do not overlap")
    return "\n".join(lines)
