"""hopsmith's EM/F1 against our own transcription of each official answer metric, on tricky pairs.

The references below restate, in our own words, what the official scripts compute (read from their
published source, not copied):
- MuSiQue `evaluate_v1.0.py` -> `metrics/answer.py` (SQuAD 2.0's functions): EM = normalised equality;
  F1 over normalised tokens, 1/0 for agreement when either side has no tokens; the best over the answer
  and its `answer_aliases`; unanswerable rows are left out.
- HotpotQA `hotpot_evaluate_v1.py`: EM = normalised equality; F1 = 0 when either normalised side is
  yes/no/noanswer and they differ, 0 when no token is shared (so also when both sides are empty);
  one gold answer.
- 2WikiMultihopQA `2wikimultihop_evaluate.py` (v1.0): HotpotQA's answer functions on one gold answer;
  v1.1 takes the best over an alias set, which the alias rows below check.
The normaliser of all three: lowercase, delete ASCII punctuation, articles a/an/the -> space, split on
whitespace and join with single spaces.
"""
import string
from collections import Counter

import pytest

from hopsmith.metrics import exact_match, f1, normalize_answer, score

# -- the references -------------------------------------------------------------------------------

_DROP = str.maketrans("", "", string.punctuation)


def ref_normalise(text: str) -> str:
    words = text.lower().translate(_DROP).split()
    # removing the articles word by word is what r"\b(a|an|the)\b" -> " " amounts to once punctuation is gone
    return " ".join(w for w in words if w not in ("a", "an", "the"))


def ref_squad_f1(pred: str, gold: str) -> float:
    p_toks, g_toks = ref_normalise(pred).split(), ref_normalise(gold).split()
    if not p_toks or not g_toks:
        return 1.0 if p_toks == g_toks else 0.0
    same = sum(min(n, g_toks.count(t)) for t, n in Counter(p_toks).items())
    if not same:
        return 0.0
    prec, rec = same / len(p_toks), same / len(g_toks)
    return 2 * prec * rec / (prec + rec)


def ref_hotpot_f1(pred: str, gold: str) -> float:
    p, g = ref_normalise(pred), ref_normalise(gold)
    special = {"yes", "no", "noanswer"}
    if p != g and (p in special or g in special):
        return 0.0
    p_toks, g_toks = p.split(), g.split()
    same = sum(min(n, g_toks.count(t)) for t, n in Counter(p_toks).items())
    if same == 0:
        return 0.0
    prec, rec = same / len(p_toks), same / len(g_toks)
    return 2 * prec * rec / (prec + rec)


def ref_em(pred: str, gold: str) -> float:
    return 1.0 if ref_normalise(pred) == ref_normalise(gold) else 0.0


REFERENCE_F1 = {"musique": ref_squad_f1, "hotpotqa": ref_hotpot_f1, "2wiki": ref_hotpot_f1}


def reference(pred: str, golds: list[str], dataset: str) -> tuple[float, float]:
    """(EM, F1) as the dataset's official script gives them: the best over the gold answers."""
    return max(ref_em(pred, g) for g in golds), max(REFERENCE_F1[dataset](pred, g) for g in golds)


# -- the pairs ----------------------------------------------------------------------------------

