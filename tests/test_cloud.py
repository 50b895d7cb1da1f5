"""The Modal app without a Modal account: declared resources, the wrappers run locally on a temp volume
tree end to end, sharded eval merges to the single-run metrics, retries lose and duplicate nothing, the
budget guard and the cost ledger."""
import json

import pytest
from conftest import ScriptedBackend, call

from hopsmith.config import EvalConfig
from hopsmith.cost import (GPU_USD_PER_HOUR, Budget, BudgetExceeded, CostError, Ledger, Usage, estimate_recipe,
                           estimate_stage, hourly_rate)
from hopsmith.data import hop_question, load_questions
from hopsmith.fanout import ShardsFailed, local_map, run_shards
from hopsmith.io import read_jsonl
from hopsmith.volumes import Layout, LayoutError, check_run_name
from stages import cloud, evaluate

import app  # the repository root is on pytest's pythonpath (pyproject.toml)


def test_app_declares_l4_for_sft_b200_for_eval_and_the_volumes():
    assert app.FUNCTIONS["run_sft"]["gpu"] == "L4" and app.FUNCTIONS["evaluate_shard"]["gpu"] == "B200"
    for name, row in app.FUNCTIONS.items():
        fn = getattr(app, name)
        spec = fn._spec_  # what Modal will deploy, read back from the decorated function
        assert spec.gpus == row["gpu"], name
        assert set(spec.volumes) == {f"/vol/{v}" for v in row["volumes"]}, name
        assert row["timeout"] >= 60 and row["retries"] >= 0
        assert app.options(name)["timeout"] == row["timeout"]
        if row["retries"]:
            assert app.options(name)["retries"].max_retries == row["retries"]
    assert app.FUNCTIONS["train_simpo"]["gpu"] == "L4" and app.FUNCTIONS["run_grpo"]["gpu"]
    assert app.FUNCTIONS["run_sft"]["timeout"] >= 3600  # seed 000 trains for about an hour on an L4
    assert {"traces", "adapters", "runs", "models"} <= {v for r in app.FUNCTIONS.values() for v in r["volumes"]}


def test_images_pin_the_training_and_eval_stacks():
    import images

    pinned = images.TRAIN + images.EVAL + images.SEARCH
    for package in ("torch", "transformers", "peft", "trl", "bitsandbytes", "vllm", "bm25s"):
        assert any(p.startswith(package + "==") for p in pinned), package
    assert app.IMAGES.keys() == {"cpu", "sft", "eval"}


def _tiny_ladder_cfg(tiny_dir, **kw):
    return cloud.CloudConfig(run="t1", model=str(tiny_dir), train_limit=3, trace_shards=2, max_traces=4, epochs=1.0,
                             max_length=8192, eval_limit=4, eval_shards=2, max_turns=1, max_new_tokens=6, top_k=3,
                             max_chars=200, engine="hf", **kw)


