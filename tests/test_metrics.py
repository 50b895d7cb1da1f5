"""Metrics on hand-computed cases."""
import math

import pytest

from hopsmith.metrics import (accuracy, aggregate, bootstrap_ci, compare, exact_match, f1, failure_kind,
                              format_comparison, format_table, mean_ci, normalize_answer, score)


@pytest.mark.parametrize("raw, norm", [
    ("The  Eiffel Tower!", "eiffel tower"),
    ("A.P.J. Abdul Kalam", "apj abdul kalam"),
    ("an apple, a pear", "apple pear"),
    ("  Théâtre   ", "théâtre"),
    ("", ""),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_uses_aliases():
    assert exact_match("the Stanley", ["Stanley"]) == 1.0
    assert exact_match("HP", ["Hewlett Packard", "HP"]) == 1.0
    assert exact_match("Stanley, ND", ["Stanley"]) == 0.0


def test_f1_by_hand():
    # pred tokens: big red dog (the is dropped); gold: red dog house -> common 2, P=2/3, R=2/3 -> F1=2/3
    assert f1("the big red dog", ["red dog house"]) == pytest.approx(2 / 3)
    # pred: miller county missouri (3), gold: miller county (2): P=2/3, R=1 -> 0.8
    assert f1("Miller County, Missouri", ["Miller County"]) == pytest.approx(0.8)
    # best alias wins
    assert f1("Miller County, Missouri", ["Eldon", "Miller County"]) == pytest.approx(0.8)
    assert f1("", ["x"]) == 0.0


def test_f1_yes_no_special_case():
    assert f1("yes", ["no"]) == 0.0
    assert f1("yes it is", ["yes"]) == 0.0  # normalised "yes it is" != "yes", and gold is special
    assert f1("yes", ["yes"]) == 1.0


def test_accuracy_whole_token_containment():
    assert accuracy("It is Paris, France", ["Paris"]) == 1.0
    assert accuracy("Parisian", ["Paris"]) == 0.0
    assert accuracy("the answer is Sydney Harbour.", ["Port Jackson", "Sydney Harbour"]) == 1.0
    assert accuracy("", ["Paris"]) == 0.0
    assert accuracy("Paris", [""]) == 0.0
    assert score("Paris", ["Paris"]) == {"acc": 1.0, "em": 1.0, "f1": 1.0}


def test_bootstrap_ci():
    values = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert lo <= 0.6 <= hi and 0.0 <= lo < hi <= 1.0
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    m = mean_ci(values)
    assert m["mean"] == pytest.approx(0.6) and m["n"] == 10
    # a wider sample narrows the interval
    lo2, hi2 = bootstrap_ci(values * 10, seed=3)
    assert hi2 - lo2 < hi - lo


def _row(qid, pred, *, answers=("Stanley",), hops=2, finished=True, calls=(), supporting=("a", "b"),
         retrieved=(), has_answer=False, seconds=2.0, turns=1, dataset="musique"):
    return {"question_id": qid, "dataset": dataset, "hops": hops, "prediction": pred if finished else None,
            "answers": list(answers), "finished": finished, "turns": turns,
            "tool_calls": [{"name": n, "valid": v, "seconds": s} for n, v, s in calls],
            "supporting_ids": list(supporting), "retrieved_ids": list(retrieved),
            "retrieved_text_has_answer": has_answer, "seconds": seconds}


ROWS = [
    # correct, searched twice, found both paragraphs
    _row("q1", "Stanley", calls=[("search", True, 0.1), ("search", True, 0.3)], retrieved=("a", "b", "x"), turns=3),
    # wrong, never searched: search failure, answered without search
    _row("q2", "Bismarck", seconds=1.0),
    # wrong, found everything: extraction failure; one invalid call
    _row("q3", "Minot", calls=[("search", False, 0.0), ("search", True, 0.2)], retrieved=("a", "b"), hops=3, turns=3),
    # turn cap: no final answer, found one of two paragraphs
    _row("q4", None, finished=False, calls=[("search", True, 0.2)] * 3, retrieved=("a",), hops=3, turns=3, seconds=9.0),
    # wrong, unknown supporting ids, answer text seen: extraction failure
    _row("q5", "Fargo", supporting=(), has_answer=True, calls=[("llm_query", True, 1.0)], turns=2),
]


def test_failure_kinds():
    assert [failure_kind(r) for r in ROWS] == [None, "search_failure", "extraction_failure", "no_final_answer",
                                               "extraction_failure"]
    assert failure_kind(_row("q6", "Fargo", supporting=())) == "other"


def test_aggregate_by_hand():
    m = aggregate(ROWS, n_boot=200)
    assert m["n"] == 5
    assert m["acc"]["mean"] == pytest.approx(0.2) and m["em"]["mean"] == pytest.approx(0.2)
    assert set(m["by_hops"]) == {"2", "3"}
    assert m["by_hops"]["2"]["n"] == 3 and m["by_hops"]["3"]["n"] == 2
    assert m["by_hops"]["2"]["acc"]["mean"] == pytest.approx(1 / 3)
    # 2 + 0 + 2 + 3 + 1 calls over 5 episodes, 1 invalid of 8
    assert m["avg_tool_calls"] == pytest.approx(8 / 5)
    assert m["invalid_call_rate"] == pytest.approx(1 / 8)
    assert m["avg_turns"] == pytest.approx(12 / 5)
    # q2 and q5 finished without a valid search
    assert m["answered_without_search_rate"] == pytest.approx(2 / 5)
    assert m["tool_use_rate"] == pytest.approx(4 / 5)
    assert m["no_final_answer_rate"] == pytest.approx(1 / 5)
    # recall over the four rows with known supporting ids: 1, 0, 1, 0.5
    assert m["supporting_recall"] == pytest.approx(2.5 / 4)
    assert m["retrieval_success"] == pytest.approx(2 / 4)
    assert m["failures"] == {"search_failure": 1, "extraction_failure": 2, "no_final_answer": 1, "other": 0}
    assert m["failure_rates"]["extraction_failure"] == pytest.approx(0.5)
    assert m["latency"]["per_tool"]["search"] == pytest.approx((0.1 + 0.3 + 0.2 + 0.6) / 6)
    assert m["latency"]["episode_s"] == pytest.approx(16 / 5)
    # run-estimated ceiling: retrieval 2/4, extraction = accuracy among q1, q3 = 1/2
    c = m["ceiling"]
    assert (c["retrieval_source"], c["extraction_source"]) == ("run", "run")
    assert c["ceiling"] == pytest.approx(0.25) and c["share_of_ceiling"] == pytest.approx(0.8)


def test_ceiling_from_oracle_and_benchmark():
    c = aggregate(ROWS, extraction_accuracy=0.61, oracle_retrieval=0.855, n_boot=50)["ceiling"]
    assert c["ceiling"] == pytest.approx(0.855 * 0.61)
    assert (c["retrieval_source"], c["extraction_source"]) == ("oracle", "benchmark")


def test_aggregate_empty_is_an_error():
    with pytest.raises(ValueError, match="no results"):
        aggregate([])


def test_table_and_comparison():
    base = aggregate(ROWS, n_boot=50)
    tuned = aggregate([_row(f"t{i}", "Stanley", calls=[("search", True, 0.1)], retrieved=("a", "b")) for i in range(5)], n_boot=50)
    table = format_table(base)
    for needle in ("accuracy", "exact match", "F1", "2-hop accuracy", "invalid calls", "supporting recall",
                   "failures", "ceiling", "n=5"):
        assert needle in table
    assert max(len(line) for line in table.splitlines()) <= 100
    c = compare(base, tuned)
    assert c["acc"]["delta"] == pytest.approx(0.8)
    assert "+80.0pt" in format_comparison(base, tuned)
