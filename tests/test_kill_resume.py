"""A run killed with SIGKILL mid-way and run again: nothing lost, nothing twice, the finished part untouched."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_roles import AGENT, agent_server

from hopsmith.cli import main
from hopsmith.io import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "hopsmith.cli", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the run never got far enough to be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_killed_eval_resumes_without_loss_or_duplicates(serve, tmp_path):
    oa = agent_server(serve)
    out = tmp_path / "run"
    hold = {"on": True}
    # Once two episodes are written the server stops answering, so the kill always lands mid-run.
    oa.delay = lambda request: 60 if hold["on"] and len(_lines(out / "results.jsonl")) >= 2 else 0
    argv = ["eval", "--limit", "6", "--max-turns", "3", "--extractor", "none", "--bootstrap", "50", "--quiet", "--batch-size", "1",
            "--model", f"openai:{AGENT}@{oa.url}/v1?concurrency=1", "--out", str(out)]
    proc = _start(argv)
    _kill_when(proc, lambda: len(_lines(out / "results.jsonl")) >= 2)
    hold["on"] = False
    before = _lines(out / "results.jsonl")
    assert 2 <= len(before) < 6 and not (out / "metrics.json").exists()
    assert main(argv) == 0
    rows = read_jsonl(out / "results.jsonl")
    ids = [r["question_id"] for r in rows]
    assert len(ids) == 6 == len(set(ids))  # every question once
    assert _lines(out / "results.jsonl")[: len(before)] == before  # what finished before the kill is kept as is
    assert json.loads((out / "metrics.json").read_text())["n"] == 6


def test_a_killed_sft_resumes_from_its_checkpoint(tmp_path, tiny_dir):
    from test_sft import _traces

    from hopsmith.io import write_jsonl

    write_jsonl(tmp_path / "t.jsonl", _traces(n=3))
    out = tmp_path / "sft"
    argv = ["sft", "--traces", str(tmp_path / "t.jsonl"), "--model", str(tiny_dir), "--max-steps", "12",
            "--save-steps", "2", "--batch-size", "1", "--lora-r", "2", "--lora-alpha", "4", "--max-length", "8192",
            "--out", str(out)]
    proc = _start(argv)
    _kill_when(proc, lambda: (out / "checkpoints" / "checkpoint-4").exists(), timeout=240)
    assert not (out / "training.json").exists()
    assert main(argv) == 0
    training = json.loads((out / "training.json").read_text())
    assert training["steps"] == 12
    losses = json.loads((out / "loss.json").read_text())
    steps = [x["step"] for x in losses]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # resumed: no step logged twice
    assert min(steps) > 2  # the rerun started from a checkpoint the kill left (a half-saved one is skipped)


def test_killed_teacher_traces_resume_without_loss_or_duplicates(serve, tmp_path):
    """A teacher's traces are appended as its episodes end; after a kill the rerun plays only the rest."""
    oa = agent_server(serve, renders_tools=False)
    root = tmp_path / "ladder"
    partial = root / "traces" / ".teacher-0.partial.jsonl"
    hold = {"on": True}
    oa.delay = lambda request: 60 if hold["on"] and len(_lines(partial)) >= 2 else 0
    argv = ["traces", "--root", str(root), "--limit", "5", "--max-turns", "3", "--thinking-fraction", "0",
            "--batch-size", "1", "--teacher", f"openai:{AGENT}@{oa.url}/v1?concurrency=1"]
    proc = _start(argv)
    _kill_when(proc, lambda: len(_lines(partial)) >= 2)
    hold["on"] = False
    before = _lines(partial)
    assert 2 <= len(before) < 5
    assert main(argv) == 0
    traces = read_jsonl(root / "traces" / "rejected-0.jsonl") + read_jsonl(root / "traces" / "shard-0.jsonl")
    ids = [t["question_id"] for t in traces]
    assert len(ids) == 5 == len(set(ids))  # every question played once in all


def test_a_killed_llm_judge_resumes_from_its_judged_shards(serve, tmp_path):
    """Each judged shard is written whole; killed on the second shard, the rerun keeps the first untouched,
    judges only the rest, and every trace is judged and kept once."""
    from fake_servers import chat_reply, models_list

    from hopsmith.io import write_jsonl

    verdict = {"correctness": 5, "search_approach": 4, "grounding": 5, "format": 5, "verdict": "pass", "reasons": ["ok"]}
    judged = tmp_path / "judged"
    hold = {"on": True}
    judge = serve([chat_reply(json.dumps(verdict))], get=models_list("judge-model"))
    # the second shard's calls hang once the first shard is judged: the kill lands between shards
    judge.delay = lambda request: 60 if hold["on"] and (judged / "shard-0.jsonl").exists() else 0
    for s in range(3):
        write_jsonl(tmp_path / "traces" / f"shard-{s}.jsonl", [
            {"id": f"t{s}{k}", "question_id": f"q{s}{k}", "answers": ["Eldon"], "messages": [
                {"role": "user", "content": f"Question: Where was Lloyd Dane born? ({s}{k})"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "search", "arguments": {"query": "Lloyd Dane"}}}]},
                {"role": "tool", "name": "search", "content": "Lloyd Dane was born in Eldon."},
                {"role": "assistant", "content": "FINAL(Eldon)"}]} for k in range(2)])
    argv = ["judge", "--root", str(tmp_path), "--judge", f"openai:judge-model@{judge.url}/v1?concurrency=1"]
    proc = _start(argv)
    _kill_when(proc, lambda: (judged / "shard-0.jsonl").exists())
    hold["on"] = False
    first = (judged / "shard-0.jsonl").read_text()
    assert not (judged / "shard-2.jsonl").exists()
    calls_before = len(judge.requests)
    assert main(argv) == 0
    assert (judged / "shard-0.jsonl").read_text() == first  # not judged again
    judge_calls = [r for r in judge.requests[calls_before:] if r["body"].get("max_completion_tokens") != 1]
    assert len(judge_calls) == 4  # only the two shards left were judged (2 traces each)
    kept = read_jsonl(tmp_path / "kept.jsonl")
    assert sorted(t["id"] for t in kept) == sorted(f"t{s}{k}" for s in range(3) for k in range(2))
