"""Every `hopsmith ...` command the README, ARCHITECTURE.md and the docstrings give runs as written: its
subcommand exists and its flags parse (the parser runs, the command does not)."""
import re
import shlex
from pathlib import Path

import pytest

from hopsmith import cli

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["README.md", "ARCHITECTURE.md", "app.py", *sorted(str(p.relative_to(ROOT)) for d in ("hopsmith", "stages",
           "benchmarks") for p in (ROOT / d).rglob("*.py"))]
# A command is a line of a code block (README) or an indented docstring example, or one in backticks; a run
# of two spaces or a `#` starts the comment beside it.
LINE = re.compile(r"^ +(?:\$ )?(?:\.venv/bin/)?hopsmith ([^\n#]*)", re.M)
FENCED = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S)
QUOTED = re.compile(r"`(?:\.venv/bin/)?hopsmith ([^`]*)`")


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for name in SOURCES:
        text = re.sub(r"\\+\n\s*", " ", (ROOT / name).read_text())  # a continued line, joined
        blocks = text
        if name.endswith(".md"):  # in prose a line may start with the word; in a code block it is a command
            blocks = "\n".join("    " + line for block in FENCED.findall(text) for line in block.splitlines())
        for m in [*LINE.finditer(blocks), *QUOTED.finditer(text)]:
            command = re.split(r" {2,}", m.group(1))[0].strip()
            found.append((name, command))
    return sorted(set(found))


def test_documented_commands_are_found():
    commands = {c for _, c in documented_commands()}
    assert "eval --data musique --limit 20 --out runs/base" in commands
    assert any(c.startswith("eval --env enterprise") for c in commands)
    assert any(c.startswith("pipeline") for c in commands) and any(c.startswith("matrix") for c in commands)


@pytest.mark.parametrize("where,command", documented_commands())
def test_every_documented_command_parses(where, command):
    argv = shlex.split(command)
    names = {s.name for s in cli.STAGES} | {"bench-extraction", "check-leakage", "cost", "report", "prepare-model"}
    if argv in (["--help"], []):
        return
    assert argv[0] in names, f"{where}: `hopsmith {command}`: there is no command {argv[0]!r}"
    if len(argv) == 1:  # the command named in prose, not run
        return
    try:
        cli.build_parser(argv[0]).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `hopsmith {command}` does not parse (exit {exc.code})")


def test_every_flag_says_what_it_does():
    """Each flag's help is the config field's comment, not only its default."""
    empty = []
    for stage in cli.STAGES:
        parser = cli.build_parser(stage.name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[stage.name]
        for action in sub._actions:
            text = (action.help or "").split(" (default")[0].strip()
            if action.option_strings and (not text or text == action.dest.replace("_", " ")):
                empty.append(f"hopsmith {stage.name} {action.option_strings[0]}")
    assert not empty, "flags without help (comment the config field):\n" + "\n".join(empty)
