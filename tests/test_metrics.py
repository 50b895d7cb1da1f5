"""Metrics on hand-computed cases."""
import json
import math

import pytest

from hopsmith.metrics import (FAILURE_KINDS, accuracy, aggregate, bootstrap_ci, compare, contains_answer,
                              exact_match, f1, failure_kind, format_comparison, format_table, headline,
                              mcnemar_exact, mean_ci, normalize_answer, proportion_ci, score, wilson_ci)


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
    # a missing prediction (no final answer) never matches, not even a gold that normalises to nothing
    assert exact_match(None, ["The"]) == 0.0
    # an empty final answer against a gold that normalises to nothing matches, as in every official script
    assert exact_match("", ["The"]) == 1.0 and exact_match("a", ["The"], "hotpotqa") == 1.0


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


def test_f1_yes_no_rule_is_hotpotqa_and_2wiki_only():
    for ds in ("hotpotqa", "2wiki"):
        assert f1("yes", ["no"], ds) == 0.0
        assert f1("Yes.", ["yes"], ds) == 1.0
        # "yes it is" would share a token with "yes" (F1 0.5) without the special case
        assert f1("yes it is", ["yes"], ds) == 0.0
        # and the special case applies from the prediction side too
        assert f1("no", ["no way"], ds) == 0.0
        assert f1("noanswer", ["noanswer"], ds) == 1.0
        assert f1("The", ["a"], ds) == 0.0  # no tokens on either side: F1 0 in HotpotQA's script
    # MuSiQue's official F1 is SQuAD's: no yes/no rule, and two token-less sides agree
    assert f1("yes it is", ["yes"], "musique") == pytest.approx(0.5)
    assert f1("no", ["no way"], "musique") == pytest.approx(2 / 3)
    assert f1("The", ["a"], "musique") == 1.0
    assert f1("yes it is", ["yes"]) == pytest.approx(0.5)  # an unknown set is scored the SQuAD way


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

def test_wilson_interval_by_hand():
    # 0/20: [0, z^2 / (n + z^2)] = [0, 3.8415 / 23.8415]
    lo, hi = wilson_ci(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.16113, abs=1e-4)
    lo, hi = wilson_ci(1, 20)  # p = 0.05
    assert lo == pytest.approx(0.00889, abs=1e-4) and hi == pytest.approx(0.23613, abs=1e-4)
    assert wilson_ci(20, 20)[1] == 1.0 and wilson_ci(20, 20)[0] == pytest.approx(1 - 0.16113, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))
    with pytest.raises(ValueError):
        wilson_ci(3, 2)
    m = proportion_ci([1, 0, 0, 0])
    assert m["mean"] == 0.25 and m["n"] == 4 and m["interval"] == "wilson" and m["lo"] > 0.0
    with pytest.raises(ValueError, match="0/1"):
        proportion_ci([0.5, 1.0])


def test_wilson_keeps_its_coverage_where_the_bootstrap_collapses():
    """The issue's case: n = 20, p = 0.05. Exact coverage = sum of P(k) over the k whose interval holds p."""
    n, p = 20, 0.05
    probs = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    wilson = sum(pk for k, pk in enumerate(probs) if wilson_ci(k, n)[0] <= p <= wilson_ci(k, n)[1])
    boot = sum(pk for k, pk in enumerate(probs)
               if bootstrap_ci([1] * k + [0] * (n - k), n_boot=400)[0] <= p <= bootstrap_ci([1] * k + [0] * (n - k), n_boot=400)[1])
    assert wilson > 0.9 and boot < 0.7
    assert bootstrap_ci([0] * 20) == (0.0, 0.0) and wilson_ci(0, 20)[1] > 0.15


def test_mcnemar_exact_by_hand():
    # the two cases: 0/20 -> 4/20 with 4 discordant questions all favouring tuned: p = 2 / 2^4
    assert mcnemar_exact(0, 4) == 0.125
    # 2/74 -> 9/74, 7 discordant all favouring tuned: p = 2 / 2^7
    assert mcnemar_exact(0, 7) == pytest.approx(0.015625)
    # 3 vs 1 discordant: 2 * (C(4,0) + C(4,1)) / 16 = 10/16
    assert mcnemar_exact(3, 1) == mcnemar_exact(1, 3) == pytest.approx(0.625)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


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
    assert set(m) == {"mean", "lo", "hi", "n", "interval"} and m["interval"] == "bootstrap"
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
    # 3/3 right: the Wilson interval ends at 1 but does not collapse onto it (a bootstrap would give [1, 1])
    assert m["acc"]["hi"] == 1.0 and m["acc"]["lo"] == pytest.approx(wilson_ci(3, 3)[0]) and m["acc"]["lo"] < 0.5
    assert m["f1"]["lo"] == m["f1"]["hi"] == 1.0  # F1 keeps the bootstrap


