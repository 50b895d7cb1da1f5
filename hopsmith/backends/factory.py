"""Backend specs: one string names the model of every role (the agent `--model`, `--extractor`, `--teacher`,
`--judge`, the same keys in TOML configs and Modal entrypoints), and one factory builds it.

    embedded                                          the bundled SmolLM2-135M-Instruct (local, transformers)
    /models/qwen3-0.6b   or   hf:/models/qwen3-0.6b   a local model directory
    Qwen/Qwen3-1.7B                                   a hub id, read from the model cache (the models volume
                                                      in the cloud; `hopsmith prepare-model --download`)
    vllm:Qwen/Qwen3-1.7B                              the same model on vLLM's offline engine (the cloud eval image)
    openai:gpt-4o-mini                                OpenAI, key from $OPENAI_API_KEY
    openai:Qwen/Qwen3-8B@http://localhost:8000/v1     any OpenAI-compatible server (vLLM, transformers serve, ...)
    gemini:gemini-2.5-flash                           Gemini, key from $GEMINI_API_KEY

Options follow a `?`, `&`-separated, as `key=value` (values that parse as JSON are JSON):

    openai:Qwen/Qwen3-8B@http://gpu:8000/v1?timeout=300&concurrency=32&extra_body={"top_k":20}
    embedded?adapter=runs/ladder/sft&batch_size=8

or, in a TOML config, as a table beside the spec (`model_options`, `extractor_options`, `teacher_options`,
`judge_options`; options in the spec win):

    model = "openai:Qwen/Qwen3-8B@http://gpu:8000/v1"
    model_options = {timeout = 300, extra_body = {chat_template_kwargs = {enable_thinking = false}}}

OPTIONS lists every option of every kind. `make_backend(spec, role=..., check=True)` parses and checks the
spec before any weights load (an unknown option, a missing key, a model directory that is not there), builds
the backend, and for a remote one runs its `check`: the key, the URL and the model name are tried with a
one-token request, and for the roles that call tools (agent, teacher) whether the server renders the `tools`
field (`OpenAICompatBackend.check`). Every failure is one line with the fix (a `ConfigError` or a
`BackendSetupError`, both printed by the CLI as `hopsmith: error: ...`, exit 2). Engines are imported only
when asked for, so a remote-only run never loads torch.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..models import EMBEDDED_NAME, ModelError, embedded_gguf, models_dir, resolve_model
from . import Backend, hf
from .hf import check_adapter
from .remote import BackendSetupError, TOOL_MODES

SPEC_FORMS = (
    "embedded",
    "<model dir or hub id>",
    "hf:<model dir or hub id>",
    "vllm:<model dir or hub id>",
    "openai:<model>",
    "openai:<model>@<base_url>",
    "gemini:<model>",
)
LOCAL_KINDS = ("embedded", "hf", "vllm")
REMOTE_KINDS = ("openai", "gemini")
# The config key that names each role's spec (also its flag, with dashes).
ROLES = {"agent": "model", "extractor": "extractor", "teacher": "teacher", "judge": "judge"}
# Roles whose requests carry tool specs: only for them is it worth probing how a server treats `tools`.
TOOL_ROLES = ("agent", "teacher")

_LOCAL_OPTIONS = {"adapter": str, "batch_size": int, "dtype": str, "kv_cache_gb": float}
OPTIONS: dict[str, dict[str, type]] = {
    "embedded": _LOCAL_OPTIONS,
    "hf": _LOCAL_OPTIONS,
    "vllm": {"adapter": str, "max_model_len": int, "gpu_memory_utilization": float},
    "openai": {"timeout": float, "concurrency": int, "max_retries": int, "max_completion_tokens": int,
               "max_tokens_field": str, "extra_body": dict, "tools": str, "api_key_env": str},
    "gemini": {"timeout": float, "concurrency": int, "max_retries": int, "api_version": str, "tools": str,
               "api_key_env": str, "base_url": str},
}


class BackendSpecError(ConfigError):
    """A spec that names no usable backend (its syntax, kind or options); found before anything loads."""


@dataclass(frozen=True)
class BackendSpec:
    """A parsed spec: `kind` (embedded | hf | vllm | openai | gemini), `model`, `base_url` (openai only) and
    the options (from the spec's `?` part over the config's table)."""

    text: str
    kind: str
    model: str
    base_url: str | None = None
    options: dict = field(default_factory=dict, compare=False)

    @property
    def remote(self) -> bool:
        return self.kind in REMOTE_KINDS

    def same_model(self, other: "BackendSpec | None") -> bool:
        """Would `other` build the very same backend (so one instance can play both roles)?"""
        return (other is not None and (self.kind, self.model, self.base_url) == (other.kind, other.model, other.base_url)
                and self.options == other.options)


def _spec_error(spec: str, why: str) -> BackendSpecError:
    return BackendSpecError(f"backend spec {spec!r}: {why}; expected one of: {', '.join(SPEC_FORMS)}")


def split_openai_spec(rest: str) -> tuple[str, str | None]:
    """`model@base_url` -> (model, base_url); the URL is whatever follows the last "@http"."""
    at = max(rest.rfind("@http://"), rest.rfind("@https://"))
    if at < 0:
        return rest, None
    return rest[:at], rest[at + 1 :]


def split_specs(text: str) -> list[str]:
    """A comma-separated list of specs (`--orchestrators A,B`); commas inside JSON option values do not split."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "{["
        depth -= ch in "}]"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce_option(spec: str, kind: str, key: str, value):
    kinds = OPTIONS[kind]
    if key not in kinds:
        raise BackendSpecError(f"backend spec {spec!r}: unknown option {key!r} for {kind} backends; "
                               f"known: {', '.join(sorted(kinds))}")
    want = kinds[key]
    if want is str:
        return value if isinstance(value, str) else json.dumps(value)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and want in (int, float):
        try:
            return want(value)
        except ValueError:
            pass
    if not isinstance(value, want) or isinstance(value, bool):
        words = {int: "a whole number", float: "a number", dict: "a JSON object"}[want]
        raise BackendSpecError(f"backend spec {spec!r}: option {key}={value!r} must be {words}")
    return value


def _check_options(spec: str, opts: dict) -> None:
    if "tools" in opts and opts["tools"] not in TOOL_MODES:
        raise BackendSpecError(f"backend spec {spec!r}: tools={opts['tools']!r}; use one of {', '.join(TOOL_MODES)}")
    if "max_tokens_field" in opts and opts["max_tokens_field"] not in ("max_completion_tokens", "max_tokens"):
        raise BackendSpecError(f"backend spec {spec!r}: max_tokens_field must be max_completion_tokens or max_tokens")
    for key in ("timeout", "concurrency", "batch_size", "max_completion_tokens"):
        if key in opts and opts[key] <= 0:
            raise BackendSpecError(f"backend spec {spec!r}: {key} must be > 0, got {opts[key]}")
    if opts.get("max_retries", 0) < 0:
        raise BackendSpecError(f"backend spec {spec!r}: max_retries must be >= 0")


def parse_spec(spec: "str | BackendSpec", options: dict | None = None) -> BackendSpec:
    """Parse a spec string (syntax and options only: nothing is loaded or contacted)."""
    if isinstance(spec, BackendSpec):
        return spec if not options else parse_spec(spec.text, {**options, **spec.options})
    text = (spec or "").strip()
    if not text:
        raise _spec_error(text, "empty")
    head, _, query = text.partition("?")
    if Path(text).exists():  # a path that exists wins over prefix parsing (a directory may contain ":" or "?")
        head, query = text, ""
    prefix, sep, rest = head.partition(":")
    if not sep or Path(head).exists():
        kind, model, base_url = ("embedded" if head == "embedded" else "hf"), head, None
    else:
        kind = prefix.lower()
        base_url = None
        if kind == "hf" or kind == "vllm":
            model = rest
        elif kind == "openai":
            model, base_url = split_openai_spec(rest)
        elif kind == "gemini":
            model = rest or "gemini-2.5-flash"
        else:
            raise _spec_error(text, f"unknown prefix {prefix!r}")
        if not model:
            raise _spec_error(text, f"no model after '{prefix}:'")
        if kind == "hf" and model == "embedded":
            kind = "embedded"
    opts: dict = {}
    for key, value in (options or {}).items():
        opts[key] = _coerce_option(text, kind, key, value)
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise BackendSpecError(f"backend spec {text!r}: option {part!r} is not key=value")
        opts[key.strip()] = _coerce_option(text, kind, key.strip(), _value(value))
    _check_options(text, opts)
    return BackendSpec(text, kind, model, base_url, opts)


# Options that change how requests travel, not what the model answers: a rerun may change them and resume.
TRANSPORT_OPTIONS = ("timeout", "concurrency", "max_retries", "api_key_env", "batch_size", "kv_cache_gb")


def canonical(text: str | None, options: dict | None = None) -> str | None:
    """A spec as a run's identity: its options that change answers kept (sorted), the transport ones dropped,
    so `?timeout=300` added on a rerun resumes the run instead of being refused as another configuration.
    Not a spec (`self`, `none`, None) comes back as it is."""
    if not text:
        return text
    try:
        spec = parse_spec(text, options)
    except ConfigError:
        return text
    kept = {k: v for k, v in sorted(spec.options.items()) if k not in TRANSPORT_OPTIONS}
    head = text.strip().partition("?")[0] if not Path(text.strip()).exists() else text.strip()
    return head + ("?" + "&".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in kept.items())
                   if kept else "")


def check_local(spec: BackendSpec, *, adapter: str | None = None) -> None:
    """A local spec's model and adapter exist (no weights are read); vLLM is importable for `vllm:`."""


    if spec.remote:
        return
    if spec.kind == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BackendSpecError(f"backend spec {spec.text!r}: vLLM is not installed here; the vllm: backend runs in "
                               "the cloud eval image (modal run app.py::evaluate), locally use hf: or the bare model")
    if spec.model == "embedded":
        if not (models_dir() / EMBEDDED_NAME / "config.json").exists():
            embedded_gguf()  # raises ModelError naming the package when the GGUF is missing
    else:
        path = resolve_model(spec.model)  # a ModelError that names the model and how to fetch it
        _check_model_config(spec.model, path)
    for path in filter(None, (spec.options.get("adapter"), adapter)):
        check_adapter(path)


def _check_model_config(name: str, path) -> None:
    """The model directory's config.json reads as a config transformers knows (only that file is read)."""
    import json

    from ..models import ModelError

    config = Path(path) / "config.json"
    if not config.exists():
        return  # a hub cache layout or a GGUF: the loader says what is missing
    try:
        data = json.loads(config.read_text())
    except (ValueError, OSError) as exc:
        raise ModelError(f"{name}: {config} is not valid JSON ({exc}); the model directory is damaged") from None
    if not isinstance(data, dict) or not data.get("model_type"):
        raise ModelError(f"{name}: {config} names no model_type; is this a transformers model directory?")


def with_role(role: str | None, text: str, exc: Exception) -> Exception:
    """The same error, its message prefixed with the config key the spec came from (`extractor=...: ...`)."""
    if role:
        exc.args = (f"{ROLES.get(role, role)}={text}: {exc.args[0] if exc.args else exc}", *exc.args[1:])
    return exc


def make_backend(spec: "str | BackendSpec", *, role: str | None = None, options: dict | None = None,
                 check: bool = False, tools_in_prompt: bool = False, engine: str = "hf", **kw) -> Backend:
    """Build the backend a spec names. `kw` are the constructor's defaults (a stage's batch size, a test's
    retry policy); the spec's options win over them. `role` (agent | extractor | teacher | judge) names the
    config key in error messages and decides whether a remote backend's check probes tool handling; `check`
    runs that check; `tools_in_prompt` (the agent's `--tools-in-prompt`) writes tool specs into the prompt;
    `engine="vllm"` puts a local model on vLLM (the cloud eval image)."""
    try:
        parsed = parse_spec(spec, options)
    except ConfigError as exc:
        raise with_role(role, str(getattr(spec, "text", spec)), exc)
    try:
        return _build(parsed, role=role, check=check, tools_in_prompt=tools_in_prompt, engine=engine, **kw)
    except (BackendSetupError, ConfigError) as exc:
        raise with_role(role, parsed.text, exc)


def check_spec(spec: BackendSpec, role: str | None, *, adapter: str | None = None) -> None:
    """`check_local` with the config key and a hint in the message (a bare name is read as a local model)."""
    try:
        check_local(spec, adapter=adapter)
    except ModelError as exc:
        hint = "" if spec.kind != "hf" else "; a served model is openai:MODEL@URL, a Gemini one gemini:MODEL"
        raise ModelError((f"{ROLES.get(role, role)}={spec.text}: " if role else "") + f"{exc}{hint}") from None


def _build(spec: BackendSpec, *, role, check, tools_in_prompt, engine, **kw) -> Backend:
    given_adapter, spec_adapter = kw.pop("adapter", None), spec.options.get("adapter")
    if given_adapter and spec_adapter and Path(given_adapter) != Path(spec_adapter):
        raise BackendSpecError(f"backend spec {spec.text!r}: adapter={spec_adapter} and --adapter {given_adapter} "
                               "disagree; give one")
    adapter = spec_adapter or given_adapter
    args = {**{k: v for k, v in kw.items() if v is not None}, **spec.options}
    args.pop("adapter", None)
    if spec.remote:
        if adapter:
            raise BackendSpecError(f"backend spec {spec.text!r}: an adapter needs a local model (embedded, a model "
                                   "directory or a hub id), not a remote one")
        if tools_in_prompt:
            if spec.options.get("tools") == "field":
                raise BackendSpecError(f"backend spec {spec.text!r}: tools=field contradicts --tools-in-prompt")
            args["tools"] = "prompt"
        allowed = set(OPTIONS[spec.kind]) | {"name", "api_key", "base_url"} | ({"retry"} if spec.kind == "gemini" else set())
        args = {k: v for k, v in args.items() if k in allowed}  # a stage's local defaults (batch size) do not apply
        if spec.kind == "openai":
            from .openai_compat import OpenAICompatBackend

            if spec.base_url is not None:
                args.setdefault("base_url", spec.base_url)
            backend = OpenAICompatBackend(spec.model, **args)
        else:
            from .gemini import GeminiBackend

            backend = GeminiBackend(spec.model, **args)
        if tools_in_prompt:
            backend.tools_detail = "--tools-in-prompt"
        if check:
            backend.check(tools=role in TOOL_ROLES)
        return backend
    check_spec(spec, role, adapter=adapter)
    if spec.kind == "vllm" or engine == "vllm":
        from .vllm_engine import VLLMBackend

        args = {k: v for k, v in args.items() if k in ("max_model_len", "gpu_memory_utilization")}
        return VLLMBackend(spec.model, adapter=adapter, **args)

    args = {k: v for k, v in args.items() if k in ("batch_size", "dtype", "device", "kv_cache_gb")}
    return hf.HFBackend(spec.model, adapter=adapter, **args)  # looked up when called: tests put a fake there


def describe(backend, spec: "BackendSpec | str | None" = None) -> dict:
    """What a run's config records about one role's backend: the spec, the backend's name, and how tool specs
    reach the model (`field`: the request's tools field; `prompt`: written into the system prompt; `template`:
    a local model's chat template), with why."""
    text = spec.text if isinstance(spec, BackendSpec) else spec
    mode = getattr(backend, "tools_mode", None)
    engine = getattr(backend, "engine_info", None)  # a local model: engine, precision and why (measured on CPU)
    return {"spec": text, **({"engine": engine} if engine else {}), "name": getattr(backend, "name", type(backend).__name__),
            "kind": getattr(backend, "kind", "local"),
            "tools": mode or "template",
            "tools_detail": getattr(backend, "tools_detail", None) if mode else "the model's chat template renders them"}
