"""Shared fixtures: a tiny random causal LM with a tokenizer trained in the test session (no download,
no embedded model), a scripted backend that replies from a list, for deterministic loop tests, and fake
OpenAI-compatible / Gemini servers (`serve`, from tests/fake_servers.py) with the `openai` client's retry
waits recorded instead of slept (`openai_sleeps`)."""
from __future__ import annotations

import json
import time

import pytest
from fake_servers import FakeServer, Sleeps

from hopsmith.backends import Generation
from hopsmith.data import build_pools, load_questions

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    qs = load_questions("musique", limit=20)
    corpus = [p.text for q in qs for p in q.paragraphs] + [
        '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n</tool_call> <tool_response> FINAL( )',
    ]
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id,
                         bos_token_id=tiny_tokenizer.bos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    """The tiny model saved as a model directory, for code paths that load by name."""
    d = tmp_path_factory.mktemp("tiny-model")
    tiny_model.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


# The seeds' model families, as tiny random models of the real architectures with the real chat templates
# (TRL ships the families' templates) and a BPE trained here with the family's special tokens.
FAMILIES = {
    "qwen3": dict(template="qwen3.jinja", config="Qwen3Config", model="Qwen3ForCausalLM",
                  specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                  added=["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"],
                  bos=None, eos="<|im_end|>", pad="<|endoftext|>"),
    "qwen2.5": dict(template="qwen2_5.jinja", config="Qwen2Config", model="Qwen2ForCausalLM",
                    specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                    added=["<tool_call>", "</tool_call>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>"),
    "llama3.2": dict(template="llama3_2.jinja", config="LlamaConfig", model="LlamaForCausalLM",
                     specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                               "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"],
                     added=[], bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None),
}


def family_template(name: str) -> str:
    from pathlib import Path

    import trl

    return (Path(trl.__file__).parent / "chat_templates" / FAMILIES[name]["template"]).read_text()


def family_tokenizer(name: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    f = FAMILIES[name]
    template = family_template(name)
    qs = load_questions("musique", limit=20)
    corpus = [p.text for q in qs for p in q.paragraphs] + [template]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=f["specials"], show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=f["bos"], eos_token=f["eos"], pad_token=f["pad"])
    if f["added"]:
        out.add_tokens(f["added"])
    out.chat_template = template
    return out


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory):
    """family_dir(name) -> a model directory: a tiny random Qwen3 / Qwen2.5 / Llama 3.2 with its real template."""
    made = {}

    def make(name: str):
        if name not in made:
            import torch
            import transformers

            f = FAMILIES[name]
            tok = family_tokenizer(name)
            torch.manual_seed(0)
            config = getattr(transformers, f["config"])(
                vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True,
                eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            model = getattr(transformers, f["model"])(config)
            d = tmp_path_factory.mktemp(name.replace(".", ""))
            model.save_pretrained(d)
            tok.save_pretrained(d)
            made[name] = d
        return made[name]

    return make


@pytest.fixture()
def tiny_backend(tiny_model, tiny_tokenizer):
    from hopsmith.backends.hf import HFBackend

    return HFBackend(model_obj=tiny_model, tokenizer=tiny_tokenizer, batch_size=4)


@pytest.fixture(scope="session")
def musique_small():
    questions = load_questions("musique", limit=6)
    pools = build_pools(questions, size=120, others=load_questions("musique"))
    return questions, pools


def call(name: str, **arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


class ScriptedBackend:
    """Replies to each conversation from its own script, keyed by the question (the first user turn).

    A script is a list of replies or callables `(messages) -> reply`; past its end the backend answers
    FINAL(unknown). `batches` records the size of every generate call, so tests can check batching."""

    name = "scripted"

    def __init__(self, scripts: dict[str, list], default: list | None = None):
        self.scripts = scripts
        self.default = default or []
        self.batches: list[int] = []

    def generate(self, conversations, *, tools=None, max_new_tokens=256, temperature=0.0, thinking=False, stop=None):
        self.batches.append(len(conversations))
        out = []
        for conv in conversations:
            user = next((m["content"] for m in conv if m["role"] == "user"), "")
            script = next((s for q, s in self.scripts.items() if q in user), self.default)
            turn = sum(1 for m in conv if m["role"] == "assistant")
            reply = script[turn] if turn < len(script) else "FINAL(unknown)"
            if callable(reply):
                reply = reply(conv)
            # A rough token count (4 characters a token) so context budgets can be tested.
            size = sum(len(m.get("content") or "") for m in conv) // 4
            out.append(Generation(reply, prompt_tokens=size, completion_tokens=5))
        return out


@pytest.fixture()
def scripted():
    return ScriptedBackend


@pytest.fixture()
def serve():
    """serve(replies) -> a running FakeServer, shut down when the test ends."""
    started: list[FakeServer] = []

    def start(replies, delay=None, get=None) -> FakeServer:
        server = FakeServer(replies, delay, get).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture()
def openai_sleeps(monkeypatch) -> "Sleeps":
    """The `openai` client's retry waits, recorded instead of slept (its module's `time`, not the global one)."""
    import types

    import openai._base_client as base

    sleeps = Sleeps()
    monkeypatch.setattr(base, "time", types.SimpleNamespace(sleep=sleeps, time=time.time))
    return sleeps
