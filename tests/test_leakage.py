"""The leakage guard and the split checker: ids, single-hop ids, answers and question texts, on the bundled
data and on files built to leak."""
import json

import pytest
from conftest import ScriptedBackend

from hopsmith import cli
from hopsmith.config import ConfigError, EvalConfig
from hopsmith.data import BUNDLED, load_questions, split_of
from hopsmith.data.loaders import BUNDLED_DIR
from hopsmith.leakage import (Fingerprint, LeakageError, guard, split_report, trained_fingerprint,
                              training_record)
from stages import evaluate


def raw_rows(name):
    return [json.loads(line) for line in (BUNDLED_DIR / BUNDLED[name].name).read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_check_leakage_on_the_bundled_data_finds_nothing(capsys):
    assert cli.main(["check-leakage"]) == 0
    out = capsys.readouterr().out
    for name in ("musique: 150 questions, 65 train / 85 eval", "hotpotqa: 200 questions", "2wiki: 123 questions",
                 "musique + hotpotqa + 2wiki: 473 questions"):
        assert name in out
    for label in ("single-hop ids on both sides", "answers (gold or hop) on both sides",
                  "eval paragraphs in train pools", "eval questions sharing any of these"):
        counts = [line.split()[-1] for line in out.splitlines() if line.strip().startswith(label)]
        assert counts == ["0"] * 4, label
    assert out.rstrip().endswith("no leakage found")


def test_the_checker_sees_the_old_split_leak():
    """Hashing whole ids (the split before components) leaked through single-hop ids and answers."""
    questions = load_questions("musique")
    for q in questions:
        q.meta["split"] = split_of(q.id)
    report = split_report(questions, pool_size=100)
    assert report["shared_single_hop_ids"] > 0 and report["shared_answers"] > 0
    assert report["leaked_eval_questions"] > 20


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter directory whose training.json says it trained on these traces (no weights needed:
    the guard runs before any model is loaded)."""
    d = tmp_path_factory.mktemp("adapter")
    trained = load_questions("musique", split="train", limit=10)
    traces = [{"question_id": q.id, "question": q.question, "answers": list(q.answers)} for q in trained]
    (d / "training.json").write_text(json.dumps({"traces": len(traces), **training_record(traces)}))
    return d, trained


def _leaking_file(tmp_path, trained):
    """Four MuSiQue rows: one shares a single-hop id with a trained question, one a gold answer, one the
    question text (other case and punctuation), one nothing."""
    clean = [r for r in raw_rows("musique") if r["id"] in {q.id for q in load_questions("musique", split="eval")}]
    t = trained[0]
    hop = t.id.split("_")[-1]
    by_hop = dict(clean[0], id=f"2hop__1234567_{hop}", question="A new question?", answer="A new answer",
                  answer_aliases=[])
    by_answer = dict(clean[1], id="2hop__7654321_7654322", answer=trained[1].answer.upper() + ".", answer_aliases=[])
    by_text = dict(clean[2], id="user-3", question=trained[2].question.upper().replace("?", " ?!"),
                   answer="Something else", answer_aliases=[])
    return write_jsonl(tmp_path / "leak.jsonl", [by_hop, by_answer, by_text, clean[3]]), clean[3]["id"]


def test_a_leaking_file_is_refused(tmp_path, adapter, capsys):
    adapter_dir, trained = adapter
    path, clean_id = _leaking_file(tmp_path, trained)
    questions = load_questions(path)
    with pytest.raises(LeakageError, match=r"3 of 4 questions overlap the training set of adapter .*"
                                           r"1 by single-hop-id, 1 by answer, 1 by question"):
        guard(questions, adapter_dir)
    # the CLI: one line, exit 2, nothing written
    out = tmp_path / "run"
    assert cli.main(["eval", "--data", str(path), "--adapter", str(adapter_dir), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hopsmith: error: 3 of 4 questions overlap" in err and "--drop-leakage" in err and "Traceback" not in err
    assert not (out / "config.json").exists()
    # check-leakage says the same, and exits 1
    assert cli.main(["check-leakage", "--data", str(path), "--adapter", str(adapter_dir), "--pool-size", "40"]) == 1
    out = capsys.readouterr().out
    assert (f"{adapter_dir}: 3 of 4 questions to evaluate overlap its training set "
            "(id 0, single-hop-id 1, answer 1, question 1)") in out and out.rstrip().endswith("leakage found")


def test_drop_leakage_leaves_the_overlap_out_and_counts_it(tmp_path, adapter):
    adapter_dir, trained = adapter
    path, clean_id = _leaking_file(tmp_path, trained)
    kept, report = guard(load_questions(path), adapter_dir, drop=True)
    assert [q.id for q in kept] == [clean_id]
    assert report["dropped"] == report["count"] == 3
    assert report["by_reason"] == {"id": 0, "single_hop_id": 1, "answer": 1, "question": 1}
    kept, report = guard(load_questions(path), adapter_dir, allow=True)
    assert len(kept) == 4 and report["count"] == 3 and report["dropped"] == 0

    cfg = EvalConfig(data=str(path), adapter=str(adapter_dir), drop_leakage=True, limit=None, pool_size=30,
                     bootstrap=20, extraction_bench=False, max_turns=1)
    metrics = evaluate.run(cfg, tmp_path / "dropped", backend=ScriptedBackend({}), progress=False)
    assert metrics["n"] == 1 and metrics["leakage"]["dropped"] == 3
    assert list(metrics["per_question"]) == [clean_id]
    with pytest.raises(ConfigError, match="set one of them"):
        EvalConfig(allow_leakage=True, drop_leakage=True)


def test_adapters_that_recorded_ids_only_are_checked_on_answers_too(tmp_path):
    """An adapter trained before answers were recorded: its bundled ids are resolved to their answers."""
    (tmp_path / "training.json").write_text(json.dumps({"trained_question_ids": ["2hop__160223_58067"]}))
    fp = trained_fingerprint(tmp_path)
    assert "apj abdul kalam" in fp.answers and "58067" in fp.single_hop_ids
    twin = next(q for q in load_questions("musique") if q.id == "2hop__747758_58067")
    assert fp.reasons(twin) == ["single_hop_id", "answer"]


def test_training_record_carries_a_base_adapters_data(tmp_path, adapter):
    adapter_dir, trained = adapter
    record = training_record([{"question_id": "new-1", "question": "Who?", "answers": ["Yes", "Nobody"]}],
                             base_adapter=adapter_dir)
    assert "new-1" in record["trained_question_ids"] and trained[0].id in record["trained_question_ids"]
    assert "nobody" in record["trained_answers"] and "yes" not in record["trained_answers"]
    assert "who" in record["trained_questions"]


def test_fingerprint_of_questions_includes_hop_answers():
    q = load_questions("musique")[0]  # 2hop__574419_270105: Mountrail County, then Stanley
    fp = Fingerprint.of([q])
    assert {"stanley", "mountrail county"} <= fp.answers and fp.single_hop_ids == {"574419", "270105"}


def test_synthetic_traces_of_every_bundled_train_split_leave_the_eval_splits_clean(tmp_path):
    """What the ladder and the learning-gain benchmark train on shares no id, single-hop id, answer or
    question text with any bundled eval question (hop answers included: a 2Wiki warm-up trace answers
    an intermediate hop)."""
    from hopsmith.io import read_jsonl
    from stages import traces

    all_traces = []
    for name in BUNDLED:
        traces.run(traces.TracesConfig(data=name, split="train", top_k=3, max_chars=300, thinking_fraction=0.0,
                                       pool_size=60), tmp_path / name)
        all_traces += read_jsonl(tmp_path / name / "traces" / "shard-0.jsonl")
    (tmp_path / "training.json").write_text(json.dumps(training_record(all_traces)))
    evals = [q for name in BUNDLED for q in load_questions(name, split="eval")]
    kept, report = guard(evals, tmp_path)
    assert len(all_traces) > 200 and report["count"] == 0 and len(kept) == len(evals)
