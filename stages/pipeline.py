"""The training ladder as one command: base eval -> traces -> judge -> SFT -> tuned eval -> comparison.

    hopsmith pipeline --out runs/ladder                 # the local preset: minutes on a laptop CPU
    hopsmith pipeline --preset full --out runs/full     # seed 000's recipe, where the hardware allows

Every stage writes under the run root and resumes, so an interrupted ladder continues where it stopped:
`eval-base/`, `traces/`, `judged/`, `kept.jsonl`, `train.jsonl` (the traces SFT used), `sft/` (the adapter),
`eval-sft/`, and `comparison.json` / `comparison.txt` (base vs tuned, every metric with its CI, the failure
taxonomy side by side). Training questions come from the `train` split and evaluation from `eval`; the
leakage guard refuses any overlap.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from hopsmith.config import EvalConfig
from hopsmith.io import read_jsonl, write_json, write_jsonl

# The local preset trades recipe size for minutes: few eval questions, few traces, shorter paragraphs.
PRESETS = {
    "local": dict(eval_limit=12, train_limit=None, max_traces=24, epochs=2.0, learning_rate=1e-3,
                  max_turns=6, max_new_tokens=96, max_chars=300, top_k=3, max_length=1536),
    "full": dict(eval_limit=None, train_limit=None, max_traces=None, epochs=3.0, learning_rate=2e-4,
                 max_turns=20, max_new_tokens=512, max_chars=None, top_k=5, max_length=4096),
}


@dataclass(frozen=True)
class PipelineConfig:
    data: str = "musique"
    model: str = "embedded"
    preset: str = "local"  # local | full; keys below left unset take the preset's value
    eval_limit: int | None = None
    train_limit: int | None = None
    max_traces: int | None = None  # SFT on at most this many kept traces (sampled evenly over types)
    judge: str | None = None  # backend spec for the LLM judge; rules only when unset
    sft_preset: str = "seed000"
    epochs: float | None = None
    learning_rate: float | None = None
    max_length: int | None = None
    max_turns: int | None = None
    max_new_tokens: int | None = None
    max_chars: int | None = None
    top_k: int | None = None
    thinking: bool = False
    batch_size: int = 16
    seed: int = 0

    def resolved(self) -> "PipelineConfig":
        from hopsmith.config import ConfigError

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown pipeline preset {self.preset!r}; known: {', '.join(PRESETS)}")
        preset = PRESETS[self.preset]
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


def eval_config(cfg: PipelineConfig, *, adapter: str | None = None) -> EvalConfig:
    return EvalConfig(data=cfg.data, split="eval", limit=cfg.eval_limit, model=cfg.model, adapter=adapter,
                      batch_size=cfg.batch_size, max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens,
                      thinking=cfg.thinking, few_shot=adapter is None, top_k=cfg.top_k, max_chars=cfg.max_chars,
                      seed=cfg.seed)


def sample_traces(traces: list[dict], n: int | None, seed: int) -> list[dict]:
    """At most n traces, round-robin over sources so every trace type is represented."""
    if n is None or len(traces) <= n:
        return traces
    rng = random.Random(seed)
    by_source: dict[str, list[dict]] = {}
    for t in traces:
        by_source.setdefault(t.get("source", "?"), []).append(t)
    for group in by_source.values():
        rng.shuffle(group)
    picked: list[dict] = []
    while len(picked) < n:
        for source in sorted(by_source):
            if by_source[source] and len(picked) < n:
                picked.append(by_source[source].pop())
    return picked


def run(cfg: PipelineConfig, root: str | Path, *, log=print) -> dict:
    from hopsmith.metrics import compare, format_comparison, format_table
    from stages import evaluate, judge, sft, traces

    cfg = cfg.resolved()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "pipeline.json", {"kind": "PipelineConfig", **cfg.__dict__})

    log("[1/5] base model eval")
    base = evaluate.run(eval_config(cfg), root / "eval-base")
    log(format_table(base))

    log("[2/5] synthetic traces from the train split")
    t_summary = traces.run(traces.TracesConfig(data=cfg.data, split="train", limit=cfg.train_limit,
                                               top_k=cfg.top_k, max_chars=cfg.max_chars, seed=cfg.seed,
                                               # traces think exactly when the evaluated agent does
                                               thinking_fraction=1.0 if cfg.thinking else 0.0), root)
    log(f"      {t_summary['traces']} traces {t_summary['by_type']}, {t_summary['skipped']['count']} type/question "
        f"pairs skipped (details in traces/summary-0.json)")

    log("[3/5] judge (rules" + (f" + {cfg.judge})" if cfg.judge else ")"))
    j_summary = judge.run(judge.JudgeConfig(judge=cfg.judge), root)
    kept = read_jsonl(root / "kept.jsonl")
    train = sample_traces(kept, cfg.max_traces, cfg.seed)
    write_jsonl(root / "train.jsonl", train)
    log(f"      kept {len(kept)} of {j_summary.get('traces', '?')} traces; training on {len(train)}")

    log("[4/5] LoRA SFT")
    s_summary = sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), model=cfg.model, preset=cfg.sft_preset,
                                      epochs=cfg.epochs, learning_rate=cfg.learning_rate, max_length=cfg.max_length,
                                      seed=cfg.seed), root / "sft")
    log(f"      {s_summary['steps']} steps on {s_summary['traces']} traces ({s_summary['too_long_dropped']} too long),"
        f" mean loss {s_summary['train_loss']:.3f}, {s_summary['seconds']:.0f} s")

    log("[5/5] tuned eval")
    tuned = evaluate.run(eval_config(cfg, adapter=str(root / "sft")), root / "eval-sft")
    text = format_comparison(base, tuned, names=("base", "sft"))
    (root / "comparison.txt").write_text(text + "\n")
    result = {"base": base, "sft": tuned, "comparison": compare(base, tuned), "traces": t_summary,
              "judge": j_summary, "sft_training": s_summary}
    write_json(root / "comparison.json", result)
    log(text)
    return result
