"""Metrics on hand-computed cases."""
import json
import math

import pytest

from hopsmith.metrics import (FAILURE_KINDS, accuracy, aggregate, bootstrap_ci, compare, contains_answer,
                              exact_match, f1, failure_kind, format_comparison, format_table, mean_ci,
                              normalize_answer, score)


# -- normalisation and answer metrics -----------------------------------------------------------

@pytest.mark.parametrize("raw, norm", [
    ("The  Eiffel Tower!", "eiffel tower"),          # case, article, punctuation, whitespace
    ("A.P.J. Abdul Kalam", "apj abdul kalam"),       # punctuation inside a token joins it
    ("an apple, a pear", "apple pear"),
    ("Theatre of the Absurd", "theatre of absurd"),  # "the" only as a whole word
    ("Anthem", "anthem"),                            # "an" inside a word stays
    ("  Théâtre \t\n ", "théâtre"),
    ("rock-n-roll", "rocknroll"),                    # SQuAD deletes punctuation, it does not split on it
    ("", ""),
    (None, ""),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_uses_aliases():
    assert exact_match("the Stanley", ["Stanley"]) == 1.0
    assert exact_match("HP", ["Hewlett Packard", "HP"]) == 1.0
    assert exact_match("Stanley, ND", ["Stanley"]) == 0.0
    assert exact_match("stanley", []) == 0.0
    # a missing prediction never matches, not even a gold that normalises to nothing
    assert exact_match(None, ["The"]) == 0.0
    assert exact_match("", [""]) == 0.0


def test_f1_by_hand():
    # pred tokens: big red dog ("the" dropped); gold: red dog house -> common 2, P = 2/3, R = 2/3 -> F1 = 2/3
    assert f1("the big red dog", ["red dog house"]) == pytest.approx(2 / 3)
    # pred: miller county missouri (3), gold: miller county (2): P = 2/3, R = 1 -> 2 * (2/3) / (5/3) = 0.8
    assert f1("Miller County, Missouri", ["Miller County"]) == pytest.approx(0.8)
    # the best alias wins
    assert f1("Miller County, Missouri", ["Eldon", "Miller County"]) == pytest.approx(0.8)
    # repeated tokens count with multiplicity; pred: x x y (3), gold: x y y z (4): common = min(2,1) + min(1,2) = 2, P = 2/3, R = 1/2 -> F1 = 4/7
    assert f1("x x y", ["x y y z"]) == pytest.approx(4 / 7)
    assert f1("", ["x"]) == 0.0
    assert f1(None, ["x"]) == 0.0
    assert f1("x", []) == 0.0
    assert f1("Paris", ["Paris"]) == 1.0


def test_f1_yes_no_special_case():
    assert f1("yes", ["no"]) == 0.0
    assert f1("Yes.", ["yes"]) == 1.0
    # "yes it is" would share a token with "yes" (F1 0.5) without the special case
    assert f1("yes it is", ["yes"]) == 0.0
    # and the special case applies from the prediction side too
    assert f1("no", ["no way"]) == 0.0
    assert f1("noanswer", ["noanswer"]) == 1.0


def test_accuracy_whole_token_containment():
    assert accuracy("It is Paris, France", ["Paris"]) == 1.0
    assert accuracy("Paris", ["Paris"]) == 1.0
    assert accuracy("Parisian", ["Paris"]) == 0.0
    assert accuracy("It is par", ["Paris"]) == 0.0
    assert accuracy("it is paris france", ["par"]) == 0.0           # gold must be whole tokens too
    assert accuracy("the answer is Sydney Harbour.", ["Port Jackson", "Sydney Harbour"]) == 1.0
    assert accuracy("Sydney's harbour", ["Sydney Harbour"]) == 0.0  # "sydneys" is not "sydney"
    assert accuracy("harbour sydney", ["Sydney Harbour"]) == 0.0    # a sequence, not a bag
    assert accuracy("", ["Paris"]) == 0.0
    assert accuracy(None, ["Paris"]) == 0.0
    assert accuracy("Paris", [""]) == 0.0
    assert accuracy("the", ["The"]) == 0.0
    assert accuracy("Paris", []) == 0.0
    assert contains_answer("In 1889, the Eiffel Tower opened.", ["eiffel tower"])


def test_score():
    assert score("Paris", ["Paris"]) == {"acc": 1.0, "em": 1.0, "f1": 1.0}
    s = score("it is Paris", ["Paris"])
    assert s["acc"] == 1.0 and s["em"] == 0.0 and s["f1"] == pytest.approx(0.5)  # P = 1/3, R = 1
    assert score(None, ["Paris"]) == {"acc": 0.0, "em": 0.0, "f1": 0.0}


# -- confidence intervals -----------------------------------------------------------------------

def test_bootstrap_ci():
    values = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    lo, hi = bootstrap_ci(values, seed=3)
    assert (lo, hi) == bootstrap_ci(values, seed=3)
    assert lo <= 0.6 <= hi and 0.0 <= lo < hi <= 1.0
    assert isinstance(lo, float) and isinstance(hi, float)
    # a wider sample narrows the interval; a wider alpha narrows it too
    lo2, hi2 = bootstrap_ci(values * 10, seed=3)
    assert hi2 - lo2 < hi - lo
    lo3, hi3 = bootstrap_ci(values, seed=3, alpha=0.5)
    assert lo <= lo3 <= hi3 <= hi


def test_bootstrap_ci_degenerate_and_empty():
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    assert bootstrap_ci([0.1] * 7) == (0.1, 0.1)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, math.nan])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], alpha=1.0)


