"""Local Hugging Face backend: batched, left-padded generation on CPU or GPU.

All conversations handed to `generate` are tokenised together (left padding, so every row ends where
generation starts) and decoded by one `model.generate` call per chunk of `batch_size` rows. Rows are
sorted by length first so a chunk pads little. `batch_size=1` is the one-at-a-time mode that
`benchmarks/batched_rollouts.py` compares against.
"""
from __future__ import annotations

from pathlib import Path

from . import Generation, cut_at_stop
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
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models import resolve_model

        if adapter:
            check_adapter(adapter)
        self.batch_size = max(1, int(batch_size))
        if model_obj is not None:
            # Tests and training stages hand over a model already in memory: it is used where it is (or moved
            # whole to `device`), so inputs and weights never sit on different devices.
            self.model, self.device = place_model(model_obj, device)
            self.tokenizer = tokenizer
            self.name = getattr(model_obj, "name_or_path", "in-memory")
        else:
            self.device = device or default_device()
            path = resolve_model(model)
            self.name = model
            torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(self.device)
        if adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, adapter)
            self.name = f"{self.name}+{adapter}"
            # The adapter's training template on the model's tokenizer (see templates.load_tokenizer).
            own = adapter_chat_template(adapter)
            if own:
                self.tokenizer.chat_template = own
        self.model.eval()
        # A training stage passes the template it trains with, so its probes and rollouts are prompted as trained.
        self.chat_template = chat_template or pick_chat_template(self.tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)
        # Stop on the end-of-turn token as well as the model's own end of sequence.
        stop = {self.tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                stop.add(tid)
        self.stop_ids = sorted(i for i in stop if i is not None)

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
        import torch

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
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(self.device)
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
            for row, i in enumerate(chunk):
                new = seqs[row, width:].tolist()
                n = len(new)
                for k, tok in enumerate(new):
                    if tok in self.stop_ids:
                        n = k
                        break
                text = cut_at_stop(self.tokenizer.decode(new[:n], skip_special_tokens=False), stop)
                out[i] = Generation(_strip_special(text, self.tokenizer), prompt_tokens=len(ids[i]), completion_tokens=n)
        return out


def _strip_special(text: str, tokenizer) -> str:
    # Decoding without skip_special_tokens keeps <think>/<tool_call> markers that some tokenizers mark
    # special; only padding and end-of-turn tokens are removed.
    for tok in {tokenizer.pad_token, tokenizer.eos_token, "<|im_end|>", "<|endoftext|>"}:
        if tok:
            text = text.replace(tok, "")
    return text.strip()
