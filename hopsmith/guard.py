"""Two judgements the training ladder makes from paired tests on the same questions.

- `verdict(base, tuned)`: is the tuned agent better, worse or indistinguishable from the base one? Each of
  EM and cover-EM (McNemar's exact test), F1, tool use and supporting recall (paired-bootstrap interval of
  the change) and the invalid-call rate (paired bootstrap of a ratio of sums, see `invalid_call_change`)
  counts as better or worse only when its test excludes "no change" at 95%. "better": something is
  significantly better and nothing significantly worse; "worse": the reverse; "mixed": both;
  "indistinguishable": neither. `verdict_line` is the one line the pipeline prints last.
- `collapse_check(previous, new)` and `promote(...)`: the collapse guard between ladder stages. An adapter
  whose tool use fell, or whose invalid-call rate rose, beyond the paired 95% interval (the whole interval
  of the change on the wrong side of 0) is flagged, and the ladder keeps the previous adapter instead of
  promoting it (seed 000's SimPO run: tool use 100% -> 5%). So is one the paired verdict finds worse. When
  the paired tests cannot tell the two apart, the ladder keeps the better one by F1's point estimate on the
  paired questions, the input on a tie: a stage has to earn its place. (Measured at n=50 on HotpotQA, SimPO
  after RFT moved F1 16.3 -> 7.2, 95% CI [-19.0, +1.6]: "not worse by the test" is not a reason to end the
  ladder on it.) The decision reads the same eval questions it reports, so the kept adapter's number is the
  better of two and leans optimistic; every stage's own row is reported beside it.

Both take two `hopsmith.metrics.aggregate` outputs (a `metrics.json`); the tests are paired on the
questions both answered (`per_question`). Runs without per-question scores cannot be tested: the verdict
is "untested" and the guard promotes, saying why.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .metrics import bootstrap_ci, compare

ALPHA = 0.05
# (compare() key, label, +1 when a rise is better, -1 when a fall is)
_PAIRED_RATES = (("tool_use_rate", "tool use", +1), ("supporting_recall", "supporting recall", +1))
_ANSWERS = (("em", "EM", +1), ("f1", "F1", +1), ("acc", "cover-EM", +1))


def invalid_call_change(base: dict, tuned: dict, *, n_boot: int = 1000, seed: int = 0,
                        alpha: float = ALPHA) -> dict[str, Any] | None:
    """The change of the invalid-call rate (invalid calls / all calls, as `aggregate` reports it) with a
    paired-bootstrap interval: questions are resampled, and each side's rate recomputed on the resample as
    a ratio of sums (0 when a side made no call). None without per-question call counts."""
    pb, pt = base.get("per_question") or {}, tuned.get("per_question") or {}
    common = [q for q in pb if q in pt and "invalid_calls" in pb[q] and "invalid_calls" in pt[q]]
    if not common:
        return None
    arr = np.array([[pb[q]["tool_calls"], pb[q]["invalid_calls"], pt[q]["tool_calls"], pt[q]["invalid_calls"]]
                    for q in common], dtype=float)

    def rates(a: np.ndarray) -> np.ndarray:  # a: (..., n, 4) -> (..., 2): base rate, tuned rate
        calls, bad = a[..., [0, 2]].sum(axis=-2), a[..., [1, 3]].sum(axis=-2)
        return np.divide(bad, calls, out=np.zeros_like(bad), where=calls > 0)

    point = rates(arr)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(n_boot, len(common)))
    boot = rates(arr[idx])
    diffs = boot[:, 1] - boot[:, 0]
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return {"n": len(common), "base": float(point[0]), "tuned": float(point[1]),
            "delta": float(point[1] - point[0]), "lo": float(lo), "hi": float(hi), "test": "paired_bootstrap_ratio"}


def _direction(lo: float | None, hi: float | None) -> int:
    """+1 when the interval of a change lies above 0, -1 below, 0 when it holds 0 (or is unknown)."""
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


def significant_changes(base: dict, tuned: dict, *, n_boot: int = 1000, seed: int = 0,
                        alpha: float = ALPHA) -> dict[str, Any]:
    """Every tested metric's change: {label: {"delta", "test", "direction" (+1 better, -1 worse, 0 neither),
    ...}}, and "paired_n". Only what is significant at `alpha` gets a non-zero direction."""
    c = compare(base, tuned, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {"paired_n": c["paired_n"], "changes": {}}
    if not c["paired_n"]:
        return out
    for key, label, sign in _ANSWERS:
        p = c[key]["paired"]
        if p is None:
            continue
        if p.get("test") == "mcnemar_exact":
            moved = 0 if p["p"] >= alpha else (1 if p["tuned_only"] > p["base_only"] else -1)
            out["changes"][label] = {"delta": p["delta"], "test": f"McNemar p={p['p']:.3g}",
                                     "direction": sign * moved}
        else:
            out["changes"][label] = {"delta": p["delta"], "lo": p["lo"], "hi": p["hi"], "test": "paired bootstrap",
                                     "direction": sign * _direction(p["lo"], p["hi"])}
    for key, label, sign in _PAIRED_RATES:
        p = c[key]["paired"]
        if p is None or p.get("delta") is None:
            continue
        out["changes"][label] = {"delta": p["delta"], "lo": p["lo"], "hi": p["hi"], "test": "paired bootstrap",
                                 "direction": sign * _direction(p["lo"], p["hi"])}
    inv = invalid_call_change(base, tuned, n_boot=n_boot, seed=seed, alpha=alpha)
    if inv is not None:
        out["changes"]["invalid calls"] = {**inv, "direction": -_direction(inv["lo"], inv["hi"])}
    return out


def verdict(base: dict, tuned: dict, names: tuple[str, str] = ("base", "tuned"), **kw) -> dict[str, Any]:
    """{"verdict": better | worse | mixed | indistinguishable | untested, "better": [...], "worse": [...],
    "changes": {...}, "line": the one-line summary}."""
    s = significant_changes(base, tuned, **kw)
    better = [k for k, v in s["changes"].items() if v["direction"] > 0]
    worse = [k for k, v in s["changes"].items() if v["direction"] < 0]
    if not s["paired_n"]:
        word = "untested"
    elif better and worse:
        word = "mixed"
    elif better:
        word = "better"
    elif worse:
        word = "worse"
    else:
        word = "indistinguishable"
    result = {"verdict": word, "better": better, "worse": worse, **s}
    result["line"] = verdict_line(result, names)
    return result


def _change_text(label: str, ch: dict) -> str:
    text = f"{label} {100 * ch['delta']:+.1f}pt"
    if ch.get("lo") is not None:
        text += f" [{100 * ch['lo']:+.1f}, {100 * ch['hi']:+.1f}]"
    elif ch.get("test", "").startswith("McNemar"):
        text += f" ({ch['test']})"
    return text


def verdict_line(v: dict, names: tuple[str, str] = ("base", "tuned")) -> str:
    a, b = names
    if v["verdict"] == "untested":
        return f"verdict: {b} vs {a} untested: a run lacks per-question scores, so no paired test"
    head = {"better": f"{b} is BETTER than {a}", "worse": f"{b} is WORSE than {a}",
            "mixed": f"{b} is MIXED against {a} (better on some, worse on others)",
            "indistinguishable": f"{b} is INDISTINGUISHABLE from {a}"}[v["verdict"]]
    parts = []
    if v["better"]:
        parts.append("better on " + ", ".join(_change_text(k, v["changes"][k]) for k in v["better"]))
    if v["worse"]:
        parts.append("worse on " + ", ".join(_change_text(k, v["changes"][k]) for k in v["worse"]))
    if not parts:
        parts.append("no paired 95% test excludes no change")
    return f"verdict: {head} ({v['paired_n']} paired questions): " + "; ".join(parts)


def collapse_check(previous: dict, new: dict, *, changes: dict | None = None, **kw) -> dict[str, Any]:
    """{"flagged", "reasons", "tool_use", "invalid_calls"}: flagged when the new run's tool use fell, or its
    invalid-call rate rose, with the paired 95% interval of the change wholly on that side of 0. `changes`
    is `significant_changes` of the same two runs when the caller has it (the verdict computes it too)."""
    if changes is None:
        changes = significant_changes(previous, new, **kw)
    tool = changes["changes"].get("tool use")
    inv = changes["changes"].get("invalid calls")
    reasons = []
    if tool and tool.get("hi") is not None and tool["hi"] < 0:
        reasons.append(f"tool use fell {100 * previous['tool_use_rate']:.0f}% -> {100 * new['tool_use_rate']:.0f}% "
                       f"(change {100 * tool['delta']:+.1f}pt, paired 95% CI [{100 * tool['lo']:+.1f}, {100 * tool['hi']:+.1f}])")
    if inv and inv["lo"] > 0:
        reasons.append(f"invalid calls rose {100 * inv['base']:.1f}% -> {100 * inv['tuned']:.1f}% "
                       f"(change {100 * inv['delta']:+.1f}pt, paired 95% CI [{100 * inv['lo']:+.1f}, {100 * inv['hi']:+.1f}])")
    return {"flagged": bool(reasons), "reasons": reasons, "tested": bool(changes["paired_n"]),
            "tool_use": tool, "invalid_calls": inv}


def f1_change(previous: dict, new: dict, judged: dict) -> dict[str, Any] | None:
    """F1 of both runs and the change: on the paired questions, with the paired 95% interval ("lo", "hi") the
    verdict `judged` already computed, when both runs carry per-question scores; else the two runs' own means.
    None when a side has no F1."""
    paired = judged["changes"].get("F1")
    if paired is not None:
        pp, pn = previous["per_question"], new["per_question"]
        before = float(np.mean([pp[q]["f1"] for q in pp if q in pn]))
        return {"previous": before, "new": before + paired["delta"], "delta": paired["delta"],
                "lo": paired.get("lo"), "hi": paired.get("hi")}
    b, t = (previous.get("f1") or {}).get("mean"), (new.get("f1") or {}).get("mean")
    if b is None or t is None:
        return None
    return {"previous": b, "new": t, "delta": t - b}


def promote(previous_name: str, previous: dict, new_name: str, new: dict, *, must_earn: bool = True,
            on: str | None = None, **kw) -> dict[str, Any]:
    """The collapse guard's decision between a ladder stage's input and its output: {"kept": the name kept,
    "flagged", "reasons", "worse", "verdict" (the paired verdict's record), "line"}. The new adapter is kept
    unless `collapse_check` flags it, the paired verdict finds it worse than its input and better on
    nothing, or (with `must_earn`, for the stages after SFT) the verdict is not "better" and its F1 is not
    higher than its input's; then the ladder keeps the input. SFT over the base model goes without
    `must_earn`: it is what the ladder is for, and the stages after it continue an adapter. `on` names the
    questions the two runs are (the dev split, say), in the line."""
    judged = verdict(previous, new, (previous_name, new_name), **kw)
    check = collapse_check(previous, new, changes=judged, **kw)
    f1 = f1_change(previous, new, judged) if must_earn and judged["verdict"] != "better" else None
    tests = ("no paired test possible (a run lacks per-question scores)" if not check["tested"] else
             "the paired tests find it better" if judged["verdict"] == "better" else
             f"the paired tests cannot tell it from {previous_name}" if judged["verdict"] == "indistinguishable" else
             f"the paired tests find it better than {previous_name} on {', '.join(judged['better'])} and worse "
             f"on {', '.join(judged['worse'])}")
    head = f"collapse guard, on {on}" if on else "collapse guard"
    if check["flagged"]:
        kept = previous_name
        line = (f"{head}: {new_name} FLAGGED against {previous_name} ({'; '.join(check['reasons'])}); "
                f"the ladder keeps {previous_name}")
    elif judged["verdict"] == "worse":
        kept = previous_name
        line = (f"{head}: {new_name} not promoted: the paired tests find it worse than {previous_name} "
                f"on {', '.join(judged['worse'])} and better on nothing; the ladder keeps {previous_name}")
    elif f1 is not None and f1["delta"] <= 0:
        kept = previous_name
        interval = (f", change {100 * f1['delta']:+.1f}pt, paired 95% CI [{100 * f1['lo']:+.1f}, {100 * f1['hi']:+.1f}]"
                    if f1.get("lo") is not None else "")
        line = (f"{head}: {new_name} not promoted: {tests}, and its F1 is "
                f"{'the same' if f1['delta'] == 0 else 'lower'} ({100 * f1['previous']:.1f} -> {100 * f1['new']:.1f}"
                f"{interval}); the ladder keeps {previous_name}")
    else:
        kept = new_name
        why = ("it is not worse by the paired tests" if check["tested"] and judged["verdict"] != "better" and f1 is None
               else tests) + (", and its F1 is higher" if f1 is not None else "")
        if check["tested"]:
            why = ("tool use did not fall and invalid calls did not rise beyond the paired 95% CI, "
                   + ("and " if f1 is None else "") + why)
        line = f"{head}: {new_name} promoted over {previous_name}: {why}"
    return {"kept": kept, "previous": previous_name, "new": new_name, **check, "worse": judged["worse"],
            "verdict": {k: judged[k] for k in ("verdict", "better", "worse", "line", "paired_n")}, "line": line,
            **({"on": on} if on else {})}
