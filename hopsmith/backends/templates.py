"""Chat templates: which one renders a model's prompts, which one trains it, which tokens are the assistant's.

    templates = chat_templates(tokenizer)          # .inference, .training, .source
    row = tokenize_conversation(tokenizer, messages, tools, templates.training)   # input_ids, labels (-100 off the assistant)

Inference: a model's own template when it renders tool calls and tool results (Qwen2.5, Qwen3, Llama 3.1/3.2),
else, for a ChatML model (SmolLM2), our ChatML-with-tools template `hopsmith/templates/chatml_tools.jinja`; a
template that renders no tools and is not ChatML is refused (the agent would never see its tools).

Training needs to know which tokens the assistant wrote. TRL ships marked (`{% generation %}`) training variants
of the templates it knows (`trl.get_training_chat_template`: Qwen2.5 -> qwen2_5_training, Qwen3 ->
qwen3_training, which also renders every assistant turn's think block so that a prompt stays a prefix of the
conversation); our ChatML template carries its own markers. Where no marked variant exists (Llama 3.2: TRL
only patches the original Llama 3 template, which renders no tools) the model's own template trains, and the
assistant's tokens are found by rendering the conversation prefix by prefix: what rendering message k adds
after the generation prompt of messages[:k] is the assistant's.

A trained adapter saves its training template with its tokenizer; `chat_templates` of that tokenizer returns
it for inference too, so an adapter's prompts are rendered exactly as its training sequences were.
`check_prompts_are_prefixes` proves that for one conversation (SFT runs it on its first trace).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..models import ModelError

CHATML_TOOLS_TEMPLATE = resources.files("hopsmith").joinpath("templates/chatml_tools.jinja").read_text()

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ModelError):
    """The model's chat template cannot serve the agent or its training (the CLI prints it as one line)."""


@dataclass(frozen=True)
class ChatTemplates:
    inference: str  # renders the base model's prompts
    training: str  # renders training sequences, and the prompts of an adapter trained with it
    source: str  # own | trl | chatml: where the training template came from

    @property
    def marked(self) -> bool:
        return has_generation_markers(self.training)


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and _GENERATION.search(template) is not None


def _own_template(tokenizer) -> str:
    own = tokenizer.chat_template or ""
    if isinstance(own, dict):  # templates shipped as named variants
        own = own.get("default", "")
    return own


