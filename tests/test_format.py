"""Reading model replies: tool calls, malformed calls, final answers and thinking."""
from hopsmith.chat import HermesFormat, extract_answer, get_format, strip_thinking

import pytest

fmt = HermesFormat()


def test_one_call_parsed():
    a = fmt.parse('Let me look.\n<tool_call>\n{"name": "search", "arguments": {"query": "Eldon county"}}\n</tool_call>')
    assert not a.is_final
    assert len(a.calls) == 1 and a.calls[0].valid
    assert a.calls[0].name == "search" and a.calls[0].arguments == {"query": "Eldon county"}


def test_several_calls_and_unterminated_block():
    text = ('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
            '<tool_call>{"name": "search", "arguments": {"query": "b"}}')
    a = fmt.parse(text)
    assert [c.arguments["query"] for c in a.calls] == ["a", "b"]
    assert all(c.valid for c in a.calls)


@pytest.mark.parametrize("raw, reason", [
    ('{"name": "search", "arguments": {"query": "x"}', "not valid JSON"),
    ('["search"]', "must be a JSON object"),
    ('{"arguments": {"query": "x"}}', "no 'name'"),
    ('{"name": "search", "arguments": "query=x"}', "not a JSON object"),
    ('{"name": "search", "arguments": [1]}', "must be a JSON object"),
])
def test_malformed_calls_are_errors_not_exceptions(raw, reason):
    a = fmt.parse(f"<tool_call>{raw}</tool_call>")
    assert not a.is_final
    assert not a.calls[0].valid
    assert reason in a.calls[0].error


def test_double_encoded_arguments_accepted():
    a = fmt.parse('<tool_call>{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>')
    assert a.calls[0].valid and a.calls[0].arguments == {"query": "x"}


@pytest.mark.parametrize("text, answer", [
    ("FINAL(Miller County)", "Miller County"),
    ("I found it. FINAL(\"Stanley\")", "Stanley"),
    ("The county is known.\nAnswer: Mountrail County\nThanks", "Mountrail County"),
    ("Paris", "Paris"),
    ("The answer is:\nSachin Tendulkar\n\n# Tools\nYou can call", "Sachin Tendulkar"),
    ("Dell\nFrom 1997 to 2004, Dell enjoyed steady growth", "Dell"),
    ("FINAL(Nightwing (Dick Grayson)) and more text\nFINAL(x)", "Nightwing (Dick Grayson)"),
    ("<think>Eldon is in Miller County.</think>FINAL(Miller County)", "Miller County"),
    ("<think>unfinished thought", ""),
    # The model imitating the tool's reply or a new chat turn: never read as the answer.
    ("<tool_response>", ""),
    ("<tool_response>\n{\"results\": \"Paris is ...\"}</tool_response>\nParis", ""),
    ("Paris\n<tool_response>", "Paris"),
    ("Answer: Rome<|im_end|>\n<|im_start|>user\nFINAL(Oslo)", "Rome"),
    ("<|im_start|>tool\nfoo", ""),
])
def test_final_answers(text, answer):
    a = fmt.parse(text)
    assert a.is_final and a.answer == answer
    assert extract_answer(text) == answer


def test_thinking_kept_in_trace_but_not_in_answer():
    text = "<think>first search the director</think>\n<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"d\"}}</tool_call>"
    a = fmt.parse(text)
    assert a.thinking == "first search the director"
    msg = fmt.assistant_message(text, a)
    assert "<think>first search the director</think>" in msg["content"]
    assert msg["tool_calls"] == [{"type": "function", "function": {"name": "search", "arguments": {"query": "d"}}}]
    assert strip_thinking(text).startswith("<tool_call>")


def test_tool_call_inside_thinking_is_not_a_call():
    a = fmt.parse('<think>maybe <tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call></think>FINAL(y)')
    assert a.is_final and a.answer == "y"


def test_malformed_call_text_stays_in_message_content():
    text = '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call><tool_call>{bad</tool_call>'
    msg = fmt.assistant_message(text, fmt.parse(text))
    assert len(msg["tool_calls"]) == 1
    assert "{bad" in msg["content"]


def test_unknown_format_named():
    with pytest.raises(ValueError, match="unknown action format 'code'"):
        get_format("code")


def test_llama_bare_json_call_is_a_call_and_renders_back():
    """Llama 3.2's own template renders a call as one bare {"name", "parameters"} object, so an SFT'd Llama
    writes that; it is read as the call, and the stored message renders back to the same text."""
    from conftest import family_tokenizer

    text = '{"name": "search", "parameters": {"query": "Eldon county"}}'
    action = fmt.parse(text)
    assert not action.is_final and action.calls[0].name == "search" and action.calls[0].arguments == {"query": "Eldon county"}
    msg = fmt.assistant_message(text, action)
    assert msg == {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "Eldon county"}}}]}
    tok = family_tokenizer("llama3.2")
    rendered = tok.apply_chat_template([{"role": "user", "content": "q"}, msg], tokenize=False)
    assert text + "<|eot_id|>" in rendered
    # JSON that is an answer, not a call, stays an answer
    assert fmt.parse('FINAL({"name": "x"})').is_final and fmt.parse('{"answer": 3}').is_final
