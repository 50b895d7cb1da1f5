"""Hostile programs against the sandbox: every one must be contained, end with a clear error (or do no
harm), and leave the session able to run the next program.

Each attack runs under the full sandbox ("guarded": bubblewrap + rlimits + the audit-hook refusals) and,
where the audit hook would stop it first, also with the hook off ("raw"), so the operating-system layer is
shown to hold on its own. What the sandbox exposes: read-only /usr/bin, /usr/lib, /usr/share and their kin
(site-packages hidden), /bin /lib /lib64 /sbin as the host has them, a new /proc for its own PID
namespace, a minimal read-only /dev and a private 16 MiB /tmp; no /etc, /home, /root, /work, /usr/src,
no network, no host processes.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import hopsmith
from hopsmith.tools.sandbox import SandboxConfig, _site_dirs
from hopsmith.tools.wiki import Wiki

from sandbox_support import local_sandbox

SECRET = f"corpus-secret-{uuid.uuid4().hex}"
FAKE_KEY = f"sk-test-{uuid.uuid4().hex}"
LIMITS = dict(wall_seconds=1.0, cpu_seconds=1, memory_mb=256, file_size_mb=4, tmp_size_mb=16,
              max_output_bytes=100_000, max_calls=50)
# What a contained program's error ends with: a Python exception line or one of the sandbox's own notes.
ERROR_LINE = re.compile(r"^(\w+\.)*(\w*([eE]rror|Exception|Exit|Limit)|Timeout|Crash): .+")


@dataclass
class Host:
    corpus_dir: Path
    corpus_file: Path
    repo: Path
    pid: int
    tcp_port: int
    udp_port: int
    unix_path: str
    abstract: str
    passwd_line: str
    site_dirs: list[str]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    page = corpus / "Secret Page.md"
    page.write_text(f"# Secret Page\n\nThe hidden answer is {SECRET}.\n")
    (corpus / "Caroline Polachek.md").write_text("# Caroline Polachek\n\nAn American singer.\n")
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    unix_path = str(tmp_path_factory.mktemp("unix") / "host.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(unix_path)
    unix.listen()
    unix.setblocking(False)
    abstract = f"hopsmith-test-{uuid.uuid4().hex[:12]}"
    abstract_sock = socket.socket(socket.AF_UNIX)
    abstract_sock.bind("\0" + abstract)
    abstract_sock.listen()
    abstract_sock.setblocking(False)
    canary = subprocess.Popen(["sleep", "600"])
    os.environ["OPENAI_API_KEY"] = FAKE_KEY
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    h = Host(corpus, page, Path(hopsmith.__file__).resolve().parents[1], os.getpid(), tcp.getsockname()[1],
             udp.getsockname()[1], unix_path, abstract, passwd, [])
    h.sockets = (tcp, udp, unix, abstract_sock)
    h.canary = canary
    yield h
    del os.environ["OPENAI_API_KEY"]
    assert canary.poll() is None, "a sandboxed program killed a host process"
    canary.kill()
    canary.wait()
    for s in h.sockets:
        # No program ever reached the host's sockets.
        if s.type == socket.SOCK_STREAM:
            with pytest.raises(BlockingIOError):
                s.accept()
        else:
            with pytest.raises(BlockingIOError):
                s.recv(10)
        s.close()


@pytest.fixture(scope="module")
def wiki(host) -> Wiki:
    return Wiki.from_markdown_dir(host.corpus_dir)


@pytest.fixture(scope="module")
def boxes(wiki, host):
    guarded = local_sandbox(wiki.primitives(), SandboxConfig(**LIMITS))
    raw = local_sandbox(wiki.primitives(), SandboxConfig(**LIMITS, guards=False))
    host.site_dirs = _site_dirs(guarded.python)
    yield {"guarded": guarded, "raw": raw}
    guarded.close()
    raw.close()


def _error(r, *needles):
    assert r.status != "ok", r.text()
    assert r.error and ERROR_LINE.match(r.error.strip().splitlines()[-1]), r.error
    for n in needles:
        assert n in r.error, r.error


def _status(*allowed):
    def check(r, h, mode):
        assert r.status in allowed, r.text()
        assert r.error and ERROR_LINE.match(r.error.strip().splitlines()[-1]), r.error
    return check


def _refused_or(*raw_needles):
    """Guarded: the audit hook's PermissionError. Raw: the OS's own error."""
    def check(r, h, mode):
        if mode == "guarded":
            _error(r, "PermissionError: sandbox:", "is not allowed here")
        else:
            _error(r, *raw_needles)
    return check


def _no_leak(r, h):
    text = r.text()
    assert SECRET not in text and FAKE_KEY not in text and h.passwd_line not in text


@dataclass
class Attack:
    name: str
    code: str  # formatted with the Host's fields
    check: Callable
    modes: tuple[str, ...] = ("guarded", "raw")


ATTACKS = [
    # -- processes and threads --
    Attack("fork_bomb", "import os\nwhile True:\n    os.fork()", _refused_or("BlockingIOError", "Resource temporarily")),
    Attack("multiprocessing", "import multiprocessing\nmultiprocessing.Process(target=print).start()",
           _refused_or("Error")),
    Attack("subprocess_run", "import subprocess\nprint(subprocess.run(['cat', '/etc/hostname'], capture_output=True))",
           _refused_or("BlockingIOError")),
    Attack("os_system", "import os\nprint('rc', os.system('echo pwned'))",
           lambda r, h, m: _refused_or()(r, h, m) if m == "guarded" else (
               r.ok and "pwned" not in r.output and r.output != "rc 0\n" or pytest.fail(r.text()))),
    Attack("posix_spawn", "import os\nos.posix_spawn('/bin/true', ['true'], {{}})", _refused_or("BlockingIOError")),
    # exec replaces the worker in place (no new process): the shell it becomes is still sandboxed.
    Attack("exec_shell", "import os\nos.execv('/bin/sh', ['sh', '-c', 'cat /etc/passwd; ls /work /root; echo $OPENAI_API_KEY'])",
           lambda r, h, m: _refused_or()(r, h, m) if m == "guarded" else _status("crashed")(r, h, m)),
    # Python 3.11 raises no audit event for a new thread: RLIMIT_NPROC refuses it in both modes.
    Attack("thread", "import threading\nthreading.Thread(target=print).start()",
           lambda r, h, m: _error(r, "can't start new thread") if "PermissionError" not in r.error else _refused_or()(r, h, m)),
    # -- memory, CPU, recursion, output --
    Attack("memory_bomb", "x = bytearray(8 << 30)", lambda r, h, m: (
        _status("memory_limit")(r, h, m), _error(r, "MemoryError: the program went over the sandbox's memory limit of 256 MiB"))),
    # Untouched pages cost nothing to map, so this reaches the address-space limit fast on any machine.
    Attack("memory_growth", "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 26))", _status("memory_limit")),
    Attack("infinite_loop", "while True:\n    pass", lambda r, h, m: _error(r, "Timeout: the program ran past its 1 s")),
    Attack("loop_swallowing_exceptions", "while True:\n    try:\n        while True:\n            pass\n"
                                         "    except BaseException:\n        pass", _status("timeout")),
    Attack("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", lambda r, h, m: _error(r, "RecursionError")),
    Attack("c_stack_overflow", "import sys\nsys.setrecursionlimit(10 ** 8)\nx = []\nfor _ in range(10 ** 6):\n"
                               "    x = [x]\nprint(repr(x)[:10])", _status("crashed", "error", "memory_limit", "timeout")),
    Attack("huge_print", "print('x' * (10 ** 7))", _status("output_limit")),
    Attack("print_flood", "while True:\n    print('y' * 1000)", _status("output_limit")),
    Attack("fd_flood", "import os\nwhile True:\n    os.write(1, b'z' * 65536)", _status("output_limit")),
    Attack("big_file", "open('/tmp/big', 'wb').write(b'x' * (8 << 20))", lambda r, h, m: _error(r, "File too large")),
    Attack("fill_tmp", "for i in range(100):\n    open(f'/tmp/f{{i}}', 'wb').write(b'x' * (3 << 20))",
           lambda r, h, m: _error(r, "No space left on device")),
    # -- files: host secrets, the corpus, the project --
    Attack("etc_passwd", "print(open('/etc/passwd').read())", lambda r, h, m: _error(r, "FileNotFoundError", "/etc/passwd")),
    Attack("ssh_keys", "import os\nprint(os.path.expanduser('~'))\nprint(open('/root/.ssh/id_rsa').read())",
           lambda r, h, m: (_error(r, "FileNotFoundError"), r.output == "/tmp\n" or pytest.fail(r.output))),
    Attack("host_directories", "import os\nfor d in ['/root', '/home', '/work', '/etc', '/var', '/opt', '/srv', '/mnt', '/sys']:\n"
                               "    print(d, os.path.exists(d))",
           lambda r, h, m: r.ok and set(r.output.split()) == {"False", "/root", "/home", "/work", "/etc", "/var",
                                                              "/opt", "/srv", "/mnt", "/sys"} or pytest.fail(r.text())),
    Attack("corpus_file", "print(open({corpus_file!r}).read())", lambda r, h, m: _error(r, "FileNotFoundError")),
    # Every file outside /usr (the OS) and /proc, and the contents of those outside /dev: only the device
    # nodes and the program's own /tmp are there.
    Attack("corpus_walk", "import os\nfound = []\nfor top in os.listdir('/'):\n"
                          "    if top in ('proc', 'usr') or os.path.islink('/' + top):\n        continue\n"
                          "    for d, _, files in os.walk('/' + top):\n        found += [os.path.join(d, f) for f in files]\n"
                          "print(sorted(os.listdir('/')), found)\nfor f in found:\n    if f.startswith('/dev/'):\n        continue\n    try:\n"
                          "        print(open(f, errors='replace').read(1000))\n    except OSError:\n        pass",
           lambda r, h, m: r.ok and r.output.startswith("['bin', 'dev', 'lib', 'lib64', 'proc', 'sbin', 'tmp', 'usr'] ")
           and "Secret Page" not in r.output or pytest.fail(r.text())),
    Attack("project_source", "print(open({repo!r} + '/hopsmith/__init__.py').read())", lambda r, h, m: _error(r, "FileNotFoundError")),
    Attack("import_project", "import hopsmith", lambda r, h, m: _error(r, "ModuleNotFoundError: No module named 'hopsmith'")),
    Attack("import_project_by_path", "import sys\nsys.path.insert(0, {repo!r})\nimport hopsmith.tools.wiki",
           lambda r, h, m: _error(r, "ModuleNotFoundError")),
    Attack("site_packages_hidden", "import os\nfor d in {site_dirs!r}:\n    print(os.listdir(d) if os.path.isdir(d) else [])",
           lambda r, h, m: r.ok and set(r.output.split("\n")) <= {"[]", ""} or pytest.fail(r.text())),
    Attack("write_outside_tmp", "for p in ['/usr/evil', '/evil', '/dev/shm/evil', '/bin/evil', '/proc/evil']:\n"
                                "    try:\n        open(p, 'w').write('x')\n        print(p, 'WRITTEN')\n"
                                "    except OSError as e:\n        print(p, type(e).__name__)\n"
                                "open('/tmp/fine', 'w').write('ok')\nprint(open('/tmp/fine').read())",
           lambda r, h, m: r.ok and "WRITTEN" not in r.output and r.output.endswith("ok\n") or pytest.fail(r.text())),
    Attack("symlink_escape", "import os\nos.symlink('/etc/shadow', '/tmp/s')\nprint(open('/tmp/s').read())",
           lambda r, h, m: _error(r, "FileNotFoundError")),
    Attack("parent_memory", "print(open('/proc/{pid}/mem', 'rb').read(10))", lambda r, h, m: _error(r, "FileNotFoundError")),
    # -- network --
    Attack("tcp_internet", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=0.5)",
           _refused_or("OSError", "Network is unreachable")),
    Attack("tcp_host_loopback", "import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=0.5)",
           _refused_or("ConnectionRefusedError")),
    Attack("udp", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "s.sendto(b'x', ('127.0.0.1', {udp_port}))\ns.sendto(b'x', ('8.8.8.8', 53))",
           _refused_or("OSError")),
    Attack("unix_socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})",
           _refused_or("FileNotFoundError")),
    Attack("abstract_unix_socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0{abstract}')",
           _refused_or("ConnectionRefusedError")),
    Attack("dns", "import socket\nprint(socket.getaddrinfo('pypi.org', 443))", _refused_or("gaierror")),
    # -- native code --
    Attack("ctypes_import", "import ctypes", lambda r, h, m: _error(r, "PermissionError: sandbox: loading native code"),
           modes=("guarded",)),
    Attack("ctypes_libc", "import ctypes\nlibc = ctypes.CDLL(None)\nprint('fork', libc.fork())\n"
                          "print('kill', libc.kill({pid}, 9))",
           lambda r, h, m: r.ok and r.output == "fork -1\nkill -1\n" or pytest.fail(r.text()), modes=("raw",)),
    # -- signals --
    Attack("kill_parent", "import os\nos.kill(os.getppid(), 9)\nprint('still here')",
           lambda r, h, m: _refused_or()(r, h, m) if m == "guarded" else (r.ok or pytest.fail(r.text()))),
    Attack("kill_host_pid", "import os\nos.kill({pid}, 9)", _refused_or("ProcessLookupError")),
    Attack("kill_everything", "import os\nos.kill(-1, 9)", _refused_or("ProcessLookupError")),
    # The program is PID 1 of its namespace, which ignores signals sent from inside it: nothing dies.
    Attack("kill_own_group", "import os\nos.killpg(0, 9)\nos.kill(os.getpid(), 9)\nprint('alive')",
           lambda r, h, m: _refused_or()(r, h, m) if m == "guarded" else (r.output == "alive\n" or pytest.fail(r.text()))),
    Attack("abort", "import os\nos.abort()", lambda r, h, m: _refused_or()(r, h, m) if m == "guarded" and
           "PermissionError" in (r.error or "") else _status("crashed")(r, h, m)),
    # -- environment --
    Attack("environment", "import os\nprint(sorted(os.environ))\nprint(os.environ)",
           lambda r, h, m: r.ok and r.output.splitlines()[0] == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'PWD', 'TMPDIR']"
           or pytest.fail(r.text())),
    Attack("proc_environ", "for p in ['/proc/self/environ', '/proc/1/environ']:\n    print(open(p, 'rb').read())\n"
                           "print(open('/proc/{pid}/environ', 'rb').read())", lambda r, h, m: _error(r, "FileNotFoundError")),
    # -- the wall clock --
    Attack("sleep", "import time\ntime.sleep(100)", _status("timeout")),
    Attack("select_forever", "import select\nselect.select([], [], [], 100)", _status("timeout")),
    Attack("sleep_in_finally", "import time\ntry:\n    time.sleep(100)\nfinally:\n    time.sleep(100)", _status("timeout")),
    Attack("read_the_channel", "import os\nos.read(4, 1)", _status("timeout", "error")),
    Attack("print_then_hang", "print('partial', flush=True)\nwhile True:\n    pass",
           lambda r, h, m: (_status("timeout")(r, h, m), r.output == "partial\n" or pytest.fail(r.text()))),
    # -- the channel --
    # A request for something other than the primitives, written straight to the request pipe (fd 3); the
    # answer (fd 4) is an error, never the file.
    Attack("forged_call", "import json, os\nos.write(3, json.dumps({{'op': 'call', 'name': 'open', 'args': ['/etc/passwd'],"
                          " 'kwargs': {{}}}}).encode() + b'\\n')\nprint(os.read(4, 1000))",
           lambda r, h, m: r.ok and "unknown primitive 'open'" in r.output or pytest.fail(r.text())),
    Attack("garbage_line", "import os\nos.write(3, b'x' * (2 << 20))\nprint('sent')",
           lambda r, h, m: _error(r, "ChannelError: the program wrote a line over 1 MiB")),
    Attack("call_flood", "while True:\n    try:\n        search_pages('singer')\n    except Exception:\n        pass",
           lambda r, h, m: _error(r, "CallLimit: the program made more than 50 calls")),
    # Requests written without ever reading the answers: stopped, never buffered without bound by the caller.
    Attack("call_spam_unread", "import json, os\nline = json.dumps({{'op': 'call', 'name': 'read_section', "
                               "'args': ['secret_page:full'], 'kwargs': {{}}}}).encode() + b'\\n'\n"
                               "while True:\n    os.write(3, line * 100)",
           lambda r, h, m: _error(r, "CallLimit")),
    Attack("channel_garbage", "import os\nwhile True:\n    os.write(3, b'not json\\n' * 1000)",
           lambda r, h, m: _error(r, "ChannelError: the program wrote something other than a call")),
    Attack("huge_query", "search_pages('x ' * 100000)", lambda r, h, m: _error(r, "ValueError: search_pages: the query is "
                                                                                "200000 characters long")),
]

CASES = [pytest.param(a, mode, id=f"{a.name}-{mode}") for a in ATTACKS for mode in a.modes]


def test_the_suite_has_at_least_thirty_programs():
    assert len(ATTACKS) >= 30


@pytest.mark.parametrize("attack, mode", CASES)
def test_attack_is_contained(attack, mode, boxes, host):
    box = boxes[mode]
    code = attack.code.format(**{k: str(v) if isinstance(v, Path) else v for k, v in vars(host).items()})
    t0 = time.perf_counter()
    result = box.execute(code)
    # Every program ends within the wall clock plus the time to stop and reap the sandbox.
    assert time.perf_counter() - t0 < LIMITS["wall_seconds"] + 3
    attack.check(result, host, mode)
    _no_leak(result, host)
    # The session goes on: the next program runs normally.
    after = box.execute("print([h['page_id'] for h in search_pages('American singer')])")
    assert after.ok and after.output == "['caroline_polachek']\n", after.text()


def test_cpu_limit_even_when_the_program_ignores_sigxcpu(wiki):
    cfg = SandboxConfig(wall_seconds=30, cpu_seconds=1, memory_mb=256)
    with local_sandbox(wiki.primitives(), cfg, warm=0) as box:
        plain = box.execute("while True:\n    pass")
        assert plain.status == "cpu_limit" and plain.error.startswith("CPUTimeLimit: the program used its 1 s")
        ignored = box.execute("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass")
        assert ignored.status == "cpu_limit" and "killed after using its 1 s of CPU time" in ignored.error
        assert box.execute("print('next')").output == "next\n"


def test_child_cannot_reach_corpus_or_network(boxes, host, wiki):
    """With the audit hook off, only the OS stands between the program and the host: the corpus file and
    the host's open TCP port are out of reach, while the same corpus text comes through read_section."""
    # Positive controls: the file holds the secret and the host's TCP port takes connections.
    assert SECRET in host.corpus_file.read_text()
    probe = socket.create_connection(("127.0.0.1", host.tcp_port), timeout=1)
    accepted, _ = host.sockets[0].accept()
    accepted.close()
    probe.close()
    code = (
        "import os, socket\n"
        f"print('exists', os.path.exists({str(host.corpus_file)!r}), os.path.exists({str(host.corpus_dir)!r}))\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {host.tcp_port}), timeout=0.5)\n"
        "    print('tcp connected')\n"
        "except OSError as e:\n"
        "    print('tcp', type(e).__name__)\n"
        "print('interfaces', [name for _, name in socket.if_nameindex()])\n"
        "print('via channel', 'corpus-secret-' in read_section('secret_page:full'))\n"
    )
    result = boxes["raw"].execute(code)
    assert result.ok, result.text()
    assert result.output.splitlines() == [
        "exists False False", "tcp ConnectionRefusedError", "interfaces ['lo']", "via channel True"]
    assert [c["name"] for c in result.calls] == ["read_section"]
    with pytest.raises(BlockingIOError):
        host.sockets[0].accept()


def test_no_sandbox_process_outlives_its_program(wiki):
    cfg = SandboxConfig(wall_seconds=1, max_processes=3, guards=False)
    marker = f"777.{uuid.uuid4().int % 10 ** 6}"
    code = ("import os\n"
            "if os.fork() == 0:\n"
            f"    os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n"
            "print('started')\n")
    with local_sandbox(wiki.primitives(), cfg, warm=1) as box:
        assert box.wait_warm()
        uid = box._ready[0].uid
        result = box.execute(code)
        assert result.output == "started\n", result.text()
        hung = box.execute("import time\ntime.sleep(60)")
        assert hung.status == "timeout"
    me = str(os.getpid())
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if pid != me and (marker.encode() in cmdline or (uid is not None and f"Uid:\t{uid}\t" in status)):
            leftovers.append((pid, cmdline, status.splitlines()[2]))
    assert leftovers == []
