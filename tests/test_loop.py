"""The batched episode loop: tool execution, errors fed back, the turn cap, batching, real models."""
import json

from conftest import ScriptedBackend, call

from hopsmith.metrics import aggregate
from episodes import run_multihop
from hopsmith.config import AgentConfig
from hopsmith.data import hop_question
from hopsmith.tools.extract import Extractor


def _gold_chain(q):
    """A perfect agent for question q: search each gold sub-question, then answer."""
    return [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))] + [f"FINAL({q.answer})"]


def test_gold_chain_answers_and_retrieves_support(musique_small):
    questions, pools = musique_small
    backend = ScriptedBackend({q.question: _gold_chain(q) for q in questions})
    rows = run_multihop(questions, pools, backend, AgentConfig(max_turns=10), batch_size=8)
    assert {r["question_id"] for r in rows} == {q.id for q in questions}
    for row in rows:
        assert row["finished"] and row["stop"] == "final"
        assert row["metrics"]["em"] == 1.0
        assert row["turns"] == len(row["tool_calls"]) + 1
        assert all(c["valid"] for c in row["tool_calls"])
        # tool results in the trace are what the search tool returned, and are labelled opaquely
        tool_msgs = [m for m in row["messages"] if m["role"] == "tool"]
        assert tool_msgs and all("::" not in m["content"] for m in tool_msgs)
    found = sum(set(r["supporting_ids"]) <= set(r["retrieved_ids"]) for r in rows)
    assert found >= len(rows) - 1


def test_batching_one_generate_per_turn_and_finished_leave(musique_small):
    questions, pools = musique_small
    # Question i answers after i searches, so the batch shrinks by one each turn.
    scripts = {q.question: [call("search", query="x")] * i + ["FINAL(a)"] for i, q in enumerate(questions)}
    backend = ScriptedBackend(scripts)
    run_multihop(questions, pools, backend, AgentConfig(), batch_size=len(questions))
    assert backend.batches == list(range(len(questions), 0, -1))


def test_batch_size_bounds_live_episodes(musique_small):
    questions, pools = musique_small
    backend = ScriptedBackend({}, default=[call("search", query="x"), "FINAL(a)"])
    rows = run_multihop(questions, pools, backend, AgentConfig(), batch_size=4)
    assert max(backend.batches) == 4 and len(rows) == len(questions)


def test_malformed_and_unknown_calls_go_back_as_errors(musique_small):
    questions, pools = musique_small
    q = questions[0]
    script = [
        "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": </tool_call>",
        call("browse", url="x"),
        call("search", q="wrong argument name"),
        call("search", query="x", k=3),
        call("search", query=7),
        call("search", query=hop_question(q, 0)),
        "FINAL(x)",
    ]
    rows = run_multihop([q], pools, ScriptedBackend({q.question: script}), AgentConfig())
    row = rows[0]
    calls = row["tool_calls"]
    assert [c["valid"] for c in calls] == [False, False, False, False, False, True]
    assert "not valid JSON" in calls[0]["error"]
    assert "unknown tool 'browse'" in calls[1]["error"]
    assert "missing required argument 'query'" in calls[2]["error"]
    assert "unknown argument 'k'" in calls[3]["error"]
    assert "must be a string" in calls[4]["error"]
    tool_msgs = [m["content"] for m in row["messages"] if m["role"] == "tool"]
    assert tool_msgs[0].startswith("Error: tool call is not valid JSON")
    assert row["finished"] and row["prediction"] == "x"


def test_imitated_tool_reply_is_no_answer(musique_small):
    """Seen by hand on the embedded model: after a search it wrote "<tool_response>..." itself instead of
    answering; that reply ends the episode with no prediction, not with the answer "<tool_response>"."""
    questions, pools = musique_small
    q = questions[0]
    backend = ScriptedBackend({q.question: [call("search", query="x"), "<tool_response>\n{\"a\": 1}"]})
    [row] = run_multihop([q], pools, backend, AgentConfig(max_turns=4))
    assert row["stop"] == "empty_answer" and not row["finished"] and row["prediction"] is None
    assert row["metrics"]["em"] == 0.0 and row["turns"] == 2
    assert aggregate([row])["no_final_answer_rate"] == 1.0


def test_turn_cap_ends_episode_without_answer(musique_small):
    questions, pools = musique_small
    backend = ScriptedBackend({}, default=[call("search", query="county")] * 50)
    rows = run_multihop(questions[:2], pools, backend, AgentConfig(max_turns=3, answer_at_cap=False))
    for row in rows:
        assert row["turns"] == 3 and not row["finished"] and row["stop"] == "max_turns"
        assert row["prediction"] is None and row["metrics"]["acc"] == 0.0
        assert not row["answered_at_cap"]


def test_turn_cap_asks_for_the_answer_once(musique_small):
    questions, pools = musique_small
    q0, q1 = questions[:2]
    searching = [call("search", query="county")] * 3
    backend = ScriptedBackend({q0.question: searching + [f"FINAL({q0.answers[0]})"],
                               q1.question: searching + [call("search", query="more")]})
    rows = {r["question_id"]: r for r in run_multihop([q0, q1], pools, backend, AgentConfig(max_turns=3))}
    a, b = rows[q0.id], rows[q1.id]
    # The cap turn is a user message asking for the answer, then one more reply.
    assert a["messages"][-2]["role"] == "user" and "FINAL(answer)" in a["messages"][-2]["content"]
    assert a["turns"] == 4 and a["finished"] and a["answered_at_cap"] and a["metrics"]["acc"] == 1.0
    # A tool call in the cap turn is not run: the episode ends without an answer.
    assert b["turns"] == 4 and not b["finished"] and b["stop"] == "max_turns" and not b["answered_at_cap"]
    assert len(b["tool_calls"]) == 3 and b["prediction"] is None
    m = aggregate([a, b], n_boot=50)
    assert m["answered_at_cap_rate"] == 0.5 and m["no_final_answer_rate"] == 0.5


