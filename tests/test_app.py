"""The Modal app as a user meets it, without an account: every command the README and the docstrings name
parses (`modal run app.py::NAME --help`), keys reach only the functions that use them, the endpoint is baked
with its adapter at import and refuses to start without it, /evaluate jobs are spawned and polled, the ledger
holds the caller's wall time beside the body's, models come from the models volume, the smoke run."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import app
from hopsmith.cost import Ledger, format_ledger
from hopsmith.fanout import CallTimedOut, gather_calls, run_shards
from hopsmith.volumes import Layout
from stages import cloud

ROOT = Path(__file__).resolve().parent.parent


def _modal_run(argv: list[str]):
    from click.testing import CliRunner
    from modal.cli.entry_point import entrypoint_cli

    return CliRunner().invoke(entrypoint_cli, ["run", *argv])


def _documented_commands() -> list[list[str]]:
    """Every `modal run app.py::NAME ...` line of the README and of app.py's docstrings, as argv."""
    import shlex

    text = (ROOT / "README.md").read_text() + "\n" + (ROOT / "app.py").read_text()
    # app.py::NAME (capitals) is the generic form, not a command
    return [shlex.split(line) for line in re.findall(r"modal run (app\.py::[a-z_]+[^\n`#]*)", text)]


def test_every_entrypoint_and_function_parses():
    """`modal run app.py::run_grpo` used to stop at "parameter cfg has unparseable annotation: dict"."""
    names = sorted(set(app.app.registered_entrypoints) | {n for n in app.app.registered_functions if n != "endpoint"})
    assert {"smoke", "pipeline", "train_sft", "evaluate", "simpo", "grpo", "rft", "run_grpo", "run_rft",
            "prepare_model", "matrix", "matrix_cell", "matrix_extraction"} <= set(names)
    for name in names:
        result = _modal_run([f"app.py::{name}", "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output


def test_every_documented_command_parses_with_its_flags():
    commands = _documented_commands()
    assert any(c[0] == "app.py::smoke" for c in commands) and any(c[0] == "app.py::prepare_model" for c in commands)
    for argv in commands:
        result = _modal_run([*argv, "--help"])  # unknown flags fail before --help is honoured
        assert result.exit_code == 0, (argv, result.output)


def test_a_function_takes_its_config_as_json_on_the_command_line(tmp_path):
    assert cloud.config_arg('{"max_steps": 5}') == {"max_steps": 5} and cloud.config_arg(None) == {}
    from hopsmith.config import ConfigError

    with pytest.raises(ConfigError, match="JSON object"):
        cloud.config_arg("{max_steps: 5}")


def test_timeouts_and_keys_only_where_used():
    for name, row in app.FUNCTIONS.items():
        spec = getattr(app, name)._spec_
        assert app.options(name)["timeout"] == row["timeout"] > 0, name
        if row["gpu"]:
            assert row["timeout"] <= 6 * 3600, name  # a hung GPU container is stopped, not billed for a day
        secrets = [repr(x) for x in spec.secrets]
        assert secrets[0] == repr(app.CONTEXT) and "HOPSMITH_SERVE_RUN" in secrets[0], name
        assert (len(secrets) == 2 and secrets[1] == repr(app.KEYS)) if row["keys"] else len(secrets) == 1, name
    assert not any(app.FUNCTIONS[n]["keys"] for n in ("run_sft", "select_traces", "merge_eval", "mine_pairs"))
    # an eval's or a matrix cell's extractor (or agent) may be hosted: `--extractor gemini:...`
    assert all(app.FUNCTIONS[n]["keys"] for n in ("evaluate_shard", "matrix_extraction", "matrix_cell"))
    assert app.FUNCTIONS["endpoint"]["keys"] and app.FUNCTIONS["prepare_model"]["keys"]


def _import_app(env: dict) -> dict:
    """Import app.py in a fresh process with `env` and report what a container would be built with."""
    code = ("import json, app\n"
            "print(json.dumps({'context': app.CONTEXT_ENV, 'secrets': {n: len(getattr(app, n)._spec_.secrets) "
            "for n in app.FUNCTIONS}}))")
    full = {k: v for k, v in os.environ.items() if not k.startswith("HOPSMITH_")} | {"PYTHONPATH": str(ROOT)} | env
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_deployment_bakes_its_adapter_and_keeps_its_shape():
    """`HOPSMITH_SERVE_RUN=ladder modal deploy app.py` used to serve the base model: the variable never reached
    the container. It is read at import and carried in a secret; a container re-importing the module (with
    the variables the secrets gave it) builds every function with the same secrets, so Modal matches them."""
    plain = _import_app({})
    baked = _import_app({"HOPSMITH_SERVE_RUN": "ladder", "HOPSMITH_API_TOKEN": "t", "GEMINI_API_KEY": "g"})
    assert plain["context"]["HOPSMITH_SERVE_RUN"] is None and baked["context"]["HOPSMITH_SERVE_RUN"] == "ladder"
    assert baked["context"]["HOPSMITH_SERVE_STAGE"] == "sft"
    assert plain["secrets"] == baked["secrets"]
    named = _import_app({"HOPSMITH_SECRET": "hopsmith"})
    assert named["context"]["HOPSMITH_SECRET"] == "hopsmith"
    assert all(named["secrets"][n] == plain["secrets"][n] + row["keys"] for n, row in app.FUNCTIONS.items())


@pytest.fixture()
def adapter_on_volume(tmp_path, tiny_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    layout = Layout(tmp_path / "vol")
    path = layout.adapter("ladder", "sft")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=2, target_modules=["q_proj"])
                   ).save_pretrained(path)
    (path / "training.json").write_text(json.dumps({"config": {"model": str(tiny_dir)}, "steps": 3, "traces": 4}))
    return layout, path


def _asgi(application, method, path, body=None, token="tok"):
    import asyncio

    import httpx

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t") as c:
            return await c.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})

    resp = asyncio.run(go())
    return resp.status_code, resp.json()


