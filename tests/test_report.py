"""The HTML report: what it collects from real run directories, how it shows comparisons (with or without
paired statistics), its CLI, and the page itself in headless Chromium (plots drawn, filters and search
working, base and tuned side by side, no console errors, hostile text kept as text).

The run directories are made by the stages themselves: two evals driven by scripted backends, a LoRA SFT
and a GRPO run of the tiny random model, and a cost ledger written by `hopsmith.cost.Ledger`.

The browser tests need Chromium (Debian: apt-get install chromium) and the playwright package (dev extra).
Outside CI they are skipped when either is missing, saying so; with CI set (as .ci/run runs) they fail.
"""
from __future__ import annotations

import copy
import json
import os
import re

import pytest
from conftest import ScriptedBackend, call

from hopsmith import cli, report
from hopsmith.config import EvalConfig
from hopsmith.cost import Ledger, Usage
from hopsmith.data import build_pools, hop_question, load_questions
from hopsmith.io import read_jsonl, write_jsonl
from hopsmith.metrics import failure_kind
from stages import evaluate

N = 8  # questions per eval


def _chain(q, think: bool = False) -> list[str]:
    steps = [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))]
    if think:
        steps = [f"<think>Hop {i + 1}: look up {hop_question(q, i)}.</think>\n{s}" for i, s in enumerate(steps)]
    return steps + [f"FINAL({q.answer})"]


