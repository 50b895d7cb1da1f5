"""The KV engine behind HFBackend: token-identical greedy replies to plain `generate` across turns, prefix
reuse, the weights-changed reset, the LRU byte budget, and the precision choice.

Identity is checked in float64, where a different (but equivalent) order of additions cannot flip an
argmax of a random model's logits; in float32 the engine and `generate` agree as closely as two `generate`
calls with different padding do. The random model is initialised wide (std 0.3): at the usual 0.02 a tied
tiny model repeats one token whatever the context, which no cache bug could change."""
import copy

import pytest
import torch

from hopsmith.envs.multihop import agent_system_prompt, agent_user_prompt
from hopsmith.backends import kv
from hopsmith.backends.hf import HFBackend
from hopsmith.envs.multihop import MultihopEnv
from hopsmith.tools.search import IndexCache

STOP = ["</tool_call>", "<tool_response>"]


@pytest.fixture(scope="module")
def model64(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = tiny_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         tie_word_embeddings=True, initializer_range=0.3)
    return LlamaForCausalLM(config).double().eval()


def _episodes(musique_small, n=4):
    questions, pools = musique_small
    cache = IndexCache()
    envs = [MultihopEnv(cache.get(pools[q.id]), k=2, max_chars=80) for q in questions[:n]]
    convs = [[{"role": "system", "content": agent_system_prompt(few_shot=False)},
              {"role": "user", "content": agent_user_prompt(q.question)}] for q in questions[:n]]
    return questions[:n], envs, convs


def _step(convs, envs, questions, replies, turn):
    """Append each reply as the loop does (a parsed tool call) and the real search result."""
    for conv, env, q, reply in zip(convs, envs, questions, replies):
        query = " ".join(q.question.split()[turn : turn + 2])
        conv.append({"role": "assistant", "content": reply.text[:20],
                     "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": query}}}]})
        conv.append({"role": "tool", "name": "search", "content": env.search(query)})


def _same(a, b):
    return [(x.text, x.completion_tokens, x.prompt_tokens) for x in a] == [(y.text, y.completion_tokens, y.prompt_tokens) for y in b]


def test_four_turns_ragged_batch_token_identical_to_generate(model64, tiny_tokenizer, musique_small):
    questions, envs, convs = _episodes(musique_small)
    engine = HFBackend(model_obj=model64, tokenizer=tiny_tokenizer, batch_size=4)
    one_by_one = HFBackend(model_obj=model64, tokenizer=tiny_tokenizer, batch_size=1, engine="generate")
    padded = HFBackend(model_obj=model64, tokenizer=tiny_tokenizer, batch_size=4, engine="generate")
    assert engine.engine is not None and engine.engine_info["engine"] == "kv"
    tools = envs[0].schemas()
    for turn in range(4):
        # Ragged: on odd turns the first episode sits out, so rows differ in length and in turn.
        live = list(range(turn % 2, len(convs)))
        batch = [convs[i] for i in live]
        got = engine.generate(batch, tools=tools, max_new_tokens=10, stop=STOP)
        assert _same(got, one_by_one.generate(batch, tools=tools, max_new_tokens=10, stop=STOP))
        assert _same(got, padded.generate(batch, tools=tools, max_new_tokens=10, stop=STOP))
        _step(batch, [envs[i] for i in live], [questions[i] for i in live], got, turn)
    stats = engine.stats
    # Everything but the first row's prompt and the appended turns came from the cache.
    assert stats.cached_tokens > 0.6 * stats.prompt_tokens
    assert stats.prefill_tokens + stats.cached_tokens == stats.prompt_tokens
    assert stats.cache_resets == 0


def test_stop_strings_end_rows_where_stop_string_criteria_does(model64, tiny_tokenizer, musique_small):
    _, envs, convs = _episodes(musique_small)
    tools = None  # shorter prompts; the 4-turn test renders the tool specs
    plain = HFBackend(model_obj=model64, tokenizer=tiny_tokenizer, engine="generate")
    rows = [tiny_tokenizer(plain.render(c, tools=tools), add_special_tokens=False)["input_ids"] for c in convs]
    free = plain._generate_plain(rows, 12, 0.0, None)
    # A stop string that the model really writes mid-reply in one row (a random model writes no "</tool_call>").
    pieces = [tiny_tokenizer.decode(free[1][k : k + 2]) for k in range(2, 10)]
    stop = [next(p for p in pieces if p.isascii() and p.strip() and p.isprintable())]
    want = plain.generate(convs, tools=tools, max_new_tokens=12, stop=stop)
    got = HFBackend(model_obj=model64, tokenizer=tiny_tokenizer).generate(convs, tools=tools, max_new_tokens=12, stop=stop)
    assert _same(got, want)
    assert stop[0] in got[1].text and got[1].completion_tokens < 12


