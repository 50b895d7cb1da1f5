"""The judge: every rule on good and bad traces, judge-reply parsing and retries, rules/judge agreement,
and the stage end to end (kept traces, judged shards, summary, rerun skip, sharding, refusing another judge)."""
import copy
import json

import pytest

from hopsmith import cli
from hopsmith.backends import Generation
from hopsmith.config import ConfigError, build
from hopsmith.io import read_jsonl, write_jsonl
from hopsmith.judge import (JUDGE_RUBRIC, JudgeParseError, LLMJudge, RULES, agreement, judge_messages,
                            parse_judge_json, rule_checks)
from stages import judge as stage

SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the paragraphs.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
LLM_QUERY = {"type": "function", "function": {
    "name": "llm_query", "description": "Ask a reader.",
    "parameters": {"type": "object", "properties": {"question": {"type": "string"}, "text": {"type": "string"}},
                   "required": ["question"]}}}


def tc(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def make_trace(id="t1", question="Where was the director of Film X born?", final="<think>Roe was born in Lyon.</think>FINAL(Lyon)",
               answers=("Lyon", "Lyon, France"), source="teacher:big", steps=None):
    """A clean two-hop trace; `steps` replaces its (call, result) pairs."""
    steps = steps if steps is not None else [
        (tc("search", query="Film X director"), "[p000001] Film X\nFilm X is a 1990 film directed by Jane Roe."),
        (tc("search", query="Jane Roe birthplace"), "[p000002] Jane Roe\nJane Roe is a director born in Lyon, France."),
    ]
    messages = [{"role": "system", "content": "You answer multi-hop questions by searching."},
                {"role": "user", "content": f"Question: {question}\nCall the search tool. Reply with FINAL(answer)."}]
    for call, result in steps:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "name": call["function"]["name"], "content": result})
    if final is not None:
        messages.append({"role": "assistant", "content": final})
    return {"id": id, "question_id": "q-" + id, "dataset": "musique", "source": source, "messages": messages,
            "tools": [SEARCH, LLM_QUERY], "answer": answers[0], "answers": list(answers), "tool_calls": [],
            "searched_supporting": [True, True], "thinking": True}


# -- rules ------------------------------------------------------------------------------------------

def test_good_trace_passes_every_rule():
    r = rule_checks(make_trace())
    assert r["passed"] and r["failed"] == []
    assert set(r["details"]) == set(RULES)
    assert r["details"]["answer_matches_gold"]["answer"] == "Lyon"
    assert r["details"]["calls_parse"]["calls"] == 2
    assert r["details"]["length"]["turns"] == 3


def test_string_arguments_and_llm_query_are_accepted():
    t = make_trace()
    t["messages"][2]["tool_calls"][0]["function"]["arguments"] = json.dumps({"query": "Film X director"})
    t["messages"][4]["tool_calls"] = [tc("llm_query", question="Where was Jane Roe born?")]
    t["messages"][5]["name"] = "llm_query"
    assert rule_checks(t)["passed"]


@pytest.mark.parametrize("call, reason", [
    (tc("browse", query="x"), "unknown tool"),
    (tc("search", query=3), "must be a string"),
    (tc("search", q="x"), "missing required argument"),
    ({"type": "function", "function": {"name": "search", "arguments": "{query: x"}}, "not JSON"),
])
def test_calls_parse_fails_bad_structured_calls(call, reason):
    t = make_trace(steps=[(call, "Error: no results"), (tc("search", query="Jane Roe birthplace"), "born in Lyon")])
    r = rule_checks(t)
    assert r["failed"] == ["calls_parse"]
    assert reason in r["details"]["calls_parse"]["errors"][0]


def test_calls_parse_fails_unparsable_call_text_left_in_content():
    t = make_trace()
    # What the agent loop stores for a malformed call: the text stays in content and gets an error result.
    t["messages"][2:2] = [
        {"role": "assistant", "content": '<tool_call>{"name": "search", "arguments": {"query": "Film X"</tool_call>'},
        {"role": "tool", "name": "invalid", "content": "Error: tool call is not valid JSON"},
    ]
    r = rule_checks(t)
    assert r["failed"] == ["calls_parse"]
    assert "text in content" in r["details"]["calls_parse"]["errors"][0]


