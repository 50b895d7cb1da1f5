"""Chat templates of the seeds' models (Qwen3, Qwen2.5, Llama 3.2): which template trains, which tokens are the
assistant's, prompts at inference are prefixes of what was trained; and SFT -> SimPO -> GRPO through the CLI on
tiny random models of each architecture with its real template, as a user runs them."""
import json

import pytest
from conftest import FAMILIES, ScriptedBackend, call, family_template, family_tokenizer

from hopsmith import cli
from episodes import run_multihop
from hopsmith.config import AgentConfig
from hopsmith.backends.templates import (CHATML_TOOLS_TEMPLATE, TemplateError, chat_templates,
                                         check_prompts_are_prefixes, tokenize_conversation)
from hopsmith.data import build_pools, hop_question, load_questions
from hopsmith.io import write_jsonl
from hopsmith.traces.synthetic import tool_schemas


def _traces(n=2):
    qs = load_questions("musique", split="train", limit=n)
    pools = build_pools(qs, size=40, others=load_questions("musique"))
    backend = ScriptedBackend({q.question: [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))]
                               + [f"FINAL({q.answer})"] for q in qs})
    rows = run_multihop(qs, pools, backend, AgentConfig(few_shot=False, max_chars=80, top_k=2))
    return [{"id": f"{r['question_id']}:chain", "question_id": r["question_id"], "source": "synthetic:chain",
             "messages": r["messages"], "tools": tool_schemas(True), "answer": r["prediction"]} for r in rows]


def _call_json(message, key="arguments"):
    fn = message["tool_calls"][0]["function"]
    return '{"name": "%s", "%s": %s}' % (fn["name"], key, json.dumps(fn["arguments"]))


# What each family's training template renders of one assistant turn: exactly the tokens the loss may see.
EXPECTED_ASSISTANT = {
    "qwen3": lambda m: "<think>\n\n</think>\n\n" + (
        f"<tool_call>\n{_call_json(m)}\n</tool_call>" if m.get("tool_calls") else m["content"]) + "<|im_end|>\n",
    "qwen2.5": lambda m: "\n" + (
        f"<tool_call>\n{_call_json(m)}\n</tool_call>" if m.get("tool_calls") else m["content"]) + "<|im_end|>\n",
    "llama3.2": lambda m: (_call_json(m, "parameters") if m.get("tool_calls") else m["content"]) + "<|eot_id|>",
}


@pytest.mark.parametrize("family,source", [("qwen3", "trl"), ("qwen2.5", "trl"), ("llama3.2", "own")])
def test_training_template_and_assistant_mask(family, source):
    tok = family_tokenizer(family)
    templates = chat_templates(tok)
    assert templates.source == source
    assert templates.inference == family_template(family)  # the model's own template renders tools: kept
    assert templates.marked == (source == "trl")  # Llama 3.2: TRL has no marked variant; masks come from prefixes
    trace = _traces(1)[0]
    row = tokenize_conversation(tok, trace["messages"], trace["tools"], templates.training)
    trained = tok.decode([t for t in row["labels"] if t != -100])
    expected = "".join(EXPECTED_ASSISTANT[family](m) for m in trace["messages"] if m["role"] == "assistant")
    assert trained == expected
    # and nothing of the system prompt, the question or the tool results
    for m in trace["messages"]:
        if m["role"] in ("tool", "user", "system"):
            assert m["content"][:40] not in trained


@pytest.mark.parametrize("family", list(FAMILIES))
def test_inference_prompts_are_prefixes_of_the_training_sequence(family):
    tok = family_tokenizer(family)
    templates = chat_templates(tok)
    trace = _traces(1)[0]
    turns = sum(1 for m in trace["messages"] if m["role"] == "assistant")
    assert check_prompts_are_prefixes(tok, trace["messages"], trace["tools"], templates) == turns >= 2
    # a thinking agent's turns (Qwen3 opens them differently when thinking is on) are prefixes too
    thinking = [dict(m, content="<think>\nsearch first\n</think>\n\n" + (m["content"] or ""))
                if m["role"] == "assistant" else m for m in trace["messages"]]
    assert check_prompts_are_prefixes(tok, thinking, trace["tools"], templates) == turns


def test_a_template_that_rewrites_earlier_turns_cannot_mask_by_prefixes():
    """Qwen3's own template drops the think block of earlier assistant turns once a later one follows, so a
    turn renders differently alone than in the whole conversation: that is why TRL's training variant exists,
    and masking by prefixes with the original refuses instead of guessing."""
    tok = family_tokenizer("qwen3")
    trace = _traces(1)[0]
    with pytest.raises(TemplateError, match="continuation"):
        tokenize_conversation(tok, trace["messages"], trace["tools"], family_template("qwen3"))


