"""The agent's backend and its extractor from an agent config: one factory for every place an agent runs.

    backend, extractor = agent_backends(AgentConfig(model="embedded", adapter="runs/ladder/sft"))   # hopsmith eval
    backend, extractor = agent_backends(cfg.agent, engine="vllm")   # a cloud eval shard: the adapter as a LoRARequest

`hopsmith eval`, teacher traces, rejection sampling, the endpoint and the cloud's eval shards all call it,
so the agent and its `llm_query` extractor are the same model in each: with `extractor="self"` (the LoRA
multi-hop recipe's setup A) the extractor is the agent's own backend, adapter included; `"none"` removes the
tool; any other value is a backend spec (`hopsmith.backends.factory.make_backend`: a model, `openai:...`,
`gemini:...`). The agent's model is a backend spec too: a local one runs on `engine`, a remote one
(`openai:...`, `gemini:...`) through its client.
"""
from __future__ import annotations

from ..backends.factory import is_remote, make_backend
from ..config import AgentConfig, ConfigError
from ..tools.extract import Extractor

ENGINES = ("hf", "vllm")


def agent_backends(cfg: AgentConfig, *, engine: str = "hf", batch_size: int | None = None):
    """(backend, extractor or None) for `cfg` on `engine` (hf: transformers in this process; vllm: the offline
    engine). `batch_size` overrides the config's (the endpoint batches requests, not episodes)."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    batch = batch_size or cfg.batch_size
    if is_remote(cfg.model):
        if cfg.adapter:
            raise ConfigError(f"--adapter {cfg.adapter}: an adapter needs a local --model, not {cfg.model}")
        backend = make_backend(cfg.model)
    elif engine == "hf":
        backend = make_backend(cfg.model, adapter=cfg.adapter, batch_size=batch)
    else:
        from ..backends.vllm_engine import VLLMBackend  # vLLM is in the cloud's eval image only

        backend = VLLMBackend(cfg.model, adapter=cfg.adapter)
    if cfg.extractor == "none":
        return backend, None
    if cfg.extractor == "self":
        return backend, Extractor(backend)
    return backend, Extractor(make_backend(cfg.extractor, **({} if is_remote(cfg.extractor) else {"batch_size": batch})))