def test_tool_call_mentioned_inside_thinking_is_not_a_call():
    t = make_trace(final="<think>I could write <tool_call> again but I know it.</think>FINAL(Lyon)")
    assert rule_checks(t)["passed"]


@pytest.mark.parametrize("final, extra", [
    (None, None),  # ends on a tool result
    ("FINAL()", None),  # empty answer
    ("<think>Lyon?</think>", None),  # only thinking
    ("", [tc("search", query="Lyon")]),  # ends on a call
])
def test_closes_with_answer_fails(final, extra):
    t = make_trace(final=final)
    if extra:
        t["messages"].append({"role": "assistant", "content": "", "tool_calls": extra})
    r = rule_checks(t)
    assert "closes_with_answer" in r["failed"] and "answer_matches_gold" in r["failed"]


@pytest.mark.parametrize("final, answers, ok", [
    ("FINAL(Paris)", ("Lyon",), False),
    ("FINAL(lyon, france)", ("Lyon", "Lyon, France"), True),  # alias, case and punctuation
    ("FINAL(The city of Lyon)", ("Lyon",), True),  # contained: acc 1
    ("FINAL(Jane Roe)", ("Jane Marie Roe",), True),  # acc 0, F1 0.8 >= 0.65
    ("FINAL(Roe)", ("Jane Marie Roe",), False),  # F1 0.5
])
def test_answer_matches_gold(final, answers, ok):
    r = rule_checks(make_trace(final=final, answers=answers))
    assert ("answer_matches_gold" not in r["failed"]) is ok
    assert "closes_with_answer" not in r["failed"]


def test_answer_without_gold_fails():
    t = make_trace()
    del t["answers"]
    assert rule_checks(t)["failed"] == ["answer_matches_gold"]


def test_repeated_call_fails_even_with_other_case_and_spacing():
    t = make_trace(steps=[
        (tc("search", query="Film X director"), "directed by Jane Roe"),
        (tc("search", query="film x  Director"), "You already searched"),
        (tc("search", query="Jane Roe birthplace"), "born in Lyon"),
    ])
    r = rule_checks(t)
    assert r["failed"] == ["no_repeated_calls"]
    assert r["details"]["no_repeated_calls"]["repeated"] == ['search({"query": "film x  Director"})']


def test_missing_tool_result_fails():
    t = make_trace()
    del t["messages"][3]  # the first call's result
    r = rule_checks(t)
    assert r["failed"] == ["tool_results_follow_calls"]


def test_orphan_and_mismatched_tool_results_fail():
    t = make_trace()
    t["messages"].insert(2, {"role": "tool", "name": "search", "content": "stray"})
    assert rule_checks(t)["failed"] == ["tool_results_follow_calls"]
    t = make_trace()
    t["messages"][3]["name"] = "llm_query"
    assert rule_checks(t)["failed"] == ["tool_results_follow_calls"]
    t = make_trace()
    t["messages"].insert(4, {"role": "tool", "name": "search", "content": "second result for one call"})
    assert rule_checks(t)["failed"] == ["tool_results_follow_calls"]


def test_length_bounds():
    t = make_trace()
    assert rule_checks(t, max_tokens_chars=100)["failed"] == ["length"]
    assert rule_checks(t, max_turns=2)["failed"] == ["length"]
    assert rule_checks(t, max_turns=3)["passed"]


def test_unreadable_trace_fails_every_rule_without_raising():
    r = rule_checks({"id": "x", "messages": "oops"})
    assert not r["passed"] and r["failed"] == list(RULES)


# -- parsing judge replies --------------------------------------------------------------------------

def reply(c=5, s=4, g=5, f=5, verdict="pass", reasons=("fine",)):
    return json.dumps({"correctness": c, "search_approach": s, "grounding": g, "format": f, "verdict": verdict,
                       "reasons": list(reasons)})


def test_parse_valid_and_fenced_with_prose():
    v = parse_judge_json(reply())
    assert v["score"] == pytest.approx(19 / 20) and v["verdict"] == "pass" and v["reasons"] == ["fine"]
    fenced = "Here is my assessment.\n```json\n" + reply(c=1, verdict="FAIL") + "\n```\nHope that helps {not json}."
    v = parse_judge_json(fenced)
    assert v["correctness"] == 1 and v["verdict"] == "fail"
    # braces while thinking, and an unrelated object before the verdict, are skipped
    v = parse_judge_json('<think>{"draft": 1}</think> note {"x": 1} then ' + reply(g=2))
    assert v["grounding"] == 2


