"""One self-contained HTML page per run, or per comparison of runs: numbers, plots and a trace viewer.

    hopsmith report runs/ladder                        # writes runs/ladder/report.html
    hopsmith report runs/base runs/tuned               # side by side; writes runs/base/report-compare.html
    hopsmith report runs/base runs/tuned --out cmp.html

A run directory is searched (three levels deep) for what the stages write: eval runs (`results.jsonl`
with `metrics.json`), training runs (`training.json` with `loss.json`, `log_history.json`, a checkpoint's
`trainer_state.json`, `behaviour.json`), the cost ledger (`cost.json`) and every stage's config. The page
holds the headline metrics with their intervals and n, by dataset, hop count and question type; the
comparisons (`hopsmith.metrics.compare`, with whatever paired statistics it returns); behaviour rates,
failure taxonomy and ceiling; training curves and collapse probes; the cost ledger; the configs; and a
trace viewer over every episode. Plots are matplotlib SVGs inlined in the page, the episodes are JSON
rendered by a small script (hopsmith/templates/report.js) on demand, so the page needs no network and
stays quick with thousands of episodes. Episode text is inserted as text, never as markup: a retrieved
paragraph cannot inject script into the page.
"""
from __future__ import annotations

import html
import inspect
import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics as M
from .io import _atomic_write, read_jsonl
from .tools.search import paragraph_label

TEMPLATES = Path(__file__).parent / "templates"
# Where a ladder's stages sit in its order (evals and training runs); other directories follow alphabetically.
LADDER_ORDER = ("eval-base", "sft", "eval-sft", "rft", "eval-rft", "mine", "pairs", "simpo", "eval-simpo", "dpo",
                "eval-dpo", "grpo", "eval-grpo")
_SKIP = {"checkpoints", "traces", "judged", "results", "extraction", "__pycache__", ".git", ".cache"}
_MAX_DEPTH = 3


class ReportError(ValueError):
    """Nothing to report, or a path that is not a run directory."""


@dataclass
class EvalRun:
    name: str
    path: Path
    rows: list[dict]
    metrics: dict
    config: dict | None


@dataclass
class TrainingRun:
    name: str
    path: Path
    kind: str  # sft | simpo | dpo | grpo | training
    summary: dict
    logs: list[dict]  # per-step log entries (loss, learning_rate, reward, kl, ...)
    probes: list[dict]  # collapse probes (behaviour.json)


@dataclass
class Collected:
    roots: list[Path]
    evals: list[EvalRun] = field(default_factory=list)
    trainings: list[TrainingRun] = field(default_factory=list)
    costs: list[tuple[str, dict]] = field(default_factory=list)
    configs: list[tuple[str, dict]] = field(default_factory=list)


# -- collecting ---------------------------------------------------------------------------------------

def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _walk(root: Path, depth: int = 0):
    yield root
    if depth >= _MAX_DEPTH:
        return
    children = [p for p in root.iterdir() if p.is_dir() and p.name not in _SKIP and not p.name.startswith(".")]

    def order(p: Path):
        return (LADDER_ORDER.index(p.name) if p.name in LADDER_ORDER else len(LADDER_ORDER), p.name)

    for child in sorted(children, key=order):
        yield from _walk(child, depth + 1)


def _training_logs(path: Path) -> list[dict]:
    """Every logged step: log_history.json, else the newest checkpoint's trainer_state.json, merged with
    loss.json by step (SFT's loss.json has no learning rate; its checkpoint's trainer state does)."""
    logs = _load_json(path / "log_history.json")
    if not isinstance(logs, list):
        def number(p: Path) -> int:
            tail = p.parent.name.rsplit("-", 1)[-1]
            return int(tail) if tail.isdigit() else -1

        states = sorted((path / "checkpoints").glob("checkpoint-*/trainer_state.json"), key=number)
        logs = (_load_json(states[-1]) or {}).get("log_history", []) if states else []
    by_step: dict[Any, dict] = {}
    for entry in logs:
        if isinstance(entry, dict) and "step" in entry and "train_runtime" not in entry:
            by_step.setdefault(entry["step"], {}).update(entry)
    for entry in _load_json(path / "loss.json") or []:
        if isinstance(entry, dict) and "step" in entry:
            merged = by_step.setdefault(entry["step"], {})
            for k, v in entry.items():
                merged.setdefault(k, v)
    return [by_step[s] for s in sorted(by_step, key=lambda s: (not isinstance(s, (int, float)), s))]


def _training_kind(summary: dict, name: str) -> str:
    cfg = summary.get("config") or {}
    if "groups" in summary or "num_generations" in cfg:
        return "grpo"
    if "pairs" in summary:
        return str(cfg.get("loss") or "simpo")
    if "traces" in summary or "lora_r" in cfg:
        return "sft"
    return name


