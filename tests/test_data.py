"""Loaders, splits, pools and corpora of `hopsmith.data`, checked against hand-read rows of the bundled sets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopsmith.data import (
    BUNDLED,
    SPLITS,
    DataError,
    assign_splits,
    build_pools,
    corpus_pools,
    hop_question,
    load_corpus,
    load_questions,
    load_with_pools,
    pool_key,
    single_hop_ids,
    split_of,
)
from hopsmith.data.split import paragraph_key
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
    assert q.hops == 2 and q.type == "2hop" and q.meta == {"answerable": True, "split": "train"}
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
    assert q.type == "bridge" and q.meta == {"level": "hard", "split": "train"}
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
    assert (len(evals), len(train)) == (85, 65)
    assert {q.id for q in train}.isdisjoint(q.id for q in evals)
    assert sorted(q.id for q in train + evals) == sorted(q.id for q in musique)
    assert all(q.meta["split"] == "eval" for q in evals) and all(q.meta["split"] == "train" for q in train)
    assert [q.id for q in evals[:3]] == ["2hop__496732_658428", "2hop__14095_15463", "2hop__82858_654855"]
    assert load_questions("musique", split="eval", limit=3) == evals[:3]
    sizes = {name: tuple(len(load_questions(name, split=s)) for s in SPLITS) for name in BUNDLED}
    assert sizes == {"musique": (65, 85), "hotpotqa": (105, 95), "2wiki": (51, 72)}


def test_the_dev_split_is_whole_components_of_the_train_side():
    """dev + fit partition the train side; no sharing link (a component of the graph) crosses them; the
    sizes are stable, and a fit question's pool holds no dev question's paragraph."""
    from hopsmith.data.split import components

    sizes = {name: tuple(len(load_questions(name, split=s)) for s in ("dev", "fit")) for name in BUNDLED}
    assert sizes == {"musique": (18, 47), "hotpotqa": (25, 80), "2wiki": (12, 39)}
    for name in BUNDLED:
        train = load_questions(name, split="train")
        dev, fit = load_questions(name, split="dev"), load_questions(name, split="fit")
        assert sorted(q.id for q in dev + fit) == sorted(q.id for q in train)
        assert all(q.meta["dev"] for q in dev) and not any("dev" in q.meta for q in fit)
        assert all(q.meta["split"] == "train" for q in dev + fit)
        for group in components(train):  # within one set; the split is drawn on all three at once
            assert len({"dev" in q.meta for q in group}) == 1, [q.id for q in group]
    assert not any("dev" in q.meta for q in load_questions("musique", split="eval"))
    fit, pools = load_with_pools("musique", split="fit")
    dev_content = {paragraph_key(p) for q in load_questions("musique", split="dev") for p in q.paragraphs}
    assert not any(paragraph_key(p) in dev_content for q in fit for p in pools[q.id])
    # without hold_out_dev (the plain train split) the same questions' pools do carry dev paragraphs:
    # the ban has work to do
    train, plain = load_with_pools("musique", split="train")
    assert any(paragraph_key(p) in dev_content for q in train if "dev" not in q.meta for p in plain[q.id])
    with pytest.raises(DataError, match="valid splits: train, eval, dev, fit"):
        load_questions("musique", split="holdout")


def test_questions_built_on_one_single_hop_question_share_a_side(musique):
    # Hashing whole ids put 2hop__160223_58067 in train and 2hop__747758_58067 (same last hop, same answer
    # "A.P.J. Abdul Kalam") in eval; a component of the sharing graph goes to one side.
    pair = [q for q in musique if q.id in ("2hop__160223_58067", "2hop__747758_58067")]
    assert {split_of(q.id) for q in pair} == {"train", "eval"}
    assert len({q.meta["split"] for q in pair}) == 1
    assert single_hop_ids("3hop1__9285_5188_23307") == ("9285", "5188", "23307")
    assert single_hop_ids("5a7f6fd75542992e7d278cfa") == () == single_hop_ids("2hop__x_y")
    sides = {}
    for q in musique:
        for h in single_hop_ids(q.id):
            sides.setdefault(h, set()).add(q.meta["split"])
    assert all(len(s) == 1 for s in sides.values())


def _q(qid, answer, question=None, paragraphs=()):
    return Question(qid, "x", question or f"What is {qid}?", (answer,), 2, tuple(paragraphs))


def test_components_link_answers_question_texts_and_supporting_paragraphs():
    gold = Paragraph("p", "Paris", "Paris is the capital of France.", supporting=True)
    gold_elsewhere = Paragraph("q", " paris", "Paris is the  capital of France.")  # a distractor there
    qs = [_q("a1", "Paris"), _q("a2", "the paris."),                 # one answer, normalised
          _q("b1", "x1", "Who is  it?"), _q("b2", "x2", "who is it"),  # one question text
          _q("c1", "y1", "c1?", [gold]), _q("c2", "y2", "c2?", [gold_elsewhere]),
          Question("e1", "x", "e1?", ("1952",), 2, ()),                        # a hop answer is an answer
          Question("e2", "x", "e2?", ("z",), 2, (), (Hop("w >> date", "1952"), Hop("#1 >> r", "z"))),
          _q("d1", "yes", "d1?"), _q("d2", "Yes", "d2?"), _q("d3", "no", "d3?")]  # yes/no link nothing
    # Try enough prefixes that each pair would be split by its own ids at least once.
    split_apart = {"a": False, "b": False, "c": False, "e": False}
    for prefix in range(40):
        renamed = [Question(f"{prefix}-{q.id}", *[getattr(q, f) for f in
                            ("dataset", "question", "answers", "hops", "paragraphs", "decomposition")]) for q in qs]
        sides = assign_splits(renamed)
        for k in split_apart:
            a, b = f"{prefix}-{k}1", f"{prefix}-{k}2"
            assert sides[a] == sides[b]
            split_apart[k] |= split_of(a) != split_of(b)
        singles = [f"{prefix}-d1", f"{prefix}-d2", f"{prefix}-d3"]
        assert [sides[i] for i in singles] == [split_of(i) for i in singles]
    assert all(split_apart.values())


def test_a_user_file_with_musique_ids_is_split_by_components(tmp_path):
    rows = raw_rows("musique")[:2]
    a, b = (json.loads(json.dumps(r)) for r in rows)
    # two new questions built on the first row's last single-hop question, each otherwise unlike it
    for i, (row, first_hop) in enumerate(((a, "11"), (b, "22"))):
        last = rows[0]["id"].split("_")[-1]
        row["id"] = f"2hop__{first_hop}{i}_{last}"
        row["question"], row["answer"], row["answer_aliases"] = f"Question {i}?", f"Answer {i}", []
    path = write_jsonl(tmp_path / "mine.jsonl", [rows[0], a, b])
    qs = load_questions(path)
    assert len({q.meta["split"] for q in qs}) == 1
    assert {q.meta["split"] for q in qs} == {split_of(min(q.id for q in qs))}
    assert sum(len(load_questions(path, split=s)) if s == qs[0].meta["split"] else 0 for s in SPLITS) == 3


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
        load_questions("musique", split="validation")


def test_duplicate_ids_are_refused(tmp_path):
    rows = raw_rows("hotpotqa")[:2]
    rows[1]["_id"] = rows[0]["_id"]
    with pytest.raises(DataError, match=r"d\.jsonl:2: duplicate question id"):
        load_questions(write_jsonl(tmp_path / "d.jsonl", rows))


def test_unanswerable_musique_rows_are_left_out(tmp_path):
    """MuSiQue-Full marks unanswerable rows; the official script scores answers on answerable rows only."""
    rows = raw_rows("musique")[:3]
    rows[1] = dict(rows[1], answerable=False)
    qs = load_questions(write_jsonl(tmp_path / "full.jsonl", rows))
    assert [q.id for q in qs] == [rows[0]["id"], rows[2]["id"]]
    with pytest.raises(DataError, match="unanswerable"):
        load_questions(write_jsonl(tmp_path / "none.jsonl", [rows[1]]))


# --- pools ---------------------------------------------------------------------------------------


def content(p: Paragraph) -> tuple[str, str]:
    return " ".join(p.title.casefold().split()), " ".join(p.text.casefold().split())


def test_pools_hold_own_paragraphs_and_distractors(musique):
    pools = build_pools(musique, size=400)
    assert set(pools) == {q.id for q in musique}
    eval_content = {content(p) for q in musique if q.meta["split"] == "eval" for p in q.paragraphs}
    for q in musique:
        pool = pools[q.id]
        assert len(pool) == 400
        # a train question's own distractors that are also an eval question's paragraphs stay out
        own = [p for p in q.paragraphs if q.meta["split"] == "eval" or p.supporting or content(p) not in eval_content]
        assert pool[: len(own)] == own
        assert [p.id for p in pool if p.supporting] == q.supporting_ids
        assert len({p.id for p in pool}) == len(pool)
        assert len({content(p) for p in pool[len(own):]}) == len(pool) - len(own)
        assert not {content(p) for p in own} & {content(p) for p in pool[len(own):]}


def test_pools_never_cross_the_split(musique):
    """Eval pools draw from eval questions only, train pools from train questions only, and a train pool
    holds no paragraph of an eval question (the bundled data: 0 of them)."""
    side = {q.id: q.meta["split"] for q in musique}
    eval_content = {content(p) for q in musique if side[q.id] == "eval" for p in q.paragraphs}
    pools = build_pools(musique, size=400)
    shared_distractors = 0
    for q in musique:
        donors = {p.id.split("::")[0] for p in pools[q.id]}
        assert {side[d] for d in donors} == {side[q.id]}
        if side[q.id] == "train":
            assert not {content(p) for p in pools[q.id]} & eval_content
            shared_distractors += sum(1 for p in q.paragraphs if content(p) in eval_content)
    # the rule has work to do: some train questions carry an eval question's distractor among their own
    assert shared_distractors > 0
    assert paragraph_key(musique[0].paragraphs[0]) == content(musique[0].paragraphs[0])


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


# --- Bamboogle -----------------------------------------------------------------------------------

# Bamboogle's authors publish a sheet of Question and Answer columns (CSV export: three unnamed empty
# columns between them, an "Answer 2" column for a second accepted answer, a stray newline inside some
# quoted answers). These rows are written for this test in that layout; they are not Bamboogle's.
BAMBOOGLE_CSV = '''Question,,,,Answer,Answer 2
Who painted the ceiling of the chapel named after Pope Sixtus IV?,,,,Michelangelo,
"In what year did the city that is home to the Louvre first host the Summer Olympics?",,,,1900,
What is the capital of the country whose flag shows a maple leaf?,,,,Ottawa,
Who wrote the play in which the character Ophelia drowns?,,,,"William Shakespeare
",Shakespeare
"What river flows through the city where ""The Night Watch"" hangs, by its Dutch name?",,,,Amstel,
'''


def test_bamboogle_csv_in_its_original_layout(tmp_path):
    path = tmp_path / "Bamboogle Prerelease - Sheet1.csv"
    path.write_text(BAMBOOGLE_CSV, encoding="utf-8")
    qs = load_questions(path)
    assert [q.id for q in qs] == [f"bamboogle_{i}" for i in range(5)]
    assert {q.dataset for q in qs} == {"bamboogle"} and all(q.paragraphs == () for q in qs)
    assert qs[1].question == "In what year did the city that is home to the Louvre first host the Summer Olympics?"
    assert qs[3].answers == ("William Shakespeare", "Shakespeare")  # stray newline gone, Answer 2 an alias
    assert qs[4].question.endswith('where "The Night Watch" hangs, by its Dutch name?') and qs[4].answers == ("Amstel",)
    assert all(q.meta["split"] in SPLITS and q.meta["answerable"] for q in qs)


def test_bamboogle_as_json_and_as_toolkit_jsonl(tmp_path):
    rows = [{"Question": "Who painted the ceiling of the chapel named after Pope Sixtus IV?", "Answer": "Michelangelo"},
            {"Question": "What is the capital of the country whose flag shows a maple leaf?", "Answer": "Ottawa"}]
    path = tmp_path / "bamboogle.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    assert [(q.id, q.answers) for q in load_questions(path)] == [("bamboogle_0", ("Michelangelo",)),
                                                                   ("bamboogle_1", ("Ottawa",))]
    flat = write_jsonl(tmp_path / "test.jsonl", [{"id": "test_7", "question": rows[0]["Question"],
                                                  "golden_answers": ["Michelangelo", "Michelangelo Buonarroti"]}])
    (q,) = load_questions(flat)
    assert q.id == "test_7" and q.answers == ("Michelangelo", "Michelangelo Buonarroti")


def test_bamboogle_csv_saved_in_the_windows_code_page(tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes("Question,,,,Answer,Answer 2\nWho painted the ceiling of the chapel in Rome?,,,,Michelangelo Buonarroti \u2013 painter,\n"
                     .encode("cp1252"))
    (q,) = load_questions(path)
    assert q.answers == ("Michelangelo Buonarroti \u2013 painter",)


def test_bamboogle_errors_name_the_line(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text("Question,,,,Answer,Answer 2\nWho?,,,,,\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.csv:2: malformed row \(no non-empty answer\)"):
        load_questions(path)
    path.write_text("Question,,,,Answer\n,,,,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.csv:2: malformed row \(empty question\)"):
        load_questions(path)