@pytest.mark.parametrize("text, reason", [
    ("I think it passes.", "no JSON object"),
    ('{"correctness": 5, "search_approach": 4', "incomplete"),
    (reply(c=6), "from 1 to 5"),
    (reply(s=0), "from 1 to 5"),
    (reply(g="4"), "integer"),
    (reply(f=True), "integer"),
    (reply(c=4.5), "integer"),
    (reply(verdict="maybe"), "verdict"),
    ('{"correctness": 5, "search_approach": 5, "grounding": 5, "format": 5, "verdict": "pass"}', "reasons"),
    (json.dumps({"correctness": 5, "search_approach": 5, "grounding": 5, "format": 5, "verdict": "pass",
                 "reasons": [1]}), "list of strings"),
    ('{"answer": "Lyon"}', "no JSON object with the keys"),
])
def test_parse_rejects(text, reason):
    with pytest.raises(JudgeParseError, match=reason):
        parse_judge_json(text)


# -- the LLM judge ----------------------------------------------------------------------------------

class FakeJudge:
    """Replies per trace, keyed by a word of the question; the n-th attempt at a trace gets its n-th reply
    (an attempt is counted by the judge's own earlier replies in the conversation, which a retry carries)."""

    name = "fake-judge"

    def __init__(self, replies: dict[str, list[str]], default: str | None = None):
        self.replies = replies
        self.default = default
        self.batches: list[int] = []
        self.prompts: list[list[dict]] = []

    def generate(self, conversations, *, tools=None, max_new_tokens=256, temperature=0.0, thinking=False, stop=None):
        self.batches.append(len(conversations))
        out = []
        for conv in conversations:
            self.prompts.append(conv)
            user = conv[1]["content"]
            script = next((r for key, r in self.replies.items() if key in user), None)
            if script is None:
                out.append(Generation(self.default or reply()))
                continue
            attempt = sum(1 for m in conv if m["role"] == "assistant")
            out.append(Generation(script[min(attempt, len(script) - 1)]))
        return out


class NoCalls:
    name = "fake-judge"

    def generate(self, *a, **k):
        raise AssertionError("the judge was called for a shard that is already judged")


def test_judge_messages_render_the_trace_compactly():
    t = make_trace(steps=[(tc("search", query="Film X director"), "Film X was directed by Jane Roe. " + "filler " * 300),
                          (tc("search", query="Jane Roe birthplace"), "Jane Roe was born in Lyon.")])
    msgs = judge_messages(t, max_result_chars=200)
    assert msgs[0] == {"role": "system", "content": JUDGE_RUBRIC}
    text = msgs[1]["content"]
    assert "Question: Where was the director of Film X born?" in text
    assert "Gold answer(s): Lyon | Lyon, France" in text
    assert 'search(query="Film X director")' in text and "more chars]" in text
    assert "Extracted answer: Lyon" in text and "Final thinking:\n```\nRoe was born in Lyon.\n```" in text
    assert "final answer appears in a tool result: yes" in text
    assert len(text) < 2000  # the 2,100-character result was cut


def test_judge_many_batches_retries_only_malformed_and_never_passes_errors():
    traces = [make_trace("a", question="alpha?"), make_trace("b", question="bravo?"),
              make_trace("c", question="charlie?"), make_trace("d", question="delta?"),
              make_trace("e", question="echo?")]
    backend = FakeJudge({
        "alpha": [reply()],
        "bravo": ["Sure!\n```json\n" + reply(c=2, verdict="fail", reasons=["wrong"]) + "\n```"],
        "charlie": ['{"correctness": 5,', reply(s=3)],  # cut off, then valid on retry
        "delta": ["no idea"],  # always malformed
        "echo": [reply(c=7)],  # always out of range
    })
    out = LLMJudge(backend, retries=2).judge_many(traces)
    assert backend.batches == [5, 3, 2]  # one call per attempt, only the malformed ones again
    assert out[0]["verdict"] == "pass" and out[0]["score"] == pytest.approx(0.95) and out[0]["attempts"] == 1
    assert out[1]["verdict"] == "fail" and out[1]["reasons"] == ["wrong"]
    assert out[2]["verdict"] == "pass" and out[2]["search_approach"] == 3 and out[2]["attempts"] == 2
    for bad, raw in ((out[3], "no idea"), (out[4], reply(c=7))):
        assert bad["verdict"] == "judge_error" and bad["raw"] == raw and bad["attempts"] == 3
        assert "score" not in bad
    assert "from 1 to 5" in out[4]["error"]
    # the retry shows the judge its bad reply and why it was refused
    retry = next(p for p in backend.prompts if len(p) == 4 and "charlie" in p[1]["content"])
    assert retry[2]["content"] == '{"correctness": 5,' and "could not be read" in retry[3]["content"]


