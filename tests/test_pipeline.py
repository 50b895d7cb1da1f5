"""The whole ladder on a tiny random model: every stage's files, resume, and the comparison."""
import json

import pytest

from hopsmith.data import load_questions
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
            "--max-pairs", "2", "--with", "simpo", "--pair-chosen", "traces", "--dev-limit", "2", "--out", str(out)]
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
    # it decided on the dev split (the eval split's verdict is reported beside it), where nothing was mined
    text = (out / "comparison-simpo.txt").read_text()
    assert "collapse guard, on the dev split (2 held-out train questions): simpo" in text
    assert "eval split (reported, not used to choose): " in text
    dev_run = {json.loads(line)["question_id"] for line in (out / "dev-simpo" / "results.jsonl").read_text().splitlines()}
    assert len(dev_run) == 2 and not dev_run & mined and result["dev"]["simpo"]["n"] == 2


def test_ladder_with_rft_then_on_policy_simpo_on_tiny_model(tiny_dir, tmp_path, capsys):
    """`--with simpo,rft` runs RFT first; the on-policy pairs reuse RFT's samples of the same policy. A random
    tiny model is never right, so both stages say why they trained nothing and the ladder keeps SFT."""
    out = tmp_path / "ladder"
    argv = ["pipeline", "--model", str(tiny_dir), "--eval-limit", "2", "--train-limit", "3", "--max-traces", "3",
            "--epochs", "1", "--max-turns", "1", "--max-new-tokens", "6", "--max-length", "8192",
            "--rft-samples", "2", "--rft-limit", "2", "--with", "simpo,rft", "--dev-limit", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    samples = [json.loads(line) for line in (out / "rft" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {s["sample"] for s in samples} == {0, 1}
    config = json.loads((out / "rft" / "config.json").read_text())
    assert config["agent"]["adapter"] == str(out / "sft") and config["agent"]["temperature"] == 0.8
    assert config["agent"]["few_shot"] is False and config["agent"]["max_turns"] == 1  # the eval's env and prompt
    result = json.loads((out / "comparison.json").read_text())
    assert result["rft"]["skipped"] and result["rft"]["samples"]["samples"] == 4
    assert result["simpo"]["skipped"] and result["simpo"]["pairs"]["pairs"] == 0
    assert not (out / "mine").exists() and not (out / "samples-sft").exists()  # no second sampling of SFT
    assert sorted(d.name for d in out.glob("rft*")) == ["rft"]
    assert printed.index("[7/8] rft on sft") < printed.index("[8/8] simpo on sft")
    assert "--pair-chosen traces" in printed and result["promoted"]["name"] in ("base", "sft")
    # --with holds out the dev split: traces and samples come from the fit split, and the kept adapter ran on
    # dev questions, which nothing trained on, for the guard to judge the next stages against
    dev = {q.id for q in load_questions("musique", split="dev")}
    assert json.loads((out / "pipeline.json").read_text())["dev"] is True
    assert json.loads((out / "traces" / "config-0.json").read_text())["split"] == "fit" and config["split"] == "fit"
    trained = {json.loads(line)["question_id"] for line in (out / "train.jsonl").read_text().splitlines()}
    assert trained and not trained & dev and not {s["question_id"] for s in samples} & dev
    dev_run = [json.loads(line)["question_id"] for line in (out / "dev-sft" / "results.jsonl").read_text().splitlines()]
    assert len(dev_run) == 2 and set(dev_run) <= dev


def test_on_policy_pairs_set_the_policys_right_sample_against_its_wrong_one(tiny_dir, tmp_path):
    from conftest import ScriptedBackend, call

    from hopsmith.data import hop_question, load_questions
    from stages import rft

    q = load_questions("musique", split="train", limit=1)[0]
    answers = iter([q.answer, "Paris"])  # sample 0 answers right, sample 1 wrong, after the same search
    script = {q.question: [call("search", query=hop_question(q, 0)), lambda conv: f"FINAL({next(answers)})"]}
    cfg = pipeline.PipelineConfig(model=str(tiny_dir), train_limit=1, rft_samples=2, max_turns=3).resolved()
    kept = {"name": "base", "adapter": None, "metrics": {}}
    rft.sample(pipeline.rft_config(cfg, None), tmp_path / "rft-base", backend=ScriptedBackend(script))
    pairs = pipeline._pairs(cfg, tmp_path, kept)  # reads the samples back: nothing is sampled again
    assert pairs["pairs"] == 1 and pairs["counts"]["wrong_answer"] == 1
    pair = json.loads((tmp_path / "pairs" / "pairs.jsonl").read_text())
    assert pair["chosen"][-1]["content"].endswith(f"FINAL({q.answer})") and pair["rejected"][-1]["content"] == "FINAL(Paris)"
    assert pair["chosen_source"] == "policy:rft" and pair["question_id"] == q.id
    samples = [json.loads(line) for line in (tmp_path / "rft-base" / "samples.jsonl").read_text().splitlines()]
    assert pair["prompt"] == [{k: m[k] for k in ("role", "content")} for m in samples[1]["messages"][:2]]


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