def test_bootstrap_ci_blocks_large_inputs(monkeypatch):
    # Resampling in blocks must give a sane interval however the blocks fall.
    import hopsmith.metrics as metrics
    monkeypatch.setattr(metrics, "_BOOT_BLOCK", 35)  # 3 resamples of 10 per block, 1000 -> 334 blocks
    lo, hi = metrics.bootstrap_ci([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], seed=3)
    assert 0.0 <= lo <= 0.6 <= hi <= 1.0


def test_mean_ci():
    m = mean_ci([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], seed=1, n_boot=200)
    assert m["mean"] == pytest.approx(0.6) and m["n"] == 10
    assert m["lo"] <= m["mean"] <= m["hi"]
    assert set(m) == {"mean", "lo", "hi", "n"}
    e = mean_ci([])
    assert e["n"] == 0 and math.isnan(e["mean"]) and math.isnan(e["lo"])
    assert mean_ci(iter([1.0, 0.0]))["mean"] == 0.5


# -- failure taxonomy and aggregation -----------------------------------------------------------

def _row(qid, pred, *, answers=("Stanley",), hops=2, finished=True, calls=(), supporting=("a", "b"),
         retrieved=(), has_answer=False, seconds=2.0, turns=1, dataset="musique"):
    return {"question_id": qid, "dataset": dataset, "hops": hops, "prediction": pred if finished else None,
            "answers": list(answers), "finished": finished, "turns": turns,
            "tool_calls": [{"name": n, "valid": v, "seconds": s} for n, v, s in calls],
            "supporting_ids": list(supporting), "retrieved_ids": list(retrieved),
            "retrieved_text_has_answer": has_answer, "seconds": seconds}


ROWS = [
    # q1 correct, searched twice, found both paragraphs
    _row("q1", "Stanley", calls=[("search", True, 0.1), ("search", True, 0.3)], retrieved=("a", "b", "x"), turns=3),
    # q2 wrong, never searched: search failure, answered without search
    _row("q2", "Bismarck", seconds=1.0),
    # q3 wrong, found everything: extraction failure; one invalid call
    _row("q3", "Minot", calls=[("search", False, 0.0), ("search", True, 0.2)], retrieved=("a", "b"), hops=3, turns=3),
    # q4 turn cap: no final answer, found one of two paragraphs
    _row("q4", None, finished=False, calls=[("search", True, 0.2)] * 3, retrieved=("a",), hops=3, turns=3, seconds=9.0),
    # q5 wrong, unknown supporting ids, answer text seen via llm_query only: extraction failure
    _row("q5", "Fargo", supporting=(), has_answer=True, calls=[("llm_query", True, 1.0)], turns=2, dataset="hotpotqa"),
]


def test_failure_kinds():
    assert [failure_kind(r) for r in ROWS] == [None, "search_failure", "extraction_failure", "no_final_answer",
                                               "extraction_failure"]


@pytest.mark.parametrize("kw, kind", [
    # correct answers have no failure kind, whatever the retrieval did
    (dict(pred="It was Stanley"), None),
    # not finished wins over everything else, even with the info retrieved
    (dict(pred=None, finished=False, retrieved=("a", "b"), has_answer=True), "no_final_answer"),
    # one of two supporting found, answer text never seen
    (dict(pred="Fargo", retrieved=("a", "z")), "search_failure"),
    # never searched at all, supporting ids unknown: the facts cannot have reached the model
    (dict(pred="Fargo", supporting=()), "search_failure"),
    # all supporting retrieved
    (dict(pred="Fargo", retrieved=("b", "a")), "extraction_failure"),
    # not all supporting, but the answer string was in front of the model
    (dict(pred="Fargo", retrieved=("a",), has_answer=True), "extraction_failure"),
    # supporting unknown, something retrieved, answer absent: can't tell
    (dict(pred="Fargo", supporting=(), retrieved=("z",)), "other"),
    # a wrong final answer that is empty is still a finished episode
    (dict(pred="", retrieved=("a", "b")), "extraction_failure"),
])
def test_failure_kind_each(kw, kind):
    assert failure_kind(_row("q", kw.pop("pred"), **kw)) == kind


