"""Stage configurations: frozen dataclasses, every knob named, saved beside every run.

A config is built from defaults, then a TOML file (`--config FILE`), then command-line flags. Unknown
keys and wrong types are errors that name the key, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    pass


# Ranges by field name, shared by every stage config, so the CLI, TOML files, the Modal entrypoints and the
# HTTP API refuse the same bad values with the same line. None means "unset" (a preset fills it) and passes.
AT_LEAST_ONE = {"limit", "eval_limit", "train_limit", "max_traces", "max_turns", "max_new_tokens", "top_k", "k",
                "max_chars", "batch_size", "pool_size", "max_length", "grad_accum", "lora_r",
                "lora_alpha", "samples", "num_generations", "mine_limit", "max_pairs", "shards", "eval_shards",
                "max_context_tokens", "per_category", "retries_max", "workers", "save_steps",
                "max_prompt_length", "max_completion_length"}
POSITIVE = {"epochs", "learning_rate", "preference_learning_rate", "beta", "timeout", "max_seconds"}
NON_NEGATIVE = {"temperature", "kv_cache_gb", "probe_every", "budget", "budget_usd", "max_budget", "bootstrap", "neftune_noise_alpha",
                "gamma", "simpo_gamma", "cpo_alpha", "max_grad_norm", "weight_decay", "retries", "thinking_fraction"}
FRACTION = {"search_failure_rate", "warmup_ratio", "lora_dropout", "thinking_fraction", "min_score", "val_fraction",
            "dev_fraction"}
PORT = {"port"}


def check_values(cfg) -> None:
    """Raise ConfigError naming the first field of `cfg` outside its range (see the sets above)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = f"{type(cfg).__name__}.{f.name} (--{f.name.replace('_', '-')})"
        if value != value:  # NaN
            raise ConfigError(f"{name} must be a number, got nan")
        if f.name in AT_LEAST_ONE and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
        if f.name in POSITIVE and value <= 0:
            raise ConfigError(f"{name} must be above 0, got {value}")
        if f.name in NON_NEGATIVE and value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")
        if f.name in FRACTION and not 0 <= value <= 1:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
        if f.name in PORT and not 0 < value < 65536:
            raise ConfigError(f"{name} must be a TCP port (1-65535), got {value}")


@dataclass(frozen=True)
class EvalConfig:
    """`hopsmith eval`: run the search agent on a question set and score it."""

    data: str = "musique"  # bundled set name (musique | hotpotqa | 2wiki) or a file in an original format
    split: str | None = "eval"  # bundled sets: eval | train | all; files are used whole
    limit: int | None = 20
    model: str = "embedded"  # the agent: a backend spec (embedded, a model dir or hub id, openai:..., gemini:...)
    adapter: str | None = None
    extractor: str = "self"  # self: the agent's model (adapter included); none: no llm_query tool; else a backend spec
    # Options of the two backends, under their specs' own `?key=value` options (hopsmith.backends.factory.OPTIONS):
    # a TOML table or JSON, e.g. {"timeout": 300, "extra_body": {"top_k": 20}}
    model_options: dict | None = None
    extractor_options: dict | None = None
    # A remote agent's tool specs go into its system prompt (the project's template), not the `tools` field;
    # without it, a server that ignores the field is detected and gets them in the prompt as well.
    tools_in_prompt: bool = False
    corpus: str | None = None  # a {id,title,text} JSONL used as every question's pool
    pool_size: int = 400
    pool_seed: int = 0
    batch_size: int = 16
    kv_cache_gb: float = 3.0  # the local engine's prefix cache (keys/values kept across turns); 0 turns it off
    max_turns: int = 20
    max_new_tokens: int = 256
    temperature: float = 0.0
    thinking: bool = False
    few_shot: bool = True
    top_k: int = 5
    max_chars: int | None = 600
    one_call_per_turn: bool = True
    max_context_tokens: int = 8192
    answer_at_cap: bool = True
    search_failure_rate: float = 0.0  # share of searches that fail (empty or an error): seed 001 used 0.1
    search_failure_seed: int = 0
    extraction_bench: bool = True  # also score the extractor on gold paragraphs (for the ceiling)
    bootstrap: int = 1000
    seed: int = 0
    allow_leakage: bool = False  # evaluate an adapter on questions it was trained on (reported loudly)
    drop_leakage: bool = False  # leave out (and count) the questions that overlap the adapter's training set

    def __post_init__(self):
        check_values(self)
        if self.allow_leakage and self.drop_leakage:
            raise ConfigError("EvalConfig: allow_leakage keeps overlapping questions and drop_leakage drops them; "
                              "set one of them")
        if not 0.0 <= self.search_failure_rate <= 1.0:
            raise ConfigError(f"EvalConfig.search_failure_rate must be between 0 and 1 (0.1 fails a tenth of searches), "
                              f"got {self.search_failure_rate}")

    def agent(self):
        from .agent.loop import AgentConfig

        names = {f.name for f in fields(AgentConfig)}
        return AgentConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


def _coerce(cls, key: str, value):
    hint = typing.get_type_hints(cls)[key]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{cls.__name__}.{key} may not be empty")
    if isinstance(value, str) and base is not str:
        if optional and value.lower() in ("none", "null", ""):
            return None
        if base is dict:  # a table in TOML; JSON text on the command line
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{cls.__name__}.{key}: {value!r} is not a JSON object ({exc.msg})") from None
            if not isinstance(value, dict):
                raise ConfigError(f"{cls.__name__}.{key}: expected a JSON object, got {value!r}")
            return value
        try:
            if base is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return base(value)
        except ValueError:
            raise ConfigError(f"{cls.__name__}.{key}: {value!r} is not a {base.__name__}") from None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{cls.__name__}.{key}: expected {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls, *, file: str | Path | None = None, **overrides):
    """Defaults < TOML file < overrides (None overrides mean "not given")."""
    values: dict = {}
    if file:
        path = Path(file)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            values.update(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    cfg = cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    check_values(cfg)
    return cfg


def to_dict(cfg) -> dict:
    return {"kind": type(cfg).__name__, **dataclasses.asdict(cfg)}
