"""Own-failure preference pairs, SimPO and DPO on a tiny model, the collapse guard."""
import json

import pytest
from conftest import call

from hopsmith.collapse import CollapseGuard, behaviour
from hopsmith.data import load_questions
from hopsmith.io import read_jsonl, write_jsonl
from stages import preference, traces


def _row(q, replies, *, tools, answer, finished=True):
    """A result row the way the eval stage writes it, from assistant replies and tool calls."""
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"Question: {q.question}\nCall ..."}]
    for r in replies:
        msgs.append({"role": "assistant", "content": r})
        if "<tool_call>" in r:
            msgs.append({"role": "tool", "name": "search", "content": "[p123456] some result"})
    return {"question_id": q.id, "dataset": q.dataset, "messages": msgs, "tool_calls": tools, "prediction": answer,
            "finished": finished, "turns": len(replies),
            "metrics": {"acc": float(answer is not None and answer.lower() == q.answer.lower()), "em": 0.0, "f1": 0.0}}


@pytest.fixture(scope="module")
def mined_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pref")
    traces.run(traces.TracesConfig(data="musique", split="train", limit=10, top_k=3, max_chars=200,
                                   thinking_fraction=0.0), root)
    kept = read_jsonl(root / "traces" / "shard-0.jsonl")
    qs = {q.id: q for q in load_questions("musique", split="train", limit=10)}
    ids = list(dict.fromkeys(t["question_id"] for t in kept))
    q0, q1, q2, q3, q4 = (qs[i] for i in ids[:5])
    ok = {"name": "search", "arguments": {"query": "x"}, "valid": True}
    bad = {"name": None, "arguments": {}, "valid": False, "error": "not JSON"}
    results = [
        _row(q0, [call("search", query="x"), "FINAL(wrong)"], tools=[ok], answer="wrong"),
        _row(q1, ["FINAL(guess)"], tools=[], answer="guess"),
        _row(q2, ["<tool_call>{bad</tool_call>", call("search", query="x"), "FINAL(no)"], tools=[bad, ok], answer="no"),
        _row(q3, [call("search", query="x")] * 3, tools=[ok] * 3, answer=None, finished=False),
        _row(q4, [call("search", query="x"), f"FINAL({q4.answer})"], tools=[ok], answer=q4.answer),
    ]
    return root, results, kept


def test_pairs_reject_own_failures_choose_correct_traces(mined_inputs):
    root, results, kept = mined_inputs
    out = preference.mine_pairs(results, kept)
    pairs = out["pairs"]
    assert {p["why"] for p in pairs} == {"wrong_answer", "no_search", "invalid_call", "out_of_turns"}
    assert out["skipped"]["correct"] == 1  # the correct episode makes no pair
    by_q = {r["question_id"]: r for r in results}
    for p in pairs:
        row = by_q[p["question_id"]]
        assert p["rejected"] == [{k: m[k] for k in m if k in ("role", "content", "name", "tool_calls")}
                              for m in row["messages"][2:]]
        assert p["prompt"] == [{k: m[k] for k in ("role", "content")} for m in row["messages"][:2]]
        chosen_text = " ".join(m["content"] or "" for m in p["chosen"] if m["role"] == "assistant")
        q = load_questions("musique", split="train", limit=10)
        gold = next(x for x in q if x.id == p["question_id"]).answers
        assert any(a.lower() in chosen_text.lower() for a in gold)  # chosen ends with the right answer
        assert any(m["role"] == "tool" for m in p["chosen"])  # and searched for it
    # balanced and deduplicated
    again = preference.mine_pairs(results + results, kept, max_pairs=4)
    assert again["skipped"]["duplicate"] >= len(pairs)
    assert again["counts"] == {k: 1 for k in preference.FAILURE_KINDS}


def test_mining_refuses_eval_questions(mined_inputs):
    _, results, kept = mined_inputs
    q = load_questions("musique", split="eval", limit=1)[0]
    leaked = [dict(results[0], question_id=q.id)]
    with pytest.raises(preference.PreferenceError, match="eval split"):
        preference.mine_pairs(leaked, kept)


def test_failure_tags():
    base = {"metrics": {"acc": 0.0}, "finished": True}
    assert preference.failure_tag({**base, "metrics": {"acc": 1.0}}) is None
    assert preference.failure_tag({**base, "finished": False}) == "out_of_turns"
    assert preference.failure_tag({**base, "tool_calls": []}) == "no_search"
    assert preference.failure_tag({**base, "tool_calls": [{"name": "search", "valid": True}, {"valid": False}]}) == "invalid_call"
    assert preference.failure_tag({**base, "tool_calls": [{"name": "search", "valid": True}]}) == "wrong_answer"


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory, tiny_model, tiny_tokenizer, mined_inputs):
    from stages import sft

    root, _, kept = mined_inputs
    write_jsonl(root / "train.jsonl", kept[:2])
    out = tmp_path_factory.mktemp("sft")
    sft.run(sft.SFTConfig(traces=str(root / "train.jsonl"), max_steps=1, max_length=8192), out,
            model=tiny_model, tokenizer=tiny_tokenizer)
    return out


