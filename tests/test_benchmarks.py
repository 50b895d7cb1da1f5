"""The learning-gain and preference-gain benchmarks' printouts, on saved records built from fake runs
(the benchmarks themselves take 40+ minutes; their printing must not wait for that to be checked)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from hopsmith.io import read_jsonl, write_json, write_jsonl
from hopsmith.metrics import aggregate

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(right: set[int], n: int = 12, searched: bool = True):
    return [{"question_id": f"q{i}", "dataset": "musique", "hops": 2, "type": "2hop",
             "prediction": "Stanley" if i in right else "Fargo", "answers": ["Stanley"], "finished": True, "turns": 2,
             "tool_calls": [{"name": "search", "valid": True, "seconds": 0.01}] if searched else [],
             "supporting_ids": ["a"], "retrieved_ids": ["a"] if searched else []} for i in range(n)]


def _run(right, few_shot, **kw):
    m = aggregate(_rows(right, **kw), n_boot=100)
    m["setup"] = {"few_shot": few_shot, "thinking": False, "max_turns": 6}
    return m


def test_learning_gain_prints_paired_tests_for_both_base_runs(tmp_path, monkeypatch, capsys):
    lg = _load("learning_gain")
    record = {"base": _run({0}, True), "base_zeroshot": _run(set(), False, searched=False),
              "tuned": _run({0, 1, 2, 3, 4, 5, 6}, False), "sft": {"steps": 40}, "traces": 80, "seconds": 600}
    text = lg.report(record)
    # one-shot base vs tuned: 6 questions right only after tuning, none lost -> McNemar p = 2 / 2^6
    assert "McNemar exact p = 0.031; right in tuned only 6, in base 1-shot only 0" in text
    # zero-shot base (nothing right) vs tuned: 7 discordant -> p = 2 / 2^7
    assert "McNemar exact p = 0.016; right in tuned only 7, in base 0-shot only 0" in text
    assert text.count("(paired bootstrap, n=12)") == 2
    assert sum(1 for line in text.splitlines() if line.startswith("questions") and line.endswith("12 paired")) == 2
    # the one-shot comparison says its sides were prompted differently; the zero-shot one compares like with like
    first, second = text.split("\n\n")[:2]
    assert "prompted differently" in first and "prompted differently" not in second
    lines = text.splitlines()
    assert any(line.startswith("base 1-shot -> tuned: EM 8.3% -> 58.3% (+50.0pt, McNemar p = 0.031); F1")
               and line.endswith("EM 7.0x") for line in lines)
    assert any(line.startswith("base 0-shot -> tuned: EM 0.0% -> 58.3%") and line.endswith("EM inf") for line in lines)
    assert lines[-1] == "80 traces, 40 SFT steps; 10.0 min"

    # --print-only reprints a saved record without running anything
    write_json(tmp_path / "learning_gain.json", record)
    monkeypatch.setattr(sys, "argv", ["learning_gain.py", "--out", str(tmp_path), "--print-only"])
    lg.main()
    assert capsys.readouterr().out.strip() == text.strip()


def test_learning_gain_prints_the_baselines_beside_the_agents():
    lg = _load("learning_gain")
    record = {"base": _run({0}, True), "tuned": _run({0, 1, 2, 3, 4, 5, 6}, False), "sft": {"steps": 40},
              "traces": 80, "seconds": 600,
              "baselines": {"closed_book": _run(set(), False, searched=False), "rag": _run({0, 1}, False, searched=False)}}
    text = lg.report(record)
    lines = text.splitlines()
    table = lines.index(next(line for line in lines if line.startswith("baselines (n=12)")))
    names = [line[:20].strip() for line in lines[table + 1:table + 5]]
    assert names == ["closed-book", "BM25 top-k + read", "base 1-shot", "tuned agent"]
    assert lines[table + 2].split()[4] == "16.7"  # RAG's EM: 2 of 12
    # the tuned agent against each baseline, paired: 5 questions right only for the agent against RAG
    assert any(line.startswith("BM25 top-k + read -> tuned: EM 16.7% -> 58.3% (+41.7pt, McNemar p = 0.062)")
               for line in lines)
    assert any(line.startswith("closed-book -> tuned: EM 0.0% -> 58.3%") for line in lines)
    assert lines[-1] == "80 traces, 40 SFT steps; 10.0 min"


def test_learning_gain_prints_every_ladder_stage_against_the_adapter_it_continued():
    lg = _load("learning_gain")
    sft, rft = _run({0, 1}, False), _run({0, 1, 2, 3, 4}, False)
    record = {"base": _run({0}, True), "tuned": sft, "sft": {"steps": 40}, "traces": 80, "seconds": 600,
              "ladder": {"rft": {"against": "sft", "sft": sft, "rft": rft,
                                 "promotion": {"line": "collapse guard: rft promoted over sft"}},
                         "simpo": {"skipped": True, "pairs": {"pairs": 0}}}, "kept": "rft"}
    lines = lg.report(record).splitlines()
    table = lines.index(next(line for line in lines if line.startswith("ladder (n=12)")))
    assert [line.split()[0] for line in lines[table + 1:table + 4]] == ["base", "sft", "rft"]
    assert lines[table + 3].split()[1] == "41.7"  # RFT's EM: 5 of 12
    # RFT against SFT, paired: 3 questions right only after RFT, none lost -> McNemar p = 2 / 2^3
    assert lines[table + 4].startswith("sft -> rft: EM 16.7% -> 41.7% (+25.0pt, McNemar p = 0.250)")
    assert lines[table + 5] == "collapse guard: rft promoted over sft"
    assert lines[table + 6] == "simpo: skipped (no preference pairs)"
    assert lines[table + 7] == "the ladder ends on rft"


def test_learning_gain_shows_where_the_guard_decided_and_sets_the_final_adapter_against_the_baselines():
    """With the dev split the stage's dev headline sits between its eval headline and the guard line; the
    baselines table adds the adapter the ladder ends on, with its own paired lines."""
    lg = _load("learning_gain")
    sft, rft = _run({0, 1}, False), _run({0, 1, 2, 3, 4}, False)
    dev_sft, dev_rft = _run({0}, False), _run({0, 1, 2}, False)
    record = {"base": _run({0}, True), "tuned": sft, "sft": {"steps": 40}, "traces": 80, "seconds": 600,
              "ladder": {"rft": {"against": "sft", "sft": sft, "rft": rft, "dev": {"sft": dev_sft, "rft": dev_rft},
                                 "promotion": {"line": "collapse guard, on the dev split (12 held-out train "
                                                       "questions): rft promoted over sft"}}},
              "kept": "rft", "baselines": {"rag": _run({0, 1}, False, searched=False)}}
    lines = lg.report(record).splitlines()
    at = lines.index(next(line for line in lines if line.startswith("sft -> rft: ")))
    assert lines[at + 1].startswith("on the dev split, sft -> rft: EM 8.3% -> 25.0% (+16.7pt, McNemar p = 0.500)")
    assert lines[at + 2].startswith("collapse guard, on the dev split")
    table = lines.index(next(line for line in lines if line.startswith("baselines (n=12)")))
    assert [line[:20].strip() for line in lines[table + 1:table + 5]] == [
        "BM25 top-k + read", "base 1-shot", "tuned agent", "ladder's rft"]
    # RAG right on 0 and 1, the ladder's RFT on 0-4: 3 discordant, all for RFT -> p = 2 / 2^3
    assert any(line.startswith("BM25 top-k + read -> rft: EM 16.7% -> 41.7% (+25.0pt, McNemar p = 0.250)")
               for line in lines)


def test_learning_gain_baselines_run_on_the_eval_questions_with_the_base_model_and_are_cached(tmp_path, monkeypatch):
    """run_baselines builds the base model as every eval does (its agent config: no adapter, no llm_query tool,
    the benchmark's top-k and snippet length), runs both baselines on the eval questions and reruns nothing
    once their rows are saved."""
    import argparse

    from stages import evaluate

    lg = _load("learning_gain")
    built = []

    class Reader:
        name = "reader"

        def generate(self, conversations, **kw):
            from hopsmith.backends import Generation

            return [Generation("unknown", prompt_tokens=10, completion_tokens=1) for _ in conversations]

    def fake_backends(agent, engine="hf", **kw):
        built.append((type(agent).__name__, agent.model, agent.adapter, agent.extractor, agent.top_k, engine))
        return Reader(), None

    monkeypatch.setattr(evaluate, "agent_backends", fake_backends)
    args = argparse.Namespace(eval="musique", eval_limit=4, top_k=2, max_chars=120)
    out = lg.run_baselines(args, tmp_path, ["closed_book", "rag"])
    assert built == [("AgentConfig", "embedded", None, "none", 2, "hf")]
    assert set(out) == {"closed_book", "rag"} and all(m["n"] == 4 for m in out.values())
    rag = [json.loads(line) for line in (tmp_path / "baseline-rag" / "results.jsonl").read_text().splitlines()]
    assert len(rag) == 4 and all(len(r["retrieved_ids"]) == 2 for r in rag)
    again = lg.run_baselines(args, tmp_path, ["closed_book", "rag"])
    assert len(built) == 1 and again["rag"]["n"] == 4


def _refused(bench: str, argv: list[str], out: Path, monkeypatch, capsys) -> str:
    """Run a benchmark's main on bad options: it exits 2 before writing anything; returns its stderr."""
    monkeypatch.setattr(sys, "argv", [f"{bench}.py", *argv, "--out", str(out)])
    with pytest.raises(SystemExit) as stop:
        _load(bench).main()
    assert stop.value.code == 2 and not out.exists()
    return capsys.readouterr().err


def test_learning_gain_refuses_a_bad_stage_or_baseline_before_running(tmp_path, monkeypatch, capsys):
    err = _refused("learning_gain", ["--with", "rft,ppo"], tmp_path / "run", monkeypatch, capsys)
    assert "unknown --with stage(s) ppo" in err
    err = _refused("learning_gain", ["--baselines", "rag, oracle"], tmp_path / "run", monkeypatch, capsys)
    assert "--baselines: unknown ['oracle']; choose from closed_book, rag" in err


def test_preference_gain_pairs_an_older_sft_eval_and_prints_the_test(tmp_path, monkeypatch, capsys):
    pg = _load("preference_gain")
    run = tmp_path / "lg"
    rows = _rows({0, 1, 2})
    old = {k: v for k, v in aggregate(rows, n_boot=100).items() if k not in ("per_question", "setup")}
    old["em"] = {"mean": 0.99, "lo": 0.9, "hi": 1.0, "n": 12}  # scored under older rules: rescored on load
    write_json(run / "eval-sft" / "metrics.json", old)
    write_jsonl(run / "eval-sft" / "results.jsonl", rows)
    write_json(run / "eval-sft" / "config.json", {"kind": "EvalConfig", "data": "hotpotqa", "few_shot": False,
                                                 "max_turns": 6, "thinking": False})
    sft = pg.sft_eval_metrics(run)
    assert set(sft["per_question"]) == {f"q{i}" for i in range(12)} and sft["setup"]["few_shot"] is False
    assert sft["em"]["mean"] == 0.25 and sft["em"]["interval"] == "wilson"

    tuned = _run({0, 1, 2, 3, 4}, False)
    record = {"sft": sft, "tuned": tuned, "summary": "30 pairs, 8 steps", "seconds": 120}
    text = pg.report(record, "simpo")
    assert "McNemar exact p = 0.500; right in simpo only 2, in sft only 0" in text
    assert "change +16.7pt, 95% CI [" in text and "prompted differently" not in text
    last = text.splitlines()[-1]
    assert last.startswith("sft -> simpo: EM 25.0% -> 41.7% (+16.7pt, McNemar p = 0.500); F1 25.0 -> 41.7")
    assert last.endswith("tool use 100% -> 100%; 30 pairs, 8 steps; 2.0 min")

    write_json(run / "preference-seed002" / "preference_gain.json", record)
    monkeypatch.setattr(sys, "argv", ["preference_gain.py", "--run", str(run), "--print-only"])
    pg.main()
    assert capsys.readouterr().out.strip() == text.strip()
    monkeypatch.setattr(sys, "argv", ["preference_gain.py", "--run", str(run), "--method", "rft", "--print-only"])
    with pytest.raises(SystemExit, match="rft/preference_gain.json is missing"):
        pg.main()


def test_wikicode_gain_prints_code_metrics_and_each_step_paired_against_the_one_before():
    from hopsmith.envs.wikicode import summarize

    wg = _load("wikicode_gain")

    def run(right: set[int], programs: int) -> dict:
        rows = _rows(right)
        for r in rows:
            r.update(tool_calls=[{"name": "python", "valid": True, "status": "ok", "seconds": 0.01}] * programs,
                     code_errors=0, primitive_calls=2 * programs, composed_in_loop=programs > 0)
        return summarize(rows, n_boot=100)

    text = wg.report([("base", run({0}, 0)), ("sft", run({0, 1, 2, 3, 4, 5, 6}, 2)), ("grpo", run({0, 1, 2, 3}, 2))])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["n=12", "EM", "F1", "cover-EM"]
    base, sft = lines[1].split(), lines[2].split()
    assert base[0] == "base" and base[-4:] == ["0%", "0.00", "0.00", "0%"]  # no tool use, no program, no loop
    assert sft[0] == "sft" and sft[-4:] == ["100%", "2.00", "0.00", "100%"]
    assert lines[4].startswith("base -> sft: EM 8.3% -> 58.3% (+50.0pt, McNemar p = 0.031)")
    assert lines[5].startswith("sft -> grpo: EM 58.3% -> 33.3% (-25.0pt, McNemar p = 0.250)")
    assert lines[6].startswith("base -> grpo: ")
    assert len(lines) == 7  # no baselines given, none printed

    rag = aggregate(_rows({0}), n_boot=100)
    text = wg.report([("base", run({0}, 0)), ("sft", run({0, 1, 2, 3, 4, 5, 6}, 2))], [("BM25+read", rag)])
    lines = text.splitlines()
    assert lines[1].split()[0] == "BM25+read" and "%" not in lines[1]  # EM, F1, cover-EM; no tool columns
    assert lines[2].split()[0] == "base" and lines[3].split()[0] == "sft"
    assert lines[5].startswith("BM25+read -> sft: EM 8.3% -> 58.3% (+50.0pt, McNemar p = 0.031)")
    assert len(lines) == 6


def test_wikicode_gain_refuses_an_unknown_baseline_or_train_set_before_running(tmp_path, monkeypatch, capsys):
    err = _refused("wikicode_gain", ["--baselines", "rag,oracle"], tmp_path / "run", monkeypatch, capsys)
    assert "--baselines: unknown ['oracle']" in err
    err = _refused("wikicode_gain", ["--train", "hotpotqa, nq"], tmp_path / "run", monkeypatch, capsys)
    assert "--train: unknown bundled set(s) ['nq']" in err


def test_wikicode_gain_trains_one_sft_on_every_named_sets_traces(tmp_path, monkeypatch, capsys):
    """--train a,b: each set's code traces land in their own folder and the one SFT reads all of them; the
    evals, the baselines and the report run on --data (fakes stand in for the model work)."""
    wg = _load("wikicode_gain")
    written, evals = {}, []

    def traces(cfg, out):
        rows = [{"question_id": f"{cfg.data}-{i}", "messages": []} for i in range(2 if cfg.data == "musique" else 3)]
        write_jsonl(out / "traces" / "shard-0.jsonl", rows)
        return {"traces": len(rows), "questions": len(rows), "skipped": {"by_type": {}}}

    def train(cfg, out):
        written["traces"] = [r["question_id"] for r in read_jsonl(Path(cfg.traces))]
        return {"steps": 1, "traces": len(written["traces"])}

    monkeypatch.setattr(wg.traces_stage, "run", traces)
    monkeypatch.setattr(wg.sft, "run", train)
    monkeypatch.setattr(wg, "evaluate", lambda cfg, out, progress: evals.append((cfg.data, cfg.agent.adapter))
                        or _run({0} if cfg.agent.adapter else set(), False))
    monkeypatch.setattr(wg, "run_baselines", lambda cfg, root, kinds: {k: _run(set(), False) for k in kinds})
    root = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["wikicode_gain.py", "--data", "musique", "--train", "musique,hotpotqa",
                                      "--no-grpo", "--baselines", "rag", "--out", str(root)])
    wg.main()
    assert written["traces"] == ["musique-0", "musique-1", "hotpotqa-0", "hotpotqa-1", "hotpotqa-2"]
    assert (root / "traces-musique" / "traces" / "shard-0.jsonl").exists()
    assert (root / "traces-hotpotqa" / "traces" / "shard-0.jsonl").exists()
    assert evals == [("musique", None), ("musique", str(root / "sft"))]
    out = capsys.readouterr().out
    assert "sft: 1 steps on 5 traces" in out and "BM25+read -> sft" in out
