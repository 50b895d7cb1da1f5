"""Wiki pages and the three search primitives of the code-as-action environment (seed 004).

    wiki = Wiki.from_questions(load_questions("musique"))     # paragraphs grouped by title into pages
    wiki = Wiki.from_markdown_dir("my_pages/")                 # or a folder of your own .md files
    hits = wiki.search_pages("Glenn Howerton 2023 film")      # [{"page_id", "title", "snippet"}, ...]
    wiki.view_sections(hits[0]["page_id"])                    # [{"section_id", "title", "level", "preview"}, ...]
    wiki.read_section("glenn_howerton:career")                # one section's markdown
    wiki.read_section("glenn_howerton:full")                  # the whole page

A page is markdown: `# Title`, an introduction, then `##`/`###` sections. A question set has no
headings, so its paragraphs become pages this way: every distinct paragraph with the same title joins one
page, the first as its introduction and each further one as a section headed "Passage N", in the order the
question set first shows them. Ids are derived from text alone (a slug of the title, then of the heading),
so the same input always gives the same ids; a clash gets `_2`, `_3`, ... in sorted order.

`search_pages` is the project's BM25 (hopsmith.tools.search: bm25s, Snowball stemming, English stopwords)
over whole pages. An unknown or malformed id raises `WikiError` whose message says what is wrong and
how to get a valid id; inside the sandbox that message is what the program's traceback shows the model.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hopsmith.data import DataError
from hopsmith.records import Paragraph, Question
from hopsmith.tools.search import BM25Index

FULL = "full"  # read_section("<page_id>:full") returns the whole page
INTRO = "intro"
MAX_K = 50
MAX_QUERY_CHARS = 2000
SNIPPET_CHARS = 160
PREVIEW_CHARS = 100

_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


class WikiError(ValueError):
    """A primitive called with an id or argument it cannot use; the message is written for the model."""


@dataclass(frozen=True)
class Section:
    id: str  # "<page_id>:<slug>"
    title: str
    level: int  # 1 for the introduction, 2 for "##", 3 for "###", ...
    text: str  # the section's markdown, its heading line included
    paragraph_ids: tuple[str, ...] = ()  # the question-set paragraphs it was built from (for recall metrics)


@dataclass(frozen=True)
class Page:
    id: str
    title: str
    markdown: str
    sections: tuple[Section, ...]

    @property
    def paragraph_ids(self) -> tuple[str, ...]:
        return tuple(pid for s in self.sections for pid in s.paragraph_ids)


def slug(text: str) -> str:
    """`"Caroline Polachek"` -> `"caroline_polachek"`: ASCII letters and digits, `_` between words."""
    # Accents drop off ("é" -> "e"); any other non-ASCII character (a dash, a CJK letter) separates words.
    chars = (c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]+", "_", "".join(chars).lower()).strip("_")


class Wiki:
    """Pages with BM25 search over them; the primitives the sandboxed program calls."""

    primitive_names = ("search_pages", "view_sections", "read_section")

    def __init__(self, pages: Sequence[Page]):
        ids = [p.id for p in pages]
        if len(set(ids)) != len(ids):
            raise ValueError("page ids must be unique")
        self.pages = list(pages)
        self._by_id = {p.id: p for p in self.pages}
        self._sections = {s.id: s for p in self.pages for s in p.sections}
        self._index = BM25Index([Paragraph(p.id, p.title, p.markdown) for p in self.pages])

    def __len__(self) -> int:
        return len(self.pages)

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def from_questions(cls, questions: Iterable[Question]) -> Wiki:
        """Every paragraph of every question, grouped by title into pages (see the module docstring)."""
        return cls.from_paragraphs(p for q in questions for p in q.paragraphs)

    @classmethod
    def from_paragraphs(cls, paragraphs: Iterable[Paragraph]) -> Wiki:
        """Paragraphs (a question set's, or a corpus from `hopsmith.data.load_corpus`) grouped by title.

        Paragraphs with the same title and the same whitespace-normalised text are one passage; every
        paragraph id that carried it is kept on its section.
        """
        groups: dict[str, dict[str, list[str]]] = {}  # title -> text -> paragraph ids, first-seen order
        for p in paragraphs:
            title = " ".join(p.title.split()) or "Untitled"
            text = " ".join(p.text.split())
            if text:
                groups.setdefault(title, {}).setdefault(text, []).append(p.id)
        ids = _unique_ids({title: slug(title) or "page" for title in groups})
        pages = []
        for title in sorted(groups, key=lambda t: ids[t]):
            pid = ids[title]
            # Built directly, not parsed back from markdown: a passage may itself start with "#".
            sections = []
            for n, (text, pids) in enumerate(groups[title].items(), start=1):
                if n == 1:
                    sections.append(Section(f"{pid}:{INTRO}", title, 1, f"# {title}\n\n{text}", tuple(pids)))
                else:
                    sections.append(Section(f"{pid}:passage_{n}", f"Passage {n}", 2, f"## Passage {n}\n\n{text}",
                                            tuple(pids)))
            markdown = "\n\n".join(s.text for s in sections) + "\n"
            pages.append(Page(pid, title, markdown, tuple(sections)))
        return cls(pages)

    @classmethod
    def from_markdown_dir(cls, path: str | Path) -> Wiki:
        """One page per `*.md` file under `path` (recursively, in sorted order). The page title is the
        file's first `# ` heading, else its file name; the page id is a slug of the file name."""
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"{root}: not a directory (give a folder of .md files)")
        files = sorted(f for f in root.rglob("*.md") if f.is_file())
        if not files:
            raise DataError(f"{root}: no .md files found")
        texts = {}
        for f in files:
            try:
                texts[f] = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{f}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        keys = {str(f.relative_to(root).with_suffix("")): f for f in files}
        ids = _unique_ids({k: slug(Path(k).name) or "page" for k in keys})
        pages = [_parse_page(ids[k], texts[f], default_title=f.stem) for k, f in keys.items()]
        return cls(sorted(pages, key=lambda p: p.id))

    # -- the primitives ----------------------------------------------------------------------------

    def search_pages(self, query: str, k: int = 10) -> list[dict]:
        """Pages matching `query` by BM25, best first: `[{"page_id", "title", "snippet"}, ...]`.

        Args:
            query: Keywords or a question, e.g. "Glenn Howerton 2023 film".
            k: How many pages at most (1 to 50).
        """
        if not isinstance(query, str):
            raise WikiError(f"search_pages(query) needs a string query, got {type(query).__name__}")
        if len(query) > MAX_QUERY_CHARS:
            raise WikiError(f"search_pages: the query is {len(query)} characters long; keep it under "
                            f"{MAX_QUERY_CHARS} (a few keywords work best)")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise WikiError(f"search_pages(query, k): k must be a whole number from 1 to {MAX_K}, got {k!r}")
        hits = self._index.search(query, k=k)
        return [{"page_id": p.id, "title": p.title, "snippet": self._snippet(p.id)} for p, _ in hits]

    def view_sections(self, page_id: str) -> list[dict]:
        """A page's sections in order: `[{"section_id", "title", "level", "preview"}, ...]`.

        Args:
            page_id: A page id from search_pages, e.g. "caroline_polachek".
        """
        page = self._page(page_id, "view_sections(page_id)")
        return [
            {"section_id": s.id, "title": s.title, "level": s.level, "preview": _shorten(_body(s.text), PREVIEW_CHARS)}
            for s in page.sections
        ]

    def read_section(self, section_id: str) -> str:
        """One section's markdown, or the whole page for `"<page_id>:full"`.

        Args:
            section_id: A section id from view_sections, e.g. "caroline_polachek:early_life".
        """
        if not isinstance(section_id, str):
            raise WikiError(f"read_section(section_id) needs a string id, got {type(section_id).__name__}")
        page_id, sep, part = section_id.partition(":")
        if not sep or not page_id or not part:
            raise WikiError(
                f"read_section: {section_id!r} is not a section id; ids look like '<page_id>:<section>' "
                f"(from view_sections(page_id)), or '<page_id>:full' for the whole page"
            )
        page = self._page(page_id, "read_section(section_id)")
        if part == FULL:
            return page.markdown
        section = self._sections.get(section_id)
        if section is None:
            known = ", ".join(repr(s.id) for s in page.sections[:6])
            raise WikiError(
                f"read_section: page {page_id!r} has no section {part!r}; its sections are {known}"
                f"{', ...' if len(page.sections) > 6 else ''} (or {page_id + ':full'!r} for the whole page)"
            )
        return section.text

    def primitives(self) -> dict:
        return {name: getattr(self, name) for name in self.primitive_names}

    def page(self, page_id: str) -> Page:
        return self._page(page_id, "page")

    def section(self, section_id: str) -> Section | None:
        return self._sections.get(section_id)

    # -- helpers -----------------------------------------------------------------------------------

    def _page(self, page_id, where: str) -> Page:
        if not isinstance(page_id, str):
            raise WikiError(f"{where} needs a string page id, got {type(page_id).__name__}")
        page = self._by_id.get(page_id)
        if page is None:
            close = difflib.get_close_matches(page_id, list(self._by_id), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise WikiError(f"{where}: unknown page id {page_id!r}; page ids come from search_pages(query){hint}")
        return page

    def _snippet(self, page_id: str) -> str:
        page = self._by_id[page_id]
        return _shorten(_body(page.sections[0].text), SNIPPET_CHARS) if page.sections else ""


def _unique_ids(wanted: dict[str, str]) -> dict[str, str]:
    """key -> id, where clashing ids get `_2`, `_3`, ... in the sorted order of their keys."""
    out, taken = {}, set()
    for key in sorted(wanted, key=lambda k: (wanted[k], k)):
        base = candidate = wanted[key]
        n = 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        out[key] = candidate
    return out


def _parse_page(page_id: str, markdown: str, default_title: str) -> Page:
    """Split markdown into sections at its headings (outside fenced code). The first `# ` heading is the
    page title and the text under it the introduction; an empty introduction is left out."""
    lines = markdown.splitlines()
    title = None
    chunks: list[tuple[str | None, int, list[str]]] = [(None, 1, [])]  # (heading, level, lines)
    in_fence = False
    for line in lines:
        if _FENCE_RE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _HEADING_RE.match(line)
        if m and len(m.group(1)) == 1 and title is None and not any(c[2] for c in chunks[1:]):
            title = m.group(2) or default_title
            chunks[0] = (None, 1, chunks[0][2] + [line])
        elif m:
            chunks.append((m.group(2), len(m.group(1)), [line]))
        else:
            chunks[-1][2].append(line)
    title = title or default_title
    sections, taken = [], {FULL}
    for n, (heading, level, body) in enumerate(chunks):
        text = "\n".join(body).strip()
        if heading is None and not _body(text):
            continue
        base = INTRO if heading is None else (slug(heading) or f"section_{n}")
        part, k = base, 1
        while part in taken:
            k += 1
            part = f"{base}_{k}"
        taken.add(part)
        sections.append(Section(f"{page_id}:{part}", title if heading is None else heading, level, text))
    return Page(page_id, title, markdown, tuple(sections))


def _body(text: str) -> str:
    """A section's text without its heading lines, whitespace squashed."""
    return " ".join(" ".join(l for l in text.splitlines() if not _HEADING_RE.match(l)).split())


def _shorten(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    cut = text[:n]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip() + "…"
