"""What cloud stages cost: a dated rate table, a ledger of measured container seconds, a budget guard,
and an estimate of a recipe before it runs.

    hopsmith cost runs/ladder                  # the ledger of a run: per stage, total, per correct answer
    hopsmith cost --estimate                   # seed 000's recipe (1,100 traces, 3 epochs on L4, 200-question eval on B200)
    hopsmith cost --estimate --from runs/x     # the same, with the throughputs a real run measured

Every remote stage reports one `Usage` per container: GPU type and count, CPU cores and memory it
reserved, the wall seconds its body ran, and the wall seconds the caller waited for the call
(`caller_seconds`: cold start, image pull, model download and Modal's own retries included, and queueing,
which is not billed). The body time is a lower bound of what a call cost and the caller's an upper bound;
the ledger prices both with `RATES` (change prices in that one place), records failed attempts at their
caller time, and writes `runs/<run>/cost.json`. The budget guard refuses a stage whose estimate would pass
the cap and tells fan-outs to stop launching shards once the ledger (at the upper bound) has passed it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .io import write_json

# Modal list prices, USD per hour, pinned on this date; a new price list changes this table only.
RATES_DATE = "2026-11-23"
GPU_USD_PER_HOUR = {
    "B200": 6.25, "H200": 4.54, "H100": 3.95, "A100-80GB": 2.50, "A100-40GB": 2.10,
    "L40S": 1.95, "A10": 1.10, "L4": 0.80, "T4": 0.59,
}
CPU_CORE_USD_PER_HOUR = 0.047
MEMORY_GIB_USD_PER_HOUR = 0.008


class CostError(ValueError):
    pass


class BudgetExceeded(RuntimeError):
    """A stage would pass (or has passed) the run's --budget-usd."""


def gpu_rate(gpu: str | None) -> float:
    """USD per hour of one GPU of this type (None: no GPU). Accepts Modal's spellings, e.g. "l4", "H100:2"."""
    if not gpu:
        return 0.0
    name = gpu_name(gpu)
    if name not in GPU_USD_PER_HOUR:
        raise CostError(f"no price for GPU {gpu!r}; known: {', '.join(GPU_USD_PER_HOUR)} (hopsmith/cost.py)")
    return GPU_USD_PER_HOUR[name]


def gpu_name(gpu: str) -> str:
    """The rate table's name for a Modal GPU spelling: "l4" -> "L4", "A100-80G:2" -> "A100-80GB"."""
    name = gpu.split(":")[0].strip().upper()
    return {"A100": "A100-40GB", "A100-40G": "A100-40GB", "A100-80G": "A100-80GB"}.get(name, name)


def gpu_count(gpu: str | None) -> int:
    if not gpu:
        return 0
    return int(gpu.split(":")[1]) if ":" in gpu else 1


def hourly_rate(gpu: str | None, cpu: float, memory_gib: float) -> float:
    """USD per hour of one container: its GPUs plus the CPU cores and memory it reserves."""
    return gpu_rate(gpu) * gpu_count(gpu) + cpu * CPU_CORE_USD_PER_HOUR + memory_gib * MEMORY_GIB_USD_PER_HOUR


@dataclass
class Usage:
    """One container's run of one stage: what it reserved and how long its body ran."""

    stage: str
    seconds: float
    gpu: str | None = None
    cpu: float = 1.0
    memory_gib: float = 1.0
    shard: int | None = None
    tokens: int | None = None  # tokens processed (trained or generated+read), for measured throughputs
    items: int | None = None  # traces, questions...
    note: str = ""
    caller_seconds: float | None = None  # what the caller waited for this call; None when not measured
    failed: bool = False  # an attempt that raised: its body time is unknown (0), its caller time is not

    @property
    def usd(self) -> float:
        return self.seconds / 3600.0 * hourly_rate(self.gpu, self.cpu, self.memory_gib)

    @property
    def usd_caller(self) -> float:
        """Priced at the caller's wall time (the body's when that was not measured): the upper bound."""
        seconds = max(self.seconds, self.caller_seconds or 0.0)
        return seconds / 3600.0 * hourly_rate(self.gpu, self.cpu, self.memory_gib)

    def to_dict(self) -> dict:
        return {**asdict(self), "gpu_count": gpu_count(self.gpu), "usd": self.usd, "usd_caller": self.usd_caller}

    @classmethod
    def from_dict(cls, d: dict) -> "Usage":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


