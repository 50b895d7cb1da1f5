"""hopsmith on Modal: where each stage runs. The stages themselves are plain Python (stages/cloud.py).

    modal run app.py::smoke                                          # first: the cheapest end-to-end check
    modal run app.py::prepare_model --model Qwen/Qwen3-1.7B          # once per model: into the models volume
    modal run app.py::pipeline --run ladder --budget-usd 3           # the whole ladder, seed 000's recipe
    modal run app.py::train_sft --run ladder --traces runs/demo/train.jsonl
    modal run app.py::evaluate --run ladder --name eval-sft --adapter sft --shards 4
    modal run app.py::evaluate --run ladder --name eval-gemini-reader --extractor gemini:gemini-2.5-flash
    modal run app.py::matrix --run m1 --orchestrators embedded --extractors self,gemini:gemini-2.5-flash --limit 50
    modal run app.py::simpo --run ladder                             # own-failure pairs -> SimPO on L4 -> eval
    modal run app.py::grpo --run ladder --max-steps 50               # GRPO on the SFT adapter (H100)
    modal run app.py::rft --run ladder --samples 4                   # rejection fine-tuning of the SFT adapter
    HOPSMITH_SERVE_RUN=ladder modal deploy app.py                    # the endpoint, serving adapters/ladder/sft

Every function's GPU, CPU, memory, timeout, retries and whether it gets keys are in FUNCTIONS; volumes and
their paths are in volumes.md. Each function can also be run on its own, its config as JSON:

    modal run app.py::run_grpo --run ladder --cfg '{"max_steps": 50}'

Local entrypoints write the cost ledger to runs/<run>/cost.json on your machine: per call the seconds its
body ran and the seconds you waited for it.

Keys (GEMINI_API_KEY, OPENAI_API_KEY, HF_TOKEN, HOPSMITH_API_TOKEN) go only to the functions that use them
(FUNCTIONS' `keys`): those set in the shell you run `modal` from, plus, with HOPSMITH_SECRET=<name>, a Modal
secret of that name (`modal secret create hopsmith GEMINI_API_KEY=... HOPSMITH_API_TOKEN=...`). A container sees
only its image's environment and its secrets, so what a deployment needs is read here, at import, and baked in.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import modal

from hopsmith.cost import hourly_rate
from hopsmith.volumes import MOUNT, VOLUMES, Layout
from images import cpu_image, eval_image, sft_image
from stages import cloud

app = modal.App("hopsmith")

IMAGES = {"cpu": cpu_image(), "sft": sft_image(), "eval": eval_image()}
VOLS = {name: modal.Volume.from_name(vol, create_if_missing=True) for name, vol in VOLUMES.items()}

# -- what the containers need from this shell, read once at import (a container re-imports this module with
# the values these secrets gave it, so it attaches the same secrets and Modal matches the functions) ----------
API_KEYS = ("GEMINI_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "HOPSMITH_API_TOKEN")
SECRET_NAME = os.environ.get("HOPSMITH_SECRET", "")  # a Modal secret with the keys; none unless named
KEYS = modal.Secret.from_dict({k: os.environ.get(k) or None for k in API_KEYS})
# Every function gets CONTEXT, so every container re-imports this module with the same choices: which named
# secret to attach, and the deployment's adapter (`HOPSMITH_SERVE_RUN=ladder modal deploy app.py` serves
# adapters/ladder/sft, on the base model its training.json names unless HOPSMITH_SERVE_MODEL says otherwise).
CONTEXT_ENV = {"HOPSMITH_SECRET": SECRET_NAME or None,
               "HOPSMITH_SERVE_RUN": os.environ.get("HOPSMITH_SERVE_RUN") or None,
               "HOPSMITH_SERVE_STAGE": os.environ.get("HOPSMITH_SERVE_STAGE") or "sft",
               "HOPSMITH_SERVE_MODEL": os.environ.get("HOPSMITH_SERVE_MODEL") or None}
CONTEXT = modal.Secret.from_dict(CONTEXT_ENV)

# The one table: where each function runs. Columns: the image; the GPU; CPU cores; memory in GiB; timeout in
# seconds; retries; the volumes it mounts; keys: it gets the API keys (a teacher, an LLM judge, a gated download,
# the endpoint's token); an idle container's lifetime in seconds (0: Modal's default).
COLUMNS = ("image", "gpu", "cpu", "memory_gib", "timeout", "retries", "volumes", "keys", "scaledown_window")
FUNCTIONS = {name: dict(zip(COLUMNS, row)) for name, row in {
    #                     image   gpu     cpu GiB timeout retries volumes                            keys  idle
    "generate_traces":   ("cpu",  None,   2.0, 4, 1800,   2, ("traces",),                        True,  0),
    "judge":             ("cpu",  None,   2.0, 4, 3600,   2, ("traces",),                        True,  0),
    # The training image: it tokenises with the model's training template to leave out what SFT would.
    "select_traces":     ("sft",  None,   2.0, 4, 1200,   2, ("traces", "models"),               False, 0),
    "run_sft":           ("sft",  "L4",   4.0, 16, 14400, 1, ("traces", "adapters", "models"),   False, 0),
    # keys: an eval's agent or extractor may be a hosted model (`--extractor gemini:...`).
    "evaluate_shard":    ("eval", "B200", 8.0, 32, 7200,  2, ("runs", "adapters", "models"),     True,  0),
    # The matrix: one container per column's extraction benchmark, then one per cell (a whole eval each).
    "matrix_extraction": ("eval", "L4",   4.0, 16, 3600,  2, ("runs", "adapters", "models"),     True,  0),
    "matrix_cell":       ("eval", "L4",   4.0, 16, 7200,  2, ("runs", "adapters", "models"),     True,  0),
    "merge_eval":        ("cpu",  None,   2.0, 4, 1200,   2, ("runs",),                          False, 0),
    "mine_pairs":        ("cpu",  None,   2.0, 4, 1200,   2, ("traces", "runs"),                 False, 0),
    "train_simpo":       ("sft",  "L4",   4.0, 16, 14400, 1, ("traces", "adapters", "models"),   False, 0),
    "run_grpo":          ("sft",  "H100", 8.0, 32, 21600, 1, ("adapters", "models"),             True,  0),
    "run_rft":           ("sft",  "L4",   4.0, 16, 14400, 1, ("adapters", "models"),             True,  0),
    # The eval image writes model directories: its transformers is the older one, and the newer reads them.
    "prepare_model":     ("eval", None,   2.0, 8, 3600,   1, ("models",),                        True,  0),
    # The endpoint's /evaluate jobs (at most ServeConfig.max_eval questions): one container each, via .spawn.
    "evaluate_job":      ("eval", "L4",   4.0, 16, 3600,  0, ("runs", "adapters", "models"),     False, 0),
    "endpoint":          ("sft",  "L4",   4.0, 16, 900,   0, ("adapters", "models"),             True,  300),
}.items()}
# `modal run app.py::smoke`: the same functions on a cheap GPU (Function.with_options).
SMOKE_GPU = {"run_sft": "L4", "evaluate_shard": "L4"}


def options(name: str) -> dict:
    """`@app.function` keyword arguments for a row of FUNCTIONS."""
    t = FUNCTIONS[name]
    kw = dict(image=IMAGES[t["image"]], cpu=t["cpu"], memory=int(t["memory_gib"] * 1024), timeout=t["timeout"],
              volumes={f"{MOUNT}/{v}": VOLS[v] for v in t["volumes"]})
    if t["gpu"]:
        kw["gpu"] = t["gpu"]
    if t["retries"]:
        kw["retries"] = modal.Retries(max_retries=t["retries"], backoff_coefficient=2.0, initial_delay=5.0)
    kw["secrets"] = [CONTEXT]
    if t.get("keys"):
        kw["secrets"].append(KEYS)
        if SECRET_NAME:
            kw["secrets"].append(modal.Secret.from_name(SECRET_NAME))
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


# -- functions: thin wrappers. `cfg`: a dict from the entrypoints, or JSON text from the command line ---------

def _body(name: str, body, *args, **kwargs) -> dict:
    """Run a stage body inside a function's container: its volumes reloaded first, committed by the body."""
    _sync(name, "reload")()
    return body(*args, layout=_layout(), resources=resources(name), commit=_sync(name, "commit"), **kwargs)


