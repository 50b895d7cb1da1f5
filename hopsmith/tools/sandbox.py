"""Run model-written Python in a sandbox; the wiki primitives are reached through a narrow channel.

    from hopsmith.tools.sandbox import LocalSandbox, SandboxConfig
    with LocalSandbox(wiki.primitives(), SandboxConfig(wall_seconds=5)) as box:
        result = box.execute('for r in search_pages("Glenn Howerton")[:3]: print(r["title"])')
        print(result.text())      # the program's stdout (truncated), then its error if it failed
        print(box.describe())     # {"isolation": "bubblewrap", ...}: what a run config records

Isolation (`LocalSandbox`). Every program runs in a fresh process that never shares memory with the
caller, under two layers:

1. The OS. With bubblewrap (`apt-get install -y bubblewrap`), the process gets its own user, PID,
   network, IPC, UTS and cgroup namespaces (no network: only a loopback of its own), a root that shows
   only the system's programs and libraries read-only (/usr/bin, /usr/lib, /usr/share and their kin, the
   interpreter's own bin/ and lib/, with every Python site-packages directory hidden), a new /proc, a
   minimal read-only /dev, and a private size-capped tmpfs /tmp as its only writable place. No /etc,
   /home, /root, /work, /usr/src, /usr/local/src or other host path exists inside. When the caller is root the process first drops to an
   unprivileged uid of its own. Inside, the worker lowers its own rlimits before the program runs: CPU
   seconds, address space, file size, open files, no core files, and RLIMIT_NPROC at the number of tasks
   it already has plus `max_processes` (0: no new process or thread). The program's interpreter is PID 1
   of its namespace (`--as-pid-1`), so signals it sends itself or its group are ignored, and bubblewrap
   reaps it like any child (no orphan left to the host's init, its CPU time counted). The caller enforces
   the wall clock (SIGKILL to that PID 1, which takes the whole PID namespace down, then to bubblewrap's
   process group) and the output size. The environment is built from scratch (PATH, HOME, LANG), so no key in the
   caller's environment reaches the program.
2. Clear refusals. An audit hook (PEP 578) turns process creation, signals, sockets and ctypes into a
   `PermissionError` that says what is not allowed, so the model reads one line instead of an obscure
   errno. This layer only words the error; the OS layer is the boundary (`guards=False` turns the hook off,
   and the tests run the attacks both ways).

Without bubblewrap (or where it cannot start) `LocalSandbox` refuses to start unless the caller passes
`allow_weak_isolation=True`; then the program runs under the same rlimits, uid drop, clean environment and
private working directory, but it can read every world-readable host file and reach the network.
`describe()["isolation"]` says which ran: "bubblewrap" or "rlimits-only".

The channel. The program's process holds only three pipes to the caller: its stdin (settings, the
program, then answers), its stdout+stderr (the output the model sees) and a request pipe (its original
stderr). Calling `search_pages(q)` inside writes one JSON line `{"op": "call", "name": ..., "args": [...]}`;
the caller checks the name against the primitives it was given, runs it, and writes back the value or the
error text. Nothing else crosses: the program never sees a file, socket or memory of the caller's.

Speed. A worker is started ahead (bubblewrap + `python -I -S`, stdlib only) and waits for its program;
after each program it is killed and a fresh one started, by a background thread, so no state carries from
one program to the next and the caller does not wait for the start. `warm` workers are kept ready (0:
every execution starts its own, the cold path). `benchmarks/sandbox_speed.py` measures both.

`ModalSandbox` runs the same worker inside a `modal.Sandbox` (gVisor, `block_network=True`), with the same
JSON channel over the exec'd process's stdin/stderr, for cloud rollouts.
"""
from __future__ import annotations

import inspect
import json
import marshal
import math
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import count

from hopsmith.config import ConfigError

BUBBLEWRAP = "bubblewrap"
RLIMITS_ONLY = "rlimits-only"
MODAL = "modal"
ISOLATIONS = ("auto", BUBBLEWRAP, RLIMITS_ONLY)

STARTUP_SECONDS = 15.0  # a worker that has not said "ready" by then failed to start
_MAX_LINE = 1 << 20  # longest request line the caller reads from a program
_MAX_REPLY = 4 << 20  # longest answer the caller sends back to a program
_MAX_PENDING = 16 << 20  # answers written but not yet read by the program
_ERROR_CHARS = 2000
_SAFE_PATH = "/usr/bin:/bin"


class SandboxUnavailable(ConfigError):
    """The requested isolation cannot run here; the message names the fix."""


