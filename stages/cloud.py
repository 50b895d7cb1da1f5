"""What the Modal functions run, and the ladder their entrypoint drives; plain Python, no `modal` import.

`app.py` wraps each `*_body` below in an `@app.function` (image, GPU, timeout, retries, volumes) and
nothing more. Each body works on the volume tree of `hopsmith.volumes.Layout` (the mounted volumes in
the cloud, a directory locally), times itself with a `Meter`, and returns `{"result", "usage"}` so the
caller's ledger can price the container. `run_ladder` is the whole ladder as calls through an
`Invoker` (Modal's `.remote`/`.map` in the cloud, `.local()` or the bodies themselves here): trace shards
fanned out -> judge shards fanned out -> gather -> SFT -> eval shards fanned out -> merge, each stage
reading the previous one's volume output, each estimated against the budget before it starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from hopsmith.config import ConfigError, EvalConfig
from hopsmith.cost import Budget, Ledger, Meter, estimate_stage
from hopsmith.fanout import run_shards
from hopsmith.volumes import Layout, check_run_name


def _noop() -> None:
    pass


def _from_dict(cls, d: dict | None):
    d = dict(d or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {', '.join(unknown)}")
    return cls(**d)


# -- bodies: one container's work ----------------------------------------------------------------------

def traces_body(run: str, cfg: dict, shard: int, num_shards: int, *, layout: Layout, resources: dict,
                commit: Callable[[], None] = _noop) -> dict:
    """One shard of trace generation into `traces/<run>/traces/shard-<i>.jsonl`."""
    from stages import traces

    tcfg = _from_dict(traces.TracesConfig, {**cfg, "shard": shard, "num_shards": num_shards})
    with Meter("traces", shard=shard, **resources) as m:
        summary = traces.run(tcfg, layout.traces(run))
        commit()
    m.usage.items = summary.get("traces")
    return {"result": summary, "usage": m.usage.to_dict()}


def judge_body(run: str, cfg: dict, shard: int, num_shards: int, *, layout: Layout, resources: dict,
               commit: Callable[[], None] = _noop) -> dict:
    """Judge the trace shards with position % num_shards == shard (num_shards=1 after the fan-out gathers)."""
    from stages import judge

    jcfg = _from_dict(judge.JudgeConfig, {**cfg, "shard": shard, "num_shards": num_shards})
    with Meter("judge", shard=shard, **resources) as m:
        summary = judge.run(jcfg, layout.traces(run))
        commit()
    return {"result": summary, "usage": m.usage.to_dict()}


def select_body(run: str, max_traces: int | None, seed: int, *, layout: Layout, commit: Callable[[], None] = _noop) -> int:
    """`train.jsonl`: the kept traces SFT trains on (at most max_traces, balanced over trace types)."""
    from hopsmith.io import read_jsonl, write_jsonl
    from stages.pipeline import sample_traces

    root = layout.traces(run)
    train = sample_traces(read_jsonl(root / "kept.jsonl"), max_traces, seed)
    write_jsonl(root / "train.jsonl", train)
    commit()
    return len(train)


def sft_body(run: str, cfg: dict, *, layout: Layout, resources: dict, max_seconds: float | None = None,
             commit: Callable[[], None] = _noop, stage: str = "sft") -> dict:
    """LoRA SFT on `traces/<run>/train.jsonl` into `adapters/<run>/sft/` (resumes from its checkpoints)."""
    from stages import sft

    scfg = _from_dict(sft.SFTConfig, {**cfg, "traces": str(layout.traces(run) / "train.jsonl")})
    with Meter(stage, **resources) as m:
        summary = sft.run(scfg, layout.adapter(run, stage), max_seconds=max_seconds)
        commit()
    m.usage.tokens = int(summary["tokens"] * summary["config"]["epochs"])
    m.usage.items = summary["traces"]
    return {"result": summary, "usage": m.usage.to_dict()}


def make_eval_backend(ecfg: EvalConfig, engine: str):
    """The agent backend of an eval container: vLLM with the adapter as a LoRARequest, or HF."""
    from hopsmith.tools.extract import Extractor

    if engine == "vllm":
        from hopsmith.backends.vllm_engine import VLLMBackend

        backend = VLLMBackend(ecfg.model, adapter=ecfg.adapter)
        # The extractor is the base model (seed 000's setup A): the same engine without the LoRA request.
        reader = VLLMBackend(ecfg.model, llm=backend.llm) if ecfg.adapter else backend
    elif engine == "hf":
        from stages.evaluate import make_backends

        return make_backends(ecfg)
    else:
        raise ConfigError(f"unknown eval engine {engine!r}; known: vllm, hf")
    extractor = None if ecfg.extractor == "none" else Extractor(reader)
    return backend, extractor


def eval_shard_body(run: str, name: str, cfg: dict, shard: int, num_shards: int, *, layout: Layout,
                    resources: dict, engine: str = "vllm", commit: Callable[[], None] = _noop) -> dict:
    """One eval shard into `runs/<run>/<name>/results/shard-<i>.jsonl` (complete shards return at once)."""
    from stages import evaluate

    ecfg = _from_dict(EvalConfig, cfg)
    root = layout.eval(run, name)
    with Meter("evaluate", shard=shard, **resources) as m:
        final = evaluate.shard_path(root, shard)
        if final.exists():
            summary = evaluate.run_shard(ecfg, root, shard, num_shards)
        else:
            backend, extractor = make_eval_backend(ecfg, engine)
            summary = evaluate.run_shard(ecfg, root, shard, num_shards, backend=backend, extractor=extractor)
        commit()
    m.usage.tokens = summary.get("tokens")
    m.usage.items = summary.get("questions")
    return {"result": summary, "usage": m.usage.to_dict()}


def merge_body(run: str, name: str, cfg: dict, num_shards: int, *, layout: Layout, resources: dict,
               commit: Callable[[], None] = _noop) -> dict:
    from stages import evaluate

    with Meter("merge", **resources) as m:
        metrics = evaluate.merge(_from_dict(EvalConfig, cfg), layout.eval(run, name), num_shards)
        commit()
    return {"result": metrics, "usage": m.usage.to_dict()}


def mine_pairs_body(run: str, eval_name: str, cfg: dict, *, layout: Layout, resources: dict,
                    commit: Callable[[], None] = _noop) -> dict:
    """Own-failure pairs: `runs/<run>/<eval_name>/results.jsonl` (the SFT adapter on train questions) against
    `traces/<run>/kept.jsonl`, into `traces/<run>/pairs/`."""
    from stages import preference

    mcfg = _from_dict(preference.MineConfig, {**cfg, "results": str(layout.eval(run, eval_name) / "results.jsonl"),
                                              "chosen": str(layout.traces(run) / "kept.jsonl")})
    with Meter("mine_pairs", **resources) as m:
        summary = preference.mine(mcfg, layout.traces(run) / "pairs")
        commit()
    return {"result": summary, "usage": m.usage.to_dict()}


def simpo_body(run: str, cfg: dict, *, layout: Layout, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """SimPO/DPO on `traces/<run>/pairs/pairs.jsonl`, continuing `adapters/<run>/sft`, into `adapters/<run>/simpo`."""
    from stages import preference

    pcfg = _from_dict(preference.PreferenceConfig, {**cfg, "pairs": str(layout.traces(run) / "pairs" / "pairs.jsonl"),
                                                    "adapter": str(layout.adapter(run, "sft"))})
    with Meter("simpo", **resources) as m:
        summary = preference.train(pcfg, layout.adapter(run, "simpo"))
        commit()
    m.usage.items = summary["pairs_used"]
    return {"result": summary, "usage": m.usage.to_dict()}


def grpo_body(run: str, cfg: dict, *, layout: Layout, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """GRPO continuing `adapters/<run>/sft`, into `adapters/<run>/grpo`."""
    from stages import grpo

    gcfg = _from_dict(grpo.GRPOConfig, {**cfg, "adapter": str(layout.adapter(run, "sft"))})
    with Meter("grpo", **resources) as m:
        summary = grpo.run(gcfg, layout.adapter(run, "grpo"))
        commit()
    return {"result": summary, "usage": m.usage.to_dict()}


def rft_body(run: str, cfg: dict, *, layout: Layout, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """Rejection sampling with `adapters/<run>/sft`, SFT on the kept episodes, into `adapters/<run>/rft`."""
    from stages import rft

    rcfg = _from_dict(rft.RFTConfig, {**cfg, "adapter": str(layout.adapter(run, "sft"))})
    with Meter("rft", **resources) as m:
        summary = rft.run(rcfg, layout.adapter(run, "rft"))
        commit()
    return {"result": summary, "usage": m.usage.to_dict()}


# -- the ladder ----------------------------------------------------------------------------------------

class Invoker(Protocol):
    """How the ladder reaches the functions: `call(name, *args, **kw)` for one container and
    `map(name, arg_tuples)` for a fan-out, returning each result or the exception it raised."""

    def call(self, name: str, *args, **kwargs) -> Any: ...

    def map(self, name: str, args: Sequence[tuple]) -> list: ...

    def rate(self, name: str) -> tuple[str | None, float]: ...  # (gpu, USD/hour of one container)


@dataclass(frozen=True)
class CloudConfig:
    """`modal run app.py::pipeline` / `hopsmith cloud-pipeline`: seed 000's ladder, sharded."""

    run: str = "ladder"
    data: str = "musique"
    model: str = "embedded"
    train_limit: int | None = None
    trace_shards: int = 4
    judge: str | None = None
    max_traces: int | None = None
    sft_preset: str = "seed000"
    epochs: float | None = None
    max_length: int = 4096
    eval_limit: int | None = 200
    eval_shards: int = 2
    max_turns: int = 20
    max_new_tokens: int = 512
    top_k: int = 5
    max_chars: int | None = None
    engine: str = "vllm"
    budget_usd: float | None = None
    retries: int = 2
    seed: int = 0

    def __post_init__(self):
        check_run_name(self.run)
        if self.trace_shards < 1 or self.eval_shards < 1:
            raise ConfigError("CloudConfig: trace_shards and eval_shards must be >= 1")
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise ConfigError(f"CloudConfig.budget_usd must be > 0, got {self.budget_usd}")

    def traces_cfg(self) -> dict:
        return {"data": self.data, "split": "train", "limit": self.train_limit, "top_k": self.top_k,
                "max_chars": self.max_chars, "seed": self.seed}

    def judge_cfg(self) -> dict:
        return {"judge": self.judge, "seed": self.seed}

    def sft_cfg(self) -> dict:
        return {"model": self.model, "preset": self.sft_preset, "epochs": self.epochs, "max_length": self.max_length,
                "seed": self.seed}

    def eval_cfg(self, adapter: str | None) -> dict:
        return {"data": self.data, "split": "eval", "limit": self.eval_limit, "model": self.model, "adapter": adapter,
                "max_turns": self.max_turns, "max_new_tokens": self.max_new_tokens, "top_k": self.top_k,
                "max_chars": self.max_chars, "few_shot": adapter is None, "seed": self.seed}