def collect(run_dirs: list[str | Path]) -> Collected:
    roots = [Path(p) for p in run_dirs]
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory; give run directories written by hopsmith eval, "
                              "pipeline or a training stage")
    out = Collected(roots)
    prefix = len(roots) > 1
    for root in roots:
        for d in _walk(root):
            rel = d.relative_to(root).as_posix()
            name = (f"{root.name}/{rel}" if rel != "." else root.name) if prefix else (rel if rel != "." else d.name)
            results = d / "results.jsonl"
            if results.exists():
                rows = read_jsonl(results, repair=True)
                if rows:
                    saved = _load_json(d / "metrics.json")
                    metrics = saved if isinstance(saved, dict) and "acc" in saved else M.aggregate(rows)
                    out.evals.append(EvalRun(name, d, rows, metrics, _load_json(d / "config.json")))
            training = _load_json(d / "training.json")
            if isinstance(training, dict):
                kind = _training_kind(training, d.name)
                probes = _load_json(d / "behaviour.json")
                probes = probes if isinstance(probes, list) else ([probes] if isinstance(probes, dict) else [])
                out.trainings.append(TrainingRun(name, d, kind, training, _training_logs(d), probes))
                if isinstance(training.get("config"), dict):
                    out.configs.append((f"{name}/training.json: config ({kind})", training["config"]))
            cost = _load_json(d / "cost.json")
            if isinstance(cost, dict) and "stages" in cost:
                out.costs.append((name, cost))
            for fname in ("pipeline.json", "config.json", "judge_config.json"):
                cfg = _load_json(d / fname)
                if isinstance(cfg, dict):
                    out.configs.append((f"{name}/{fname}", cfg))
            for cfg_path in sorted((d / "traces").glob("config-*.json"))[:1]:
                cfg = _load_json(cfg_path)
                if isinstance(cfg, dict):
                    out.configs.append((f"{name}/traces/{cfg_path.name}", cfg))
    _unique_names(out.evals)
    _unique_names(out.trainings)
    if not (out.evals or out.trainings or out.costs):
        raise ReportError(f"nothing to report in {', '.join(map(str, roots))}: no results.jsonl, training.json "
                          "or cost.json within three levels; give the directory a hopsmith stage wrote")
    _attach_types(out.evals)
    return out


def _unique_names(items) -> None:
    seen: dict[str, int] = {}
    for it in items:
        if it.name in seen:
            seen[it.name] += 1
            it.name = f"{it.name} ({seen[it.name]})"
        else:
            seen[it.name] = 1


def _attach_types(evals: list[EvalRun]) -> None:
    """Question type of each row (MuSiQue 2hop/3hop1/..., HotpotQA bridge/comparison, 2Wiki's four), from
    the row when the loop wrote it, else from the question set the run's config names."""
    cache: dict[str, dict[str, str | None]] = {}
    for ev in evals:
        if all("type" in r for r in ev.rows):
            continue
        data = (ev.config or {}).get("data") or ev.metrics.get("data")
        if data not in cache:
            try:
                from .data import load_questions

                cache[data] = {q.id: q.type for q in load_questions(data)}
            except Exception:  # noqa: BLE001 - a moved or private data file only costs the type breakdown
                cache[data] = {}
        types = cache[data]
        for r in ev.rows:
            r.setdefault("type", types.get(r.get("question_id")))


# -- numbers ------------------------------------------------------------------------------------------

def _breakdown(ev: EvalRun, field_name: str, key: str) -> dict[str, dict]:
    saved = ev.metrics.get(key)
    if isinstance(saved, dict) and saved:
        return saved
    grouped = getattr(M, "_grouped", None)
    if grouped is None or not any(r.get(field_name) is not None for r in ev.rows):
        return {}
    cfg = ev.config or {}  # the run's own bootstrap settings, so these intervals match its metrics.json
    return grouped(ev.rows, field_name, int(cfg.get("bootstrap") or 1000), int(cfg.get("seed") or 0))


def comparable(evals: list[EvalRun]) -> list[EvalRun]:
    """The evals over the same questions as the first one (a paired comparison needs the same questions)."""
    if not evals:
        return []
    ids = {r["question_id"] for r in evals[0].rows}
    return [ev for ev in evals if {r["question_id"] for r in ev.rows} == ids]


def compare_runs(base: EvalRun, tuned: EvalRun) -> dict:
    """`hopsmith.metrics.compare` of two evals. When compare takes the result rows (for paired tests:
    McNemar, paired bootstrap), they are passed by the names its signature gives them."""
    params = [p for p in inspect.signature(M.compare).parameters if "row" in p]
    kwargs = dict(zip(params, (base.rows, tuned.rows))) if len(params) == 2 else {}
    return M.compare(base.metrics, tuned.metrics, **kwargs)


def comparisons(evals: list[EvalRun]) -> list[tuple[EvalRun, EvalRun, dict]]:
    """Each comparable eval against the first; along a ladder of three or more, each step as well."""
    same = comparable(evals)
    pairs = [(same[0], ev) for ev in same[1:]]
    pairs += [(a, b) for a, b in zip(same[1:], same[2:])]
    return [(a, b, compare_runs(a, b)) for a, b in pairs]


def outcome(row: dict) -> str:
    return M.failure_kind(row) or "correct"


# -- plots (matplotlib, inline SVG) -----------------------------------------------------------------------

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
_plot_count = 0


