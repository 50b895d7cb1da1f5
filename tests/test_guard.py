"""The verdict line and the collapse guard, on fabricated result rows with known paired differences."""
import pytest

from hopsmith.guard import collapse_check, invalid_call_change, promote, verdict
from hopsmith.metrics import aggregate

GOOD = {"name": "search", "arguments": {"query": "lloyd dane born"}, "valid": True}
BAD = {"name": None, "arguments": None, "valid": False}


def _row(i: int, *, right: bool, calls: list[dict], finished: bool = True) -> dict:
    return {"question_id": f"q{i}", "answers": ["Stanley"], "prediction": ("Stanley" if right else "Paris") if finished else None,
            "finished": finished, "tool_calls": calls, "turns": len(calls) + 1, "hops": 2,
            "supporting_ids": ["a", "b"], "retrieved_ids": ["a"] if any(c["valid"] for c in calls) else []}


def _run(rows):
    return aggregate(rows, n_boot=500)


N = 30


def test_invalid_call_change_is_a_paired_ratio():
    # base: 1 valid + 1 invalid call everywhere (50%); tuned: 2 valid calls (0%)
    base = _run([_row(i, right=False, calls=[GOOD, BAD]) for i in range(N)])
    tuned = _run([_row(i, right=False, calls=[GOOD, GOOD]) for i in range(N)])
    c = invalid_call_change(base, tuned)
    assert c["base"] == pytest.approx(0.5) and c["tuned"] == 0.0 and c["delta"] == pytest.approx(-0.5)
    assert c["lo"] == c["hi"] == pytest.approx(-0.5)  # no variation across questions: the interval is the point
    assert base["invalid_call_rate"] == pytest.approx(c["base"])  # the same rate aggregate reports
    # a side without any call has rate 0, as aggregate says
    silent = _run([_row(i, right=False, calls=[]) for i in range(N)])
    assert invalid_call_change(base, silent)["tuned"] == 0.0


def test_verdict_better_worse_indistinguishable_mixed():
    base = _run([_row(i, right=False, calls=[GOOD, BAD]) for i in range(N)])
    better = _run([_row(i, right=i < 12, calls=[GOOD]) for i in range(N)])
    v = verdict(base, better, ("base", "sft"))
    assert v["verdict"] == "better" and "F1" in v["better"] and "invalid calls" in v["better"] and not v["worse"]
    assert v["line"].startswith("verdict: sft is BETTER than base (30 paired questions)")
    assert verdict(better, base)["verdict"] == "worse"
    same = _run([_row(i, right=False, calls=[GOOD, BAD]) for i in range(N)])
    v = verdict(base, same)
    assert v["verdict"] == "indistinguishable" and "no paired 95% test excludes no change" in v["line"]
    # one right answer more is within chance: still indistinguishable
    assert verdict(base, _run([_row(i, right=i == 0, calls=[GOOD, BAD]) for i in range(N)]))["verdict"] == "indistinguishable"
    # answers better, invalid calls worse
    noisy = _run([_row(i, right=i < 12, calls=[GOOD, BAD, BAD, BAD]) for i in range(N)])
    v = verdict(base, noisy)
    assert v["verdict"] == "mixed" and "F1" in v["better"] and v["worse"] == ["invalid calls"]


def test_verdict_without_per_question_scores_is_untested():
    base = _run([_row(i, right=False, calls=[GOOD]) for i in range(N)])
    old = {k: v for k, v in base.items() if k != "per_question"}
    v = verdict(old, base)
    assert v["verdict"] == "untested" and "no paired test" in v["line"]


def test_guard_keeps_the_previous_adapter_when_tool_use_collapses():
    sft = _run([_row(i, right=i < 3, calls=[GOOD, GOOD]) for i in range(N)])
    # the preference stage answered more often right by luck but stopped searching in 2 of 3 episodes
    collapsed = _run([_row(i, right=i < 4, calls=[GOOD] if i % 3 == 0 else []) for i in range(N)])
    decision = promote("sft", sft, "simpo", collapsed)
    assert decision["flagged"] and decision["kept"] == "sft"
    assert "tool use fell 100% -> 33%" in decision["line"] and "the ladder keeps sft" in decision["line"]


