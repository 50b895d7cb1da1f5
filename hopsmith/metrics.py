"""Answer metrics, confidence intervals, paired comparisons, run aggregation and the failure taxonomy.

Everything hopsmith reports about a run is computed here, so that every stage (evaluation, the ceiling
benchmark, the training ladder) scores answers the same way. Pure Python and numpy.

Definitions followed:
- `normalize_answer` is SQuAD's: lowercase, drop ASCII punctuation, drop the articles a/an/the,
  collapse whitespace. All three official scripts below use this normaliser.
- `exact_match` and `f1` score each dataset as its official script does (`OFFICIAL_SCRIPTS`), taking the
  best over the gold answer and its aliases:
  MuSiQue (`evaluate_v1.0.py`, whose answer metric is SQuAD 2.0's): F1 over normalised tokens; when either
  side has no tokens, F1 is 1 if both have none, else 0.
  HotpotQA (`hotpot_evaluate_v1.py`) and 2WikiMultihopQA v1.0 (`2wikimultihop_evaluate.py`): the same F1,
  except that when either normalised side is yes/no/noanswer and the two differ, F1 is 0, and two sides
  without tokens get F1 0.
  Any other dataset (Bamboogle, a user's file) is scored the MuSiQue/SQuAD way. A prediction of None (the
  episode never gave a final answer) scores 0 on everything, as a missing prediction does officially.
- `accuracy` is the seed write-up's containment accuracy, which the literature calls cover-EM: 1 when the
  normalised gold answer (or an alias) occurs in the normalised prediction as a whole-token sequence
  ("paris" is in "it is paris france", "par" is not). It flatters long answers ("Paris or London" covers
  "London"), so EM and F1 are the headline and cover-EM is printed third. Its key stays "acc".
- Proportions (EM, cover-EM, every behaviour rate) get a 95% Wilson score interval, which keeps its
  coverage at 0/n and at small n; F1 and other means get a 95% percentile-bootstrap interval.
- Two runs on the same questions are compared question by question (`compare`): McNemar's exact test for
  EM and cover-EM, a paired-bootstrap interval of the change for F1 and the behaviour rates.
- The failure taxonomy and the ceiling are the seed write-up's; see `failure_kind` and `aggregate`.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from .chat import normalize_answer
from .collapse import behaviour, searched

_YES_NO = frozenset({"yes", "no", "noanswer"})
FAILURE_KINDS = ("search_failure", "extraction_failure", "no_final_answer", "other")
ANSWER_METRICS = ("acc", "em", "f1")
# Printed order and names: EM and F1 are the headline, containment accuracy ("acc") is cover-EM.
ANSWER_LABELS = (("em", "exact match"), ("f1", "F1"), ("acc", "cover-EM"))

# The official script whose answer EM/F1 each bundled dataset's numbers match (README "Metrics").
OFFICIAL_SCRIPTS = {
    "musique": "MuSiQue evaluate_v1.0.py",
    "hotpotqa": "HotpotQA hotpot_evaluate_v1.py",
    "2wiki": "2WikiMultihopQA 2wikimultihop_evaluate.py (v1.0)",
}
_YES_NO_RULE = frozenset({"hotpotqa", "2wiki"})

# Bootstrap resamples are drawn in blocks of at most this many indices, so a large run (say 10k
# questions x 1000 resamples) does not materialise an 80 MB index matrix at once.
_BOOT_BLOCK = 2_000_000


# -- answer metrics -----------------------------------------------------------------------------

def scoring_of(dataset: str | None) -> str:
    """The official script a dataset's EM/F1 follow, in words."""
    return OFFICIAL_SCRIPTS.get(dataset or "", "SQuAD EM/F1, as MuSiQue's script")


def _golds(answers: Iterable[str | None] | None) -> list[str]:
    """Every gold string normalised, including those that normalise to "" (the official scripts keep them)."""
    return [normalize_answer(a) for a in answers or () if a is not None]


