"""Trace generation: the five synthetic types render, parse and replay; retry really misses; thinking
variants; mix and determinism; ASP filters; the stage's shards, resume, split and teacher mode."""
import copy
import json
import random
from collections import Counter

import pytest
from conftest import ScriptedBackend, call

from hopsmith.chat import HermesFormat
from hopsmith.envs.multihop import agent_system_prompt
from hopsmith.config import ConfigError, build
from hopsmith.data import build_pools, hop_question, load_questions
from hopsmith.tools.search import IndexCache, paragraph_label
from hopsmith.traces import (
    TRACE_TYPES,
    TraceSkipped,
    asp_filter,
    build_trace,
    generate,
    keyword_ok,
    must_search,
    replay_trace,
    string_f1_ok,
)
from hopsmith.traces.synthetic import type_order
from stages import traces as stage

POOL = 80  # small pools keep the suite fast; retrieval is still over several questions' paragraphs


@pytest.fixture(scope="module")
def sets():
    """A few train questions of each bundled set with their pools, and one index cache for all."""
    out = {}
    for name in ("musique", "hotpotqa", "2wiki"):
        qs = load_questions(name, split="train", limit=8)
        out[name] = (qs, build_pools(qs, size=POOL, others=load_questions(name)))
    return out, IndexCache()


def _all_traces(sets, thinking=False):
    data, cache = sets
    made, skipped = [], []
    for name, (qs, pools) in data.items():
        for q in qs:
            for kind in TRACE_TYPES:
                try:
                    made.append((q, build_trace(q, pools[q.id], kind, thinking=thinking, index_cache=cache)))
                except TraceSkipped as s:
                    skipped.append((name, kind, s.reason))
    return made, skipped


@pytest.fixture(scope="module")
def built(sets):
    return _all_traces(sets, thinking=False)[0] + _all_traces(sets, thinking=True)[0]


def _pools(sets):
    return {qid: pool for _, pools in sets[0].values() for qid, pool in pools.items()}


def test_every_type_is_built_on_every_set(built):
    kinds = Counter((t["dataset"], t["type"]) for _, t in built)
    for name in ("musique", "hotpotqa", "2wiki"):
        for kind in TRACE_TYPES:
            if (name, kind) == ("hotpotqa", "warmup"):
                continue  # HotpotQA has no sub-questions to take a single hop from
            assert kinds[(name, kind)] > 0, (name, kind)
    assert kinds[("hotpotqa", "warmup")] == 0