def _base_scripts(qs):
    """Every outcome the viewer filters by: wrong after searching, answered without search, an invalid call
    and no answer, and correct."""
    scripts = {}
    for i, q in enumerate(qs):
        kind = i % 4
        if kind == 0:
            scripts[q.question] = [call("search", query=hop_question(q, 0)), "FINAL(nobody in particular)"]
        elif kind == 1:
            scripts[q.question] = ["FINAL(nobody in particular)"]
        elif kind == 2:
            scripts[q.question] = ['<tool_call>\n{"name": "search", "arguments": {query: broken}}\n</tool_call>', ""]
        else:
            scripts[q.question] = _chain(q)
    return scripts


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, tiny_dir):
    """A ladder-shaped run root: eval-base, eval-sft, sft/ (real LoRA SFT), grpo/ (real GRPO), cost.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stages import grpo, sft
    from episodes import run_multihop
    from hopsmith.config import AgentConfig
    from hopsmith.envs.multihop import MultihopEnv
    from hopsmith.tools.search import BM25Index

    root = tmp_path_factory.mktemp("ladder")
    cfg = EvalConfig(limit=N, pool_size=100, bootstrap=100, extractor="none", max_turns=4)
    qs, _ = evaluate.load_eval_questions(cfg)
    evaluate.run(cfg, root / "eval-base", backend=ScriptedBackend(_base_scripts(qs)), progress=False)
    tuned = {q.question: _chain(q, think=True) for q in qs}
    tuned[qs[0].question] = _chain(qs[0], think=True)[:-1] + ["FINAL(somebody else)"]  # one wrong, for the taxonomy
    evaluate.run(EvalConfig(**{**cfg.__dict__, "few_shot": False}), root / "eval-sft", backend=ScriptedBackend(tuned),
                 progress=False)

    train = load_questions("musique", split="train", limit=4)
    pools = build_pools(train, size=60, others=load_questions("musique"))
    policy = ScriptedBackend({q.question: _chain(q) for q in train})
    rows = run_multihop(train, pools, policy, AgentConfig(few_shot=False))
    tools = MultihopEnv(BM25Index([])).schemas()
    write_jsonl(root / "train.jsonl", [{"id": r["question_id"], "question_id": r["question_id"],
                                        "source": "synthetic:chain", "messages": r["messages"], "tools": tools}
                                       for r in rows])
    sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), max_steps=3, batch_size=2, max_length=4096, save_steps=3,
                          lora_r=4, lora_alpha=8), root / "sft",
            model=AutoModelForCausalLM.from_pretrained(tiny_dir), tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
    grpo.run(grpo.GRPOConfig(limit=2, num_generations=2, max_steps=2, max_turns=2, max_new_tokens=8, min_tool_use=0.0),
             root / "grpo", model=AutoModelForCausalLM.from_pretrained(tiny_dir),
             tokenizer=AutoTokenizer.from_pretrained(tiny_dir))

    ledger = Ledger.open(root / "cost.json")
    ledger.record(Usage("sft", 1800.0, gpu="L4", cpu=4, memory_gib=16, tokens=3_600_000),
                  Usage("evaluate", 300.0, gpu="B200", cpu=8, memory_gib=32, shard=0),
                  Usage("evaluate", 320.0, gpu="B200", cpu=8, memory_gib=32, shard=1))
    ledger.correct_answers = 7
    ledger.save()
    return root


def _page(path) -> str:
    return path.read_text()


def _episodes(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="episodes-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


# -- what the page holds ------------------------------------------------------------------------------------

def test_eval_stage_writes_its_own_report(ladder):
    page = _page(ladder / "eval-base" / "report.html")
    assert len(_episodes(page)["episodes"]) == N
    assert 'id="compare"' not in page  # one run: nothing to compare


def test_report_holds_numbers_curves_cost_and_configs(ladder):
    path = report.write_report([ladder])
    assert path == ladder / "report.html"
    page = _page(path)
    base = json.loads((ladder / "eval-base" / "metrics.json").read_text())
    # headline with intervals and n
    head = _section(page, "summary")
    assert f"n={N}" in head and report.ci_text(base["acc"]) in head
    # breakdowns: MuSiQue's question types come from the bundled set the config names
    types = {q.type for q in load_questions("musique", split="eval", limit=N)}
    breakdown = _section(page, "breakdown")
    assert all(f"<td>{t}</td>" in breakdown for t in types) and "By hop count" in breakdown
    # comparison of the two evals on the same questions, with the statistics compare() gives
    compare = _section(page, "compare")
    assert "eval-base → eval-sft" in compare
    assert "95% CIs" in compare or "McNemar exact p = " in compare
    # behaviour and failures: the base run's invalid call and answer without search are counted
    assert base["invalid_call_rate"] > 0 and report.pct(base["invalid_call_rate"]) in _section(page, "behaviour")
    assert base["failures"]["no_final_answer"] == N // 4
    # training curves: SFT's learning rate comes from its checkpoint's trainer state (loss.json has none)
    training = _section(page, "training")
    svgs = re.findall(r"<svg.*?</svg>", training, re.S)
    titles = " ".join(re.sub(r"<[^>]+>", " ", s) for s in svgs)
    assert "learning rate" in titles and "loss" in titles and "reward" in titles
    assert "KL is not logged" in training  # our GRPO runs with beta = 0
    # cost ledger per stage and per correct answer, priced by hopsmith.cost
    summary = Ledger.open(ladder / "cost.json").summary()
    cost = _section(page, "cost")
    assert f"${summary['total_usd']:.3f}" in cost and f"${summary['usd_per_correct_answer']:.4f}" in cost
    # every stage's config
    configs = _section(page, "config")
    assert all(f"{name}</summary>" in configs for name in (
        "eval-base/config.json", "eval-sft/config.json", "sft/training.json: config (sft)",
        "grpo/training.json: config (grpo)"))
    # self-contained: no script, style, image or link fetched from anywhere
    assert not re.search(r'(src|href)="(?!#|data:)', page) and not re.search(r"url\((?!#)", page)
    assert "@import" not in page
    # the trace viewer's data: every episode of both runs, outcomes from failure_kind
    data = _episodes(page)
    assert [r["name"] for r in data["runs"]] == ["eval-base", "eval-sft"]
    rows = read_jsonl(ladder / "eval-base" / "results.jsonl")
    got = {e["id"]: e["o"] for e in data["episodes"] if e["r"] == 0}
    assert got == {r["question_id"]: failure_kind(r) or "correct" for r in rows}
    assert len(data["systems"]) <= 2  # system prompts stored once, not per episode


def test_paired_statistics_are_shown_when_compare_gives_them(ladder, monkeypatch):
    """compare() may grow paired tests (McNemar p-values, paired bootstrap intervals) and take the rows for
    them; the report passes the rows by the names compare's signature uses and shows every extra field."""
    from hopsmith import metrics

    original = metrics.compare
    seen = {}

    def paired_compare(base, tuned, base_rows=None, tuned_rows=None):
        seen["rows"] = (len(base_rows), len(tuned_rows))
        out = original(base, tuned)
        out["acc"] = {k: v for k, v in out["acc"].items() if k != "ci_overlap"}
        out["acc"].update(p_value=0.0123, test="mcnemar_exact")
        out["f1"]["diff_ci"] = {"lo": 0.05, "hi": 0.25}
        return out

    monkeypatch.setattr(metrics, "compare", paired_compare)
    page = _page(report.write_report([ladder], ladder / "paired.html"))
    compare = _section(page, "compare")
    assert seen["rows"] == (N, N)
    assert "p = 0.0123" in compare and "test: mcnemar_exact" in compare
    assert "diff ci [+5.0, +25.0] pt" in compare
    assert '<span class="sig">' in compare  # p < 0.05 is marked