class Meter:
    """Times a stage body inside its container: `with Meter("sft", gpu="L4") as m: ...; m.usage`."""

    def __init__(self, stage: str, *, gpu: str | None = None, cpu: float = 1.0, memory_gib: float = 1.0,
                 shard: int | None = None):
        self.usage = Usage(stage, 0.0, gpu=gpu, cpu=cpu, memory_gib=memory_gib, shard=shard)

    def __enter__(self) -> "Meter":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.usage.seconds = time.perf_counter() - self._t0


@dataclass
class Ledger:
    """Every container's usage of one run, kept in `cost.json` (rewritten atomically on each record)."""

    path: Path | None = None
    entries: list[Usage] = field(default_factory=list)
    correct_answers: int | None = None

    @classmethod
    def open(cls, path: str | Path) -> "Ledger":
        path = Path(path)
        ledger = cls(path)
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                ledger.entries = [Usage.from_dict(e) for e in saved.get("entries", [])]
                ledger.correct_answers = saved.get("correct_answers")
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise CostError(f"{path}: not a cost ledger ({exc})") from None
        return ledger

    def record(self, *usages: Usage | dict) -> None:
        for u in usages:
            self.entries.append(Usage.from_dict(u) if isinstance(u, dict) else u)
        self.save()

    @property
    def total_usd(self) -> float:
        return sum(e.usd for e in self.entries)

    @property
    def total_usd_caller(self) -> float:
        return sum(e.usd_caller for e in self.entries)

    def stage_usd(self, stage: str) -> float:
        return sum(e.usd for e in self.entries if e.stage == stage)

    def summary(self) -> dict:
        stages: dict[str, dict] = {}
        for e in self.entries:
            s = stages.setdefault(e.stage, {"usd": 0.0, "seconds": 0.0, "containers": 0, "gpu": e.gpu, "tokens": 0,
                                            "usd_caller": 0.0, "caller_seconds": 0.0, "failed_attempts": 0})
            s["usd"] += e.usd
            s["seconds"] += e.seconds
            s["usd_caller"] += e.usd_caller
            s["caller_seconds"] += max(e.seconds, e.caller_seconds or 0.0)
            s["failed_attempts"] += int(e.failed)
            s["containers"] += 0 if e.failed else 1
            s["tokens"] += e.tokens or 0
        for s in stages.values():
            s["tokens_per_second"] = s["tokens"] / s["seconds"] if s["tokens"] and s["seconds"] else None
        total = self.total_usd
        per_correct = total / self.correct_answers if self.correct_answers else None
        return {"rates": rate_table(), "stages": stages, "total_usd": total, "total_usd_caller": self.total_usd_caller,
                "correct_answers": self.correct_answers,
                "usd_per_correct_answer": per_correct, "entries": [e.to_dict() for e in self.entries]}

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, self.summary())


def rate_table() -> dict:
    return {"date": RATES_DATE, "gpu_usd_per_hour": dict(GPU_USD_PER_HOUR),
            "cpu_core_usd_per_hour": CPU_CORE_USD_PER_HOUR, "memory_gib_usd_per_hour": MEMORY_GIB_USD_PER_HOUR}


@dataclass
class Budget:
    """`--budget-usd`: refuse a stage whose estimate would pass the cap; stop fan-outs that ran over."""

    cap_usd: float | None
    ledger: Ledger

    def check(self, stage: str, estimate_usd: float) -> None:
        if self.cap_usd is None:
            return
        spent = self.ledger.total_usd_caller
        if spent + estimate_usd > self.cap_usd:
            raise BudgetExceeded(f"stage {stage!r} is estimated at ${estimate_usd:.2f}; with ${spent:.2f} spent it "
                                 f"would pass the budget of ${self.cap_usd:.2f}. Raise --budget-usd or shrink the stage")

    # The guard counts the caller's wall time (the upper bound): a budget is a cap, not a best case.
    def over(self) -> bool:
        return self.cap_usd is not None and self.ledger.total_usd_caller > self.cap_usd

    def remaining_usd(self) -> float | None:
        return None if self.cap_usd is None else self.cap_usd - self.ledger.total_usd_caller

    def seconds_left(self, usd_per_hour: float) -> float | None:
        """How long a container at this rate may run before the budget is spent (None: no cap)."""
        left = self.remaining_usd()
        if left is None:
            return None
        return max(0.0, left / usd_per_hour * 3600.0) if usd_per_hour > 0 else float("inf")


