"""Seed 000's orchestrator x extractor matrix: every agent model with every `llm_query` extractor, one eval per cell.

    hopsmith matrix --orchestrators embedded --extractors embedded,served=openai:M@http://127.0.0.1:8000/v1 \\
        --data musique --limit 20 --out runs/matrix
    hopsmith matrix --orchestrators Qwen/Qwen3-1.7B?adapter=runs/ladder/sft,Qwen/Qwen3-1.7B \\
        --extractors self,gemini:gemini-2.5-flash --out runs/matrix
    modal run app.py::matrix --orchestrators Qwen/Qwen3-1.7B --extractors self,gemini:gemini-2.5-flash

Rows are orchestrators (the agent, `--model` of `hopsmith eval`), columns extractors (`--extractor`): any
backend spec each (`hopsmith.backends.factory`), `label=spec` to name one in the table; a column may be
`self` (each row's own model, adapter included: seed 000's setup A) or `none` (no llm_query tool). A row's
diagonal is its `self` column, or the column whose spec builds the same model as the row; each cell is
compared with its row's diagonal question by question (`hopsmith.metrics.compare`: McNemar's exact test
for EM and cover-EM, the paired-bootstrap interval for F1). A row without a diagonal column is shown without
differences (add its own spec, or `self`, to --extractors).

Writes under the run root:
- `cells/<row>__<col>/`: a complete `hopsmith eval` run directory per cell (config.json with the backends
  and how tool specs reached the agent, results.jsonl, extraction.jsonl, metrics.json). A rerun resumes each
  cell where it stopped and skips the complete ones without loading anything.
- `extraction/<col>.jsonl`: each extractor's standalone extraction benchmark (each hop's gold sub-question on
  its gold paragraph), run once per column and given to the column's cells, whose ceiling (oracle
  retrieval x extraction) it sets. A `self` column's benchmark depends on the row: each cell runs its own.
- `matrix.json` and `matrix.txt`: the table.
Each model is loaded (or contacted and checked) once for the whole matrix. In the cloud the columns'
benchmarks, then the cells, fan out one container each (`stages/cloud.run_matrix`).

Every cell is a `hopsmith eval` run, made by the library's `hopsmith.evaluation` as the eval stage makes it.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hopsmith import evaluation as evaluate
from hopsmith.agent.backends import agent_backends, cached_backend
from hopsmith.backends.factory import parse_spec, split_specs
from hopsmith.ceiling import extraction_benchmark, extraction_items
from hopsmith.config import ConfigError, EvalConfig, flat_fields, to_dict, update
from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.metrics import answer_summary, compare
from hopsmith.tools.extract import Extractor
from hopsmith.runlock import locked

SPECIAL_EXTRACTORS = ("self", "none")


@dataclass(frozen=True)
class MatrixConfig:
    """`hopsmith matrix`: orchestrators x extractors, one eval per cell (the eval knobs are EvalConfig's)."""

    orchestrators: str = "embedded"  # comma-separated agent specs; label=spec names one
    extractors: str = "self"  # comma-separated extractor specs, or self / none; label=spec names one
    data: str = "musique"
    split: str | None = "eval"
    limit: int | None = 20
    corpus: str | None = None
    pool_size: int = 400
    pool_seed: int = 0
    batch_size: int = 16
    max_turns: int = 20
    max_new_tokens: int = 256
    temperature: float = 0.0
    thinking: bool = False
    few_shot: bool = True
    top_k: int = 5
    max_chars: int | None = 600
    max_context_tokens: int = 8192
    answer_at_cap: bool = True
    tools_in_prompt: bool = False
    bootstrap: int = 1000
    seed: int = 0
    allow_leakage: bool = False
    drop_leakage: bool = False

    def __post_init__(self):
        rows, cols = axis(self.orchestrators, "orchestrators"), axis(self.extractors, "extractors")
        for label, spec in rows:
            if spec in SPECIAL_EXTRACTORS:
                raise ConfigError(f"MatrixConfig.orchestrators: {spec!r} is an extractor setting, not a model")

    @property
    def rows(self) -> list[tuple[str, str]]:
        return axis(self.orchestrators, "orchestrators")

    @property
    def cols(self) -> list[tuple[str, str]]:
        return axis(self.extractors, "extractors")


_LABEL = re.compile(r"^([A-Za-z][\w.-]*)=(?!=)(.+)$")


def auto_label(spec: str) -> str:
    """A short name for a spec in the table: the model's last path part, the host of a served one."""


    if spec in SPECIAL_EXTRACTORS:
        return spec
    s = parse_spec(spec)
    name = s.model.rstrip("/").rsplit("/", 1)[-1] or s.model
    if s.base_url:
        name += "@" + (urlparse(s.base_url).netloc or s.base_url)
    if s.options.get("adapter"):
        name += "+" + Path(s.options["adapter"]).name
    return name


def axis(text: str, what: str) -> list[tuple[str, str]]:
    """`A,B,label=C` -> [(label, spec)], labels unique; every spec parsed (a bad one is a ConfigError)."""
    out: list[tuple[str, str]] = []
    for item in split_specs(text or ""):
        m = _LABEL.match(item)
        label, spec = (m.group(1), m.group(2)) if m and ":" not in m.group(1) else (None, item)
        if spec not in SPECIAL_EXTRACTORS:
            try:
                parse_spec(spec)
            except ConfigError as exc:
                raise ConfigError(f"--{what}: {exc}") from None
        label = label or auto_label(spec)
        taken = {lab for lab, _ in out}
        base, k = label, 2
        while label in taken:
            label, k = f"{base}-{k}", k + 1
        out.append((label, spec))
    if not out:
        raise ConfigError(f"MatrixConfig.{what}: give at least one backend spec")
    return out


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "x"


def cell_dir(root: Path, cfg: MatrixConfig, i: int, j: int) -> Path:
    return Path(root) / "cells" / f"{slug(cfg.rows[i][0])}__{slug(cfg.cols[j][0])}"


def extraction_path(root: Path, cfg: MatrixConfig, j: int) -> Path:
    return Path(root) / "extraction" / f"{slug(cfg.cols[j][0])}.jsonl"


def cell_config(cfg: MatrixConfig, i: int, j: int) -> EvalConfig:
    """Cell (i, j)'s eval config: the matrix's eval knobs, row i's agent, column j's extractor."""
    names = set(flat_fields(EvalConfig))
    shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
    return update(EvalConfig(), model=cfg.rows[i][1], extractor=cfg.cols[j][1],
                  extraction_bench=cfg.cols[j][1] != "none", **shared)


def diagonal(cfg: MatrixConfig, i: int) -> int | None:
    """The column of row i's diagonal cell: `self`, or the column whose spec builds the row's own model."""
    row = parse_spec(cfg.rows[i][1])
    for j, (_, spec) in enumerate(cfg.cols):
        if spec == "self" or (spec != "none" and parse_spec(spec).same_model(row)):
            return j
    return None


def _questions(ecfg: EvalConfig):
    questions, _ = evaluate.load_eval_questions(ecfg)
    questions, _ = evaluate.check_leakage(ecfg, questions, quiet=True)
    return questions


def complete_cell(cfg: MatrixConfig, root: Path, i: int, j: int) -> dict | None:
    """The cell's metrics when its run directory already holds every question of this config, else None."""
    d, ecfg = cell_dir(root, cfg, i, j), cell_config(cfg, i, j)
    if not (d / "metrics.json").exists() or not (d / "config.json").exists():
        return None
    evaluate.check_run_dir(d, ecfg)  # another configuration's cell is refused, not reused
    metrics = json.loads((d / "metrics.json").read_text())
    done = set(metrics.get("per_question") or {})
    return metrics if {q.id for q in _questions(ecfg)} <= done else None


def extraction_column(cfg: MatrixConfig, root: Path, j: int, *, cache: dict | None = None) -> dict | None:
    """Column j's extraction benchmark into `extraction/<col>.jsonl` (skipped when complete); its summary.
    None for a `self` or `none` column (no benchmark of its own) or a data set without decompositions."""

    spec = cfg.cols[j][1]
    if spec in SPECIAL_EXTRACTORS:
        return None
    ecfg = cell_config(cfg, 0, j)
    questions, _ = evaluate.load_eval_questions(ecfg)
    items = extraction_items(questions)
    if not items:
        return None
    path = extraction_path(root, cfg, j)
    rows = read_jsonl(path)
    if {(r["question_id"], r["hop"]) for r in rows} != {(it["question_id"], it["hop"]) for it in items}:
        backend = cached_backend({} if cache is None else cache, "extractor", parse_spec(spec), batch_size=cfg.batch_size)
        rows = extraction_benchmark(questions, Extractor(backend), n_boot=10, seed=cfg.seed)["rows"]
        write_jsonl(path, rows)
    return answer_summary([r["metrics"] for r in rows], n_boot=cfg.bootstrap, seed=cfg.seed)


def run_cell(cfg: MatrixConfig, root: Path, i: int, j: int, *, engine: str = "hf", cache: dict | None = None,
             progress: bool = False) -> dict:
    """One cell: its eval run (resumed where it stopped; a complete one is read, nothing loaded); its metrics."""
    done = complete_cell(cfg, root, i, j)
    if done is not None:
        return done
    ecfg, d = cell_config(cfg, i, j), cell_dir(root, cfg, i, j)
    evaluate.check_run_dir(d, ecfg)
    backend, extractor = agent_backends(ecfg.agent, engine=engine, cache=cache)
    column = extraction_path(root, cfg, j)
    if column.exists() and not (d / "extraction.jsonl").exists():
        # The column's benchmark, run once: the cell's eval reads it instead of running it again.
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(column, d / "extraction.jsonl")
    return evaluate.run(ecfg, d, backend=backend, extractor=extractor, progress=progress)


@locked
def run(cfg: MatrixConfig, root: str | Path, *, progress: bool = True, log=None) -> dict:
    """Every column's benchmark, then every cell, in this process (each model loaded once); the table."""
    root = Path(root)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    cache: dict = {}
    extraction = {}
    for j, (label, _) in enumerate(cfg.cols):
        summary = extraction_column(cfg, root, j, cache=cache)
        if summary is not None:
            extraction[label] = summary
    cells = {}
    for i, (row, _) in enumerate(cfg.rows):
        for j, (col, _) in enumerate(cfg.cols):
            log(f"matrix: cell {row} x {col}")
            cells[(i, j)] = run_cell(cfg, root, i, j, cache=cache, progress=progress)
    return finish(cfg, root, cells, extraction)


def finish(cfg: MatrixConfig, root: Path, cells: dict, extraction: dict | None = None) -> dict:
    """The table from every cell's metrics (and the columns' benchmark summaries), into matrix.json/.txt."""
    summary = summarise(cfg, cells, extraction or {})
    write_json(Path(root) / "matrix.json", summary)
    text = format_matrix(summary)
    (Path(root) / "matrix.txt").write_text(text + "\n")
    return summary


# -- the table -----------------------------------------------------------------------------------------

def _point(m: dict) -> dict:
    return {k: m[k] for k in ("mean", "lo", "hi", "n")}


def summarise(cfg: MatrixConfig, cells: dict, extraction: dict) -> dict:
    """Per cell: EM, F1, cover-EM with their intervals, the ceiling, how tools reached the agent, and the
    paired differences against the row's diagonal (`hopsmith.metrics.compare`)."""
    out = {"config": to_dict(cfg), "rows": [r for r, _ in cfg.rows], "cols": [c for c, _ in cfg.cols],
           "specs": {"rows": dict(cfg.rows), "cols": dict(cfg.cols)}, "cells": {}, "extraction": extraction}
    for (i, j), m in sorted(cells.items()):
        row, col = cfg.rows[i][0], cfg.cols[j][0]
        diag = diagonal(cfg, i)
        cell = {"row": row, "col": col, "n": m["n"], **{k: _point(m[k]) for k in ("em", "f1", "acc")},
                "ceiling": m.get("ceiling"), "backends": m.get("backends"),
                "diagonal": None if diag is None else cfg.cols[diag][0], "vs_diagonal": None}
        if diag is not None and diag != j and (i, diag) in cells:
            c = compare(cells[(i, diag)], m, n_boot=cfg.bootstrap, seed=cfg.seed)
            cell["vs_diagonal"] = {"paired_n": c["paired_n"],
                                   **{k: {"delta": c[k]["delta"], "paired": c[k]["paired"]} for k in ("em", "f1", "acc")}}
        out["cells"][f"{row} x {col}"] = cell
    return out


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(m: dict, unit: str = "%") -> str:
    if m["lo"] is None or m["lo"] != m["lo"]:  # NaN for n = 0
        return f"{_pct(m['mean'])}{unit}"
    return f"{_pct(m['mean'])}{unit} [{_pct(m['lo'])}, {_pct(m['hi'])}]"


def _diff(key: str, d: dict) -> str:
    p = d["paired"]
    delta = "n/a" if d["delta"] is None else f"{100 * d['delta']:+.1f}pt"
    if not p:
        return f"{key} {delta}"
    if p.get("test") == "mcnemar_exact":
        return f"{key} {delta} (McNemar p = {p['p']:.3f})"
    lo, hi = p.get("lo"), p.get("hi")
    interval = "" if lo is None else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{key} {delta}{interval}"


def format_matrix(s: dict) -> str:
    """The summary as text: the EM / F1 / cover-EM grid, then each cell's intervals, difference against its
    row's diagonal and ceiling, then each extractor's benchmark and how tool specs reached each agent."""
    cfg = s["config"]
    rows, cols = s["rows"], s["cols"]
    width = max(22, *(len(c) + 2 for c in cols))
    label_w = max(24, *(len(r) + 2 for r in rows))
    lines = [f"orchestrator x extractor matrix: {cfg['data']} ({cfg['split'] or 'all'} split, limit {cfg['limit']}); "
             "rows: the agent, columns: its llm_query extractor",
             "", f"{'EM / F1 / cover-EM (%)':<{label_w}}" + "".join(f"{c:>{width}}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            cell = s["cells"].get(f"{r} x {c}")
            cells.append("-" if cell is None else
                         f"{_pct(cell['em']['mean'])} / {_pct(cell['f1']['mean'])} / {_pct(cell['acc']['mean'])}")
        lines.append(f"{r:<{label_w}}" + "".join(f"{x:>{width}}" for x in cells))
    lines.append("")
    for name, cell in s["cells"].items():
        diag = " (diagonal)" if cell["diagonal"] == cell["col"] else ""
        lines.append(f"{name}{diag}: EM {_ci(cell['em'])}  F1 {_ci(cell['f1'], '')}  cover-EM {_ci(cell['acc'])}"
                     f"  n={cell['n']}")
        if cell["vs_diagonal"]:
            v = cell["vs_diagonal"]
            lines.append(f"  vs {cell['row']} x {cell['diagonal']}: " + ", ".join(
                _diff(label, v[key]) for key, label in (("em", "EM"), ("f1", "F1"), ("acc", "cover-EM")))
                + f"; n={v['paired_n']} paired")
        elif cell["diagonal"] is None:
            lines.append(f"  no diagonal cell for {cell['row']}: add its spec (or self) to --extractors to compare")
        c = cell.get("ceiling") or {}
        if c.get("ceiling") is not None:
            share = "" if c.get("share_of_ceiling") is None else f"; reached {100 * c['share_of_ceiling']:.0f}% of it"
            lines.append(f"  ceiling {_pct(c['ceiling'])}% = retrieval {_pct(c['retrieval'])}% x extraction "
                         f"{_pct(c['extraction'])}% ({c['extraction_source']}){share}")
    if s["extraction"]:
        lines += ["", "extraction benchmark (each hop's gold sub-question on its gold paragraph), per extractor:"]
        for col, e in s["extraction"].items():
            lines.append(f"  {col:<{label_w - 2}}EM {_ci(e['em'])}  F1 {_ci(e['f1'], '')}  cover-EM {_ci(e['acc'])}"
                         f"  n={e['em']['n']} hops")
    tools = {}
    for cell in s["cells"].values():
        agent = (cell.get("backends") or {}).get("agent")
        if agent and cell["row"] not in tools:
            detail = f" ({agent['tools_detail']})" if agent.get("tools_detail") else ""
            tools[cell["row"]] = f"{agent['tools']}{detail}"
    if tools:
        lines += ["", "tool specs reached each agent by:"] + [f"  {r}: {t}" for r, t in tools.items()]
    return "\n".join(lines)