@dataclass(frozen=True)
class SandboxConfig:
    wall_seconds: float = 5.0  # per program, from the moment its worker is ready
    cpu_seconds: int = 3
    memory_mb: int = 512  # address space (RLIMIT_AS)
    max_processes: int = 0  # tasks (processes or threads) a program may start beyond itself
    file_size_mb: int = 16  # largest file a program may write (RLIMIT_FSIZE)
    tmp_size_mb: int = 64  # the private /tmp (bubblewrap)
    max_open_files: int = 64
    max_output_chars: int = 4000  # of the output the model sees; the rest is cut with a note
    max_output_bytes: int = 1 << 20  # a program printing more than this is stopped
    max_code_chars: int = 50_000
    max_calls: int = 200  # primitive calls per program
    guards: bool = True  # the audit-hook refusals (layer 2 above)

    def __post_init__(self):
        for name in ("wall_seconds", "cpu_seconds", "memory_mb", "file_size_mb", "tmp_size_mb", "max_open_files",
                     "max_output_chars", "max_output_bytes", "max_code_chars", "max_calls"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sandbox {name} must be > 0, got {getattr(self, name)}")
        if self.max_processes < 0:
            raise ConfigError(f"sandbox max_processes must be >= 0, got {self.max_processes}")


@dataclass
class ExecResult:
    """What one program did. `text()` is the tool result the model reads."""

    output: str  # stdout and stderr interleaved, cut at max_output_chars
    error: str | None  # the traceback or the limit that stopped the program; None when it ran to the end
    status: str  # ok | error | timeout | cpu_limit | memory_limit | output_limit | crashed | rejected | sandbox_error
    seconds: float
    calls: list[dict] = field(default_factory=list)  # [{"name", "args", "ok"}] per primitive call
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def text(self) -> str:
        parts = [p for p in (self.output.rstrip("\n"), self.error) if p]
        return "\n".join(parts) if parts else "(no output: the program printed nothing; print() what you want to see)"

    def to_dict(self) -> dict:
        return asdict(self)


# --- the worker ------------------------------------------------------------------------------------
# Runs inside the sandbox as `python -I -S -B -c _WORKER`: stdlib only, no site-packages, and only modules
# Python has already loaded or that are built in (os, sys, marshal, resource, _signal): json, signal or
# traceback would each add 20-30 ms to every start. It reads its settings from stdin, sets up the channel
# and its own limits, says "ready", reads one program, runs it, says "done" and exits.
# Caller -> worker: frames of a 4-byte big-endian length and a marshal payload (the caller is trusted, and
# marshal is built in). Worker -> caller: one JSON object a line, written by the small encoder below and
# read with json.loads, because the caller must never unmarshal what an untrusted program could forge.

_WORKER = r'''
import marshal, os, sys

def _main():
    import resource, _signal
    ask = os.fdopen(os.dup(2), "wb", buffering=0)
    hear = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(1, 2)
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")
    sys.stderr.reconfigure(line_buffering=True, errors="backslashreplace")

    def receive():
        head = hear.read(4)
        body = hear.read(int.from_bytes(head, "big")) if len(head) == 4 else b""
        if len(head) < 4 or len(body) < int.from_bytes(head, "big"):
            raise RuntimeError("the sandbox's channel is closed")
        return marshal.loads(body)

    escapes = {i: "\\u%04x" % i for i in range(32)}
    escapes[34] = '\\"'
    escapes[92] = "\\\\"

    def enc(v, depth=0):
        if depth > 64:
            raise TypeError
        if v is None:
            return "null"
        if v is True or v is False:
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + str.translate(v, escapes) + '"'
        if isinstance(v, int):
            return int.__repr__(v)
        if isinstance(v, float):
            v = float(v)
            return "NaN" if v != v else "Infinity" if v == 1e999 else "-Infinity" if v == -1e999 else repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ",".join([enc(x, depth + 1) for x in v]) + "]"
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return "{" + ",".join([enc(k) + ":" + enc(x, depth + 1) for k, x in v.items()]) + "}"
        raise TypeError

    def send(obj):
        # A lone surrogate becomes a \udcXX escape, which JSON reads back as the same character.
        data = (enc(obj) + "\n").encode("utf-8", "backslashreplace")
        while data:
            data = data[ask.write(data):]

    def finish(ok, error=None, kind="error"):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            send({"op": "done", "ok": ok, "error": error, "kind": kind})
        finally:
            os._exit(0)

    cfg = receive()
    errors = {"ValueError": ValueError, "TypeError": TypeError, "LookupError": LookupError}

    def call(name, args, kwargs):
        try:
            send({"op": "call", "name": name, "args": list(args), "kwargs": kwargs})
        except (TypeError, RecursionError):
            raise TypeError(name + "() takes only strings, numbers, lists and dicts as arguments") from None
        reply = receive()
        if "error" in reply:
            raise errors.get(reply.get("type"), RuntimeError)(reply["error"])
        return reply["value"]

    def primitive(name):
        def fn(*args, **kwargs):
            return call(name, args, kwargs)
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = cfg["docs"].get(name)
        return fn

    def tasks_of(uid):
        n = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/" + pid + "/status") as f:
                    status = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            except OSError:
                continue
            if int(status["Uid"].split()[0]) == uid:
                n += int(status["Threads"])
        return n

    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + 1 + cfg["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (cfg["memory_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (cfg["file_size_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nproc = tasks_of(os.getuid()) + cfg["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # an oversized write fails with EFBIG instead of killing
    _signal.signal(_signal.SIGXCPU, lambda *_: finish(
        False, "CPUTimeLimit: the program used its %d s of CPU time and was stopped" % cfg["cpu_seconds"], "cpu"))

    armed = []
    refused = {
        "os.fork": "starting a process", "os.forkpty": "starting a process", "os.system": "starting a process",
        "os.exec": "starting a process", "os.posix_spawn": "starting a process", "os.spawn": "starting a process",
        "subprocess.Popen": "starting a process", "_thread.start_new_thread": "starting a thread",
        "os.kill": "sending a signal", "os.killpg": "sending a signal", "signal.pthread_kill": "sending a signal",
        "socket.__new__": "network access", "socket.connect": "network access", "socket.bind": "network access",
        "socket.getaddrinfo": "network access", "socket.gethostbyname": "network access",
        "ctypes.dlopen": "loading native code (ctypes)", "ctypes.dlsym": "loading native code (ctypes)",
    }
    refusal = ("sandbox: %s is not allowed here; the program can only compute, print and call "
               + ", ".join(cfg["primitives"]))

    def hook(event, args):
        if armed and event in refused:
            raise PermissionError(refusal % refused[event])

    if cfg["guards"]:
        sys.addaudithook(hook)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    for name in cfg["primitives"]:
        scope[name] = primitive(name)

    send({"op": "ready"})
    code = receive()["code"]

    def describe(exc):
        try:
            import linecache, traceback
            linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")
            te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
            te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == "<program>"])
            lines = list(te.format())
        except BaseException:
            lines = ["%s: %s\n" % (type(exc).__name__, exc)]
        if isinstance(exc, MemoryError):
            lines[-1] = "MemoryError: the program went over the sandbox's memory limit of %d MiB\n" % cfg["memory_mb"]
        text = "".join(lines)
        if len(text) > cfg["error_chars"]:
            text = "...\n" + text[-cfg["error_chars"]:]
        return text

    try:
        compiled = compile(code, "<program>", "exec")
        armed.append(True)
        exec(compiled, scope)
    except SystemExit as exc:
        if exc.code in (None, 0):
            finish(True)
        finish(False, "SystemExit: %s" % (exc.code,), "exit")
    except MemoryError as exc:
        finish(False, describe(exc), "memory")
    except BaseException as exc:
        finish(False, describe(exc), "error")
    finish(True)

_main()
'''


def frame(obj) -> bytes:
    # marshal format 4 (Python 3.4+) carries dict, list, str, int, float, bool and None the same way in
    # every Python 3 the sandbox may run, so the caller's and the worker's versions need not match.
    body = marshal.dumps(obj, 4)
    return len(body).to_bytes(4, "big") + body


def worker_config(config: SandboxConfig, primitives: Mapping[str, Callable]) -> dict:
    """The settings the worker reads first from its stdin (limits, guards, primitive names)."""
    return {
        "cpu_seconds": config.cpu_seconds, "memory_mb": config.memory_mb, "file_size_mb": config.file_size_mb,
        "max_open_files": config.max_open_files, "max_processes": config.max_processes, "guards": config.guards,
        "primitives": list(primitives), "error_chars": _ERROR_CHARS,
        # The primitives' own docstrings, so print(search_pages.__doc__) inside says what the caller's says.
        "docs": {n: inspect.getdoc(f) for n, f in primitives.items() if callable(f) and inspect.getdoc(f)},
    }


def worker_argv(python: str) -> list[str]:
    return [python, "-I", "-S", "-B", "-c", _WORKER]


def clean_env(home: str = "/tmp") -> dict[str, str]:
    """The sandbox's whole environment: nothing is inherited from the caller."""
    return {"PATH": _SAFE_PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


# --- the caller's side of the channel ---------------------------------------------------------------

class _Channel:
    """Answers a program's primitive calls: validates the request, runs the primitive, encodes the reply."""

    def __init__(self, primitives: Mapping[str, Callable], config: SandboxConfig, lock: threading.Lock):
        self.primitives = primitives
        self.config = config
        self.lock = lock
        self.calls: list[dict] = []

    def answer(self, msg: dict) -> bytes:
        name, args, kwargs = msg.get("name"), msg.get("args"), msg.get("kwargs")
        record = {"name": str(name)[:100], "args": _short(args), "ok": False}
        self.calls.append(record)
        if not isinstance(name, str) or name not in self.primitives:
            reply = {"error": f"unknown primitive {str(name)[:100]!r}", "type": "LookupError"}
        elif not isinstance(args, list) or not isinstance(kwargs, dict):
            reply = {"error": "malformed call", "type": "TypeError"}
        elif len(self.calls) > self.config.max_calls:
            reply = {"error": f"too many calls: a program may make at most {self.config.max_calls}",
                     "type": "RuntimeError"}
        else:
            try:
                with self.lock:
                    value = self.primitives[name](*args, **kwargs)
                reply = {"value": value}
                record["ok"] = True
            except (ValueError, TypeError) as exc:
                reply = {"error": str(exc), "type": type(exc).__name__ if isinstance(exc, TypeError) else "ValueError"}
            except Exception as exc:  # a bug on our side must not take the caller down with it
                reply = {"error": f"{name} failed: {type(exc).__name__}: {exc}", "type": "RuntimeError"}
        try:
            data = frame(reply)
        except ValueError:  # marshal: a type outside dict/list/str/int/float/bool/None
            record["ok"] = False
            data = frame({"error": f"{name} returned a value of a type the sandbox cannot pass", "type": "RuntimeError"})
        if len(data) > _MAX_REPLY:
            record["ok"] = False
            data = frame({"error": f"{name} returned more than {_MAX_REPLY >> 20} MiB", "type": "RuntimeError"})
        return data


def _short(value, n: int = 200) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= n else text[:n] + "…"


def _cut_output(raw: bytes, limit: int) -> tuple[str, bool]:
    text = raw.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text, False
    return text[:limit] + f"\n… [output truncated: {len(text) - limit} more characters]", True


class _Worker:
    def __init__(self, proc: subprocess.Popen, workdir: str | None, info_fd: int | None = None):
        self.proc = proc
        self.workdir = workdir
        self.info_fd = info_fd  # bubblewrap's --info-fd: {"child-pid": <the sandbox's PID 1>}
        self.uid = None
        self.started = time.perf_counter()

    def stop(self) -> None:
        """Kill everything the worker started and reap it.

        Under bubblewrap the sandbox's PID 1 (the worker) is killed first: the kernel then kills every
        process in its PID namespace, and bubblewrap reaps it and exits. Killing bubblewrap first would
        leave its child to the host's init to reap, and a container whose init never reaps would collect
        one zombie per program. SIGKILL to the whole process group is the fallback, and the way in
        rlimits-only mode.
        """
        if self.proc.poll() is None:
            pid = self._sandbox_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.proc.wait(timeout=2)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        if self.info_fd is not None:
            os.close(self.info_fd)
            self.info_fd = None

    def _sandbox_pid(self) -> int | None:
        if self.info_fd is None:
            return None
        try:
            data = os.read(self.info_fd, 4096)  # written once, at start, before the program runs
            return int(json.loads(data)["child-pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def retire(self, grace: float = 1.0) -> None:
        """After "done" the worker exits by itself, and bubblewrap after it: let them (their exit is then
        an ordinary one, CPU time accounted to the caller as a child's), and kill only what is left."""
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> None:
        self.stop()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# --- the local sandbox ------------------------------------------------------------------------------

_uids = count()


def reject_program(code, config: SandboxConfig) -> ExecResult | None:
    """The result for a program no sandbox should start (empty, or over `max_code_chars`); None to run it."""
    if not isinstance(code, str) or not code.strip():
        return ExecResult("", "ProgramRejected: the program is empty", "rejected", 0.0)
    if len(code) > config.max_code_chars:
        return ExecResult("", f"ProgramRejected: the program is {len(code)} characters long; the limit is "
                              f"{config.max_code_chars}", "rejected", 0.0)
    return None


class LocalSandbox:
    """Programs in fresh sandboxed processes on this machine (see the module docstring).

    Safe to share between threads (each program gets its own worker). Close it, or use it in a `with`
    block: its background thread keeps it, and its warm workers, alive until then.
    """

    def __init__(
        self,
        primitives: Mapping[str, Callable],
        config: SandboxConfig = SandboxConfig(),
        *,
        isolation: str = "auto",
        allow_weak_isolation: bool = False,
        warm: int = 1,
        python: str | None = None,
    ):
        if isolation not in ISOLATIONS:
            raise ConfigError(f"unknown sandbox isolation {isolation!r}; choose one of {', '.join(ISOLATIONS)}")
        self.primitives = dict(primitives)
        self.config = config
        self.warm = max(0, warm)
        self.python = python or _default_python()
        self._cond = threading.Condition()
        self._primitive_lock = threading.Lock()
        self._ready: list[_Worker] = []
        self._starting = 0  # workers being started in the background
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._bwrap = shutil.which("bwrap")
        why = None
        if isolation in ("auto", BUBBLEWRAP):
            if self._bwrap is None:
                why = "bubblewrap (bwrap) is not installed"
            else:
                self.isolation = BUBBLEWRAP
                self._bwrap_args = self._bubblewrap_args()
                why = self._probe()
        if why is not None or isolation == RLIMITS_ONLY:
            if not allow_weak_isolation and why is None:
                raise SandboxUnavailable(
                    "rlimits-only isolation needs allow_weak_isolation=True: it does not isolate the filesystem "
                    "or the network")
            if not allow_weak_isolation:
                raise SandboxUnavailable(
                    f"{why}: install it with `apt-get install -y bubblewrap`, or accept the weaker rlimit-only "
                    f"sandbox (no filesystem or network isolation) with allow_weak_isolation=True"
                )
            self.isolation = RLIMITS_ONLY
            self.fallback_reason = why
            probe = self._probe()
            if probe is not None:
                raise SandboxUnavailable(f"the rlimit-only sandbox cannot start either: {probe}")
        else:
            self.fallback_reason = None
        # Warm workers are started, and used ones killed, by one long-lived thread: bubblewrap's
        # --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that started it ends, so a
        # worker started from a short-lived thread would be killed before its program came.
        self._spawner = threading.Thread(target=self._serve_jobs, name="hopsmith-sandbox", daemon=True)
        self._spawner.start()
        self._finalizer = weakref.finalize(self, _shut_down, self._jobs, self._ready)
        with self._cond:
            self._starting += self.warm
        for _ in range(self.warm):
            self._jobs.put((None, True))

    # -- public ------------------------------------------------------------------------------------

    def execute(self, code: str) -> ExecResult:
        """Run one program and return what it printed (see `ExecResult`). Never raises for what the
        program does; raises only when the sandbox was closed."""
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        t0 = time.perf_counter()
        rejected = reject_program(code, self.config)
        if rejected is not None:
            return rejected
        worker = self._take()
        try:
            result = self._drive(worker, code, t0)
        except BaseException:
            worker.kill()
            raise
        self._recycle(worker)
        return result

    def wait_warm(self, timeout: float = STARTUP_SECONDS) -> bool:
        """Block until every pre-started worker has said "ready" (True) or `timeout` passes (False).
        The next `execute` then pays only for the program itself."""
        deadline = time.perf_counter() + timeout
        with self._cond:
            while self._starting and not self._closed:
                if not self._cond.wait(max(0.0, deadline - time.perf_counter())):
                    return False
            fds = [w.proc.stderr.fileno() for w in self._ready]
        for fd in fds:
            try:
                with selectors.DefaultSelector() as sel:
                    sel.register(fd, selectors.EVENT_READ)
                    if not sel.select(max(0.0, deadline - time.perf_counter())):
                        return False
            except (OSError, ValueError):
                continue  # taken and closed by a concurrent execute meanwhile
        return True

    def describe(self) -> dict:
        """What a run config records about the sandbox."""
        out = {"isolation": self.isolation, "python": self.python, "warm": self.warm, **asdict(self.config)}
        if self.isolation == BUBBLEWRAP:
            out["bubblewrap"] = self._bwrap
        if self.fallback_reason:
            out["fallback_reason"] = self.fallback_reason
        return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._jobs.put(None)
        self._spawner.join(timeout=2 * STARTUP_SECONDS)
        self._finalizer()

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- workers -----------------------------------------------------------------------------------

    def _take(self) -> _Worker:
        with self._cond:
            # A replacement already starting is nearer to ready than a new one would be.
            while not self._ready and self._starting and not self._closed:
                if not self._cond.wait(STARTUP_SECONDS):
                    break
            if self._ready:
                return self._ready.pop(0)
        return self._spawn()

    def _recycle(self, used: _Worker) -> None:
        """Hand the used worker to the spawner thread to kill, and have it start a replacement."""
        with self._cond:
            replace = not self._closed and len(self._ready) + self._starting < self.warm
            self._starting += replace
        self._jobs.put((used, replace))

    def _serve_jobs(self) -> None:
        while (job := self._jobs.get()) is not None:
            used, replace = job
            worker = None
            try:
                # The replacement first: a caller may be waiting for it, and nobody waits for the kill.
                if replace:
                    worker = self._spawn()
            except Exception:
                pass  # the next execute starts a worker itself, and reports what goes wrong then
            finally:
                with self._cond:
                    self._starting -= replace
                    if worker is not None and not self._closed:
                        self._ready.append(worker)
                        worker = None
                    self._cond.notify_all()
                if worker is not None:
                    worker.kill()
                if used is not None:
                    used.retire()
        # Closed: finish the kills still queued, start nothing new.
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job[0] is not None:
                job[0].kill()

    def _spawn(self) -> _Worker:
        argv = worker_argv(self.python)
        workdir = None
        kwargs = {}
        if os.geteuid() == 0:
            # Root would ignore RLIMIT_NPROC and could read everything: run as an unprivileged uid of our own.
            uid = 100_000 + (os.getpid() % 30_000) * 64 + next(_uids) % 64
            kwargs = {"user": uid, "group": uid, "extra_groups": []}
        info_r = info_w = None
        if self.isolation == BUBBLEWRAP:
            info_r, info_w = os.pipe()
            argv = [self._bwrap, "--info-fd", str(info_w), *self._bwrap_args, "--", *argv]
            kwargs["pass_fds"] = (info_w,)
            cwd, env = "/", clean_env("/tmp")
        else:
            workdir = tempfile.mkdtemp(prefix="hopsmith-sandbox-")
            if "user" in kwargs:
                os.chown(workdir, kwargs["user"], kwargs["group"])
            cwd, env = workdir, clean_env(workdir)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=cwd, env=env, start_new_session=True, close_fds=True, **kwargs)
        except BaseException:
            if info_r is not None:
                os.close(info_r)
            raise
        finally:
            if info_w is not None:
                os.close(info_w)
        worker = _Worker(proc, workdir, info_r)
        worker.uid = kwargs.get("user")
        # The settings are the first thing the worker reads; a few hundred bytes fit in the pipe at once.
        try:
            proc.stdin.write(frame(worker_config(self.config, self.primitives)))
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once (bubblewrap refused to start): _drive reports what it said
        return worker

    def _bubblewrap_args(self) -> list[str]:
        features = _bwrap_features(self._bwrap)
        args = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "sandbox"]
        if "--disable-userns" in features:  # bubblewrap >= 0.8: no nested user namespaces
            args.append("--disable-userns")
        # The system's programs and libraries, not all of /usr: a deployment may keep code in /usr/src or
        # /usr/local/src, and the interpreter's own prefix comes in below.
        roots = [d for d in _SYSTEM_DIRS if os.path.isdir(d)]
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(self.python)))
        roots += [d for d in (os.path.join(prefix, "bin"), os.path.join(prefix, "lib"))
                  if os.path.isdir(d) and not any((d + "/").startswith(r + "/") for r in roots)]
        for d in roots:
            args += ["--ro-bind", d, d]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += ["--proc", "/proc", "--dev", "/dev"]
        if "--size" in features:  # bubblewrap >= 0.7; older ones leave /tmp to RLIMIT_FSIZE alone
            args += ["--size", str(self.config.tmp_size_mb << 20)]
        args += ["--tmpfs", "/tmp"]
        # Installed packages (the project, if installed system-wide) stay out of sight: empty, read-only.
        hidden = [d for d in _site_dirs(self.python) if any((d + "/").startswith(r + "/") for r in roots)]
        for d in hidden:
            args += ["--tmpfs", d]
        args += ["--remount-ro", "/", "--remount-ro", "/dev"]
        for d in hidden:
            args += ["--remount-ro", d]
        return args + ["--chdir", "/tmp"]

    def _probe(self) -> str | None:
        """Run one program end to end; None when it worked, else why not."""
        try:
            result = self._drive(self._spawn_probe(), "print('ok')", time.perf_counter(), kill=True)
        except OSError as exc:
            return f"starting it failed ({exc})"
        if result.status != "ok" or result.output.strip() != "ok":
            last = (result.error or result.output or "no output").strip().splitlines()[-1]
            return f"{self.isolation} is installed but a test program failed in it ({last})"
        return None

    def _spawn_probe(self) -> _Worker:
        return self._spawn()

    # -- one program -------------------------------------------------------------------------------

    def _drive(self, worker: _Worker, code: str, t0: float, kill: bool = False) -> ExecResult:
        return _Run(self, worker, code, t0).result(kill)

    def _died(self, worker: _Worker, noise: list[str], waiting_ready: bool, elapsed: float) -> tuple[str, str]:
        try:
            rc = worker.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            worker.stop()
            rc = worker.proc.returncode
        if waiting_ready:
            return "sandbox_error", f"SandboxError: the sandbox failed to start (exit code {rc})"
        sig = -rc if rc < 0 else rc - 128 if rc > 128 else 0
        if sig == signal.SIGSEGV:
            return "crashed", ("Crash: the program crashed the interpreter (segmentation fault, e.g. from "
                               "recursion deeper than the C stack allows)")
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and elapsed >= self.config.cpu_seconds):
            # SIGKILL is the hard CPU limit (one second past the soft one) when the program ignored SIGXCPU.
            return "cpu_limit", (f"CPUTimeLimit: the program was killed after using its "
                                 f"{self.config.cpu_seconds} s of CPU time")
        if sig:
            return "crashed", f"Crash: the program was killed by {_signal_name(sig)}"
        return "crashed", f"Crash: the program ended the sandbox process early (exit code {rc})"


