"""Shared fixtures: a tiny random causal LM with a tokenizer trained in the test session (no download,
no embedded model), and a scripted backend that replies from a list, for deterministic loop tests."""
from __future__ import annotations

import json

import pytest

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
