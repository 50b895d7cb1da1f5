"""SFT on a tiny random model: assistant-only labels, a few steps, an adapter the eval stage uses,
resume from a checkpoint, and the leakage guard."""
import json
import math

import pytest
from conftest import ScriptedBackend, call

from episodes import run_multihop

from hopsmith.backends.templates import tokenize_conversation
from hopsmith.config import AgentConfig
from hopsmith.data import build_pools, hop_question, load_questions
from hopsmith.envs.multihop import MultihopEnv
from hopsmith.io import write_jsonl
from hopsmith.leakage import trained_question_ids
from hopsmith.tools.search import BM25Index
from hopsmith.training import fit_traces
from stages import evaluate, sft


def _traces(split="train", n=4):
    qs = load_questions("musique", split=split, limit=n)
    pools = build_pools(qs, size=60, others=load_questions("musique"))
    backend = ScriptedBackend({q.question: [call("search", query=hop_question(q, i)) for i in range(len(q.decomposition))]
                               + [f"FINAL({q.answer})"] for q in qs})
    rows = run_multihop(qs, pools, backend, AgentConfig(few_shot=False))
    tools = MultihopEnv(BM25Index([])).schemas()
    return [{"id": f"{r['question_id']}:chain", "question_id": r["question_id"], "source": "synthetic:chain",
             "question": r["question"], "answers": r["answers"], "messages": r["messages"], "tools": tools}
            for r in rows]


def test_labels_cover_exactly_the_assistant_turns(tiny_tokenizer):
    from hopsmith.backends.hf import CHATML_TOOLS_TEMPLATE

    trace = _traces(n=1)[0]
    row = tokenize_conversation(tiny_tokenizer, trace["messages"], trace.get("tools"), CHATML_TOOLS_TEMPLATE)
    trained = tiny_tokenizer.decode([t for t in row["labels"] if t != -100])
    expected = ""
    for m in trace["messages"]:
        if m["role"] == "assistant":
            calls = "".join(
                '<tool_call>\n{"name": "%s", "arguments": %s}\n</tool_call>' % (c["function"]["name"], json.dumps(c["function"]["arguments"]))
                for c in m.get("tool_calls", []))
            expected += (m["content"] or "") + calls + "<|im_end|>"
    assert trained == expected
    assert "Question:" not in trained and "<tool_response>" not in trained