def _figure(width: float = 6.4, height: float = 3.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _svg(fig, title: str) -> str:
    """The figure as an inline <svg>; text stays text, and ids get a per-figure salt so that several
    figures in one page never share a clip-path or marker id."""
    import matplotlib

    global _plot_count
    _plot_count += 1
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"hopsmith-{_plot_count}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    label = html.escape(title, quote=True)
    return f'<figure class="plot" data-title="{label}">{text}<figcaption>{html.escape(title)}</figcaption></figure>'


def _ci_err(blocks: list[dict]) -> list[list[float]]:
    lo = [max(0.0, b["mean"] - b["lo"]) if _num(b.get("lo")) and _num(b.get("mean")) else 0.0 for b in blocks]
    hi = [max(0.0, b["hi"] - b["mean"]) if _num(b.get("hi")) and _num(b.get("mean")) else 0.0 for b in blocks]
    return [[100 * x for x in lo], [100 * x for x in hi]]


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))


def _grouped_bars(groups: list[str], series: list[tuple[str, list[dict | None]]], title: str, ylabel: str = "%",
                  width: float = 6.4) -> str:
    """Bars per group and series, values in [0, 1] shown as %, with CI whiskers when the blocks have lo/hi."""
    import numpy as np

    fig = _figure(width, 2.8)
    ax = fig.add_subplot()
    k = max(1, len(series))
    w = 0.8 / k
    x = np.arange(len(groups))
    for i, (name, blocks) in enumerate(series):
        vals = [100 * b["mean"] if b and _num(b.get("mean")) else 0.0 for b in blocks]
        errs = _ci_err([b if b else {"mean": 0.0} for b in blocks])
        has_ci = any(b and _num(b.get("lo")) for b in blocks)
        ax.bar(x + (i - (k - 1) / 2) * w, vals, w, label=name, color=_COLORS[i % len(_COLORS)],
               yerr=errs if has_ci else None, capsize=3, error_kw={"elinewidth": 1})
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    if k > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig, title)


def plot_headline(evals: list[EvalRun]) -> str:
    keys = [k for k in _answer_keys() if all(isinstance(ev.metrics.get(k), dict) for ev in evals)]
    return _grouped_bars([_LABELS.get(k, k) for k in keys], [(ev.name, [ev.metrics[k] for k in keys]) for ev in evals],
                         "Answer metrics with 95% intervals")


def plot_breakdown(evals: list[EvalRun], per_eval: list[dict[str, dict]], what: str) -> str:
    groups = sorted({g for b in per_eval for g in b}, key=M._natural if hasattr(M, "_natural") else str)
    series = [(ev.name, [b.get(g, {}).get("em") for g in groups]) for ev, b in zip(evals, per_eval)]
    return _grouped_bars(groups, series, f"Exact match by {what} (95% intervals)")


def plot_behaviour(evals: list[EvalRun]) -> str:
    import numpy as np

    keys = [k for k, _ in _RATES if any(_num(ev.metrics.get(k)) for ev in evals)]
    fig = _figure(6.4, 0.5 + 0.32 * len(keys) * max(1, len(evals)) ** 0.5)
    ax = fig.add_subplot()
    y = np.arange(len(keys))
    h = 0.8 / max(1, len(evals))
    for i, ev in enumerate(evals):
        vals = [100 * (ev.metrics.get(k) or 0.0) for k in keys]
        ax.barh(y + (i - (len(evals) - 1) / 2) * h, vals, h, label=ev.name, color=_COLORS[i % len(_COLORS)])
    ax.set_yticks(y, [dict(_RATES)[k] for k in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("%")
    ax.grid(axis="x", alpha=0.3)
    if len(evals) > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig, "Behaviour rates")


def plot_failures(evals: list[EvalRun]) -> str:
    fig = _figure(6.4, 0.6 + 0.45 * len(evals))
    ax = fig.add_subplot()
    names = [ev.name for ev in evals]
    left = [0] * len(evals)
    for i, kind in enumerate(M.FAILURE_KINDS):
        counts = [(ev.metrics.get("failures") or {}).get(kind, 0) for ev in evals]
        ax.barh(names, counts, left=left, label=_KIND_LABELS.get(kind, kind), color=_KIND_COLORS.get(kind, "#937860"))
        left = [a + b for a, b in zip(left, counts)]
    correct = [round((ev.metrics["acc"]["mean"] or 0) * ev.metrics["n"]) for ev in evals]
    ax.barh(names, correct, left=left, label="correct", color="#cfe8cf")
    ax.invert_yaxis()
    ax.set_xlabel("episodes")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig, "Failure taxonomy (episodes)")


def plot_ceiling(evals: list[EvalRun]) -> str:
    parts = ("retrieval", "extraction", "ceiling", "actual")
    series = [(ev.name, [{"mean": (ev.metrics.get("ceiling") or {}).get(p) or 0.0} for p in parts]) for ev in evals]
    return _grouped_bars(list(parts), series, "Ceiling = retrieval x extraction, and the accuracy reached")


