"""Sandbox overhead: per-program latency (warm and cold) and programs per second on 2 cores.

    python benchmarks/sandbox_speed.py [--n 40] [--seconds 10]

Runs on 2 CPU cores (the process pins itself and its children to two, so the figure means the same on a
bigger machine) and measures, side by side in one run:
- warm: `LocalSandbox.execute` with its worker already started and ready (the agent's case: the model
  generates for a while between two programs), as the caller sees it, replacement worker start included;
- cold: a sandbox with no pre-started worker, so each program pays for bubblewrap and Python starting;
- baseline: `subprocess.run([python, "-c", program])`, a plain unsandboxed interpreter, same program;
- throughput: programs per second back to back, 1 caller thread with 1 warm worker, 2 threads with 2.
The programs: `print(1)`, and seed 004's search loop (search_pages, then read_section per hit) on the
bundled MuSiQue wiki. Prints medians and 90th percentiles, the ratio of warm latency to the 50 ms goal
and to the baseline, and one summary line. Needs bubblewrap (`apt-get install -y bubblewrap`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time

from hopsmith.data import load_questions
from hopsmith.tools.sandbox import LocalSandbox, SandboxConfig
from hopsmith.tools.wiki import Wiki

GOAL_MS = 50.0
TRIVIAL = "print(1)"
SEARCH = (
    "for result in search_pages('Mountrail County North Dakota')[:5]:\n"
    "    content = read_section(result['page_id'] + ':full')\n"
    "    if 'township' in content:\n"
    "        print(result['title'])\n"
)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def fmt(xs: list[float]) -> str:
    return f"median {statistics.median(xs):6.1f} ms   p90 {pct(xs, 0.9):6.1f} ms"


def warm_latency(box: LocalSandbox, code: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        if not box.wait_warm(15):
            raise SystemExit("a sandbox worker did not start within 15 s")
        t0 = time.perf_counter()
        result = box.execute(code)
        out.append((time.perf_counter() - t0) * 1000)
        assert result.ok, result.text()
    return out


def cold_latency(box: LocalSandbox, code: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = box.execute(code)
        out.append((time.perf_counter() - t0) * 1000)
        assert result.ok, result.text()
    return out


def baseline_latency(python: str, code: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", code], capture_output=True, check=True)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def throughput(box: LocalSandbox, code: str, threads: int, seconds: float) -> float:
    box.wait_warm(15)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def run(i):
        while time.perf_counter() < stop:
            assert box.execute(code).ok
            done[i] += 1

    t0 = time.perf_counter()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40, help="programs per latency measurement")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    args = ap.parse_args()

    cores = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cores)
    wiki = Wiki.from_questions(load_questions("musique"))
    prims = wiki.primitives()
    cfg = SandboxConfig()
    print(f"wiki: {len(wiki)} pages; CPU cores used: {cores}")

    with LocalSandbox(prims, cfg, warm=1) as warm_box, LocalSandbox(prims, cfg, warm=0) as cold_box:
        print(f"isolation: {warm_box.describe()['isolation']}, interpreter {warm_box.python}")
        # One untimed round each, so page caches and the BM25 index are warm for everyone.
        warm_latency(warm_box, SEARCH, 2), cold_latency(cold_box, TRIVIAL, 2), baseline_latency(warm_box.python, TRIVIAL, 2)
        rows = {}
        for name, code in (("print(1)", TRIVIAL), ("search loop", SEARCH)):
            rows[name] = {
                "warm": warm_latency(warm_box, code, args.n),
                "cold": cold_latency(cold_box, code, args.n),
            }
        base = baseline_latency(warm_box.python, TRIVIAL, args.n)
        for name, r in rows.items():
            print(f"{name:12s} warm  {fmt(r['warm'])}")
            print(f"{name:12s} cold  {fmt(r['cold'])}")
        print(f"{'print(1)':12s} plain subprocess.run baseline  {fmt(base)}")

    with LocalSandbox(prims, cfg, warm=1) as one, LocalSandbox(prims, cfg, warm=2) as two:
        tput1 = throughput(one, TRIVIAL, 1, args.seconds)
        tput2 = throughput(two, TRIVIAL, 2, args.seconds)
        tput2_search = throughput(two, SEARCH, 2, args.seconds)
    print(f"throughput, print(1):    {tput1:5.1f} programs/s (1 thread), {tput2:5.1f} programs/s (2 threads)")
    print(f"throughput, search loop: {tput2_search:5.1f} programs/s (2 threads)")

    warm = statistics.median(rows["print(1)"]["warm"])
    cold = statistics.median(rows["print(1)"]["cold"])
    plain = statistics.median(base)
    print(f"warm / 50 ms goal = {warm / GOAL_MS:.2f}   warm / plain subprocess = {warm / plain:.2f}   "
          f"cold / plain subprocess = {cold / plain:.2f}")
    print(f"SUMMARY sandbox warm {warm:.1f} ms ({warm / GOAL_MS:.2f}x the 50 ms goal, {warm / plain:.2f}x a plain "
          f"subprocess.run at {plain:.1f} ms), cold {cold:.1f} ms, {tput2:.0f} programs/s on 2 cores")


if __name__ == "__main__":
    main()
