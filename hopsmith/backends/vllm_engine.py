"""Generate with vLLM's offline engine (the cloud eval image; vLLM is not installed locally).

    backend = VLLMBackend("/vol/models/hopsmith/smollm2-135m-instruct", adapter="/vol/adapters/run/sft")

The base model is loaded once with `enable_lora=True` and the adapter goes with every request as a
`LoRARequest`, so one engine serves the base and any adapter. Prompts are rendered by the model's
tokenizer with the same chat template as the HF backend (the adapter's training template, when it saved
one), so a trace looks the same to the model in training, in local eval and here. `vllm` is imported
inside the constructor: importing this module costs nothing where vLLM is absent.
"""
from __future__ import annotations

from ..models import resolve_model
from . import Generation, cut_at_stop
from .hf import check_adapter, pick_chat_template
from .templates import load_tokenizer


class VLLMBackend:
    def __init__(
        self,
        model: str = "embedded",
        *,
        adapter: str | None = None,
        max_lora_rank: int = 64,
        max_model_len: int | None = None,  # None: the model's own context length
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        llm=None,
    ):
        path = resolve_model(model)
        self.name = model if not adapter else f"{model}+{adapter}"
        if adapter:
            check_adapter(adapter)
        self.tokenizer = load_tokenizer(path, adapter)
        self.chat_template = pick_chat_template(self.tokenizer)
        if max_model_len is None:
            from transformers import AutoConfig

            max_model_len = int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", 4096) or 4096)
        if llm is None:
            from vllm import LLM

            llm = LLM(model=str(path), enable_lora=True, max_lora_rank=max_lora_rank, max_model_len=max_model_len,
                      gpu_memory_utilization=gpu_memory_utilization, seed=seed)
        self.llm = llm
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(adapter))
        self.max_context = max_model_len

    def render(self, conversation: list[dict], *, tools=None, thinking: bool = False) -> str:
        return self.tokenizer.apply_chat_template(conversation, tools=tools, chat_template=self.chat_template,
                                                  add_generation_prompt=True, tokenize=False, enable_thinking=thinking)

    def generate(self, conversations, *, tools=None, max_new_tokens=256, temperature=0.0, thinking=False, stop=None):
        from vllm import SamplingParams

        prompts = [self.render(c, tools=tools, thinking=thinking) for c in conversations]
        sizes = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        out: list[Generation | None] = [None] * len(prompts)
        live = [i for i, n in enumerate(sizes) if n + max_new_tokens <= self.max_context]
        for i in set(range(len(prompts))) - set(live):
            out[i] = Generation("", prompt_tokens=sizes[i], overflow=True)
        if live:
            # include_stop_str_in_output keeps "</tool_call>" in the reply, as the HF backend does.
            params = SamplingParams(max_tokens=max_new_tokens, temperature=float(temperature or 0.0),
                                    stop=list(stop or []), include_stop_str_in_output=True)
            results = self.llm.generate([prompts[i] for i in live], params, lora_request=self.lora, use_tqdm=False)
            for i, res in zip(live, results):
                comp = res.outputs[0]
                out[i] = Generation(cut_at_stop(comp.text, stop), prompt_tokens=sizes[i],
                                    completion_tokens=len(comp.token_ids))
        return out
