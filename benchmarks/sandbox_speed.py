"""Sandbox overhead: per-program latency (warm and cold) and programs per second on 2 cores.

    python benchmarks/sandbox_speed.py [--n 40] [--seconds 10]

Runs on 2 CPU cores (the process pins itself and its children to two, so the figure means the same on a
bigger machine) and measures, side by side in one run:
- warm: `LocalSandbox.execute` with its worker already started and ready (the agent's case: the model
  generates for a while between two programs), as the caller sees it (the replacement worker starts in
  a background thread);
- cold: a sandbox with no pre-started worker, so each program pays for bubblewrap and Python starting;
- baseline: `subprocess.run([python, "-c", program])`, a plain unsandboxed interpreter, same program;
- throughput: programs per second back to back: 1 caller thread with 1 or 2 warm workers, 2 threads
  with 2 (each program still gets a fresh worker, so this is bounded by how fast workers start);
- CPU per program, caller and sandbox processes together: unlike programs/s it does not depend on how
  busy the machine is, so 2 cores / CPU per program is what 2 otherwise idle cores could run.
The programs: `print(1)`, and seed 004's search loop (search_pages, then read_section per hit) on the
bundled MuSiQue wiki. Prints medians and 90th percentiles, the ratios of warm latency to the 50 ms goal
and to the baseline, and one summary line with the machine's load average. Needs bubblewrap
(`apt-get install -y bubblewrap`).
"""
from __future__ import annotations

import argparse
import os
import resource
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


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped descendants. bubblewrap runs the sandboxed interpreter
    as its direct child (--as-pid-1) and reaps it, so the sandbox's CPU time is counted here."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def throughput(prims, cfg: SandboxConfig, code: str, threads: int, warm: int, seconds: float) -> tuple[float, float]:
    """Programs per second back to back, and CPU milliseconds per program (caller and sandboxes together,
    counted until the sandbox is closed and every worker it started is reaped)."""
    box = LocalSandbox(prims, cfg, warm=warm)
    box.wait_warm(15)
    done = [0] * threads
    stop = time.perf_counter() + seconds

    def run(i):
        while time.perf_counter() < stop:
            assert box.execute(code).ok
            done[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rate = sum(done) / (time.perf_counter() - t0)
    box.close()
    return rate, (cpu_seconds() - cpu0) * 1000 / sum(done)


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

    tput1, _ = throughput(prims, cfg, TRIVIAL, 1, 1, args.seconds)
    tput1_pool, _ = throughput(prims, cfg, TRIVIAL, 1, 2, args.seconds)
    tput2, cpu2 = throughput(prims, cfg, TRIVIAL, 2, 2, args.seconds)
    tput2_search, cpu2_search = throughput(prims, cfg, SEARCH, 2, 2, args.seconds)
    print(f"throughput, print(1):    {tput1:5.1f} programs/s (1 thread, 1 warm worker), {tput1_pool:5.1f} "
          f"(1 thread, 2 warm), {tput2:5.1f} (2 threads, 2 warm)")
    print(f"throughput, search loop: {tput2_search:5.1f} programs/s (2 threads, 2 warm)")
    # programs/s depend on what else runs on the machine; the CPU each program costs does not, and
    # 2 cores / that cost is what 2 otherwise idle cores could run.
    print(f"CPU per program (caller + sandbox): print(1) {cpu2:.1f} ms, search loop {cpu2_search:.1f} ms -> "
          f"2 idle cores: {2000 / cpu2:.0f} and {2000 / cpu2_search:.0f} programs/s")

    warm = statistics.median(rows["print(1)"]["warm"])
    cold = statistics.median(rows["print(1)"]["cold"])
    plain = statistics.median(base)
    print(f"warm / 50 ms goal = {warm / GOAL_MS:.2f}   warm / plain subprocess = {warm / plain:.2f}   "
          f"cold / plain subprocess = {cold / plain:.2f}")
    print(f"SUMMARY sandbox warm {warm:.1f} ms ({warm / GOAL_MS:.2f}x the 50 ms goal, {warm / plain:.2f}x a plain "
          f"subprocess.run at {plain:.1f} ms), cold {cold:.1f} ms; {tput2:.0f} programs/s measured on 2 cores at "
          f"load average {os.getloadavg()[0]:.1f}, {2000 / cpu2:.0f}/s by CPU cost ({cpu2:.1f} ms each)")


if __name__ == "__main__":
    main()