def _estimate(inv: Invoker, fn: str, kind: str, **size) -> dict:
    gpu, _ = inv.rate(fn)
    return estimate_stage(kind, gpu=gpu, **size)


def run_ladder(cfg: CloudConfig, inv: Invoker, *, layout: Layout, cost_path: str | Path,
               log: Callable[[str], None] = print) -> dict:
    """traces -> judge -> SFT -> base and tuned eval, every stage priced into `cost_path`."""
    from hopsmith.data import load_questions

    ledger = Ledger.open(cost_path)
    budget = Budget(cfg.budget_usd, ledger)
    n_train = len(load_questions(cfg.data, limit=cfg.train_limit, split="train"))
    n_eval = len(load_questions(cfg.data, limit=cfg.eval_limit, split="eval"))
    shards = dict(retries=cfg.retries, ledger=ledger, budget=budget, log=log)

    def guarded(fn: str, kind: str, **size) -> None:
        est = _estimate(inv, fn, kind, **size)
        budget.check(kind, est["usd"])
        log(f"{kind}: estimated {est['seconds'] / 60:.1f} min, ${est['usd']:.2f} (spent so far ${ledger.total_usd:.2f})")

    per_q = 2  # traces per question (TracesConfig.per_question)
    guarded("generate_traces", "traces", traces=n_train * per_q, shards=cfg.trace_shards)
    t_res = run_shards("traces", None, [(cfg.run, cfg.traces_cfg(), i, cfg.trace_shards)
                                                for i in range(cfg.trace_shards)],
                       mapper=lambda _fn, args: inv.map("generate_traces", args), **shards)
    n_traces = sum(r["traces"] for r in t_res)

    guarded("judge", "judge", traces=n_traces, shards=cfg.trace_shards)
    run_shards("judge", None, [(cfg.run, cfg.judge_cfg(), i, cfg.trace_shards) for i in range(cfg.trace_shards)],
               mapper=lambda _fn, args: inv.map("judge", args), **shards)
    gathered = _record(ledger, inv.call("judge", cfg.run, cfg.judge_cfg(), 0, 1))
    n_train_traces = inv.call("select_traces", cfg.run, cfg.max_traces, cfg.seed)
    log(f"judge: kept {gathered.get('kept')} of {gathered.get('traces')}; training on {n_train_traces}")

    epochs = cfg.epochs or (3.0 if cfg.sft_preset == "seed000" else 2.0)
    guarded("run_sft", "sft", traces=n_train_traces, epochs=epochs)
    gpu, rate = inv.rate("run_sft")
    left = budget.seconds_left(rate)
    sft_summary = _record(ledger, inv.call("run_sft", cfg.run, cfg.sft_cfg(), max_seconds=left))
    adapter = str(layout.adapter(cfg.run, "sft"))

    evals = {}
    for name, adapter_path in (("eval-base", None), ("eval-sft", adapter)):
        guarded("evaluate_shard", "eval", questions=n_eval, shards=cfg.eval_shards)
        ecfg = cfg.eval_cfg(adapter_path)
        run_shards("evaluate", None, [(cfg.run, name, ecfg, i, cfg.eval_shards) for i in range(cfg.eval_shards)],
                   mapper=lambda _fn, args: inv.map("evaluate_shard", args), **shards)
        evals[name] = _record(ledger, inv.call("merge_eval", cfg.run, name, ecfg, cfg.eval_shards))
        m = evals[name]
        log(f"{name}: EM {100 * m['em']['mean']:.1f}% F1 {100 * m['f1']['mean']:.1f} "
            f"cover-EM {100 * m['acc']['mean']:.1f}% (n={m['n']})")
    tuned = evals["eval-sft"]
    ledger.correct_answers = int(round(tuned["acc"]["mean"] * tuned["n"]))
    ledger.save()
    return {"base": evals["eval-base"], "sft": tuned, "sft_training": sft_summary, "traces": n_traces,
            "cost": ledger.summary()}