def test_judge_with_no_retries_and_overflow():
    class Overflow(FakeJudge):
        def generate(self, conversations, **kw):
            self.batches.append(len(conversations))
            return [Generation("", overflow=True) for _ in conversations]

    b = Overflow({})
    out = LLMJudge(b, retries=2).judge_many([make_trace()])
    assert out[0]["verdict"] == "judge_error" and "context" in out[0]["error"] and b.batches == [1]
    out = LLMJudge(FakeJudge({"Film": ["junk"]}), retries=0).judge_many([make_trace()])
    assert out[0]["verdict"] == "judge_error" and out[0]["attempts"] == 1


# -- agreement ----------------------------------------------------------------------------------------

def test_agreement_and_kappa_by_hand():
    P, F = {"passed": True}, {"passed": False}
    jp, jf, err = {"verdict": "pass", "score": 0.9}, {"verdict": "fail", "score": 0.3}, {"verdict": "judge_error"}
    rules = [P] * 4 + [F] * 3 + [P] * 2 + [F] * 1 + [P, F]
    judge = [jp] * 4 + [jf] * 3 + [jf] * 2 + [jp] * 1 + [err, None]
    a = agreement(rules, judge)
    # n = 10 (the error and the unjudged row left out): both pass 4, both fail 3, rules only 2, judge only 1.
    # observed = 7/10 = 0.7; rules pass 6/10, judge pass 5/10;
    # chance = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert a == {"n": 10, "both_pass": 4, "both_fail": 3, "rules_only_pass": 2, "judge_only_pass": 1,
                 "judge_errors": 1, "not_judged": 1, "agreement": pytest.approx(0.7), "kappa": pytest.approx(0.4)}
    # a judge "pass" under min_score counts as a fail: row 0 becomes rules-only
    low = [{"verdict": "pass", "score": 0.6}] + judge[1:]
    assert agreement(rules, low, min_score=0.7)["rules_only_pass"] == 3


def test_agreement_edge_cases():
    assert agreement([], [])["kappa"] is None
    # everyone passes: perfect agreement, kappa undefined
    a = agreement([True, True], [{"verdict": "pass", "score": 1.0}] * 2)
    assert a["agreement"] == 1.0 and a["kappa"] is None
    with pytest.raises(ValueError):
        agreement([True], [])


# -- the stage ----------------------------------------------------------------------------------------

def _root(tmp_path):
    good = make_trace("good", question="alpha?", source="teacher:big")
    wrong = make_trace("wrong", question="bravo?", final="FINAL(Paris)", source="teacher:big")
    judged_bad = make_trace("judged-bad", question="charlie?", source="synthetic:chain")
    err = make_trace("err", question="delta?", source="synthetic:chain")
    low = make_trace("low", question="echo?", source="synthetic:chain")
    write_jsonl(tmp_path / "traces" / "shard-0.jsonl", [good, wrong])
    write_jsonl(tmp_path / "traces" / "shard-1.jsonl", [judged_bad, err, low])
    return [good, wrong, judged_bad, err, low]


def _backend():
    return FakeJudge({
        "alpha": [reply()],  # 0.95
        "bravo": [reply(c=5)],  # the judge wrongly passes what the rules fail
        "charlie": [reply(g=1, verdict="fail", reasons=["invented"])],
        "delta": ["garbage"],
        "echo": [reply(c=3, s=3, g=3, f=3)],  # verdict pass, score 0.6 < 0.7
    })