def test_guard_flags_an_invalid_call_rise_and_promotes_a_healthy_stage():
    sft = _run([_row(i, right=False, calls=[GOOD]) for i in range(N)])
    sloppy = _run([_row(i, right=False, calls=[GOOD, BAD] if i % 2 else [GOOD]) for i in range(N)])
    decision = promote("sft", sft, "rft", sloppy)
    assert decision["kept"] == "sft" and "invalid calls rose 0.0% -> 33.3%" in decision["reasons"][0]
    healthy = _run([_row(i, right=i < 2, calls=[GOOD, GOOD]) for i in range(N)])
    decision = promote("sft", sft, "rft", healthy)
    assert not decision["flagged"] and decision["kept"] == "rft" and "promoted" in decision["line"]
    # a fall within chance (one episode of thirty) is not flagged
    one_less = _run([_row(i, right=False, calls=[GOOD] if i else []) for i in range(N)])
    assert not collapse_check(sft, one_less)["flagged"]


def test_the_ladder_does_not_promote_a_collapsed_adapter(tmp_path):
    import json

    from stages.pipeline import guarded_stage

    base = _run([_row(i, right=False, calls=[GOOD, BAD]) for i in range(N)])
    sft = _run([_row(i, right=i < 3, calls=[GOOD, GOOD]) for i in range(N)])
    kept = guarded_stage(tmp_path, {"name": "base", "adapter": None, "metrics": base}, "sft", "runs/x/sft", sft)
    assert kept["name"] == "sft" and kept["adapter"] == "runs/x/sft"
    collapsed = _run([_row(i, right=i < 3, calls=[] if i % 2 else [GOOD]) for i in range(N)])
    kept = guarded_stage(tmp_path, kept, "simpo", "runs/x/simpo", collapsed)
    assert kept["name"] == "sft" and kept["adapter"] == "runs/x/sft" and kept["metrics"] is sft
    saved = json.loads((tmp_path / "promoted.json").read_text())
    assert saved["name"] == "sft" and saved["decision"]["flagged"] and "the ladder keeps sft" in saved["decision"]["line"]


def test_guard_keeps_the_input_when_a_stage_is_worse_by_the_paired_tests():
    """Tool use and valid calls intact, but ten answers lost and none gained: not promoted."""
    sft = _run([_row(i, right=i < 10, calls=[GOOD]) for i in range(N)])
    lost = _run([_row(i, right=False, calls=[GOOD]) for i in range(N)])
    decision = promote("sft", sft, "rft", lost)
    assert not decision["flagged"] and decision["kept"] == "sft" and "EM" in decision["worse"]
    assert "not promoted" in decision["line"] and "the ladder keeps sft" in decision["line"]
    # one answer lost is within chance: not worse by the tests, but not better either, so the F1 rule decides
    one = _run([_row(i, right=i < 9, calls=[GOOD]) for i in range(N)])
    decision = promote("sft", sft, "rft", one)
    assert decision["verdict"]["verdict"] == "indistinguishable" and not decision["worse"]
    assert decision["kept"] == "sft" and "its F1 is lower (33.3 -> 30.0, change -3.3pt" in decision["line"]


def test_when_the_tests_cannot_tell_the_ladder_keeps_the_higher_f1_and_the_input_on_a_tie():
    sft = _run([_row(i, right=i < 9, calls=[GOOD]) for i in range(N)])
    one_more = _run([_row(i, right=i < 10, calls=[GOOD]) for i in range(N)])
    decision = promote("sft", sft, "rft", one_more)
    assert decision["verdict"]["verdict"] == "indistinguishable"
    assert decision["kept"] == "rft" and "its F1 is higher" in decision["line"]
    # the same answers on other questions: F1 ties, so the stage has not earned its place
    shifted = _run([_row(i, right=1 <= i < 10, calls=[GOOD]) for i in range(N)])
    decision = promote("sft", sft, "rft", shifted)
    assert decision["kept"] == "sft" and "its F1 is the same (30.0 -> 30.0" in decision["line"]
    # significantly better on behaviour with F1 a little lower: the verdict "better" promotes it
    sloppy = _run([_row(i, right=i < 10, calls=[GOOD, BAD]) for i in range(N)])
    clean = _run([_row(i, right=i < 9, calls=[GOOD]) for i in range(N)])
    decision = promote("sft", sloppy, "rft", clean)
    assert decision["verdict"]["verdict"] == "better" and decision["kept"] == "rft"
    assert "the paired tests find it better" in decision["line"]
    # runs without per-question scores: the two means decide
    old = {k: v for k, v in sft.items() if k != "per_question"}
    assert promote("sft", old, "rft", {k: v for k, v in one_more.items() if k != "per_question"})["kept"] == "rft"
    decision = promote("sft", {k: v for k, v in one_more.items() if k != "per_question"}, "rft", old)
    assert decision["kept"] == "sft" and "no paired test possible" in decision["line"]