def _record(ledger: Ledger, out: dict) -> Any:
    if out.get("usage"):
        ledger.record(out["usage"])
    return out["result"]


class LocalInvoker:
    """Runs the bodies in this process on a directory tree: the ladder without a Modal account.

    `table` is app.py's FUNCTIONS (GPU, resources); `fail` injects faults for tests: {name: n} makes the
    first n calls of that function raise."""

    def __init__(self, layout: Layout, table: dict, *, engine: str = "hf", fail: dict | None = None):
        self.layout, self.table, self.engine = layout, table, engine
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, tuple]] = []

    def resources(self, name: str) -> dict:
        t = self.table[name]
        return {"gpu": t.get("gpu"), "cpu": t["cpu"], "memory_gib": t["memory_gib"]}

    def rate(self, name: str):
        from hopsmith.cost import hourly_rate

        r = self.resources(name)
        return r["gpu"], hourly_rate(r["gpu"], r["cpu"], r["memory_gib"])

    def call(self, name: str, *args, **kwargs):
        self.calls.append((name, args))
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise RuntimeError(f"injected failure in {name}")
        kw = dict(layout=self.layout, **kwargs)
        if name == "generate_traces":
            return traces_body(*args, resources=self.resources(name), **kw)
        if name == "judge":
            return judge_body(*args, resources=self.resources(name), **kw)
        if name == "select_traces":
            return select_body(*args, **kw)
        if name == "run_sft":
            return sft_body(*args, resources=self.resources(name), **kw)
        if name == "evaluate_shard":
            return eval_shard_body(*args, resources=self.resources(name), engine=self.engine, **kw)
        if name == "merge_eval":
            return merge_body(*args, resources=self.resources(name), **kw)
        raise ConfigError(f"no function {name!r}")

    def map(self, name: str, args: Sequence[tuple]) -> list:
        out = []
        for a in args:
            try:
                out.append(self.call(name, *a))
            except Exception as exc:  # noqa: BLE001 - returned like Modal's return_exceptions=True
                out.append(exc)
        return out
