"""Any model in any role, through the command line, against fake servers that speak the real wire formats:
`hopsmith eval --model openai:... --extractor gemini:...`, a teacher and a judge behind an OpenAI-compatible
server, how tool specs reach a server that ignores the `tools` field (and that the run's config says so), and
every backend failure as one line, exit 2 (or 1 mid-run), no traceback, nothing half-written."""
from __future__ import annotations

import json

import pytest
from fake_servers import chat_reply, gemini_reply, models_list

from hopsmith.cli import main
from hopsmith.io import read_jsonl
from hopsmith.tools.extract import EXTRACT_SYSTEM

AGENT = "agent-model"


def agent_server(serve, *, renders_tools: bool = True, fail_after_probes: bool = False, ids=(AGENT,)):
    """An OpenAI-compatible agent: one search, then FINAL(answer). It calls natively when the request has tools,
    and writes the call as text when they came in the system prompt. Prompt tokens grow with what it renders."""
    def reply(request):
        body = request["body"]
        msgs = body["messages"]
        size = len(json.dumps(msgs)) // 4 + (len(json.dumps(body["tools"])) // 4 if renders_tools and body.get("tools") else 0)
        if body.get("max_completion_tokens") == 1:  # the check's probes
            return chat_reply("OK", usage=(size, 1))
        if fail_after_probes:
            return 500, {"error": {"message": "the GPU fell over"}}, {}
        if msgs[0]["role"] == "system" and msgs[0]["content"].startswith("You read a text"):  # an extractor
            return chat_reply("Eldon", usage=(size, 2))
        searched = any(m["role"] == "tool" or "<tool_response>" in (m.get("content") or "") for m in msgs)
        if searched:
            return chat_reply("FINAL(Eldon)", usage=(size, 4))
        if body.get("tools"):
            return chat_reply(None, tool_calls=[{"id": "c1", "type": "function", "function": {
                "name": "search", "arguments": '{"query": "birthplace"}'}}], usage=(size, 9))
        return chat_reply('<tool_call>\n{"name": "search", "arguments": {"query": "birthplace"}}', usage=(size, 9))
    return serve(reply, get=models_list(*ids))