@app.function(**options("generate_traces"))
def generate_traces(run: str, cfg=None, shard: int = 0, num_shards: int = 1) -> dict:
    return _body("generate_traces", cloud.traces_body, run, cfg, shard, num_shards)


@app.function(**options("judge"))
def judge(run: str, cfg=None, shard: int = 0, num_shards: int = 1) -> dict:
    return _body("judge", cloud.judge_body, run, cfg, shard, num_shards)


@app.function(**options("select_traces"))
def select_traces(run: str, cfg=None) -> dict:
    return _body("select_traces", cloud.select_body, run, cfg)


@app.function(**options("run_sft"))
def run_sft(run: str, cfg=None, max_seconds: float | None = None) -> dict:
    return _body("run_sft", cloud.sft_body, run, cfg, max_seconds=max_seconds)


@app.function(**options("evaluate_shard"))
def evaluate_shard(run: str, name: str, cfg=None, shard: int = 0, num_shards: int = 1, engine: str = "vllm") -> dict:
    return _body("evaluate_shard", cloud.eval_shard_body, run, name, cfg, shard, num_shards, engine=engine)


@app.function(**options("matrix_extraction"))
def matrix_extraction(run: str, cfg=None, col: int = 0) -> dict:
    return _body("matrix_extraction", cloud.matrix_extraction_body, run, cfg, col)