def test_weights_changed_drops_the_cache(model64, tiny_tokenizer, musique_small):
    model = copy.deepcopy(model64)
    _, envs, convs = _episodes(musique_small, n=2)
    tools = None  # shorter prompts; the 4-turn test renders the tool specs
    backend = HFBackend(model_obj=model, tokenizer=tiny_tokenizer)
    backend.generate(convs, tools=tools, max_new_tokens=4)
    assert len(backend.engine.cache) > 0
    # What an optimizer step does: an in-place update of the weights.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    got = backend.generate(convs, tools=tools, max_new_tokens=8)
    want = HFBackend(model_obj=model, tokenizer=tiny_tokenizer, engine="generate").generate(convs, tools=tools, max_new_tokens=8)
    assert _same(got, want)
    assert backend.stats.cache_resets == 1


def test_optimizer_step_changes_the_fingerprint(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    before = kv.weights_fingerprint(model)
    assert kv.weights_fingerprint(model) == before
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    assert kv.weights_fingerprint(model) != before


def test_cache_disabled_still_identical(model64, tiny_tokenizer, musique_small):
    _, envs, convs = _episodes(musique_small, n=3)
    tools = None  # shorter prompts; the 4-turn test renders the tool specs
    off = HFBackend(model_obj=model64, tokenizer=tiny_tokenizer, kv_cache_gb=0)
    got = off.generate(convs, tools=tools, max_new_tokens=6)
    assert off.stats.cached_tokens == 0 and len(off.engine.cache) == 0
    assert _same(got, HFBackend(model_obj=model64, tokenizer=tiny_tokenizer, engine="generate").generate(
        convs, tools=tools, max_new_tokens=6))


def test_sampling_respects_the_token_budget(tiny_model, tiny_tokenizer, musique_small):
    _, envs, convs = _episodes(musique_small, n=3)
    backend = HFBackend(model_obj=tiny_model, tokenizer=tiny_tokenizer)
    torch.manual_seed(0)
    gens = backend.generate(convs, tools=None, max_new_tokens=7, temperature=1.0)
    assert len(gens) == 3 and all(0 < g.completion_tokens <= 7 for g in gens)


def _kv(n, fill):
    return torch.full((2, 2, 1, n, 4), float(fill))


def test_prefix_cache_matches_whole_blocks_under_the_same_prefix():
    cache = kv.PrefixCache(block_size=4, budget_bytes=10**9)
    ids = list(range(10))
    cache.insert(ids, 10, lambda a, b: _kv(b - a, a))
    assert len(cache) == 2  # 10 tokens: two whole blocks of 4, the tail of 2 is not stored
    assert [b.kv[0, 0, 0, 0, 0].item() for b in cache.match(ids + [99])] == [0.0, 4.0]
    assert len(cache.match([0, 1, 2, 3, 4, 5, 6, 99])) == 1  # the second block differs in its last token
    # The same tokens after another prefix are another block.
    assert cache.match([9, 9, 9, 9, 4, 5, 6, 7]) == []


def test_prefix_cache_evicts_least_recent_leaves_first():
    one = _kv(4, 0).numel() * 4  # bytes of one float32 block
    cache = kv.PrefixCache(block_size=4, budget_bytes=4 * one)
    shared = [1, 2, 3, 4]
    a, b = shared + [5, 6, 7, 8, 9, 10, 11, 12], shared + [20, 21, 22, 23]
    cache.insert(a, len(a), lambda s, e: _kv(e - s, 1))
    cache.insert(b, len(b), lambda s, e: _kv(e - s, 2))
    assert len(cache) == 4 and cache.nbytes == 4 * one and cache.evictions == 0  # a: 3 blocks, b: 1 more
    c = shared + [30, 31, 32, 33]
    cache.insert(c, len(c), lambda s, e: _kv(e - s, 3))
    # Over budget by one block: the least recent leaf goes (the end of a), never the shared root.
    assert len(cache) == 4 and cache.nbytes <= cache.budget_bytes and cache.evictions == 1
    assert len(cache.match(a)) == 2 and len(cache.match(b)) == 2 and len(cache.match(c)) == 2


def test_precision_without_bf16_hardware_is_float32_without_probing(tiny_model):
    dtype, why = kv.choose_cpu_dtype(tiny_model.config, flags={"avx2", "fma"})
    assert dtype == torch.float32 and "no avx512_bf16" in why


def test_precision_with_bf16_hardware_is_measured(tiny_model):
    dtype, why = kv.choose_cpu_dtype(tiny_model.config, flags={"avx512_bf16"}, reps=2)
    assert dtype in (torch.float32, torch.bfloat16) and "one-layer probe" in why
    assert why.startswith("bfloat16" if dtype == torch.bfloat16 else "float32")
    assert tiny_model.config.num_hidden_layers == 2  # the probe works on a copy of the config


def test_engine_refuses_sliding_window_models():
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, sliding_window=8))
    assert "sliding" in kv.supports_engine(model)
