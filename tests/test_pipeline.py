"""The whole ladder on a tiny random model: every stage's files, resume, and the comparison."""
import json

import pytest

from hopsmith.traces import sample_traces
from hopsmith import cli
from stages import pipeline


def test_sample_traces_is_balanced_and_deterministic():
    traces = [{"id": f"{s}{i}", "source": s} for s in ("synthetic:chain", "synthetic:retry") for i in range(10)]
    traces += [{"id": "w0", "source": "synthetic:warmup"}]
    picked = sample_traces(traces, 5, seed=1)
    assert len(picked) == 5 and picked == sample_traces(traces, 5, seed=1)
    assert {t["source"] for t in picked} == {"synthetic:chain", "synthetic:retry", "synthetic:warmup"}
    assert sample_traces(traces, None, seed=0) == traces


def test_ladder_end_to_end_on_tiny_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "ladder"
    argv = ["pipeline", "--model", str(tiny_dir), "--eval-limit", "2", "--train-limit", "3", "--max-traces", "4",
            "--epochs", "1", "--max-turns", "1", "--max-new-tokens", "6", "--max-length", "8192", "--hop-traces",
            "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for path in ("eval-base/metrics.json", "kept.jsonl", "train.jsonl", "sft/adapter_config.json",
                 "sft/training.json", "eval-sft/metrics.json", "comparison.json", "comparison.txt", "eval-base/report.html",
                 "report.html"):
        assert (out / path).exists(), path
    assert list((out / "traces").glob("shard-*.jsonl"))
    result = json.loads((out / "comparison.json").read_text())
    assert result["base"]["n"] == result["sft"]["n"] == 2
    trained = result["sft_training"]
    assert 0 < trained["traces"] + trained["too_long_dropped"] == len((out / "train.jsonl").read_text().splitlines()) <= 4
    assert trained["too_long_dropped"] == 0  # traces are sampled among those that fit max_length
    # the single-hop reading traces join the sampled ones as their own type
    hops = (out / "hops.jsonl").read_text().splitlines()
    assert hops and "synthetic:hop" in {json.loads(line)["source"] for line in (out / "train.jsonl").read_text().splitlines()}
    comparison = (out / "comparison.txt").read_text()
    assert "exact match" in printed and "sft" in comparison
    # the comparison is paired and names how each side was prompted (the base gets the one-shot example)
    assert "2 paired" in comparison and comparison.count("McNemar exact p = ") == 2
    assert "prompt, base" in comparison and "one-shot" in comparison and "prompted differently" in comparison
    # training questions come from the train split only: the tuned eval ran, so no leakage was found
    assert result["sft"]["leakage"]["count"] == 0
    # the collapse guard's decision and the paired verdict are in the comparison, and the verdict is printed last
    assert "collapse guard: sft" in comparison and result["verdict"]["line"] in comparison
    assert printed.strip().splitlines()[-1] == result["verdict"]["line"]
    assert result["verdict"]["verdict"] in ("better", "worse", "mixed", "indistinguishable")
    promoted = json.loads((out / "promoted.json").read_text())
    assert promoted["name"] == result["promoted"]["name"] in ("base", "sft")
    # a rerun resumes every stage instead of redoing it
    before = (out / "eval-base" / "results.jsonl").read_text()
    assert cli.main(argv) == 0
    assert (out / "eval-base" / "results.jsonl").read_text() == before


def test_ladder_with_simpo_on_tiny_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "ladder"
    argv = ["pipeline", "--model", str(tiny_dir), "--eval-limit", "2", "--train-limit", "4", "--max-traces", "4",
            "--epochs", "1", "--max-turns", "1", "--max-new-tokens", "6", "--max-length", "8192", "--mine-limit", "4",
            "--max-pairs", "2", "--with", "simpo", "--out", str(out)]
    assert cli.main(argv) == 0
    for path in ("mine/results.jsonl", "pairs/pairs.jsonl", "simpo/adapter_config.json", "simpo/behaviour.json",
                 "eval-simpo/metrics.json", "comparison-simpo.txt", "comparison-simpo.json"):
        assert (out / path).exists(), path
    result = json.loads((out / "comparison-simpo.json").read_text())
    assert 0 < result["pairs"]["pairs"] <= 2 and result["simpo"]["n"] == 2
    assert {"tool_use_rate", "query_diversity"} <= set(result["training"]["behaviour_after"])
    # the mining run used train questions only, and the SimPO adapter's eval found no overlap
    mined = {json.loads(line)["question_id"] for line in (out / "mine" / "results.jsonl").read_text().splitlines()}
    evaluated = {json.loads(line)["question_id"] for line in (out / "eval-simpo" / "results.jsonl").read_text().splitlines()}
    assert mined and not mined & evaluated and result["simpo"]["leakage"]["count"] == 0
    assert "simpo" in capsys.readouterr().out
    # the guard ran after SimPO too, against the adapter the ladder kept before it
    decision = json.loads((out / "promoted.json").read_text())["decision"]
    assert decision["new"] == "simpo" and decision["kept"] in ("simpo", decision["previous"])
    assert "collapse guard: simpo" in (out / "comparison-simpo.txt").read_text()


def test_unknown_with_stage_is_a_clear_error(capsys):
    assert cli.main(["pipeline", "--with", "reinforce"]) == 2
    assert "unknown --with stage(s) reinforce" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["eval", "--limit", "1"],
    ["rft", "--limit", "1"],
    ["simpo", "--pairs", "{pairs}"],
    ["grpo", "--limit", "1"],
])
def test_a_path_that_is_not_an_adapter_is_a_clear_error(argv, tiny_dir, tmp_path, capsys):
    """Every stage that loads an adapter refuses a wrong path up front: one line, exit 2, nothing sampled."""
    (tmp_path / "pairs.jsonl").write_text('{"prompt": [], "chosen": [], "rejected": []}\n')
    argv = [a.replace("{pairs}", str(tmp_path / "pairs.jsonl")) for a in argv]
    code = cli.main(argv + ["--model", str(tiny_dir), "--adapter", str(tmp_path / "nope"),
                            "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"--adapter {tmp_path / 'nope'}: no adapter_config.json" in err
    assert not (tmp_path / "out" / "samples.jsonl").exists()