@app.function(**options("matrix_cell"))
def matrix_cell(run: str, cfg=None, row: int = 0, col: int = 0, engine: str = "vllm") -> dict:
    return _body("matrix_cell", cloud.matrix_cell_body, run, cfg, row, col, engine=engine)


@app.function(**options("merge_eval"))
def merge_eval(run: str, name: str, cfg=None, num_shards: int = 1) -> dict:
    return _body("merge_eval", cloud.merge_body, run, name, cfg, num_shards)


@app.function(**options("mine_pairs"))
def mine_pairs(run: str, eval_name: str = "mine", cfg=None) -> dict:
    return _body("mine_pairs", cloud.mine_pairs_body, run, eval_name, cfg)


@app.function(**options("train_simpo"))
def train_simpo(run: str, cfg=None) -> dict:
    return _body("train_simpo", cloud.simpo_body, run, cfg)


@app.function(**options("run_grpo"))
def run_grpo(run: str, cfg=None) -> dict:
    return _body("run_grpo", cloud.grpo_body, run, cfg)


@app.function(**options("run_rft"))
def run_rft(run: str, cfg=None) -> dict:
    return _body("run_rft", cloud.rft_body, run, cfg)


@app.function(**options("prepare_model"))
def prepare_model(model: str = "embedded") -> dict:
    """Put a model into the models volume once: the embedded GGUF converted, or a hub model downloaded (with
    HF_TOKEN when the shell or the named secret sets it). Every stage then reads it from there."""
    _sync("prepare_model", "reload")()
    out = cloud.prepare_model_body(model, resources=resources("prepare_model"), commit=_sync("prepare_model", "commit"))
    print(f"model {model}: {out['result']}")
    return out


@app.function(**options("evaluate_job"))
def evaluate_job(run: str, cfg=None, engine: str = "vllm", job: str = "") -> dict:
    """One /evaluate job into runs/<run>/job-<id>/, the id being this call's (what the endpoint handed out)."""
    _sync("evaluate_job", "reload")()
    job = job or modal.current_function_call_id() or "local"
    return cloud.eval_job_body(run, job, cfg, layout=_layout(), engine=engine, resources=resources("evaluate_job"),
                               commit=_sync("evaluate_job", "commit"))


