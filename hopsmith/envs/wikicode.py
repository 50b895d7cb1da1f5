"""The code-as-action wiki environment (the code-as-action GRPO recipe, "seed 004" in the write-ups): the
agent writes Python that calls three search primitives over markdown wiki pages, a sandbox runs it, and
what the program prints comes back; it ends with `<answer>...</answer>`.

    hopsmith eval --env wikicode --data hotpotqa --limit 20 --max-turns 3 --extractor none

Pages: each question's paragraph pool grouped by title (`hopsmith.tools.wiki.Wiki.from_paragraphs`), so a
question searches the same text the multi-hop environment searches, as pages with sections. Primitives
inside the program: `search_pages(query, k=10)`, `view_sections(page_id)`, `read_section(section_id)`.
They run in this process and reach the program through the sandbox's narrow channel; the program itself
runs in a fresh bubblewrap sandbox (no network, no host files, rlimits; `hopsmith.tools.sandbox`). Where
bubblewrap is missing the run refuses to start unless `--weak-sandbox` accepts rlimit-only isolation; every
result row says which isolation ran.

A result row is a multi-hop row (EM/F1/cover-EM, supporting recall from the sections the programs read,
the failure taxonomy) plus the code metrics: programs that failed (`code_errors`), primitive calls, and
whether a program composed primitives in a loop (`composed_in_loop`); `summarize` adds their means.
"""
from __future__ import annotations

import ast
import time
import weakref

from ..chat import Action, CodeFormat
from ..config import AgentConfig, ConfigError
from ..metrics import aggregate, normalize_answer, score
from ..records import Paragraph, Question
from ..tools.sandbox import LocalSandbox, SandboxConfig
from ..tools.wiki import FULL, Wiki
from ..untrusted import neutralize
from .base import Episode

SYSTEM = """You answer questions by writing Python that searches a wiki. Inside <python> ... </python> these functions exist:
- search_pages(query, k=10) -> a list of {"page_id", "title", "snippet"}, best match first
- view_sections(page_id) -> a list of {"section_id", "title", "level", "preview"}
- read_section(section_id) -> the section's text; "<page_id>:full" reads the whole page
print() what you want to see: the printed output comes back to you. Loops and conditions are fine.
When you know the answer, reply with <answer>short answer</answer> and no code."""

EXAMPLE = """

Example.
Question: In which county was Lloyd Dane born?
Assistant:
<python>
for hit in search_pages("Lloyd Dane", k=2):
    print(read_section(hit["page_id"] + ":full")[:300])
</python>
Output: # Lloyd Dane
Lloyd Dane was an American racing driver, born in Eldon, Missouri.
Assistant:
<python>
print(read_section(search_pages("Eldon Missouri")[0]["page_id"] + ":full")[:300])
</python>
Output: # Eldon, Missouri
Eldon is a city in Miller County, Missouri, United States.
Assistant:
<answer>Miller County</answer>"""

ANSWER_NOW = "You have no programs left. Reply now with <answer>...</answer>, using what the programs printed."
PRIMITIVES = Wiki.primitive_names


def system_prompt(*, few_shot: bool = True) -> str:
    return SYSTEM + (EXAMPLE if few_shot else "")


class _Router:
    """The primitives one shared sandbox serves, pointed at the wiki of the episode whose program runs."""

    def __init__(self):
        self.wiki: Wiki | None = None
        self.reads: list[str] = []  # section ids read successfully by the program now running
        self.queries: list[str] = []  # what the program now running asked search_pages, in order

    def primitives(self) -> dict:
        out = {name: (lambda *a, _n=name, **k: getattr(self.wiki, _n)(*a, **k)) for name in PRIMITIVES}

        def read_section(*a, **k):
            text = self.wiki.read_section(*a, **k)
            self.reads.append(a[0] if a else k.get("section_id"))
            return text

        def search_pages(*a, **k):
            hits = self.wiki.search_pages(*a, **k)
            self.queries.append(str(a[0] if a else k.get("query", "")))
            return hits
        out["read_section"], out["search_pages"] = read_section, search_pages
        return out


_SANDBOXES: dict[tuple, tuple[LocalSandbox, _Router]] = {}


def _sandbox(config: SandboxConfig, weak: bool) -> tuple[LocalSandbox, _Router]:
    """One sandbox (and its warm worker) per process and setting, shared by every episode and run."""
    key = (config, weak)
    if key not in _SANDBOXES:
        router = _Router()
        box = LocalSandbox(router.primitives(), config, allow_weak_isolation=weak)
        weakref.finalize(box, box.close)
        _SANDBOXES[key] = (box, router)
    return _SANDBOXES[key]


def make(cfg: AgentConfig, *, pools: dict[str, list[Paragraph]] | None = None, sandbox=None, **_context):
    """`make_env(question)` for a run: each question's pool becomes its wiki; programs run in one sandbox.
    `sandbox` is a (sandbox, router) pair a caller may hand in (tests, the cloud's `ModalSandbox`)."""
    if pools is None:
        raise ConfigError("the wikicode environment builds each question's wiki from its paragraph pool: give pools")
    box, router = sandbox or _sandbox(SandboxConfig(), cfg.weak_sandbox)
    system = system_prompt(few_shot=cfg.shows_example)
    wikis: dict[int, Wiki] = {}

    def make_env(q: Question) -> "WikicodeEnv":
        pool = pools[q.id]
        if id(pool) not in wikis:
            wikis[id(pool)] = Wiki.from_paragraphs(pool)
        return WikicodeEnv(q, wikis[id(pool)], box, router, system=system)
    return make_env