# -- estimates ----------------------------------------------------------------------------------------

# Throughput priors, used until a run's ledger supplies measured ones (`--from`). Each says where it
# comes from; none was measured on a GPU by this project yet (see the README's cloud section).
PRIORS = {
    # Seed 000: 1,100 traces x 3 epochs of Qwen3-1.7B LoRA took "one hour on an L4". With the tokens per
    # trace below that is 1,100 x 3 x 2,233 / 3,600 s, about 2,050 tokens/s. Other GPUs: scaled by their
    # bf16 throughput relative to the L4 (a guess, to be replaced by measured ledgers).
    "sft_tokens_per_s": {"L4": 2050.0, "A10": 2200.0, "L40S": 4100.0, "A100-80GB": 6100.0, "H100": 9400.0},
    # Mean tokens of one synthetic trace at the full preset (top-5 whole paragraphs): 2,233, measured on
    # 132 bundled MuSiQue train traces with the embedded model's tokenizer (`benchmarks/cost_estimate.py`).
    "tokens_per_trace": 2233.0,
    # vLLM offline batched generation of a <=2B model; a placeholder scale until a cloud run measures it.
    "eval_tokens_per_s": {"B200": 60000.0, "H200": 45000.0, "H100": 40000.0, "A100-80GB": 25000.0, "L4": 6000.0},
    # Prompt + completion tokens of one full-preset episode (about 4 turns of a tuned agent).
    "tokens_per_episode": 9000.0,
    "container_start_s": {"sft": 120.0, "eval": 240.0, "cpu": 20.0},  # image pull, model load, CUDA graphs
    "cpu_seconds_per_trace": 0.05,
}

# What each role's container reserves (cores, GiB): the app's function table uses the same numbers.
RESOURCES = {"sft": (4.0, 16.0), "eval": (8.0, 32.0), "cpu": (2.0, 4.0)}


def estimate_stage(kind: str, *, gpu: str | None, priors: dict | None = None, **size) -> dict:
    """Seconds and USD of one stage from its size and the throughput priors.

    kind: "traces" / "judge" (size: traces, shards), "sft" (traces or tokens, epochs), "eval" (questions, shards)."""
    p = {**PRIORS, **(priors or {})}
    role = {"traces": "cpu", "judge": "cpu", "sft": "sft", "eval": "eval", "simpo": "sft"}.get(kind)
    if role is None:
        raise CostError(f"no estimate for stage kind {kind!r}")
    cpu, mem = RESOURCES[role]
    shards = int(size.get("shards", 1))
    if kind in ("traces", "judge"):
        work = size.get("traces", 0) * p["cpu_seconds_per_trace"]
    elif kind in ("sft", "simpo"):
        # `tokens`: what the selected traces measured (one epoch); else traces x the prior tokens per trace.
        per_epoch = size["tokens"] if size.get("tokens") is not None else size.get("traces", 0) * p["tokens_per_trace"]
        tokens = per_epoch * size.get("epochs", 1.0)
        work = tokens / _lookup(p["sft_tokens_per_s"], gpu, "SFT")
    else:
        tokens = size.get("questions", 0) * p["tokens_per_episode"]
        work = tokens / _lookup(p["eval_tokens_per_s"], gpu, "eval")
    seconds = work + shards * p["container_start_s"][role]
    usd = seconds / 3600.0 * hourly_rate(gpu, cpu, mem)
    return {"stage": kind, "gpu": gpu, "seconds": seconds, "usd": usd, "containers": shards, **size}


