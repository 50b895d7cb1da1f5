"""The sandbox as a tool: programs call the wiki primitives through the channel, their output comes back
cut to size, nothing carries from one program to the next, and a run says which isolation it had.
The attacks are in test_sandbox_adversarial.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from hopsmith.config import ConfigError
from hopsmith.data import load_questions
from hopsmith.tools import sandbox as sandbox_mod
from hopsmith.tools.sandbox import (
    BUBBLEWRAP, RLIMITS_ONLY, ExecResult, LocalSandbox, ModalSandbox, SandboxConfig, SandboxUnavailable, clean_env,
    worker_argv,
)
from hopsmith.tools.wiki import Wiki

from sandbox_support import local_sandbox

CONFIG = SandboxConfig(wall_seconds=3, cpu_seconds=2, memory_mb=256)


@pytest.fixture(scope="module")
def wiki() -> Wiki:
    return Wiki.from_questions(load_questions("musique", limit=40))


@pytest.fixture(scope="module")
def box(wiki):
    with local_sandbox(wiki.primitives(), CONFIG) as b:
        yield b


def test_primitives_reach_the_wiki_through_the_channel(box, wiki):
    code = (
        "import json\n"
        "hits = search_pages('Mountrail County North Dakota', k=3)\n"
        "print(json.dumps(hits))\n"
        "sections = view_sections(hits[0]['page_id'])\n"
        "print(json.dumps(sections))\n"
        "print(read_section(sections[0]['section_id']))\n"
    )
    result = box.execute(code)
    assert result.status == "ok" and result.error is None, result.text()
    hits_line, sections_line, section_text = result.output.split("\n", 2)
    hits = wiki.search_pages("Mountrail County North Dakota", k=3)
    assert json.loads(hits_line) == hits
    assert json.loads(sections_line) == wiki.view_sections(hits[0]["page_id"])
    assert section_text.rstrip("\n") == wiki.read_section(wiki.view_sections(hits[0]["page_id"])[0]["section_id"])
    assert [c["name"] for c in result.calls] == ["search_pages", "view_sections", "read_section"]
    assert all(c["ok"] for c in result.calls)


def test_a_loop_composes_primitives_like_the_seed(box, wiki):
    # Seed 004's first successful trajectory, on the bundled data.
    code = (
        "for result in search_pages('Van Hook Township')[:10]:\n"
        "    content = read_section(result['page_id'] + ':full')\n"
        "    if 'Mountrail County' in content:\n"
        "        print('Found', result['title'])\n"
        "        break\n"
    )
    result = box.execute(code)
    assert result.ok and result.output.startswith("Found Van Hook Township"), result.text()
    assert [c["name"] for c in result.calls][:2] == ["search_pages", "read_section"]


def test_primitive_errors_become_the_programs_exceptions(box):
    result = box.execute("print('before')\nview_sections('no_such_page')\nprint('after')")
    assert result.status == "error"
    assert result.output == "before\n"
    assert 'File "<program>", line 2' in result.error
    assert "ValueError: view_sections(page_id): unknown page id 'no_such_page'" in result.error
    assert result.calls == [{"name": "view_sections", "args": '["no_such_page"]', "ok": False}]
    # Caught like any exception, so the program can go on.
    caught = box.execute("try:\n    read_section('x')\nexcept ValueError as e:\n    print('caught:', e)")
    assert caught.ok and caught.output.startswith("caught: read_section: 'x' is not a section id")
    wrong = box.execute("search_pages()")
    assert "TypeError" in wrong.error and "query" in wrong.error
    unjson = box.execute("search_pages({1, 2})")
    assert "TypeError: search_pages() takes only strings, numbers, lists and dicts" in unjson.error


def test_tracebacks_show_only_the_programs_lines(box):
    result = box.execute("def f(x):\n    return 1 / x\n\nf(0)")
    assert result.status == "error"
    assert result.error.splitlines() == [
        "Traceback (most recent call last):",
        '  File "<program>", line 4, in <module>',
        "    f(0)",
        '  File "<program>", line 2, in f',
        "    return 1 / x",
        "           ~~^~~",
        "ZeroDivisionError: division by zero",
    ]
    syntax = box.execute("for x in range(3)\n    print(x)")
    assert syntax.status == "error" and "SyntaxError" in syntax.error and "line 1" in syntax.error


def test_output_is_cut_with_a_note_and_empty_output_is_named(box, wiki):
    with local_sandbox(wiki.primitives(), SandboxConfig(max_output_chars=300), warm=0) as small:
        result = small.execute("for i in range(100):\n    print(f'line {i:03d}')")
    assert result.ok and result.truncated
    assert result.output.startswith("line 000\nline 001\n")
    assert result.output.endswith(f"\n… [output truncated: {100 * 9 - 300} more characters]")
    assert len(result.output.split("\n…")[0]) == 300
    silent = box.execute("x = 1")
    assert silent.ok and silent.output == "" and "printed nothing" in silent.text()
    both = box.execute("import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('out2')")
    assert both.output == "out\nerr\nout2\n"


def test_nothing_carries_over_between_programs(box):
    first = box.execute("import builtins\nbuiltins.LEAK = 1\nopen('/tmp/leak', 'w').write('x')\nprint('set')")
    assert first.ok and first.output == "set\n"
    second = box.execute("import os, builtins\nprint(hasattr(builtins, 'LEAK'), os.path.exists('/tmp/leak'))")
    assert second.output == "False False\n"


def test_rejected_programs_never_start(box):
    assert box.execute("   \n").status == "rejected"
    long = box.execute("x = 1\n" * 10_000)
    assert long.status == "rejected" and "limit is 50000" in long.error


def test_describe_names_the_isolation(box):
    info = box.describe()
    assert info["isolation"] == BUBBLEWRAP and info["bubblewrap"].endswith("bwrap")
    assert info["wall_seconds"] == 3 and info["memory_mb"] == 256 and info["guards"] is True
    json.dumps(info)


def test_cold_path_and_concurrent_programs(wiki):
    with local_sandbox(wiki.primitives(), CONFIG, warm=0) as cold:
        assert cold.execute("print(len(search_pages('county')))").output.strip().isdigit()
    with local_sandbox(wiki.primitives(), CONFIG, warm=2) as pool:
        results = [None] * 6

        def run(i):
            results[i] = pool.execute(f"print({i} * 2, len(search_pages('river')) > 0)")

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.output for r in results] == [f"{i * 2} True\n" for i in range(6)]


def test_closed_sandbox_refuses(wiki):
    b = local_sandbox(wiki.primitives(), CONFIG, warm=1)
    workers = list(b._ready)
    b.close()
    assert all(w.proc.poll() is not None for w in workers)
    with pytest.raises(RuntimeError, match="closed"):
        b.execute("print(1)")


# --- without bubblewrap ----------------------------------------------------------------------------

def test_refuses_to_start_without_bubblewrap_unless_allowed(monkeypatch, wiki):
    monkeypatch.setattr(sandbox_mod.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable) as info:
        LocalSandbox(wiki.primitives(), CONFIG)
    message = str(info.value)
    assert message.startswith("bubblewrap (bwrap) is not installed: install it with `apt-get install -y bubblewrap`")
    assert "allow_weak_isolation=True" in message and "\n" not in message
    assert isinstance(info.value, ConfigError)  # the CLI prints it as one line and exits 2
    with LocalSandbox(wiki.primitives(), CONFIG, allow_weak_isolation=True) as weak:
        assert weak.describe()["isolation"] == RLIMITS_ONLY
        assert weak.describe()["fallback_reason"] == "bubblewrap (bwrap) is not installed"
        result = weak.execute("import os\nprint(len(search_pages('county')) > 0, os.environ['HOME'] == os.getcwd())")
        assert result.output == "True True\n", result.text()


def test_a_bubblewrap_that_cannot_start_is_refused_with_its_message(monkeypatch, wiki):
    local_sandbox({}, CONFIG, warm=0).close()  # skips where bubblewrap is missing altogether
    monkeypatch.setattr(LocalSandbox, "_bubblewrap_args", lambda self: ["--no-such-option"])
    with pytest.raises(SandboxUnavailable) as info:
        LocalSandbox(wiki.primitives(), CONFIG)
    message = str(info.value)
    assert message.startswith("bubblewrap is installed but a test program failed in it (SandboxError: the sandbox "
                              "failed to start (exit code 1): bwrap: Unknown option --no-such-option)")
    assert "allow_weak_isolation=True" in message


def test_rlimits_only_still_enforces_the_limits(wiki):
    with pytest.raises(SandboxUnavailable, match="rlimits-only isolation needs allow_weak_isolation=True"):
        LocalSandbox(wiki.primitives(), CONFIG, isolation=RLIMITS_ONLY)
    cfg = SandboxConfig(wall_seconds=1, cpu_seconds=1, memory_mb=256, max_output_bytes=50_000, guards=False)
    os.environ["OPENAI_API_KEY"] = key = "sk-test-weak-0123456789"
    try:
        with LocalSandbox(wiki.primitives(), cfg, isolation=RLIMITS_ONLY, allow_weak_isolation=True) as weak:
            fork = weak.execute("import os\nos.fork()")
            assert fork.status == "error" and "BlockingIOError" in fork.error  # RLIMIT_NPROC
            assert weak.execute("x = bytearray(1 << 30)").status == "memory_limit"
            assert weak.execute("import time\ntime.sleep(30)").status == "timeout"
            assert weak.execute("while True:\n    print('y' * 100)").status == "output_limit"
            env = weak.execute("import os\nprint(os.environ)")
            assert key not in env.output and "OPENAI_API_KEY" not in env.output
            assert weak.execute("print(1)").output == "1\n"
    finally:
        del os.environ["OPENAI_API_KEY"]


def test_bad_settings_are_config_errors(wiki):
    with pytest.raises(ConfigError, match="sandbox wall_seconds must be > 0"):
        SandboxConfig(wall_seconds=0)
    with pytest.raises(ConfigError, match="max_processes must be >= 0"):
        SandboxConfig(max_processes=-1)
    with pytest.raises(ConfigError, match="unknown sandbox isolation 'docker'"):
        LocalSandbox({}, CONFIG, isolation="docker")


# --- Modal ------------------------------------------------------------------------------------------
# Without a Modal account only the arguments can be checked against the real API; the channel logic runs
# against a fake with the stream API's shape (bytes chunks that split lines anywhere), backed by a local
# process running the same worker.

def test_modal_sandbox_arguments():
    import inspect

    import modal

    box = ModalSandbox({"search_pages": None, "read_section": None}, CONFIG, app="APP", image="IMAGE", cpu=0.5)
    kwargs = box.create_kwargs()
    assert kwargs["block_network"] is True and kwargs["app"] == "APP" and kwargs["image"] == "IMAGE"
    assert kwargs["memory"] == (256 + 256, 256 + 256 + 64) and kwargs["cpu"] == 0.5
    assert kwargs["env"] == clean_env("/tmp") and "secrets" not in kwargs
    assert set(kwargs) <= set(inspect.signature(modal.Sandbox.create).parameters)
    argv, exec_kwargs = box.exec_args()
    assert argv == worker_argv("python3") and argv[:5] == ["python3", "-I", "-S", "-B", "-c"]
    assert exec_kwargs == {"timeout": 3, "text": False, "workdir": "/tmp"}
    assert set(exec_kwargs) <= set(inspect.signature(modal.Sandbox.exec).parameters)
    assert box.describe()["isolation"] == "modal"
    default_image = ModalSandbox({}, CONFIG).create_kwargs()["image"]
    assert isinstance(default_image, modal.Image)


class _Stream:
    def __init__(self, pipe):
        self.pipe = pipe

    def __iter__(self):
        while chunk := os.read(self.pipe.fileno(), 7):
            yield chunk

    def write(self, data: bytes) -> None:
        self.pipe.write(data)

    def drain(self) -> None:
        self.pipe.flush()


class _FakeProcess:
    def __init__(self, argv):
        self._p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=clean_env())
        self.stdin, self.stdout, self.stderr = _Stream(self._p.stdin), _Stream(self._p.stdout), _Stream(self._p.stderr)

    def wait(self) -> int:
        return self._p.wait()


class _FakeModalSandbox:
    created: list[dict] = []

    def __init__(self, **kwargs):
        self.created.append(kwargs)
        self.terminated = False

    def exec(self, *argv, **kwargs):
        argv = [sys.executable if a == "python3" else a for a in argv]
        return _FakeProcess(argv)

    def terminate(self):
        self.terminated = True


def test_modal_channel_against_a_fake_process(monkeypatch, wiki):
    import modal

    monkeypatch.setattr(modal.Sandbox, "create", staticmethod(lambda **kw: _FakeModalSandbox(**kw)))
    with ModalSandbox(wiki.primitives(), CONFIG, image="IMAGE") as box:
        result = box.execute("hits = search_pages('Van Hook Township')\nprint(hits[0]['title'])\nread_section('x')")
        assert result.output == wiki.search_pages("Van Hook Township")[0]["title"] + "\n"
        assert result.status == "error" and "is not a section id" in result.error
        assert box.execute("print(sum(range(10)))").output == "45\n"
        sandbox = box._sandbox
    assert len(_FakeModalSandbox.created) == 1 and sandbox.terminated


def test_exec_result_text():
    assert ExecResult("a\n", None, "ok", 0.1).text() == "a"
    assert ExecResult("a\n", "Timeout: ...", "timeout", 1.0).text() == "a\nTimeout: ..."
    assert ExecResult("", "Boom", "error", 0.1).text() == "Boom"
