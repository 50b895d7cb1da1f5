"""Agent traces for SFT: synthetic traces of the LoRA multi-hop recipe's five types, the always-search recipe's
ASP filters for teacher traces, and the sampling that picks which train. The stage that writes them is
`stages/traces.py`:

    hopsmith traces --root runs/ladder --data musique                  synthetic traces, train split
    hopsmith traces --root runs/ladder --teacher openai:gpt-4o-mini     teacher traces, ASP-filtered
"""
from hopsmith.traces.filters import (
    asp_filter,
    final_answer,
    keyword_ok,
    must_search,
    no_memory_claims,
    string_f1,
    string_f1_ok,
    tool_exchanges,
)
from hopsmith.traces.synthetic import (
    TRACE_TYPES,
    Plan,
    Step,
    TraceSkipped,
    build_trace,
    generate,
    hop_paragraph_ids,
    parse_weights,
    plan_for,
    replay_trace,
    tool_schemas,
    warmup_plan,
)
from hopsmith.traces.select import sample_traces

__all__ = [
    "TRACE_TYPES",
    "Plan",
    "Step",
    "TraceSkipped",
    "asp_filter",
    "build_trace",
    "final_answer",
    "generate",
    "hop_paragraph_ids",
    "keyword_ok",
    "must_search",
    "no_memory_claims",
    "parse_weights",
    "plan_for",
    "replay_trace",
    "sample_traces",
    "string_f1",
    "string_f1_ok",
    "tool_exchanges",
    "tool_schemas",
    "warmup_plan",
]
