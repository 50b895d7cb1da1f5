"""hopsmith on Modal: where each stage runs. The stages themselves are plain Python (stages/cloud.py).

    modal run app.py::pipeline --run ladder --budget-usd 3          # the whole ladder, seed 000's recipe
    modal run app.py::train_sft --run ladder --traces runs/demo/train.jsonl
    modal run app.py::evaluate --run ladder --name eval-sft --adapter sft --shards 4
    modal deploy app.py                                             # the eval endpoint (`endpoint`)
    modal run app.py::simpo --run ladder                            # own-failure pairs -> SimPO on L4 -> eval

Every function's GPU, CPU, memory, timeout and retries are in FUNCTIONS; volumes and their paths are in
volumes.md. Local entrypoints write the cost ledger to runs/<run>/cost.json on your machine. Keys for
judges and teachers (GEMINI_API_KEY, OPENAI_API_KEY) and the endpoint's HOPSMITH_API_TOKEN come from the
Modal secret named by $HOPSMITH_SECRET (default "hopsmith"):

    modal secret create hopsmith GEMINI_API_KEY=... HOPSMITH_API_TOKEN=$(openssl rand -hex 16)
"""
from __future__ import annotations

import os
from pathlib import Path

import modal

from hopsmith.cost import hourly_rate
from hopsmith.volumes import MOUNT, VOLUMES, Layout
from images import cpu_image, eval_image, sft_image
from stages import cloud

app = modal.App("hopsmith")

IMAGES = {"cpu": cpu_image(), "sft": sft_image(), "eval": eval_image()}
VOLS = {name: modal.Volume.from_name(vol, create_if_missing=True) for name, vol in VOLUMES.items()}
SECRET = modal.Secret.from_name(os.environ.get("HOPSMITH_SECRET", "hopsmith"))

# The one table: where each function runs. cpu in cores, memory_gib in GiB, timeout in seconds.
FUNCTIONS = {
    "generate_traces": dict(image="cpu", gpu=None, cpu=2.0, memory_gib=4, timeout=30 * 60, retries=2,
                            volumes=("traces",), secret=True),
    "judge": dict(image="cpu", gpu=None, cpu=2.0, memory_gib=4, timeout=60 * 60, retries=2,
                  volumes=("traces",), secret=True),
    "select_traces": dict(image="cpu", gpu=None, cpu=1.0, memory_gib=2, timeout=10 * 60, retries=2,
                          volumes=("traces",), secret=False),
    "run_sft": dict(image="sft", gpu="L4", cpu=4.0, memory_gib=16, timeout=4 * 3600, retries=1,
                    volumes=("traces", "adapters", "models"), secret=False),
    "evaluate_shard": dict(image="eval", gpu="B200", cpu=8.0, memory_gib=32, timeout=2 * 3600, retries=2,
                           volumes=("runs", "adapters", "models"), secret=True),
    "merge_eval": dict(image="cpu", gpu=None, cpu=2.0, memory_gib=4, timeout=20 * 60, retries=2,
                       volumes=("runs",), secret=False),
    "mine_pairs": dict(image="cpu", gpu=None, cpu=2.0, memory_gib=4, timeout=20 * 60, retries=2,
                       volumes=("traces", "runs"), secret=False),
    "train_simpo": dict(image="sft", gpu="L4", cpu=4.0, memory_gib=16, timeout=4 * 3600, retries=1,
                        volumes=("traces", "adapters", "models"), secret=False),
    "run_grpo": dict(image="sft", gpu="H100", cpu=8.0, memory_gib=32, timeout=6 * 3600, retries=1,
                     volumes=("adapters", "models"), secret=True),
    "run_rft": dict(image="sft", gpu="L4", cpu=4.0, memory_gib=16, timeout=4 * 3600, retries=1,
                    volumes=("adapters", "models"), secret=True),
    "prepare_model": dict(image="sft", gpu=None, cpu=2.0, memory_gib=8, timeout=30 * 60, retries=1,
                          volumes=("models",), secret=False),
    "endpoint": dict(image="sft", gpu="L4", cpu=2.0, memory_gib=8, timeout=15 * 60, retries=0,
                     volumes=("adapters", "models"), secret=True, scaledown_window=300),
}


