"""Model resolution: the embedded model, model directories, unknown models, adapters."""
import json

import pytest

from hopsmith import cli
from hopsmith.backends import cut_at_stop
from hopsmith.backends.hf import CHATML_TOOLS_TEMPLATE, HFBackend, pick_chat_template
from hopsmith.models import ModelError, resolve_model


def test_embedded_model_converts_once_and_reads(tmp_path_factory, monkeypatch):
    """The shipped GGUF becomes a cached HF model that answers a simple reading question."""
    import os

    if not os.environ.get("HOPSMITH_CACHE"):
        monkeypatch.setenv("HOPSMITH_CACHE", str(tmp_path_factory.mktemp("cache")))
    path = resolve_model("embedded")
    assert (path.endswith("SmolLM2-135M-Instruct")) and resolve_model("embedded") == path
    backend = HFBackend("embedded", batch_size=2)
    assert backend.chat_template == CHATML_TOOLS_TEMPLATE  # its own template knows no tools
    msgs = [[{"role": "user", "content": "Text: Eldon is a city in Miller County, Missouri.\n"
                                         "Question: In which county is Eldon?\nAnswer:"}]]
    assert "Miller" in backend.generate(msgs, max_new_tokens=12)[0].text


def test_model_directory_and_errors(tiny_dir, tmp_path):
    assert resolve_model(str(tiny_dir)) == str(tiny_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="unknown model 'nobody/no-such-model'"):
        resolve_model("nobody/no-such-model")
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model("not a model")


def test_template_choice(tiny_tokenizer):
    class T:
        chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    with pytest.raises(ValueError, match="renders no tool calls"):
        pick_chat_template(T())
    T.chat_template = "{% if tools %}{{ tools }}{% endif %}{% for m in messages %}{{ m.tool_calls }}{% endfor %}"
    assert pick_chat_template(T()) == T.chat_template
    assert pick_chat_template(tiny_tokenizer) == CHATML_TOOLS_TEMPLATE


def test_assistant_mask_covers_exactly_assistant_turns(tiny_tokenizer):
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]},
            {"role": "tool", "content": "R"}, {"role": "assistant", "content": "FINAL(A)"}]
    out = tiny_tokenizer.apply_chat_template(conv, chat_template=CHATML_TOOLS_TEMPLATE, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    kept = tiny_tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert kept == '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call><|im_end|>FINAL(A)<|im_end|>'


def test_cut_at_stop():
    assert cut_at_stop('<tool_call>{"a": 1}</tool_call> and then', ["</tool_call>"]) == '<tool_call>{"a": 1}</tool_call>'
    assert cut_at_stop("no stop here", ["</tool_call>"]) == "no stop here"
    assert cut_at_stop("x", None) == "x"


def test_cli_eval_and_bench_on_a_model_directory(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["eval", "--model", str(tiny_dir), "--limit", "3", "--max-turns", "2", "--max-new-tokens", "8",
                     "--pool-size", "60", "--bootstrap", "50", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert printed.startswith("exact match") and "cover-EM" in printed and "n=3" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["extraction_benchmark"]["acc"]["n"] >= 6
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    assert cli.main(["bench-extraction", "--model", str(tiny_dir), "--limit", "2", "--out", str(tmp_path / "x")]) == 0
    assert "extraction EM" in capsys.readouterr().out


def test_adapter_dir_must_be_an_adapter(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="no adapter_config.json"):
        HFBackend(str(tiny_dir), adapter=str(tmp_path))


def test_lora_adapter_loads_on_top(tiny_dir, tmp_path, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    backend = HFBackend(str(tiny_dir), adapter=str(tmp_path / "adapter"))
    assert "adapter" in backend.name
    assert backend.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=3)[0].completion_tokens > 0
