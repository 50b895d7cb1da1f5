"""What the Modal functions run, and the ladder their entrypoint drives; plain Python, no `modal` import.

`app.py` wraps each `*_body` below in an `@app.function` (image, GPU, timeout, retries, volumes) and
nothing more. Each body works on the volume tree of `hopsmith.volumes.Layout` (the mounted volumes in
the cloud, a directory locally), times itself with a `Meter`, and returns `{"result", "usage"}` so the
caller's ledger can price the container; the invoker adds the wall time the caller waited
(`caller_seconds`), and a call that raised carries the usage of its failed attempt (`exc.usage`).
`run_matrix` fans seed 000's orchestrator x extractor matrix out (each column's extraction benchmark, then each
cell, one container each; `stages/matrix.py`). `run_ladder` is the whole ladder as calls through an `Invoker` (Modal's `.remote`/`.spawn` in the cloud,
`.local()` or the bodies themselves here): the model into the models volume -> trace shards fanned out ->
judge shards fanned out -> gather -> the traces that fit (`select_traces`) -> SFT -> eval shards fanned
out -> merge, each stage reading the previous one's volume output, each estimated against the budget
before it starts. `endpoint_app` builds the deployed endpoint for a run's adapter.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from hopsmith.agent.backends import agent_backends
from hopsmith.config import ConfigError, EvalConfig, from_dict
from hopsmith.cost import Budget, Ledger, Meter, Usage, estimate_stage, hourly_rate
from hopsmith.data import load_questions
from hopsmith.fanout import run_shards
from hopsmith.io import json_object, read_jsonl, write_jsonl
from hopsmith.models import download_model
from hopsmith.training import select_traces
from hopsmith.volumes import Layout, check_run_name
from stages import evaluate, grpo, judge, matrix, pipeline, preference, rft, serve, sft, traces


def _noop() -> None:
    pass


def config_arg(cfg) -> dict:
    """A function's `cfg`: a dict from the ladder, or JSON text from `modal run app.py::NAME --cfg '{...}'`."""
    if cfg is None or cfg == "":
        return {}
    if isinstance(cfg, str):
        try:
            cfg = json_object(cfg)
        except ValueError as exc:
            raise ConfigError(f"--cfg must be a JSON object, e.g. '{{\"max_steps\": 50}}' ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"--cfg must be a JSON object, got {type(cfg).__name__}")
    return cfg


def _from_dict(cls, d: dict | str | None):
    return from_dict(cls, config_arg(d))


# -- bodies: one container's work ----------------------------------------------------------------------

def _metered(stage: str, resources: dict, commit: Callable[[], None], work: Callable[[], Any], *,
             shard: int | None = None, items=None, tokens=None, shown=None) -> dict:
    """`work()` timed by a Meter, the volumes committed after it: {"result", "usage"}. `items` and `tokens`
    read the usage's counts from what work returned; `shown` maps it to the result handed back."""
    with Meter(stage, shard=shard, **resources) as m:
        out = work()
        commit()
    if items:
        m.usage.items = items(out)
    if tokens:
        m.usage.tokens = tokens(out)
    return {"result": shown(out) if shown else out, "usage": m.usage.to_dict()}


def prepare_model_body(model: str, *, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """The model into `$HOPSMITH_CACHE/models` (the models volume in the cloud): the embedded GGUF converted,
    or a hub model downloaded with HF_TOKEN when set. Every stage's `resolve_model` reads it from there."""
    return _metered("prepare_model", resources, commit,
                    lambda: str(download_model(model, token=os.environ.get("HF_TOKEN"))))


def traces_body(run: str, cfg: dict, shard: int, num_shards: int, *, layout: Layout, resources: dict,
                commit: Callable[[], None] = _noop) -> dict:
    """One shard of trace generation into `traces/<run>/traces/shard-<i>.jsonl`."""
    tcfg = _from_dict(traces.TracesConfig, {**cfg, "shard": shard, "num_shards": num_shards})
    return _metered("traces", resources, commit, lambda: traces.run(tcfg, layout.traces(run)), shard=shard,
                    items=lambda out: out.get("traces"))


def judge_body(run: str, cfg: dict, shard: int, num_shards: int, *, layout: Layout, resources: dict,
               commit: Callable[[], None] = _noop) -> dict:
    """Judge the trace shards with position % num_shards == shard (num_shards=1 after the fan-out gathers)."""
    jcfg = _from_dict(judge.JudgeConfig, {**cfg, "shard": shard, "num_shards": num_shards})
    return _metered("judge", resources, commit, lambda: judge.run(jcfg, layout.traces(run)), shard=shard)


def select_body(run: str, cfg: dict | str | None, *, layout: Layout, resources: dict,
                commit: Callable[[], None] = _noop) -> dict:
    """`train.jsonl`: the traces SFT trains on. From `source` (kept.jsonl, or a file uploaded by `train_sft`),
    traces longer than `max_length` tokens of the model's training template are left out and counted (SFT
    would leave them out anyway), then at most `max_traces` are picked, balanced over trace types. Returns
    how many train and their tokens, so the SFT estimate counts what actually trains."""

    c = {"source": "kept.jsonl", "max_traces": None, "seed": 0, "model": "embedded", "max_length": 4096,
         **config_arg(cfg)}
    root = layout.traces(run)
    source = root / c["source"]
    if not source.exists():
        raise FileNotFoundError(f"no traces at {source}")

    def work() -> dict:
        traces = read_jsonl(source)
        train, tokens, left_out = select_traces(traces, model=c["model"], max_length=c["max_length"],
                                                max_traces=c["max_traces"], seed=c["seed"])
        write_jsonl(root / "train.jsonl", train)
        return {"traces": len(train), "tokens": tokens, "given": len(traces), "left_out": left_out}

    return _metered("select", resources, commit, work)


def sft_body(run: str, cfg: dict, *, layout: Layout, resources: dict, max_seconds: float | None = None,
             commit: Callable[[], None] = _noop, stage: str = "sft") -> dict:
    """LoRA SFT on `traces/<run>/train.jsonl` into `adapters/<run>/sft/` (resumes from its checkpoints)."""
    scfg = _from_dict(sft.SFTConfig, {**cfg, "traces": str(layout.traces(run) / "train.jsonl")})
    return _metered(stage, resources, commit, lambda: sft.run(scfg, layout.adapter(run, stage), max_seconds=max_seconds),
                    items=lambda out: out["traces"], tokens=lambda out: int(out["tokens"] * out["config"]["epochs"]))


def eval_job_body(run: str, job: str, cfg: dict | str | None, *, layout: Layout, resources: dict, engine: str = "vllm",
                  commit: Callable[[], None] = _noop) -> dict:
    """One /evaluate job of the endpoint, in its own container: the whole evaluation into
    `runs/<run>/job-<job>/` (results.jsonl, metrics.json on the volume), its summary returned."""
    ecfg = _from_dict(EvalConfig, cfg)
    root = layout.eval(run, f"job-{job}")

    def work() -> dict:
        backend, extractor = make_eval_backend(ecfg, engine)
        return evaluate.run(ecfg, root, backend=backend, extractor=extractor, progress=False)

    return _metered("endpoint-evaluate", resources, commit, work, items=lambda out: out.get("n"),
                    shown=serve.summarise)


def endpoint_app(run: str | None, stage: str, *, layout: Layout, token: str | None, model: str | None = None,
                 jobs=None, engine: str = "hf"):
    """The endpoint's ASGI app for the adapter `adapters/<run>/<stage>` (the base model when run is empty).
    Refuses to start (ServeError) when that adapter is not on the volume: a deployment named for an adapter
    never silently serves the base model. The base model is the one the adapter was trained on."""
    adapter = None
    if run:
        path = layout.adapter(run, stage)
        if not (path / "adapter_config.json").exists():
            raise ServeError(f"HOPSMITH_SERVE_RUN={run}: no adapter at {path} (volume hopsmith-adapters /{run}/{stage}); "
                             "train it first, or deploy without HOPSMITH_SERVE_RUN to serve the base model")
        adapter = str(path)
        training = path / "training.json"
        if model is None and training.exists():
            model = (json.loads(training.read_text()).get("config") or {}).get("model")
    cfg = serve.ServeConfig(model=model or "embedded", adapter=adapter)
    if not token:
        raise ConfigError(f"no API token: set ${cfg.token_env} (the endpoint refuses to run without auth)")
    service = serve.build_service(cfg)
    return serve.make_app(service, token, jobs=jobs)


class ServeError(RuntimeError):
    """The endpoint cannot serve what its deployment names."""


def make_eval_backend(ecfg: EvalConfig, engine: str):
    """The agent backend and extractor of an eval container: the same factory as `hopsmith eval`, on vLLM
    (the adapter as a LoRARequest) or HF; with the default extractor "self", the adapter reads too."""
    return agent_backends(ecfg.agent, engine=engine)


def eval_shard_body(run: str, name: str, cfg: dict, shard: int, num_shards: int, *, layout: Layout,
                    resources: dict, engine: str = "vllm", commit: Callable[[], None] = _noop) -> dict:
    """One eval shard into `runs/<run>/<name>/results/shard-<i>.jsonl` (complete shards return at once)."""
    ecfg = _from_dict(EvalConfig, cfg)
    root = layout.eval(run, name)

    def work() -> dict:
        if evaluate.shard_path(root, shard).exists():
            return evaluate.run_shard(ecfg, root, shard, num_shards)
        backend, extractor = make_eval_backend(ecfg, engine)
        return evaluate.run_shard(ecfg, root, shard, num_shards, backend=backend, extractor=extractor)

    return _metered("evaluate", resources, commit, work, shard=shard, items=lambda out: out.get("questions"),
                    tokens=lambda out: out.get("tokens"))


def matrix_extraction_body(run: str, cfg: dict | str | None, col: int, *, layout: Layout, resources: dict,
                           commit: Callable[[], None] = _noop) -> dict:
    """Column `col`'s extraction benchmark into `runs/<run>/matrix/extraction/<col>.jsonl`; its summary."""
    mcfg = _from_dict(matrix.MatrixConfig, cfg)
    return _metered("matrix", resources, commit,
                    lambda: {"col": col, "summary": matrix.extraction_column(mcfg, layout.eval(run, "matrix"), col)})


def matrix_cell_body(run: str, cfg: dict | str | None, row: int, col: int, *, layout: Layout, resources: dict,
                     engine: str = "vllm", commit: Callable[[], None] = _noop) -> dict:
    """One cell of the matrix into `runs/<run>/matrix/cells/<row>__<col>/` (a complete cell returns at once);
    its metrics. A local orchestrator runs on `engine` (vLLM in the eval image)."""
    mcfg = _from_dict(matrix.MatrixConfig, cfg)
    return _metered("matrix", resources, commit,
                    lambda: {"row": row, "col": col,
                             "metrics": matrix.run_cell(mcfg, layout.eval(run, "matrix"), row, col, engine=engine)},
                    items=lambda out: out["metrics"].get("n"))


def merge_body(run: str, name: str, cfg: dict, num_shards: int, *, layout: Layout, resources: dict,
               commit: Callable[[], None] = _noop) -> dict:
    return _metered("merge", resources, commit,
                    lambda: evaluate.merge(_from_dict(EvalConfig, cfg), layout.eval(run, name), num_shards))


def mine_pairs_body(run: str, eval_name: str, cfg: dict, *, layout: Layout, resources: dict,
                    commit: Callable[[], None] = _noop) -> dict:
    """Own-failure pairs: `runs/<run>/<eval_name>/results.jsonl` (the SFT adapter on train questions) against
    `traces/<run>/kept.jsonl`, into `traces/<run>/pairs/`."""
    mcfg = _from_dict(preference.MineConfig, {**cfg, "results": str(layout.eval(run, eval_name) / "results.jsonl"),
                                              "chosen": str(layout.traces(run) / "kept.jsonl")})
    return _metered("mine_pairs", resources, commit, lambda: preference.mine(mcfg, layout.traces(run) / "pairs"))


def simpo_body(run: str, cfg: dict, *, layout: Layout, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """SimPO/DPO on `traces/<run>/pairs/pairs.jsonl`, continuing `adapters/<run>/sft`, into `adapters/<run>/simpo`."""
    pcfg = _from_dict(preference.PreferenceConfig, {**cfg, "pairs": str(layout.traces(run) / "pairs" / "pairs.jsonl"),
                                                    "adapter": str(layout.adapter(run, "sft"))})
    return _metered("simpo", resources, commit, lambda: preference.train(pcfg, layout.adapter(run, "simpo")),
                    items=lambda out: out["pairs_used"])


def grpo_body(run: str, cfg: dict, *, layout: Layout, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """GRPO continuing `adapters/<run>/sft`, into `adapters/<run>/grpo`."""
    gcfg = _from_dict(grpo.GRPOConfig, {**cfg, "adapter": str(layout.adapter(run, "sft"))})
    return _metered("grpo", resources, commit, lambda: grpo.run(gcfg, layout.adapter(run, "grpo")))


def rft_body(run: str, cfg: dict, *, layout: Layout, resources: dict, commit: Callable[[], None] = _noop) -> dict:
    """Rejection sampling with `adapters/<run>/sft`, SFT on the kept episodes, into `adapters/<run>/rft`."""
    rcfg = _from_dict(rft.RFTConfig, {**cfg, "adapter": str(layout.adapter(run, "sft"))})
    return _metered("rft", resources, commit, lambda: rft.run(rcfg, layout.adapter(run, "rft")))


# -- the ladder ----------------------------------------------------------------------------------------

class Invoker(Protocol):
    """How the ladder reaches the functions: `call(name, *args, **kw)` for one container and
    `map(name, arg_tuples)` for a fan-out, returning each result or the exception it raised."""

    def call(self, name: str, *args, **kwargs) -> Any: ...

    def map(self, name: str, args: Sequence[tuple]) -> list: ...

    def rate(self, name: str) -> tuple[str | None, float]: ...  # (gpu, USD/hour of one container)


@dataclass(frozen=True)
class CloudConfig:
    """`modal run app.py::pipeline`: the LoRA multi-hop recipe's ladder, sharded over containers."""

    run: str = "ladder"
    data: str = "musique"
    model: str = "embedded"
    train_limit: int | None = None
    trace_shards: int = 4
    judge: str | None = None
    teacher: str | None = None  # a backend spec: teacher traces instead of synthetic ones
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
    base_eval: bool = True  # also evaluate the base model (the smoke run skips it)
    sft_max_steps: int | None = None  # cap SFT's steps (the smoke run trains a few)

    def __post_init__(self):
        check_run_name(self.run)
        if self.trace_shards < 1 or self.eval_shards < 1:
            raise ConfigError("CloudConfig: trace_shards and eval_shards must be >= 1")
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise ConfigError(f"CloudConfig.budget_usd must be > 0, got {self.budget_usd}")

    # Each step's settings are the ladder's (stages.pipeline), as the local ladder builds them.
    def traces_cfg(self) -> dict:
        return pipeline.traces_settings(self)

    def judge_cfg(self) -> dict:
        return pipeline.judge_settings(self)

    def select_cfg(self) -> dict:
        return pipeline.select_settings(self)

    def sft_cfg(self) -> dict:
        return {**pipeline.sft_settings(self), **({"max_steps": self.sft_max_steps} if self.sft_max_steps else {})}

    def eval_cfg(self, adapter: str | None) -> dict:
        return pipeline.eval_settings(self, adapter)


def _estimate(inv: Invoker, fn: str, kind: str, **size) -> dict:
    gpu, _ = inv.rate(fn)
    return estimate_stage(kind, gpu=gpu, **size)


def run_ladder(cfg: CloudConfig, inv: Invoker, *, layout: Layout, cost_path: str | Path,
               log: Callable[[str], None] = print) -> dict:
    """The ladder (`stages.pipeline.LADDER`, the local ladder's steps) with every step fanned out over
    containers, each priced into `cost_path` and checked against the budget before it starts."""
    steps = CloudSteps(cfg, inv, layout, cost_path, log)
    done = {step.name: getattr(steps, step.name.replace("-", "_"))() for step in pipeline.LADDER}
    tuned = done["eval-sft"]
    steps.ledger.correct_answers = int(round(tuned["acc"]["mean"] * tuned["n"]))
    steps.ledger.save()
    return {"base": done["eval-base"], "sft": tuned, "sft_training": done["sft"], "traces": done["traces"],
            "selected": done["select"], "cost": steps.ledger.summary()}


class CloudSteps:
    """Each ladder step as the cloud runs it: shards mapped over containers, gathered, recorded in the ledger."""

    def __init__(self, cfg: CloudConfig, inv: Invoker, layout: Layout, cost_path: str | Path, log):
        self.cfg, self.inv, self.layout, self.log = cfg, inv, layout, log
        self.ledger = Ledger.open(cost_path)
        self.budget = Budget(cfg.budget_usd, self.ledger)
        self.n_train = len(load_questions(cfg.data, limit=cfg.train_limit, split="train"))
        self.n_eval = len(load_questions(cfg.data, limit=cfg.eval_limit, split="eval"))
        self.shards = dict(retries=cfg.retries, ledger=self.ledger, budget=self.budget, log=log)
        self.n_traces = 0
        self.selected: dict = {}
        self.shard_usd: float | None = None  # the last guarded stage's estimate of one shard

    def guarded(self, fn: str, kind: str, **size) -> None:
        """Refuse the stage if its estimate passes the budget; remember one shard's estimate (waves are sized by it)."""
        est = _estimate(self.inv, fn, kind, **size)
        self.budget.check(kind, est["usd"])
        self.shard_usd = est["usd"] / max(1, size.get("shards") or 1)
        self.log(f"{kind}: estimated {est['seconds'] / 60:.1f} min, ${est['usd']:.2f} "
                 f"(spent so far ${self.ledger.total_usd:.2f})")

    def fan_out(self, name: str, fn: str, args: list[tuple]) -> list:
        return run_shards(name, None, args, mapper=lambda _fn, a: self.inv.map(fn, a), shard_usd=self.shard_usd,
                          **self.shards)

    def traces(self) -> int:
        cfg = self.cfg
        per_q = 2  # traces per question (TracesConfig.per_question)
        self.guarded("generate_traces", "traces", traces=self.n_train * per_q, shards=cfg.trace_shards)
        # Once per model, after the first budget check: downloaded (or converted) into the models volume.
        self.log(f"model {cfg.model}: {call_recorded(self.inv, self.ledger, 'prepare_model', cfg.model)}")
        shards = self.fan_out("traces", "generate_traces",
                              [(cfg.run, cfg.traces_cfg(), i, cfg.trace_shards) for i in range(cfg.trace_shards)])
        self.n_traces = sum(r["traces"] for r in shards)
        return self.n_traces

    def judge(self) -> dict:
        cfg = self.cfg
        self.guarded("judge", "judge", traces=self.n_traces, shards=cfg.trace_shards)
        self.fan_out("judge", "judge", [(cfg.run, cfg.judge_cfg(), i, cfg.trace_shards)
                                        for i in range(cfg.trace_shards)])
        return call_recorded(self.inv, self.ledger, "judge", cfg.run, cfg.judge_cfg(), 0, 1)

    def select(self) -> dict:
        cfg = self.cfg
        self.selected = call_recorded(self.inv, self.ledger, "select_traces", cfg.run, cfg.select_cfg())
        s = self.selected
        self.log(f"select: training on {s['traces']} of {s['given']} kept traces ({s['tokens']} tokens; "
                 f"{s['left_out']} longer than {cfg.max_length} tokens left out)")
        return s

    def sft(self) -> dict:
        cfg = self.cfg
        epochs = cfg.epochs or (3.0 if cfg.sft_preset == "seed000" else 2.0)
        # Priced on the tokens that will train (the selection already left out what SFT would drop).
        self.guarded("run_sft", "sft", traces=self.selected["traces"], tokens=self.selected["tokens"], epochs=epochs)
        _, rate = self.inv.rate("run_sft")
        left = self.budget.seconds_left(rate)
        return call_recorded(self.inv, self.ledger, "run_sft", cfg.run, cfg.sft_cfg(), max_seconds=left)

    def eval_base(self) -> dict | None:
        return self.evaluate("eval-base", None) if self.cfg.base_eval else None

    def eval_sft(self) -> dict:
        return self.evaluate("eval-sft", str(self.layout.adapter(self.cfg.run, "sft")))

    def evaluate(self, name: str, adapter: str | None) -> dict:
        cfg = self.cfg
        self.guarded("evaluate_shard", "eval", questions=self.n_eval, shards=cfg.eval_shards)
        ecfg = cfg.eval_cfg(adapter)
        self.fan_out("evaluate", "evaluate_shard", [(cfg.run, name, ecfg, i, cfg.eval_shards)
                                                    for i in range(cfg.eval_shards)])
        m = call_recorded(self.inv, self.ledger, "merge_eval", cfg.run, name, ecfg, cfg.eval_shards)
        self.log(f"{name}: EM {100 * m['em']['mean']:.1f}% F1 {100 * m['f1']['mean']:.1f} "
                 f"cover-EM {100 * m['acc']['mean']:.1f}% (n={m['n']})")
        return m


def run_matrix(cfg, inv: Invoker, *, run: str, layout: Layout, cost_path: str | Path, retries: int = 2,
               budget_usd: float | None = None, log: Callable[[str], None] = print) -> dict:
    """The matrix fanned out: every column's extraction benchmark (one container each), then every cell (one
    container each, reading its column's benchmark from the runs volume under `runs/<run>/matrix/`); returns
    the table's summary (`stages.matrix.summarise`) with the ledger's. `cfg` is a `stages.matrix.MatrixConfig`;
    a rerun skips complete cells."""
    check_run_name(run)
    ledger = Ledger.open(cost_path)
    budget = Budget(budget_usd, ledger)
    shards = dict(retries=retries, ledger=ledger, budget=budget, log=log)
    payload = dataclasses.asdict(cfg)
    cols = [j for j, (_, spec) in enumerate(cfg.cols) if spec not in matrix.SPECIAL_EXTRACTORS]
    extraction = {}
    if cols:
        out = run_shards("matrix-extraction", None, [(run, payload, j) for j in cols],
                         mapper=lambda _fn, args: inv.map("matrix_extraction", args), **shards)
        extraction = {cfg.cols[r["col"]][0]: r["summary"] for r in out if r["summary"] is not None}
    cells = [(i, j) for i in range(len(cfg.rows)) for j in range(len(cfg.cols))]
    log(f"matrix: {len(cells)} cells ({len(cfg.rows)} orchestrators x {len(cfg.cols)} extractors)")
    out = run_shards("matrix", None, [(run, payload, i, j) for i, j in cells],
                     mapper=lambda _fn, args: inv.map("matrix_cell", args), **shards)
    metrics = {(r["row"], r["col"]): r["metrics"] for r in out}
    summary = matrix.summarise(cfg, metrics, extraction)
    summary["cost"] = ledger.summary()
    return summary


def call_recorded(inv: "Invoker", ledger: Ledger, name: str, *args, **kwargs) -> Any:
    """One remote call; its usage (or, when it raised, the caller's wall time of the failed attempt) goes
    into the ledger; returns its result."""
    try:
        out = inv.call(name, *args, **kwargs)
    except Exception as exc:
        if getattr(exc, "usage", None):
            ledger.record(exc.usage)
        raise
    return _record(ledger, out) if isinstance(out, dict) and "usage" in out else out


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
        r = self.resources(name)
        return r["gpu"], hourly_rate(r["gpu"], r["cpu"], r["memory_gib"])

    def call(self, name: str, *args, **kwargs):
        self.calls.append((name, args))
        bodies = {"generate_traces": traces_body, "judge": judge_body, "select_traces": select_body,
                  "run_sft": sft_body, "evaluate_shard": eval_shard_body, "merge_eval": merge_body,
                  "mine_pairs": mine_pairs_body, "train_simpo": simpo_body, "run_grpo": grpo_body, "run_rft": rft_body,
                  "evaluate_job": eval_job_body, "prepare_model": prepare_model_body,
                  "matrix_extraction": matrix_extraction_body, "matrix_cell": matrix_cell_body}
        if name not in bodies:
            raise ConfigError(f"no function {name!r}")
        kw = dict(resources=self.resources(name), **kwargs)
        if name != "prepare_model":
            kw["layout"] = self.layout
        if name in ("evaluate_shard", "evaluate_job", "matrix_cell"):
            kw["engine"] = self.engine
        started = time.perf_counter()
        try:
            if self.fail.get(name, 0) > 0:
                self.fail[name] -= 1
                raise RuntimeError(f"injected failure in {name}")
            out = bodies[name](*args, **kw)
        except Exception as exc:
            exc.usage = failed_usage(name, self.resources(name), time.perf_counter() - started, exc)
            raise
        return with_caller_seconds(out, time.perf_counter() - started)

    def map(self, name: str, args: Sequence[tuple]) -> list:
        out = []
        for a in args:
            try:
                out.append(self.call(name, *a))
            except Exception as exc:  # noqa: BLE001 - returned like Modal's return_exceptions=True
                out.append(exc)
        return out


def with_caller_seconds(out: Any, seconds: float) -> Any:
    """Put the caller's wall time of a call beside the body time in its usage."""
    if isinstance(out, dict) and isinstance(out.get("usage"), dict):
        out["usage"]["caller_seconds"] = seconds
    return out


def failed_usage(name: str, resources: dict, seconds: float, exc: BaseException) -> dict:
    """The ledger entry of an attempt that raised: no body time, the caller's wall time."""
    stage = {"generate_traces": "traces", "run_sft": "sft", "evaluate_shard": "evaluate", "merge_eval": "merge",
             "train_simpo": "simpo", "run_grpo": "grpo", "run_rft": "rft", "select_traces": "select",
             "evaluate_job": "endpoint-evaluate", "matrix_extraction": "matrix", "matrix_cell": "matrix"}.get(name, name)
    return Usage(stage, 0.0, caller_seconds=seconds, failed=True, note=f"{type(exc).__name__}: {exc}"[:200],
                 **resources).to_dict()
