"""The agent's backend and its extractor from an agent config: one factory for every place an agent runs.

    backend, extractor = agent_backends(AgentConfig(model="embedded", adapter="runs/ladder/sft"))          # hopsmith eval
    backend, extractor = agent_backends(cfg.agent, engine="vllm")   # a cloud eval shard: the adapter as a LoRARequest
    backend, extractor = agent_backends(AgentConfig(model="openai:Qwen/Qwen3-8B@http://gpu:8000/v1",
                                                    extractor="gemini:gemini-2.5-flash"))

`hopsmith eval`, the matrix, the endpoint and the cloud's eval shards all call it, so the agent and its
`llm_query` extractor are built the same way everywhere. Both are backend specs
(`hopsmith.backends.factory`): `--model` any spec, `--extractor` any spec, or `self` (seed 000's setup A:
the agent's own backend, adapter included) or `none` (no llm_query tool). Both specs are parsed and checked
before any weights load, and a remote one is contacted (key, URL, model name, tool handling) before a local
one loads, so a bad `--extractor` fails in seconds, not after the agent's model has loaded.
"""
from __future__ import annotations

import json

from ..backends.factory import BackendSpecError, check_spec, describe, make_backend, parse_spec, with_role
from ..config import AgentConfig, ConfigError
from ..tools.extract import Extractor

ENGINES = ("hf", "vllm")


def eval_specs(cfg: AgentConfig, role: str = "agent"):
    """(agent spec, extractor spec or None) of an eval config, parsed (nothing is loaded or contacted)."""
    try:
        agent = parse_spec(cfg.model, cfg.model_options)
    except BackendSpecError as exc:
        raise with_role(role, cfg.model, exc) from None
    if cfg.extractor in ("self", "none"):
        if cfg.extractor_options:
            raise ConfigError(f"extractor_options are for an extractor spec; extractor={cfg.extractor!r} has none")
        return agent, None
    try:
        return agent, parse_spec(cfg.extractor, cfg.extractor_options)
    except BackendSpecError as exc:
        raise with_role("extractor", cfg.extractor, exc) from None


def agent_backends(cfg: AgentConfig, *, engine: str = "hf", batch_size: int | None = None, check: bool = True,
                   cache: dict | None = None, role: str = "agent"):
    """(backend, extractor or None) for `cfg`. A local agent runs on `engine` (hf: transformers in this process;
    vllm: the offline engine); a local extractor on transformers. `check` contacts remote backends first (see
    the module docstring). `cache` (spec -> backend) lets a caller that builds many configs (the matrix)
    load each model once. `role` names the agent in error messages ("teacher" for the traces stage's)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    agent_spec, extractor_spec = eval_specs(cfg, role)
    batch = batch_size or cfg.batch_size
    if agent_spec.remote and cfg.adapter:
        raise ConfigError(f"--adapter {cfg.adapter}: an adapter needs a local --model, not {cfg.model}")
    # Nothing loads before both specs have passed the checks that need no network and no weights.
    for who, spec, adapter in ((role, agent_spec, cfg.adapter), ("extractor", extractor_spec, None)):
        if spec is not None and not spec.remote:
            check_spec(spec, who, adapter=adapter)
    cache = {} if cache is None else cache

    def build(who: str, spec, **kw):
        return cached_backend(cache, who, spec, check=check, **kw)

    shared = extractor_spec is not None and extractor_spec.same_model(agent_spec) and not cfg.adapter
    order = [("agent", agent_spec), ("extractor", extractor_spec)]
    order.sort(key=lambda item: not (item[1] is not None and item[1].remote))  # remote ones first
    built = {}
    for who, spec in order:
        if spec is None or (who == "extractor" and shared):
            continue
        if who == "agent":
            built[who] = build(role, spec, engine=engine, adapter=cfg.adapter, batch_size=batch,
                               tools_in_prompt=cfg.tools_in_prompt, kv_cache_gb=cfg.kv_cache_gb)
        else:
            built[who] = build("extractor", spec, batch_size=batch, kv_cache_gb=cfg.kv_cache_gb)
    backend = built["agent"]
    if cfg.extractor == "none":
        return backend, None
    if cfg.extractor == "self" or shared:
        return backend, Extractor(backend)
    return backend, Extractor(built["extractor"])


def cached_backend(cache: dict, role: str, spec, *, check: bool = True, **kw):
    """`make_backend(spec, role=role, check=check, **kw)`, built once per (spec, adapter, engine, tool setting)
    in `cache`. An agent and an extractor of the same local model share one instance (an extractor ignores the
    tool setting); a remote agent is kept apart, since its check also probed how the server treats tools."""
    agent = role in ("agent", "teacher")
    key = (spec.text, json.dumps(spec.options, sort_keys=True, default=str), kw.get("adapter"), kw.get("engine", "hf"),
           bool(kw.get("tools_in_prompt")) if agent and spec.remote else False, agent and spec.remote)
    if key not in cache:
        cache[key] = make_backend(spec, role=role, check=check, **kw)
    return cache[key]


def describe_backends(cfg: AgentConfig, backend, extractor) -> dict:
    """What `config.json` records about the run's backends (see `hopsmith.backends.factory.describe`)."""
    out = {"agent": describe(backend, cfg.model)}
    if extractor is not None:
        inner = getattr(extractor, "backend", extractor)
        record = describe(inner, cfg.extractor)
        # The extractor is sent no tools: how a tool spec would have reached it says nothing about this run.
        record.pop("tools"), record.pop("tools_detail")
        out["extractor"] = {**record, "same_as_agent": inner is backend}
    return out