class WikicodeEnv:
    format = CodeFormat()
    stop_strings = CodeFormat.stop
    tools: list[dict] = []  # the primitives are described in the system prompt, not as tool specs
    answer_now = ANSWER_NOW

    def __init__(self, question: Question, wiki: Wiki, sandbox, router: _Router, *, system: str | None = None):
        self.question = question
        self.wiki = wiki
        self.sandbox = sandbox
        self.router = router
        self.calls: list[dict] = []
        self.read_ids: dict[str, None] = {}  # paragraph ids of what the programs read, in order
        self.prediction: str | None = None
        self.messages = [{"role": "system", "content": system or system_prompt()},
                         {"role": "user", "content": f"Question: {question.question}"}]

    def step(self, action: Action, text: str) -> str | None:
        if action.is_final:
            self.prediction = action.answer
            return "final" if action.answer else "empty_answer"
        for call in action.calls:
            if call.error:
                self._record(call.arguments.get("code", ""), f"Error: {call.error}", None, 0.0, call.error)
                continue
            code = call.arguments["code"]
            self.router.wiki, self.router.reads, self.router.queries = self.wiki, [], []
            t0 = time.perf_counter()
            result = self.sandbox.execute(code)
            self._note_reads(self.router.reads)
            self._record(code, result.text(), result, time.perf_counter() - t0, None, self.router.queries)
        return None

    @classmethod
    def finish_turn(cls, envs: list["WikicodeEnv"]) -> None:
        return None

    def _record(self, code: str, output: str, result, seconds: float, error: str | None,
                queries: list[str] = ()) -> None:
        primitive_calls = [c.get("name") for c in (result.calls if result else [])]
        # `queries`: the searches the program made, which the behaviour probes read as a search tool's queries
        self.calls.append({"name": "python", "arguments": {"code": code}, "valid": error is None, "error": error,
                           "seconds": seconds, "status": result.status if result else "rejected",
                           "primitives": primitive_calls, "queries": list(queries), "loop": composes_in_loop(code)})
        self.messages.append({"role": "tool", "name": "python", "content": neutralize(output)})

    def _note_reads(self, section_ids: list[str]) -> None:
        for sid in section_ids:
            page_id, _, part = str(sid).partition(":")
            if part == FULL:
                ids = self.wiki.page(page_id).paragraph_ids
            else:
                section = self.wiki.section(sid)
                ids = section.paragraph_ids if section else ()
            self.read_ids.update(dict.fromkeys(ids))

    def result(self, ep: Episode) -> dict:
        q = self.question
        gold = [normalize_answer(a) for a in q.answers]
        read = [p for p in self.question.paragraphs if p.id in self.read_ids]
        seen = " ".join(normalize_answer(p.text) for p in read)
        prediction = self.prediction if ep.stop == "final" else None
        return {
            "question_id": q.id, "dataset": q.dataset, "hops": q.hops, "type": q.type, "question": q.question,
            "answers": list(q.answers), "prediction": prediction, "finished": ep.stop == "final", "stop": ep.stop,
            "answered_at_cap": ep.at_cap and ep.stop == "final", "turns": ep.turns, "tool_calls": self.calls,
            "supporting_ids": q.supporting_ids, "retrieved_ids": list(self.read_ids),
            "retrieved_text_has_answer": any(g and f" {g} " in f" {seen} " for g in gold),
            "code_errors": sum(1 for c in self.calls if c["status"] != "ok"),
            "primitive_calls": sum(len(c["primitives"]) for c in self.calls),
            "composed_in_loop": any(c["loop"] for c in self.calls),
            "sandbox": self.sandbox.describe().get("isolation"),
            "seconds": ep.seconds, "tokens": ep.tokens, "model": ep.model, "messages": self.messages,
            "metrics": score(prediction, list(q.answers), q.dataset),
        }


def composes_in_loop(code: str) -> bool:
    """Whether a loop or comprehension in the program calls a primitive (seed 004's "composition")."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    loops = (ast.For, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    for node in ast.walk(tree):
        if isinstance(node, loops):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id in PRIMITIVES:
                    return True
    return False


def summarize(rows: list[dict], *, n_boot: int = 1000, seed: int = 0, **kw) -> dict:
    """`hopsmith.metrics.aggregate` plus the code metrics of the code-as-action recipe."""
    out = aggregate(rows, n_boot=n_boot, seed=seed, **kw)
    n = len(rows)
    out["code"] = {
        "programs_per_episode": sum(len(r.get("tool_calls") or []) for r in rows) / n,
        "code_errors_per_episode": sum(int(r.get("code_errors") or 0) for r in rows) / n,
        "primitive_calls_per_episode": sum(int(r.get("primitive_calls") or 0) for r in rows) / n,
        "composed_in_loop": sum(bool(r.get("composed_in_loop")) for r in rows) / n,
        "sandbox": sorted({r.get("sandbox") or "?" for r in rows}),
    }
    return out
