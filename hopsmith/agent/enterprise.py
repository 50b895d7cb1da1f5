"""The episode driver of the enterprise environment: every live case takes its turn together.

Per turn: one `backend.generate` call for all live conversations, each reply parsed by the Hermes format
(`<tool_call>` blocks, `<think>` kept), the first call read as one of the five actions, and the
environment's answer appended (a simulated tool result, the scripted caller's reply to a clarifying
question, or the closing note of a final action). An episode ends on answer_directly, escalate or
refuse, at the 16-turn cap, or when its prompt outgrows the context. This is the enterprise
environment's own small loop; once the agent loop takes an environment as input
(`run_episodes(questions, make_env, backend, cfg)`), `EnterpriseEnv` plugs into that instead.

    python -m hopsmith.agent.enterprise --model embedded --per-category 2 --out runs/enterprise
    python -m hopsmith.agent.enterprise --model embedded --judge gemini:gemini-2.5-flash --out runs/enterprise

writes `results.jsonl` (one episode a line) and `metrics.json` into `--out`, and prints the per-category
table, the per-action table, the confusion matrix, think-vs-action consistency and (with `--judge`)
seed 002's four judge dimensions.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..backends import Backend
from ..backends.factory import make_backend
from ..envs.enterprise import EnterpriseEnv, action_schemas, read_reply
from ..envs.enterprise_cases import load_cases
from ..envs.enterprise_scoring import format_report, summarize
from ..io import write_json, write_jsonl
from .format import IMITATION_RE, ActionFormat, HermesFormat, strip_thinking, thinking_of


@dataclass(frozen=True)
class EnterpriseConfig:
    max_turns: int = 16  # seed 002's conversations run up to 16 turns
    max_new_tokens: int = 384
    temperature: float = 0.0
    thinking: bool = False
    seed: int = 0  # the tool simulator's seed (which error wording, cut position, generated ids)
    max_context_tokens: int = 8192
    batch_size: int = 16


def _body(text: str) -> str:
    """A reply's own words: thinking removed, cut where it starts imitating a tool reply or a new turn."""
    body = strip_thinking(text)
    cut = IMITATION_RE.search(body)
    return body[: cut.start()] if cut else body


def run_enterprise_episodes(cases: Iterable, backend: Backend, cfg: EnterpriseConfig = EnterpriseConfig(), *,
                            action_format: ActionFormat | None = None,
                            on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every case, `cfg.batch_size` live at a time; return the scored rows in the order they ended."""
    fmt = action_format or HermesFormat()
    pending = list(cases)
    live: list[tuple[EnterpriseEnv, dict]] = []
    rows: list[dict] = []
    tools = action_schemas()

    def admit():
        while pending and len(live) < cfg.batch_size:
            env = EnterpriseEnv(pending.pop(0), seed=cfg.seed, thinking=cfg.thinking, max_turns=cfg.max_turns)
            live.append((env, {"prompt": 0, "completion": 0, "started": time.perf_counter()}))

    admit()
    while live:
        gens = backend.generate([env.messages for env, _ in live], tools=tools, max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, thinking=cfg.thinking, stop=["</tool_call>", "<tool_response>"])
        if len(gens) != len(live):
            raise RuntimeError(f"backend returned {len(gens)} replies for {len(live)} conversations")
        for (env, stats), gen in zip(live, gens):
            stats["prompt"] += gen.prompt_tokens
            stats["completion"] += gen.completion_tokens
            if gen.overflow or gen.prompt_tokens > cfg.max_context_tokens:
                env.end("context_overflow")
                continue
            action = fmt.parse(gen.text)
            env.messages.append(fmt.assistant_message(gen.text, action))
            act = read_reply([(c.name, c.arguments, c.error) for c in action.calls], body=_body(gen.text),
                             thinking=thinking_of(gen.text))
            env.step(act)
        still = []
        for env, stats in live:
            if not env.done:
                still.append((env, stats))
                continue
            row = env.result()
            row.update(tokens={"prompt": stats["prompt"], "completion": stats["completion"]},
                       seconds=time.perf_counter() - stats["started"], model=getattr(backend, "name", "?"),
                       seed=cfg.seed, thinking=cfg.thinking)
            rows.append(row)
            if on_done:
                on_done(row)
        live = still
        admit()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the enterprise agent (seed 002's five actions) on the bundled cases.")
    ap.add_argument("--model", default="embedded", help="backend spec (embedded, a model dir, openai:..., gemini:...)")
    ap.add_argument("--adapter", help="LoRA adapter directory (local models)")
    ap.add_argument("--cases", help="a JSONL case file (default: the bundled 280 cases)")
    ap.add_argument("--categories", help="comma-separated categories (default: all 14)")
    ap.add_argument("--per-category", type=int, help="only the first N cases of each category")
    ap.add_argument("--thinking", action="store_true", help="ask for <think> before each action")
    ap.add_argument("--max-turns", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", help="backend spec of the LLM judge for the four dimensions (default: none)")
    ap.add_argument("--out", default="runs/enterprise")
    args = ap.parse_args(argv)
    try:
        cases = load_cases(args.cases, categories=args.categories.split(",") if args.categories else None,
                           per_category=args.per_category)
    except (ValueError, FileNotFoundError) as exc:
        print(f"hopsmith enterprise: error: {exc}", file=sys.stderr)
        return 2
    local = not args.model.startswith(("openai:", "gemini:"))
    kw = {"batch_size": args.batch_size, **({"adapter": args.adapter} if args.adapter else {})} if local else {}
    backend = make_backend(args.model, **kw)
    cfg = EnterpriseConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, thinking=args.thinking,
                           seed=args.seed, batch_size=args.batch_size)
    print(f"enterprise: {len(cases)} cases with {args.model} -> {args.out}", file=sys.stderr)
    rows = run_enterprise_episodes(cases, backend, cfg)
    order = {c.id: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: order[r["case_id"]])
    if args.judge:
        # The judge module sits a floor above this loop (it builds on hopsmith.judge), hence the late import.
        from ..enterprise_judge import EpisodeJudge

        for row, verdict in zip(rows, EpisodeJudge(make_backend(args.judge)).judge_many(rows)):
            row["judge"] = verdict
    out = Path(args.out)
    write_jsonl(out / "results.jsonl", rows)
    summary = summarize(rows)
    summary["config"] = {**asdict(cfg), "model": args.model, "adapter": args.adapter, "judge": args.judge}
    write_json(out / "metrics.json", summary)
    print(format_report(summary))
    print(f"\nwrote {out}/results.jsonl, {out}/metrics.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
