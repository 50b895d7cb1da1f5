"""Scoring the enterprise agent the way seed 002 cut its results: by category, by expected action, as a
confusion matrix, think-vs-action consistency, and the four judge dimensions.

Seed 002's 70.7% overall hid a 96% / 14% split between categories, and 97% on call_tool beside 1% on
clarify; its `<think>` said "clarify" in 77 of 98 clarification failures. Every number here is a share
of episodes with a 95% Wilson interval (sound at n=20 and at 0% or 100%, where a normal interval
collapses), so a per-category table of 20 cases says how little it knows.

    from hopsmith.envs.enterprise_scoring import summarize, format_report
    print(format_report(summarize(rows)))     # rows from hopsmith.agent.enterprise.run_enterprise_episodes
"""
from __future__ import annotations

import math
from collections import Counter

from ..metrics import mean_ci
from .enterprise import ACTIONS, CATEGORIES

TAKEN = (*ACTIONS, "none")  # "none": no valid action before the episode ended
JUDGE_DIMENSIONS = ("decision_correctness", "reasoning_depth", "execution_quality", "restraint")
_SHORT = {"call_tool": "call_tool", "answer_directly": "answer", "clarify": "clarify", "escalate": "escalate",
          "refuse": "refuse", "none": "none"}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials; (nan, nan) for n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else math.nan, "lo": lo, "hi": hi}


def _block(rows: list[dict]) -> dict:
    n = len(rows)
    named = [r for r in rows if r.get("think_names")]
    return {"n": n,
            "correct": rate(sum(bool(r["correct"]) for r in rows), n),
            "exact": rate(sum(bool(r["exact"]) for r in rows), n),
            "trajectory": rate(sum(bool(r["trajectory"]) for r in rows), n),
            "think_named": len(named),
            "think_mismatch": rate(sum(bool(r["think_mismatch"]) for r in rows), n)}


def _judge_block(rows: list[dict], n_boot: int, seed: int) -> dict | None:
    judged = [r["judge"] for r in rows if isinstance(r.get("judge"), dict)]
    ok = [j for j in judged if j.get("verdict") != "judge_error" and all(d in j for d in JUDGE_DIMENSIONS)]
    if not judged:
        return None
    out = {"n": len(ok), "errors": len(judged) - len(ok)}
    for d in (*JUDGE_DIMENSIONS, "composite"):
        out[d] = mean_ci([j[d] for j in ok], n_boot=n_boot, seed=seed) if ok else None
    return out