def exact_match(prediction: str | None, answers: Sequence[str], dataset: str | None = None) -> float:
    """1.0 when the normalised prediction equals a normalised gold; None (no final answer) scores 0.

    The three official scripts agree on EM, so `dataset` changes nothing here; it is taken for symmetry."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == g for g in _golds(answers)))


def _f1_normalised(pred: str, gold: str, yes_no_rule: bool) -> float:
    if yes_no_rule and (pred in _YES_NO or gold in _YES_NO) and pred != gold:
        return 0.0
    p, g = pred.split(), gold.split()
    if not yes_no_rule and (not p or not g):
        return float(p == g)  # SQuAD 2.0 / MuSiQue: agreeing on "no tokens" is a full match
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str | None, answers: Sequence[str], dataset: str | None = None) -> float:
    """Token F1, best over the golds, by `dataset`'s official rule (see the module docstring)."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    rule = dataset in _YES_NO_RULE
    return max((_f1_normalised(pred, g, rule) for g in _golds(answers)), default=0.0)


def contains_answer(text: str | None, answers: Sequence[str]) -> bool:
    """Whether a normalised answer occurs in the normalised text as whole tokens (empty golds never do)."""
    # Padding both sides with spaces turns substring search into token-sequence search.
    hay = f" {normalize_answer(text)} "
    return any(f" {g} " in hay for g in _golds(answers) if g)


def accuracy(prediction: str | None, answers: Sequence[str]) -> float:
    """Cover-EM (the seed write-up's containment accuracy)."""
    return float(contains_answer(prediction, answers))


def score(prediction: str | None, answers: Sequence[str], dataset: str | None = None) -> dict[str, float]:
    """{"acc" (cover-EM), "em", "f1"} of one prediction; None (no final answer) scores 0 on all three."""
    return {"acc": accuracy(prediction, answers), "em": exact_match(prediction, answers, dataset),
            "f1": f1(prediction, answers, dataset)}


# -- confidence intervals and paired tests ------------------------------------------------------