@pytest.mark.parametrize("loss", ["simpo", "dpo"])
def test_preference_training_runs_on_tiny_model(loss, tiny_sft, tiny_dir, mined_inputs, tmp_path):
    root, results, kept = mined_inputs
    pairs = preference.mine_pairs(results, kept)["pairs"][:2]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = preference.PreferenceConfig(pairs=str(tmp_path / "pairs.jsonl"), adapter=str(tiny_sft), model=str(tiny_dir),
                                      preset="seed002" if loss == "simpo" else "dpo", max_steps=2, max_length=8192,
                                      probe_every=1, probe_questions=2, probe_turns=1, min_tool_use=0.0)
    summary = preference.train(cfg, tmp_path / "out")
    assert summary["steps"] == 2 and (tmp_path / "out" / "adapter_config.json").exists()
    assert summary["config"]["loss"] == loss
    # probes before, after each step, and at the end, each with the collapse metrics
    history = json.loads((tmp_path / "out" / "behaviour.json").read_text())
    assert len(history) == 4 and {"tool_use_rate", "query_diversity", "mean_turns"} <= set(history[0])
    # the new adapter remembers every question it (or its SFT parent) trained on, for the leakage guard
    from hopsmith.leakage import trained_question_ids

    assert {p["question_id"] for p in pairs} <= trained_question_ids(tmp_path / "out")
    losses = json.loads((tmp_path / "out" / "loss.json").read_text())
    assert losses and all(l["loss"] == l["loss"] for l in losses)  # logged and not NaN


def test_simpo_loss_masks_tool_results(tiny_tokenizer, mined_inputs):
    from hopsmith.backends.hf import pick_chat_template

    _, results, kept = mined_inputs
    pair = preference.mine_pairs(results, kept)["pairs"][0]
    row = preference._tokenized_pair(pair, tiny_tokenizer, pick_chat_template(tiny_tokenizer), 100000)
    n = len(row["prompt_input_ids"])
    assert row["chosen_input_ids"][:n] == row["rejected_input_ids"][:n] == row["prompt_input_ids"]
    assert all(l == -100 for l in row["chosen_labels"][:n])
    scored = tiny_tokenizer.decode([t for t, l in zip(row["chosen_input_ids"], row["chosen_labels"]) if l != -100])
    assert "<tool_call>" in scored and "<tool_response>" not in scored


