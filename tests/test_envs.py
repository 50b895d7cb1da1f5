"""A new environment is one file and one registry line: the arithmetic env of tests/envs_arith.py runs through
the loop, the metrics, the judge's rules and `hopsmith eval --env` unchanged."""
import json

import pytest

import envs_arith
from conftest import ScriptedBackend
from hopsmith import cli
from hopsmith.agent.loop import run_episodes
from hopsmith.config import AgentConfig
from hopsmith.envs import ENVS, get_env
from hopsmith.judge import rule_checks
from hopsmith.metrics import aggregate

ADD = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


def scripted():
    return ScriptedBackend({"2 + 3": [ADD, "FINAL(5)"], "4 + 4": ["FINAL(9)"],
                            "1 + 1": ['<tool_call>\n{"name": "mul", "arguments": {}}\n</tool_call>', ADD, ADD]})


def test_the_arith_env_runs_through_the_loop_metrics_and_judge():
    sums = [envs_arith.Sum("a", (2, 3)), envs_arith.Sum("b", (4, 4)), envs_arith.Sum("c", (1, 1))]
    cfg = AgentConfig(max_turns=2)
    rows = {r["question_id"]: r for r in run_episodes(sums, envs_arith.make(cfg), scripted(), cfg)}
    assert rows["a"]["prediction"] == "5" and rows["a"]["metrics"]["em"] == 1.0 and rows["a"]["turns"] == 2
    assert [m["content"] for m in rows["a"]["messages"] if m["role"] == "tool"] == ["5"]
    assert rows["b"]["prediction"] == "9" and rows["b"]["metrics"]["em"] == 0.0
    # an unknown tool is answered with an error, and at the cap the env's answer_now asks for the answer
    assert rows["c"]["tool_calls"][0]["valid"] is False and rows["c"]["stop"] == "max_turns"
    assert rows["c"]["messages"][-2] == {"role": "user", "content": envs_arith.ArithEnv.answer_now}
    assert rows["c"]["prediction"] is None and rows["c"]["turns"] == 3
    metrics = aggregate(list(rows.values()), n_boot=50)
    assert metrics["n"] == 3 and metrics["em"]["mean"] == pytest.approx(1 / 3)
    assert metrics["invalid_call_rate"] == pytest.approx(1 / 3) and metrics["tool_use_rate"] == pytest.approx(2 / 3)
    checks = rule_checks(rows["a"])
    assert checks["passed"], checks
    assert not rule_checks(rows["b"])["passed"]  # answers 9 for 4 + 4: the gold rule fails it


def test_eval_env_picks_a_registered_env(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(ENVS, "arith", ENVS["multihop"])  # restored after the test
    envs_arith.register()
    assert get_env("arith").load is envs_arith.load
    monkeypatch.setattr("hopsmith.evaluation.agent_backends", lambda agent: (scripted(), None))
    out = tmp_path / "arith"
    assert cli.main(["eval", "--env", "arith", "--data", "[[2, 3], [4, 4]]", "--max-turns", "2",
                     "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["prediction"] for r in rows) == ["5", "9"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["em"]["mean"] == 0.5
    assert json.loads((out / "config.json").read_text())["agent"]["env"] == "arith"