def gemini_server(serve):
    def get(path):
        return 200, {"name": "models/gemini-2.5-flash"}, {}
    return serve(lambda request: gemini_reply([{"text": "Eldon"}]), get=get)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("hopsmith: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


def test_eval_with_a_served_agent_and_a_gemini_extractor(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    oa, gm = agent_server(serve), gemini_server(serve)
    out = tmp_path / "run"
    code = main(["eval", "--data", "musique", "--limit", "2", "--max-turns", "3", "--bootstrap", "50", "--quiet",
                 "--model", f"openai:{AGENT}@{oa.url}/v1", "--extractor", f"gemini:gemini-2.5-flash?base_url={gm.url}",
                 "--out", str(out)])
    assert code == 0
    rows = read_jsonl(out / "results.jsonl")
    assert [(r["stop"], r["prediction"], r["model"]) for r in rows] == [("final", "Eldon", f"openai:{AGENT}@{oa.url}/v1")] * 2
    config = json.loads((out / "config.json").read_text())
    agent, extractor = config["backends"]["agent"], config["backends"]["extractor"]
    assert (agent["tools"], agent["kind"]) == ("field", "openai") and "reaches the prompt" in agent["tools_detail"]
    assert (extractor["kind"], extractor["name"], extractor["same_as_agent"]) == ("gemini", "gemini:gemini-2.5-flash", False)
    # the extraction benchmark went to Gemini, with the extractor's prompt
    assert (out / "extraction.jsonl").exists() and gm.requests
    assert all(r["body"]["systemInstruction"]["parts"][0]["text"] == EXTRACT_SYSTEM for r in gm.requests)
    assert gm.gets and gm.gets[0].startswith("/v1/models/gemini-2.5-flash")  # checked before the run
    agent_requests = [r["body"] for r in oa.requests if r["body"]["max_completion_tokens"] != 1]
    assert agent_requests and all(b["model"] == AGENT and b["tools"][0]["function"]["name"] == "search"
                                  and b["stop"] == ["</tool_call>", "<tool_response>"] for b in agent_requests)


def test_a_server_that_ignores_tools_gets_them_in_the_prompt_and_the_config_says_so(serve, tmp_path):
    oa = agent_server(serve, renders_tools=False)
    out = tmp_path / "run"
    assert main(["eval", "--limit", "2", "--max-turns", "3", "--extractor", "none", "--bootstrap", "50", "--quiet",
                 "--model", f"openai:{AGENT}@{oa.url}/v1", "--out", str(out)]) == 0
    agent = json.loads((out / "config.json").read_text())["backends"]["agent"]
    assert agent["tools"] == "prompt" and "ignores the tools field" in agent["tools_detail"]
    asked = [r["body"] for r in oa.requests if r["body"]["max_completion_tokens"] != 1]
    assert all("tools" not in b and "# Tools" in b["messages"][0]["content"] for b in asked)
    rows = read_jsonl(out / "results.jsonl")
    assert [r["prediction"] for r in rows] == ["Eldon"] * 2 and all(r["tool_calls"][0]["valid"] for r in rows)

    oa = agent_server(serve, renders_tools=True)
    out = tmp_path / "forced"
    assert main(["eval", "--limit", "1", "--max-turns", "3", "--extractor", "none", "--bootstrap", "50", "--quiet",
                 "--model", f"openai:{AGENT}@{oa.url}/v1", "--tools-in-prompt", "--out", str(out)]) == 0
    agent = json.loads((out / "config.json").read_text())["backends"]["agent"]
    assert (agent["tools"], agent["tools_detail"]) == ("prompt", "--tools-in-prompt")
    assert [r["body"].get("tools") for r in oa.requests] == [None] * len(oa.requests)  # not even a probe with tools


def test_options_from_a_toml_table(serve, tmp_path):
    oa = agent_server(serve)
    config = tmp_path / "eval.toml"
    config.write_text(f'model = "openai:{AGENT}@{oa.url}/v1"\nextractor = "none"\nlimit = 1\nmax_turns = 3\n'
                      'model_options = {timeout = 30, extra_body = {seed = 7}}\n')
    assert main(["eval", "--config", str(config), "--quiet", "--bootstrap", "50", "--out", str(tmp_path / "run")]) == 0
    assert all(r["body"]["seed"] == 7 for r in oa.requests)


def _dead_url() -> str:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def test_backend_failures_are_one_line_and_leave_nothing_behind(serve, tmp_path, monkeypatch, capsys):
    import hopsmith.backends.hf as hf

    def no_weights(self, *a, **kw):
        raise AssertionError("weights were loaded before a bad backend was found")

    monkeypatch.setattr(hf.HFBackend, "__init__", no_weights)
    out = tmp_path / "run"

    def fails(argv: list[str], code: int = 2) -> str:
        assert main([*argv, "--limit", "2", "--max-turns", "2", "--quiet", "--out", str(out)]) == code
        assert not out.exists()  # no directory, no config.json, no empty .partial
        return one_line_error(capsys)

    dead = _dead_url()
    line = fails(["eval", "--model", "embedded", "--extractor", f"openai:m@{dead}?max_retries=0"])
    assert line.startswith(f"hopsmith: error: extractor=openai:m@{dead}?max_retries=0: ") and "cannot connect" in line
    pinned = serve([(400, {"detail": f"Server is pinned to 'served-model'; requested '{AGENT}'."}, {})],
                   get=models_list("served-model"))
    line = fails(["eval", "--model", f"openai:{AGENT}@{pinned.url}/v1"])
    assert f"does not serve model '{AGENT}'" in line and "lists: served-model" in line
    no_v1 = serve([(404, {"detail": "Not Found"}, {})])
    assert "does the base URL end in /v1?" in fails(["eval", "--model", f"openai:{AGENT}@{no_v1.url}"])
    assert "unknown option 'timout'" in fails(["eval", "--model", f"openai:{AGENT}@{no_v1.url}/v1?timout=3"])
    assert "an adapter needs a local --model" in fails(["eval", "--model", f"openai:{AGENT}@{no_v1.url}/v1",
                                                       "--adapter", str(tmp_path)])
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    assert "set GEMINI_API_KEY" in fails(["eval", "--model", "embedded", "--extractor", "gemini:gemini-2.5-flash"])
    assert "unknown model 'Org/missing'" in fails(["eval", "--model", "Org/missing"])
    # A server that passes the check and then fails: exit 1, one line, and still nothing written before a result
    broken = agent_server(serve, fail_after_probes=True)
    line = fails(["eval", "--extractor", "none", "--model", f"openai:{AGENT}@{broken.url}/v1?max_retries=0"], code=1)
    assert "HTTP 500" in line and "rerun the same command to resume" in line


def test_a_served_teacher_writes_traces_and_records_its_tool_handling(serve, tmp_path, capsys):
    oa = agent_server(serve, renders_tools=False)
    root = tmp_path / "ladder"
    assert main(["traces", "--root", str(root), "--limit", "2", "--max-turns", "3", "--thinking-fraction", "0",
                 "--teacher", f"openai:{AGENT}@{oa.url}/v1"]) == 0
    config = json.loads((root / "traces" / "config-0.json").read_text())
    assert config["backends"]["teacher"]["tools"] == "prompt"
    traces = read_jsonl(root / "traces" / "rejected-0.jsonl") + read_jsonl(root / "traces" / "shard-0.jsonl")
    assert len(traces) == 2 and all(t["source"] == f"teacher:openai:{AGENT}@{oa.url}/v1" for t in traces)
    assert not (root / "traces" / ".teacher-0.partial.jsonl").exists()
    capsys.readouterr()
    dead_root = tmp_path / "dead"
    assert main(["traces", "--root", str(dead_root), "--limit", "2", "--teacher", f"openai:t@{_dead_url()}?max_retries=0"]) == 2
    assert "teacher=openai:t@" in one_line_error(capsys) and not dead_root.exists()


def test_a_served_judge(serve, tmp_path):
    from hopsmith.io import write_jsonl

    verdict = {"correctness": 5, "search_approach": 4, "grounding": 5, "format": 5, "verdict": "pass", "reasons": ["ok"]}
    judge = serve([chat_reply(json.dumps(verdict))], get=models_list("judge-model"))
    trace = {"id": "t1", "question_id": "q1", "answers": ["Eldon"], "messages": [
        {"role": "user", "content": "Question: Where was Lloyd Dane born?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Lloyd Dane"}}}]},
        {"role": "tool", "name": "search", "content": "Lloyd Dane was born in Eldon."},
        {"role": "assistant", "content": "FINAL(Eldon)"}]}
    write_jsonl(tmp_path / "traces" / "shard-0.jsonl", [trace])
    assert main(["judge", "--root", str(tmp_path), "--judge", f"openai:judge-model@{judge.url}/v1"]) == 0
    config = json.loads((tmp_path / "judge_config.json").read_text())
    assert config["backends"]["judge"]["spec"] == f"openai:judge-model@{judge.url}/v1"
    assert read_jsonl(tmp_path / "kept.jsonl")[0]["judge"]["llm"]["verdict"] == "pass"
    # the probe, then the one judge call: its rubric as the system turn
    assert judge.requests[-1]["body"]["messages"][0]["content"].startswith("You review one transcript")


def test_a_rerun_may_change_transport_options_but_not_what_the_model_answers(serve, tmp_path, capsys):
    oa = agent_server(serve)
    out = tmp_path / "run"
    base = ["eval", "--limit", "1", "--max-turns", "3", "--extractor", "none", "--bootstrap", "50", "--quiet", "--out", str(out)]
    assert main([*base, "--model", f"openai:{AGENT}@{oa.url}/v1"]) == 0
    turns = len(oa.requests)
    assert main([*base, "--model", f"openai:{AGENT}@{oa.url}/v1?timeout=300&concurrency=2"]) == 0
    assert [r["body"]["max_completion_tokens"] for r in oa.requests[turns:]] == [1, 1]  # only the check: resumed
    capsys.readouterr()
    assert main([*base, "--model", f'openai:{AGENT}@{oa.url}/v1?extra_body={{"seed":1}}']) == 2
    assert "holds results of another configuration" in one_line_error(capsys)