def plot_curves(t: TrainingRun) -> str | None:
    """Loss and learning rate (every trainer); reward and KL (GRPO, when logged); one panel each."""
    panels = []
    for key, label in (("loss", "loss"), ("learning_rate", "learning rate"), ("reward", "reward"), ("kl", "KL"),
                       ("rewards/margins", "reward margin (chosen - rejected)")):
        pts = [(e["step"], e[key]) for e in t.logs if _num(e.get(key)) and _num(e.get("step"))]
        if pts:
            panels.append((label, pts))
    if not panels:
        return None
    from matplotlib.ticker import MaxNLocator

    fig = _figure(3.2 * min(len(panels), 3), 2.5 * math.ceil(len(panels) / 3))
    for i, (label, pts) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / 3), min(len(panels), 3), i + 1)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, markersize=3,
                color=_COLORS[i % len(_COLORS)])
        ax.set_title(label, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    kind = f" ({t.kind})" if t.kind != Path(t.name).name else ""
    return _svg(fig, f"{t.name}{kind}: training curves")


def plot_probes(t: TrainingRun) -> str | None:
    keys = [k for k in ("tool_use_rate", "answered_without_search_rate", "query_diversity", "correct_rate")
            if any(_num(p.get(k)) for p in t.probes)]
    if len(t.probes) < 1 or not keys:
        return None
    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    steps = [p.get("step") if _num(p.get("step")) else i for i, p in enumerate(t.probes)]
    for i, k in enumerate(keys):
        ax.plot(steps, [100 * (p.get(k) or 0.0) for p in t.probes], marker="o", markersize=3, label=_SHORT.get(k, k),
                color=_COLORS[i % len(_COLORS)])
    for flag in t.summary.get("collapse") or []:
        if _num(flag.get("step")):
            ax.axvline(flag["step"], color="#c44e52", linestyle="--", linewidth=1)
    ax.set_ylim(-5, 105)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _svg(fig, f"{t.name}: collapse probes (dashed: collapse flagged)")


def plot_cost(name: str, cost: dict) -> str | None:
    stages = cost.get("stages") or {}
    if not stages:
        return None
    fig = _figure(6.4, 0.6 + 0.4 * len(stages))
    ax = fig.add_subplot()
    ax.barh(list(stages), [s.get("usd") or 0.0 for s in stages.values()], color=_COLORS[0])
    ax.invert_yaxis()
    ax.set_xlabel("USD")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, f"{name}: cost per stage")


# -- HTML -------------------------------------------------------------------------------------------------

# "acc" is containment of the gold answer, which the literature calls cover-EM; EM and F1 lead.
_LABELS = {"acc": "cover-EM (acc)", "em": "exact match", "f1": "F1"}


def _answer_keys() -> list[str]:
    return sorted(M.ANSWER_METRICS, key=lambda k: ("em", "f1", "acc").index(k) if k in ("em", "f1", "acc") else 3)
_RATES = (("tool_use_rate", "tool use"), ("invalid_call_rate", "invalid calls (of calls)"),
          ("answered_without_search_rate", "answered without search"), ("no_final_answer_rate", "no final answer"),
          ("answered_at_cap_rate", "answered at the turn cap"), ("supporting_recall", "supporting recall"),
          ("retrieval_success", "all supporting found"), ("query_diversity", "distinct queries"),
          ("query_wordiness", "query words"))
_SHORT = {"tool_use_rate": "tool use", "invalid_call_rate": "invalid", "answered_without_search_rate": "no search",
          "no_final_answer_rate": "no answer", "answered_at_cap_rate": "at cap", "supporting_recall": "sup. recall",
          "retrieval_success": "all sup.", "query_diversity": "diversity", "query_wordiness": "wordiness",
          "correct_rate": "correct"}
_KIND_LABELS = {"search_failure": "search failure", "extraction_failure": "extraction failure",
                "no_final_answer": "no final answer", "other": "other wrong"}
_COUNTS = (("avg_tool_calls", "tool calls / episode"), ("avg_turns", "turns / episode"))
# The trace viewer's badges use the same colours (templates/report.css).
_KIND_COLORS = {"search_failure": "#dd8452", "extraction_failure": "#8172b3", "no_final_answer": "#9aa3ae",
                "other": "#c44e52"}
# Keys of a compare() entry that are its sides, not paired statistics about them.
_SIDE_KEYS = {"base", "tuned", "delta"}


def _row(*parts: str) -> str:
    return '<div class="row">' + "".join(f"<div>{p}</div>" for p in parts if p) + "</div>"


def _e(x: Any) -> str:
    return html.escape(str(x))


def pct(x: Any, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%" if _num(x) else "n/a"


def ci_text(b: dict | None) -> str:
    if not isinstance(b, dict) or not _num(b.get("mean")):
        return "n/a"
    bounds = f" [{100 * b['lo']:.1f}, {100 * b['hi']:.1f}]" if _num(b.get("lo")) and _num(b.get("hi")) else ""
    return f"{pct(b['mean'])}{bounds}"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escaped by the caller)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _headline_table(evals: list[EvalRun]) -> str:
    head = ["", *(_e(ev.name) for ev in evals)]
    rows = [["questions (n)", *(_e(ev.metrics.get("n")) for ev in evals)],
            ["model", *(_e(ev.metrics.get("model", "")) for ev in evals)],
            ["prompt", *(_e(_setup(ev)) for ev in evals)]]
    for k in _answer_keys():
        blocks = [ev.metrics.get(k) or {} for ev in evals]
        rows.append([_e(_LABELS.get(k, k)), *(f"{_e(ci_text(b))} <small>n={_e(b.get('n'))}</small>" for b in blocks)])
    return _table(head, rows, "numbers")