def test_endpoint_serves_the_named_adapter_and_refuses_without_it(adapter_on_volume):
    layout, path = adapter_on_volume
    with pytest.raises(cloud.ServeError, match="HOPSMITH_SERVE_RUN=other: no adapter"):
        cloud.endpoint_app("other", "sft", layout=layout, token="tok")
    served = cloud.endpoint_app("ladder", "sft", layout=layout, token="tok")
    status, health = _asgi(served, "GET", "/health")
    assert status == 200 and health["adapter"]["run"] == "ladder" and health["adapter"]["stage"] == "sft"
    assert len(health["adapter"]["sha256"]) == 16 and health["adapter"]["steps"] == 3
    assert path.name in health["model"]  # the backend is the base model + this adapter
    status, health = _asgi(cloud.endpoint_app(None, "sft", layout=layout, token="tok"), "GET", "/health")
    assert health["adapter"] is None


class FakeCall:
    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.object_id = "fc-123"

    def get(self, timeout=None):
        out = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(out, BaseException):
            raise out
        return out


def test_evaluate_jobs_are_spawned_and_polled(monkeypatch):
    import modal

    spawned = []

    class Fn:
        def spawn(self, *args):
            spawned.append(args)
            return FakeCall([None])

    jobs = app.SpawnedJobs("ladder", fn=Fn())
    from stages import serve

    job = jobs.submit(serve.eval_config(serve.ServeConfig(adapter="/vol/adapters/ladder/sft"), data="musique", limit=3))
    assert job == "fc-123" and spawned[0][0] == "ladder" and spawned[0][1]["limit"] == 3
    call = FakeCall([TimeoutError(), {"result": {"n": 3}, "usage": {}}])
    monkeypatch.setattr(modal.FunctionCall, "from_id", staticmethod(lambda i: call))
    assert jobs.status(job) == {"job": job, "status": "running"}
    assert jobs.status(job) == {"job": job, "status": "done", "result": {"n": 3}}
    call.outcomes = [ValueError("shard exploded")]
    assert jobs.status(job)["status"] == "failed" and "shard exploded" in jobs.status(job)["error"]


def test_an_evaluate_job_writes_its_results_on_the_runs_volume(tiny_dir, tmp_path, monkeypatch):
    from stages import serve

    monkeypatch.setenv("HOPSMITH_VOLUMES", str(tmp_path / "vol"))
    ecfg = serve.eval_config(serve.ServeConfig(model=str(tiny_dir), max_turns=1, max_new_tokens=4), data="musique",
                             limit=2, pool_size=40)
    import dataclasses

    out = app.evaluate_job.local("ladder", dataclasses.asdict(ecfg), engine="hf", job="fc-1")
    assert out["result"]["n"] == 2 and out["usage"]["gpu"] == "L4"
    saved = json.loads((tmp_path / "vol" / "runs" / "ladder" / "job-fc-1" / "metrics.json").read_text())
    assert saved["n"] == 2 and saved["acc"] == out["result"]["acc"]


