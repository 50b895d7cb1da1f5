"""One writer per run directory.

Two processes writing one `--out` used to both exit 0 with every row twice and their configs mixed. Every
stage's `run(cfg, root)` takes an exclusive lock on `root/.hopsmith.lock` (`flock`, released by the OS
when the process ends, so a killed run never blocks the next) and refuses a root that another process
holds, or whose parent run another process holds (a pipeline's stages live inside its root), with one line
naming the holder. Nested stages of one process share its locks. The lock file goes when the run ends, and
so does the directory if the run made it and wrote nothing there.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".hopsmith.lock"
_held: dict[Path, object] = {}  # run roots this process holds, with their open lock files


class RunLockError(ValueError):
    """Another process is writing this run directory (or the run it belongs to)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}), since {since}"


def _refuse(root: Path, holder_root: Path) -> RunLockError:
    where = "it" if holder_root == root else f"its parent run {holder_root}"
    return RunLockError(f"{root} is in use: {where} is being written by {_holder(holder_root / LOCK_NAME)}; "
                        "wait for that run to end or give another --out")


def _probe(root: Path) -> bool:
    """True when another process holds root's lock (tried and let go at once)."""
    path = root / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # a filesystem without locks (some network volumes): nothing to probe
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextmanager
def run_lock(root: str | Path):
    """Hold `root` for the duration (see the module docstring); re-entrant within one process."""
    root = Path(root).resolve()
    if root in _held or any(p in _held for p in root.parents):
        yield root
        return
    for parent in root.parents:
        if _probe(parent):
            raise _refuse(root, parent)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    while True:
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise _refuse(root, root) from None
        except OSError:  # a filesystem without locks: run unguarded rather than not at all
            f.close()
            yield root
            return
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break  # the file we hold is the one at the path (not one a finishing holder just unlinked)
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]}))
    f.flush()
    _held[root] = f
    try:
        yield root
    finally:
        _held.pop(root, None)
        # Gone before it is let go (a waiting opener then sees another inode and retries): a run that wrote
        # nothing leaves nothing, not even the directory it made.
        path.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
        if created:
            try:
                root.rmdir()  # only when empty
            except OSError:
                pass


def locked(run):
    """Decorate a stage's `run(cfg, root, ...)` so it holds `root` while it runs."""

    @functools.wraps(run)
    def wrapper(cfg, root, *args, **kwargs):
        with run_lock(root):
            return run(cfg, root, *args, **kwargs)

    return wrapper
