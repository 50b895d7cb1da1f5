"""The code-as-action wiki environment through the episode loop and `hopsmith eval`: programs run in the
bubblewrap sandbox, read the question's pages, are scored and measured; failures and attacks are contained."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ScriptedBackend
from sandbox_support import wikicode_box  # noqa: F401 (a fixture)

import hopsmith
from hopsmith.agent.loop import run_episodes
from hopsmith.config import AgentConfig, EvalConfig
from hopsmith.data import build_pools, load_questions
from hopsmith.envs import wikicode


@pytest.fixture(scope="module")
def box(wikicode_box):
    return wikicode_box


@pytest.fixture(scope="module")
def hotpot():
    qs = load_questions("hotpotqa", split="eval", limit=3)
    return qs, build_pools(qs, size=60, others=load_questions("hotpotqa"))


def _reader(q) -> str:
    """A program that searches for each supporting page's title in a loop and prints what it reads."""
    titles = sorted({p.title for p in q.paragraphs if p.supporting})
    return ("<python>\nfor t in " + json.dumps(titles) + ":\n    for hit in search_pages(t, k=5):\n"
            "        if hit['title'] == t:\n            print(read_section(hit['page_id'] + ':full')[:400])\n</python>")


def test_a_program_reads_pages_in_a_loop_and_the_answer_is_scored(box, hotpot):
    qs, pools = hotpot
    backend = ScriptedBackend({q.question: [_reader(q), f"<answer>{q.answer}</answer>"] for q in qs})
    cfg = AgentConfig(env="wikicode", max_turns=3)
    rows = run_episodes(qs, wikicode.make(cfg, pools=pools, sandbox=box), backend, cfg)
    assert len(rows) == 3
    for row in rows:
        q = next(q for q in qs if q.id == row["question_id"])
        assert row["stop"] == "final" and row["metrics"]["em"] == 1.0
        assert row["composed_in_loop"] and row["code_errors"] == 0 and row["primitive_calls"] >= 4
        assert set(q.supporting_ids) <= set(row["retrieved_ids"])  # the pages it read hold the support
        output = row["messages"][3]
        assert output["role"] == "tool" and "# " in output["content"]  # the program's printed pages came back
        assert row["sandbox"] == "bubblewrap"
    metrics = wikicode.summarize(rows, n_boot=50)
    assert metrics["em"]["mean"] == 1.0 and metrics["supporting_recall"] == 1.0
    assert metrics["code"]["composed_in_loop"] == 1.0 and metrics["code"]["programs_per_episode"] == 1.0


def test_failing_and_hostile_programs_are_contained_and_the_episode_goes_on(box, hotpot):
    qs, pools = hotpot
    q = qs[0]
    corpus = Path(hopsmith.__file__).parent / "data" / "bundled" / "hotpot_dev_distractor_sample.jsonl"
    assert corpus.exists()
    programs = [
        "<python>\nprint(1/0)\n</python>",
        f"<python>\nprint(open({str(corpus)!r}).read()[:50])\n</python>",
        "<python>\nimport socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n</python>",
        "<python>\nwhile True:\n    pass\n</python>",
        "<python>\nprint(read_section('no_such_page:full'))\n</python>",
        f"<answer>{q.answer}</answer>",
    ]
    backend = ScriptedBackend({q.question: programs})
    cfg = AgentConfig(env="wikicode", max_turns=8)
    [row] = run_episodes([q], wikicode.make(cfg, pools=pools, sandbox=box), backend, cfg)
    statuses = [c["status"] for c in row["tool_calls"]]
    assert statuses[0] == "error" and statuses[3] in ("timeout", "cpu_limit") and row["code_errors"] == 5
    outputs = [m["content"] for m in row["messages"] if m["role"] == "tool"]
    assert "ZeroDivisionError" in outputs[0]
    assert "FileNotFoundError" in outputs[1]  # the corpus is not inside the sandbox
    assert "no_such_page" in outputs[4] and "search_pages" in outputs[4]  # the wiki's error, worded for the model
    assert row["stop"] == "final" and row["metrics"]["em"] == 1.0


def test_the_behaviour_probes_see_the_searches_inside_programs(box, hotpot):
    """The collapse guard and the eval's "answered without search" read a program's search_pages calls as
    searches: a program that repeats its query shows low query diversity, one that never searches counts."""
    from hopsmith.collapse import behaviour
    from hopsmith.metrics import aggregate

    qs, pools = hotpot
    title = next(p.title for p in qs[0].paragraphs if p.supporting)
    repeat = f"<python>\nprint(search_pages({title!r})[0]['title'])\nprint(search_pages(query={title!r}, k=2))\n</python>"
    script = {qs[0].question: [repeat, repeat, f"<answer>{qs[0].answer}</answer>"],
              qs[1].question: ["<python>\nprint(2 + 2)\n</python>", "<answer>4</answer>"]}
    cfg = AgentConfig(env="wikicode", max_turns=4)
    rows = run_episodes(qs[:2], wikicode.make(cfg, pools=pools, sandbox=box), ScriptedBackend(script), cfg)
    by_q = {r["question_id"]: r for r in rows}
    searching, idle = by_q[qs[0].id], by_q[qs[1].id]
    assert [c["queries"] for c in searching["tool_calls"]] == [[title, title], [title, title]]
    assert idle["tool_calls"][0]["queries"] == [] and idle["tool_calls"][0]["valid"]
    probe = behaviour(rows)
    assert probe["tool_use_rate"] == 1.0 and probe["answered_without_search_rate"] == 0.5
    assert probe["mean_searches"] == 2.0 and probe["query_diversity"] == 0.25  # one distinct query of four
    assert aggregate(rows, n_boot=20)["answered_without_search_rate"] == 0.5


def test_an_unclosed_program_is_never_run_and_composition_is_detected():
    assert wikicode.composes_in_loop("for h in search_pages('x'):\n    print(read_section(h['page_id'] + ':full'))")
    assert wikicode.composes_in_loop("print([view_sections(h['page_id']) for h in search_pages('x')])")
    assert not wikicode.composes_in_loop("h = search_pages('x')\nprint(h)")
    assert not wikicode.composes_in_loop("for i in range(3):\n    print(i)")
    assert not wikicode.composes_in_loop("for (")


def test_eval_with_the_wikicode_env_writes_code_metrics(box, tmp_path):
    from hopsmith import evaluation

    qs = load_questions("hotpotqa", split="eval", limit=2)
    backend = ScriptedBackend({q.question: [_reader(q), f"<answer>{q.answer}</answer>"] for q in qs})
    cfg = EvalConfig(data="hotpotqa", limit=2, extraction_bench=False, bootstrap=50,
                     agent=AgentConfig(env="wikicode", extractor="none", max_turns=3))
    metrics = evaluation.run(cfg, tmp_path / "run", backend=backend, progress=False)
    assert metrics["n"] == 2 and metrics["em"]["mean"] == 1.0
    assert metrics["code"]["composed_in_loop"] == 1.0 and metrics["code"]["sandbox"] == ["bubblewrap"]
    assert (tmp_path / "run" / "report.html").exists()