def options(name: str) -> dict:
    """`@app.function` keyword arguments for a row of FUNCTIONS."""
    t = FUNCTIONS[name]
    kw = dict(image=IMAGES[t["image"]], cpu=t["cpu"], memory=int(t["memory_gib"] * 1024), timeout=t["timeout"],
              volumes={f"{MOUNT}/{v}": VOLS[v] for v in t["volumes"]})
    if t["gpu"]:
        kw["gpu"] = t["gpu"]
    if t["retries"]:
        kw["retries"] = modal.Retries(max_retries=t["retries"], backoff_coefficient=2.0, initial_delay=5.0)
    if t.get("secret"):
        kw["secrets"] = [SECRET]
    if t.get("scaledown_window"):
        kw["scaledown_window"] = t["scaledown_window"]
    return kw


def resources(name: str) -> dict:
    t = FUNCTIONS[name]
    return {"gpu": t["gpu"], "cpu": t["cpu"], "memory_gib": t["memory_gib"]}


def _sync(name: str, action: str):
    """commit()/reload() of a function's volumes in a container; nothing when the body runs locally."""
    def go():
        if modal.is_local():
            return
        for v in FUNCTIONS[name]["volumes"]:
            getattr(VOLS[v], action)()
    return go


def _layout() -> Layout:
    return Layout.from_env()


# -- functions: thin wrappers ---------------------------------------------------------------------------

@app.function(**options("generate_traces"))
def generate_traces(run: str, cfg: dict, shard: int, num_shards: int) -> dict:
    _sync("generate_traces", "reload")()
    return cloud.traces_body(run, cfg, shard, num_shards, layout=_layout(), resources=resources("generate_traces"),
                             commit=_sync("generate_traces", "commit"))


@app.function(**options("judge"))
def judge(run: str, cfg: dict, shard: int, num_shards: int) -> dict:
    _sync("judge", "reload")()
    return cloud.judge_body(run, cfg, shard, num_shards, layout=_layout(), resources=resources("judge"),
                            commit=_sync("judge", "commit"))


@app.function(**options("select_traces"))
def select_traces(run: str, max_traces: int | None, seed: int) -> int:
    _sync("select_traces", "reload")()
    return cloud.select_body(run, max_traces, seed, layout=_layout(), commit=_sync("select_traces", "commit"))


@app.function(**options("run_sft"))
def run_sft(run: str, cfg: dict, max_seconds: float | None = None) -> dict:
    _sync("run_sft", "reload")()
    return cloud.sft_body(run, cfg, layout=_layout(), resources=resources("run_sft"), max_seconds=max_seconds,
                          commit=_sync("run_sft", "commit"))


@app.function(**options("evaluate_shard"))
def evaluate_shard(run: str, name: str, cfg: dict, shard: int, num_shards: int, engine: str = "vllm") -> dict:
    _sync("evaluate_shard", "reload")()
    return cloud.eval_shard_body(run, name, cfg, shard, num_shards, layout=_layout(), engine=engine,
                                 resources=resources("evaluate_shard"), commit=_sync("evaluate_shard", "commit"))


@app.function(**options("merge_eval"))
def merge_eval(run: str, name: str, cfg: dict, num_shards: int) -> dict:
    _sync("merge_eval", "reload")()
    return cloud.merge_body(run, name, cfg, num_shards, layout=_layout(), resources=resources("merge_eval"),
                            commit=_sync("merge_eval", "commit"))


@app.function(**options("mine_pairs"))
def mine_pairs(run: str, eval_name: str, cfg: dict) -> dict:
    _sync("mine_pairs", "reload")()
    return cloud.mine_pairs_body(run, eval_name, cfg, layout=_layout(), resources=resources("mine_pairs"),
                                 commit=_sync("mine_pairs", "commit"))


@app.function(**options("train_simpo"))
def train_simpo(run: str, cfg: dict) -> dict:
    _sync("train_simpo", "reload")()
    return cloud.simpo_body(run, cfg, layout=_layout(), resources=resources("train_simpo"),
                            commit=_sync("train_simpo", "commit"))


@app.function(**options("run_grpo"))
def run_grpo(run: str, cfg: dict) -> dict:
    _sync("run_grpo", "reload")()
    return cloud.grpo_body(run, cfg, layout=_layout(), resources=resources("run_grpo"), commit=_sync("run_grpo", "commit"))


@app.function(**options("run_rft"))
def run_rft(run: str, cfg: dict) -> dict:
    _sync("run_rft", "reload")()
    return cloud.rft_body(run, cfg, layout=_layout(), resources=resources("run_rft"), commit=_sync("run_rft", "commit"))


