"""Reading a model's reply: `<think>` blocks, imitated turns, tool calls, final answers, answer normalisation.

The ground floor of the text every other floor reads: the backends strip thinking from a reply, the
extractor cleans its answer, the environments parse actions, the judge and the metrics normalise answers.

Action formats: the loop only needs two things from a format: `parse(text) -> Action` and `assistant_message(text,
action)` (the chat message stored in the trace, the shape TRL's SFTTrainer takes). `HermesFormat` reads
Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks, the format of Qwen and
of our ChatML template for SmolLM. `CodeFormat` ("python") reads seed 004's code-as-action protocol,
`<python>...</python>` then `<answer>...</answer>`, through the same interface.

Final-answer convention: a reply with no tool call ends the episode. Its answer is the text inside
`FINAL(...)` if present, else the first non-empty line after the last `Answer:` / `The answer is:`, else
the reply's first non-empty line; `<think>` blocks are kept in the trace and stripped from the answer.
Taking one line, not the whole reply, keeps a rambling reply from scoring on containment accuracy.
A small model sometimes goes on to write the tool's reply itself (`<tool_response>...`) or a new chat
turn (`<|im_start|>...`): the answer is read only from the text before such a marker, so an imitated
tool reply is never taken for an answer; a reply with nothing before it has an empty answer, which the
loop records as "empty_answer" (no prediction).
"""
from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from typing import Protocol

THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.S)
TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
# The first FINAL( of a reply; its answer runs to the matching ")" (answers may hold parentheses,
# "Nightwing (Dick Grayson)"), or to the end of the line when the model never closed it.
FINAL_RE = re.compile(r"FINAL\(")
ANSWER_RE = re.compile(r"\b(?:final answer|answer)(?: is)?\s*[:：]", re.I)
# Where a reply stops being the assistant's own words: an imitated tool reply or a new chat turn.
IMITATION_RE = re.compile(r"<tool_response>|</tool_response>|<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>")


@dataclass
class ToolCall:
    """One call as the model wrote it. `error` is set when it cannot be executed as written."""

    name: str | None
    arguments: dict = field(default_factory=dict)
    raw: str = ""
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


@dataclass
class Action:
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None  # set when the reply is final
    thinking: str = ""

    @property
    def is_final(self) -> bool:
        return not self.calls


class ActionFormat(Protocol):
    name: str

    def parse(self, text: str) -> Action: ...

    def assistant_message(self, text: str, action: Action) -> dict: ...


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str | None) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in (s or "").lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def strip_thinking(text: str) -> str:
    return THINK_RE.sub("", text).strip()


def thinking_of(text: str) -> str:
    found = re.findall(r"<think>(.*?)(?:</think>|$)", text, re.S)
    return "\n".join(s.strip() for s in found)


def reply_body(text: str) -> str:
    """A reply's own words: thinking removed, cut where it starts imitating a tool reply or a new turn."""
    return own_text(strip_thinking(text))


def extract_answer(text: str) -> str:
    """The answer part of a final reply (see the module docstring for the convention)."""
    body = reply_body(text)
    final = FINAL_RE.search(body)
    if final:
        return final_answer_at(body, final.end()).strip().strip('"').strip()
    marks = list(ANSWER_RE.finditer(body))
    if marks:
        body = body[marks[-1].end():]
    return next((line.strip() for line in body.split("\n") if line.strip()), "")


def final_answer_at(text: str, start: int) -> str:
    """The text from `start` (just after "FINAL(") to its balanced ")" on the same line; the rest of the
    line when it is never balanced. `FINAL(Stanley) but FINAL(x)` gives "Stanley", not everything between."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "\n":
            break
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                return text[start:i]
            depth -= 1
    end = text.find("\n", start)
    return text[start:] if end == -1 else text[start:end]


def own_text(text: str) -> str:
    """The reply up to where it stops being the model's own words (an imitated tool reply or chat turn)."""
    cut = IMITATION_RE.search(text)
    return text if cut is None else text[: cut.start()]