def summarize(rows: list[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every table's numbers for a list of episode rows, as a JSON-serialisable dict."""
    if not rows:
        raise ValueError("no episodes to summarize")
    out = {"episodes": len(rows), **_block(rows)}
    cats = [c for c in CATEGORIES if any(r["category"] == c for r in rows)]
    cats += sorted({r["category"] for r in rows} - set(cats))
    out["by_category"] = {c: _block([r for r in rows if r["category"] == c]) for c in cats}
    out["by_action"] = {}
    out["confusion"] = {}
    for a in ACTIONS:
        mine = [r for r in rows if r["expected_action"] == a]
        taken = Counter(r["taken_action"] for r in mine)
        out["confusion"][a] = {t: taken.get(t, 0) for t in TAKEN}
        if not mine:
            continue
        wrong = [(t, k) for t, k in taken.most_common() if t != a]
        out["by_action"][a] = {**_block(mine), "most_common_wrong": (
            {"action": wrong[0][0], "count": wrong[0][1], "share": wrong[0][1] / len(mine)} if wrong else None)}
    mismatches = Counter((tuple(r["think_names"]), r["taken_action"]) for r in rows if r.get("think_mismatch"))
    out["think_mismatch_pairs"] = [{"think": list(k[0]), "taken": k[1], "count": v} for k, v in mismatches.most_common()]
    out["taken_share"] = {t: sum(r["taken_action"] == t for r in rows) / len(rows) for t in TAKEN}
    out["plain_text_rate"] = sum(bool(r.get("plain_text")) for r in rows) / len(rows)
    out["direct_call_rate"] = sum(bool(r.get("direct_call")) for r in rows) / len(rows)
    out["invalid_turns_per_episode"] = sum(int(r.get("invalid_turns") or 0) for r in rows) / len(rows)
    out["turns_per_episode"] = sum(int(r.get("turns") or 0) for r in rows) / len(rows)
    out["stops"] = dict(Counter(r.get("stop") or "?" for r in rows))
    judge = _judge_block(rows, n_boot, seed)
    if judge:
        out["judge"] = judge
        out["judge_by_category"] = {c: _judge_block([r for r in rows if r["category"] == c], n_boot, seed) for c in cats}
    return out


# -- printing -------------------------------------------------------------------------------------------

def _pct(x: float) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}%"


def _ci(r: dict) -> str:
    if r["n"] == 0:
        return " " * 14
    return f"[{100 * r['lo']:5.1f},{100 * r['hi']:5.1f}]"


def format_report(s: dict) -> str:
    """The summary as plain-text tables (each line within 80 columns)."""
    lines = [f"decision accuracy {_pct(s['correct']['rate'])} {_ci(s['correct'])}  n={s['n']}   "
             f"exact {_pct(s['exact']['rate']).strip()}   path {_pct(s['trajectory']['rate']).strip()}", ""]
    lines.append(f"{'category':<28}{'n':>4}{'correct':>8}  {'95% CI':<14}{'exact':>7}{'path':>7}{'think≠act':>10}")
    for c, b in s["by_category"].items():
        lines.append(f"{c[:28]:<28}{b['n']:>4}{_pct(b['correct']['rate']):>8}  {_ci(b['correct']):<14}"
                     f"{_pct(b['exact']['rate']):>7}{_pct(b['trajectory']['rate']):>7}"
                     f"{str(b['think_mismatch']['k']) + '/' + str(b['think_named']):>10}")
    lines += ["", f"{'expected action':<17}{'n':>5}{'correct':>9}  {'95% CI':<14}  most common wrong"]
    for a, b in s["by_action"].items():
        w = b["most_common_wrong"]
        wrong = f"{_SHORT[w['action']]} {w['count']} ({100 * w['share']:.0f}%)" if w else "-"
        lines.append(f"{a:<17}{b['n']:>5}{_pct(b['correct']['rate']):>9}  {_ci(b['correct']):<14}  {wrong}")
    lines += ["", "confusion (rows: expected action, columns: action taken)",
              f"{'':<17}" + "".join(f"{_SHORT[t]:>10}" for t in TAKEN)]
    for a in ACTIONS:
        row = s["confusion"][a]
        if sum(row.values()):
            lines.append(f"{a:<17}" + "".join(f"{row[t]:>10}" for t in TAKEN))
    named = sum(b["think_named"] for b in s["by_category"].values())
    k = s["think_mismatch"]["k"]
    lines += ["", f"think vs action: {k} of {s['n']} episodes ({_pct(s['think_mismatch']['rate']).strip()}) took "
                  "another action than", f"  the one their <think> names ({k} of {named} whose <think> names one)"]
    for p in s["think_mismatch_pairs"][:6]:
        lines.append(f"  think says {'/'.join(p['think'])}, took {p['taken']}: {p['count']}")
    lines += [f"plain-text replies {_pct(s['plain_text_rate']).strip()}, direct business calls "
              f"{_pct(s['direct_call_rate']).strip()}",
              f"invalid turns/episode {s['invalid_turns_per_episode']:.2f}, turns/episode {s['turns_per_episode']:.2f}, "
              "stops " + ", ".join(f"{k} {v}" for k, v in sorted(s["stops"].items()))]
    j = s.get("judge")
    if j:
        lines += ["", f"judge (1-5; n={j['n']}, {j['errors']} judge errors)   mean   95% CI"]
        for d in (*JUDGE_DIMENSIONS, "composite"):
            m = j[d]
            if m:
                lines.append(f"  {d:<34}{m['mean']:5.2f}   [{m['lo']:.2f}, {m['hi']:.2f}]")
        lines.append("  composite by category:")
        for c, b in s["judge_by_category"].items():
            if b and b.get("composite"):
                m = b["composite"]
                lines.append(f"    {c:<32}{m['mean']:5.2f}   [{m['lo']:.2f}, {m['hi']:.2f}]  n={m['n']}")
    return "\n".join(lines)