def test_failure_kind_tolerates_missing_optional_keys():
    # no "finished": inferred from the prediction; no supporting/retrieved keys at all
    assert failure_kind({"prediction": "Fargo", "answers": ["Stanley"]}) == "search_failure"
    assert failure_kind({"prediction": None, "answers": ["Stanley"]}) == "no_final_answer"
    assert failure_kind({"prediction": "Stanley", "answers": ["Stanley"]}) is None


def test_aggregate_by_hand():
    m = aggregate(ROWS, n_boot=200)
    assert m["n"] == 5
    assert m["acc"]["mean"] == pytest.approx(0.2) and m["em"]["mean"] == pytest.approx(0.2)
    assert m["f1"]["mean"] == pytest.approx(0.2) and m["acc"]["n"] == 5
    assert list(m["by_hops"]) == ["2", "3"]
    assert m["by_hops"]["2"]["n"] == 3 and m["by_hops"]["3"]["n"] == 2
    assert m["by_hops"]["2"]["acc"]["mean"] == pytest.approx(1 / 3) and m["by_hops"]["2"]["acc"]["n"] == 3
    assert m["by_hops"]["3"]["em"]["mean"] == 0.0
    assert list(m["by_dataset"]) == ["hotpotqa", "musique"]
    assert m["by_dataset"]["musique"]["n"] == 4 and m["by_dataset"]["musique"]["acc"]["mean"] == pytest.approx(0.25)
    # 2 + 0 + 2 + 3 + 1 calls over 5 episodes, 1 invalid of 8
    assert m["avg_tool_calls"] == pytest.approx(8 / 5)
    assert m["invalid_call_rate"] == pytest.approx(1 / 8)
    assert m["avg_turns"] == pytest.approx(12 / 5)
    # q2 (no calls) and q5 (llm_query only) finished without a valid search; q4 did not finish
    assert m["answered_without_search_rate"] == pytest.approx(2 / 5)
    assert m["tool_use_rate"] == pytest.approx(4 / 5)
    assert m["no_final_answer_rate"] == pytest.approx(1 / 5)
    # recall over the four rows with known supporting ids: 1, 0, 1, 0.5
    assert m["supporting_recall"] == pytest.approx(2.5 / 4)
    assert m["retrieval_success"] == pytest.approx(2 / 4)
    assert m["failures"] == {"search_failure": 1, "extraction_failure": 2, "no_final_answer": 1, "other": 0}
    assert m["failure_rates"] == pytest.approx({"search_failure": 0.25, "extraction_failure": 0.5,
                                                "no_final_answer": 0.25, "other": 0.0})
    # latency: episodes 2, 1, 2, 9, 2 -> mean 16/5, sorted 1 2 2 2 9 -> p50 2, p90 = 2 + 0.6 * 7 = 6.2
    lat = m["latency"]
    assert lat["episode_s"] == pytest.approx(16 / 5)
    assert lat["episode_p50_s"] == pytest.approx(2.0) and lat["episode_p90_s"] == pytest.approx(6.2)
    # valid calls only: searches 0.1 0.3 0.2 0.2 0.2 0.2, llm_query 1.0
    assert lat["per_tool"]["search"] == pytest.approx(1.2 / 6)
    assert lat["per_tool"]["llm_query"] == pytest.approx(1.0)
    assert lat["tool_call_s"] == pytest.approx(2.2 / 7)
    # run-estimated ceiling: retrieval 2/4; extraction = accuracy among q1, q3 = 1/2 -> 0.25; actual 0.2 = 80%
    c = m["ceiling"]
    assert (c["retrieval_source"], c["extraction_source"]) == ("run", "run")
    assert c["retrieval"] == pytest.approx(0.5) and c["extraction"] == pytest.approx(0.5)
    assert c["extraction_n"] == 2  # the run's extraction rate rests on the two fully retrieved episodes
    assert c["ceiling"] == pytest.approx(0.25) and c["actual"] == pytest.approx(0.2)
    assert c["share_of_ceiling"] == pytest.approx(0.8)
    # the whole thing survives a strict JSON round trip
    assert json.loads(json.dumps(m, allow_nan=False)) == m


