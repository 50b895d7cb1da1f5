"""Local Hugging Face backend: conversations in, replies out, on CPU or GPU.

By default generation runs on the KV engine (`hopsmith/backends/kv.py`): the backend keeps the keys and
values of what it computed, so an episode's next turn prefills only what was appended (the tool result),
every episode shares one prefill of the system prompt and tool specs, decode writes its cache in place
and finished rows leave the batch. Greedy replies are the tokens `model.generate` writes. The cache is
dropped whenever the model's weights change (training stages hand in a model they are training).

`engine="generate"` is the plain path this backend had before: one left-padded `model.generate` per chunk
of `batch_size` rows, every turn re-prefilled; `benchmarks/rollout_speed.py` compares the two, and it is
used for models the engine does not handle (sliding-window or hybrid attention).

Precision: on CUDA bfloat16; on CPU float32 unless the CPU has AVX512-BF16/AMX and a start-up probe shows
bf16 faster (`kv.choose_cpu_dtype`); `engine_info` says which and why, and the eval stage records it in
the run's config.json.
"""
from __future__ import annotations

from pathlib import Path

from . import DEFAULT_KV_CACHE_GB, Generation, cut_at_stop
from .templates import CHATML_TOOLS_TEMPLATE, adapter_chat_template, inference_template  # noqa: F401 - re-exported


def pick_chat_template(tokenizer) -> str:
    """The template this tokenizer's prompts are rendered with (`hopsmith.backends.templates` decides: the
    model's own when it renders tools, an adapter's saved training template, else our ChatML-with-tools).

    A template that never mentions tools would silently drop the tool specs and the calls from the
    prompt, which is how an agent ends up never calling a tool.
    """
    return inference_template(tokenizer)