class SpawnedJobs:
    """The endpoint's /evaluate jobs in the cloud: each one an `evaluate_job` container started with .spawn
    (a request returns at once, well inside Modal's 150 s web limit); the job id is the FunctionCall id,
    polled by /jobs/<id>; results also land on the runs volume, under runs/<run>/job-<id>/."""

    def __init__(self, run: str, fn=None):
        self.run, self.fn = run, fn or evaluate_job

    def submit(self, ecfg) -> str:
        import dataclasses

        return self.fn.spawn(self.run, dataclasses.asdict(ecfg)).object_id

    def status(self, job: str) -> dict | None:
        from modal.exception import NotFoundError, OutputExpiredError

        try:
            call = modal.FunctionCall.from_id(job)
            out = call.get(timeout=0)
        except (NotFoundError, OutputExpiredError):
            return None
        except TimeoutError:
            return {"job": job, "status": "running"}
        except Exception as exc:  # noqa: BLE001 - the job's own failure, reported to the poller
            return {"job": job, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return {"job": job, "status": "done", "result": out["result"]}


@app.function(**options("endpoint"))
@modal.concurrent(max_inputs=32)  # requests share a container: its worker answers them in batches
@modal.asgi_app()
def endpoint():
    """`modal deploy app.py`: the agent behind a bearer token; with HOPSMITH_SERVE_RUN=<run> at deploy time,
    the adapter adapters/<run>/$HOPSMITH_SERVE_STAGE (default sft), and it refuses to start without it."""
    _sync("endpoint", "reload")()
    run = os.environ.get("HOPSMITH_SERVE_RUN") or None
    return cloud.endpoint_app(run, os.environ.get("HOPSMITH_SERVE_STAGE", "sft"), layout=_layout(),
                              token=os.environ.get("HOPSMITH_API_TOKEN"), model=os.environ.get("HOPSMITH_SERVE_MODEL"),
                              jobs=SpawnedJobs(run or "endpoint"))


# -- how the ladder reaches the functions -----------------------------------------------------------------

WRAPPERS = {"generate_traces": generate_traces, "judge": judge, "select_traces": select_traces,
            "run_sft": run_sft, "evaluate_shard": evaluate_shard, "merge_eval": merge_eval,
            "mine_pairs": mine_pairs, "train_simpo": train_simpo, "run_grpo": run_grpo, "run_rft": run_rft,
            "evaluate_job": evaluate_job, "prepare_model": prepare_model,
            "matrix_extraction": matrix_extraction, "matrix_cell": matrix_cell}


class ModalInvoker:
    """cloud.Invoker over these functions: `.remote` and `.spawn` in the cloud, `.local()` with local=True
    (the same wrappers run in-process on a directory tree: set HOPSMITH_VOLUMES to it).

    Every call is timed where it is made: `caller_seconds` (cold start, image pull, Modal's retries,
    queueing) goes into its usage beside the body's own seconds; a call that fails still reports its
    caller time (`exc.usage`). A fan-out waits at most the function's timeout times its attempts, plus
    ten minutes. `gpus` overrides a function's GPU (the smoke run's L4s)."""

    def __init__(self, *, local: bool = False, engine: str = "vllm", gpus: dict | None = None):
        self.local, self.engine, self.gpus = local, engine, dict(gpus or {})

    def _fn(self, name: str):
        fn = WRAPPERS[name]
        if name in self.gpus and not self.local:
            fn = fn.with_options(gpu=self.gpus[name])
        return fn

    def resources(self, name: str) -> dict:
        return {**resources(name), **({"gpu": self.gpus[name]} if name in self.gpus else {})}

    def rate(self, name: str):
        r = self.resources(name)
        return r["gpu"], hourly_rate(r["gpu"], r["cpu"], r["memory_gib"])

    def _timed(self, name: str, out, seconds: float):
        out = cloud.with_caller_seconds(out, seconds)
        if name in self.gpus and isinstance(out, dict) and isinstance(out.get("usage"), dict):
            out["usage"]["gpu"] = self.gpus[name]  # the body reports its table row; it ran on the override
        return out

    def call(self, name: str, *args, **kwargs):
        if name in ("evaluate_shard", "evaluate_job", "matrix_cell"):
            kwargs.setdefault("engine", self.engine)
        fn = self._fn(name)
        started = time.perf_counter()
        try:
            out = fn.local(*args, **kwargs) if self.local else fn.remote(*args, **kwargs)
        except Exception as exc:
            exc.usage = cloud.failed_usage(name, self.resources(name), time.perf_counter() - started, exc)
            raise
        return self._timed(name, out, time.perf_counter() - started)

    def map(self, name: str, args) -> list:
        from hopsmith.fanout import gather_calls

        if self.local:
            out = []
            for a in args:
                try:
                    out.append(self.call(name, *a))
                except Exception as exc:  # noqa: BLE001 - as Modal's return_exceptions=True
                    out.append(exc)
            return out
        if name in ("evaluate_shard", "matrix_cell"):
            args = [tuple(a) + (self.engine,) for a in args]
        fn = self._fn(name)
        t = FUNCTIONS[name]
        calls = [fn.spawn(*a) for a in args]
        done = gather_calls(calls, lambda c: c.get(timeout=0), not_ready=(TimeoutError,),
                            timeout_s=t["timeout"] * (1 + t["retries"]) + 600)
        results = []
        for out, seconds in done:
            if isinstance(out, BaseException):
                out.usage = cloud.failed_usage(name, self.resources(name), seconds, out)
                results.append(out)
            else:
                results.append(self._timed(name, out, seconds))
        return results


# -- local entrypoints ----------------------------------------------------------------------------------

def _cost_path(run: str) -> Path:
    return Path("runs") / run / "cost.json"


@app.local_entrypoint()
def pipeline(run: str = "ladder", data: str = "musique", model: str = "embedded", eval_limit: int = 200,
             eval_shards: int = 2, trace_shards: int = 4, judge_model: str = "", teacher: str = "",
             budget_usd: float = 0.0, max_traces: int = 0):
    """The whole ladder as remote calls; cost ledger in runs/<run>/cost.json. --judge-model and --teacher take
    backend specs (gemini:MODEL, openai:MODEL@URL, a hub id)."""
    from hopsmith.cost import format_ledger
    from hopsmith.metrics import format_comparison

    cfg = cloud.CloudConfig(run=run, data=data, model=model, eval_limit=eval_limit, eval_shards=eval_shards,
                            trace_shards=trace_shards, judge=judge_model or None, teacher=teacher or None,
                            max_traces=max_traces or None, budget_usd=budget_usd or None)
    out = cloud.run_ladder(cfg, ModalInvoker(), layout=Layout(Path(MOUNT)), cost_path=_cost_path(run))
    print(format_comparison(out["base"], out["sft"], names=("base", "sft")))
    print(format_ledger(out["cost"]))


@app.local_entrypoint()
def smoke(run: str = "smoke", model: str = "embedded", questions: int = 4, sft_steps: int = 4):
    """The cheapest end-to-end check, before the real recipe: the embedded model, traces for 3 train questions,
    a few SFT steps on an L4, a 4-question eval in 2 shards on L4s (vLLM with the adapter), one /answer of the
    endpoint (this run's URL; the adapter just trained with HOPSMITH_SERVE_RUN=smoke, else the base model),
    and the ledger. Meant to cost cents and take minutes."""
    from hopsmith.cost import format_ledger

    cfg = cloud.CloudConfig(run=run, model=model, train_limit=3, trace_shards=1, max_traces=4,
                            sft_max_steps=sft_steps, eval_limit=questions, eval_shards=2, max_turns=4,
                            max_new_tokens=128, base_eval=False)
    out = cloud.run_ladder(cfg, ModalInvoker(gpus=SMOKE_GPU), layout=Layout(Path(MOUNT)), cost_path=_cost_path(run))
    print(f"smoke: SFT {out['sft_training']['steps']} steps; eval n={out['sft']['n']}, "
          f"accuracy {100 * out['sft']['acc']['mean']:.0f}% (a smoke check, not a result)")
    print(_smoke_endpoint())
    print(format_ledger(out["cost"]))


def _smoke_endpoint() -> str:
    """One /health and one /answer of this app's endpoint (the one `modal deploy` serves; here, this run's
    ephemeral URL), with the token from the shell."""
    import json
    import urllib.request

    token = os.environ.get("HOPSMITH_API_TOKEN")
    if not token:
        return "endpoint: skipped (export HOPSMITH_API_TOKEN=... before `modal run` to check it too)"
    url = endpoint.get_web_url()
    with urllib.request.urlopen(url + "/health", timeout=600) as resp:
        health = json.loads(resp.read())
    body = json.dumps({"data": "musique", "question_id": _first_eval_question(), "max_turns": 2}).encode()
    req = urllib.request.Request(url + "/answer", data=body, method="POST", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer = json.loads(resp.read())
    return f"endpoint {url}: serving {health['model']} (adapter {health['adapter']}); /answer -> {answer['answer']!r}"


def _first_eval_question() -> str:
    from hopsmith.data import load_questions

    return load_questions("musique", split="eval", limit=1)[0].id


@app.local_entrypoint()
def train_sft(run: str = "ladder", traces: str = "", preset: str = "seed000", epochs: float = 0.0,
              model: str = "embedded", max_length: int = 4096, budget_usd: float = 0.0):
    """LoRA SFT on L4 from traces/<run>/kept.jsonl, or from --traces (uploaded first); traces longer than
    --max-length are left out before the estimate and counted."""
    from hopsmith.cost import Budget, Ledger, estimate_stage, format_ledger

    source = "kept.jsonl"
    if traces:
        source = "upload.jsonl"
        with VOLS["traces"].batch_upload(force=True) as up:
            up.put_file(traces, f"/{run}/{source}")
    ledger = Ledger.open(_cost_path(run))
    budget = Budget(budget_usd or None, ledger)
    inv = ModalInvoker()
    selected = cloud.call_recorded(inv, ledger, "select_traces", run,
                                   {"source": source, "model": model, "max_length": max_length})
    print(f"training on {selected['traces']} of {selected['given']} traces ({selected['tokens']} tokens; "
          f"{selected['left_out']} longer than {max_length} tokens left out)")
    gpu, rate = inv.rate("run_sft")
    budget.check("sft", estimate_stage("sft", gpu=gpu, traces=selected["traces"], tokens=selected["tokens"],
                                       epochs=epochs or 3.0)["usd"])
    cfg = {"preset": preset, "model": model, "max_length": max_length, **({"epochs": epochs} if epochs else {})}
    out = cloud.call_recorded(inv, ledger, "run_sft", run, cfg, max_seconds=budget.seconds_left(rate))
    print(f"adapter: volume {VOLUMES['adapters']} /{run}/sft ({out['steps']} steps, loss {out['train_loss']:.3f})")
    print(format_ledger(ledger.summary()))


@app.local_entrypoint()
def evaluate(run: str = "ladder", name: str = "eval-sft", adapter: str = "sft", data: str = "musique",
             model: str = "embedded", extractor: str = "self", limit: int = 200, shards: int = 4,
             budget_usd: float = 0.0):
    """Sharded vLLM eval on B200 of adapters/<run>/<adapter> ("none": the base model), merged with CIs.
    --model and --extractor take backend specs (a hosted extractor: gemini:gemini-2.5-flash)."""
    from hopsmith.cost import Budget, Ledger, format_ledger
    from hopsmith.metrics import format_table

    base = Layout(Path(MOUNT))
    adapter_path = None if adapter == "none" else str(base.adapter(run, adapter))
    cfg = cloud.CloudConfig(run=run, data=data, model=model, eval_limit=limit, eval_shards=shards).eval_cfg(adapter_path)
    cfg["extractor"] = extractor
    ledger = Ledger.open(_cost_path(run))
    budget = Budget(budget_usd or None, ledger)
    print(format_table(_sharded_eval(ModalInvoker(), run, name, cfg, limit, shards, ledger, budget)))
    print(format_ledger(ledger.summary()))


@app.local_entrypoint()
def matrix(run: str = "matrix", orchestrators: str = "embedded", extractors: str = "self", data: str = "musique",
           limit: int = 200, max_turns: int = 20, max_new_tokens: int = 512, budget_usd: float = 0.0):
    """Seed 000's orchestrator x extractor matrix: each column's extraction benchmark, then each cell, one L4
    container each (local orchestrators on vLLM); the table in runs/<run>/matrix.txt and .json, the ledger
    in runs/<run>/cost.json. Specs as for `hopsmith matrix` (comma-separated, label=spec names one)."""
    import json

    from hopsmith.cost import format_ledger
    from stages import matrix as matrix_stage

    cfg = matrix_stage.MatrixConfig(orchestrators=orchestrators, extractors=extractors, data=data, limit=limit,
                                    max_turns=max_turns, max_new_tokens=max_new_tokens)
    summary = cloud.run_matrix(cfg, ModalInvoker(), run=run, layout=Layout(Path(MOUNT)), cost_path=_cost_path(run),
                               budget_usd=budget_usd or None)
    text = matrix_stage.format_matrix(summary)
    out = Path("runs") / run
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "matrix.txt").write_text(text + "\n")
    print(text)
    print(format_ledger(summary["cost"]))


def _sharded_eval(inv: "ModalInvoker", run: str, name: str, cfg: dict, questions: int, shards: int, ledger,
                  budget) -> dict:
    """Budget check, `shards` eval shards on B200s, merge into runs/<run>/<name>; returns the metrics."""
    from hopsmith.cost import estimate_stage
    from hopsmith.fanout import run_shards

    gpu, _ = inv.rate("evaluate_shard")
    budget.check("evaluate", estimate_stage("eval", gpu=gpu, questions=questions, shards=shards)["usd"])
    run_shards("evaluate", None, [(run, name, cfg, i, shards) for i in range(shards)],
               mapper=lambda _fn, args: inv.map("evaluate_shard", args), ledger=ledger, budget=budget, log=print)
    return cloud.call_recorded(inv, ledger, "merge_eval", run, name, cfg, shards)


@app.local_entrypoint()
def simpo(run: str = "ladder", data: str = "musique", model: str = "embedded", mine_limit: int = 200, shards: int = 2,
          limit: int = 200, budget_usd: float = 0.0):
    """The SFT adapter on train questions (sharded, B200) -> own-failure pairs -> SimPO (L4) -> eval (B200)."""
    from hopsmith.cost import Budget, Ledger, estimate_stage, format_ledger
    from hopsmith.metrics import format_comparison

    base = Layout(Path(MOUNT))
    ledger = Ledger.open(_cost_path(run))
    budget = Budget(budget_usd or None, ledger)
    inv = ModalInvoker()
    cc = cloud.CloudConfig(run=run, data=data, model=model, eval_limit=limit, eval_shards=shards)
    mine_cfg = {**cc.eval_cfg(str(base.adapter(run, "sft"))), "split": "train", "limit": mine_limit,
                "allow_leakage": True, "extraction_bench": False}

    _sharded_eval(inv, run, "mine", mine_cfg, mine_limit, shards, ledger, budget)
    pairs = cloud.call_recorded(inv, ledger, "mine_pairs", run, "mine", {})
    print(f"pairs: {pairs['pairs']} {pairs['counts']}")
    budget.check("simpo", estimate_stage("simpo", gpu=FUNCTIONS["train_simpo"]["gpu"], traces=pairs["pairs"] * 2,
                                         epochs=2.0)["usd"])
    cloud.call_recorded(inv, ledger, "train_simpo", run, {"probe_data": data, "model": model})
    tuned = _sharded_eval(inv, run, "eval-simpo", cc.eval_cfg(str(base.adapter(run, "simpo"))), limit, shards, ledger,
                          budget)
    sft_metrics = cloud.call_recorded(inv, ledger, "merge_eval", run, "eval-sft",
                                      cc.eval_cfg(str(base.adapter(run, "sft"))), shards)
    print(format_comparison(sft_metrics, tuned, names=("sft", "simpo")))
    print(format_ledger(ledger.summary()))


@app.local_entrypoint()
def grpo(run: str = "ladder", data: str = "musique", model: str = "embedded", limit: int = 0,
         num_generations: int = 8, max_steps: int = 50, judge_model: str = ""):
    """GRPO (TRL, multi-turn rollouts with the search tools) continuing adapters/<run>/sft, into adapters/<run>/grpo."""
    from hopsmith.cost import Ledger, format_ledger

    ledger = Ledger.open(_cost_path(run))
    cfg = {"data": data, "model": model, "limit": limit or None, "num_generations": num_generations,
           "max_steps": max_steps, "judge": judge_model or None}
    out = cloud.call_recorded(ModalInvoker(), ledger, "run_grpo", run, cfg)
    print(f"grpo: {out['steps']} steps, groups {out['groups']}" + (f"; COLLAPSE {out['collapse']}" if out["collapse"] else ""))
    print(format_ledger(ledger.summary()))


@app.local_entrypoint()
def rft(run: str = "ladder", data: str = "musique", model: str = "embedded", limit: int = 0, samples: int = 4,
        judge_model: str = ""):
    """Rejection fine-tuning: adapters/<run>/sft samples train questions, the kept episodes train it further."""
    from hopsmith.cost import Ledger, format_ledger

    ledger = Ledger.open(_cost_path(run))
    cfg = {"data": data, "model": model, "limit": limit or None, "samples": samples, "judge": judge_model or None}
    out = cloud.call_recorded(ModalInvoker(), ledger, "run_rft", run, cfg)
    print({k: v for k, v in out.items() if k not in ("sft", "trained_question_ids", "config")})
    print(format_ledger(ledger.summary()))