@app.function(**options("prepare_model"))
def prepare_model(model: str = "embedded") -> str:
    """Convert the embedded GGUF (or fetch a hub model) once into the models volume."""
    from hopsmith.models import resolve_model

    path = str(resolve_model(model))
    _sync("prepare_model", "commit")()
    return path


@app.function(**options("endpoint"))
@modal.concurrent(max_inputs=4)
@modal.wsgi_app()
def endpoint():
    """`modal deploy app.py`: the adapter of run $HOPSMITH_SERVE_RUN (base model when unset) behind a bearer token."""
    from stages import serve

    run = os.environ.get("HOPSMITH_SERVE_RUN")
    cfg = serve.ServeConfig(adapter=str(_layout().adapter(run, "sft")) if run else None)
    return serve.make_app(serve.build_service(cfg), os.environ.get(cfg.token_env))


# -- how the ladder reaches the functions -----------------------------------------------------------------

WRAPPERS = {"generate_traces": generate_traces, "judge": judge, "select_traces": select_traces,
            "run_sft": run_sft, "evaluate_shard": evaluate_shard, "merge_eval": merge_eval,
            "mine_pairs": mine_pairs, "train_simpo": train_simpo, "run_grpo": run_grpo, "run_rft": run_rft}


class ModalInvoker:
    """cloud.Invoker over these functions: `.remote` and `.map` in the cloud, `.local()` with local=True
    (the same wrappers run in-process on a directory tree: set HOPSMITH_VOLUMES to it)."""

    def __init__(self, *, local: bool = False, engine: str = "vllm"):
        self.local, self.engine = local, engine

    def _fn(self, name: str):
        return WRAPPERS[name]

    def rate(self, name: str):
        r = resources(name)
        return r["gpu"], hourly_rate(r["gpu"], r["cpu"], r["memory_gib"])

    def call(self, name: str, *args, **kwargs):
        if name == "evaluate_shard":
            kwargs.setdefault("engine", self.engine)
        fn = self._fn(name)
        return fn.local(*args, **kwargs) if self.local else fn.remote(*args, **kwargs)

    def map(self, name: str, args) -> list:
        if name == "evaluate_shard":
            args = [tuple(a) + (self.engine,) for a in args]  # .starmap passes no keyword arguments
        fn = self._fn(name)
        if not self.local:
            return list(fn.starmap(args, return_exceptions=True))
        out = []
        for a in args:
            try:
                out.append(fn.local(*a))
            except Exception as exc:  # noqa: BLE001 - as Modal's return_exceptions=True
                out.append(exc)
        return out


# -- local entrypoints ----------------------------------------------------------------------------------

def _cost_path(run: str) -> Path:
    return Path("runs") / run / "cost.json"


@app.local_entrypoint()
def pipeline(run: str = "ladder", data: str = "musique", model: str = "embedded", eval_limit: int = 200,
             eval_shards: int = 2, trace_shards: int = 4, judge_model: str = "", budget_usd: float = 0.0,
             max_traces: int = 0):
    """The whole ladder as remote calls; cost ledger in runs/<run>/cost.json."""
    from hopsmith.cost import format_ledger
    from hopsmith.metrics import format_comparison

    cfg = cloud.CloudConfig(run=run, data=data, model=model, eval_limit=eval_limit, eval_shards=eval_shards,
                            trace_shards=trace_shards, judge=judge_model or None, max_traces=max_traces or None,
                            budget_usd=budget_usd or None)
    prepare_model.remote(model)
    out = cloud.run_ladder(cfg, ModalInvoker(), layout=Layout(Path(MOUNT)), cost_path=_cost_path(run))
    print(format_comparison(out["base"], out["sft"], names=("base", "sft")))
    print(format_ledger(out["cost"]))


@app.local_entrypoint()
def train_sft(run: str = "ladder", traces: str = "", preset: str = "seed000", epochs: float = 0.0,
              budget_usd: float = 0.0):
    """LoRA SFT on L4 from traces/<run>/train.jsonl (uploaded first from --traces when given)."""
    from hopsmith.cost import Budget, Ledger, estimate_stage, format_ledger
    from hopsmith.io import read_jsonl

    if traces:
        with VOLS["traces"].batch_upload(force=True) as up:
            up.put_file(traces, f"/{run}/train.jsonl")
    ledger = Ledger.open(_cost_path(run))
    budget = Budget(budget_usd or None, ledger)
    _, rate = ModalInvoker().rate("run_sft")
    cfg = {"preset": preset, **({"epochs": epochs} if epochs else {})}
    n = len(read_jsonl(traces)) if traces else 1100
    budget.check("sft", estimate_stage("sft", gpu=FUNCTIONS["run_sft"]["gpu"], traces=n, epochs=epochs or 3.0)["usd"])
    out = run_sft.remote(run, cfg, max_seconds=budget.seconds_left(rate))
    ledger.record(out["usage"])
    print(f"adapter: volume {VOLUMES['adapters']} /{run}/sft ({out['result']['steps']} steps, "
          f"loss {out['result']['train_loss']:.3f})")
    print(format_ledger(ledger.summary()))