def _decode(line: bytes) -> dict | None:
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


class _Run:
    """One program on a worker: the code written to its stdin, its output read from stdout, its calls and
    its "ready"/"done" read from stderr (the request pipe), until it is done, dies or is stopped."""

    def __init__(self, sandbox: "LocalSandbox", worker: _Worker, code: str, t0: float):
        self.sandbox, self.worker, self.cfg, self.t0 = sandbox, worker, sandbox.config, t0
        self.channel = _Channel(sandbox.primitives, self.cfg, sandbox._primitive_lock)
        proc = worker.proc
        self.in_fd, self.out_fd, self.req_fd = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
        for fd in (self.in_fd, self.out_fd, self.req_fd):
            os.set_blocking(fd, False)
        self.pending = bytearray(frame({"code": code}))
        self.writing = True
        self.out = bytearray()
        self.out_total = 0
        self.req = bytearray()
        self.noise: list[str] = []  # what reached the request pipe without being a request: startup failures
        # A warm worker's "ready" is already waiting in the pipe; the wall clock starts when it is read.
        self.deadline = max(worker.started, t0) + STARTUP_SECONDS
        self.waiting_ready = True
        self.done: dict | None = None
        self.stop: tuple[str, str] | None = None  # (status, error) when the caller stops the program
        self.open_fds = 2

    def result(self, kill: bool) -> ExecResult:
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.out_fd, selectors.EVENT_READ)
        self.sel.register(self.req_fd, selectors.EVENT_READ)
        self.sel.register(self.in_fd, selectors.EVENT_WRITE)
        try:
            self._loop()
        finally:
            self.sel.close()
        self._finish()
        if kill:
            self.worker.kill()
        return self._result()

    def _loop(self) -> None:
        while self.done is None and self.stop is None:
            now = time.perf_counter()
            if now >= self.deadline:
                self.stop = ("sandbox_error", "SandboxError: the sandbox did not start in time") if self.waiting_ready \
                    else ("timeout", f"Timeout: the program ran past its {self.cfg.wall_seconds:g} s wall-clock limit "
                                     f"and was stopped")
                return
            if self.open_fds == 0:
                return
            for key, _ in self.sel.select(self.deadline - now):
                if key.fd == self.in_fd:
                    self._write()
                elif key.fd == self.out_fd:
                    if not self._read_output():
                        return
                else:
                    self._read_requests()

    def _write(self) -> None:
        try:
            del self.pending[: os.write(self.in_fd, self.pending)]
        except BrokenPipeError:
            self.pending.clear()
        if not self.pending:
            self.sel.unregister(self.in_fd)
            self.writing = False

    def _closed(self, fd: int) -> None:
        self.sel.unregister(fd)
        self.open_fds -= 1

    def _keep_output(self, data: bytes) -> None:
        if len(self.out) < self.cfg.max_output_chars * 4 + 4:
            self.out += data

    def _read_output(self) -> bool:
        """False when the program printed past its limit (and is stopped)."""
        data = os.read(self.out_fd, 1 << 16)
        if not data:
            self._closed(self.out_fd)
            return True
        self.out_total += len(data)
        self._keep_output(data)
        if self.out_total > self.cfg.max_output_bytes:
            self.stop = ("output_limit", f"OutputLimit: the program printed more than "
                                         f"{self.cfg.max_output_bytes} bytes and was stopped")
            return False
        return True

    def _read_requests(self) -> None:
        data = os.read(self.req_fd, 1 << 16)
        if not data:
            self._closed(self.req_fd)
            return
        self.req += data
        while b"\n" in self.req and self.done is None and self.stop is None:
            line, _, rest = self.req.partition(b"\n")
            self.req = bytearray(rest)
            if not self._request(line):
                break
        if len(self.req) > _MAX_LINE:
            self.stop = ("error", "ChannelError: the program wrote a line over 1 MiB to the sandbox's channel")

    def _request(self, line: bytes) -> bool:
        """Handle one line of the request pipe; False when the wall clock ran out (the loop says so)."""
        cfg = self.cfg
        msg = _decode(line)
        op = msg.get("op") if msg is not None else None
        if self.waiting_ready:
            # Before "ready" only bubblewrap or Python can write here: keep it for the error.
            if op == "ready":
                self.waiting_ready = False
                self.deadline = time.perf_counter() + cfg.wall_seconds
            elif len(self.noise) < 20:
                self.noise.append(line.decode("utf-8", errors="replace")[:500])
        elif op == "done":
            self.done = msg
        elif op != "call":
            self.stop = ("error", "ChannelError: the program wrote something other than a call to "
                                  "the sandbox's channel and was stopped")
        elif len(self.channel.calls) >= cfg.max_calls:
            self.stop = ("error", f"CallLimit: the program made more than {cfg.max_calls} calls to "
                                  f"{', '.join(self.sandbox.primitives)} and was stopped")
        elif time.perf_counter() >= self.deadline:
            return False
        else:
            self.pending += self.channel.answer(msg)
            if not self.writing:
                self.sel.register(self.in_fd, selectors.EVENT_WRITE)
                self.writing = True
            if len(self.pending) > _MAX_PENDING:
                self.stop = ("error", "ChannelError: the program did not read the answers to its calls and was stopped")
        return True

    def _finish(self) -> None:
        """The rest of the output, once the program is done or stopped (and its sandbox with it)."""
        if self.done is None and self.stop is None:
            self.stop = self.sandbox._died(self.worker, self.noise, self.waiting_ready, time.perf_counter() - self.t0)
        if self.done is not None:
            # The worker flushed its output before saying "done": all of it is in the pipe already.
            rest = _read_available(self.out_fd)
        else:
            # Stop the sandbox and everything it left running, then read what is left until the pipe closes.
            self.worker.stop()
            rest = _drain(self.out_fd, deadline=time.perf_counter() + 0.5)
        self._keep_output(rest)
        if self.stop is not None and self.stop[0] != "sandbox_error" and self.waiting_ready:
            self.stop = ("sandbox_error", self.stop[1])

    def _result(self) -> ExecResult:
        output, truncated = _cut_output(bytes(self.out), self.cfg.max_output_chars)
        seconds = time.perf_counter() - self.t0
        done = self.done
        if done is not None:
            status = "ok" if done.get("ok") else {"cpu": "cpu_limit", "memory": "memory_limit"}.get(done.get("kind"), "error")
            error = None if done.get("ok") else str(done.get("error"))[: 4 * _ERROR_CHARS]
        else:
            status, error = self.stop
            if self.noise and status == "sandbox_error":
                error = f"{error}: {' '.join(self.noise)[-500:]}"
        return ExecResult(output, error, status, seconds, self.channel.calls, truncated)


