"""GRPO with tools: the reward on hand-made episodes, seed 004's zero-variance fallback, and a short run
of TRL's GRPOTrainer with our multi-turn rollouts on a tiny model."""
import json

import pytest

from hopsmith.config import ConfigError
from stages import grpo


def _episode(acc, calls, finished=True):
    return {"metrics": {"acc": acc}, "finished": finished, "tool_calls": calls}


S1 = {"name": "search", "valid": True, "arguments": {"query": "lloyd dane born"}}
S2 = {"name": "search", "valid": True, "arguments": {"query": "eldon county"}}
BAD = {"name": None, "valid": False, "arguments": {}}


def test_reward_on_hand_made_episodes():
    cfg = grpo.GRPOConfig()
    best = grpo.reward(_episode(1.0, [S1, S2]), cfg)
    assert best == {"total": pytest.approx(0.75 + 0.25 + 0.05), "correctness": 1.0, "approach": 1.0, "format": 0.05}
    lucky = grpo.reward(_episode(1.0, []), cfg)  # right without searching: no approach credit
    assert lucky["total"] == pytest.approx(0.75 + 0.05)
    repeat = grpo.reward(_episode(0.0, [S1, S1, BAD]), cfg)  # wrong, repeated query, one invalid call
    assert repeat["approach"] == 0.5 and repeat["format"] == pytest.approx(0.05 - 0.05)
    unfinished = grpo.reward(_episode(0.0, [S1, S2], finished=False), cfg)
    assert unfinished["total"] == pytest.approx(0.25)
    judged = grpo.reward(_episode(0.0, [S1]), cfg, {"verdict": "fail", "correctness": 3, "search_approach": 5})
    assert judged["correctness"] == 0.5 and judged["approach"] == 1.0
    assert grpo.reward(_episode(0.0, [S1]), cfg, {"verdict": "judge_error"})["correctness"] == 0.0


def test_zero_variance_groups_fall_back_as_seed_004_says():
    adv, counts = grpo.group_advantages([0.0, 0.0, 0.0,   0.9, 0.9, 0.9,   0.0, 1.0, 0.0], 3)
    assert adv[:3] == [0.0, 0.0, 0.0]  # all failed: skipped, no signal invented
    assert adv[3:6] == pytest.approx([0.4, 0.4, 0.4])  # all succeeded: r - 0.5 keeps pushing them up
    assert adv[7] > 0 > adv[6] and sum(adv[6:]) == pytest.approx(0.0, abs=1e-6)
    assert counts == {"normalised": 1, "skipped_low": 1, "fallback_r_minus_half": 1}
    with pytest.raises(ValueError, match="groups of 4"):
        grpo.group_advantages([1.0] * 6, 4)


def test_temperatures_span_the_range_and_config_errors():
    assert grpo.temperatures(grpo.GRPOConfig(num_generations=4, temperature_min=0.7, temperature_max=1.15)) == \
        [0.7, 0.85, 1.0, 1.15]
    with pytest.raises(ConfigError, match="num_generations"):
        grpo.GRPOConfig(num_generations=1)
    with pytest.raises(ConfigError, match="temperature"):
        grpo.GRPOConfig(temperature_min=1.2, temperature_max=0.7)
    with pytest.raises(ConfigError, match="micro_batch must divide the 12 rollouts"):
        grpo.GRPOConfig(num_generations=4, questions_per_step=3, micro_batch=5)


def test_grpo_runs_a_few_steps_on_tiny_model(tiny_model, tiny_tokenizer, tmp_path, capsys):
    import copy

    # Two groups a step in passes of one rollout: four gradient-accumulation passes per optimiser step, one
    # generation per step.
    cfg = grpo.GRPOConfig(limit=3, num_generations=2, questions_per_step=2, micro_batch=1, max_steps=2, max_turns=2,
                          max_new_tokens=8, min_tool_use=0.0)
    summary = grpo.run(cfg, tmp_path, model=copy.deepcopy(tiny_model), tokenizer=copy.deepcopy(tiny_tokenizer))
    assert summary["steps"] == 2 and (tmp_path / "adapter_config.json").exists()
    # every generation step went through our advantage rule, one group per question
    assert sum(summary["groups"].values()) == 4
    history = json.loads((tmp_path / "behaviour.json").read_text())
    assert len(history) == 2 and history[0]["n"] == 4 and {"tool_use_rate", "query_diversity", "reward_mean", "mean_turns"} <= set(history[0])
    logs = json.loads((tmp_path / "log_history.json").read_text())
    assert any("loss" in entry for entry in logs)
    # one progress line a step, with what that step's rollouts did
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("grpo step ")]
    assert [line.split(":")[0] for line in progress] == ["grpo step 1/2", "grpo step 2/2"]
    assert f"tool use {history[-1]['tool_use_rate']:.0%}" in progress[-1]


def test_grpo_plays_the_wikicode_environment(tiny_model, tiny_tokenizer, tmp_path):
    """`hopsmith grpo --env wikicode`: the prompts are the code environment's, its rollouts run in the sandbox."""
    import copy

    from sandbox_support import local_sandbox

    from hopsmith.tools.sandbox import SandboxConfig

    local_sandbox({}, SandboxConfig()).close()  # skips where bubblewrap cannot run (CI requires it)
    cfg = grpo.GRPOConfig(limit=2, num_generations=2, max_steps=1, max_turns=2, max_new_tokens=8, min_tool_use=0.0,
                          env="wikicode")
    summary = grpo.run(cfg, tmp_path, model=copy.deepcopy(tiny_model), tokenizer=copy.deepcopy(tiny_tokenizer))
    assert summary["steps"] == 1 and summary["config"]["agent"]["env"] == "wikicode"
    assert len(summary["behaviour"]) == 1
    # a code episode's approach: primitives called, every program ran, none repeated
    row = {"tool_calls": [{"name": "python", "valid": True, "status": "ok", "primitives": ["search_pages"],
                           "arguments": {"code": "print(search_pages('x'))"}}]}
    assert grpo.rule_approach(row) == 1.0
    row["tool_calls"].append({**row["tool_calls"][0], "status": "error"})
    assert grpo.rule_approach(row) == 0.5
