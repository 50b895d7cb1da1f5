"""The eval stage and CLI: files written, resume, crash safety, refusing mixed runs, clear errors."""
import json

import pytest
from conftest import ScriptedBackend, call

from hopsmith import cli
from hopsmith.config import ConfigError, EvalConfig, build
from hopsmith.data import hop_question
from stages import evaluate


def _perfect(questions):
    return ScriptedBackend({q.question: [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))]
                            + [f"FINAL({q.answer})"] for q in questions})


class FixedReader:
    def __init__(self):
        self.calls = 0

    def extract_many(self, pairs):
        self.calls += len(pairs)
        return ["Stanley"] * len(pairs)


def test_eval_writes_results_metrics_and_config(tmp_path):
    cfg = EvalConfig(limit=4, pool_size=100, bootstrap=100)
    qs, _ = evaluate.load_eval_questions(cfg)
    metrics = evaluate.run(cfg, tmp_path, backend=_perfect(qs), extractor=FixedReader(), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] and {r["question_id"] for r in rows} == {q.id for q in qs}
    assert all(r["failure"] is None and r["metrics"]["em"] == 1.0 for r in rows)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["acc"]["mean"] == metrics["acc"]["mean"] == 1.0
    assert saved["oracle_retrieval"]["n"] == 4
    assert saved["extraction_benchmark"]["acc"]["n"] >= 8  # one item per hop
    assert json.loads((tmp_path / "config.json").read_text())["limit"] == 4
    assert (tmp_path / "extraction.jsonl").exists()


def test_eval_uses_eval_split_only(tmp_path):
    from hopsmith.data import load_questions

    qs, pools = evaluate.load_eval_questions(EvalConfig(limit=None, pool_size=50))
    assert qs and all(q.meta["split"] == "eval" for q in qs)
    assert {q.id for q in qs} == {q.id for q in load_questions("musique", split="eval")}
    assert all(len(pools[q.id]) == 50 for q in qs)
    # and the pools hold eval questions' paragraphs only
    owners = {p.id.split("::")[0] for q in qs for p in pools[q.id]}
    assert owners <= {q.id for q in qs}


def test_metrics_record_the_prompt_setup_and_types(tmp_path):
    cfg = EvalConfig(limit=3, pool_size=60, bootstrap=20, extraction_bench=False, few_shot=False, max_turns=4)
    qs, _ = evaluate.load_eval_questions(cfg)
    metrics = evaluate.run(cfg, tmp_path, backend=_perfect(qs), progress=False)
    assert metrics["setup"]["few_shot"] is False and metrics["setup"]["max_turns"] == 4
    assert sum(b["n"] for b in metrics["by_type"].values()) == 3 and "unknown" not in metrics["by_type"]
    assert set(metrics["per_question"]) == {q.id for q in qs}
    assert metrics["scoring"] == {"musique": "MuSiQue evaluate_v1.0.py"}


def test_bamboogle_needs_a_corpus(tmp_path):
    path = tmp_path / "bamboogle.csv"
    path.write_text("Question,,,,Answer,Answer 2\nWho painted the Sistine Chapel ceiling?,,,,Michelangelo,\n")
    assert cli.main(["eval", "--data", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "c1", "title": "Sistine Chapel", "text": "Michelangelo painted its ceiling."}) + "\n")
    cfg = EvalConfig(data=str(path), corpus=str(corpus), bootstrap=20, extraction_bench=False)
    backend = ScriptedBackend({"Sistine": [call("search", query="Sistine Chapel ceiling"), "FINAL(Michelangelo)"]})
    metrics = evaluate.run(cfg, tmp_path / "ok", backend=backend, progress=False)
    assert metrics["em"]["mean"] == 1.0 and metrics["by_dataset"]["bamboogle"]["n"] == 1