def test_stage_end_to_end_and_rerun_skip(tmp_path):
    traces = _root(tmp_path)
    backend = _backend()
    s = stage.run(stage.JudgeConfig(), tmp_path, backend=backend)
    assert backend.batches == [2, 3, 1, 1]  # per shard: one batch, then retries of "garbage" only

    kept = read_jsonl(tmp_path / "kept.jsonl")
    assert [r["id"] for r in kept] == ["good"]
    assert kept[0]["messages"] == traces[0]["messages"] and kept[0]["judge"]["verdict"] == "pass"
    assert kept[0]["judge"]["score"] == pytest.approx(0.95) and kept[0]["judge"]["judge_model"] == "fake-judge"

    judged = {r["id"]: r["judge"] for name in ("shard-0.jsonl", "shard-1.jsonl")
              for r in read_jsonl(tmp_path / "judged" / name)}
    assert set(judged) == {t["id"] for t in traces}
    assert judged["wrong"]["verdict"] == "fail" and "rule answer_matches_gold failed" in judged["wrong"]["reasons"]
    assert judged["wrong"]["llm"]["verdict"] == "pass"  # judged anyway, for the agreement report
    assert judged["judged-bad"]["verdict"] == "fail" and judged["judged-bad"]["reasons"] == ["invented"]
    assert judged["err"]["verdict"] == "judge_error" and judged["err"]["llm"]["raw"] == "garbage"
    assert judged["low"]["verdict"] == "fail" and "min_score" in judged["low"]["reasons"][-1]

    saved = json.loads((tmp_path / "judge_summary.json").read_text())
    assert saved == json.loads(json.dumps(s))
    assert s["traces"] == 5 and s["kept"] == 1 and s["kept_rate"] == pytest.approx(0.2)
    assert s["verdicts"] == {"pass": 1, "fail": 3, "judge_error": 1}
    assert s["rule_failures"]["answer_matches_gold"] == 1 and s["rule_failures"]["calls_parse"] == 0
    assert s["by_source"] == {"synthetic:chain": {"n": 3, "kept": 0, "kept_rate": 0.0},
                              "teacher:big": {"n": 2, "kept": 1, "kept_rate": 0.5}}
    assert s["llm"]["judge_error"] == 1 and s["llm"]["judged"] == 5
    # agreement over 4 rows (err excluded): good both pass, wrong judge-only pass, judged-bad and low rules-only.
    a = s["agreement"]
    assert (a["n"], a["both_pass"], a["judge_only_pass"], a["rules_only_pass"], a["judge_errors"]) == (4, 1, 1, 2, 1)
    assert s["shards"]["judged_now"] == ["shard-0.jsonl", "shard-1.jsonl"] and s["shards"]["complete"]
    assert json.loads((tmp_path / "judge_config.json").read_text())["judge_model"] == "fake-judge"

    # rerun: nothing is judged again, the same traces are kept
    before = (tmp_path / "judged" / "shard-1.jsonl").read_text()
    s2 = stage.run(stage.JudgeConfig(), tmp_path, backend=NoCalls())
    assert s2["shards"]["skipped"] == ["shard-0.jsonl", "shard-1.jsonl"] and s2["shards"]["judged_now"] == []
    assert [r["id"] for r in read_jsonl(tmp_path / "kept.jsonl")] == ["good"]
    assert (tmp_path / "judged" / "shard-1.jsonl").read_text() == before

    # a lower bar needs no new judge calls: "low" (0.6) is now kept, and its judged shard says so
    s3 = stage.run(stage.JudgeConfig(min_score=0.5), tmp_path, backend=NoCalls())
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "kept.jsonl")) == ["good", "low"] and s3["kept"] == 2
    assert {r["id"]: r["judge"]["verdict"] for r in read_jsonl(tmp_path / "judged" / "shard-1.jsonl")}["low"] == "pass"


def test_stage_rules_only_then_judge_upgrade_and_other_judge_refused(tmp_path):
    _root(tmp_path)
    s = stage.run(stage.JudgeConfig(), tmp_path)
    assert s["kept"] == 4 and s["llm"] is None and s["agreement"] is None
    assert all(r["judge"]["llm"] is None for r in read_jsonl(tmp_path / "judged" / "shard-0.jsonl"))
    assert read_jsonl(tmp_path / "judged" / "shard-0.jsonl")[1]["judge"]["score"] == pytest.approx(5 / 6)

    # rules-only shards are judged again once a judge is given
    s = stage.run(stage.JudgeConfig(), tmp_path, backend=_backend())
    assert s["shards"]["rejudged"] == ["shard-0.jsonl", "shard-1.jsonl"] and s["kept"] == 1

    class Other(FakeJudge):
        name = "other-judge"

    with pytest.raises(stage.JudgeRunError, match="judged by 'fake-judge'"):
        stage.run(stage.JudgeConfig(), tmp_path, backend=Other({}))
    with pytest.raises(stage.JudgeRunError, match="judged by 'fake-judge'"):
        stage.run(stage.JudgeConfig(), tmp_path)


