"""Wiki pages from question sets and markdown folders, and the three primitives the sandboxed program calls."""
from __future__ import annotations

import pytest

from hopsmith.data import DataError, load_questions
from hopsmith.records import Paragraph
from hopsmith.tools.wiki import Wiki, WikiError, slug

POLACHEK = """# Caroline Polachek

**Caroline Polachek** (born 1985) is an American singer.

## Early life

She grew up in Connecticut.

## Career

### Chairlift (2008–2017)

She co-founded Chairlift.

```python
# not a heading inside a code fence
```

## Career

A second section with the same heading.
"""


@pytest.fixture(scope="module")
def musique_wiki() -> Wiki:
    return Wiki.from_questions(load_questions("musique"))


@pytest.fixture()
def md_wiki(tmp_path) -> Wiki:
    (tmp_path / "Caroline Polachek.md").write_text(POLACHEK)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Bad Sisters.md").write_text(
        "Intro before any title.\n\n# Bad Sisters\n\n| opentheme = \"Who by Fire\" performed by PJ Harvey\n")
    (tmp_path / "notes.txt").write_text("not a page")
    return Wiki.from_markdown_dir(tmp_path)


def test_markdown_pages_sections_and_ids(md_wiki):
    assert [p.id for p in md_wiki.pages] == ["bad_sisters", "caroline_polachek"]
    sections = md_wiki.view_sections("caroline_polachek")
    assert [s["section_id"] for s in sections] == [
        "caroline_polachek:intro", "caroline_polachek:early_life", "caroline_polachek:career",
        "caroline_polachek:chairlift_2008_2017", "caroline_polachek:career_2",
    ]
    assert [s["level"] for s in sections] == [1, 2, 2, 3, 2]
    assert sections[0]["title"] == "Caroline Polachek"
    assert sections[1]["preview"] == "She grew up in Connecticut."
    assert md_wiki.read_section("caroline_polachek:early_life") == "## Early life\n\nShe grew up in Connecticut."
    assert "# not a heading inside a code fence" in md_wiki.read_section("caroline_polachek:chairlift_2008_2017")
    assert md_wiki.read_section("caroline_polachek:full") == POLACHEK
    # Text before the title joins the introduction; the title still comes from the "# " heading.
    assert md_wiki.page("bad_sisters").title == "Bad Sisters"
    assert "Intro before any title." in md_wiki.read_section("bad_sisters:intro")


def test_search_pages_ranks_by_bm25(md_wiki):
    hits = md_wiki.search_pages("Who by Fire opening theme")
    assert hits[0]["page_id"] == "bad_sisters" and hits[0]["title"] == "Bad Sisters"
    assert set(hits[0]) == {"page_id", "title", "snippet"}
    assert md_wiki.search_pages("Connecticut singer", k=1)[0]["page_id"] == "caroline_polachek"
    assert md_wiki.search_pages("zzqxv") == [] and md_wiki.search_pages("") == []


@pytest.mark.parametrize("call, message", [
    (lambda w: w.view_sections("caroline_polacheck"), "unknown page id 'caroline_polacheck'; page ids come from "
                                                       "search_pages(query); did you mean 'caroline_polachek'"),
    (lambda w: w.read_section("caroline_polachek"), "is not a section id; ids look like '<page_id>:<section>'"),
    (lambda w: w.read_section("caroline_polachek:death"), "page 'caroline_polachek' has no section 'death'; "
                                                           "its sections are 'caroline_polachek:intro'"),
    (lambda w: w.read_section("nobody:intro"), "unknown page id 'nobody'"),
    (lambda w: w.read_section(3), "needs a string id, got int"),
    (lambda w: w.search_pages(["a"]), "needs a string query, got list"),
    (lambda w: w.search_pages("a", k=0), "k must be a whole number from 1 to 50, got 0"),
    (lambda w: w.search_pages("a", k=True), "got True"),
    (lambda w: w.search_pages("word " * 500), "the query is 2500 characters long; keep it under 2000"),
])
def test_bad_ids_and_arguments_give_clear_errors(md_wiki, call, message):
    with pytest.raises(WikiError) as info:
        call(md_wiki)
    assert message in str(info.value)


def test_question_paragraphs_grouped_by_title(musique_wiki):
    questions = load_questions("musique")
    titles = {" ".join(p.title.split()) for q in questions for p in q.paragraphs}
    assert len(musique_wiki) == len(titles)
    # The page a question's supporting paragraph lives on holds that paragraph's text and remembers its id.
    q = questions[0]
    support = next(p for p in q.paragraphs if p.supporting)
    page = musique_wiki.page(slug(support.title))
    assert page.title == support.title
    assert support.id in page.paragraph_ids
    section = next(s for s in page.sections if support.id in s.paragraph_ids)
    assert " ".join(support.text.split()) in musique_wiki.read_section(section.id)
    assert musique_wiki.search_pages(support.text[:80])[0]["page_id"] == page.id


def test_paragraph_pages_merge_duplicates_and_number_passages():
    paragraphs = [
        Paragraph("q1::0", "Lyon", "Lyon is a city in France."),
        Paragraph("q1::1", "Paris", "Paris is the capital of France."),
        Paragraph("q2::4", "Lyon", "Lyon  is a city in France."),  # same text, other whitespace: one passage
        Paragraph("q2::5", "Lyon", "# Lyon has two rivers."),  # starts with "#": still one passage
        Paragraph("q3::0", "Lyon!", "A different title with the same slug."),
        Paragraph("q3::1", "", "No title."),
    ]
    wiki = Wiki.from_paragraphs(paragraphs)
    assert [p.id for p in wiki.pages] == ["lyon", "lyon_2", "paris", "untitled"]
    assert wiki.page("lyon_2").title == "Lyon!"
    assert [(s["section_id"], s["title"]) for s in wiki.view_sections("lyon")] == [
        ("lyon:intro", "Lyon"), ("lyon:passage_2", "Passage 2")]
    assert wiki.section("lyon:intro").paragraph_ids == ("q1::0", "q2::4")
    assert wiki.read_section("lyon:full") == "# Lyon\n\nLyon is a city in France.\n\n## Passage 2\n\n# Lyon has two rivers.\n"
    # Same input, same ids: the order of questions does not change them.
    again = Wiki.from_paragraphs(list(reversed(paragraphs)))
    assert [p.id for p in again.pages] == [p.id for p in wiki.pages]


def test_markdown_folder_problems_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        Wiki.from_markdown_dir(tmp_path / "missing")
    with pytest.raises(DataError, match="no .md files found"):
        Wiki.from_markdown_dir(tmp_path)
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(DataError, match="bad.md: not UTF-8"):
        Wiki.from_markdown_dir(tmp_path)