def test_paired_blocks_of_compare_are_shown(ladder, monkeypatch):
    """compare()'s nested form: a `paired` block per metric (McNemar for EM and cover-EM, a paired bootstrap
    interval for the rest), the prompt setups and the count of paired questions."""
    from hopsmith import metrics

    original = metrics.compare

    def nested(base, tuned, **kw):
        out = {k: v for k, v in original(base, tuned).items()}
        for key in ("acc", "em", "f1", "tool_use_rate", "avg_turns"):
            out[key] = {k: v for k, v in out[key].items() if k != "ci_overlap"}
            out[key]["paired"] = {"n": N, "delta": 0.5, "lo": 0.25, "hi": 0.75}
        out["em"]["paired"].update(test="mcnemar_exact", base_only=0, tuned_only=5, p=0.0625)
        out["avg_turns"]["paired"].update(lo=0.5, hi=1.5)
        out["f1"]["paired"] = None  # no per-question scores for this one: nothing to say
        out["setup"] = {"base": {"few_shot": True}, "tuned": {"few_shot": False}}
        out["paired_n"] = N
        return out

    monkeypatch.setattr(metrics, "compare", nested)
    compare = _section(_page(report.write_report([ladder], ladder / "nested.html")), "compare")
    assert "McNemar exact p = 0.0625 (0 right in base only, 5 in tuned only)" in compare
    assert "paired 95% CI [+25.0, +75.0] pt, n=8" in compare and "paired 95% CI [+0.50, +1.50], n=8" in compare
    assert f"paired over the {N} questions both answered" in compare
    rows = re.findall(r"<tr>(.*?)</tr>", compare, re.S)
    assert not any(r.startswith(("<td>setup", "<td>paired n")) for r in rows)  # not metrics: no rows of their own
    em = next(r for r in rows if r.startswith("<td>exact match"))
    assert '<span class="sig">' not in em  # p = 0.0625 is not below 0.05
    assert '<span class="sig">' in next(r for r in rows if r.startswith("<td>tool use"))  # interval excludes 0


def test_runs_given_separately_are_compared_and_written_beside_the_first(ladder, capsys):
    assert cli.main(["report", str(ladder / "eval-base"), str(ladder / "eval-sft")]) == 0
    out = ladder / "eval-base" / "report-compare.html"
    assert str(out) in capsys.readouterr().out
    page = _page(out)
    assert "eval-base → eval-sft" in _section(page, "compare")
    assert (ladder / "eval-base" / "report.html").exists()  # the run's own page is left as it was


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "is not a directory"),
    (lambda p: p, "nothing to report"),
])
def test_bad_report_input_is_one_clear_line(tmp_path, capsys, make, message):
    assert cli.main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_report_that_cannot_be_written_is_a_warning_not_a_lost_run(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("")  # an eval killed before its first episode
    assert report.try_write_report([tmp_path]) is None
    err = capsys.readouterr().err
    assert "warning: report.html not written" in err and "nothing to report" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


# -- in the browser -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    from hopsmith.browser import BrowserUnavailable, chromium

    try:
        with chromium() as b:
            yield b
    except BrowserUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need Chromium in CI: {exc}")
        pytest.skip(f"{exc} (skipped because CI is unset; in CI this fails)")


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems = []
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: problems.append(f"request: {r.url}")
            if not r.url.startswith(("file:", "data:")) else None)  # nothing is fetched: the page is self-contained
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("html[data-ready='1']", timeout=10_000)
    return page, problems


def _count(page) -> tuple[int, int]:
    shown, total = re.match(r"showing (\d+) of (\d+)", page.inner_text("#trace-count")).groups()
    return int(shown), int(total)


def test_page_renders_plots_without_errors(browser, ladder, tmp_path):
    path = report.write_report([ladder])
    page, problems = _open(browser, path)
    plots = page.locator("figure.plot svg")
    assert plots.count() >= 8
    for i in range(plots.count()):
        box = plots.nth(i).bounding_box()
        assert box and box["width"] > 150 and box["height"] > 80, f"plot {i} is not drawn: {box}"
    # matplotlib drew bars and lines into them (not empty axes)
    assert page.locator("#summary svg path, #summary svg rect").count() > 10
    assert page.locator("#training svg path").count() > 10
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=False)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert problems == []