def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def wilson_ci(successes: float, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score (1 - alpha) interval of a proportion; (nan, nan) for n = 0.

    Unlike a bootstrap or Wald interval it does not collapse to [0, 0] at 0/n: at n = 20 and p = 0.05 its
    coverage stays near the nominal 95%."""
    _check_alpha(alpha)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return (math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap_ci(values: Iterable[float], *, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) interval of the mean; (nan, nan) for no values.

    Deterministic for a given seed, n_boot and input. Given per-question differences of two runs it is the
    paired bootstrap interval of the change."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _check_alpha(alpha)
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
    """{"mean", "lo", "hi", "n", "interval": "bootstrap"}; keyword arguments go to `bootstrap_ci`."""
    x = [float(v) for v in values]
    lo, hi = bootstrap_ci(x, **kw)
    return {"mean": math.fsum(x) / len(x) if x else math.nan, "lo": lo, "hi": hi, "n": len(x),
            "interval": "bootstrap"}


def proportion_ci(values: Iterable[float], *, alpha: float = 0.05) -> dict[str, Any]:
    """{"mean", "lo", "hi", "n", "interval": "wilson"} of 0/1 outcomes."""
    x = [float(v) for v in values]
    if any(v not in (0.0, 1.0) for v in x):
        raise ValueError("proportion_ci takes 0/1 outcomes; use mean_ci for scores like F1")
    k = int(sum(x))
    lo, hi = wilson_ci(k, len(x), alpha=alpha)
    return {"mean": k / len(x) if x else math.nan, "lo": lo, "hi": hi, "n": len(x), "interval": "wilson"}


def answer_summary(scores: Sequence[dict], *, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per-prediction `score` dicts -> {"acc", "em": Wilson interval, "f1": bootstrap interval}."""
    return {"acc": proportion_ci([s["acc"] for s in scores]), "em": proportion_ci([s["em"] for s in scores]),
            "f1": mean_ci([s["f1"] for s in scores], n_boot=n_boot, seed=seed)}


def mcnemar_exact(base_only: int, tuned_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (right in one run only).

    Under "no difference" each discordant question is equally likely to favour either run, so the count
    favouring one run is Binomial(base_only + tuned_only, 1/2); the p-value doubles the smaller tail."""
    if base_only < 0 or tuned_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = base_only + tuned_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(base_only, tuned_only) + 1))
    return min(1.0, 2 * tail / 2 ** n)


# -- per-row helpers ----------------------------------------------------------------------------

def _row_score(row: dict) -> dict[str, float]:
    # Rescore from the prediction when the gold is present, so a resumed run's stored per-row metrics
    # can never disagree with the definitions above; fall back to stored metrics only without gold.
    if "answers" in row or "metrics" not in row:
        return score(row.get("prediction"), row.get("answers") or [], row.get("dataset"))
    return row["metrics"]


def _finished(row: dict) -> bool:
    return bool(row.get("finished", row.get("prediction") is not None))


def _valid_calls(row: dict, name: str | None = None) -> int:
    return sum(1 for c in row.get("tool_calls") or []
               if c.get("valid") and (name is None or c.get("name") == name))


def _support(row: dict) -> tuple[set[str], set[str]]:
    return set(row.get("supporting_ids") or []), set(row.get("retrieved_ids") or [])


def failure_kind(row: dict) -> str | None:
    """Why a result row is wrong: None when it is correct (cover-EM == 1), else one of FAILURE_KINDS.

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


def per_question(rows: Sequence[dict]) -> dict[str, dict]:
    """Each question's scores and behaviour, keyed by question id: what `compare` pairs two runs on.

    {"acc", "em", "f1", "tool_calls", "invalid_calls", "turns", "tool_use", "no_search", "no_final", "at_cap",
    "recall"}; the
    four behaviour flags are 0/1, `recall` is None when the supporting ids are unknown. Rows without a
    question id are left out, and a repeated id keeps its first row."""
    out: dict[str, dict] = {}
    for r in rows:
        qid = r.get("question_id")
        if qid is None or str(qid) in out:
            continue
        s = _row_score(r)
        supporting, retrieved = _support(r)
        out[str(qid)] = {
            "acc": s["acc"], "em": s["em"], "f1": s["f1"],
            "tool_calls": len(r.get("tool_calls") or []), "turns": int(r.get("turns") or 0),
            # with tool_calls, the per-question counts behind the run's invalid-call rate (a ratio of sums)
            "invalid_calls": sum(1 for c in r.get("tool_calls") or [] if not c.get("valid")),
            "tool_use": int(_valid_calls(r) > 0),
            "no_search": int(_finished(r) and not searched(r)),
            "no_final": int(not _finished(r)),
            "at_cap": int(bool(r.get("answered_at_cap"))),
            "recall": len(supporting & retrieved) / len(supporting) if supporting else None,
        }
    return out


# -- per-run aggregation ------------------------------------------------------------------------

def _answer_block(rows: list[dict], n_boot: int, seed: int) -> dict[str, dict]:
    return answer_summary([_row_score(r) for r in rows], n_boot=n_boot, seed=seed)


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


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_ci(k, n)
    return {"mean": k / n if n else None, "lo": None if n == 0 else lo, "hi": None if n == 0 else hi, "n": n}


def aggregate(rows: list[dict], *, extraction_accuracy: float | None = None,
              oracle_retrieval: float | None = None, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every run-level metric of a list of result rows, as a JSON-serialisable dict.

    `acc` (cover-EM) and `em` carry Wilson intervals, `f1` a bootstrap one; `by_hops`, `by_type` (HotpotQA
    bridge/comparison, 2Wiki's four types, MuSiQue's 2hop/3hop1/...) and `by_dataset` break them down.
    Rates are over all episodes unless said otherwise; `invalid_call_rate` is over all calls;
    `supporting_recall` and `retrieval_success` are over rows whose supporting ids are known (None when
    there are none); `failure_rates` are over wrong answers. `rate_ci` holds the Wilson interval of every
    rate that is a proportion. `per_question` keeps each question's scores for paired comparisons.
    Latencies of tool calls count only valid calls: invalid ones are never executed and are recorded with
    0 s, which would understate latency.

    Ceiling (seed write-up): retrieval success x extraction success, e.g. 0.855 x 0.61 = 52.2%, of which
    an actual 44.8% is 86%. Retrieval is `oracle_retrieval` (BM25 with the gold sub-questions) when
    given, else this run's `retrieval_success`; extraction is `extraction_accuracy` (the standalone
    extraction benchmark) when given, else this run's cover-EM on the rows whose retrieval fully
    succeeded. Any missing half makes the ceiling fields None. The ceiling is on cover-EM, as the seed's is.
    """
    if not rows:
        raise ValueError("no results to aggregate")
    n = len(rows)
    out: dict[str, Any] = {"n": n, **_answer_block(rows, n_boot, seed)}
    out["by_hops"] = _grouped(rows, "hops", n_boot, seed)
    out["by_type"] = _grouped(rows, "type", n_boot, seed)
    out["by_dataset"] = _grouped(rows, "dataset", n_boot, seed)
    out["scoring"] = {name: scoring_of(None if name == "unknown" else name) for name in out["by_dataset"]}

    calls = [c for r in rows for c in r.get("tool_calls") or []]
    invalid = sum(1 for c in calls if not c.get("valid"))
    counts = {
        "tool_use_rate": sum(1 for r in rows if _valid_calls(r) > 0),
        "answered_without_search_rate": sum(1 for r in rows if _finished(r) and not searched(r)),
        "no_final_answer_rate": sum(1 for r in rows if not _finished(r)),
        "answered_at_cap_rate": sum(1 for r in rows if r.get("answered_at_cap")),
    }
    out["avg_tool_calls"] = len(calls) / n
    out["avg_turns"] = sum(int(r.get("turns") or 0) for r in rows) / n
    out["invalid_call_rate"] = invalid / len(calls) if calls else 0.0
    for key, k in counts.items():
        out[key] = k / n

    b = behaviour(rows)
    out["query_diversity"], out["query_wordiness"] = b["query_diversity"], b["query_wordiness"]

    out["latency"] = _latency(rows, calls)

    known, full, out["supporting_recall"] = _retrieval(rows)
    out["retrieval_success"] = len(full) / len(known) if known else None
    out["rate_ci"] = {**{key: _rate(k, n) for key, k in counts.items()},
                      "invalid_call_rate": _rate(invalid, len(calls)),
                      "retrieval_success": _rate(len(full), len(known))}

    kinds = [failure_kind(r) for r in rows]
    wrong = sum(1 for k in kinds if k is not None)
    out["failures"] = {k: kinds.count(k) for k in FAILURE_KINDS}
    out["failure_rates"] = {k: (kinds.count(k) / wrong if wrong else 0.0) for k in FAILURE_KINDS}

    out["ceiling"] = _ceiling(out["acc"]["mean"], out["retrieval_success"], full, extraction_accuracy,
                              oracle_retrieval)
    out["per_question"] = per_question(rows)
    return out


def _retrieval(rows: list[dict]) -> tuple[list[dict], list[dict], float | None]:
    """The rows whose supporting ids are known, those whose every supporting paragraph was retrieved, and
    the mean share of supporting paragraphs retrieved (None when none is known)."""
    known = [r for r in rows if r.get("supporting_ids")]
    recalls, full = [], []
    for r in known:
        supporting, retrieved = _support(r)
        recalls.append(len(supporting & retrieved) / len(supporting))
        if supporting <= retrieved:
            full.append(r)
    return known, full, _mean(recalls)


def _latency(rows: list[dict], calls: list[dict]) -> dict:
    """Episode wall times (mean, p50, p90) and tool-call latency, overall and per tool (valid calls only)."""
    episode_s = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    per_tool: dict[str, list[float]] = {}
    for c in calls:
        if c.get("valid") and c.get("seconds") is not None:
            per_tool.setdefault(c.get("name") or "?", []).append(float(c["seconds"]))
    return {
        "episode_s": _mean(episode_s),
        "episode_p50_s": float(np.quantile(episode_s, 0.5)) if episode_s else None,
        "episode_p90_s": float(np.quantile(episode_s, 0.9)) if episode_s else None,
        "tool_call_s": _mean([s for v in per_tool.values() for s in v]),
        "per_tool": {k: _mean(v) for k, v in sorted(per_tool.items())},
    }


def _ceiling(actual: float, retrieval_success: float | None, full: list[dict], extraction_accuracy: float | None,
             oracle_retrieval: float | None) -> dict:
    """The ceiling block of `aggregate` (see its docstring); `full` are the rows whose retrieval fully succeeded."""
    if oracle_retrieval is not None:
        retrieval, r_src = float(oracle_retrieval), "oracle"
    else:
        retrieval, r_src = retrieval_success, "run"
    if extraction_accuracy is not None:
        extraction, e_src = float(extraction_accuracy), "benchmark"
    else:
        extraction, e_src = _mean([_row_score(r)["acc"] for r in full]), "run"
    ceiling = retrieval * extraction if retrieval is not None and extraction is not None else None
    return {
        "retrieval": retrieval, "retrieval_source": r_src,
        "extraction": extraction, "extraction_source": e_src,
        # how many rows the run's own extraction rate rests on (often few: those whose retrieval fully succeeded)
        "extraction_n": len(full) if e_src == "run" else None,
        "ceiling": ceiling, "actual": actual,
        "share_of_ceiling": actual / ceiling if ceiling else None,
    }


# -- comparing two runs -------------------------------------------------------------------------

def _delta(b: float | None, t: float | None) -> float | None:
    return None if _missing(b) or _missing(t) else t - b


_COMPARED_RATES = ("avg_tool_calls", "avg_turns", "tool_use_rate", "invalid_call_rate",
                   "answered_without_search_rate", "no_final_answer_rate", "answered_at_cap_rate",
                   "supporting_recall", "retrieval_success", "query_diversity", "query_wordiness")
# Run-level numbers that are means of a per-question value, so the change has a paired interval.
_PER_QUESTION_FIELD = {"avg_tool_calls": "tool_calls", "avg_turns": "turns", "tool_use_rate": "tool_use",
                       "answered_without_search_rate": "no_search", "no_final_answer_rate": "no_final",
                       "answered_at_cap_rate": "at_cap", "supporting_recall": "recall"}


def _paired_change(b: list[float], t: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    diff = [y - x for x, y in zip(b, t)]
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return {"n": len(diff), "delta": math.fsum(diff) / len(diff) if diff else None,
            "lo": None if _missing(lo) else lo, "hi": None if _missing(hi) else hi}


def compare(base: dict, tuned: dict, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Two runs' `aggregate` outputs side by side: tuned - base for each number, tested on the questions
    both runs answered.

    `delta` is the difference of the two runs' own means. When both carry `per_question`, every answer
    metric and per-question rate also gets `paired` over the common questions: the paired change with a
    95% paired-bootstrap interval, and for EM and cover-EM McNemar's exact test (`p`, and the discordant
    counts `base_only` / `tuned_only`: questions right in that run only). Without per-question scores
    (a metrics.json older than them) `paired` is None and nothing is tested. `setup` holds each side's
    prompt setup (one-shot or not, thinking, turns) when the runs recorded it."""
    pb, pt = base.get("per_question"), tuned.get("per_question")
    common = [q for q in pb if q in pt] if pb and pt else []
    out: dict[str, Any] = {
        "n": {"base": base["n"], "tuned": tuned["n"]},
        "paired_n": len(common) if pb and pt else None,
        "setup": {"base": base.get("setup"), "tuned": tuned.get("setup")},
    }
    for key in ANSWER_METRICS:
        b, t = base[key], tuned[key]
        row: dict[str, Any] = {"base": b, "tuned": t, "delta": _delta(b["mean"], t["mean"]), "paired": None}
        if common:
            xs, ys = [float(pb[q][key]) for q in common], [float(pt[q][key]) for q in common]
            row["paired"] = _paired_change(xs, ys, n_boot, seed)
            if key in ("acc", "em"):
                base_only = sum(1 for x, y in zip(xs, ys) if x >= 1.0 > y)
                tuned_only = sum(1 for x, y in zip(xs, ys) if y >= 1.0 > x)
                row["paired"].update(test="mcnemar_exact", base_only=base_only, tuned_only=tuned_only,
                                     p=mcnemar_exact(base_only, tuned_only))
            else:
                row["paired"]["test"] = "paired_bootstrap"
        out[key] = row
    for key in _COMPARED_RATES:
        b, t = base.get(key), tuned.get(key)
        row = {"base": b, "tuned": t, "delta": _delta(b, t), "paired": None}
        field = _PER_QUESTION_FIELD.get(key)
        if common and field:
            pairs = [(pb[q].get(field), pt[q].get(field)) for q in common]
            pairs = [(float(x), float(y)) for x, y in pairs if x is not None and y is not None]
            if pairs:
                row["paired"] = _paired_change([x for x, _ in pairs], [y for _, y in pairs], n_boot, seed)
        out[key] = row
    for key in ("failures", "failure_rates"):
        b, t = base[key], tuned[key]
        out[key] = {"base": b, "tuned": t, "delta": {k: t[k] - b[k] for k in FAILURE_KINDS}}
    return out


def describe_setup(setup: dict | None) -> str:
    """'one-shot, thinking off, up to 6 turns' from a run's `setup` (see stages/evaluate)."""
    if not setup:
        return "not recorded"
    parts = ["one-shot" if setup.get("few_shot") else "zero-shot",
             "thinking on" if setup.get("thinking") else "thinking off"]
    if setup.get("max_turns") is not None:
        parts.append(f"up to {setup['max_turns']} turns")
    return ", ".join(parts)


def _same_prompting(a: dict | None, b: dict | None) -> bool | None:
    if not a or not b:
        return None
    return all(a.get(k) == b.get(k) for k in ("few_shot", "thinking", "max_turns"))


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


def _group_lines(groups: dict, fmt) -> list[str]:
    return [_ci_line(fmt(k)[:_LABEL - 1], b["em"]) + f"  F1 {_num(b['f1']['mean'])} cover {_num(b['acc']['mean'])}"
            for k, b in groups.items()]


_TABLE_RATES = (("tool_use_rate", "tool use"), ("invalid_call_rate", "invalid calls"),
                ("answered_without_search_rate", "answered w/o search"),
                ("no_final_answer_rate", "no final answer"), ("answered_at_cap_rate", "answered at turn cap"))


def format_table(metrics: dict) -> str:
    """The output of `aggregate` as a compact plain-text table for the terminal (fits 80 columns).

    EM and F1 come first; cover-EM (containment accuracy) third. Intervals are 95%: Wilson for the
    proportions, bootstrap for F1."""
    m = metrics
    lines = [_ci_line(label, m[key]) for key, label in ANSWER_LABELS]
    lines += _group_lines(m.get("by_hops") or {}, lambda k: f"  {k}-hop EM")
    types = m.get("by_type") or {}
    if len(types) > 1:
        lines += _group_lines(types, lambda k: f"  {k} EM")
    datasets = m.get("by_dataset") or {}
    if len(datasets) > 1:
        lines += _group_lines(datasets, lambda k: f"  {k} EM")
    lines.append(f"{'tool calls / episode':<{_LABEL}}{m['avg_tool_calls']:6.2f}   turns / episode {m['avg_turns']:.2f}")
    rate_ci = m.get("rate_ci") or {}
    for key, label in _TABLE_RATES:
        ci = rate_ci.get(key)
        lines.append(_ci_line(label, ci) if ci else f"{label:<{_LABEL}}{_pct(m.get(key, 0.0))}")
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
        lines.append(f"{'ceiling (cover-EM)':<{_LABEL}}{_pct(c['ceiling'])}   = retrieval {_pct(c['retrieval']).strip()}"
                     f" ({c['retrieval_source']}) x extraction {_pct(c['extraction']).strip()}")
        lines.append(f"{'  actual / ceiling':<{_LABEL}}{_pct(c['share_of_ceiling'])}"
                     f"   extraction from {c['extraction_source']}"
                     + (f" ({c['extraction_n']} fully retrieved episodes)" if c.get("extraction_n") is not None else ""))
    else:
        lines.append(f"{'ceiling':<{_LABEL}}  n/a   (retrieval or extraction unknown)")
    for name, script in (m.get("scoring") or {}).items():
        lines.append(f"{'scored as':<{_LABEL}}{(name + ': ' + script)[:80 - _LABEL]}")
    if m.get("setup"):
        lines.append(f"{'prompt':<{_LABEL}}{describe_setup(m['setup'])}")
    return "\n".join(lines)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _signed_pts(x: float | None, digits: int = 1) -> str:
    return "n/a" if _missing(x) else f"{100 * x:+.{digits}f}"


def paired_line(row: dict, names: tuple[str, str], *, indent: str = "  ") -> str:
    """One line under an answer metric: McNemar's exact p (EM, cover-EM) or the change's paired interval (F1)."""
    p = row.get("paired")
    if not p:
        return f"{indent}not paired: a run lacks per-question scores, so no test"
    a, b = (name[:12] for name in names)
    if p.get("test") == "mcnemar_exact":
        return (f"{indent}McNemar exact {_p(p['p'])}; right in {b} only {p['tuned_only']}, "
                f"in {a} only {p['base_only']}")
    return (f"{indent}change {_signed_pts(p['delta'])}pt, 95% CI [{_signed_pts(p['lo'])}, {_signed_pts(p['hi'])}]"
            f" (paired bootstrap, n={p['n']})")


def format_comparison(base: dict, tuned: dict, names: tuple[str, str] = ("base", "tuned"), *,
                      n_boot: int = 1000, seed: int = 0) -> str:
    """`compare` as a plain-text table (fits 80 columns): EM, F1 and cover-EM with each run's 95% interval
    and, under each, the paired test; the behaviour rates with the paired 95% interval of their change;
    each side's prompt setup, and a warning when the two sides were prompted differently."""
    c = compare(base, tuned, n_boot=n_boot, seed=seed)
    a, b = (name[:21] for name in names)
    paired = "" if c["paired_n"] is None else f"{c['paired_n']} paired"
    lines = [f"{'':<{_LABEL}}{a:>22}{b:>22}{'change':>14}",
             f"{'questions':<{_LABEL}}{c['n']['base']:>22}{c['n']['tuned']:>22}{paired:>14}"]

    def ci(m: dict) -> str:
        return f"{_pct(m['mean'])} [{_num(m['lo'])},{_num(m['hi'])}]"

    def pts(d: float | None) -> str:
        return "" if d is None else f"{100 * d:+.1f}pt"

    for key, label in ANSWER_LABELS:
        row = c[key]
        lines.append(f"{label:<{_LABEL}}{ci(row['base']):>22}{ci(row['tuned']):>22}{pts(row['delta']):>14}")
        lines.append(paired_line(row, names))
    for side, name in (("base", names[0]), ("tuned", names[1])):
        lines.append(f"{('prompt, ' + name)[:_LABEL - 1]:<{_LABEL}}{describe_setup(c['setup'][side])}")
    if _same_prompting(c["setup"]["base"], c["setup"]["tuned"]) is False:
        lines.append("  the two sides were prompted differently: the change is not the training alone")

    lines.append(f"{'behaviour':<{_LABEL}}{a[:13]:>14}{b[:13]:>14}{'change [paired 95% CI]':>30}")

    def change(row: dict, scale: float, unit: str, digits: int) -> str:
        if row["delta"] is None:
            return ""
        text = f"{scale * row['delta']:+.{digits}f}{unit}"
        p = row.get("paired")
        if p and p.get("lo") is not None:
            text += f" [{scale * p['lo']:+.{digits}f}, {scale * p['hi']:+.{digits}f}]"
        return text

    for key, label in (("avg_tool_calls", "tool calls / episode"), ("avg_turns", "turns / episode")):
        row = c[key]
        lines.append(f"{label:<{_LABEL}}{row['base']:>14.2f}{row['tuned']:>14.2f}{change(row, 1.0, '', 2):>30}")
    for key, label in (("tool_use_rate", "tool use"), ("invalid_call_rate", "invalid calls"),
                       ("answered_without_search_rate", "answered w/o search"),
                       ("no_final_answer_rate", "no final answer"), ("answered_at_cap_rate", "answered at turn cap"),
                       ("supporting_recall", "supporting recall"), ("query_diversity", "distinct queries"),
                       ("query_wordiness", "query words")):
        row = c[key]
        if row["base"] is None or row["tuned"] is None:
            continue
        lines.append(f"{label:<{_LABEL}}{_pct(row['base']):>14}{_pct(row['tuned']):>14}{change(row, 100.0, 'pt', 1):>30}")
    lines.append(f"{'failures (of wrong)':<{_LABEL}}{a[:13]:>14}{b[:13]:>14}{'change':>30}")
    for kind in FAILURE_KINDS:
        cells = [f"{c['failures'][side][kind]} ({_pct(c['failure_rates'][side][kind]).strip()})"
                 for side in ("base", "tuned")]
        lines.append(f"{'  ' + kind:<{_LABEL}}{cells[0]:>14}{cells[1]:>14}{c['failures']['delta'][kind]:>+30d}")
    return "\n".join(lines)


def headline(base: dict, tuned: dict, names: tuple[str, str] = ("base", "tuned"), *, n_boot: int = 1000,
             seed: int = 0) -> str:
    """One line for a benchmark: EM and F1 of both runs with the paired test of each change, then cover-EM.

    'EM 2.7% -> 12.2% (+9.5pt, McNemar p = 0.016); F1 5.1 -> 15.0 (+9.9pt, paired 95% CI [+3.2, +16.8]);
    cover-EM 4.1% -> 13.5% (p = 0.021); n=74 paired'"""
    c = compare(base, tuned, n_boot=n_boot, seed=seed)

    def test(key: str) -> str:
        p = c[key]["paired"]
        if not p:
            return "not paired"
        if "p" in p:
            return f"McNemar {_p(p['p'])}"
        return f"paired 95% CI [{_signed_pts(p['lo'])}, {_signed_pts(p['hi'])}]"

    em, f, acc = c["em"], c["f1"], c["acc"]
    n = f"n={c['paired_n']} paired" if c["paired_n"] is not None else f"n={c['n']['base']}/{c['n']['tuned']} unpaired"
    return (f"{names[0]} -> {names[1]}: EM {_pct(em['base']['mean']).strip()} -> {_pct(em['tuned']['mean']).strip()} "
            f"({_signed_pts(em['delta'])}pt, {test('em')}); F1 {_num(f['base']['mean'])} -> {_num(f['tuned']['mean'])} "
            f"({_signed_pts(f['delta'])}pt, {test('f1')}); cover-EM {_pct(acc['base']['mean']).strip()} -> "
            f"{_pct(acc['tuned']['mean']).strip()} ({test('acc')}); {n}")
