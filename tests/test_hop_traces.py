"""Single-hop reading traces: one per gold hop, real searches, replayable, the hop's answer as FINAL."""
from hopsmith.data import build_pools, load_questions
from hopsmith.data.loaders import hop_question
from hopsmith.traces import replay_trace
from hopsmith.traces.hops import hop_traces


def test_every_hop_becomes_a_replayable_one_search_trace():
    questions = load_questions("musique", limit=8)
    pools = build_pools(questions, size=120, others=load_questions("musique"))
    traces, skips = hop_traces(questions, pools, top_k=3, max_chars=300)
    assert traces and len(traces) + len(skips) == sum(len(q.decomposition) for q in questions)
    by_id = {q.id: q for q in questions}
    for t in traces:
        q = by_id[t["question_id"]]
        i = int(t["id"].split(":")[1][3:]) - 1
        hop = q.decomposition[i]
        assert t["question"] == hop_question(q, i) and t["question"] in t["messages"][1]["content"]
        assert [m["role"] for m in t["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
        assert t["messages"][-1]["content"] == f"FINAL({hop.answer})"
        # the hop's answer is visible in what the search really returned, and the search replays
        assert hop.answer.lower() in t["messages"][3]["content"].lower()
        assert replay_trace(t, pools) == []
    assert {s["reason"] for s in skips} <= {"answer_not_visible", "support_not_found", "unanswerable"}
    # skip_last leaves each question's last hop to the warmup type
    fewer, _ = hop_traces(questions, pools, top_k=3, max_chars=300, skip_last=True)
    assert all(int(t["id"].split(":")[1][3:]) < len(by_id[t["question_id"]].decomposition) for t in fewer)