def test_aggregate_is_deterministic():
    assert aggregate(ROWS, n_boot=100, seed=7) == aggregate(ROWS, n_boot=100, seed=7)


def test_ceiling_from_oracle_and_benchmark():
    c = aggregate(ROWS, extraction_accuracy=0.61, oracle_retrieval=0.855, n_boot=50)["ceiling"]
    assert c["ceiling"] == pytest.approx(0.855 * 0.61)  # seed write-up: 52.2%
    assert c["share_of_ceiling"] == pytest.approx(0.2 / (0.855 * 0.61))
    assert (c["retrieval_source"], c["extraction_source"]) == ("oracle", "benchmark")
    assert c["extraction_n"] is None


def test_ceiling_mixed_sources():
    c = aggregate(ROWS, oracle_retrieval=0.8, n_boot=50)["ceiling"]
    assert (c["retrieval_source"], c["extraction_source"]) == ("oracle", "run")
    assert c["ceiling"] == pytest.approx(0.8 * 0.5)
    c = aggregate(ROWS, extraction_accuracy=0.6, n_boot=50)["ceiling"]
    assert (c["retrieval_source"], c["extraction_source"]) == ("run", "benchmark")
    assert c["ceiling"] == pytest.approx(0.5 * 0.6)


def test_ceiling_unknown_without_supporting_ids():
    rows = [_row("u1", "Stanley", supporting=()), _row("u2", "Fargo", supporting=(), retrieved=("z",))]
    m = aggregate(rows, n_boot=50)
    assert m["supporting_recall"] is None and m["retrieval_success"] is None
    assert m["failures"]["other"] == 1
    c = m["ceiling"]
    assert c["retrieval"] is None and c["extraction"] is None
    assert c["ceiling"] is None and c["share_of_ceiling"] is None and c["actual"] == pytest.approx(0.5)
    # with both halves supplied it is known again
    assert aggregate(rows, extraction_accuracy=0.5, oracle_retrieval=0.5, n_boot=50)["ceiling"]["ceiling"] == 0.25
    # the table still renders
    assert "ceiling" in format_table(m)


def test_aggregate_without_any_calls_or_optional_keys():
    rows = [{"question_id": "m1", "prediction": "Stanley", "answers": ["Stanley"], "hops": 10},
            {"question_id": "m2", "prediction": "x", "answers": ["Stanley"], "hops": 2}]
    m = aggregate(rows, n_boot=20)
    assert m["invalid_call_rate"] == 0.0 and m["avg_tool_calls"] == 0.0 and m["tool_use_rate"] == 0.0
    assert m["answered_without_search_rate"] == 1.0
    assert m["latency"]["tool_call_s"] is None and m["latency"]["per_tool"] == {}
    assert m["latency"]["episode_s"] is None
    assert list(m["by_hops"]) == ["2", "10"]  # numeric order, not string order
    assert list(m["by_dataset"]) == ["unknown"]
    assert m["failure_rates"]["search_failure"] == 1.0
    json.dumps(m, allow_nan=False)
    format_table(m)


def test_all_correct_has_no_failures():
    rows = [_row(f"c{i}", "Stanley", retrieved=("a", "b"), calls=[("search", True, 0.1)]) for i in range(3)]
    m = aggregate(rows, n_boot=50)
    assert m["failures"] == dict.fromkeys(FAILURE_KINDS, 0)
    assert m["failure_rates"] == dict.fromkeys(FAILURE_KINDS, 0.0)
    assert (m["acc"]["lo"], m["acc"]["hi"]) == (1.0, 1.0)


def test_aggregate_empty_is_an_error():
    with pytest.raises(ValueError, match="no results to aggregate"):
        aggregate([])


# -- presentation -------------------------------------------------------------------------------

def _tuned():
    return aggregate([_row(f"t{i}", "Stanley", calls=[("search", True, 0.1)], retrieved=("a", "b"))
                      for i in range(5)], n_boot=50)


def test_format_table():
    base = aggregate(ROWS, n_boot=50)
    table = format_table(base)
    lines = table.splitlines()
    acc = base["acc"]
    assert lines[0] == f"{'accuracy':<22} 20.0%  [{100 * acc['lo']:5.1f}, {100 * acc['hi']:5.1f}]  n=5"
    for needle in ("exact match", "F1", "2-hop accuracy", "3-hop accuracy", "  hotpotqa", "  musique",
                   "tool calls / episode", "invalid calls 12.5%", "answered w/o search    40.0%",
                   "no final answer 20.0%", "latency / episode", "p90 6.20 s", "  search", "  llm_query",
                   "supporting recall      62.5%", "all supporting found 50.0%",
                   "failures (4 wrong)", "search 1, extraction 2, no answer 1, other 0",
                   "ceiling                25.0%", "(run)", "  actual / ceiling     80.0%"):
        assert needle in table, needle
    assert max(len(line) for line in lines) <= 80