def _setup(ev: EvalRun) -> str:
    """The prompt setup of a run, said beside its numbers: one-shot or not, thinking, the turn cap."""
    if ev.metrics.get("setup") and hasattr(M, "describe_setup"):
        return M.describe_setup(ev.metrics["setup"])
    cfg = ev.config
    if not cfg:
        return "n/a"
    shots = "one-shot example" if cfg.get("few_shot") else "no example"
    return f"{shots}, thinking {'on' if cfg.get('thinking') else 'off'}, at most {cfg.get('max_turns', '?')} turns"


def _breakdown_table(evals: list[EvalRun], per_eval: list[dict[str, dict]], what: str) -> str:
    groups = sorted({g for b in per_eval for g in b}, key=M._natural if hasattr(M, "_natural") else str)
    head = [_e(what), *(_e(ev.name) for ev in evals)]
    rows = []
    for g in groups:
        cells = []
        for b in per_eval:
            block = b.get(g)
            if not block:
                cells.append("")
                continue
            f1, cover = pct((block.get("f1") or {}).get("mean")), pct((block.get("acc") or {}).get("mean"))
            cells.append(f"EM {_e(ci_text(block.get('em')))} "
                         f"<small>n={_e(block.get('n'))} · F1 {_e(f1)} · cover-EM {_e(cover)}</small>")
        rows.append([_e(g), *cells])
    return _table(head, rows, "numbers")


def _behaviour_table(evals: list[EvalRun]) -> str:
    head = ["", *(_e(ev.name) for ev in evals)]
    rows = [[_e(label), *(_e(f"{ev.metrics[k]:.2f}") if _num(ev.metrics.get(k)) else "n/a" for ev in evals)]
            for k, label in _COUNTS]
    rows += [[_e(label), *(_e(pct(ev.metrics.get(k))) for ev in evals)] for k, label in _RATES]
    lat = [(ev.metrics.get("latency") or {}) for ev in evals]
    rows.append(["latency / episode (p50)",
                 *(_e(f"{x['episode_p50_s']:.2f} s") if _num(x.get("episode_p50_s")) else "n/a" for x in lat)])
    return _table(head, rows, "numbers")


def _failure_table(evals: list[EvalRun]) -> str:
    head = ["share of wrong answers", *(_e(ev.name) for ev in evals)]
    rows = []
    for kind in M.FAILURE_KINDS:
        counts = [(ev.metrics.get("failures") or {}).get(kind, 0) for ev in evals]
        rates = [(ev.metrics.get("failure_rates") or {}).get(kind) for ev in evals]
        rows.append([_e(_KIND_LABELS.get(kind, kind)),
                     *(f"{_e(c)} <small>({_e(pct(r))})</small>" for c, r in zip(counts, rates))])
    return _table(head, rows, "numbers")


def _ceiling_table(evals: list[EvalRun]) -> str:
    head = ["", *(_e(ev.name) for ev in evals)]
    cs = [ev.metrics.get("ceiling") or {} for ev in evals]
    def source(c: dict, part: str) -> str:
        n = f", n={c['extraction_n']}" if part == "extraction" and c.get("extraction_n") is not None else ""
        return f"{_e(pct(c.get(part)))} <small>{_e(c.get(part + '_source', ''))}{_e(n)}</small>"

    rows = [["retrieval", *(source(c, "retrieval") for c in cs)],
            ["extraction", *(source(c, "extraction") for c in cs)],
            ["ceiling", *(_e(pct(c.get("ceiling"))) for c in cs)],
            ["actual accuracy", *(_e(pct(c.get("actual"))) for c in cs)],
            ["share of ceiling reached", *(f"<b>{_e(pct(c.get('share_of_ceiling')))}</b>" for c in cs)]]
    return _table(head, rows, "numbers")


def _is_count(key: str) -> bool:
    return key.startswith(("avg_", "mean_"))


def _fmt_value(v: Any, key: str = "") -> str:
    if isinstance(v, dict) and "mean" in v:
        return ci_text(v)
    if isinstance(v, bool) or not _num(v):
        return "n/a" if v is None else str(v)
    return f"{v:.2f}" if _is_count(key) else pct(v)


def _fmt_delta(d: Any, key: str = "") -> str:
    if isinstance(d, bool) or not _num(d):
        return ""
    if isinstance(d, int) and key == "failures":
        return f"{d:+d}"
    return f"{d:+.2f}" if _is_count(key) else f"{100 * d:+.1f} pt"


def _interval(lo: Any, hi: Any, key: str) -> str:
    if _is_count(key):
        return f"[{lo:+.2f}, {hi:+.2f}]"
    return f"[{100 * lo:+.1f}, {100 * hi:+.1f}] pt"