def test_stage_sharded_workers_and_changed_input(tmp_path):
    traces = _root(tmp_path)
    s = stage.run(stage.JudgeConfig(shard=1, num_shards=2), tmp_path, backend=_backend())
    assert s["shards"]["judged_now"] == ["shard-1.jsonl"] and s["shards"]["missing"] == ["shard-0.jsonl"]
    assert not s["shards"]["complete"] and s["kept"] == 0 and s["traces"] == 3
    s = stage.run(stage.JudgeConfig(shard=0, num_shards=2), tmp_path, backend=_backend())
    assert s["shards"]["complete"] and s["traces"] == 5 and s["kept"] == 1

    # a regenerated input shard is judged again, not mistaken for done
    extra = copy.deepcopy(traces[0]) | {"id": "good2"}
    write_jsonl(tmp_path / "traces" / "shard-0.jsonl", [traces[0], traces[1], extra])
    s = stage.run(stage.JudgeConfig(), tmp_path, backend=_backend())
    assert s["shards"]["rejudged"] == ["shard-0.jsonl"] and s["kept"] == 2


def test_stage_traces_glob_and_no_shards(tmp_path):
    _root(tmp_path)
    s = stage.run(stage.JudgeConfig(traces=str(tmp_path / "traces" / "shard-1.jsonl")), tmp_path / "out")
    assert s["traces"] == 3 and (tmp_path / "out" / "judged" / "shard-1.jsonl").exists()
    with pytest.raises(stage.JudgeRunError, match="no trace shards"):
        stage.run(stage.JudgeConfig(), tmp_path / "empty")


def test_config_and_a_bad_judge_fails_before_anything_is_written(tmp_path, monkeypatch):
    from hopsmith.backends.remote import MissingKeyError

    cfg = build(stage.JudgeConfig, min_score="0.8", judge="none", require_rules="false")
    assert cfg.keep.min_score == 0.8 and cfg.judge is None and cfg.keep.require_rules is False
    with pytest.raises(ConfigError):
        stage.JudgeConfig(shard=2, num_shards=2)
    with pytest.raises(ConfigError):
        build(stage.JudgeConfig, judges="x")
    assert build(stage.JudgeConfig, judge_options='{"timeout": 30}').judge_options == {"timeout": 30}
    _root(tmp_path)
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(MissingKeyError, match=r"^judge=gemini:flash: .*GEMINI_API_KEY"):
        stage.run(stage.JudgeConfig(judge="gemini:flash"), tmp_path)
    with pytest.raises(ConfigError, match="unknown option 'timout'"):
        stage.run(stage.JudgeConfig(judge="openai:m@http://127.0.0.1:9/v1?timout=3"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traces"]  # no judge_config.json, no judged/


def test_command_line(tmp_path, capsys):
    _root(tmp_path)
    assert cli.main(["judge", "--root", str(tmp_path), "--max-turns", "2"]) == 0
    out = capsys.readouterr().out
    assert "kept 0/5 traces" in out and "length 5" in out


def test_rules_read_agent_loop_output():
    """Traces as the agent loop writes them (no `tools` field: the multihop schemas apply)."""
    from conftest import ScriptedBackend, call

    from episodes import run_multihop

    from hopsmith.config import AgentConfig
    from hopsmith.data import build_pools, hop_question, load_questions

    qs = load_questions("musique", limit=2)
    pools = build_pools(qs, size=40, others=qs)
    bad_call = '<tool_call>{"name": "search", "arguments": {"query": "x"</tool_call>'
    backend = ScriptedBackend({q.question: [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))]
                               + ([bad_call] if k else []) + [f"FINAL({q.answer})"] for k, q in enumerate(qs)})
    rows = {r["question_id"]: r for r in run_multihop(qs, pools, backend, AgentConfig())}
    clean, broken = rule_checks(rows[qs[0].id]), rule_checks(rows[qs[1].id])
    assert clean["passed"] and clean["details"]["calls_parse"]["schemas"] == "multihop default"
    # the loop answered the malformed call with an error result, so only calls_parse fails
    assert broken["failed"] == ["calls_parse"]