def default_device() -> str:
    """Where every stage puts a model it loads: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def place_model(model, device: str | None = None):
    """The one device rule: a model given to a backend is used where it is, or moved whole to `device`;
    inputs always go where the model's weights are, never elsewhere. A quantised model cannot move: asking
    it to is refused. Returns (model, device)."""
    from ..models import ModelError

    here = next(model.parameters()).device
    if device is None or here == _as_device(device):
        return model, here
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_loaded_in_4bit", False):
        raise ModelError(f"the model is quantised on {here}; it cannot be moved to {device}")
    return model.to(device), next(model.parameters()).device


def _as_device(device):
    import torch

    d = torch.device(device)
    return torch.device(d.type, 0) if d.type == "cuda" and d.index is None else d


def check_adapter(adapter: str | Path) -> None:
    """Refuse a path that is not a LoRA adapter directory, before any model is loaded (the CLI prints a
    ModelError as a one-line error)."""
    from ..models import ModelError

    if not (Path(adapter) / "adapter_config.json").exists():
        raise ModelError(f"--adapter {adapter}: no adapter_config.json there (not a LoRA adapter directory)")
    if not any((Path(adapter) / name).exists() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelError(f"--adapter {adapter}: adapter_config.json but no adapter_model.safetensors (training did not "
                         "finish there? rerun the stage that writes it)")


def _load(model: str, device: str, dtype: str | None):
    """(model on `device`, its tokenizer, the precision chosen and why): an asked-for dtype, bf16 on CUDA, and
    on CPU what the precision probe measured faster (`kv.choose_cpu_dtype`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model
    from . import kv

    path = resolve_model(model)
    if dtype:
        torch_dtype, precision = getattr(torch, dtype), f"{dtype}: asked for"
    elif device == "cuda":
        torch_dtype, precision = torch.bfloat16, "bfloat16: CUDA"
    else:
        torch_dtype, precision = kv.choose_cpu_dtype(AutoConfig.from_pretrained(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device), tokenizer, precision


def stop_token_ids(tokenizer) -> list[int]:
    """The end-of-turn tokens a reply stops at, as well as the model's own end of sequence."""
    stop = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            stop.add(tid)
    return sorted(i for i in stop if i is not None)


class HFBackend:
    """Generate with a local transformers model (optionally with a LoRA adapter on top)."""

    def __init__(
        self,
        model: str = "embedded",
        *,
        adapter: str | None = None,
        batch_size: int = 16,
        device: str | None = None,
        dtype: str | None = None,
        model_obj=None,
        tokenizer=None,
        chat_template: str | None = None,
        engine: str = "kv",
        kv_cache_gb: float = DEFAULT_KV_CACHE_GB,
    ):
        if engine not in ("kv", "generate"):
            raise ValueError(f"unknown HF engine {engine!r}; known: kv, generate")
        if adapter:
            check_adapter(adapter)
        self.batch_size = max(1, int(batch_size))
        precision = self._load_model(model, model_obj, tokenizer, device, dtype)
        if adapter:
            self._attach_adapter(adapter)
        self.model.eval()
        # A training stage passes the template it trains with, so its probes and rollouts are prompted as trained.
        self.chat_template = chat_template or pick_chat_template(self.tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self._start_engine(engine, kv_cache_gb, precision)

    def _load_model(self, model: str, model_obj, tokenizer, device: str | None, dtype: str | None) -> str:
        """Sets model, tokenizer, device and name; returns the precision it loaded in."""
        if model_obj is not None:
            # Tests and training stages hand over a model already in memory: it is used where it is (or moved
            # whole to `device`), so inputs and weights never sit on different devices.
            self.model, self.device = place_model(model_obj, device)
            self.tokenizer = tokenizer
            self.name = getattr(model_obj, "name_or_path", "in-memory")
            return "as handed in"
        self.device = device or default_device()
        self.name = model
        self.model, self.tokenizer, precision = _load(model, self.device, dtype)
        return precision

    def _attach_adapter(self, adapter: str) -> None:
        from peft import PeftModel

        self.model = PeftModel.from_pretrained(self.model, adapter)
        self.name = f"{self.name}+{adapter}"
        # The adapter's training template on the model's tokenizer (see templates.load_tokenizer).
        own = adapter_chat_template(adapter)
        if own:
            self.tokenizer.chat_template = own

    def _start_engine(self, engine: str, kv_cache_gb: float, precision: str) -> None:
        """The KV engine where the model supports it (else plain `generate`), and what was picked and why."""
        from . import kv

        self.engine = None
        why_not = kv.supports_engine(_base(self.model)) if engine == "kv" else "engine='generate' asked for"
        if why_not is None:
            self.engine = kv.KVEngine(self.model, stop_ids=self.stop_ids, cache_bytes=int(kv_cache_gb * 2**30),
                                      decode=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False))
        self.plain_stats = kv.EngineStats()
        self.engine_info = {
            "engine": "kv" if self.engine else "generate",
            "why": None if self.engine else why_not,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "precision": precision,
            "kv_cache_gb": kv_cache_gb if self.engine else None,
        }

    @property
    def stats(self):
        """What was computed: the engine's counters, or the plain path's."""
        return self.engine.stats if self.engine else self.plain_stats

    def render(self, conversation: list[dict], *, tools=None, thinking: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            conversation,
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=True,
            tokenize=False,
            enable_thinking=thinking,
        )

    def generate(self, conversations, *, tools=None, max_new_tokens=256, temperature=0.0, thinking=False, stop=None):
        prompts = [self.render(c, tools=tools, thinking=thinking) for c in conversations]
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        out: list[Generation | None] = [None] * len(prompts)
        live = []
        for i, row in enumerate(ids):
            if len(row) + max_new_tokens > self.max_context:
                out[i] = Generation("", prompt_tokens=len(row), overflow=True)
            else:
                live.append(i)
        live.sort(key=lambda i: len(ids[i]))
        for start in range(0, len(live), self.batch_size):
            chunk = live[start : start + self.batch_size]
            if self.engine is not None:
                news = self.engine.generate([ids[i] for i in chunk], max_new_tokens=max_new_tokens,
                                            temperature=temperature, stop_strings=stop)
            else:
                news = self._generate_plain([ids[i] for i in chunk], max_new_tokens, temperature, stop)
            for i, new in zip(chunk, news):
                out[i] = self._reply(new, len(ids[i]), stop)
        return out

    def _reply(self, new: list[int], prompt_tokens: int, stop) -> Generation:
        n = next((k for k, tok in enumerate(new) if tok in self.stop_ids), len(new))
        text = cut_at_stop(self.tokenizer.decode(new[:n], skip_special_tokens=False), stop)
        return Generation(_strip_special(text, self.tokenizer), prompt_tokens=prompt_tokens, completion_tokens=n)

    def _generate_plain(self, rows: list[list[int]], max_new_tokens, temperature, stop) -> list[list[int]]:
        """One left-padded `model.generate` over the rows: the path before the KV engine, kept as the
        fallback and as the benchmarks' baseline (so it stays as it was, StopStringCriteria and all)."""
        import torch

        batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.device)
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            seqs = self.model.generate(**batch, **kwargs)
        width = batch["input_ids"].shape[1]
        st = self.plain_stats
        st.calls += 1
        st.rows += len(rows)
        st.prompt_tokens += sum(len(r) for r in rows)
        st.prefill_tokens += width * len(rows)  # left padding is computed too
        st.decode_steps += seqs.shape[1] - width - 1
        st.generated_tokens += (seqs.shape[1] - width) * len(rows)
        return [seqs[row, width:].tolist() for row in range(len(rows))]


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _strip_special(text: str, tokenizer) -> str:
    # Decoding without skip_special_tokens keeps <think>/<tool_call> markers that some tokenizers mark
    # special; only padding and end-of-turn tokens are removed.
    for tok in {tokenizer.pad_token, tokenizer.eos_token, "<|im_end|>", "<|endoftext|>"}:
        if tok:
            text = text.replace(tok, "")
    return text.strip()