class HermesFormat:
    """`<tool_call>` JSON blocks (Qwen2.5/Qwen3, Hermes, our ChatML-with-tools template)."""

    name = "hermes"

    def parse(self, text: str) -> Action:
        thinking = thinking_of(text)
        # Calls after an imitated <tool_response> or chat turn are the model echoing, not acting.
        body = reply_body(text)
        calls = [self._parse_call(m.group(1)) for m in TOOL_CALL_RE.finditer(body)]
        if not calls and (bare := _bare_call(body)) is not None:
            calls = [bare]
        if calls:
            return Action(calls=calls, thinking=thinking)
        return Action(answer=extract_answer(text), thinking=thinking)

    @staticmethod
    def _parse_call(raw: str) -> ToolCall:
        raw = raw.strip()
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            return ToolCall(None, raw=raw, error=f"tool call is not valid JSON ({exc.msg} at char {exc.pos})")
        if not isinstance(obj, dict):
            return ToolCall(None, raw=raw, error="tool call must be a JSON object with 'name' and 'arguments'")
        name = obj.get("name")
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            # Some models double-encode the arguments; accept that when it decodes cleanly.
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return ToolCall(name, raw=raw, error="'arguments' is a string that is not a JSON object")
        if not isinstance(name, str) or not name:
            return ToolCall(None, raw=raw, error="tool call has no 'name'")
        if not isinstance(args, dict):
            return ToolCall(name, raw=raw, error="'arguments' must be a JSON object")
        return ToolCall(name, args, raw=raw)

    def assistant_message(self, text: str, action: Action) -> dict:
        """The trace message: well-formed calls become `tool_calls`; the rest of the text (thinking,
        prose, and any malformed call verbatim) stays in `content`, so the trace keeps what was said."""
        if action.is_final:
            return {"role": "assistant", "content": text}
        if not TOOL_CALL_RE.search(text) and (bare := _bare_call(strip_thinking(text))) is not None:
            # Llama 3.x's own call format; its template renders the call back from tool_calls alone.
            thinking = "\n".join(re.findall(r"<think>.*?(?:</think>|$)", text, re.S))
            return {"role": "assistant", "content": thinking,
                    "tool_calls": [{"type": "function", "function": {"name": bare.name, "arguments": bare.arguments}}]}
        content = text
        structured = []
        own = len(own_text(text))  # calls past an imitated tool reply stay text, as parse() read them
        for m in reversed([m for m in TOOL_CALL_RE.finditer(text) if m.start() < own]):
            call = self._parse_call(m.group(1))
            if call.valid:
                structured.append({"type": "function", "function": {"name": call.name, "arguments": call.arguments}})
                content = content[: m.start()] + content[m.end() :]
        structured.reverse()
        message = {"role": "assistant", "content": content.strip()}
        if structured:
            message["tool_calls"] = structured
        return message


def _bare_call(body: str) -> ToolCall | None:
    """A reply that is one JSON object {"name", "parameters"|"arguments"} and nothing else: the tool-call format
    Llama 3.x's own chat template asks for and renders (optionally after <|python_tag|>)."""
    raw = body.strip().removeprefix("<|python_tag|>").strip()
    if not (raw.startswith("{") and raw.endswith("}")):
        return None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "name" not in obj or not ({"parameters", "arguments"} & set(obj)):
        return None
    call = HermesFormat._parse_call(raw)
    return call if call.valid else None



PYTHON_RE = re.compile(r"<python>(.*?)(</python>|$)", re.S)
ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)
_FENCE_RE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*[ \t]*\n(.*?)\n?\s*```\s*$", re.S)


class CodeFormat:
    """Code as the action (seed 004's protocol): the model writes Python in `<python>...</python>`, the
    sandbox runs it and the program's output comes back; the model ends with `<answer>...</answer>`.

    - A reply with `<answer>` is final, even if it also holds code (the seed checks for the answer first):
      the answer is the text inside the first `<answer>` block, up to `</answer>` or an imitated tool reply.
    - Otherwise each `<python>` block is one call `ToolCall(name="python", arguments={"code": ...})`;
      a markdown fence around the code is removed. A block cut off before `</python>` (the reply hit the
      token limit) or an empty one is an invalid call with an error that says so; it is never run.
    - A reply with neither tag is final, its answer read as `HermesFormat` reads one (FINAL(...), "Answer:",
      else the first line), so an untagged answer still counts once.
    `<think>` blocks are kept in the trace and ignored for both. The trace message keeps the reply text
    verbatim (no structured `tool_calls`): a chat template would re-render structured calls as JSON, and
    the model must learn to write `<python>` itself. `stop` lists the strings a backend should stop at.
    """

    name = "python"
    tool_name = "python"
    stop = ("</python>", "</answer>")

    def parse(self, text: str) -> Action:
        thinking = thinking_of(text)
        body = reply_body(text)
        answer = ANSWER_TAG_RE.search(body)
        if answer:
            return Action(answer=answer.group(1).strip(), thinking=thinking)
        calls = [self._call(m.group(1), closed=bool(m.group(2)), raw=m.group(0)) for m in PYTHON_RE.finditer(body)]
        if calls:
            return Action(calls=calls, thinking=thinking)
        return Action(answer=extract_answer(text), thinking=thinking)

    def _call(self, code: str, *, closed: bool, raw: str) -> ToolCall:
        fenced = _FENCE_RE.match(code)
        if fenced:
            code = fenced.group(1)
        code = code.strip("\n")
        if not closed:
            return ToolCall(self.tool_name, {"code": code}, raw=raw, error=(
                "the <python> block was not closed with </python> (the reply was probably cut off by the token "
                "limit); write shorter code and close the block"))
        if not code.strip():
            return ToolCall(self.tool_name, {"code": code}, raw=raw, error="the <python> block is empty")
        return ToolCall(self.tool_name, {"code": code}, raw=raw)

    def assistant_message(self, text: str, action: Action) -> dict:
        return {"role": "assistant", "content": text}


FORMATS: dict[str, ActionFormat] = {"hermes": HermesFormat(), "python": CodeFormat()}


def get_format(name: str) -> ActionFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown action format {name!r}; known: {', '.join(FORMATS)}") from None