def _paired_parts(stats: dict, key: str) -> list[str]:
    """compare()'s paired block of one metric: {n, delta, lo, hi} (a paired bootstrap of the per-question
    difference), plus for EM and cover-EM {test: "mcnemar_exact", p, base_only, tuned_only}."""
    parts = []
    p = stats.get("p", stats.get("p_value"))
    if _num(p):
        name = "McNemar exact" if stats.get("test") == "mcnemar_exact" else str(stats.get("test") or "test")
        counts = (f" ({stats['base_only']} right in base only, {stats['tuned_only']} in tuned only)"
                  if "base_only" in stats and "tuned_only" in stats else "")
        parts.append(f"{name} p = {p:.3g}{counts}")
    if _num(stats.get("lo")) and _num(stats.get("hi")):
        n = f", n={stats['n']}" if stats.get("n") is not None else ""
        parts.append(f"paired 95% CI {_interval(stats['lo'], stats['hi'], key)}{n}")
    return parts


def paired_text(entry: dict, key: str = "") -> str:
    """The paired statistics compare() gives for one metric, whatever their shape: a nested `paired` block
    (p-value, interval of the paired difference), flat fields (p_value, diff_ci, test, ...), or only the
    CI-overlap mark of an older compare()."""
    parts = []
    for k, v in entry.items():
        if k in _SIDE_KEYS or v is None:
            continue
        if k == "paired" and isinstance(v, dict):
            parts += _paired_parts(v, key)
        elif k == "ci_overlap":
            parts.append("95% CIs overlap" if v else "95% CIs do not overlap")
        elif k in ("p_value", "p") and _num(v):
            parts.append(f"p = {v:.3g}")
        elif isinstance(v, dict) and {"lo", "hi"} <= set(v) and _num(v["lo"]) and _num(v["hi"]):
            parts.append(f"{k.replace('_', ' ')} {_interval(v['lo'], v['hi'], key)}")
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(x) for x in v):
            parts.append(f"{k.replace('_', ' ')} {_interval(v[0], v[1], key)}")
        elif isinstance(v, (str, int, float, bool)):
            parts.append(f"{k.replace('_', ' ')}: {f'{v:.3g}' if isinstance(v, float) else v}")
    return "; ".join(parts)


def _significant(entry: dict) -> bool:
    """p < 0.05, or a paired interval of the difference that excludes 0, or (older compare) CIs apart."""
    paired = entry.get("paired") if isinstance(entry.get("paired"), dict) else {}
    p = paired.get("p", entry.get("p_value", entry.get("p")))
    if _num(p):
        return p < 0.05
    lo, hi = paired.get("lo"), paired.get("hi")
    if _num(lo) and _num(hi):
        return lo > 0 or hi < 0
    return entry.get("ci_overlap") is False


# compare() keys shown elsewhere in the page, or not metrics (the prompt setups, the paired count)
_COMPARE_SKIP = {"n", "failure_rates", "setup", "paired_n"}


def render_comparisons(evals: list[EvalRun], comps: list[tuple[EvalRun, EvalRun, dict]]) -> str:
    """One table: every metric compare() returned, each compared eval's value, and for each compared pair
    the change with its paired statistics (p-value, interval of the difference) beneath. All comparison
    rendering is here, so a richer compare() needs changes in this one place only."""
    values: dict[tuple[str, int], Any] = {}
    keys: list[str] = []
    for a, b, comp in comps:
        for key, entry in comp.items():
            if key in _COMPARE_SKIP or not isinstance(entry, dict) or not {"base", "tuned"} <= set(entry):
                continue
            if key not in keys:
                keys.append(key)
            values[(key, id(a))] = entry["base"]
            values[(key, id(b))] = entry["tuned"]
    head = ["", *(_e(ev.name) for ev in evals), *(f"{_e(a.name)} → {_e(b.name)}" for a, b, _ in comps)]
    rows = [["questions", *(_e(ev.metrics.get("n")) for ev in evals), *("" for _ in comps)]]
    for key in keys:
        label = _LABELS.get(key) or dict(_RATES).get(key) or dict(_COUNTS).get(key) or key.replace("_", " ")
        sample = next(v for (k, _), v in values.items() if k == key)
        if isinstance(sample, dict) and "mean" not in sample:  # one row per kind: the failure taxonomy
            for kind in sample:
                cells = [_e(_fmt_value((values.get((key, id(ev))) or {}).get(kind), key) if key != "failures"
                            else (values.get((key, id(ev))) or {}).get(kind, "")) for ev in evals]
                deltas = [_e(_fmt_delta((comp[key].get("delta") or {}).get(kind), key)) for _, _, comp in comps]
                rows.append([f"{_e(label)}: {_e(_KIND_LABELS.get(kind, kind))}", *cells, *deltas])
            continue
        cells = [_e(_fmt_value(values.get((key, id(ev))), key)) if (key, id(ev)) in values else "" for ev in evals]
        deltas = []
        for _, _, comp in comps:
            entry = comp.get(key) or {}
            cls = ' class="sig"' if _significant(entry) else ""
            paired = paired_text(entry, key)
            deltas.append(f"<span{cls}>{_e(_fmt_delta(entry.get('delta'), key))}</span>"
                          + (f"<br><small>{_e(paired)}</small>" if paired else ""))
        rows.append([_e(label), *cells, *deltas])
    notes = []
    for a, b, comp in comps:
        if "paired_n" in comp:
            notes.append(f"{_e(a.name)} → {_e(b.name)}: " + (
                f"paired over the {comp['paired_n']} questions both answered" if comp["paired_n"] is not None else
                "not paired: these metrics.json files carry no per-question scores (rerun the evals to test)"))
    foot = "".join(f'<p class="note">{n}</p>' for n in notes)
    return _table(head, rows, "numbers compare") + foot


