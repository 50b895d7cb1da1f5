"""Text the agent did not write (a paragraph, a reader's reply, a simulated API's body) on its way into a
prompt, a trace or a judge's transcript.

Chat templates paste a tool result into the prompt verbatim, and tokenizers turn the control strings of
every family (`<|im_end|>`, `<|start_header_id|>`, `<end_of_turn>`, ...) back into the special tokens they
name. A paragraph holding `<|im_end|>\\n<|im_start|>system` would otherwise open a new system turn, and an
echoed `<tool_call>` or `FINAL(...)` would read as the agent's own action. `neutralize` rewrites each such
string into look-alike characters (`<|im_end|>` becomes `‹|im_end|›`, `FINAL(` becomes `FINAL (`): a
reader still sees what the text said, no tokenizer sees a control token, and no parser sees an action.
It is idempotent, so a result may pass through it twice.

`fence` wraps untrusted text for a reader that must not take it as instructions (the LLM judge): a run of
backticks longer than any inside the text, so the text cannot close its own fence.
"""
from __future__ import annotations

import re

# Control strings of the chat templates users run (ChatML/Qwen, Llama 3, Gemma, Mistral, Phi, DeepSeek), the
# Hermes tool tags, thinking tags and the code-as-action tags; matched case-sensitively, as tokenizers do.
CONTROL_RE = re.compile(
    r"<\|[^<>|\n]{1,48}\|>"  # <|im_start|> <|eot_id|> <|python_tag|> <|endoftext|> <|end|> ...
    r"|<｜[^<>\n]{1,48}｜>"  # DeepSeek's full-width bars
    r"|</?(?:tool_call|tool_response|tools|think|python|answer|s|start_of_turn|end_of_turn)>"
    r"|<(?:start|end)_of_turn>|<bos>|<eos>|<pad>"
    r"|\[/?(?:INST|TOOL_CALLS|TOOL_RESULTS|AVAILABLE_TOOLS|SYSTEM_PROMPT)\]"
)
# An answer marker the loop reads from the agent's reply; in a tool result it is only quoted text.
FINAL_MARK_RE = re.compile(r"FINAL\(")
_LOOKALIKE = str.maketrans({"<": "‹", ">": "›", "[": "⟦", "]": "⟧"})


def neutralize(text: str) -> str:
    """`text` with every control string and answer marker made inert (see the module docstring)."""
    if not text:
        return text
    text = CONTROL_RE.sub(lambda m: m.group(0).translate(_LOOKALIKE), text)
    return FINAL_MARK_RE.sub("FINAL (", text)


def fence(text: str) -> str:
    """`text` between backtick fences it cannot close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    bar = "`" * max(3, longest + 1)
    return f"{bar}\n{text}\n{bar}"
