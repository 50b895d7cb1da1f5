"""Code-as-action traces (`hopsmith.traces.code`, `hopsmith traces --env wikicode`): every program in a trace
really ran in the sandbox, so replaying the trace's replies through the episode loop gives the same
conversation, a correct answer and the supporting pages read; the trace trains only on the model's own text."""
from __future__ import annotations

import json

import pytest
from conftest import ScriptedBackend, family_tokenizer
from sandbox_support import wikicode_box  # noqa: F401 (a fixture)

from hopsmith.agent.loop import run_episodes
from hopsmith.backends.templates import chat_templates, tokenize_conversation
from hopsmith.config import AgentConfig, ConfigError
from hopsmith.data import load_with_pools
from hopsmith.envs import wikicode
from hopsmith.traces.code import code_traces
from stages import traces as traces_stage


@pytest.fixture(scope="module")
def box(wikicode_box):
    return wikicode_box


@pytest.fixture(scope="module")
def written(box):
    qs, pools = load_with_pools("hotpotqa", split="train", limit=12, size=60)
    cfg = AgentConfig(env="wikicode", few_shot=False, max_turns=3)
    traces, skips = code_traces(qs, wikicode.make(cfg, pools=pools, sandbox=box))
    return qs, pools, cfg, traces, skips


def test_a_replayed_code_trace_is_the_conversation_inference_has(box, written):
    qs, pools, cfg, traces, skips = written
    assert len(traces) >= 6 and len(traces) + len(skips) == len(qs)
    assert {s["reason"] for s in skips} <= {"support_not_printed", "bridge_entity_not_visible",
                                            "final_answer_not_visible", "program_failed"}
    by_id = {q.id: q for q in qs}
    scripts = {by_id[t["question_id"]].question: [m["content"] for m in t["messages"] if m["role"] == "assistant"]
               for t in traces}
    rows = run_episodes([by_id[t["question_id"]] for t in traces], wikicode.make(cfg, pools=pools, sandbox=box),
                        ScriptedBackend(scripts), cfg)
    rows = {r["question_id"]: r for r in rows}
    for trace in traces:
        row = rows[trace["question_id"]]
        assert row["messages"] == trace["messages"]  # every tool message is what the sandbox prints
        assert row["stop"] == "final" and row["metrics"]["acc"] == 1.0
        assert row["code_errors"] == 0 and row["composed_in_loop"]
        q = by_id[trace["question_id"]]
        assert set(q.supporting_ids) & set(row["retrieved_ids"])  # it read a supporting page
        assert all(trace["searched_supporting"])
        assert trace["messages"][0]["content"] == wikicode.system_prompt(few_shot=False)  # an adapter's prompt
        programs = [m for m in trace["messages"] if m["role"] == "assistant"][:-1]
        assert programs and all(m["content"].startswith("<python>\n") and m["content"].endswith("</python>")
                                for m in programs)


def test_a_code_trace_trains_on_the_programs_and_the_answer_only(written):
    _, _, _, traces, _ = written
    tokenizer = family_tokenizer("qwen3")
    template = chat_templates(tokenizer).training
    trace = traces[0]
    out = tokenize_conversation(tokenizer, trace["messages"], trace["tools"], template)
    learned = tokenizer.decode([t for t in out["labels"] if t != -100])
    assert "search_pages(" in learned and f"<answer>{trace['answer']}</answer>" in learned
    tool_text = next(m["content"] for m in trace["messages"] if m["role"] == "tool")
    assert tool_text[:60] not in learned  # what the program printed is never in the loss


def test_the_traces_stage_writes_code_traces_and_refuses_what_it_cannot_write(tmp_path):
    cfg = traces_stage.TracesConfig(data="hotpotqa", limit=6, pool_size=60,
                                    agent=AgentConfig(env="wikicode", few_shot=False, extractor="none"))
    summary = traces_stage.run(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "traces" / "shard-0.jsonl").read_text().splitlines()]
    assert summary["traces"] == len(rows) >= 3 and summary["by_type"] == {"code": len(rows)}
    assert summary["skipped"]["count"] == 6 - len(rows)
    assert all(r["source"] == "synthetic:code" and r["tools"] == [] for r in rows)
    with pytest.raises(ConfigError, match="teacher"):
        traces_stage.TracesConfig(teacher="openai:gpt-4o-mini", agent=AgentConfig(env="wikicode"))
    with pytest.raises(ConfigError, match="enterprise"):
        traces_stage.TracesConfig(agent=AgentConfig(env="enterprise"))


def test_a_hop_whose_page_holds_its_passage_deeper_reads_a_longer_page_start(box):
    """A MuSiQue page gathers every paragraph with its title: where the first 300 characters miss the hop's
    passage, the program prints the shortest longer start that shows it, and the trace still replays exactly."""
    qs, pools = load_with_pools("musique", split="train", limit=20)
    cfg = AgentConfig(env="wikicode", few_shot=False, max_turns=4)
    make_env = wikicode.make(cfg, pools=pools, sandbox=box)
    wide, skips = code_traces(qs, make_env)
    narrow, _ = code_traces(qs, make_env, chars=300)
    widened = [t for t in wide if max(t["env"]["chars"]) > 300]
    assert widened and len(wide) > len(narrow)
    assert not {t["question_id"] for t in widened} & {t["question_id"] for t in narrow}  # 300 alone has none
    trace = widened[0]
    programs = [m["content"] for m in trace["messages"] if m["role"] == "assistant"][:-1]
    assert [f"[:{w}])" in p for p, w in zip(programs, trace["env"]["chars"])] == [True] * len(programs)
    q = next(q for q in qs if q.id == trace["question_id"])
    script = {q.question: [m["content"] for m in trace["messages"] if m["role"] == "assistant"]}
    row = run_episodes([q], make_env, ScriptedBackend(script), cfg)[0]
    assert row["messages"] == trace["messages"] and row["metrics"]["acc"] == 1.0
    assert all(s["reason"] in ("support_not_printed", "final_answer_not_visible") for s in skips)