def test_dpo_collator_scores_only_policy_tokens(tiny_tokenizer, mined_inputs):
    """TRL's preference collator marks every completion token; ours keeps the policy's own (no tool results)."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from hopsmith.backends.hf import pick_chat_template

    _, results, kept = mined_inputs
    pairs = preference.mine_pairs(results, kept)["pairs"][:2]
    template = pick_chat_template(tiny_tokenizer)
    rows = [preference._tokenized_pair(p, tiny_tokenizer, template, 100000) for p in pairs]
    dpo_rows = list(preference._dpo_rows(Dataset.from_list(rows)))
    plain = DataCollatorForPreference(pad_token_id=0)
    batch = preference.assistant_only_collator(plain)(dpo_rows)
    everything = plain(dpo_rows)["completion_mask"]
    assert batch["completion_mask"].sum() < everything.sum()  # tool results dropped
    for i, row in enumerate(rows):  # chosen i, then rejected i
        for side, j in (("chosen", i), ("rejected", len(rows) + i)):
            ids = batch["input_ids"][j][batch["completion_mask"][j].bool()].tolist()
            assert ids == [t for t, l in zip(row[f"{side}_input_ids"], row[f"{side}_labels"]) if l != -100]
            assert "<tool_response>" not in tiny_tokenizer.decode(ids)


def test_collapse_guard_fires_on_a_collapsing_log():
    def ep(searches, query="county of eldon"):
        calls = [{"name": "search", "valid": True, "arguments": {"query": query}} for _ in range(searches)]
        return {"tool_calls": calls, "finished": True, "turns": searches + 1}

    guard = CollapseGuard(min_tool_use=0.5, max_drop=0.5)
    healthy = behaviour([ep(2), ep(1), ep(2), ep(1)])
    assert healthy["tool_use_rate"] == 1.0 and healthy["answered_without_search_rate"] == 0.0
    assert guard.check(healthy, 0) == []
    fading = behaviour([ep(1), ep(0), ep(0), ep(0)])  # the model learns to skip search
    reasons = guard.check(fading, 10)
    assert any("below the floor" in r for r in reasons) and any("fell from 100%" in r for r in reasons)
    gibberish = behaviour([ep(2, "%% ## 12"), ep(2, "@@ 77")])
    assert any("gibberish" in r for r in CollapseGuard().check(gibberish))
    assert behaviour([ep(3)])["query_diversity"] == pytest.approx(1 / 3)


def test_collapse_guard_default_catches_the_measured_simpo_probe():
    """The SimPO run on the embedded model (lr 1e-4, 58 steps) probed 100% -> 50% tool use and 0% -> 50%
    answered without search, then used tools on 5% of eval questions. The defaults flag that probe; one
    question of four turning away from search (75%, 25%) is still within them."""
    def ep(searches):
        calls = [{"name": "search", "valid": True, "arguments": {"query": "county of eldon"}}] * searches
        return {"tool_calls": calls, "finished": True, "turns": searches + 1}

    guard = CollapseGuard()
    assert guard.check(behaviour([ep(2), ep(2), ep(2), ep(2)]), 0) == []
    assert guard.check(behaviour([ep(2), ep(2), ep(2), ep(0)]), 10) == []
    reasons = guard.check(behaviour([ep(2), ep(2), ep(0), ep(0)]), 20)
    assert any("fell from 100% to 50%" in r for r in reasons)
    assert any("answered without search rose from 0% to 50%" in r for r in reasons)
    # a run that starts without tool use is flagged, and the flag says it started that way
    weak = CollapseGuard()
    weak.check(behaviour([ep(0), ep(0)]), 0)
    assert any("was at the first probe, 0%" in r for r in weak.check(behaviour([ep(0), ep(0)]), 5))


def test_simpo_on_an_enterprise_pair_trains_with_the_multihop_probes_off(tiny_sft, tiny_dir, tmp_path):
    """An enterprise policy's own wrong action (call_tool where the case wants clarify) trains SimPO with
    `probe_questions=0`: no multi-hop probe runs (its numbers would say nothing about this policy)."""
    from hopsmith.agent.loop import run_episodes
    from hopsmith.backends import Generation
    from hopsmith.config import AgentConfig
    from hopsmith.envs import enterprise
    from hopsmith.envs.enterprise_cases import load_cases

    case = next(c for c in load_cases() if c.id == "clarification_loop_0001")
    wrong = ('<tool_call>\n{"name": "call_tool", "arguments": {"tool": "verify_shipment_receipt", '
             '"arguments": {"shipment_id": "SHP-0"}}}\n</tool_call>')

    class Wrong:
        name = "wrong"

        def generate(self, conversations, **kw):
            return [Generation(wrong, prompt_tokens=10, completion_tokens=5) for _ in conversations]

    cfg = AgentConfig(env="enterprise", max_turns=1)
    row = run_episodes([case], enterprise.make(cfg), Wrong(), cfg)[0]
    pair = enterprise.preference_pair(row, case, thinking=False)
    assert pair["why"] == "clarify->call_tool"
    write_jsonl(tmp_path / "pairs.jsonl", [{**pair, "question_id": pair["case_id"]}])
    pcfg = preference.PreferenceConfig(pairs=str(tmp_path / "pairs.jsonl"), adapter=str(tiny_sft), model=str(tiny_dir),
                                       max_steps=1, max_length=8192, probe_questions=0, probe_every=1)
    summary = preference.train(pcfg, tmp_path / "out")
    assert summary["steps"] == 1 and summary["pairs_used"] == 1
    assert summary["behaviour_before"] == {} and summary["behaviour_after"] == {} and summary["collapse"] == []
    assert (tmp_path / "out" / "adapter_config.json").exists()


def test_simpo_per_trace_forward_matches_trls_padded_batch(tiny_sft, tiny_dir, mined_inputs, tmp_path):
    """SimPO's per-trace forward (each side alone, logits only where the policy wrote the next token) gives the
    log-probabilities and gradients TRL's padded forward gives on the same batch of ragged pairs."""
    import torch
    from trl.experimental.cpo import CPOTrainer

    from hopsmith.backends.templates import chat_templates
    from hopsmith.training import load_policy

    _, results, kept = mined_inputs
    pairs = preference.mine_pairs(results, kept)["pairs"][:2]
    cfg = preference.PreferenceConfig(pairs="unused", adapter=str(tiny_sft), model=str(tiny_dir), max_steps=1,
                                      max_length=8192).resolved()
    model, tok = load_policy(cfg.agent.model, cfg.agent.adapter)
    template = chat_templates(tok).training
    rows = [preference._tokenized_pair(p, tok, template, cfg.max_length) for p in pairs]
    lengths = {len(r[f"{s}_input_ids"]) for r in rows for s in ("chosen", "rejected")}
    assert len(lengths) > 1  # ragged: the padded batch really pads
    trainer = preference._trainer(cfg, model, tok, rows, tmp_path, [])
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    for module in model.modules():  # LoRA dropout off, so both forwards compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    outputs = {}
    for name, forward in (("per_trace", trainer.concatenated_forward),
                          ("padded", lambda m, b: CPOTrainer.concatenated_forward(trainer, m, b))):
        model.zero_grad()
        chosen, rejected, *_ = forward(model, batch)
        loss = trainer.cpo_loss(chosen, rejected)[0].mean()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        outputs[name] = (chosen.detach(), rejected.detach(), grads)
    a, b = outputs["per_trace"], outputs["padded"]
    assert a[0].shape == (2,) and torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # chosen and rejected really differ
    assert len(a[2]) > 0 and all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(a[2], b[2]))
    assert any(x.abs().sum() > 0 for x in a[2])