def _drain(fd: int, deadline: float) -> bytes:
    """What is left in a pipe whose writers are gone or going (bounded: at most 1 MiB, until `deadline`)."""
    out = bytearray()
    sel = selectors.DefaultSelector()
    try:
        sel.register(fd, selectors.EVENT_READ)
        while len(out) < (1 << 20):
            left = deadline - time.perf_counter()
            if left <= 0 or not sel.select(left):
                break
            data = os.read(fd, 1 << 16)
            if not data:
                break
            out += data
    except (OSError, ValueError):
        pass
    finally:
        sel.close()
    return bytes(out)


def _read_available(fd: int) -> bytes:
    """What a non-blocking pipe holds right now (at most 1 MiB)."""
    out = bytearray()
    while len(out) < (1 << 20):
        try:
            data = os.read(fd, 1 << 16)
        except (BlockingIOError, OSError):
            break
        if not data:
            break
        out += data
    return bytes(out)


def _shut_down(jobs: queue.SimpleQueue, workers: list[_Worker]) -> None:
    jobs.put(None)
    while workers:
        workers.pop().kill()


def _default_python() -> str:
    """The interpreter the sandbox runs: the system's /usr/bin/python3 when there is one (it lives under the
    read-only /usr every sandbox sees), else the one running this process."""
    for candidate in ("/usr/bin/python3", os.path.realpath(getattr(sys, "_base_executable", sys.executable))):
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


