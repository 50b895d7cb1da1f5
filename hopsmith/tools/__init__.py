"""Agent tools: typed Python functions whose JSON schemas are derived from their signatures and
docstrings (Google style `Args:`), so the prompt, the validator and the code never disagree."""
from __future__ import annotations

from typing import Any, Callable


def tool_schema(fn: Callable) -> dict:
    """OpenAI-style function schema of `fn` ({"type": "function", "function": {...}})."""
    from transformers.utils import get_json_schema

    return get_json_schema(fn)


_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}


def check_arguments(schema: dict, arguments: dict) -> str | None:
    """Why `arguments` do not fit the schema, or None when they do."""
    params = schema["function"].get("parameters", {})
    props: dict[str, Any] = params.get("properties", {})
    for name in params.get("required", []):
        if name not in arguments:
            return f"missing required argument '{name}'"
    for name, value in arguments.items():
        if name not in props:
            return f"unknown argument '{name}' (expected: {', '.join(props) or 'none'})"
        expected = _JSON_TYPES.get(props[name].get("type"))
        if expected and not isinstance(value, expected):
            return f"argument '{name}' must be a {props[name]['type']}"
        choices = props[name].get("enum")
        if choices and value not in choices:
            return f"argument '{name}' must be one of {', '.join(map(str, choices))}, got {value!r}"
    return None

