"""Seed 004's code-as-action protocol: `<python>` blocks become calls, `<answer>` ends the episode."""
from __future__ import annotations

import pytest

from hopsmith.chat import CodeFormat, get_format

fmt = CodeFormat()

SEED_TURN = """I'll search first.
<python>
results = search_pages("2023 film Glenn Howerton")[:10]
for result in results:
    content = read_section(result['page_id'] + ":full")
    if "Jim Balsillie" in content:
        print(content)
        break
</python>"""


def test_code_block_is_one_python_call():
    a = fmt.parse(SEED_TURN)
    assert not a.is_final and len(a.calls) == 1
    call = a.calls[0]
    assert call.valid and call.name == "python"
    assert call.arguments["code"].startswith('results = search_pages("2023 film Glenn Howerton")[:10]\n')
    assert call.arguments["code"].endswith("        break")
    compile(call.arguments["code"], "<program>", "exec")


@pytest.mark.parametrize("text, answer", [
    ("<answer>BlackBerry</answer>", "BlackBerry"),
    ("The output shows it.\n<answer>\n  PJ Harvey \n</answer>\nDone.", "PJ Harvey"),
    ("<answer>Peabody Award", "Peabody Award"),  # cut off before </answer>
    # The seed checks for an answer first: code in the same reply is not run.
    ("<python>print(1)</python>\n<answer>Answer not found</answer>", "Answer not found"),
    ("<think>maybe <answer>wrong</answer></think><answer>right</answer>", "right"),
    # Untagged replies are read as HermesFormat reads them.
    ("FINAL(Miller County)", "Miller County"),
    ("Paris\nbecause ...", "Paris"),
    # A reply that imitates the next chat turn: nothing after the marker counts.
    ("<|im_start|>user\n<answer>Oslo</answer>", ""),
])
def test_final_answers(text, answer):
    a = fmt.parse(text)
    assert a.is_final and a.answer == answer


def test_fenced_code_inside_the_tags_is_unwrapped():
    a = fmt.parse("<python>\n```python\nx = 1\nprint(x)\n```\n</python>")
    assert a.calls[0].valid and a.calls[0].arguments == {"code": "x = 1\nprint(x)"}


def test_truncated_and_empty_blocks_are_errors_not_runs():
    cut = fmt.parse("<python>\nfor r in search_pages('Bad Sisters award 2022')[:5]:\n    content = read_")
    assert not cut.is_final and not cut.calls[0].valid
    assert "not closed with </python>" in cut.calls[0].error and "token limit" in cut.calls[0].error
    empty = fmt.parse("<python>\n\n</python>")
    assert not empty.calls[0].valid and empty.calls[0].error == "the <python> block is empty"


def test_several_blocks_and_thinking():
    text = "<think>two steps</think><python>a = 1</python> and <python>print(2)</python>"
    a = fmt.parse(text)
    assert [c.arguments["code"] for c in a.calls] == ["a = 1", "print(2)"]
    assert a.thinking == "two steps"
    assert fmt.parse("<think><python>print(1)</python></think>Oslo").answer == "Oslo"


def test_trace_message_keeps_the_reply_verbatim():
    a = fmt.parse(SEED_TURN)
    assert fmt.assistant_message(SEED_TURN, a) == {"role": "assistant", "content": SEED_TURN}


def test_registered_by_name():
    assert get_format("python").name == "python"
    assert fmt.stop == ("</python>", "</answer>")
