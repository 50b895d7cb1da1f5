"""Run shards of a stage through any mapper, retry the ones that fail, keep the cost ledger and budget.

The same orchestration serves the cloud and the laptop: `app.py` hands in a mapper that calls a Modal
function's `.map(..., return_exceptions=True)`; tests and `hopsmith` hand in `local_map`, which calls the
function in-process. A shard function returns `{"result": ..., "usage": Usage dict}`; the ledger records
every container's usage, a failed shard is launched again (shards are resumable and skip complete work,
so a retry never duplicates rows), and with a budget no new wave of shards starts once the ledger is
over the cap.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from .cost import Budget, BudgetExceeded, Ledger

Mapper = Callable[[Callable, Sequence[tuple]], list]


def local_map(fn: Callable, args: Sequence[tuple]) -> list:
    """Call fn on each argument tuple in this process; an exception is returned in its slot, not raised."""
    out = []
    for a in args:
        try:
            out.append(fn(*a))
        except Exception as exc:  # noqa: BLE001 - a failed shard is reported and retried by the caller
            out.append(exc)
    return out


class ShardsFailed(RuntimeError):
    def __init__(self, stage: str, failures: dict[int, BaseException]):
        self.failures = failures
        detail = "; ".join(f"shard {i}: {type(e).__name__}: {e}" for i, e in sorted(failures.items()))
        super().__init__(f"stage {stage!r}: {len(failures)} shard(s) still failing after retries ({detail})")


def run_shards(
    stage: str,
    fn: Callable,
    args: Sequence[tuple],
    *,
    mapper: Mapper = local_map,
    retries: int = 2,
    ledger: Ledger | None = None,
    budget: Budget | None = None,
    wave: int | None = None,
    shard_usd: float | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[Any]:
    """Results of fn(*args[i]) for every shard i, in order.

    Shards go out in waves of `wave` (all at once by default); the failed ones are sent again up to
    `retries` more times. With a budget, a wave does not start once the ledger has passed the cap, and
    with `shard_usd` (one shard's estimate) a wave holds only as many shards as the money left pays for:
    8 shards of $7 under a $10 cap launch one, not eight (BudgetExceeded names the shards left undone; what
    finished is recorded and kept)."""
    results: dict[int, Any] = {}
    pending = list(range(len(args)))
    failures: dict[int, BaseException] = {}
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            log(f"{stage}: retrying shard(s) {pending} (attempt {attempt + 1})")
        still: list[int] = []
        start = 0
        while start < len(pending):
            size = _wave_size(wave or len(pending), budget, shard_usd)
            if size == 0:
                left = sorted(set(pending[start:]) | set(still))
                spent = budget.ledger.total_usd_caller
                raise BudgetExceeded(f"stage {stage!r}: ${spent:.2f} spent of the budget of ${budget.cap_usd:.2f}, and one "
                                     f"shard is estimated at ${shard_usd or 0:.2f}; shards {left} were not launched")
            chunk = pending[start:start + size]
            start += len(chunk)
            for i, out in zip(chunk, mapper(fn, [args[i] for i in chunk])):
                if isinstance(out, BaseException):
                    failures[i] = out
                    still.append(i)
                    # A failed attempt still held a container while the caller waited: its caller time is kept.
                    if ledger is not None and getattr(out, "usage", None):
                        ledger.record(out.usage)
                    continue
                failures.pop(i, None)
                if isinstance(out, dict) and "usage" in out:
                    if ledger is not None and out["usage"]:
                        ledger.record(out["usage"])
                    out = out.get("result")
                results[i] = out
        pending = still
    if pending:
        raise ShardsFailed(stage, {i: failures[i] for i in pending})
    return [results[i] for i in range(len(args))]


def _wave_size(size: int, budget: Budget | None, shard_usd: float | None) -> int:
    """How many shards the next wave may launch: 0 once over budget or when the money left pays for none."""
    if budget is None or budget.cap_usd is None:
        return size
    left = budget.cap_usd - budget.ledger.total_usd_caller
    if left <= 0:
        return 0
    if shard_usd and shard_usd > 0:
        return min(size, int(left // shard_usd))
    return size


class CallTimedOut(RuntimeError):
    pass


def gather_calls(calls: Sequence[Any], get: Callable[[Any], Any], *, not_ready: tuple, timeout_s: float | None = None,
                 interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> list[tuple[Any, float]]:
    """Wait for calls already started (Modal's `.spawn()` handles), polling each with `get(call)` (which raises
    one of `not_ready` while it runs); returns (result or the exception it raised, seconds from the start of
    the wait to its arrival) per call, in order. A call still running after `timeout_s` gets CallTimedOut:
    the caller never waits forever on a hung container."""
    start = clock()
    out: list[tuple[Any, float] | None] = [None] * len(calls)
    while True:
        for i, c in enumerate(calls):
            if out[i] is not None:
                continue
            try:
                out[i] = (get(c), clock() - start)
            except not_ready:
                pass
            except Exception as exc:  # noqa: BLE001 - the call's own failure, returned in its slot
                out[i] = (exc, clock() - start)
        if all(o is not None for o in out):
            return out  # type: ignore[return-value]
        if timeout_s is not None and clock() - start > timeout_s:
            late = clock() - start
            return [o if o is not None else (CallTimedOut(f"no result after {late:.0f} s (limit {timeout_s:.0f} s)"), late)
                    for o in out]
        sleep(interval_s)