def _lookup(table: dict, gpu: str | None, what: str) -> float:
    key = gpu_name(gpu or "")
    if key not in table:
        raise CostError(f"no {what} throughput for GPU {gpu!r}; known: {', '.join(table)}")
    return table[key] * max(1, gpu_count(gpu))


def measured_priors(cost_json: str | Path) -> dict:
    """Throughputs a real run measured (tokens and seconds per stage in its ledger), as prior overrides."""
    data = json.loads(Path(cost_json).read_text())
    out: dict = {}
    for name, s in data.get("stages", {}).items():
        rate, gpu = s.get("tokens_per_second"), gpu_name(s.get("gpu") or "")
        if not rate or not gpu:
            continue
        key = {"train_sft": "sft_tokens_per_s", "sft": "sft_tokens_per_s",
               "evaluate": "eval_tokens_per_s", "eval": "eval_tokens_per_s"}.get(name)
        if key:
            out.setdefault(key, dict(PRIORS[key]))[gpu] = rate
    return out


SEED000_RECIPE = {"traces": 1100, "epochs": 3.0, "eval_questions": 200, "eval_shards": 2, "trace_shards": 4,
                  "sft_gpu": "L4", "eval_gpu": "B200"}


def estimate_recipe(recipe: dict | None = None, priors: dict | None = None) -> dict:
    r = {**SEED000_RECIPE, **(recipe or {})}
    stages = [
        estimate_stage("traces", gpu=None, traces=r["traces"], shards=r["trace_shards"], priors=priors),
        estimate_stage("judge", gpu=None, traces=r["traces"], shards=r["trace_shards"], priors=priors),
        estimate_stage("sft", gpu=r["sft_gpu"], traces=r["traces"], epochs=r["epochs"], priors=priors),
        estimate_stage("eval", gpu=r["eval_gpu"], questions=r["eval_questions"], shards=r["eval_shards"], priors=priors),
    ]
    return {"recipe": r, "stages": stages, "total_usd": sum(s["usd"] for s in stages), "rates": rate_table()}


def format_estimate(est: dict) -> str:
    lines = [f"{'stage':<8}{'where':<10}{'size':<34}{'minutes':>9}{'USD':>9}"]
    for s in est["stages"]:
        size = ", ".join(f"{k} {v:g}" for k, v in s.items() if k in ("traces", "epochs", "questions", "shards"))
        lines.append(f"{s['stage']:<8}{(s['gpu'] or 'CPU'):<10}{size:<34}{s['seconds'] / 60:>9.1f}{s['usd']:>9.2f}")
    lines.append(f"{'total':<52}{sum(s['seconds'] for s in est['stages']) / 60:>9.1f}{est['total_usd']:>9.2f}")
    lines.append(f"rates of {est['rates']['date']} (hopsmith/cost.py); throughputs: priors unless --from gave a measured run")
    return "\n".join(lines)


def format_ledger(summary: dict) -> str:
    """Per stage: containers (failed attempts), body seconds and the caller's wall seconds, USD at each."""
    lines = [f"{'stage':<16}{'gpu':<8}{'containers':>11}{'body s':>9}{'caller s':>10}{'USD body':>10}{'USD caller':>11}"]
    for name, s in summary["stages"].items():
        failed = s.get("failed_attempts") or 0
        count = f"{s['containers']}" + (f" (+{failed} failed)" if failed else "")
        caller, usd_caller = s.get("caller_seconds", s["seconds"]), s.get("usd_caller", s["usd"])
        lines.append(f"{name:<16}{(s['gpu'] or 'CPU'):<8}{count:>11}{s['seconds']:>9.0f}{caller:>10.0f}"
                     f"{s['usd']:>10.3f}{usd_caller:>11.3f}")
    lines.append(f"{'total':<54}{summary['total_usd']:>10.3f}{summary.get('total_usd_caller', summary['total_usd']):>11.3f}")
    lines.append("body: what the stage's code ran; caller: what the caller waited (cold starts, image pulls, retries "
                 "and queueing included)")
    if summary.get("usd_per_correct_answer") is not None:
        lines.append(f"per correct answer ({summary['correct_answers']}): ${summary['usd_per_correct_answer']:.4f}")
    return "\n".join(lines)