_SYSTEM_DIRS = ("/usr/bin", "/usr/sbin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/libexec",
                "/usr/share")

_FEATURES: dict[str, str] = {}


def _bwrap_features(bwrap: str) -> str:
    """bubblewrap's --help text, to see which options this version has."""
    if bwrap not in _FEATURES:
        try:
            _FEATURES[bwrap] = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            _FEATURES[bwrap] = ""
    return _FEATURES[bwrap]


_SITE_CACHE: dict[str, list[str]] = {}


def _site_dirs(python: str) -> list[str]:
    """The interpreter's site-packages / dist-packages directories that exist (asked once per interpreter)."""
    if python not in _SITE_CACHE:
        code = "import json, site, sys; print(json.dumps(site.getsitepackages() + [site.getusersitepackages()]))"
        try:
            out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, timeout=30,
                                 env=clean_env()).stdout
            dirs = json.loads(out)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            dirs = []
        _SITE_CACHE[python] = sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})
    return _SITE_CACHE[python]


# --- Modal ------------------------------------------------------------------------------------------

class ModalSandbox:
    """The same worker and channel inside a `modal.Sandbox` (written against modal 1.6's documented API:
    `Sandbox.create(app=, image=, timeout=, cpu=, memory=, block_network=)`, `Sandbox.exec(*args, timeout=,
    text=False)`, the process's `stdin.write`/`drain`, iteration over `stderr`, `stdout.read()`, `wait()`).

    One Modal sandbox serves many programs (one exec each); it is created on the first program and
    terminated by `close()`, or when a program must be stopped for printing too much. The wall clock is
    the exec's `timeout` (whole seconds). Needs a Modal account; without one only `create_kwargs` and
    `exec_args` can be checked.
    """

    isolation = MODAL

    def __init__(self, primitives: Mapping[str, Callable], config: SandboxConfig = SandboxConfig(), *, app=None,
                 image=None, cpu: float = 1.0, session_seconds: int = 3600, python: str = "python3"):
        self.primitives = dict(primitives)
        self.config = config
        self.app = app
        self.image = image
        self.cpu = cpu
        self.session_seconds = session_seconds
        self.python = python
        self._sandbox = None
        self._lock = threading.Lock()

    def create_kwargs(self) -> dict:
        image = self.image
        if image is None:
            import modal

            image = modal.Image.debian_slim(python_version="3.11")
        return {
            "app": self.app,
            "image": image,
            "timeout": self.session_seconds,
            "cpu": self.cpu,
            # Request and hard limit: the program's own RLIMIT_AS plus room for the interpreter and /tmp.
            "memory": (self.config.memory_mb + 256, self.config.memory_mb + 256 + self.config.tmp_size_mb),
            "block_network": True,
            "workdir": "/tmp",
            "env": clean_env("/tmp"),
        }

    def exec_args(self) -> tuple[list[str], dict]:
        argv = worker_argv(self.python)
        return argv, {"timeout": max(1, math.ceil(self.config.wall_seconds)), "text": False, "workdir": "/tmp"}

    def describe(self) -> dict:
        return {"isolation": MODAL, "python": self.python, "cpu": self.cpu, **asdict(self.config)}

    def execute(self, code: str) -> ExecResult:
        import modal

        t0 = time.perf_counter()
        rejected = reject_program(code, self.config)
        if rejected is not None:
            return rejected
        if self._sandbox is None:
            self._sandbox = modal.Sandbox.create(**self.create_kwargs())
        argv, kwargs = self.exec_args()
        process = self._sandbox.exec(*argv, **kwargs)
        return drive_stream_process(process, code, self.primitives, self.config, self._lock, t0,
                                    on_overflow=self.close)

    def close(self) -> None:
        if self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            sandbox.terminate()

    def __enter__(self) -> ModalSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def drive_stream_process(process, code: str, primitives: Mapping[str, Callable], config: SandboxConfig,
                         lock: threading.Lock, t0: float, on_overflow: Callable[[], None] | None = None) -> ExecResult:
    """The channel over a process object with Modal's blocking stream API (`stdin.write(bytes)` +
    `stdin.drain()`, line iteration over `stderr`, `stdout.read()` or iteration, `wait()`)."""
    channel = _Channel(primitives, config, lock)
    out = bytearray()
    total = [0]
    overflow = threading.Event()

    def read_output():
        for chunk in process.stdout:
            total[0] += len(chunk)
            if len(out) < config.max_output_chars * 4 + 4:
                out.extend(chunk)
            if total[0] > config.max_output_bytes and not overflow.is_set():
                overflow.set()
                if on_overflow is not None:
                    on_overflow()

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    process.stdin.write(frame(worker_config(config, primitives)) + frame({"code": code}))
    process.stdin.drain()
    done = None
    noise = []
    buffer = b""
    # A bytes stream yields chunks as they arrive, not lines: split them here.
    for chunk in process.stderr:
        buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        while b"\n" in buffer and done is None:
            line, buffer = buffer.split(b"\n", 1)
            msg = _decode(line)
            if msg is None:
                noise.append(line.decode("utf-8", errors="replace"))
            elif msg.get("op") == "call":
                process.stdin.write(channel.answer(msg))
                process.stdin.drain()
            elif msg.get("op") == "done":
                done = msg
        if done is not None or len(buffer) > _MAX_LINE:
            break
    rc = process.wait()
    reader.join(timeout=2)
    output, truncated = _cut_output(bytes(out), config.max_output_chars)
    seconds = time.perf_counter() - t0
    if overflow.is_set():
        status, error = "output_limit", f"OutputLimit: the program printed more than {config.max_output_bytes} bytes and was stopped"
    elif done is not None:
        status = "ok" if done.get("ok") else {"cpu": "cpu_limit", "memory": "memory_limit"}.get(done.get("kind"), "error")
        error = None if done.get("ok") else done.get("error")
    elif seconds >= config.wall_seconds:
        status, error = "timeout", f"Timeout: the program ran past its {config.wall_seconds:g} s wall-clock limit and was stopped"
    else:
        status, error = "crashed", f"Crash: the program ended the sandbox process early (exit code {rc})"
        if noise:
            error += ": " + " ".join(noise)[-500:]
    return ExecResult(output, error, status, seconds, channel.calls, truncated)