def test_aggregate_empty_is_an_error():
    with pytest.raises(ValueError, match="no results to aggregate"):
        aggregate([])


# -- presentation -------------------------------------------------------------------------------

def _tuned():
    # q1..q5 again, every one answered right after searching: the same questions as ROWS, so pairable
    return aggregate([_row(f"q{i}", "Stanley", calls=[("search", True, 0.1)], retrieved=("a", "b"))
                      for i in range(1, 6)], n_boot=50)


def test_format_table():
    base = aggregate(ROWS, n_boot=50)
    table = format_table(base)
    lines = table.splitlines()
    em, acc = base["em"], base["acc"]
    # EM and F1 first, cover-EM third, each with its 95% interval (Wilson for the proportions)
    assert lines[0] == f"{'exact match':<22} 20.0%  [{100 * em['lo']:5.1f}, {100 * em['hi']:5.1f}]  n=5"
    assert lines[1].startswith("F1") and lines[2].startswith("cover-EM")
    assert (em["lo"], em["hi"]) == pytest.approx(wilson_ci(1, 5)) and acc["interval"] == "wilson"
    for needle in ("  2-hop EM", "  3-hop EM", "  hotpotqa EM", "  musique EM",
                   "tool calls / episode", "invalid calls          12.5%", "answered w/o search    40.0%",
                   "no final answer        20.0%", "latency / episode", "p90 6.20 s", "  search", "  llm_query",
                   "supporting recall      62.5%", "all supporting found 50.0%",
                   "failures (4 wrong)", "search 1, extraction 2, no answer 1, other 0",
                   "ceiling (cover-EM)     25.0%", "(run)", "  actual / ceiling     80.0%",
                   "scored as             musique: MuSiQue evaluate_v1.0.py",
                   "scored as             hotpotqa: HotpotQA hotpot_evaluate_v1.py"):
        assert needle in table, needle
    lo, hi = wilson_ci(1, 8)  # one invalid call of eight
    assert f"invalid calls          12.5%  [{100 * lo:5.1f}, {100 * hi:5.1f}]  n=8" in table
    assert max(len(line) for line in lines) <= 80


def test_breakdown_by_question_type():
    rows = [dict(_row("h1", "Stanley"), type="bridge"), dict(_row("h2", "x"), type="bridge"),
            dict(_row("h3", "yes", answers=("yes",)), type="comparison")]
    m = aggregate(rows, n_boot=20)
    assert {k: v["n"] for k, v in m["by_type"].items()} == {"bridge": 2, "comparison": 1}
    assert m["by_type"]["bridge"]["em"]["mean"] == 0.5 and m["by_type"]["comparison"]["em"]["mean"] == 1.0
    table = format_table(m)
    assert "  bridge EM" in table and "  comparison EM" in table


def test_format_table_fits_80_columns_at_extremes():
    rows = [_row(f"w{i}", "Stanley", hops=12, dataset="a_very_long_dataset_name_indeed",
                 calls=[("a_tool_with_a_long_name", True, 123.456)], retrieved=("a", "b"), seconds=12345.6)
            for i in range(3)]
    rows += [_row(f"x{i}", "no", dataset="other") for i in range(1000)]
    m = aggregate(rows, extraction_accuracy=1.0, oracle_retrieval=1.0, n_boot=20)
    assert max(len(line) for line in format_table(m).splitlines()) <= 80
    assert max(len(line) for line in format_comparison(m, m, names=("x" * 40, "y" * 40)).splitlines()) <= 80


def test_compare_is_paired():
    base, tuned = aggregate(ROWS, n_boot=50), _tuned()
    c = compare(base, tuned, n_boot=200)
    assert c["n"] == {"base": 5, "tuned": 5} and c["paired_n"] == 5
    assert c["acc"]["delta"] == pytest.approx(0.8) and c["em"]["delta"] == pytest.approx(0.8)
    assert c["acc"]["base"] is base["acc"] and c["acc"]["tuned"] is tuned["acc"]
    assert "ci_overlap" not in c["acc"]
    # q1 right in both, q2..q5 right in tuned only: McNemar on 4 vs 0 discordant questions, p = 2 / 2^4
    em = c["em"]["paired"]
    assert (em["test"], em["base_only"], em["tuned_only"], em["n"]) == ("mcnemar_exact", 0, 4, 5)
    assert em["p"] == 0.125
    f = c["f1"]["paired"]
    assert f["test"] == "paired_bootstrap" and f["delta"] == pytest.approx(0.8) and 0.0 < f["lo"] <= 0.8 <= f["hi"]
    assert c["avg_tool_calls"]["delta"] == pytest.approx(1.0 - 8 / 5)
    assert c["invalid_call_rate"]["delta"] == pytest.approx(-1 / 8) and c["invalid_call_rate"]["paired"] is None
    assert c["answered_without_search_rate"]["delta"] == pytest.approx(-0.4)
    p = c["answered_without_search_rate"]["paired"]
    assert p["delta"] == pytest.approx(-0.4) and p["lo"] <= -0.4 <= p["hi"] <= 0.0
    assert c["failures"]["delta"] == {"search_failure": -1, "extraction_failure": -2, "no_final_answer": -1, "other": 0}
    same = compare(base, base)["acc"]
    assert same["delta"] == 0.0 and same["paired"]["p"] == 1.0 and same["paired"]["lo"] == same["paired"]["hi"] == 0.0
    json.dumps(c, allow_nan=False)