def test_traces_render_with_the_chat_template_and_parse_back(built, tiny_tokenizer):
    from hopsmith.backends.hf import CHATML_TOOLS_TEMPLATE

    fmt = HermesFormat()
    for q, t in built:
        text = tiny_tokenizer.apply_chat_template(t["messages"], tools=t["tools"], chat_template=CHATML_TOOLS_TEMPLATE,
                                                  tokenize=False)
        replies = [seg.split("<|im_end|>")[0] for seg in text.split("<|im_start|>assistant\n")[1:]]
        assistant = [m for m in t["messages"] if m["role"] == "assistant"]
        assert len(replies) == len(assistant)
        for reply, m in zip(replies, assistant):
            action = fmt.parse(reply)
            expected = [(c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls", [])]
            assert [(c.name, c.arguments) for c in action.calls] == expected
            assert all(c.valid for c in action.calls)
        # one call per assistant turn, then a final answer that is the gold one
        assert all(len(m.get("tool_calls", [])) == 1 for m in assistant[:-1])
        final = fmt.parse(replies[-1])
        assert final.is_final and final.answer == t["answer"]
        assert t["messages"][-1]["content"].endswith(f"FINAL({t['answer']})")
        if t["type"] != "warmup":
            assert t["answer"] == q.answer and t["answers"] == list(q.answers)
        assert t["tool_calls"] == [{"name": c["function"]["name"], "arguments": c["function"]["arguments"], "valid": True}
                                   for m in assistant for c in m.get("tool_calls", [])]
        assert t["id"] == f"{q.id}:{t['type']}:{t['variant']}" and t["source"] == f"synthetic:{t['type']}"


def test_chain_searches_every_supporting_paragraph(built):
    chains = [(q, t) for q, t in built if t["type"] == "chain"]
    assert chains
    for q, t in chains:
        assert t["searched_supporting"] and all(t["searched_supporting"])
        hops = len(q.decomposition) or 2
        assert len(t["searched_supporting"]) == hops
        assert sum(m["role"] == "tool" for m in t["messages"]) == hops


def test_warmup_asks_the_last_hop(built):
    warmups = [(q, t) for q, t in built if t["type"] == "warmup"]
    assert warmups
    for q, t in warmups:
        last = len(q.decomposition) - 1
        assert t["question"] == hop_question(q, last)
        assert t["messages"][1]["content"].startswith(f"Question: {hop_question(q, last)}\n")
        assert t["answer"] == q.decomposition[last].answer
        assert sum(m["role"] == "tool" for m in t["messages"]) == 1


def test_every_trace_replays_and_tampering_is_caught(built, sets):
    pools = _pools(sets)
    cache = sets[1]
    for _, t in built:
        assert replay_trace(t, pools, index_cache=cache) == [], t["id"]
    t = built[0][1]
    tampered = copy.deepcopy(t)
    tool = next(m for m in tampered["messages"] if m["role"] == "tool")
    tool["content"] = tool["content"].replace(" ", "  ", 1)
    assert len(replay_trace(tampered, pools, index_cache=cache)) == 1
    moved = copy.deepcopy(t)
    first_call = next(m for m in moved["messages"] if m.get("tool_calls"))
    first_call["tool_calls"][0]["function"]["arguments"]["query"] = "Port Blair"  # a pool page off the hop
    assert replay_trace(moved, pools, index_cache=cache)
    dropped = copy.deepcopy(t)
    dropped["messages"] = [m for m in dropped["messages"] if m["role"] != "tool"]
    assert any("no tool message" in p for p in replay_trace(dropped, pools, index_cache=cache))
    assert replay_trace({**t, "question_id": "nope"}, pools) == ["no pool for question 'nope'"]


def test_retry_first_search_really_misses(built, sets):
    retries = [(q, t) for q, t in built if t["type"] == "retry"]
    assert retries
    pools = _pools(sets)
    from hopsmith.traces.synthetic import plan_for

    for q, t in retries:
        first_hop = plan_for(q, rng=random.Random(0)).steps[0].paragraph_ids
        labels = {paragraph_label(pid) for pid in first_hop}
        tools = [m["content"] for m in t["messages"] if m["role"] == "tool"]
        assert not any(f"[{lab}]" in tools[0] for lab in labels), t["id"]
        assert any(f"[{lab}]" in tools[1] for lab in labels), t["id"]
        queries = [c["arguments"]["query"] for c in t["tool_calls"]]
        assert queries[0].lower() != queries[1].lower()
        # the miss is stated, and the poor results are the real ones
        assert "do not answer" in t["messages"][4]["content"]
        assert replay_trace(t, pools) == []


def test_thinking_variant(built):
    for _, t in built:
        assistant = [m["content"] for m in t["messages"] if m["role"] == "assistant"]
        if t["thinking"]:
            assert t["variant"] == "think" and t["id"].endswith(":think")
            assert t["messages"][0]["content"] == agent_system_prompt(few_shot=False, thinking=True)
            assert all(c.startswith("<think>") and "</think>" in c for c in assistant)
        else:
            assert t["messages"][0]["content"] == agent_system_prompt(few_shot=False, thinking=False)
            assert not any("<think>" in c for c in assistant)
    assert {t["thinking"] for _, t in built} == {True, False}


def test_llm_query_option_uses_the_extractor_honestly(sets):
    data, cache = sets
    qs, pools = data["musique"]
    q = qs[0]
    seen = []

    def extract(question, text):
        seen.append((question, text))
        # an honest reader: the hop answer when the text holds it
        hop = next(h for i, h in enumerate(q.decomposition) if hop_question(q, i) == question)
        return hop.answer if hop.answer.lower() in text.lower() else "unknown"

    t = build_trace(q, pools[q.id], "chain", use_llm_query=True, extractor=extract, index_cache=cache)
    names = [c["name"] for c in t["tool_calls"]]
    assert names == ["search", "llm_query"] * len(q.decomposition)
    assert [tool["function"]["name"] for tool in t["tools"]] == ["search", "llm_query"]
    assert len(seen) == len(q.decomposition)
    assert replay_trace(t, {q.id: pools[q.id]}, extractor=extract) == []
    with pytest.raises(TraceSkipped) as info:
        build_trace(q, pools[q.id], "chain", use_llm_query=True, extractor=lambda qq, tt: "Atlantis", index_cache=cache)
    assert info.value.reason == "extractor_mismatch"


def test_mix_ratio_and_determinism(sets):
    data, cache = sets
    qs, pools = data["musique"]
    only_chain, _ = generate(qs, pools, weights="chain=1", per_question=1, index_cache=cache)
    assert only_chain and {t["type"] for t in only_chain} == {"chain"}

    # the weighted order draws its first type in proportion to the weights
    weights = {"chain": 3.0, "retry": 1.0, "labels": 0.0, "verify": 0.0, "warmup": 0.0}
    firsts = Counter(type_order(weights, random.Random(i))[0] for i in range(4000))
    assert set(firsts) == {"chain", "retry"} and 0.70 < firsts["chain"] / 4000 < 0.80

    a, skips_a = generate(qs, pools, per_question=2, thinking_fraction=0.5, seed=3, index_cache=cache)
    b, skips_b = generate(qs, pools, per_question=2, thinking_fraction=0.5, seed=3, index_cache=cache)
    strip = lambda ts: [{k: v for k, v in t.items() if k != "seconds"} for t in ts]  # noqa: E731
    assert strip(a) == strip(b) and skips_a == skips_b
    per_q = Counter(t["question_id"] for t in a)
    assert max(per_q.values()) <= 2 and len({t["id"] for t in a}) == len(a)
    # a question's traces do not depend on the other questions generated with it (sharding)
    alone, _ = generate(qs[1:2], pools, per_question=2, thinking_fraction=0.5, seed=3, index_cache=cache)
    assert strip(alone) == strip([t for t in a if t["question_id"] == qs[1].id])
    other, _ = generate(qs, pools, per_question=2, thinking_fraction=0.5, seed=4, index_cache=cache)
    assert strip(other) != strip(a)

    plain, _ = generate(qs, pools, thinking_fraction=0.0, index_cache=cache)
    think, _ = generate(qs, pools, thinking_fraction=1.0, index_cache=cache)
    assert not any(t["thinking"] for t in plain) and all(t["thinking"] for t in think)


# -- ASP filters ------------------------------------------------------------------------------------

def _hand_trace(answer: str, *, search: bool = True, result: str = "Lloyd Dane was born in Eldon, Missouri, in Miller County.",
                say: str = "") -> dict:
    messages = [{"role": "system", "content": "s"},
                {"role": "user", "content": "Question: In which county was Lloyd Dane born?"}]
    if search:
        messages += [{"role": "assistant", "content": say,
                      "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Lloyd Dane"}}}]},
                     {"role": "tool", "name": "search", "content": result}]
    messages.append({"role": "assistant", "content": f"{say}\nFINAL({answer})".strip()})
    return {"messages": messages, "answers": ["Miller County"], "answer": answer}


