"""System prompts for the search agent."""
from __future__ import annotations

AGENT_SYSTEM = """You answer multi-hop questions by searching a collection of paragraphs.
Work one fact at a time: search for the first fact, read the results, then search for the next fact using what you found. You may call llm_query to pull a fact out of the last search results.
When you know the answer, reply with FINAL(answer) and no tool call. The answer is short: a name, a date, a number or a phrase."""

FEW_SHOT = """

Example.
Question: In which county was Lloyd Dane born?
Assistant:
<tool_call>
{"name": "search", "arguments": {"query": "Lloyd Dane born"}}
</tool_call>
Tool: [p3f9a21] Lloyd Dane
Lloyd Dane was an American racing driver, born in Eldon, Missouri.
Assistant:
<tool_call>
{"name": "search", "arguments": {"query": "Eldon Missouri county"}}
</tool_call>
Tool: [p7c04e8] Eldon, Missouri
Eldon is a city in Miller County, Missouri, United States.
Assistant:
FINAL(Miller County)"""

THINKING_NOTE = "\nBefore each step, think inside <think> </think> about what you know and what is missing."


def agent_system_prompt(*, few_shot: bool = True, thinking: bool = False) -> str:
    return AGENT_SYSTEM + (THINKING_NOTE if thinking else "") + (FEW_SHOT if few_shot else "")

# A 135M model ignores tools when the question comes alone; naming the call format in the user turn
# took SmolLM2-135M's first-turn tool calls from 0/16 to 11/16 on bundled MuSiQue questions.
USER_TEMPLATE = "Question: {question}\nCall the search tool with a <tool_call> block. When you know the answer, reply with FINAL(answer)."


def agent_user_prompt(question: str, template: str = USER_TEMPLATE) -> str:
    return template.format(question=question)