def _training_section(trainings: list[TrainingRun]) -> str:
    parts = []
    for t in trainings:
        s = t.summary
        facts = []
        for k in ("steps", "traces", "pairs", "pairs_used", "train_loss", "seconds", "too_long_dropped",
                  "stopped_early", "stopped_on_collapse"):
            if k in s:
                v = f"{s[k]:.3g}" if isinstance(s[k], float) else s[k]
                facts.append(f"{k.replace('_', ' ')}: {v}")
        if isinstance(s.get("groups"), dict):
            facts.append("groups " + ", ".join(f"{k} {v}" for k, v in s["groups"].items()))
        curve = plot_curves(t)
        probes = plot_probes(t)
        notes = []
        if t.kind == "grpo" and not any("kl" in e for e in t.logs):
            notes.append("KL is not logged: this GRPO runs with beta = 0 (no reference model), as TRL's default does.")
        if not curve:
            notes.append("No per-step log found (loss.json, log_history.json or a checkpoint's trainer_state.json).")
        flags = s.get("collapse") or []
        flag_html = ""
        if flags:
            items = "".join(f"<li>step {_e(f.get('step'))}: {_e('; '.join(f.get('reasons') or []))}</li>"
                            for f in flags)
            flag_html = f'<div class="warn"><b>Collapse flagged</b><ul>{items}</ul></div>'
        probe_table = ""
        if t.probes:
            keys = [k for k in ("n", "tool_use_rate", "answered_without_search_rate", "query_diversity",
                                "query_wordiness", "mean_turns", "mean_searches", "reward_mean", "correct_rate")
                    if any(k in p for p in t.probes)]
            rows = [[_e(p.get("step", i)), *(_e(_fmt_value(p.get(k)) if k.endswith(("rate", "diversity", "wordiness"))
                                               else (f"{p[k]:.3g}" if _num(p.get(k)) else p.get(k, ""))) for k in keys)]
                    for i, p in enumerate(t.probes)]
            probe_table = "<details><summary>collapse probes, every row</summary>" + _table(
                ["step", *(_e(k.replace("_", " ")) for k in keys)], rows, "numbers") + "</details>"
        kind = f" <small>({_e(t.kind)})</small>" if t.kind != Path(t.name).name else ""
        parts.append(f'<div class="card"><h3>{_e(t.name)}{kind}</h3>'
                     f'<p class="facts">{_e(" · ".join(facts))}</p>{curve or ""}{probes or ""}{flag_html}{probe_table}'
                     + "".join(f'<p class="note">{_e(n)}</p>' for n in notes) + "</div>")
    return "".join(parts)


def _cost_section(costs: list[tuple[str, dict]], evals: list[EvalRun]) -> str:
    parts = []
    for name, cost in costs:
        stages = cost.get("stages") or {}
        rows = [[_e(s), _e(v.get("gpu") or "CPU"), _e(v.get("containers")), _e(f"{v.get('seconds', 0):.0f}"),
                 _e(f"{v['tokens_per_second']:.0f}") if _num(v.get("tokens_per_second")) else "",
                 _e(f"${v.get('usd', 0):.3f}")] for s, v in stages.items()]
        total = cost.get("total_usd") or 0.0
        rows.append(["<b>total</b>", "", "", "", "", f"<b>{_e(f'${total:.3f}')}</b>"])
        per = cost.get("usd_per_correct_answer")
        line = (f"<p>Per correct answer: <b>${per:.4f}</b> ({_e(cost.get('correct_answers'))} correct answers)</p>"
                if _num(per) else "<p>Per correct answer: n/a (the ledger records no correct answers)</p>")
        rates = cost.get("rates") or {}
        parts.append(f'<div class="card"><h3>{_e(name)}</h3>' + _table(
            ["stage", "GPU", "containers", "seconds", "tokens/s", "USD"], rows, "numbers")
            + line + (plot_cost(name, cost) or "") + (f'<p class="note">Prices of {_e(rates.get("date"))} '
                                                     "(hopsmith/cost.py).</p>" if rates else "") + "</div>")
    if not parts:
        return ('<p class="note">No cost ledger: local runs cost only your machine\'s time. Cloud runs write '
                "<code>cost.json</code> (per stage, per container, per correct answer).</p>")
    return "".join(parts)


def _config_section(configs: list[tuple[str, dict]]) -> str:
    return "".join(f"<details><summary>{_e(name)}</summary>"
                   f"<pre>{_e(json.dumps(cfg, indent=1, default=str))}</pre></details>"
                   for name, cfg in configs) or '<p class="note">No configs found.</p>'


# -- episodes for the trace viewer ---------------------------------------------------------------------------