def test_asp_filters_on_hand_made_traces():
    good = _hand_trace("Miller County")
    assert string_f1_ok(good) and must_search(good) and keyword_ok(good)
    assert asp_filter(good) == (True, [])

    low = _hand_trace("Eldon")
    kept, reasons = asp_filter(low)
    assert not kept and [r.split(":")[0] for r in reasons] == ["string_f1"]
    assert string_f1_ok(_hand_trace("Miller"), threshold=0.65)  # F1 0.67: seed 001's cut keeps it

    unsearched = _hand_trace("Miller County", search=False)
    kept, reasons = asp_filter(unsearched)
    assert not kept and "must_search: no valid search call" in reasons

    # the answer is in the question but in no search result
    only_question = _hand_trace("Lloyd Dane", result="Eldon is a city in Missouri.")
    only_question["answers"] = ["Lloyd Dane"]
    kept, reasons = asp_filter(only_question)
    assert not kept and any(r.startswith("keyword:") for r in reasons) and not keyword_ok(only_question)

    remembered = _hand_trace("Miller County", say="I remember he was born in Miller County.")
    kept, reasons = asp_filter(remembered)
    assert not kept and any(r.startswith("memory:") for r in reasons)

    # a search the tool refused is no search
    refused = _hand_trace("Miller County", result="Error: argument 'query' must be a string.")
    refused["messages"][2]["tool_calls"][0]["function"]["arguments"] = {"query": 7}
    assert not must_search(refused)


# -- the stage --------------------------------------------------------------------------------------

def _cfg(**kw):
    return build(stage.TracesConfig, **{"limit": 6, "pool_size": POOL, **kw})


