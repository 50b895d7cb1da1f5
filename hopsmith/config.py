"""Configurations: frozen dataclasses, every knob named and explained, saved beside every run.

A config is built from defaults, then a TOML file (`--config FILE`), then command-line flags. Unknown
keys and wrong types are errors that name the key, never silently ignored. A field's comment is its
`--help` text (`field_help`), so the help and the saved `config.json` describe the same knobs.

Every stage that runs the agent nests one `AgentConfig` under `agent`. Its keys may be given flat
(`max_turns = 6` in TOML, `--max-turns 6` on the command line) or as a table (`[agent]`); `config.json`
saves them nested, and `flat_config` reads a saved config of either shape.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize
import tomllib
import typing
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path

from .io import json_object


class ConfigError(ValueError):
    pass


class RunDirError(ConfigError):
    """A run directory holds the results of another configuration."""


# Ranges by field name, shared by every stage config, so the CLI, TOML files, the Modal entrypoints and the
# HTTP API refuse the same bad values with the same line. None means "unset" (a preset fills it) and passes.
AT_LEAST_ONE = {"limit", "eval_limit", "train_limit", "max_traces", "max_turns", "max_new_tokens", "top_k", "k",
                "max_chars", "batch_size", "pool_size", "max_length", "grad_accum", "lora_r",
                "lora_alpha", "samples", "num_generations", "mine_limit", "max_pairs", "shards", "eval_shards",
                "max_context_tokens", "per_category", "retries_max", "workers", "save_steps",
                "max_prompt_length", "max_completion_length", "sft_batch_size", "rft_samples", "rft_limit"}
POSITIVE = {"epochs", "learning_rate", "preference_learning_rate", "beta", "timeout", "max_seconds",
            "header_timeout", "body_timeout"}
NON_NEGATIVE = {"temperature", "kv_cache_gb", "probe_every", "probe_questions", "budget", "budget_usd", "max_budget", "bootstrap", "neftune_noise_alpha",
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
class AgentConfig:
    """The agent: its model, its environment and its episode loop."""

    model: str = "embedded"  # backend spec: embedded, a model directory or hub id, openai:MODEL, gemini:MODEL
    adapter: str | None = None  # LoRA adapter directory on top of a local model
    # Who answers llm_query: self (the agent's own model, adapter included), none (no llm_query tool), or a
    # backend spec of another model
    extractor: str = "self"
    # Options of the two backends, under their specs' own `?key=value` options (hopsmith.backends.factory.OPTIONS):
    # a TOML table or JSON, e.g. {"timeout": 300, "extra_body": {"top_k": 20}}
    model_options: dict | None = None
    extractor_options: dict | None = None  # options of the extractor's backend spec, as model_options
    # A remote agent's tool specs go into its system prompt (the project's template), not the `tools` field;
    # without it, a server that ignores the field is detected and gets them in the prompt as well.
    tools_in_prompt: bool = False
    kv_cache_gb: float = 3.0  # the local engine's prefix cache (keys/values kept across turns); 0 turns it off
    env: str = "multihop"  # the environment the agent acts in (hopsmith.envs.ENVS: multihop | enterprise | wikicode)
    batch_size: int = 16  # episodes live at once; each turn is one batched generate over them
    max_turns: int = 20  # assistant turns before the episode is capped
    max_new_tokens: int = 256  # tokens the model may write per turn
    temperature: float = 0.0  # sampling temperature; 0 decodes greedily
    thinking: bool = False  # ask for <think> before each action
    # Show the worked example in the system prompt; None: for a base model only (an adapter was trained
    # without it)
    few_shot: bool | None = None
    top_k: int = 5  # paragraphs a search returns
    max_chars: int | None = 600  # characters of each paragraph shown to the agent; None shows it whole
    # End a reply at its first </tool_call>: one action per turn, and no tokens spent on what a small
    # model writes after its call. A reply always ends where the model starts writing a <tool_response>
    # itself: that is the model imagining a tool's answer (SmolLM2-135M does it on most second turns).
    one_call_per_turn: bool = True
    # An episode whose prompt passes this many tokens ends (stop "context_overflow"); the backend also
    # stops at the model's own context length, whichever is smaller.
    max_context_tokens: int = 8192
    # At the turn cap, one more turn that asks for FINAL(answer) from what was found; off = the episode
    # ends there without an answer.
    answer_at_cap: bool = True
    # Noisy retrieval (the always-search recipe's robustness test used 0.1): this share of searches fails
    # (an empty result or a service error), drawn per question, query and attempt
    search_failure_rate: float = 0.0
    search_failure_seed: int = 0  # seeds which searches fail
    # The wikicode environment runs programs under bubblewrap; without it a run refuses to start unless
    # this accepts the weaker rlimit-only sandbox (no filesystem or network isolation)
    weak_sandbox: bool = False

    @property
    def shows_example(self) -> bool:
        """Whether the system prompt carries the worked example (`few_shot`, None resolved)."""
        return self.adapter is None if self.few_shot is None else self.few_shot

    def __post_init__(self):
        check_values(self)  # search_failure_rate in [0, 1], batch_size and max_turns >= 1, ...


def flat_knobs(cls):
    """Let `cls(...)` take a nested config's knobs flat, as TOML and flags do: `EvalConfig(limit=4, max_turns=3)`
    is `EvalConfig(limit=4, agent=AgentConfig(max_turns=3))` (a given `agent` is the base they change)."""
    init = cls.__init__

    def __init__(self, *args, **kw):
        kw = renamed(cls, kw)
        known = flat_fields(cls)
        inner: dict[str, dict] = {}
        for k in [k for k in kw if k in known and known[k][0] is not None]:
            inner.setdefault(known[k][0], {})[k] = kw.pop(k)
        for holder, changes in inner.items():
            base = kw.get(holder) or cls.__dataclass_fields__[holder].default_factory()
            kw[holder] = dataclasses.replace(base, **changes)
        init(self, *args, **kw)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    return cls


@flat_knobs
@dataclass(frozen=True)
class EvalConfig:
    """`hopsmith eval`: run the agent on a question set and score it."""

    data: str = "musique"  # bundled set (musique | hotpotqa | 2wiki), a file in an original format, or enterprise cases
    split: str | None = "eval"  # bundled sets: eval | train | all; files are used whole
    limit: int | None = 20  # the first N questions (enterprise: the first N cases of each category)
    corpus: str | None = None  # a {id,title,text} JSONL searched as every question's pool
    pool_size: int = 400  # paragraphs in each question's pool (its own plus distractors)
    pool_seed: int = 0  # seeds which distractors join a pool
    extraction_bench: bool = True  # also score the extractor on gold paragraphs (for the ceiling)
    bootstrap: int = 1000  # bootstrap resamples for the confidence intervals
    seed: int = 0  # seeds the bootstrap (and the enterprise tool simulator)
    allow_leakage: bool = False  # evaluate an adapter on questions it was trained on (reported loudly)
    drop_leakage: bool = False  # leave out (and count) the questions that overlap the adapter's training set
    judge: str | None = None  # backend spec of an LLM judge scoring each episode (enterprise: four dimensions)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self):
        check_values(self)
        if self.allow_leakage and self.drop_leakage:
            raise ConfigError("EvalConfig: allow_leakage keeps overlapping questions and drop_leakage drops them; "
                              "set one of them")


# -- building: defaults < TOML < flags -------------------------------------------------------------------

def nested_fields(cls) -> dict[str, type]:
    """The fields of `cls` that are configs themselves (name -> class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def renamed(cls, values: dict) -> dict:
    """`values` with the old names of knobs (`field(metadata={"renamed": {old: new}})` on a nested config)
    turned into their new ones, so configs saved before the rename still load."""
    names = {old: new for f in fields(cls) for old, new in f.metadata.get("renamed", {}).items()}
    return {names.get(k, k): v for k, v in values.items()}


def omitted(cls, name: str) -> tuple[str, ...]:
    """The knobs of nested config `name` that `cls` does not use (`field(metadata={"omit": (...)})`): no flag,
    refused in a file, left out of config.json."""
    return tuple(next(f for f in fields(cls) if f.name == name).metadata.get("omit", ()))


@cache
def flat_fields(cls) -> dict[str, tuple[str | None, dataclasses.Field]]:
    """Every knob of `cls` by its flat name -> (the nested field holding it or None, its Field)."""
    nested = nested_fields(cls)
    out: dict[str, tuple[str | None, dataclasses.Field]] = {}
    for f in fields(cls):
        inner = [(f.name, g) for g in fields(nested[f.name]) if g.name not in omitted(cls, f.name)] \
            if f.name in nested else [(None, f)]
        for holder, g in inner:
            if g.name in out:
                raise TypeError(f"{cls.__name__}: two knobs named {g.name!r}; rename one")
            out[g.name] = (holder, g)
    return out


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
                return json_object(value)
            except ValueError as exc:
                raise ConfigError(f"{cls.__name__}.{key}: {value!r} is not a JSON object ({exc})") from None
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


def _assemble(cls, values: dict):
    """`cls` from flat keys and nested tables; a nested config starts from the outer field's default."""
    values = renamed(cls, values)
    known = flat_fields(cls)
    nested = nested_fields(cls)
    for name, sub in nested.items():  # a nested config given whole, as an object
        if isinstance(values.get(name), sub):
            values[name] = dataclasses.asdict(values[name])
    tables = {name: values.pop(name) for name in nested if isinstance(values.get(name), dict)}
    unknown = sorted(set(values) - set(known)) + sorted(
        f"{name}.{k}" for name, t in tables.items()
        for k in set(t) - ({f.name for f in fields(nested[name])} - set(omitted(cls, name))))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    outer = {k: _coerce(cls, k, v) for k, v in values.items() if known[k][0] is None}
    for name, sub in nested.items():
        given = {**tables.get(name, {}), **{k: v for k, v in values.items() if known[k][0] == name}}
        default = next(f for f in fields(cls) if f.name == name).default_factory()
        base = {f.name: getattr(default, f.name) for f in fields(sub)}
        outer[name] = sub(**{**base, **{k: _coerce(sub, k, v) for k, v in given.items()}})
    cfg = cls(**outer)
    check_values(cfg)  # the same ranges whichever way the config came (flags, TOML, a Modal call, the HTTP API)
    return cfg


def build(cls, *, file: str | Path | None = None, **overrides):
    """Defaults < TOML file < overrides (None overrides mean "not given"); keys flat or nested."""
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
    return _assemble(cls, values)


def from_dict(cls, values: dict):
    """`cls` from a dict (a saved config.json, a Modal call's arguments): keys flat or nested, None kept as
    None, its `kind` (when present) checked."""
    values = dict(values)
    kind = values.pop("kind", cls.__name__)
    if kind != cls.__name__:
        raise ConfigError(f"a {kind} config where a {cls.__name__} is expected")
    return _assemble(cls, values)


def update(cfg, **changes):
    """`dataclasses.replace` with flat keys: `update(eval_cfg, limit=4, max_turns=3)` reaches into `agent`."""
    known = flat_fields(type(cfg))
    changes = renamed(type(cfg), changes)
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise ConfigError(f"unknown {type(cfg).__name__} key(s): {', '.join(unknown)}")
    outer = {k: v for k, v in changes.items() if known[k][0] is None}
    for name in nested_fields(type(cfg)):
        inner = {k: v for k, v in changes.items() if known[k][0] == name}
        if inner:
            outer[name] = dataclasses.replace(getattr(cfg, name), **inner)
    return dataclasses.replace(cfg, **outer)


def to_dict(cfg) -> dict:
    """The config as saved in config.json: its kind, its keys, nested configs nested (less what it omits)."""
    out = {"kind": type(cfg).__name__, **dataclasses.asdict(cfg)}
    for name in nested_fields(type(cfg)):
        for k in omitted(type(cfg), name):
            out[name].pop(k, None)
    return out


def flat_config(saved: dict) -> dict:
    """A saved config (nested as written now, or flat as written before `agent` was nested) as flat keys."""
    out = {}
    for k, v in saved.items():
        if isinstance(v, dict) and k == "agent":
            out.update(v)
        else:
            out[k] = v
    return out


def from_saved(cls, saved: dict):
    """`cls` from a saved `config.json` of any age: nested or flat (as written before `agent` was nested),
    the keys `cls` no longer has (and the run's records, such as `backends`) left out."""
    known = flat_fields(cls)
    return update(cls(), **{k: v for k, v in flat_config(saved).items() if k in known})


def refuse_other_config(path: Path, cfg, keys, *, what: str, added: dict | None = None, normalize=None) -> None:
    """Raise RunDirError when the config saved at `path` differs from `cfg` in any of `keys` (flat names);
    `added` says what a key means in a config saved before the key existed; `normalize(flat)` rewrites both
    sides in place before they are compared (specs without their transport options)."""
    if not path.exists():
        results = path.parent / "results.jsonl"
        if what == "results" and results.exists():
            # An eval writes its config with its first result: results without one come from something else.
            raise RunDirError(f"{path.parent} holds results.jsonl but no config.json, so its configuration is "
                              "unknown; use another --out (or move that file away)")
        return
    try:
        saved = {**(added or {}), **flat_config(json.loads(path.read_text()))}
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise RunDirError(f"{path} is not a run config ({exc}); move it away or {_another(what)}") from None
    mine = flat_config(to_dict(cfg))
    for side in (saved, mine) if normalize else ():
        normalize(side)
    diff = [k for k in keys if saved.get(k) != mine.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in diff)
        raise RunDirError(f"{path.parent} holds {what} of another configuration ({detail}); {_another(what)}")


def _another(what: str) -> str:
    return "use another --root" if what == "traces" else "use another --out"


# -- help: a field's comment says what it does ------------------------------------------------------------

@cache
def field_help(cls) -> dict[str, str]:
    """Each field's comment in the class source: the comment on its line, else the comment block just above."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    source = inspect.cleandoc("\n" + source) if source.startswith((" ", "\t")) else source
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    body = ast.parse(source).body[0].body
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        first, last = node.lineno, node.end_lineno
        trailing = [comments[i] for i in range(first, last + 1) if i in comments]
        block, j = [], first - 1
        while j in comments and lines[j - 1].lstrip().startswith("#"):
            block.insert(0, comments[j])
            j -= 1
        text = " ".join(trailing or block)
        if text:
            out[node.target.id] = text
    return out


def knob_help(cls) -> dict[str, str]:
    """Help of every flat knob of `cls` (nested configs' fields included)."""
    out = {}
    for name, (holder, _) in flat_fields(cls).items():
        source = nested_fields(cls)[holder] if holder else cls
        out[name] = field_help(source).get(name, "")
    return out