def episodes_payload(evals: list[EvalRun]) -> dict:
    """Every episode as compact JSON for report.js; system prompts are stored once and referenced."""
    systems: list[str] = []
    system_index: dict[str, int] = {}
    episodes = []
    same = {id(ev) for ev in comparable(evals)}
    for r_i, ev in enumerate(evals):
        for row in ev.rows:
            msgs = []
            for m in row.get("messages") or []:
                if m.get("role") == "system":
                    text = m.get("content") or ""
                    if text not in system_index:
                        system_index[text] = len(systems)
                        systems.append(text)
                    msgs.append({"role": "system", "ref": system_index[text]})
                else:
                    msgs.append({k: m[k] for k in ("role", "content", "name", "tool_calls") if k in m})
            episodes.append({
                "r": r_i, "id": row.get("question_id"), "q": row.get("question", ""), "a": row.get("answers") or [],
                "p": row.get("prediction"), "o": outcome(row), "h": row.get("hops"), "t": row.get("type"),
                "ds": row.get("dataset"), "stop": row.get("stop"), "turns": row.get("turns"),
                "calls": [{k: c.get(k) for k in ("name", "arguments", "valid", "error")}
                          for c in row.get("tool_calls") or []],
                "sup": [paragraph_label(p) for p in row.get("supporting_ids") or []],
                "ret": [paragraph_label(p) for p in row.get("retrieved_ids") or []],
                "m": msgs, "s": row.get("seconds"), "f1": (row.get("metrics") or {}).get("f1"),
            })
    return {"runs": [{"name": ev.name, "paired": id(ev) in same} for ev in evals], "systems": systems,
            "episodes": episodes}


def _json_for_script(obj: Any) -> str:
    # "<" never appears unescaped, so no "</script>" or "<!--" in the data can end the script element.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).replace("<", "\\u003c")


# -- the page -----------------------------------------------------------------------------------------------

def render(c: Collected) -> str:
    evals = c.evals
    sections: list[tuple[str, str, str]] = []  # (id, title, html)
    if evals:
        sections.append(("summary", "Headline", _row(_headline_table(evals), plot_headline(evals))))
        bd = []
        for field_name, key, what in (("dataset", "by_dataset", "dataset"), ("hops", "by_hops", "hop count"),
                                      ("type", "by_type", "question type")):
            per_eval = [_breakdown(ev, field_name, key) for ev in evals]
            if any(per_eval):
                plot = plot_breakdown(evals, per_eval, what) if sum(len(b) for b in per_eval) > len(evals) else ""
                bd.append(f"<h3>By {what}</h3>" + _row(_breakdown_table(evals, per_eval, what), plot))
        sections.append(("breakdown", "By dataset, hops and type", "".join(bd)))
        comps = comparisons(evals)
        if comps:
            other = [ev.name for ev in evals if ev not in comparable(evals)]
            note = (f'<p class="note">Not compared (other questions than {_e(evals[0].name)}): '
                    f'{_e(", ".join(other))}.</p>' if other else "")
            sections.append(("compare", "Comparison", render_comparisons(comparable(evals), comps) + note))
        sections.append(("behaviour", "Behaviour", _row(_behaviour_table(evals), plot_behaviour(evals))))
        sections.append(("failures", "Failures and ceiling", _row(_failure_table(evals), plot_failures(evals))
                         + "<h3>Ceiling</h3>" + _row(_ceiling_table(evals), plot_ceiling(evals))))
    if c.trainings:
        sections.append(("training", "Training", _training_section(c.trainings)))
    sections.append(("cost", "Cost", _cost_section(c.costs, evals)))
    sections.append(("config", "Configs", _config_section(c.configs)))
    if evals:
        sections.append(("traces", "Traces", '<div id="trace-viewer"></div>'))
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>' for sid, title, content in sections)
    title = "hopsmith report: " + ", ".join(r.name for r in c.roots)
    css = (TEMPLATES / "report.css").read_text()
    js = (TEMPLATES / "report.js").read_text()
    data = _json_for_script(episodes_payload(evals)) if evals else "null"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    roots = ", ".join(str(r) for r in c.roots)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            f"<title>{_e(title)}</title><style>{css}</style></head><body>"
            f'<header><h1>{_e(title)}</h1><p class="note">{_e(roots)} · written {_e(stamp)} by '
            f"<code>hopsmith report</code></p><nav>{nav}</nav></header><main>{body}</main>"
            f'<script type="application/json" id="episodes-data">{data}</script>'
            f"<script>{js}</script></body></html>")


def default_out(run_dirs: list[str | Path]) -> Path:
    first = Path(run_dirs[0])
    return first / ("report.html" if len(run_dirs) == 1 else "report-compare.html")


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Collect the runs, render the page, write it atomically; returns its path."""
    c = collect(run_dirs)
    path = Path(out) if out else default_out(run_dirs)
    page = render(c)
    _atomic_write(path, lambda f: f.write(page))
    path.chmod(0o644)  # a page to open and share, unlike the temp file's private default
    return path


def try_write_report(run_dirs: list[str | Path], log=None) -> Path | None:
    """write_report for the stages: a run's results are already saved, so a report that cannot be written
    is a warning naming why, never a lost run."""
    try:
        return write_report(run_dirs)
    except Exception as exc:  # noqa: BLE001 - the report is a view of saved files; keep the stage's outcome
        print(f"hopsmith: warning: report.html not written for {run_dirs[0]}: {exc}", file=log or sys.stderr)
        return None