def test_sft_need_not_earn_its_place_over_the_base_model_but_the_stages_after_it_must(tmp_path, capsys):
    import json

    from stages.pipeline import PipelineConfig, _simpo, guarded_stage

    base = _run([_row(i, right=i < 10, calls=[GOOD]) for i in range(N)])
    sft = _run([_row(i, right=i < 9, calls=[GOOD]) for i in range(N)])  # one answer fewer: within chance
    kept = guarded_stage(tmp_path, {"name": "base", "adapter": None, "metrics": base}, "sft", "runs/x/sft", sft)
    assert kept["name"] == "sft" and "not worse by the paired tests" in kept["promotion"]["line"]
    rft = _run([_row(i, right=i < 8, calls=[GOOD]) for i in range(N)])
    kept = guarded_stage(tmp_path, kept, "rft", "runs/x/rft/adapter", rft)
    assert kept["name"] == "sft" and kept["adapter"] == "runs/x/sft" and kept["metrics"] is sft
    saved = json.loads((tmp_path / "promoted.json").read_text())
    assert saved["name"] == "sft" and "its F1 is lower (30.0 -> 26.7" in saved["decision"]["line"]
    # a ladder that kept the base model has no adapter for preference training to continue: skipped, said why
    record = _simpo(PipelineConfig(), tmp_path, {"name": "base", "adapter": None, "metrics": base}, print)
    assert record["skipped"] and "kept the base model" in capsys.readouterr().out
    assert not (tmp_path / "pairs").exists() and not (tmp_path / "mine").exists()


def test_with_a_dev_split_the_guard_decides_on_it_and_not_on_the_eval_split(tmp_path):
    """The eval split would promote RFT (ten more answers right), the dev split finds it worse: the ladder
    keeps SFT, the line says where it decided, and the comparison still reports the eval split's verdict."""
    from stages.pipeline import guarded_comparison

    sft_eval = _run([_row(i, right=i < 3, calls=[GOOD]) for i in range(N)])
    rft_eval = _run([_row(i, right=i < 13, calls=[GOOD]) for i in range(N)])
    sft_dev = _run([_row(i, right=i < 12, calls=[GOOD]) for i in range(N)])
    rft_dev = _run([_row(i, right=i < 2, calls=[GOOD]) for i in range(N)])
    assert promote("sft", sft_eval, "rft", rft_eval)["kept"] == "rft"
    kept = {"name": "sft", "adapter": "runs/x/sft", "metrics": sft_eval, "dev": sft_dev}
    now = guarded_comparison(tmp_path, kept, "rft", "runs/x/rft", rft_eval, tmp_path / "comparison-rft.txt",
                             lambda *_: None, dev=rft_dev)
    assert now["name"] == "sft" and now["metrics"] is sft_eval and now["dev"] is sft_dev
    assert now["promotion"]["line"].startswith(f"collapse guard, on the dev split ({N} held-out train questions): "
                                               "rft not promoted")
    text = (tmp_path / "comparison-rft.txt").read_text()
    assert "dev split: " in text and "eval split (reported, not used to choose): " in text
    assert "better" in text.split("eval split (reported, not used to choose): ")[1]
    # promoted on dev, the new adapter carries its dev run forward for the next stage to be judged against
    now = guarded_comparison(tmp_path, kept, "rft", "runs/x/rft", rft_eval, tmp_path / "c.txt", lambda *_: None,
                             dev=_run([_row(i, right=i < 22, calls=[GOOD]) for i in range(N)]))
    assert now["name"] == "rft" and now["dev"]["n"] == N and now["metrics"] is rft_eval