def test_filters_and_search_change_what_is_shown(browser, ladder):
    page, problems = _open(browser, report.write_report([ladder]))
    base = read_jsonl(ladder / "eval-base" / "results.jsonl")
    assert _count(page) == (N, 2 * N)  # the first run is shown first
    assert page.locator(".ep-item").count() == N
    page.select_option("#f-outcome", "correct")
    correct = sum(1 for r in base if failure_kind(r) is None)
    assert _count(page)[0] == correct == page.locator(".ep-item").count()
    assert {page.locator(".ep-item").nth(i).get_attribute("data-outcome") for i in range(correct)} == {"correct"}
    page.select_option("#f-outcome", "no_final_answer")
    assert _count(page)[0] == sum(1 for r in base if failure_kind(r) == "no_final_answer") > 0
    page.select_option("#f-outcome", "wrong")
    assert _count(page)[0] == sum(1 for r in base if failure_kind(r) not in (None, "no_final_answer")) > 0
    page.select_option("#f-outcome", "all")
    page.select_option("#f-run", "all")
    assert _count(page)[0] == 2 * N
    hops = str(base[0]["hops"])
    page.select_option("#f-hops", hops)
    assert _count(page)[0] == 2 * sum(1 for r in base if str(r["hops"]) == hops)
    page.select_option("#f-hops", "all")
    page.fill("#f-search", base[3]["question"][:40])  # the question text: its episode in both runs
    page.wait_for_function("document.querySelector('#trace-count').textContent.startsWith('showing 2 ')")
    # and into the messages: the parse error only the base run's invalid calls got back
    page.fill("#f-search", "not valid JSON")
    invalid = sum(1 for r in base if any(not c["valid"] for c in r["tool_calls"]))
    page.wait_for_function(f"document.querySelector('#trace-count').textContent.startsWith('showing {invalid} ')")
    page.fill("#f-search", "zzqqxx no such text")
    page.wait_for_function("document.querySelector('#trace-count').textContent.startsWith('showing 0 ')")
    assert page.locator("#trace-list .note").inner_text().startswith("No episode matches")
    assert problems == []


def test_episode_opens_beside_the_other_run_with_thinking_folded(browser, ladder, tmp_path):
    page, problems = _open(browser, report.write_report([ladder]))
    base = read_jsonl(ladder / "eval-base" / "results.jsonl")  # the viewer keeps the file's order
    correct = next(i for i, r in enumerate(base) if failure_kind(r) is None)
    invalid = next(i for i, r in enumerate(base) if any(not c["valid"] for c in r["tool_calls"]))
    page.locator("#traces").scroll_into_view_if_needed()
    page.locator(f'.ep-item[data-index="{correct}"]').click()
    columns = page.locator("#trace-detail .episode")
    assert columns.count() == 2
    assert [columns.nth(i).get_attribute("data-run") for i in range(2)] == ["eval-base", "eval-sft"]
    tuned = columns.nth(1)
    thinking = tuned.locator("details.think")
    assert thinking.count() >= 2 and all(not thinking.nth(i).evaluate("d => d.open") for i in range(thinking.count()))
    assert not thinking.first.locator("pre").is_visible()
    thinking.first.locator("summary").click()
    assert thinking.first.locator("pre").is_visible()
    # retrieved paragraphs are marked: the gold chain found every supporting paragraph
    assert tuned.locator(".para.supporting").count() >= 2 and tuned.locator(".para.distractor").count() >= 1
    assert tuned.locator(".call").first.inner_text().startswith("call search(")
    # the base run's invalid call is shown as such
    page.locator(f'.ep-item[data-index="{invalid}"]').click()
    assert page.locator("#trace-detail .episode").first.locator(".msg.tool.invalid").count() == 1
    page.screenshot(path=str(tmp_path / "traces.png"))
    assert problems == []


def test_hostile_episode_text_stays_text(browser, ladder, tmp_path):
    """A paragraph or a reply holding markup (issue 17's hostile text) is shown, never run."""
    run = tmp_path / "hostile"
    run.mkdir()
    rows = read_jsonl(ladder / "eval-base" / "results.jsonl")
    evil = '</script><script>alert("owned")</script><img src=x onerror=alert(1)><!--'
    rows = [copy.deepcopy(r) for r in rows]
    rows[0]["messages"][-1]["content"] = evil
    rows[0]["question"] = evil
    write_jsonl(run / "results.jsonl", rows)
    page, problems = _open(browser, report.write_report([run]))
    assert page.locator(".ep-q").first.inner_text() == evil
    page.locator(".ep-item").first.click()
    assert evil in page.locator("#trace-detail").inner_text()
    assert page.locator("#trace-detail img").count() == 0
    assert problems == []