def test_chatml_models_get_our_template(tiny_tokenizer):
    templates = chat_templates(tiny_tokenizer)
    assert templates.inference == templates.training == CHATML_TOOLS_TEMPLATE and templates.source == "chatml"


def _pairs(traces):
    return [{"id": f"{t['question_id']}:0", "question_id": t["question_id"], "prompt": t["messages"][:2],
             "chosen": t["messages"][2:], "rejected": [{"role": "assistant", "content": "FINAL(nobody)"}],
             "tools": t["tools"], "why": "no_search"} for t in traces]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sft_simpo_grpo_through_the_cli(family, family_dir, tmp_path, capsys):
    from hopsmith.backends.hf import HFBackend

    model = str(family_dir(family))
    traces = _traces(2)
    write_jsonl(tmp_path / "train.jsonl", traces)
    write_jsonl(tmp_path / "pairs.jsonl", _pairs(traces))
    sft_out, simpo_out, grpo_out = tmp_path / "sft", tmp_path / "simpo", tmp_path / "grpo"
    small = ["--model", model, "--max-steps", "2", "--batch-size", "1"]
    assert cli.main(["sft", "--traces", str(tmp_path / "train.jsonl"), "--out", str(sft_out), "--lora-r", "2",
                     "--lora-alpha", "4", *small]) == 0
    training = json.loads((sft_out / "training.json").read_text())
    assert training["steps"] == 2 and training["traces"] == 2 and 0 < training["assistant_tokens"] < training["tokens"]
    # the adapter keeps the template it was trained with, and inference with the adapter renders with it
    trained_with = chat_templates(family_tokenizer(family)).training
    backend = HFBackend(model, adapter=str(sft_out))
    assert backend.chat_template == trained_with
    assert HFBackend(model).chat_template == family_template(family)  # the base model: its own template

    assert cli.main(["simpo", "--pairs", str(tmp_path / "pairs.jsonl"), "--adapter", str(sft_out), "--out",
                     str(simpo_out), "--probe-questions", "1", "--probe-turns", "1", "--min-tool-use", "0",
                     "--max-length", "8192", *small]) == 0
    assert json.loads((simpo_out / "training.json").read_text())["steps"] == 2
    assert HFBackend(model, adapter=str(simpo_out)).chat_template == trained_with

    assert cli.main(["grpo", "--model", model, "--adapter", str(sft_out), "--out", str(grpo_out), "--limit", "1",
                     "--num-generations", "2", "--max-steps", "1", "--max-turns", "1", "--max-new-tokens", "6",
                     "--min-tool-use", "0"]) == 0
    summary = json.loads((grpo_out / "training.json").read_text())
    assert summary["steps"] == 1 and sum(summary["groups"].values()) == 1
    capsys.readouterr()


# -- one device rule ------------------------------------------------------------------------------------------

def test_backend_follows_the_weights_and_moves_or_refuses(tiny_model, tiny_tokenizer, monkeypatch):
    """SimPO's probe used to build its backend with inputs on CUDA while the policy sat on the CPU."""
    import copy

    import torch

    from hopsmith.backends.hf import HFBackend
    from hopsmith.models import ModelError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the backend can tell
    backend = HFBackend(model_obj=tiny_model, tokenizer=tiny_tokenizer)
    assert backend.device.type == "cpu"  # where the weights are, not where a GPU might be
    assert backend.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=2)[0].completion_tokens > 0

    moved = HFBackend(model_obj=copy.deepcopy(tiny_model), tokenizer=tiny_tokenizer, device="meta")
    assert moved.device.type == "meta" and {p.device.type for p in moved.model.parameters()} == {"meta"}

    quantised = copy.deepcopy(tiny_model)
    quantised.hf_quantizer = object()  # stands in for a bitsandbytes 4-bit model, which cannot move
    with pytest.raises(ModelError, match="quantised on cpu; it cannot be moved to meta"):
        HFBackend(model_obj=quantised, tokenizer=tiny_tokenizer, device="meta")


def test_simpo_loads_the_policy_where_training_runs(tiny_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hopsmith.backends import hf
    from hopsmith.training import load_policy

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=2, target_modules=["q_proj"])
                   ).save_pretrained(adapter)
    monkeypatch.setattr(hf, "default_device", lambda: "meta")  # the GPU of this test
    policy, tokenizer = load_policy(str(tiny_dir), str(adapter))
    assert {p.device.type for p in policy.parameters()} == {"meta"}  # all of it there, the adapter included
    assert hf.HFBackend(model_obj=policy, tokenizer=tokenizer).device.type == "meta"  # the probe goes there too
