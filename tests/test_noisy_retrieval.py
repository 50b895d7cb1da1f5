"""Noisy retrieval (seed 001's robustness test): a seeded share of searches fails, deterministically, a
failed search may be retried, the loop records the failures, and the benchmark runs both sides."""
import importlib.util
from pathlib import Path

import pytest
from conftest import ScriptedBackend, call

from episodes import run_multihop

from hopsmith.config import AgentConfig
from hopsmith.config import ConfigError, EvalConfig, build
from hopsmith.data import hop_question
from hopsmith.envs.multihop import SEARCH_ERROR, MultihopEnv
from hopsmith.tools.search import NO_RESULTS, BM25Index


def _env(musique_small, rate, key="q1", seed=0):
    questions, pools = musique_small
    return MultihopEnv(BM25Index(pools[questions[0].id]), search_failure_rate=rate, search_failure_seed=seed,
                       noise_key=key)


def _queries(n):
    return [f"query number {i} about a river" for i in range(n)]


def test_rate_zero_and_one(musique_small):
    clean, broken = _env(musique_small, 0.0), _env(musique_small, 1.0)
    for q in _queries(20):
        assert clean.search(q).startswith("[p")  # paragraphs, every time
        assert broken.search(q) in (NO_RESULTS, SEARCH_ERROR)
    assert clean.search_failures == 0 and broken.search_failures == 20 and not broken.retrieved


def test_share_is_near_the_rate_and_deterministic(musique_small):
    queries = _queries(400)
    a, b = _env(musique_small, 0.1), _env(musique_small, 0.1)
    out_a, out_b = [a.search(q) for q in queries], [b.search(q) for q in queries]
    assert out_a == out_b  # same episode key, queries and seed: the same searches fail, the same way
    assert 20 <= a.search_failures <= 60  # 10% of 400 is 40; binomial sd is 6
    kinds = {o for o in out_a if o in (NO_RESULTS, SEARCH_ERROR)}
    assert kinds == {NO_RESULTS, SEARCH_ERROR}  # both failure kinds occur
    other_key = _env(musique_small, 0.1, key="q2")
    other_seed = _env(musique_small, 0.1, seed=1)
    failed = lambda env: [i for i, q in enumerate(queries) if env.search(q) in (NO_RESULTS, SEARCH_ERROR)]
    mine = [i for i, o in enumerate(out_a) if o in (NO_RESULTS, SEARCH_ERROR)]
    assert failed(other_key) != mine and failed(other_seed) != mine


def test_failed_search_can_be_retried(musique_small):
    env = _env(musique_small, 0.5)
    q = next(q for q in _queries(50) if _env(musique_small, 0.5).search(q) in (NO_RESULTS, SEARCH_ERROR))
    first = env.search(q)
    assert first in (NO_RESULTS, SEARCH_ERROR)
    # Not "You already searched": each retry is a new draw; once one succeeds, it is remembered.
    tries = [env.search(q) for _ in range(12)]
    ok = next(i for i, t in enumerate(tries) if t.startswith("[p"))
    assert all(t in (NO_RESULTS, SEARCH_ERROR) for t in tries[:ok])
    assert tries[ok + 1].startswith("You already searched")


def test_loop_records_failures_and_config_plumbs_the_rate(musique_small):
    questions, pools = musique_small
    scripts = {q.question: [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))]
               + [f"FINAL({q.answer})"] for q in questions}
    noisy = run_multihop(questions, pools, ScriptedBackend(scripts), AgentConfig(search_failure_rate=1.0))
    clean = run_multihop(questions, pools, ScriptedBackend(scripts), AgentConfig())
    for n, c in zip(noisy, clean):
        searches = sum(1 for x in n["tool_calls"] if x["name"] == "search")
        assert n["search_failures"] == searches > 0 and c["search_failures"] == 0
        assert not n["retrieved_ids"] and c["retrieved_ids"]
    cfg = build(EvalConfig, search_failure_rate="0.1", search_failure_seed="3")
    assert cfg.agent.search_failure_rate == 0.1 and cfg.agent.search_failure_seed == 3
    with pytest.raises(ConfigError, match="between 0 and 1"):
        build(EvalConfig, search_failure_rate="1.5")


def test_cli_flag_bad_rate_is_one_line(capsys):
    from hopsmith.cli import main

    assert main(["eval", "--search-failure-rate", "2", "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search_failure_rate" in err[0]


def test_benchmark_compares_clean_and_noisy(tmp_path, musique_small):
    spec = importlib.util.spec_from_file_location("noisy_retrieval", Path(__file__).parent.parent / "benchmarks" / "noisy_retrieval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from hopsmith.data import load_questions

    questions = load_questions("musique", limit=4, split="eval")
    # The gold answer only when the search worked: a scripted agent that answers from what it read.
    def reply(q):
        def after(conv):
            return f"FINAL({q.answer})" if conv[-1]["content"] not in (NO_RESULTS, SEARCH_ERROR) else "FINAL(unknown)"
        return [call("search", query=hop_question(q, 0)), after]
    backend = ScriptedBackend({q.question: reply(q) for q in questions})
    cfg = build(EvalConfig, data="musique", limit=4, extraction_bench=False, extractor="none", pool_size=60)
    result = bench.compare(cfg, tmp_path, 1.0, backend=backend, extractor=None, progress=False)
    assert result["clean"]["acc"]["mean"] == 1.0 and result["noisy"]["acc"]["mean"] == 0.0
    assert result["search_failures"] == result["searches"] == 4
    assert result["noisy"]["search_failures"] == 4 and result["noisy"]["search_failure_rate"] == 1.0
    assert result["clean"]["search_failures"] == 0
    assert "accuracy clean 100.0% -> noisy 0.0%" in bench.describe(result)
    assert (tmp_path / "clean" / "config.json").exists() and (tmp_path / "noisy-1" / "results.jsonl").exists()
