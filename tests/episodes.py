"""The multi-hop task through the environment-agnostic loop, with the arguments the loop tests give."""
from dataclasses import replace

from hopsmith.agent.loop import run_episodes
from hopsmith.config import AgentConfig
from hopsmith.envs import multihop


def run_multihop(questions, pools, backend, cfg: AgentConfig = AgentConfig(), *, extractor=None, index_cache=None,
                 batch_size: int | None = None, on_done=None) -> list[dict]:
    """`run_episodes` over `multihop.make(...)`: each question searches its pool, `extractor` answers llm_query."""
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    make_env = multihop.make(cfg, pools=pools, extractor=extractor, index_cache=index_cache)
    return run_episodes(questions, make_env, backend, cfg, on_done=on_done)