def test_resume_skips_done_questions_and_repairs_torn_line(tmp_path):
    cfg = EvalConfig(limit=5, pool_size=100, bootstrap=50, extraction_bench=False)
    qs, _ = evaluate.load_eval_questions(cfg)
    first = _perfect(qs[:2])
    evaluate.run(EvalConfig(limit=2, pool_size=100, bootstrap=50, extraction_bench=False), tmp_path, backend=first,
                 progress=False)
    before = (tmp_path / "results.jsonl").read_text()
    # a crash in the middle of an append leaves half a line behind
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"question_id": "half')
    second = _perfect(qs)
    metrics = evaluate.run(cfg, tmp_path, backend=second, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert (tmp_path / "results.jsonl").read_text().startswith(before)  # nothing already written was lost
    assert sorted(r["question_id"] for r in rows) == sorted(q.id for q in qs)  # no duplicates
    assert metrics["n"] == 5
    assert sum(second.batches) > 0 and second.batches[0] == 3  # only the three new questions ran


def test_rerun_with_another_model_is_refused(tmp_path):
    cfg = EvalConfig(limit=1, pool_size=50, bootstrap=20, extraction_bench=False)
    qs, _ = evaluate.load_eval_questions(cfg)
    evaluate.run(cfg, tmp_path, backend=_perfect(qs), progress=False)
    with pytest.raises(evaluate.RunDirError, match="another configuration.*max_turns"):
        evaluate.run(EvalConfig(limit=1, pool_size=50, max_turns=3), tmp_path, backend=_perfect(qs), progress=False)
    # few_shot compares as what it resolves to: a base-model run written with the example resumes under the
    # default (None: the example for a base model), and refuses "no example"
    written = EvalConfig(limit=1, pool_size=50, bootstrap=20, extraction_bench=False, few_shot=True)
    evaluate.run(written, tmp_path / "shots", backend=_perfect(qs), progress=False)
    evaluate.run(EvalConfig(limit=2, pool_size=50, bootstrap=20, extraction_bench=False, few_shot=None),
                 tmp_path / "shots", backend=_perfect(evaluate.load_eval_questions(EvalConfig(limit=2))[0]),
                 progress=False)
    with pytest.raises(evaluate.RunDirError, match="few_shot: True -> False"):
        evaluate.run(EvalConfig(limit=2, pool_size=50, few_shot=False), tmp_path / "shots", backend=_perfect(qs),
                     progress=False)


def test_eval_on_a_user_file_in_original_format(tmp_path):
    src = tmp_path / "hotpot_dev.json"
    from importlib import resources

    lines = resources.files("hopsmith.data").joinpath("bundled/hotpot_dev_distractor_sample.jsonl").read_text().splitlines()[:6]
    src.write_text(json.dumps([json.loads(line) for line in lines]))
    cfg = EvalConfig(data=str(src), limit=3, bootstrap=20)
    qs, pools = evaluate.load_eval_questions(cfg)
    assert len(qs) == 3 and qs[0].dataset == "hotpotqa"
    # own 10 + 10 from each other question of the file on the same side of the split (the file is evaluated
    # whole, but a pool never mixes the sides)
    from hopsmith.data import load_questions

    sides = [q.meta["split"] for q in load_questions(src)]
    assert all(len(pools[q.id]) == 10 * sides.count(q.meta["split"]) for q in qs) and len(set(sides)) == 2
    metrics = evaluate.run(cfg, tmp_path / "run", backend=ScriptedBackend({}, default=["FINAL(yes)"]),
                           extractor=FixedReader(), progress=False)
    assert metrics["n"] == 3 and metrics["extraction_benchmark"] is None  # HotpotQA has no decompositions


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown EvalConfig key.*limt"):
        build(EvalConfig, limt=3)
    with pytest.raises(ConfigError, match="limit: 'many' is not a int"):
        build(EvalConfig, limit="many")
    with pytest.raises(ConfigError, match="config file not found"):
        build(EvalConfig, file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("limit = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build(EvalConfig, file=bad)
    good = tmp_path / "good.toml"
    good.write_text('limit = 7\nthinking = true\nmax_chars = "none"\n')
    cfg = build(EvalConfig, file=good, limit="9")
    assert (cfg.limit, cfg.agent.thinking, cfg.agent.max_chars) == (9, True, None)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--data", "/no/such/file.jsonl"], "no such file: /no/such/file.jsonl"),
    (["eval", "--data", "squad"], "unknown"),
    (["eval", "--model", "no-such-model-dir"], "unknown model"),
    (["eval", "--limit", "0"], "--limit) must be at least 1"),
    (["eval", "--limit", "x"], "not a int"),
])
def test_cli_bad_input_gives_clear_error(argv, message, tmp_path, capsys):
    code = cli.main(argv + ["--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "hopsmith: error:" in err and message in err.lower()


def test_cli_unknown_format_and_empty_file(tmp_path, capsys):
    weird = tmp_path / "weird.jsonl"
    weird.write_text(json.dumps({"q": "x", "a": "y"}) + "\n")
    assert cli.main(["eval", "--data", str(weird), "--out", str(tmp_path / "r1"), "--quiet"]) == 2
    assert "format" in capsys.readouterr().err.lower()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli.main(["eval", "--data", str(empty), "--out", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "empty.jsonl has no rows" in capsys.readouterr().err


def test_an_adapter_runs_with_the_prompt_it_was_trained_on_unless_told_otherwise():
    from hopsmith.config import AgentConfig

    # Traces are written without the worked example, so `hopsmith eval --adapter` leaves it out by default;
    # a base model gets it (its best chance at the format); --few-shot / --no-few-shot decide either way.
    assert AgentConfig().shows_example and not AgentConfig(adapter="runs/sft").shows_example
    assert AgentConfig(adapter="runs/sft", few_shot=True).shows_example and not AgentConfig(few_shot=False).shows_example