def test_format_table_fits_80_columns_at_extremes():
    rows = [_row(f"w{i}", "Stanley", hops=12, dataset="a_very_long_dataset_name_indeed",
                 calls=[("a_tool_with_a_long_name", True, 123.456)], retrieved=("a", "b"), seconds=12345.6)
            for i in range(3)]
    rows += [_row(f"x{i}", "no", dataset="other") for i in range(1000)]
    m = aggregate(rows, extraction_accuracy=1.0, oracle_retrieval=1.0, n_boot=20)
    assert max(len(line) for line in format_table(m).splitlines()) <= 80
    assert max(len(line) for line in format_comparison(m, m, names=("x" * 40, "y" * 40)).splitlines()) <= 80


def test_compare():
    base, tuned = aggregate(ROWS, n_boot=50), _tuned()
    c = compare(base, tuned)
    assert c["n"] == {"base": 5, "tuned": 5}
    assert c["acc"]["delta"] == pytest.approx(0.8) and c["em"]["delta"] == pytest.approx(0.8)
    assert c["acc"]["base"] is base["acc"] and c["acc"]["tuned"] is tuned["acc"]
    # tuned is 1.0 with a degenerate [1, 1] interval; base's interval from 5 rows with one hit stays below 1
    assert c["acc"]["ci_overlap"] is False
    assert c["avg_tool_calls"]["delta"] == pytest.approx(1.0 - 8 / 5)
    assert c["invalid_call_rate"]["delta"] == pytest.approx(-1 / 8)
    assert c["answered_without_search_rate"]["delta"] == pytest.approx(-0.4)
    assert c["failures"]["delta"] == {"search_failure": -1, "extraction_failure": -2, "no_final_answer": -1, "other": 0}
    assert compare(base, base)["acc"] == {"base": base["acc"], "tuned": base["acc"], "delta": 0.0, "ci_overlap": True}
    json.dumps(c, allow_nan=False)


def test_compare_with_unknown_recall():
    base = aggregate([_row("u", "Stanley", supporting=())], n_boot=20)
    c = compare(base, _tuned())
    assert c["supporting_recall"] == {"base": None, "tuned": 1.0, "delta": None}
    format_comparison(base, _tuned())


def test_format_comparison():
    base, tuned = aggregate(ROWS, n_boot=50), _tuned()
    text = format_comparison(base, tuned, names=("Qwen3-1.7B", "SFT"))
    lines = text.splitlines()
    assert "Qwen3-1.7B" in lines[0] and "SFT" in lines[0] and "change" in lines[0]
    acc_line = next(line for line in lines if line.startswith("accuracy"))
    assert acc_line.endswith("+80.0pt*") and "20.0%" in acc_line and "100.0%" in acc_line
    assert any(line.startswith("invalid calls") and line.endswith("-12.5pt") for line in lines)
    assert any(line.startswith("answered w/o search") and line.endswith("-40.0pt") for line in lines)
    assert any(line.startswith("  extraction_failure") and "2 (50.0%)" in line and line.endswith("-2")
               for line in lines)
    assert "* the two 95% intervals do not overlap" in text
    assert max(len(line) for line in lines) <= 80
    assert "do not overlap" not in format_comparison(base, base)


def test_query_statistics_reach_the_comparison():
    """The collapse guard's query diversity and wordiness are eval metrics too, so SFT vs SimPO shows them."""
    def searched(qid, *queries):
        row = _row(qid, "x", calls=[("search", True, 0.1)] * len(queries))
        for c, q in zip(row["tool_calls"], queries):
            c["arguments"] = {"query": q}
        return row

    healthy = aggregate([searched("a", "county of eldon", "seat of miller county"), searched("b", "who wrote hamlet")],
                        n_boot=20)
    repeating = aggregate([searched("a", "eldon", "eldon"), searched("b", "eldon", "#$% ^&*")], n_boot=20)
    assert healthy["query_diversity"] == 1.0 and repeating["query_diversity"] == pytest.approx(2 / 4)
    assert healthy["query_wordiness"] == 1.0 and repeating["query_wordiness"] == pytest.approx(3 / 5)
    c = compare(healthy, repeating)
    assert c["query_diversity"]["delta"] == pytest.approx(-0.5)
    assert "distinct queries" in format_comparison(healthy, repeating)