def test_presets_and_overrides():
    c = sft.SFTConfig(preset="seed002", lora_r=8).resolved()
    assert (c.lora_r, c.lora_alpha, c.target_modules, c.neftune_alpha, c.warmup_ratio) == (8, 64, "all-linear", 5.0, 0.03)
    c = sft.SFTConfig().resolved()
    assert (c.lora_r, c.target_modules, c.epochs, c.lr_scheduler) == (16, "attention", 3.0, "cosine")
    from hopsmith.config import ConfigError

    with pytest.raises(ConfigError, match="unknown SFT preset"):
        sft.SFTConfig(preset="fast").resolved()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("sft")
    write_jsonl(root / "kept.jsonl", _traces())
    cfg = sft.SFTConfig(traces=str(root / "kept.jsonl"), max_steps=3, batch_size=2, max_length=4096, save_steps=2,
                        lora_r=4, lora_alpha=8)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    summary = sft.run(cfg, root / "adapter", model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
    return root, summary


def test_sft_writes_adapter_config_ids_and_loss(trained):
    root, summary = trained
    adapter = root / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    assert summary["steps"] == 3 and summary["traces"] == 4
    assert 0 < summary["assistant_tokens"] < summary["tokens"]
    losses = json.loads((adapter / "loss.json").read_text())
    assert len(losses) == 3 and all(math.isfinite(x["loss"]) for x in losses)
    ids = trained_question_ids(adapter)
    assert len(ids) == 4 and all(i.startswith(("2hop", "3hop", "4hop")) for i in ids)
    # what the leakage guard reads beside the ids: the trained answers and question texts, normalised
    record = json.loads((adapter / "training.json").read_text())
    trained = load_questions("musique", split="train", limit=4)
    assert set(record["trained_answers"]) >= {q.answer.lower() for q in trained if q.answer.isalpha()}
    assert len(record["trained_questions"]) == 4
    assert (adapter / "checkpoints" / "checkpoint-2").exists()


def test_adapter_used_by_eval_stage(trained, tiny_dir, tmp_path):
    root, _ = trained
    cfg = evaluate.EvalConfig(model=str(tiny_dir), adapter=str(root / "adapter"), limit=2, max_turns=1,
                              max_new_tokens=6, pool_size=40, bootstrap=20, extraction_bench=False)
    metrics = evaluate.run(cfg, tmp_path / "eval", progress=False)
    assert metrics["n"] == 2 and "adapter" in metrics["model"]
    assert metrics["leakage"]["count"] == 0 and metrics["leakage"]["ids"] == []


def test_leakage_guard_refuses_training_questions(trained, tiny_dir, tmp_path, capsys):
    root, _ = trained
    cfg = evaluate.EvalConfig(model=str(tiny_dir), adapter=str(root / "adapter"), split="train", limit=4,
                              max_turns=1, max_new_tokens=4, pool_size=40, bootstrap=20, extraction_bench=False)
    with pytest.raises(evaluate.LeakageError, match="4 of 4 train-split questions overlap the training set"):
        evaluate.run(cfg, tmp_path / "leak", progress=False)
    loud = evaluate.run(evaluate.EvalConfig(**{**cfg.__dict__, "allow_leakage": True}), tmp_path / "leak2", progress=False)
    assert loud["leakage"]["count"] == 4
    # On the train split (mining the policy's behaviour) the overlap is expected: a note, not a LEAKAGE warning.
    err = capsys.readouterr().err
    assert "expected on the train split" in err and "WARNING: LEAKAGE" not in err


def test_sft_resumes_from_its_checkpoint(trained, tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, first = trained
    before = json.loads((root / "adapter" / "loss.json").read_text())
    cfg = sft.SFTConfig(traces=str(root / "kept.jsonl"), max_steps=4, batch_size=2, max_length=4096, save_steps=2,
                        lora_r=4, lora_alpha=8)
    summary = sft.run(cfg, root / "adapter", model=AutoModelForCausalLM.from_pretrained(tiny_dir),
                      tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
    assert summary["steps"] == 4
    losses = json.loads((root / "adapter" / "loss.json").read_text())
    # steps 1-3 came from the last checkpoint (checkpoint-3, saved when the first run ended), not trained again;
    # the curve and the summary still cover the whole run
    assert [x["step"] for x in losses] == [1, 2, 3, 4] and losses[:3] == before
    assert summary["seconds"] > first["seconds"] and summary["train_loss"] == pytest.approx(
        sum(x["loss"] for x in losses) / 4)


def test_rerunning_a_finished_sft_returns_its_summary_and_keeps_its_curve(tmp_path, tiny_dir):
    """A finished run asked again (a resumed pipeline) trains nothing and rewrites nothing: before, it ran 0
    steps and overwrote training.json with train_loss 0.0, seconds 0 and loss.json with []."""
    write_jsonl(tmp_path / "t.jsonl", _traces(n=2))
    cfg = sft.SFTConfig(traces=str(tmp_path / "t.jsonl"), model=str(tiny_dir), max_steps=2, batch_size=1,
                        max_length=8192, lora_r=2, lora_alpha=4)
    first = sft.run(cfg, tmp_path / "sft")
    files = {name: (tmp_path / "sft" / name).read_bytes() for name in ("training.json", "loss.json",
                                                                        "adapter_model.safetensors")}
    assert first["train_loss"] > 0 and len(json.loads(files["loss.json"])) == 2
    again = sft.run(cfg, tmp_path / "sft")
    assert again == json.loads(files["training.json"]) and again["train_loss"] == first["train_loss"]
    assert {name: (tmp_path / "sft" / name).read_bytes() for name in files} == files


def test_missing_or_empty_traces(tmp_path):
    with pytest.raises(FileNotFoundError, match="no traces file"):
        sft.run(sft.SFTConfig(traces=str(tmp_path / "nope.jsonl")), tmp_path / "a")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no traces"):
        sft.run(sft.SFTConfig(traces=str(tmp_path / "empty.jsonl")), tmp_path / "b")


def test_traces_longer_than_max_length_are_dropped_not_cut(tmp_path, tiny_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    traces = _traces(n=3)
    traces[1]["messages"][1]["content"] += " filler" * 6000  # far past max_length
    write_jsonl(tmp_path / "t.jsonl", traces)
    cfg = sft.SFTConfig(traces=str(tmp_path / "t.jsonl"), max_steps=1, batch_size=1, lora_r=2, lora_alpha=4)
    summary = sft.run(cfg, tmp_path / "a", model=AutoModelForCausalLM.from_pretrained(tiny_dir),
                      tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
    assert summary["traces"] == 2 and summary["too_long_dropped"] == 1 and summary["traces_given"] == 3
    assert "left out 1 of 3 traces longer than max_length=4096 tokens" in capsys.readouterr().err  # never silently
    assert traces[1]["question_id"] not in summary["trained_question_ids"]
    with pytest.raises(ValueError, match="longer than max_length=10"):
        sft.run(sft.SFTConfig(traces=str(tmp_path / "t.jsonl"), max_length=10), tmp_path / "b",
                model=AutoModelForCausalLM.from_pretrained(tiny_dir), tokenizer=AutoTokenizer.from_pretrained(tiny_dir))


def test_max_length_agrees_across_the_ladders():
    """SFT's default used to be 2048 while the ladders passed 4096: over half of the full-preset MuSiQue traces
    (74 of 132) were left out whenever SFT ran on its own."""
    from stages import cloud, pipeline, preference

    assert sft.SFTConfig().max_length == pipeline.PRESETS["full"]["max_length"] == cloud.CloudConfig().max_length == 4096
    assert preference.PreferenceConfig().max_length == 4096


def test_a_trace_the_template_refuses_is_reported(capsys):
    """Llama 3.2's template raises on two tool calls in one assistant message: that trace is left out and said so."""
    from conftest import family_tokenizer

    from hopsmith.backends.templates import chat_templates

    tok = family_tokenizer("llama3.2")
    traces = _traces(n=2)
    first_call = next(m for m in traces[0]["messages"] if m.get("tool_calls"))
    first_call["tool_calls"] = first_call["tool_calls"] * 2
    kept, rows, report = fit_traces(traces, tok, chat_templates(tok).training, 4096)
    assert [t["id"] for t in kept] == [traces[1]["id"]] and report["template_refused"] == 1
    err = capsys.readouterr().err
    assert "left out 1 of 2 traces the chat template cannot render" in err and "single tool-calls" in err


def test_per_trace_assistant_logits_train_like_padded_batches(tmp_path, tiny_dir):
    """The fast collation (one trace a forward, the batch by accumulation, logits only where labels are) is
    the same optimisation problem as TRL's padded batches: same batches, same per-step losses (no dropout,
    so nothing random differs)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_jsonl(tmp_path / "t.jsonl", _traces(n=4))
    losses = {}
    for collation in ("padded", "per_trace"):
        cfg = sft.SFTConfig(traces=str(tmp_path / "t.jsonl"), max_steps=3, batch_size=2, max_length=4096, lora_r=4,
                            lora_alpha=8, lora_dropout=0.0, learning_rate=5e-2, collation=collation)
        sft.run(cfg, tmp_path / collation, model=AutoModelForCausalLM.from_pretrained(tiny_dir),
                tokenizer=AutoTokenizer.from_pretrained(tiny_dir))
        losses[collation] = [x["loss"] for x in json.loads((tmp_path / collation / "loss.json").read_text())]
    assert len(losses["padded"]) == 3
    # The learning rate is high enough that step 3's loss differs from step 1's: the steps really trained.
    assert abs(losses["padded"][2] - losses["padded"][0]) > 1e-3
    assert losses["per_trace"] == pytest.approx(losses["padded"], rel=1e-4)
    with pytest.raises(Exception, match="unknown SFT collation"):
        sft.SFTConfig(collation="packed").resolved()


def test_a_rerun_resumes_only_its_own_run(tmp_path, tiny_dir, capsys):
    """Another LoRA rank or other traces into the same --out are refused with one line, and the first
    run's adapter and trained question ids are kept; the same command again resumes."""
    from hopsmith import cli

    write_jsonl(tmp_path / "t.jsonl", _traces(n=2))
    out = tmp_path / "sft"
    argv = ["sft", "--traces", str(tmp_path / "t.jsonl"), "--model", str(tiny_dir), "--max-steps", "1",
            "--batch-size", "1", "--lora-r", "2", "--lora-alpha", "4", "--max-length", "8192", "--out", str(out)]
    assert cli.main(argv) == 0
    first = (out / "training.json").read_text()
    weights = (out / "adapter_model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main([*argv, "--lora-r", "4"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "lora_r: 2 -> 4" in err and "Traceback" not in err
    write_jsonl(tmp_path / "t.jsonl", _traces(n=3))
    assert cli.main(argv) == 2
    assert "traces: other content" in capsys.readouterr().err
    assert (out / "training.json").read_text() == first and (out / "adapter_model.safetensors").read_bytes() == weights
    write_jsonl(tmp_path / "t.jsonl", _traces(n=2))
    assert cli.main(argv) == 0  # the same run again: resumed from its checkpoint, nothing refused