def renders_tools(tokenizer, template: str) -> bool:
    """Does `template` show the tool specs, the assistant's call (name and arguments) and the tool's result?
    A template that drops any of them would train and prompt an agent that never sees its tools."""
    name, key, value, result, spec = "fn_a81c", "arg_b93d", "val_c27e", "res_d46f", "spec_e5a0"
    tools = [{"type": "function", "function": {"name": name, "description": spec,
                                               "parameters": {"type": "object", "properties": {key: {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {key: value}}}]},
                {"role": "tool", "name": name, "content": result}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that raises on a tool conversation renders no tools
        return False
    calls = text.split("hi", 1)[-1]  # the spec's own example must not count as the assistant's call
    return all(s in text for s in (spec, result)) and all(s in calls for s in (name, key, value))


def inference_template(tokenizer) -> str:
    """The template that renders this tokenizer's prompts (see the module docstring)."""
    own = _own_template(tokenizer)
    if own and renders_tools(tokenizer, own):
        return own
    if own and "<|im_start|>" not in own:
        raise TemplateError(
            "this model's chat template renders no tool calls and is not ChatML; "
            "supply a template with tools (see hopsmith/templates/chatml_tools.jinja)")
    return CHATML_TOOLS_TEMPLATE


def chat_templates(tokenizer) -> ChatTemplates:
    """The inference template and the matching training template of a tokenizer."""
    inference = inference_template(tokenizer)
    if inference == CHATML_TOOLS_TEMPLATE:
        return ChatTemplates(inference, CHATML_TOOLS_TEMPLATE, "chatml")
    if has_generation_markers(inference):  # an adapter's saved training template, or a marked original
        return ChatTemplates(inference, inference, "own")
    try:
        from trl import get_training_chat_template
    except ImportError:  # the vLLM image has no TRL; it only renders prompts
        return ChatTemplates(inference, inference, "own")
    try:
        training = get_training_chat_template(tokenizer)
    except ValueError:  # TRL knows no marked variant of this template (Llama 3.2): mask by prefixes
        return ChatTemplates(inference, inference, "own")
    if training is None:
        return ChatTemplates(inference, inference, "own")
    if not renders_tools(tokenizer, training):
        raise TemplateError("TRL's training variant of this model's chat template renders no tools")
    return ChatTemplates(inference, training, "trl")


def adapter_chat_template(adapter) -> str | None:
    """The chat template an adapter was trained with, as it saved it: `chat_template.jinja` (older saves
    kept it in `tokenizer_config.json`); None when it saved none."""

    path = Path(adapter)
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text()
    config = path / "tokenizer_config.json"
    if config.exists():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def load_tokenizer(model_path, adapter=None):
    """The model directory's tokenizer, with the adapter's training template when it saved one.

    Only the template (a text file) comes from the adapter; the tokenizer files are the model's. So the
    vLLM image (whose transformers is older than the training image's) never reads tokenizer files the
    training image wrote, and both images render an adapter's prompts with the template it trained with."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = adapter_chat_template(adapter) if adapter else None
    if template:
        tokenizer.chat_template = template
    return tokenizer


def render(tokenizer, template: str, messages: list[dict], tools=None, *, add_generation_prompt: bool = True,
           thinking: bool | None = None) -> str:
    kw = {} if thinking is None else {"enable_thinking": thinking}
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **kw)


def assistant_spans(tokenizer, template: str, messages: list[dict], tools=None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the assistant wrote, found prefix by prefix:
    message k's span is what rendering messages[:k+1] adds after the generation prompt of messages[:k]."""
    full = render(tokenizer, template, messages, tools, add_generation_prompt=False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, template, messages[:k], tools, add_generation_prompt=True)
        upto = render(tokenizer, template, messages[: k + 1], tools, add_generation_prompt=False)
        if not upto.startswith(prompt) or not full.startswith(upto):
            raise TemplateError(
                f"the chat template does not render message {k} as a continuation of the ones before it, so the "
                "assistant's tokens cannot be told apart; use a template with {% generation %} markers")
        spans.append((len(prompt), len(upto)))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict], tools, template: str) -> dict:
    """input_ids, labels (-100 on every token the assistant did not write) and attention_mask of a conversation.

    With `{% generation %}` markers the mask is the template's; without, it comes from `assistant_spans`.
    Raises TemplateError when the conversation has no assistant token."""
    if has_generation_markers(template):
        out = tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=True,
                                            return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        text, spans = assistant_spans(tokenizer, template, messages, tools)
        enc = tokenizer(text, add_special_tokens=False)
        ids = list(enc["input_ids"])
        mask = [0] * len(ids)
        for a, b in spans:
            # As transformers does for generation markers: the tokens from the one holding the span's first
            # character to the one holding its last (characters a tokenizer maps to no token are skipped).
            first = next((t for c in range(a, b) if (t := enc.char_to_token(c)) is not None), None)
            last = next((t for c in range(b - 1, a - 1, -1) if (t := enc.char_to_token(c)) is not None), None)
            if first is not None and last is not None:
                mask[first: last + 1] = [1] * (last + 1 - first)
    if not any(mask):
        raise TemplateError("no assistant tokens in the rendered conversation")
    return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)], "attention_mask": [1] * len(ids)}


def check_prompts_are_prefixes(tokenizer, messages: list[dict], tools, templates: ChatTemplates,
                               *, thinking: bool | None = None) -> int:
    """Every prompt the agent would be given mid-conversation, rendered with the template inference uses after
    training (the training template), is a token prefix of the training sequence, and the first prompt is the
    same under the base model's inference template. `thinking` (default: whether the assistant's turns think)
    is the agent's setting, which decides how a template like Qwen3's opens the assistant's turn. Returns the
    number of prompts checked; raises TemplateError."""
    if thinking is None:
        thinking = any("<think>" in (m.get("content") or "") for m in messages if m["role"] == "assistant")
    full = tokenize_conversation(tokenizer, messages, tools, templates.training)["input_ids"]
    checked = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, templates.training, messages[:k], tools, thinking=thinking)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if full[: len(ids)] != ids:
            raise TemplateError(f"the prompt before assistant message {k} is not a prefix of the training sequence")
        if checked == 0:
            base = render(tokenizer, templates.inference, messages[:k], tools, thinking=thinking)
            if tokenizer(base, add_special_tokens=False)["input_ids"] != ids:
                raise TemplateError("the training template renders the first prompt differently from the inference template")
        checked += 1
    return checked
