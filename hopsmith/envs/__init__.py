"""Environments: what the agent is asked, what it can do, and how an episode is scored.

The contract every environment keeps is in `hopsmith.envs.base` (read it first). Adding one is one file
here and one line below; `hopsmith eval --env NAME` then runs it.
"""
from __future__ import annotations

from ..config import ConfigError
from . import enterprise, enterprise_cases, enterprise_scoring, multihop, wikicode
from .base import Env, EnvSpec, Episode, MakeEnv

ENVS: dict[str, EnvSpec] = {
    "multihop": EnvSpec(multihop.make),
    "enterprise": EnvSpec(enterprise.make, load=enterprise_cases.load_for_eval, summarize=enterprise_scoring.summarize,
                          describe=enterprise_scoring.format_report, id_key="case_id"),
    "wikicode": EnvSpec(wikicode.make, summarize=wikicode.summarize),
}


def get_env(name: str) -> EnvSpec:
    try:
        return ENVS[name]
    except KeyError:
        raise ConfigError(f"unknown environment {name!r}; known: {', '.join(ENVS)}") from None


__all__ = ["ENVS", "Env", "EnvSpec", "Episode", "MakeEnv", "get_env"]