PAIRS = [
    ("yes it is", ["yes"]),                      # the yes/no rule: 0 in HotpotQA/2Wiki, 0.5 in MuSiQue
    ("Yes.", ["yes"]),
    ("no", ["no way"]),
    ("noanswer", ["noanswer"]),
    ("noanswer", ["no answer"]),
    ("No", ["Dr. No"]),
    ("Dr. No", ["no"]),
    ("yes", ["yes, it is"]),
    ("", ["The"]),                               # both sides without tokens
    ("the", ["a"]),
    ("a an the", ["An"]),
    ("", ["Paris"]),
    ("yes", [""]),
    ("Paris or London", ["London"]),             # cover-EM's weakness; F1 0.5
    ("London", ["Paris or London"]),
    ("rock-n-roll", ["rock n roll"]),            # punctuation is deleted, not split on
    ("rock-n-roll", ["rocknroll"]),
    ("1,000", ["1000"]),
    ("U.S.", ["US"]),
    ("Ms. Smith", ["Ms Smith"]),
    ("Théâtre", ["theatre"]),                    # accents are not ASCII punctuation
    ("1505–1572", ["1505 1572"]),                # nor is an en dash
    ("Ｐａｒｉｓ", ["paris"]),
    ("  New\tYork\n", ["new york"]),
    ("the the the", ["the"]),
    ("x x y", ["x y y z"]),                      # multiset overlap
    ("An Apple", ["apple"]),
    ("Anthem", ["anthem"]),                      # "an" inside a word stays
    ("Theatre of the Absurd", ["theatre of absurd"]),
    ("Miller County, Missouri", ["Miller County"]),
    ("12 June 1990", ["June 12, 1990"]),         # same bag of tokens: F1 1, EM 0
    ("Lana  Wood ", ["Lana Wood"]),
    ("The Beatles", ["Beatles"]),
    ("The Netherlands", ["Netherlands, The"]),
    ("co-operative", ["cooperative"]),
    ("$5", ["5"]),
    ("a.m.", ["am"]),
    ("'s", ["s"]),
    ("nO", ["No"]),
    ("None", ["noanswer"]),
    ("Stanley", ["Eldon", "Stanley"]),           # the best alias wins
    ("Stanley, ND", ["Stanley", "Stanley, North Dakota"]),
    ("yes", ["no", "yes"]),
    ("yes it is", ["no", "yes"]),
    ("The Formation of Vegetable Mould", ["The Formation of Vegetable Mould Through the Action of Worms"]),
    ("james madison", ["James Madison"]),
    ("İstanbul", ["istanbul"]),
    ("20 June 1837", ["June 20, 1837", "20 June 1837"]),
]
DATASETS = ("musique", "hotpotqa", "2wiki")


def test_there_are_forty_tricky_pairs_per_dataset():
    assert len(PAIRS) >= 40 and len(set((p, tuple(g)) for p, g in PAIRS)) == len(PAIRS)


@pytest.mark.parametrize("dataset", DATASETS)
def test_no_disagreement_with_the_official_scripts(dataset):
    disagreements = []
    for pred, golds in PAIRS:
        want_em, want_f1 = reference(pred, golds, dataset)
        got = score(pred, golds, dataset)
        if got["em"] != want_em or got["f1"] != pytest.approx(want_f1, abs=1e-12):
            disagreements.append((pred, golds, (got["em"], got["f1"]), (want_em, want_f1)))
        assert exact_match(pred, golds, dataset) == got["em"] and f1(pred, golds, dataset) == got["f1"]
    assert disagreements == []


def test_the_references_on_hand_computed_cases():
    """The references are not just the implementation twice: pinned values, worked by hand."""
    assert reference("yes it is", ["yes"], "musique") == (0.0, pytest.approx(0.5))    # P 1/3, R 1
    assert reference("yes it is", ["yes"], "hotpotqa") == (0.0, 0.0)
    assert reference("", ["The"], "musique") == (1.0, 1.0)
    assert reference("", ["The"], "hotpotqa") == (1.0, 0.0)
    assert reference("Paris or London", ["London"], "2wiki") == (0.0, pytest.approx(0.5))
    assert reference("x x y", ["x y y z"], "musique") == (0.0, pytest.approx(4 / 7))
    assert reference("12 June 1990", ["June 12, 1990"], "hotpotqa") == (0.0, 1.0)
    assert ref_normalise("The  Eiffel Tower!") == normalize_answer("The  Eiffel Tower!") == "eiffel tower"


def test_no_final_answer_scores_zero_everywhere():
    # The official scripts count a missing prediction as 0; hopsmith's None is "no final answer".
    for dataset in DATASETS:
        assert score(None, ["The"], dataset) == {"acc": 0.0, "em": 0.0, "f1": 0.0}