def test_stage_writes_shards_and_resumes(tmp_path):
    cfg = _cfg(data="musique", num_shards=2, shard=0)
    summary = stage.run(cfg, tmp_path)
    shard = tmp_path / "traces" / "shard-0.jsonl"
    rows = [json.loads(line) for line in shard.read_text().splitlines()]
    assert summary["traces"] == len(rows) > 0 and not summary["resumed"]
    assert sum(summary["by_type"].values()) == len(rows)
    assert set(summary["skipped"]["by_type"]) <= set(TRACE_TYPES)
    saved = json.loads((tmp_path / "traces" / "summary-0.json").read_text())
    assert saved["by_type"] == summary["by_type"]
    questions = load_questions("musique", split="train", limit=6)
    assert {r["question_id"] for r in rows} <= {q.id for q in questions[0::2]}

    before = shard.stat().st_mtime_ns
    again = stage.run(cfg, tmp_path)
    assert again["resumed"] and shard.stat().st_mtime_ns == before

    other = stage.run(_cfg(data="musique", num_shards=2, shard=1), tmp_path)
    rows1 = [json.loads(line) for line in (tmp_path / "traces" / "shard-1.jsonl").read_text().splitlines()]
    assert other["traces"] == len(rows1) and not {r["question_id"] for r in rows1} & {r["question_id"] for r in rows}

    with pytest.raises(stage.TracesRunError):
        stage.run(_cfg(data="musique", num_shards=2, shard=0, seed=9), tmp_path)


def test_split_defaults_to_train_and_no_eval_question_appears(tmp_path):
    assert stage.TracesConfig().split == "train"
    summary = stage.run(_cfg(data="2wiki"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "traces" / "shard-0.jsonl").read_text().splitlines()]
    assert rows and summary["traces"] == len(rows)
    train = {q.id for q in load_questions("2wiki", split="train")}
    assert {r["question_id"] for r in rows} <= train
    with pytest.raises(ConfigError):
        _cfg(split="eval")
    assert _cfg(split="eval", allow_eval_questions=True).split == "eval"
    with pytest.raises(ConfigError):
        _cfg(weights="chain=1,bogus=2")


def test_teacher_mode_keeps_and_rejects_with_reasons(tmp_path):
    qs = load_questions("musique", split="train", limit=3)
    gold = lambda q: [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))] + [f"FINAL({q.answer})"]  # noqa: E731
    scripts = {
        qs[0].question: gold(qs[0]),                                        # searches, right answer: kept
        qs[1].question: [f"I remember it. FINAL({qs[1].answer})"],          # no search: rejected
        qs[2].question: [call("search", query=hop_question(qs[2], 0)), "FINAL(Atlantis)"],  # wrong: rejected
    }
    backend = ScriptedBackend(scripts)
    cfg = _cfg(data="musique", limit=3, teacher="scripted", thinking_fraction=0.0)
    summary = stage.run(cfg, tmp_path, backend=backend)
    assert summary["mode"] == "teacher" and summary["asp"] == {**summary["asp"], "episodes": 3, "kept": 1, "rejected": 2}
    # right answer without search (and a memory claim); a search but a wrong answer read nowhere
    assert summary["asp"]["reasons"] == {"must_search": 1, "memory": 1, "string_f1": 1, "keyword": 2}
    kept = [json.loads(line) for line in (tmp_path / "traces" / "shard-0.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (tmp_path / "traces" / "rejected-0.jsonl").read_text().splitlines()]
    assert [t["question_id"] for t in kept] == [qs[0].id]
    t = kept[0]
    assert t["id"] == f"{qs[0].id}:teacher:plain" and t["source"] == "teacher:scripted"
    assert t["asp"] == {"kept": True, "reasons": []} and all(t["searched_supporting"])
    assert t["messages"][0]["content"] == agent_system_prompt(few_shot=False, thinking=False)
    pools = build_pools(qs, size=POOL, others=load_questions("musique"))
    assert replay_trace(t, pools) == []
    assert {r["question_id"] for r in rejected} == {qs[1].id, qs[2].id}
    assert all(r["asp"]["reasons"] for r in rejected)
    assert not (tmp_path / "traces" / ".teacher-0.partial.jsonl").exists()
    calls = len(backend.batches)
    assert stage.run(cfg, tmp_path, backend=backend)["resumed"] and len(backend.batches) == calls


def test_teacher_shard_resumes_from_partial_episodes(tmp_path):
    qs = load_questions("musique", split="train", limit=2)
    cfg = _cfg(data="musique", limit=2, teacher="scripted", thinking_fraction=0.0)
    partial = tmp_path / "traces" / ".teacher-0.partial.jsonl"
    partial.parent.mkdir(parents=True)
    done = {"question_id": qs[0].id, "id": f"{qs[0].id}:teacher:plain", "type": "teacher", "variant": "plain",
            "dataset": "musique", "asp": {"kept": False, "reasons": ["must_search: no valid search call"]}}
    partial.write_text(json.dumps(done) + "\n")
    backend = ScriptedBackend({}, default=["FINAL(x)"])
    summary = stage.run(cfg, tmp_path, backend=backend)
    assert summary["asp"]["episodes"] == 2 and backend.batches == [1]  # only the missing question ran