@app.local_entrypoint()
def evaluate(run: str = "ladder", name: str = "eval-sft", adapter: str = "sft", data: str = "musique",
             limit: int = 200, shards: int = 4, budget_usd: float = 0.0):
    """Sharded vLLM eval on B200 of adapters/<run>/<adapter> ("none": the base model), merged with CIs."""
    from hopsmith.cost import Budget, Ledger, format_ledger
    from hopsmith.metrics import format_table

    base = Layout(Path(MOUNT))
    adapter_path = None if adapter == "none" else str(base.adapter(run, adapter))
    cfg = cloud.CloudConfig(run=run, data=data, eval_limit=limit, eval_shards=shards).eval_cfg(adapter_path)
    ledger = Ledger.open(_cost_path(run))
    budget = Budget(budget_usd or None, ledger)
    print(format_table(_sharded_eval(ModalInvoker(), run, name, cfg, limit, shards, ledger, budget)))
    print(format_ledger(ledger.summary()))


def _sharded_eval(inv: "ModalInvoker", run: str, name: str, cfg: dict, questions: int, shards: int, ledger,
                  budget) -> dict:
    """Budget check, `shards` eval shards on B200s, merge into runs/<run>/<name>; returns the metrics."""
    from hopsmith.cost import estimate_stage
    from hopsmith.fanout import run_shards

    gpu, _ = inv.rate("evaluate_shard")
    budget.check("evaluate", estimate_stage("eval", gpu=gpu, questions=questions, shards=shards)["usd"])
    run_shards("evaluate", None, [(run, name, cfg, i, shards) for i in range(shards)],
               mapper=lambda _fn, args: inv.map("evaluate_shard", args), ledger=ledger, budget=budget, log=print)
    out = inv.call("merge_eval", run, name, cfg, shards)
    ledger.record(out["usage"])
    return out["result"]


@app.local_entrypoint()
def simpo(run: str = "ladder", data: str = "musique", mine_limit: int = 200, shards: int = 2, limit: int = 200,
          budget_usd: float = 0.0):
    """The SFT adapter on train questions (sharded, B200) -> own-failure pairs -> SimPO (L4) -> eval (B200)."""
    from hopsmith.cost import Budget, Ledger, estimate_stage, format_ledger
    from hopsmith.metrics import format_comparison

    base = Layout(Path(MOUNT))
    ledger = Ledger.open(_cost_path(run))
    budget = Budget(budget_usd or None, ledger)
    inv = ModalInvoker()
    cc = cloud.CloudConfig(run=run, data=data, eval_limit=limit, eval_shards=shards)
    mine_cfg = {**cc.eval_cfg(str(base.adapter(run, "sft"))), "split": "train", "limit": mine_limit,
                "allow_leakage": True, "extraction_bench": False}

    _sharded_eval(inv, run, "mine", mine_cfg, mine_limit, shards, ledger, budget)
    pairs = mine_pairs.remote(run, "mine", {})
    ledger.record(pairs["usage"])
    print(f"pairs: {pairs['result']['pairs']} {pairs['result']['counts']}")
    budget.check("simpo", estimate_stage("simpo", gpu=FUNCTIONS["train_simpo"]["gpu"], traces=pairs["result"]["pairs"] * 2,
                                         epochs=2.0)["usd"])
    trained = train_simpo.remote(run, {"probe_data": data})
    ledger.record(trained["usage"])
    tuned = _sharded_eval(inv, run, "eval-simpo", cc.eval_cfg(str(base.adapter(run, "simpo"))), limit, shards, ledger,
                          budget)
    sft_metrics = inv.call("merge_eval", run, "eval-sft", cc.eval_cfg(str(base.adapter(run, "sft"))), shards)["result"]
    print(format_comparison(sft_metrics, tuned, names=("sft", "simpo")))
    print(format_ledger(ledger.summary()))