def test_llm_query_batched_and_reads_last_results(musique_small):
    questions, pools = musique_small
    seen = []

    class Reader:
        def extract_many(self, pairs):
            seen.append(pairs)
            return [f"read {len(text)}" for _, text in pairs]

    script = [call("search", query="county"), call("llm_query", question="Which county?"), "FINAL(a)"]
    backend = ScriptedBackend({}, default=script)
    rows = run_multihop(questions[:3], pools, backend, AgentConfig(), extractor=Reader(), batch_size=3)
    assert len(seen) == 1 and len(seen[0]) == 3  # one extractor batch for the three episodes' calls
    for (question, text), row in zip(seen[0], rows):
        assert question == "Which county?"
        assert len(text) > 100  # the last search's paragraphs, not the empty `text` argument
        answer = [m for m in row["messages"] if m["role"] == "tool"][1]["content"]
        assert answer.startswith("read ")
        assert row["tool_calls"][1]["name"] == "llm_query" and row["tool_calls"][1]["valid"]


def test_llm_query_unknown_without_extractor(musique_small):
    questions, pools = musique_small
    backend = ScriptedBackend({}, default=[call("llm_query", question="q"), "FINAL(a)"])
    row = run_multihop(questions[:1], pools, backend, AgentConfig())[0]
    assert "unknown tool 'llm_query'" in row["tool_calls"][0]["error"]


def test_on_done_streams_rows(musique_small):
    questions, pools = musique_small
    streamed = []
    rows = run_multihop(questions, pools, ScriptedBackend({}, default=["FINAL(a)"]), AgentConfig(), on_done=streamed.append)
    assert [r["question_id"] for r in streamed] == [r["question_id"] for r in rows]
    json.dumps(rows)  # rows are plain JSON


def test_tiny_random_model_batched_loop(musique_small, tiny_backend):
    """The real HF path: left-padded batched generate on a random model, episodes end by answer,
    cap or overflow, and every row is complete."""
    questions, pools = musique_small
    cfg = AgentConfig(max_turns=2, max_new_tokens=12)
    rows = run_multihop(questions[:5], pools, tiny_backend, cfg, extractor=Extractor(tiny_backend), batch_size=4)
    assert sorted(r["question_id"] for r in rows) == sorted(q.id for q in questions[:5])
    for row in rows:
        assert 1 <= row["turns"] <= 2
        assert row["stop"] in ("final", "max_turns", "empty_answer")
        assert row["tokens"]["completion"] > 0
        assert row["messages"][0]["role"] == "system" and row["messages"][1]["role"] == "user"


def test_batched_equals_sequential_on_greedy_generation(tiny_model, tiny_tokenizer):
    from hopsmith.backends.hf import HFBackend

    convs = [[{"role": "user", "content": "x " * n + "county"}] for n in (1, 7, 3, 12)]
    batched = HFBackend(model_obj=tiny_model, tokenizer=tiny_tokenizer, batch_size=4).generate(convs, max_new_tokens=8)
    single = HFBackend(model_obj=tiny_model, tokenizer=tiny_tokenizer, batch_size=1).generate(convs, max_new_tokens=8)
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    # Left padding with an attention mask must not change what a row generates.
    assert [g.text for g in batched] == [g.text for g in single]


def test_context_overflow_ends_episode(tiny_model, tiny_tokenizer, musique_small):
    from hopsmith.backends.hf import HFBackend

    backend = HFBackend(model_obj=tiny_model, tokenizer=tiny_tokenizer, batch_size=2)
    backend.max_context = 50  # smaller than the system prompt
    questions, pools = musique_small
    row = run_multihop(questions[:1], pools, backend, AgentConfig())[0]
    assert row["stop"] == "context_overflow" and not row["finished"] and row["turns"] == 0


def test_repeated_search_is_not_repeated(musique_small):
    questions, pools = musique_small
    backend = ScriptedBackend({}, default=[call("search", query="Van Hook"), call("search", query="van  hook"), "FINAL(a)"])
    row = run_multihop(questions[:1], pools, backend, AgentConfig())[0]
    first, second = [m["content"] for m in row["messages"] if m["role"] == "tool"]
    assert first.startswith("[p") and second.startswith('You already searched for "van  hook"')


def test_context_budget_ends_long_episodes(musique_small):
    questions, pools = musique_small
    queries = [call("search", query=w) for w in ("county", "river", "city", "film", "band", "party", "war")]
    probe = ScriptedBackend({}, default=["FINAL(a)"])
    first_prompt = run_multihop(questions[:1], pools, probe, AgentConfig())[0]["tokens"]["prompt"]
    # room for the first prompt and about one search result, not for seven
    row = run_multihop(questions[:1], pools, ScriptedBackend({}, default=queries),
                       AgentConfig(max_context_tokens=first_prompt + 400))[0]
    assert row["stop"] == "context_overflow" and not row["finished"]
    assert 2 <= row["turns"] <= 4