def test_ladder_runs_through_the_modal_wrappers_locally(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSMITH_VOLUMES", str(tmp_path / "vol"))
    layout = Layout(tmp_path / "vol")
    cfg = _tiny_ladder_cfg(tiny_dir)
    cost = tmp_path / "runs" / "t1" / "cost.json"
    out = cloud.run_ladder(cfg, app.ModalInvoker(local=True, engine="hf"), layout=layout, cost_path=cost, log=lambda m: None)

    # every stage read the previous one's output on the volume tree
    assert sorted(p.name for p in (layout.traces("t1") / "traces").glob("shard-*.jsonl")) == ["shard-0.jsonl", "shard-1.jsonl"]
    assert (layout.traces("t1") / "kept.jsonl").exists() and (layout.adapter("t1") / "adapter_config.json").exists()
    for name in ("eval-base", "eval-sft"):
        root = layout.eval("t1", name)
        assert sorted(p.name for p in (root / "results").glob("shard-*.jsonl")) == ["shard-0.jsonl", "shard-1.jsonl"]
        rows = read_jsonl(root / "results.jsonl")
        assert len(rows) == 4 and len({r["question_id"] for r in rows}) == 4
    assert out["base"]["leakage"] is None and out["sft"]["leakage"]["count"] == 0  # train and eval splits disjoint

    # the ledger: one entry per container, priced at the table's rates
    saved = json.loads(cost.read_text())
    stages = saved["stages"]
    assert stages["traces"]["containers"] == 2 and stages["traces"]["gpu"] is None
    assert stages["judge"]["containers"] == 3  # two shards, then one pass that gathers kept.jsonl
    assert stages["evaluate"]["containers"] == 4 and stages["evaluate"]["gpu"] == "B200"
    assert stages["sft"]["gpu"] == "L4" and stages["sft"]["tokens"] > 0
    expected = sum(e["seconds"] / 3600 * hourly_rate(e["gpu"], e["cpu"], e["memory_gib"]) for e in saved["entries"])
    assert saved["total_usd"] == pytest.approx(expected) and saved["total_usd"] > 0

    # then the own-failure ladder through the same wrappers: mine on train questions, pairs, SimPO
    inv = app.ModalInvoker(local=True, engine="hf")
    mine_cfg = {**cfg.eval_cfg(str(layout.adapter("t1", "sft"))), "split": "train", "limit": 3,
                "allow_leakage": True, "extraction_bench": False}
    mine_ledger = Ledger.open(tmp_path / "mine-cost.json")
    app._sharded_eval(inv, "t1", "mine", mine_cfg, 3, 1, mine_ledger, Budget(None, mine_ledger))  # as `simpo` does
    assert [e.stage for e in mine_ledger.entries] == ["evaluate", "merge"]  # the shard, then the merge
    pairs = inv.call("mine_pairs", "t1", "mine", {"max_pairs": 2})["result"]
    assert pairs["pairs"] > 0 and (layout.traces("t1") / "pairs" / "pairs.jsonl").exists()
    trained = inv.call("train_simpo", "t1", {"model": str(tiny_dir), "max_steps": 1, "max_length": 8192,
                                             "probe_questions": 1, "probe_turns": 1, "min_tool_use": 0.0})
    assert trained["usage"]["gpu"] == "L4" and (layout.adapter("t1", "simpo") / "adapter_config.json").exists()


def test_sharded_eval_merges_to_the_single_run_metrics(musique_small, tmp_path):
    qs = load_questions("musique", split="eval", limit=6)
    script = {q.question: [call("search", query=hop_question(q, 0)), f"FINAL({q.answer if k % 2 else 'nope'})"]
              for k, q in enumerate(qs)}
    cfg = EvalConfig(data="musique", split="eval", limit=6, extractor="none", bootstrap=200)
    single = evaluate.run(cfg, tmp_path / "single", backend=ScriptedBackend(script), progress=False)
    for i in range(3):
        evaluate.run_shard(cfg, tmp_path / "sharded", i, 3, backend=ScriptedBackend(script))
    merged = evaluate.merge(cfg, tmp_path / "sharded", 3)
    for key in ("n", "acc", "em", "f1", "failures", "failure_rates", "by_hops", "tool_use_rate", "avg_tool_calls",
                "supporting_recall", "ceiling", "oracle_retrieval"):
        assert merged[key] == single[key], key
    assert merged["acc"]["mean"] == pytest.approx(0.5)
    assert [r["question_id"] for r in read_jsonl(tmp_path / "sharded" / "results.jsonl")] == [q.id for q in qs]


def test_merge_names_a_missing_shard(tmp_path):
    cfg = EvalConfig(data="musique", split="eval", limit=4, extractor="none")
    evaluate.run_shard(cfg, tmp_path, 0, 2, backend=ScriptedBackend({}))
    with pytest.raises(evaluate.RunDirError, match=r"shards \[1\] of 2"):
        evaluate.merge(cfg, tmp_path, 2)


class FlakyOnce(ScriptedBackend):
    """Answers two episodes' worth of turns, then dies once (a preempted container), then works."""

    def __init__(self, scripts, state):
        super().__init__(scripts)
        self.state = state

    def generate(self, conversations, **kw):
        self.state["calls"] += 1
        if self.state["calls"] == 3 and not self.state["failed"]:
            self.state["failed"] = True
            raise RuntimeError("container preempted")
        return super().generate(conversations, **kw)


def test_a_shard_that_fails_once_is_retried_without_lost_or_duplicated_rows(tmp_path):
    qs = load_questions("musique", split="eval", limit=6)
    script = {q.question: [f"FINAL({q.answer})"] for q in qs}
    cfg = EvalConfig(data="musique", split="eval", limit=6, extractor="none", bootstrap=100, batch_size=1)
    state = {"calls": 0, "failed": False}

    def shard(i, n):
        out = evaluate.run_shard(cfg, tmp_path, i, n, backend=FlakyOnce(script, state))
        return {"result": out, "usage": Usage("evaluate", 1.0, gpu="B200", shard=i).to_dict()}

    ledger = Ledger()
    results = run_shards("evaluate", shard, [(0, 2), (1, 2)], mapper=local_map, retries=2, ledger=ledger)
    assert state["failed"]  # the fault happened, in shard 0 after two of its episodes were written
    assert [r["shard"] for r in results] == [0, 1]
    merged = evaluate.merge(cfg, tmp_path, 2)
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert sorted(r["question_id"] for r in rows) == sorted(q.id for q in qs)
    assert merged["n"] == 6 and merged["acc"]["mean"] == 1.0 and merged["duplicates_dropped"] == 0
    assert len(ledger.entries) == 2  # the failed attempt returned no usage; the two finished shards did


def test_shards_failing_every_time_are_named():
    def always(i):
        raise ValueError(f"bad shard {i}")

    with pytest.raises(ShardsFailed, match=r"shard 1: ValueError: bad shard 1"):
        run_shards("judge", always, [(0,), (1,)], retries=1)


def test_budget_guard_refuses_an_over_budget_stage(tiny_dir, tmp_path):
    ledger = Ledger.open(tmp_path / "cost.json")
    budget = Budget(1.0, ledger)
    big = estimate_stage("sft", gpu="L4", traces=1100, epochs=3)
    assert big["usd"] > 1.0
    with pytest.raises(BudgetExceeded, match="would pass the budget of \\$1.00"):
        budget.check("sft", big["usd"])
    budget.check("judge", estimate_stage("judge", gpu=None, traces=10)["usd"])  # a cheap one passes

    # the ladder refuses before launching anything: no trace was written, nothing was spent
    cfg = _tiny_ladder_cfg(tiny_dir, budget_usd=0.0001)
    inv = cloud.LocalInvoker(Layout(tmp_path / "vol"), app.FUNCTIONS)
    with pytest.raises(BudgetExceeded, match="stage 'traces'"):
        cloud.run_ladder(cfg, inv, layout=inv.layout, cost_path=tmp_path / "cost.json", log=lambda m: None)
    assert inv.calls == [] and not (tmp_path / "vol").exists()


def test_fanout_stops_launching_waves_once_the_ledger_is_over_budget():
    ledger = Ledger()
    budget = Budget(0.01, ledger)
    launched = []

    def shard(i):
        launched.append(i)
        return {"result": i, "usage": Usage("evaluate", 3600.0, gpu="B200").to_dict()}  # an hour: $6.25+

    with pytest.raises(BudgetExceeded, match=r"shards \[2, 3\] were not launched"):
        run_shards("evaluate", shard, [(i,) for i in range(4)], wave=2, ledger=ledger, budget=budget)
    assert launched == [0, 1] and ledger.total_usd > 0.01


def test_ledger_prices_seconds_at_the_rate_table(tmp_path):
    path = tmp_path / "cost.json"
    ledger = Ledger.open(path)
    ledger.record(Usage("sft", 1800.0, gpu="L4", cpu=4, memory_gib=16, tokens=1000),
                  Usage("evaluate", 600.0, gpu="B200", cpu=8, memory_gib=32, shard=0),
                  Usage("evaluate", 300.0, gpu="B200", cpu=8, memory_gib=32, shard=1),
                  Usage("traces", 100.0, cpu=2, memory_gib=4))
    sft = 0.5 * (0.80 + 4 * 0.047 + 16 * 0.008)
    ev = 900 / 3600 * (6.25 + 8 * 0.047 + 32 * 0.008)
    tr = 100 / 3600 * (2 * 0.047 + 4 * 0.008)
    ledger.correct_answers = 4
    ledger.save()
    saved = json.loads(path.read_text())
    assert saved["stages"]["sft"]["usd"] == pytest.approx(sft)
    assert saved["stages"]["evaluate"]["usd"] == pytest.approx(ev) and saved["stages"]["evaluate"]["containers"] == 2
    assert saved["total_usd"] == pytest.approx(sft + ev + tr)
    assert saved["usd_per_correct_answer"] == pytest.approx((sft + ev + tr) / 4)
    assert saved["rates"]["gpu_usd_per_hour"]["B200"] == 6.25 and saved["rates"]["date"]
    # reopening keeps the entries: a later stage adds to the same ledger
    again = Ledger.open(path)
    assert len(again.entries) == 4 and again.total_usd == pytest.approx(sft + ev + tr)


def test_rates_and_errors():
    assert GPU_USD_PER_HOUR["L4"] == 0.80 and hourly_rate("H100:2", 0, 0) == pytest.approx(7.90)
    assert hourly_rate("a100-80gb", 0, 0) == 2.50
    with pytest.raises(CostError, match="no price for GPU 'V100'"):
        hourly_rate("V100", 1, 1)

def test_a_file_that_is_not_a_ledger_is_refused(tmp_path):
    p = tmp_path / "cost.json"
    p.write_text('{"entries": [{"nope": 1}]}')
    with pytest.raises(CostError, match="not a cost ledger"):
        Ledger.open(p)


def test_seed000_estimate_sums_its_stages_and_uses_measured_throughputs(tmp_path):
    est = estimate_recipe()
    assert est["total_usd"] == pytest.approx(sum(s["usd"] for s in est["stages"]))
    sft = next(s for s in est["stages"] if s["stage"] == "sft")
    assert 45 * 60 < sft["seconds"] < 75 * 60  # seed 000: about an hour on an L4
    # a measured run twice as fast halves the SFT work
    ledger = Ledger.open(tmp_path / "cost.json")
    ledger.record(Usage("sft", 100.0, gpu="L4", tokens=410000))
    from hopsmith.cost import measured_priors

    faster = estimate_recipe(priors=measured_priors(tmp_path / "cost.json"))
    sft2 = next(s for s in faster["stages"] if s["stage"] == "sft")
    assert sft2["seconds"] < sft["seconds"] * 0.6


def test_cost_cli(tmp_path, capsys):
    from hopsmith import cli

    assert cli.main(["cost", "--estimate"]) == 0
    assert "total" in capsys.readouterr().out
    assert cli.main(["cost", str(tmp_path)]) == 2
    assert "no cost ledger" in capsys.readouterr().err
    Ledger.open(tmp_path / "cost.json").record(Usage("sft", 3600.0, gpu="L4", cpu=0, memory_gib=0))
    assert cli.main(["cost", str(tmp_path)]) == 0
    assert "0.800" in capsys.readouterr().out


def test_run_names_cannot_escape_the_volume():
    for bad in ("../x", "a/b", "", "a b", ".."):
        with pytest.raises(LayoutError):
            check_run_name(bad)
    assert Layout(__import__("pathlib").Path("/vol")).adapter("r1", "sft").as_posix() == "/vol/adapters/r1/sft"


def test_waves_are_sized_by_the_money_left():
    """8 shards each estimated (and costing) about $6.6 under a $10 cap: one launches, not eight; the
    estimate of a wave never passes the cap, and the refusal names the shards left."""
    ledger = Ledger()
    budget = Budget(10.0, ledger)
    launched = []

    def shard(i):
        launched.append(i)
        return {"result": i, "usage": Usage("evaluate", 3600.0, gpu="B200").to_dict()}

    one = Usage("evaluate", 3600.0, gpu="B200").usd
    with pytest.raises(BudgetExceeded, match=r"shards \[1, 2, 3, 4, 5, 6, 7\] were not launched"):
        run_shards("evaluate", shard, [(i,) for i in range(8)], ledger=ledger, budget=budget, shard_usd=one)
    assert launched == [0] and ledger.total_usd <= 10.0
    # with money for three, the first wave holds three
    ledger, launched[:] = Ledger(), []
    run_shards("evaluate", shard, [(i,) for i in range(3)], ledger=ledger, budget=Budget(3 * one + 0.01, ledger),
               shard_usd=one)
    assert launched == [0, 1, 2]
