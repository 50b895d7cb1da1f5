"""The local generation engine: keys and values are computed once and kept.

    engine = KVEngine(model, stop_ids=[2], decode=tokenizer.decode, cache_bytes=3 * 2**30)
    replies = engine.generate([prompt_ids, ...], max_new_tokens=96, stop_strings=["</tool_call>"])

An agent episode grows by appending: turn t+1's prompt is turn t's prompt, the reply, and a tool result.
Every episode of a batch also starts with the same system prompt and tool specs. `PrefixCache` keeps the
keys and values of everything the engine has prefilled or decoded, in blocks of `block_size` tokens keyed
by their tokens *and everything before them* (the way vLLM's automatic prefix caching does), so a prompt
finds its longest cached prefix by walking its own blocks. Where the chat template writes an earlier reply
differently from how it was generated, the match simply stops at that block and the rest is prefilled.
Least-recently-used blocks are evicted past a byte budget; a block's ancestors are always touched after it,
so eviction takes leaves first and a kept block's whole prefix stays kept.

`generate` prefills each row alone (only its uncached suffix, no padding; the second row of a batch
already finds the first row's system prompt in the cache), then decodes all rows together in one
preallocated buffer, left-aligned so every row writes the same column: keys and values are written in
place (`_BufferLayer`), never concatenated per step. A row that finishes stores its keys and values in the
cache and leaves the batch (the last live row moves into its slot), so finished rows cost nothing.
Stop strings are matched on the decoded tail of each row: no per-call `StopStringCriteria` to build.

Greedy outputs are the model's own argmax at every step, token for token what `model.generate` writes on
the same prompt (tests/test_kv_engine.py checks it in float64 on ragged multi-turn batches).

Why not transformers' continuous batching: measured on this project's 2-core CPU with the embedded model
(16 agent prompts, 32 new tokens), `generate_batch`'s paged cache shared the system prompt well (turn 1:
18 s vs 86 s for padded `generate`), but a second turn of ~730 new tokens per row took 197 s: on CPU its
SDPA path packs every row into one sequence with a dense mask, so each query attends (masked) to every
row's keys, and each decode step gathers all rows' pages. It fits GPUs with flash-attention kernels; here
a dense per-row buffer wins.
"""
from __future__ import annotations

import copy
import inspect
import json
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from . import DEFAULT_KV_CACHE_GB

DEFAULT_CACHE_BYTES = int(DEFAULT_KV_CACHE_GB * 2**30)


