"""The agent's backend and its extractor from an eval config: one factory for every place an agent runs.

    backend, extractor = agent_backends(EvalConfig(model="embedded", adapter="runs/ladder/sft"))          # hopsmith eval
    backend, extractor = agent_backends(cfg, engine="vllm")       # a cloud eval shard: the adapter as a LoRARequest

`hopsmith eval`, the endpoint and the cloud's eval shards all call it, so the agent and its `llm_query`
extractor are the same model in each: with `extractor="self"` (seed 000's setup A) the extractor is the
agent's own backend, adapter included; `"none"` removes the tool; any other value is a backend spec
(`hopsmith.backends.factory.make_backend`: a model, `openai:...`, `gemini:...`).
"""
from __future__ import annotations

from ..config import ConfigError, EvalConfig
from ..tools.extract import Extractor

ENGINES = ("hf", "vllm")


def agent_backends(cfg: EvalConfig, *, engine: str = "hf", batch_size: int | None = None):
    """(backend, extractor or None) for `cfg` on `engine` (hf: transformers in this process; vllm: the offline engine)."""
    if engine == "hf":
        from ..backends.hf import HFBackend

        backend = HFBackend(cfg.model, adapter=cfg.adapter, batch_size=batch_size or cfg.batch_size)
    elif engine == "vllm":
        from ..backends.vllm_engine import VLLMBackend

        backend = VLLMBackend(cfg.model, adapter=cfg.adapter)
    else:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if cfg.extractor == "none":
        return backend, None
    if cfg.extractor == "self":
        return backend, Extractor(backend)
    from ..backends.factory import make_backend

    return backend, Extractor(make_backend(cfg.extractor, batch_size=batch_size or cfg.batch_size))