def test_gather_calls_times_each_arrival_and_gives_up_on_a_hung_one():
    now = [0.0]
    calls = [FakeCall([TimeoutError(), "a"]), FakeCall([TimeoutError(), TimeoutError(), ValueError("boom")]),
             FakeCall([TimeoutError()])]
    out = gather_calls(calls, lambda c: c.get(timeout=0), not_ready=(TimeoutError,), timeout_s=25,
                       interval_s=10, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert out[0] == ("a", 10.0)
    assert isinstance(out[1][0], ValueError) and out[1][1] == 20.0
    assert isinstance(out[2][0], CallTimedOut) and out[2][1] == 30.0


def test_the_ledger_keeps_caller_time_and_failed_attempts(tiny_dir, tmp_path):
    """A container's body time misses cold starts, image pulls and retries; the caller's wall time has them."""
    inv = cloud.LocalInvoker(Layout(tmp_path / "vol"), app.FUNCTIONS, fail={"prepare_model": 1})
    ledger = Ledger.open(tmp_path / "cost.json")
    with pytest.raises(RuntimeError, match="injected"):
        cloud.call_recorded(inv, ledger, "prepare_model", str(tiny_dir))
    assert cloud.call_recorded(inv, ledger, "prepare_model", str(tiny_dir)) == str(tiny_dir)
    failed, ok = ledger.entries
    assert failed.failed and failed.seconds == 0 and failed.caller_seconds > 0 and "injected" in failed.note
    assert ok.caller_seconds >= ok.seconds > 0 and not ok.failed
    # a fan-out records the failed attempt too, then the retry
    shards = cloud.LocalInvoker(Layout(tmp_path / "vol"), app.FUNCTIONS, fail={"prepare_model": 1})
    run_shards("prepare", None, [(str(tiny_dir),)], mapper=lambda _f, a: shards.map("prepare_model", a), ledger=ledger)
    summary = json.loads((tmp_path / "cost.json").read_text())
    stage = summary["stages"]["prepare_model"]
    assert stage["failed_attempts"] == 2 and stage["containers"] == 2
    assert stage["caller_seconds"] >= stage["seconds"] and summary["total_usd_caller"] >= summary["total_usd"]
    assert "(+2 failed)" in format_ledger(summary)


def test_prepare_model_downloads_once_into_the_models_volume(monkeypatch, tmp_path, tiny_dir):
    import shutil

    import huggingface_hub

    from hopsmith.models import hub_model_dir, resolve_model

    monkeypatch.setenv("HOPSMITH_CACHE", str(tmp_path / "models-volume"))
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fetched = []

    def snapshot_download(repo_id, local_dir, token=None, allow_patterns=None, **kw):
        fetched.append((repo_id, token))
        shutil.copytree(tiny_dir, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    out = app.prepare_model.local(model="Qwen/Qwen3-Tiny")
    assert out["result"] == str(hub_model_dir("Qwen/Qwen3-Tiny")) and out["usage"]["stage"] == "prepare_model"
    assert fetched == [("Qwen/Qwen3-Tiny", "hf_secret")]
    assert resolve_model("Qwen/Qwen3-Tiny") == out["result"]  # every stage reads it from there
    app.prepare_model.local(model="Qwen/Qwen3-Tiny")
    assert len(fetched) == 1  # once


def test_cloud_and_local_eval_build_the_same_extractor(monkeypatch, tiny_dir, tmp_path):
    """The cloud's eval used the base model as the extractor while the local one used the adapter."""
    import types

    from hopsmith.config import EvalConfig
    from stages import evaluate

    class LLM:
        def __init__(self, **kw):
            pass

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda *a: a
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # the files an adapter directory holds
    cfg = EvalConfig(model=str(tiny_dir), adapter=str(adapter))
    backend, extractor = cloud.make_eval_backend(cfg, "vllm")
    assert extractor.backend is backend and backend.lora is not None  # the adapter reads, as locally
    monkeypatch.setattr("hopsmith.backends.hf.HFBackend.__init__", lambda self, *a, **kw: None)
    local_backend, local_extractor = evaluate.make_backends(cfg)
    assert local_extractor.backend is local_backend


def test_smoke_config_runs_through_the_wrappers_and_the_endpoint_answers(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSMITH_VOLUMES", str(tmp_path / "vol"))
    layout = Layout(tmp_path / "vol")
    cfg = cloud.CloudConfig(run="smoke", model=str(tiny_dir), train_limit=2, trace_shards=1, max_traces=2,
                            sft_max_steps=1, eval_limit=2, eval_shards=2, max_turns=1, max_new_tokens=4, top_k=2,
                            max_chars=100, engine="hf", base_eval=False)
    out = cloud.run_ladder(cfg, app.ModalInvoker(local=True, engine="hf", gpus=app.SMOKE_GPU), layout=layout,
                           cost_path=tmp_path / "cost.json", log=lambda m: None)
    assert out["base"] is None and out["sft"]["n"] == 2 and out["sft_training"]["steps"] == 1
    stages = json.loads((tmp_path / "cost.json").read_text())["stages"]
    assert stages["sft"]["gpu"] == "L4" and stages["evaluate"]["gpu"] == "L4"  # the smoke run's cheap GPUs
    assert {"prepare_model", "select", "sft", "evaluate", "merge"} <= set(stages)
    served = cloud.endpoint_app("smoke", "sft", layout=layout, token="tok")
    status, body = _asgi(served, "POST", "/answer", {"question": "Who?", "paragraphs": [{"text": "Someone."}],
                                                     "max_turns": 1})
    assert status == 200 and body["turns"] >= 1


# -- the two images' transformers (training 5.23, vLLM's < 5.21) -----------------------------------------------

def _adapter_with_template(tmp_path, tiny_dir, template: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraConfig(r=2, target_modules=["q_proj"])
                   ).save_pretrained(adapter)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = template
    tok.save_pretrained(adapter)  # what SFT saves: the tokenizer in this version's format, and the template
    return adapter


def test_the_eval_image_reads_no_tokenizer_file_the_training_image_wrote(monkeypatch, tmp_path, tiny_dir):
    """The vLLM image's transformers is older than the training image's: it must not parse the tokenizer files
    saved beside an adapter. It reads the model directory's tokenizer and only the adapter's template file;
    model directories are written on the eval image (the older version writes, the newer reads)."""
    import types

    import transformers

    from hopsmith.backends.templates import CHATML_TOOLS_TEMPLATE

    adapter = _adapter_with_template(tmp_path, tiny_dir, CHATML_TOOLS_TEMPLATE + "{#- trained -#}")
    vllm = types.ModuleType("vllm")
    vllm.LLM = lambda **kw: None
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda *a: a
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    read = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda path, *a, **kw: read.append(str(path)) or real(path, *a, **kw))
    from hopsmith.backends.vllm_engine import VLLMBackend

    backend = VLLMBackend(str(tiny_dir), adapter=str(adapter), max_model_len=4096)
    assert read == [str(tiny_dir)]  # never the adapter's tokenizer files
    assert backend.chat_template.endswith("{#- trained -#}")  # but its training template
    assert app.FUNCTIONS["prepare_model"]["image"] == "eval"


@pytest.mark.skipif(not os.environ.get("HOPSMITH_OLD_TRANSFORMERS"),
                    reason="set HOPSMITH_OLD_TRANSFORMERS to a directory holding the vLLM image's transformers "
                           "(pip install --no-deps --target DIR 'transformers==5.20.2')")
def test_across_the_two_transformers_versions(tmp_path, tiny_dir, tiny_tokenizer):
    """With the older transformers importable from $HOPSMITH_OLD_TRANSFORMERS: a model directory it writes loads
    here, and an adapter's prompts render to the same tokens in both versions."""
    import transformers
    from transformers import AutoModelForCausalLM

    from hopsmith.backends.templates import CHATML_TOOLS_TEMPLATE, load_tokenizer

    old = os.environ["HOPSMITH_OLD_TRANSFORMERS"]
    adapter = _adapter_with_template(tmp_path, tiny_dir, CHATML_TOOLS_TEMPLATE)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Question: who?"}]
    script = f"""
import json, sys, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from hopsmith.backends.templates import load_tokenizer
model = AutoModelForCausalLM.from_pretrained({str(tiny_dir)!r})
model.save_pretrained({str(tmp_path / 'written-by-old')!r})
AutoTokenizer.from_pretrained({str(tiny_dir)!r}).save_pretrained({str(tmp_path / 'written-by-old')!r})
tok = load_tokenizer({str(tiny_dir)!r}, {str(adapter)!r})
ids = tok.apply_chat_template({messages!r}, add_generation_prompt=True, tokenize=True, return_dict=False)
print(json.dumps({{"version": transformers.__version__, "ids": ids}}))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([old, str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs["version"] != transformers.__version__
    ours = load_tokenizer(str(tiny_dir), str(adapter)).apply_chat_template(messages, add_generation_prompt=True,
                                                                            tokenize=True, return_dict=False)
    assert theirs["ids"] == ours
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "written-by-old")
    assert model.config.vocab_size == len(tiny_tokenizer)