@dataclass
class EngineStats:
    """What the engine computed and what it reused, summed over calls."""

    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0  # tokens of every prompt handed in
    prefill_tokens: int = 0  # prompt tokens the model computed (the rest came from the cache)
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused
    decode_steps: int = 0  # batched forward passes of one token per row
    generated_tokens: int = 0
    cache_evictions: int = 0  # blocks evicted for the byte budget
    cache_resets: int = 0  # times the cache was dropped because the weights changed
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def supports_engine(model) -> str | None:
    """Why the engine cannot run this model, or None. It needs full attention in every layer: the decode
    mask it writes has no sliding window, and hybrid/linear-attention caches keep other state."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(cfg, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return f"layer types {sorted(set(types))} (the engine handles full attention only)"
    if types is None and getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "a sliding attention window (the engine handles full attention only)"
    if getattr(cfg, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    return None


# -- precision ---------------------------------------------------------------------------------------

def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_cpu_dtype(config, flags: set[str] | None = None, reps: int = 3) -> tuple[torch.dtype, str]:
    """float32, or bfloat16 where this CPU runs the model's own layer faster in it.

    Without AVX512-BF16 or AMX-BF16, bf16 is emulated and 5-8x slower, so fp32 is taken without probing.
    With them, one decoder layer of the model's architecture (random weights, tiny vocabulary: built in
    milliseconds whatever the model's size) is timed in both dtypes on a prefill (128 tokens) and a
    batched decode step (16 rows over 256 cached tokens), interleaved, best of `reps`. bf16 must win both
    by 20%: it also costs accuracy, and a plain matmul probe misleads (on an AVX512-BF16 Xeon without AMX
    it showed bf16 2x faster while the model's prefill ran 1.5x slower). Once per process and config."""
    flags = cpu_flags() if flags is None else flags
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return torch.float32, "float32: this CPU has no avx512_bf16/amx_bf16"
    return _probe_dtype(config.to_json_string(use_diff=False), reps)


@lru_cache(maxsize=8)
def _probe_dtype(config_json: str, reps: int) -> tuple[torch.dtype, str]:

    from transformers import AutoConfig, AutoModelForCausalLM

    data = json.loads(config_json)
    probe_cfg = AutoConfig.for_model(data.pop("model_type"), **data)
    text = probe_cfg.get_text_config() if hasattr(probe_cfg, "get_text_config") else probe_cfg
    text.num_hidden_layers, text.vocab_size = 1, 256
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = text.layer_types[:1]
    torch.manual_seed(0)
    models = {dt: AutoModelForCausalLM.from_config(probe_cfg).to(dt).eval() for dt in (torch.float32, torch.bfloat16)}
    prompt, rows = torch.randint(0, 256, (1, 128)), torch.randint(0, 256, (16, 257))
    best = {(dt, kind): float("inf") for dt in models for kind in ("prefill", "decode")}
    with torch.inference_mode():
        kw = _cache_kwarg(models[torch.float32])
        caches = {dt: m(rows[:, :-1], use_cache=True)[kw] for dt, m in models.items()}
        for _ in range(reps):
            for dt, m in models.items():
                t0 = time.perf_counter()
                m(prompt)
                t1 = time.perf_counter()
                m(rows[:, -1:], **{kw: copy.deepcopy(caches[dt])})  # a copy: the step appends to it
                t2 = time.perf_counter()
                best[dt, "prefill"] = min(best[dt, "prefill"], t1 - t0)
                best[dt, "decode"] = min(best[dt, "decode"], t2 - t1)
    ms = {k: v * 1e3 for k, v in best.items()}
    f32, b16 = torch.float32, torch.bfloat16
    probe = (f"one-layer probe: prefill bf16 {ms[b16, 'prefill']:.1f} vs fp32 {ms[f32, 'prefill']:.1f} ms, "
             f"decode bf16 {ms[b16, 'decode']:.1f} vs fp32 {ms[f32, 'decode']:.1f} ms")
    if all(best[b16, k] < 0.8 * best[f32, k] for k in ("prefill", "decode")):
        return torch.bfloat16, f"bfloat16: {probe}"
    return torch.float32, f"float32: {probe}"


# -- the prefix cache --------------------------------------------------------------------------------

class _Block:
    __slots__ = ("id", "key", "parent", "kv", "nbytes")

    def __init__(self, id_: int, key: tuple, parent: int, kv: torch.Tensor):
        self.id, self.key, self.parent, self.kv = id_, key, parent, kv
        self.nbytes = kv.numel() * kv.element_size()


class PrefixCache:
    """Keys and values of token blocks, keyed by (parent block id, the block's tokens): a block is found
    only under the exact prefix it was computed after. `kv` of a block: [layers, 2, kv_heads, block, dim]."""

    ROOT = -1

    def __init__(self, block_size: int = 16, budget_bytes: int = DEFAULT_CACHE_BYTES):
        self.block_size = int(block_size)
        self.budget_bytes = int(budget_bytes)
        self._blocks: OrderedDict[tuple, _Block] = OrderedDict()  # least recently used first
        self._by_id: dict[int, _Block] = {}
        self._children: dict[int, set[tuple]] = {}
        self._next_id = 0
        self.nbytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def clear(self) -> None:
        self._blocks.clear()
        self._by_id.clear()
        self._children.clear()
        self.nbytes = 0

    def match(self, ids: Sequence[int]) -> list[_Block]:
        """The cached blocks that begin `ids`, in order (the longest cached prefix, whole blocks)."""
        chain: list[_Block] = []
        if not self.enabled:
            return chain
        parent, bs = self.ROOT, self.block_size
        for start in range(0, len(ids) - bs + 1, bs):
            block = self._blocks.get((parent, tuple(ids[start : start + bs])))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        self._touch(chain)
        return chain

    def insert(self, ids: Sequence[int], n_tokens: int, kv_of: Callable[[int, int], torch.Tensor]) -> None:
        """Store the whole blocks of `ids[:n_tokens]`; `kv_of(start, end)` gives their keys and values
        ([layers, 2, kv_heads, end - start, dim], copied here). Blocks already cached are only touched."""
        if not self.enabled:
            return
        parent, bs, chain = self.ROOT, self.block_size, []
        for start in range(0, n_tokens - bs + 1, bs):
            key = (parent, tuple(ids[start : start + bs]))
            block = self._blocks.get(key)
            if block is None:
                block = _Block(self._next_id, key, parent, kv_of(start, start + bs).clone())
                self._next_id += 1
                self._blocks[key] = block
                self._by_id[block.id] = block
                self._children.setdefault(parent, set()).add(key)
                self.nbytes += block.nbytes
            chain.append(block)
            parent = block.id
        self._touch(chain)
        self._evict()

    def _touch(self, chain: list[_Block]) -> None:
        # Deepest first, so every block is more recent than its descendants and LRU eviction takes leaves.
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    def _evict(self) -> None:
        while self.nbytes > self.budget_bytes and self._blocks:
            _, block = next(iter(self._blocks.items()))
            self._remove(block)

    def _remove(self, block: _Block) -> None:
        for child in list(self._children.pop(block.id, ())):
            if child in self._blocks:
                self._remove(self._blocks[child])
        del self._blocks[block.key]
        del self._by_id[block.id]
        siblings = self._children.get(block.parent)
        if siblings is not None:
            siblings.discard(block.key)
        self.nbytes -= block.nbytes
        self.evictions += 1


# -- the engine --------------------------------------------------------------------------------------

class _BufferLayer(DynamicLayer):
    """One layer's keys and values in a preallocated buffer ([batch, kv_heads, width, dim] views), written
    in place at `length`; attention reads the filled part as a view. No torch.cat per decode step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.kbuf, self.vbuf, self.length = keys, values, length
        self.device = keys.device
        self.is_initialized = True
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def lazy_initialization(self, key_states, value_states) -> None:  # the buffer is already there
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self.kbuf[:, :, self.length : end].copy_(key_states)
        self.vbuf[:, :, self.length : end].copy_(value_states)
        self.length = end
        self.keys, self.values = self.kbuf[:, :, :end], self.vbuf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_kwarg(model) -> str:
    """`cache` since transformers 5.24 (`past_key_values` is deprecated there), `past_key_values` before."""
    params = inspect.signature(type(_base_model(model)).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def weights_fingerprint(model) -> int:
    """Changes whenever a parameter is written in place (optimizer steps, load_state_dict bump tensor
    version counters) or replaced: the cache must not outlive the weights it was computed with."""
    return hash(tuple((p.data_ptr(), p._version) for p in model.parameters()))


class KVEngine:
    """Greedy or sampled generation over token-id prompts with a persistent prefix cache (module doc)."""

    def __init__(
        self,
        model,
        *,
        stop_ids: Sequence[int],
        decode: Callable[[list[int]], str],
        block_size: int = 16,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        prefill_chunk: int = 2048,
    ):
        why = supports_engine(model)
        if why:
            raise ValueError(f"the KV engine cannot run a model with {why}")
        self.model = model
        self.stop_ids = set(int(i) for i in stop_ids)
        self.decode = decode
        self.cache = PrefixCache(block_size, cache_bytes)
        self.prefill_chunk = int(prefill_chunk)
        self.stats = EngineStats()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self._cache_kw = _cache_kwarg(model)
        self._fingerprint = None
        self._lock = threading.Lock()  # the cache is shared state; callers in threads take turns

    def _dtype_device(self):
        p = next(self.model.parameters())
        dtype = p.dtype if p.dtype.is_floating_point else torch.float32
        return dtype, p.device

    def _forward(self, layers: list[_BufferLayer], input_ids, position_ids, attention_mask=None):
        return self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                          use_cache=True, logits_to_keep=1, **{self._cache_kw: Cache(layers=layers)})

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop_strings: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """The new tokens of each prompt, ending with a stop id when one was written (stop strings end a
        row after the token that completes them; the caller cuts the text)."""
        with self._lock:
            return self._generate(prompts, max_new_tokens, temperature, stop_strings, generator)

    def _generate(self, prompts, max_new_tokens, temperature, stop_strings, generator) -> list[list[int]]:
        if not prompts:
            return []
        if max_new_tokens < 1:
            return [[] for _ in prompts]
        self._drop_stale_cache()
        stops = [s for s in (stop_strings or ()) if s]
        tail = max((len(s) for s in stops), default=0) + 4  # tokens decoded to look for a stop string
        B = len(prompts)
        lens = [len(p) for p in prompts]
        if min(lens) < 1:
            raise ValueError("every prompt needs at least one token")
        P = max(lens)
        kv, mask = self._buffers(lens, P + max_new_tokens)
        self.stats.calls += 1
        self.stats.rows += B

        gen: list[list[int]] = [[] for _ in range(B)]
        t0 = time.perf_counter()
        for i, ids in enumerate(prompts):
            logits = self._prefill(kv, i, list(ids), P - lens[i], kv.device)
            gen[i].append(self._pick(logits[None], temperature, generator)[0])
        t1 = time.perf_counter()
        self.stats.prefill_seconds += t1 - t0

        slots = list(range(B))  # slot s of the buffer holds row slots[s]
        done = [self._finished(gen[r], max_new_tokens, stops, tail) for r in range(B)]
        self._retire(kv, mask, slots, [s for s in range(B) if done[slots[s]]], prompts, gen, lens, P, P)
        finished = lambda g: self._finished(g, max_new_tokens, stops, tail)  # noqa: E731
        self._decode(kv, mask, slots, prompts, gen, lens, P, finished, temperature, generator)
        self.stats.decode_seconds += time.perf_counter() - t1
        self.stats.generated_tokens += sum(len(g) for g in gen)
        self.stats.cache_evictions = self.cache.evictions
        return gen

    def _drop_stale_cache(self) -> None:
        """Forget every cached block when the weights changed since they were computed (a training step)."""
        fingerprint = weights_fingerprint(self.model)
        if fingerprint != self._fingerprint:
            if self._fingerprint is not None and len(self.cache):
                self.stats.cache_resets += 1
            self.cache.clear()
            self._fingerprint = fingerprint

    def _buffers(self, lens: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's key/value buffer, written in place, and its attention mask: row i's prompt sits in
        columns [P - lens[i], P) with P the longest, so every row writes decode step s at column P + s."""
        dtype, device = self._dtype_device()
        B, P = len(lens), max(lens)
        kv = torch.empty((self.n_layers, 2, B, self.n_kv_heads, width, self.head_dim), dtype=dtype, device=device)
        mask = torch.zeros((B, 1, 1, width), dtype=torch.bool, device=device)
        for i, n in enumerate(lens):
            if n < P:
                kv[:, :, i, :, : P - n].zero_()  # masked, but NaN bit patterns would still poison softmax
            mask[i, :, :, P - n :] = True
        return kv, mask

    def _decode(self, kv, mask, slots, prompts, gen, lens, P, finished, temperature, generator) -> None:
        """One token per live row per step, until every row is finished (rows leave the batch as they end)."""
        width = P
        layers: list[_BufferLayer] | None = None
        device = kv.device
        while slots:
            n = len(slots)
            if layers is None or layers[0].kbuf.shape[0] != n:
                layers = [_BufferLayer(kv[l, 0, :n], kv[l, 1, :n], width) for l in range(self.n_layers)]
            inp = torch.tensor([[gen[r][-1]] for r in slots], device=device)
            pos = torch.tensor([[lens[r] + len(gen[r]) - 1] for r in slots], device=device)
            out = self._forward(layers, inp, pos, mask[:n, :, :, : width + 1])
            width += 1
            self.stats.decode_steps += 1
            for s, tok in enumerate(self._pick(out.logits[:, -1], temperature, generator)):
                gen[slots[s]].append(tok)
            done = [s for s in range(n) if finished(gen[slots[s]])]
            if done:
                self._retire(kv, mask, slots, done, prompts, gen, lens, P, width)

    def _prefill(self, kv: torch.Tensor, i: int, ids: list[int], start: int, device) -> torch.Tensor:
        """Fill row i's keys and values for `ids` (cached blocks copied, the rest computed); the logits
        of its last token."""
        n, bs = len(ids), self.cache.block_size
        chain = self.cache.match(ids)
        reuse = min(len(chain) * bs, n - 1)  # the last token is always computed: its logits are needed
        for k, block in enumerate(chain[: -(-reuse // bs)]):
            kv[:, :, i, :, start + k * bs : start + (k + 1) * bs].copy_(block.kv)
        row = kv[:, :, i : i + 1, :, start : start + n]
        layers = [_BufferLayer(row[l, 0], row[l, 1], reuse) for l in range(self.n_layers)]
        ids_t = torch.tensor(ids, device=device)
        logits = None
        for c0 in range(reuse, n, self.prefill_chunk):
            c1 = min(n, c0 + self.prefill_chunk)
            out = self._forward(layers, ids_t[None, c0:c1], torch.arange(c0, c1, device=device)[None])
            logits = out.logits[0, -1]
        self.stats.prompt_tokens += n
        self.stats.cached_tokens += reuse
        self.stats.prefill_tokens += n - reuse
        self.cache.insert(ids, n, lambda a, b: kv[:, :, i, :, start + a : start + b])
        return logits

    def _pick(self, logits: torch.Tensor, temperature: float, generator) -> list[int]:
        if temperature and temperature > 0:
            probs = torch.softmax(logits.float() / float(temperature), dim=-1)
            return torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
        return logits.argmax(dim=-1).tolist()

    def _finished(self, tokens: list[int], max_new_tokens: int, stops: list[str], tail: int) -> bool:
        if tokens[-1] in self.stop_ids or len(tokens) >= max_new_tokens:
            return True
        if stops:
            text = self.decode(tokens[-tail:])
            return any(s in text for s in stops)
        return False

    def _retire(self, kv, mask, slots, finished, prompts, gen, lens, P, width) -> None:
        """Store finished rows' keys and values, then close their slots by moving the last live row in."""
        for s in sorted(finished, reverse=True):
            r = slots[s]
            tokens = list(prompts[r]) + gen[r][:-1]  # the last token was never fed: it has no keys yet
            start = P - lens[r]
            self.cache.insert(tokens, len(tokens), lambda a, b, s=s, start=start: kv[:, :, s, :, start + a : start + b])
            last = len(slots) - 1
            if s != last:
                kv[:, :, s, :, :width].copy_(kv[:, :, last, :, :width])
                mask[s].copy_(mask[last])
                slots[s] = slots[last]
            slots.pop()
