"""Loaders, splits, pools and corpora of `hopsmith.data`, checked against hand-read rows of the bundled sets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopsmith.data import (
    BUNDLED,
    DataError,
    build_pools,
    corpus_pools,
    hop_question,
    load_corpus,
    load_questions,
    pool_key,
    split_of,
)
from hopsmith.records import Hop, Paragraph, Question

MUSIQUE_FIRST = "2hop__574419_270105"
HOTPOT_FIRST = "5a7f6fd75542992e7d278cfa"
WIKI_FIRST = "b088d3ca08e211ebbda4ac1f6bf848b6"


@pytest.fixture(scope="module")
def musique() -> list[Question]:
    return load_questions("musique")


def raw_rows(name: str) -> list[dict]:
    with BUNDLED[name].open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- loaders -------------------------------------------------------------------------------------


def test_bundled_sets_load_with_their_row_counts():
    counts = {name: len(load_questions(name)) for name in BUNDLED}
    assert counts == {"musique": 150, "hotpotqa": 200, "2wiki": 123}
    assert {q.dataset for q in load_questions("2wiki")} == {"2wiki"}


def test_musique_first_row(musique):
    q = musique[0]
    assert q.id == MUSIQUE_FIRST and q.dataset == "musique"
    assert q.question == "What is the seat of the county where Van Hook Township is located?"
    assert q.answers == ("Stanley",) and q.answer == "Stanley"
    assert q.hops == 2 and q.type == "2hop" and q.meta == {"answerable": True}
    assert len(q.paragraphs) == 20
    assert q.supporting_ids == [f"{MUSIQUE_FIRST}::1", f"{MUSIQUE_FIRST}::8"]
    assert q.paragraphs[1].title == "Mountrail County Courthouse"
    assert q.paragraphs[1].text.startswith("The Mountrail County Courthouse in Stanley, North Dakota was built in 1914")
    assert q.decomposition == (
        Hop("Van Hook Township >> located in the administrative territorial entity", "Mountrail County",
            f"{MUSIQUE_FIRST}::8"),
        Hop("#1 >> capital", "Stanley", f"{MUSIQUE_FIRST}::1"),
    )


def test_musique_aliases_follow_the_answer_deduplicated(tmp_path):
    q = next(q for q in load_questions("musique") if q.id == "2hop__14095_15463")
    assert q.answers == ("Hewlett Packard", "Hewlett-Packard")
    row = raw_rows("musique")[0] | {"answer": " Stanley ", "answer_aliases": ["Stanley", "", "Stanley, ND"]}
    [q] = load_questions(write_jsonl(tmp_path / "m.jsonl", [row]))
    assert q.answers == ("Stanley", "Stanley, ND")


def test_hotpotqa_first_row():
    q = load_questions("hotpotqa")[0]
    assert q.id == HOTPOT_FIRST and q.dataset == "hotpotqa"
    assert q.answers == ("Rush",) and q.hops == 2 and q.decomposition == ()
    assert q.type == "bridge" and q.meta == {"level": "hard"}
    assert [p.title for p in q.paragraphs if p.supporting] == ["Neil Peart", "Nobody's Hero"]
    assert q.supporting_ids == [f"{HOTPOT_FIRST}::4", f"{HOTPOT_FIRST}::6"]
    # HotpotQA sentences carry their own leading space: joined as written, no doubled or leading spaces.
    porcaro = q.paragraphs[0]
    assert porcaro.title == "Jeff Porcaro"
    assert porcaro.text.startswith(
        "Jeffrey Thomas Porcaro (April 1, 1954 – August 5, 1992) was an American drummer, songwriter, "
        "and record producer. In a career that spanned more than 20 years,"
    )
    assert all("  " not in p.text and p.text == p.text.strip() for p in q.paragraphs)


def test_2wiki_first_row():
    q = load_questions("2wiki")[0]
    assert q.id == WIKI_FIRST and q.dataset == "2wiki"
    assert q.answers == ("Free Guy",) and q.type == "bridge_comparison" and q.hops == 4
    forbidden = q.paragraphs[3]
    # 2Wiki sentences have no leading space, so they are joined with one.
    assert (forbidden.title, forbidden.text) == (
        "Forbidden Ground", "Forbidden Ground is a Hungarian film directed by Pál Gábor. It was released in 1968."
    )
    assert q.supporting_ids == [f"{WIKI_FIRST}::{i}" for i in (0, 3, 6, 7)]
    assert q.decomposition[0] == Hop("Forbidden Ground >> director", "Pál Gábor", f"{WIKI_FIRST}::3")
    assert q.decomposition[3] == Hop("Shawn Levy >> date of birth", "July 23, 1968", f"{WIKI_FIRST}::6")


def test_2wiki_evidence_subject_matches_a_suffixed_title():
    q = next(q for q in load_questions("2wiki") if q.id == "099f34280bda11eba7f7acde48001122")
    assert q.paragraphs[0].title == "The Zone (2017 film)"
    assert q.decomposition[0] == Hop("The Zone >> director", "Denys Desjardins", f"{q.id}::0")
    assert q.hops == 2


@pytest.mark.parametrize("name", ["hotpotqa", "2wiki"])
def test_json_list_form_loads_like_jsonl(tmp_path, name):
    path = tmp_path / f"{name}_dev.json"
    path.write_text(json.dumps(raw_rows(name)[:3], indent=1), encoding="utf-8")
    assert load_questions(path) == load_questions(name, limit=3)


def test_format_is_detected_from_keys_not_suffix(tmp_path):
    path = write_jsonl(tmp_path / "questions.json", raw_rows("musique")[:2])
    assert [q.dataset for q in load_questions(path)] == ["musique", "musique"]


def test_2wiki_rows_without_evidences_are_recognised_by_type(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "evidences"} for r in raw_rows("2wiki")[:10]]
    assert rows[0]["type"] == "bridge_comparison"
    # A first row of the shared type "comparison" must not make the file HotpotQA.
    rows.sort(key=lambda r: r["type"] != "comparison")
    qs = load_questions(write_jsonl(tmp_path / "w.jsonl", rows))
    assert {q.dataset for q in qs} == {"2wiki"} and all(q.decomposition == () and q.hops == 2 for q in qs)


def test_native_round_trip(tmp_path, musique):
    originals = musique[:3] + load_questions("2wiki", limit=2)
    loaded = load_questions(write_jsonl(tmp_path / "native.jsonl", [q.to_dict() for q in originals]))
    assert loaded == originals
    assert [q.meta for q in loaded] == [q.meta for q in originals]


def test_limit_takes_the_first_rows_in_file_order(musique):
    assert load_questions("musique", limit=5) == musique[:5]


def test_split_is_stable_and_partitions_the_set(musique):
    assert split_of(MUSIQUE_FIRST) == split_of(MUSIQUE_FIRST) in ("train", "eval")
    train, evals = load_questions("musique", split="train"), load_questions("musique", split="eval")
    assert (len(evals), len(train)) == (74, 76)
    assert {q.id for q in train}.isdisjoint(q.id for q in evals)
    assert sorted(q.id for q in train + evals) == sorted(q.id for q in musique)
    assert [q.id for q in evals[:3]] == ["2hop__496732_658428", "2hop__14095_15463", "2hop__82858_654855"]
    assert load_questions("musique", split="eval", limit=3) == evals[:3]


# --- hop_question --------------------------------------------------------------------------------


def test_hop_question_rewrites_relations_and_fills_answers(musique):
    q = musique[0]
    assert hop_question(q, 0) == "In which administrative territorial entity is Van Hook Township located?"
    assert hop_question(q, 1) == "What is the capital of Mountrail County?"
    four = next(q for q in musique if q.id == "4hop1__638706_765799_282674_759393")
    assert [hop_question(four, i) for i in range(4)] == [
        "What is the location of formation of Tenement?",
        "What is Appleton the capital of?",
        "What does Outagamie County share a border with?",
        "What is the capital of Brown County?",
    ]
    with pytest.raises(IndexError):
        hop_question(q, 2)


def test_hop_question_plain_text_only_gets_answers_substituted(musique):
    q = next(q for q in musique if q.id == "2hop__14095_15463")
    assert q.decomposition[1].question == "What company did #1 merge with in 2002?"
    assert hop_question(q, 1) == "What company did Compaq merge with in 2002?"
    hops = (Hop("Who wrote X?", "Avicenna"), Hop("What is #1 's book ?", "b"))
    made = Question("x", "musique", "?", ("b",), 2, (), hops)
    assert hop_question(made, 1) == "What is Avicenna's book?"


# --- errors --------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="nope.jsonl"):
        load_questions(str(missing))


def test_unknown_bundled_name_lists_the_valid_ones():
    with pytest.raises(DataError, match="musique, hotpotqa, 2wiki"):
        load_questions("musiqe")
    assert issubclass(DataError, ValueError)


def test_unrecognised_format_names_file_and_keys(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError, match=r"odd\.jsonl.*\['bar', 'foo'\]"):
        load_questions(path)


def test_invalid_json_line_reports_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in raw_rows("musique")[:2]]
    path.write_text(lines[0] + "\n\n" + lines[1][:-5] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        load_questions(path)


def test_missing_key_reports_line_and_key(tmp_path):
    rows = raw_rows("hotpotqa")[:3]
    del rows[1]["answer"]
    with pytest.raises(DataError, match=rf"{tmp_path / 'h.jsonl'}:2: missing required key 'answer'"):
        load_questions(write_jsonl(tmp_path / "h.jsonl", rows))
    path = tmp_path / "h.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"h\.json: row 1 \(0-based\): missing required key 'answer'"):
        load_questions(path)


def test_malformed_row_shape_is_reported(tmp_path):
    rows = raw_rows("musique")[:1]
    rows[0]["paragraphs"] = 7
    with pytest.raises(DataError, match=r"m\.jsonl:1: malformed row"):
        load_questions(write_jsonl(tmp_path / "m.jsonl", rows))


def test_empty_sets_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="has no rows"):
        load_questions(empty)
    with pytest.raises(DataError, match="limit=0"):
        load_questions("musique", limit=0)
    train_row = next(r for r in raw_rows("musique") if split_of(r["id"]) == "train")
    with pytest.raises(DataError, match="split 'eval'"):
        load_questions(write_jsonl(tmp_path / "one.jsonl", [train_row]), split="eval")
    with pytest.raises(DataError, match="unknown split"):
        load_questions("musique", split="dev")


# --- pools ---------------------------------------------------------------------------------------


def content(p: Paragraph) -> tuple[str, str]:
    return " ".join(p.title.casefold().split()), " ".join(p.text.casefold().split())


def test_pools_hold_own_paragraphs_and_distractors(musique):
    pools = build_pools(musique, size=400)
    assert set(pools) == {q.id for q in musique}
    for q in musique:
        pool = pools[q.id]
        assert len(pool) == 400
        assert pool[: len(q.paragraphs)] == list(q.paragraphs)
        assert [p.id for p in pool if p.supporting] == q.supporting_ids
        assert len({p.id for p in pool}) == len(pool)
        assert len({content(p) for p in pool[len(q.paragraphs):]}) == len(pool) - len(q.paragraphs)
        assert not {content(p) for p in q.paragraphs} & {content(p) for p in pool[len(q.paragraphs):]}


def test_pools_are_deterministic_and_seeded(musique):
    a, b = build_pools(musique[:10], seed=0), build_pools(musique[:10], seed=0)
    assert a == b
    assert build_pools(musique[:10], seed=1) != a


def test_pools_with_others_draw_from_the_full_set(musique):
    full = build_pools(musique)
    few = build_pools(musique[:5], others=musique)
    assert set(few) == {q.id for q in musique[:5]}
    assert all(few[qid] == full[qid] for qid in few)
    donors = {p.id.split("::")[0] for pool in few.values() for p in pool}
    assert donors - {q.id for q in musique[:5]}


def test_pool_of_a_small_set_is_smaller_and_keeps_own_duplicate():
    own = Paragraph("a::0", "Paris", "Paris is the capital of France.", supporting=True)
    a = Question("a", "x", "Q?", ("Paris",), 2, (own, Paragraph("a::1", "Lyon", "Lyon is a city.")))
    copy = Paragraph("b::0", " paris", "Paris is the  capital of France.", supporting=True)
    b = Question("b", "x", "Q?", ("B",), 2, (copy, Paragraph("b::1", "Nice", "Nice is a city.", supporting=True)))
    pools = build_pools([a, b], size=400)
    assert pools["a"] == [own, a.paragraphs[1], Paragraph("b::1", "Nice", "Nice is a city.")]
    assert [p.id for p in pools["b"]] == ["b::0", "b::1", "a::1"]
    assert build_pools([a, b], size=3)["a"][-1].id == "b::1"
    assert len(build_pools([a, b], size=1)["a"]) == 2


def test_pool_key_is_stable_and_order_sensitive(musique):
    pool = build_pools(musique[:3])[musique[0].id]
    assert pool_key(pool) == pool_key(list(pool)) and len(pool_key(pool)) == 16
    assert pool_key(pool[::-1]) != pool_key(pool)
    assert pool_key(pool[:-1]) != pool_key(pool)


# --- corpus --------------------------------------------------------------------------------------


def test_load_corpus_and_corpus_pools(tmp_path, musique):
    q = musique[0]
    gold = next(p for p in q.paragraphs if p.supporting)
    rows = [
        {"id": "c1", "title": gold.title, "text": "  " + gold.text},
        {"id": 2, "text": "A paragraph without a title."},
        {"id": "c3", "title": "Other", "text": "Nothing to see."},
    ]
    corpus = load_corpus(write_jsonl(tmp_path / "corpus.jsonl", rows))
    assert [p.id for p in corpus] == ["c1", "2", "c3"] and corpus[1].title == ""
    assert not any(p.supporting for p in corpus)
    pools = corpus_pools(musique[:2], corpus)
    assert [p.supporting for p in pools[q.id]] == [True, False, False]
    assert not any(p.supporting for p in pools[musique[1].id])
    assert pool_key(pools[q.id]) == pool_key(pools[musique[1].id])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": "a", "text": "x"}', '{"id": "b", "text": '], r"c\.jsonl:2: invalid JSON"),
        (['{"id": "a", "title": "t"}'], r"c\.jsonl:1: missing required key 'text'"),
        (['{"id": "a", "text": "x"}', "", '{"id": "a", "text": "y"}'], r"c\.jsonl:3: duplicate id 'a'"),
        (["[1, 2]"], r"c\.jsonl:1: expected a JSON object"),
        ([""], "has no rows"),
    ],
)
def test_load_corpus_errors(tmp_path, lines, message):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_corpus(path)


def test_load_corpus_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_corpus(tmp_path / "corpus.jsonl")