def test_compare_pairs_by_question_not_by_position():
    # the same four outcomes in another order, over other questions: the paired test sees who got what
    a = aggregate([_row("a", "Stanley"), _row("b", "x"), _row("c", "x"), _row("d", "x")], n_boot=20)
    b = aggregate([_row("d", "x"), _row("c", "x"), _row("b", "x"), _row("a", "Stanley")], n_boot=20)
    assert compare(a, b)["em"]["paired"]["base_only"] == 0 and compare(a, b)["em"]["paired"]["p"] == 1.0
    only_two = aggregate([_row("a", "x"), _row("z", "Stanley")], n_boot=20)
    c = compare(a, only_two)
    assert c["paired_n"] == 1 and c["em"]["paired"]["n"] == 1 and c["em"]["paired"]["base_only"] == 1


def test_compare_without_per_question_scores_says_so():
    base, tuned = aggregate(ROWS, n_boot=50), _tuned()
    old = {k: v for k, v in base.items() if k != "per_question"}  # a metrics.json from before paired tests
    c = compare(old, tuned)
    assert c["paired_n"] is None and c["em"]["paired"] is None
    assert "not paired: a run lacks per-question scores, so no test" in format_comparison(old, tuned)


def test_compare_with_unknown_recall():
    base = aggregate([_row("u", "Stanley", supporting=())], n_boot=20)
    c = compare(base, _tuned())
    assert c["supporting_recall"] == {"base": None, "tuned": 1.0, "delta": None, "paired": None}
    format_comparison(base, _tuned())


def test_format_comparison():
    base, tuned = aggregate(ROWS, n_boot=50), _tuned()
    base["setup"] = {"few_shot": True, "thinking": False, "max_turns": 6}
    tuned["setup"] = {"few_shot": False, "thinking": False, "max_turns": 6}
    text = format_comparison(base, tuned, names=("Qwen3-1.7B", "SFT"))
    lines = text.splitlines()
    assert "Qwen3-1.7B" in lines[0] and "SFT" in lines[0] and "change" in lines[0]
    assert lines[1].endswith("5 paired")
    assert [line.split()[0] for line in lines[2:8:2]] == ["exact", "F1", "cover-EM"]  # EM and F1 lead
    em_line = next(line for line in lines if line.startswith("exact match"))
    assert em_line.endswith("+80.0pt") and "20.0%" in em_line and "100.0%" in em_line
    assert lines[3] == "  McNemar exact p = 0.125; right in SFT only 4, in Qwen3-1.7B only 0"
    assert lines[5].startswith("  change +80.0pt, 95% CI [") and lines[5].endswith("(paired bootstrap, n=5)")
    assert "prompt, Qwen3-1.7B    one-shot, thinking off, up to 6 turns" in lines
    assert "prompt, SFT           zero-shot, thinking off, up to 6 turns" in lines
    assert "  the two sides were prompted differently: the change is not the training alone" in lines
    assert any(line.startswith("invalid calls") and line.endswith("-12.5pt") for line in lines)
    w = next(line for line in lines if line.startswith("answered w/o search"))
    assert " -40.0pt [" in w and w.endswith("]")
    assert any(line.startswith("  extraction_failure") and "2 (50.0%)" in line and line.endswith("-2")
               for line in lines)
    assert "overlap" not in text and "*" not in text
    assert max(len(line) for line in lines) <= 80
    assert "prompted differently" not in format_comparison(base, base)


def test_headline_leads_with_em_and_f1():
    line = headline(aggregate(ROWS, n_boot=50), _tuned(), ("base", "sft"))
    assert line.startswith("base -> sft: EM 20.0% -> 100.0% (+80.0pt, McNemar p = 0.125); F1 20.0 -> 100.0 (+80.0pt, "
                           "paired 95% CI [")
    assert line.index("EM") < line.index("F1") < line.index("cover-EM") and line.endswith("n=5 paired")


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
